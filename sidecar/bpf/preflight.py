"""What the loader checks before it touches the kernel, each failure one clear line.

Two kinds of answer (sidecar.bpf exit codes):
    EXIT_CONFIG       unsafe or wrong: the root cgroup (named, or as the parent of the
                      sidecar's with `interception.cgroup: pod`), the sidecar inside the
                      app's cgroup (or the app inside the sidecar's) with an explicit path, a
                      host interface, a cgroup or an interface that does not exist. The
                      sidecar refuses to start.
    EXIT_UNAVAILABLE  BPF cannot work here: no CAP_BPF/CAP_SYS_ADMIN, no cgroup v2, no
                      bpffs, no kernel headers for bcc, no bcc. interception.fail decides.

No bcc here (its absence is one of the answers).
"""
from __future__ import annotations

import ctypes
import os
import platform
import socket
from dataclasses import dataclass, replace
from typing import Optional

from sidecar.bpf import BPFFS_ROOT, EXIT_CONFIG, EXIT_UNAVAILABLE
from sidecar.bpf.pod_cgroup import is_pod, pod_of

CGROUP2_SUPER_MAGIC = 0x63677270
BPF_FS_MAGIC = 0xCAFE4A11
CAP_NET_ADMIN = 12
CAP_SYS_ADMIN = 21
CAP_BPF = 39
PROC_PID_INIT_INO = 0xEFFFFFFC      # include/linux/proc_ns.h: the initial pid namespace
PROC_NET_INIT_INO = 0xEFFFFFF9      # the initial network namespace, on kernels that fix it
PROC_CGROUP_INIT_INO = 0xEFFFFFFB   # the initial cgroup namespace


class Refusal(Exception):
    """The loader will not (EXIT_CONFIG) or cannot (EXIT_UNAVAILABLE) do it: `reason`."""

    def __init__(self, code: int, reason: str):
        super().__init__(reason)
        self.code = code
        self.reason = reason


@dataclass
class Targets:
    """The attach points, resolved and checked (sidecar.bpf.programs.TARGETS). With
    `interception.cgroup: pod` both cgroup targets are the pod's cgroup."""
    app_cgroup: str
    sidecar_cgroup: str
    interface: Optional[str]
    ifindex: Optional[int]
    own_cgroup: Optional[str] = None     # the cgroup this process runs in


class _Statfs(ctypes.Structure):
    _fields_ = [("f_type", ctypes.c_long), ("_rest", ctypes.c_byte * 112)]


_libc = ctypes.CDLL(None, use_errno=True)


def fs_magic(path: str) -> int:
    buf = _Statfs()
    if _libc.statfs(os.fsencode(path), ctypes.byref(buf)) != 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err), path)
    return buf.f_type & 0xFFFFFFFF


def effective_caps(pid="self") -> int:
    with open("/proc/%s/status" % pid) as f:
        for line in f:
            if line.startswith("CapEff:"):
                return int(line.split()[1], 16)
    return 0


def cgroup2_mount() -> Optional[str]:
    """Where the cgroup v2 hierarchy is mounted in this mount namespace (the first one)."""
    with open("/proc/self/mountinfo") as f:
        for line in f:
            left, _, right = line.partition(" - ")
            if right.split(" ", 1)[0] == "cgroup2":
                return left.split()[4].replace("\\040", " ")
    return None


def own_cgroup(mount: str, pid="self") -> Optional[str]:
    """The cgroup v2 directory of a process (the "0::" line of /proc/PID/cgroup)."""
    with open("/proc/%s/cgroup" % pid) as f:
        for line in f:
            if line.startswith("0::"):
                return os.path.normpath(os.path.join(mount, line[3:].strip().lstrip("/")))
    return None


def _inside(path: str, parent: str) -> bool:
    return path == parent or path.startswith(parent.rstrip("/") + "/")


def _in_host_netns() -> bool:
    """True when this process is in the host's (the initial) network namespace. Recent
    kernels give it a fixed inode; on others kthreadd (pid 2 of the initial pid
    namespace, always in the initial network namespace) tells. From any other pid
    namespace the sidecar runs in a container, and cannot see the host's anyway."""
    try:
        mine = os.stat("/proc/self/ns/net").st_ino
        if mine == PROC_NET_INIT_INO:
            return True
        if os.stat("/proc/self/ns/pid").st_ino != PROC_PID_INIT_INO:
            return False
        with open("/proc/2/comm") as f:
            if f.read().strip() != "kthreadd":
                return False
        return mine == os.stat("/proc/2/ns/net").st_ino
    except OSError:
        return False


def kernel_headers() -> str:
    return "/lib/modules/%s/build" % platform.release()


def check_privileges():
    caps = effective_caps()
    has = lambda cap: bool(caps & (1 << cap))
    if not (has(CAP_SYS_ADMIN) or (has(CAP_BPF) and has(CAP_NET_ADMIN))):
        raise Refusal(EXIT_UNAVAILABLE, "BPF not permitted: the sidecar has neither CAP_SYS_ADMIN "
                                        "nor CAP_BPF with CAP_NET_ADMIN")


def check_loader_privileges():
    """The loader needs more than the manager: bcc opens the maps another file already
    pinned by their id (BPF_MAP_GET_FD_BY_ID), which the kernel allows only with
    CAP_SYS_ADMIN."""
    check_privileges()
    if not effective_caps() & (1 << CAP_SYS_ADMIN):
        raise Refusal(EXIT_UNAVAILABLE, "BPF not permitted: the loader needs CAP_SYS_ADMIN (bcc opens "
                                        "pinned maps by id); CAP_BPF with CAP_NET_ADMIN is enough only "
                                        "for a sidecar adopting what a loader handed over")


def check_bpffs():
    root = os.path.dirname(BPFFS_ROOT)
    try:
        magic = fs_magic(root)
    except OSError as e:
        raise Refusal(EXIT_UNAVAILABLE, "no bpffs at %s: %s" % (root, e.strerror))
    if magic != BPF_FS_MAGIC:
        raise Refusal(EXIT_UNAVAILABLE, "no bpffs mounted at %s (mount -t bpf bpf %s)" % (root, root))


def check_build_tools():
    headers = kernel_headers()
    if not os.path.exists(headers):
        raise Refusal(EXIT_UNAVAILABLE, "no kernel headers at %s for bcc (scripts/setup-host.sh "
                                        "links the distribution's)" % headers)
    try:
        import importlib.util
        spec = importlib.util.find_spec("bcc")
        # An empty bcc/ directory is found as a namespace package (no origin): not bcc.
        found = spec is not None and spec.origin is not None
    except (ImportError, ValueError):
        found = False
    if not found:
        raise Refusal(EXIT_UNAVAILABLE, "bcc is not installed (Debian: python3-bpfcc; an image "
                                        "without it relies on the loader init container, `sidecar "
                                        "bpf load`, to load the programs)")


def _own_cgroup_checked(mount: str) -> str:
    """This process's cgroup, refused when it is the root cgroup."""
    mine = own_cgroup(mount)
    if mine is None:
        raise Refusal(EXIT_UNAVAILABLE, "the sidecar is in no cgroup v2 (/proc/self/cgroup)")
    if os.path.samefile(mine, mount):
        hint = ""
        try:
            if os.stat("/proc/self/ns/cgroup").st_ino != PROC_CGROUP_INIT_INO:
                hint = (" (this process has a private cgroup namespace, whose root is its own "
                        "cgroup: in Kubernetes run the container privileged, which containerd and "
                        "CRI-O give the node's cgroup namespace)")
        except OSError:
            pass
        raise Refusal(EXIT_CONFIG, "the sidecar runs in the root cgroup (%s): its getsockopt "
                                   "program would apply to every process; run it in a cgroup of "
                                   "its own%s" % (mine, hint))
    return mine


def _pod_cgroup_checked(mount: str, mine: str) -> str:
    """`interception.cgroup: pod`: the parent of this process's cgroup, never the root."""
    pod = pod_of(mine, mount)
    if pod is None:
        raise Refusal(EXIT_CONFIG, "interception.cgroup: pod: the parent of the sidecar's cgroup %s "
                                   "is the root cgroup (%s): refusing to intercept every process "
                                   "of the machine (pod mode needs the sidecar in a cgroup of its "
                                   "own inside the pod's, as Kubernetes places containers)"
                      % (mine, mount))
    return pod


def resolve_targets(plan) -> Targets:
    """The attach points of `plan`, refused when unsafe or missing."""
    from sidecar.bpf.programs import wanted_families
    used = {p.target for f in wanted_families(plan) for p in f.programs}
    if "interface" not in used:
        # iptables mode: the interface's programs (steering, counters, policy) are ebpf
        # mode's; an interface named in the config is neither looked up nor attached to
        plan = replace(plan, interface=None)
    if not used & {"app_cgroup", "sidecar_cgroup"}:
        # iptables mode splicing tunnels: programs on maps only, no cgroup involved
        return Targets(None, None, plan.interface, _interface_index(plan))
    mount = cgroup2_mount()
    if mount is None:
        raise Refusal(EXIT_UNAVAILABLE, "no cgroup v2 hierarchy mounted")
    if plan.app_cgroup is None:
        raise Refusal(EXIT_CONFIG, "these programs need interception.cgroup (the app's cgroup v2 directory)")
    if is_pod(plan.app_cgroup):
        mine = _own_cgroup_checked(mount)
        pod = _pod_cgroup_checked(mount, mine)
        # The sidecar's cgroup is below the pod's by construction: its connects are told
        # apart in the programs (sc_sidecar_cg), not by where they are attached.
        return Targets(pod, pod, plan.interface, _interface_index(plan), own_cgroup=mine)
    app = os.path.normpath(plan.app_cgroup)
    if not os.path.isdir(app):
        raise Refusal(EXIT_CONFIG, "interception.cgroup %s does not exist" % app)
    try:
        if fs_magic(app) != CGROUP2_SUPER_MAGIC:
            raise Refusal(EXIT_UNAVAILABLE, "interception.cgroup %s is not a cgroup v2 directory "
                                            "(cgroup v2 is mounted at %s)" % (app, mount))
    except OSError as e:
        raise Refusal(EXIT_CONFIG, "interception.cgroup %s: %s" % (app, e.strerror))
    if os.path.samefile(app, mount):
        raise Refusal(EXIT_CONFIG, "interception.cgroup is the root cgroup (%s): refusing to "
                                   "intercept every process of the machine" % app)
    mine = _own_cgroup_checked(mount)
    if _inside(mine, app):
        raise Refusal(EXIT_CONFIG, "the sidecar's cgroup %s is inside the app's cgroup %s: its own "
                                   "connections would be redirected" % (mine, app))
    if _inside(app, mine):
        raise Refusal(EXIT_CONFIG, "the app's cgroup %s is inside the sidecar's cgroup %s: the app "
                                   "would be answered as the sidecar" % (app, mine))
    return Targets(app, mine, plan.interface, _interface_index(plan), own_cgroup=mine)


def _interface_index(plan) -> Optional[int]:
    """The ifindex of interception.interface, refused when it is the host's or missing."""
    if not plan.interface:
        return None
    if _in_host_netns():
        raise Refusal(EXIT_CONFIG, "interception.interface %s is in the host's network namespace: "
                                   "the sidecar attaches only to a pod's interface" % plan.interface)
    try:
        return socket.if_nametoindex(plan.interface)
    except OSError:
        raise Refusal(EXIT_CONFIG, "interception.interface %s does not exist in the sidecar's "
                                   "network namespace" % plan.interface)


def run_all(plan) -> Targets:
    """Every check of the loader, cheapest first; the resolved targets or a Refusal."""
    check_loader_privileges()
    check_bpffs()
    targets = resolve_targets(plan)
    check_build_tools()
    return targets
