"""`interception.cgroup: pod`: intercept the pod's whole cgroup, the sidecar's own included,
and tell the sidecar's connections apart in the kernel by its cgroup.

In Kubernetes every container of a pod runs in a cgroup of its own below the pod's:

    kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod<uid>.slice/    the pod
        cri-containerd-<id>.scope     one per container: pause, the loader (init container),
                                      the sidecar, each app container

An app container's cgroup exists only once that container starts, after the init
containers, so it can neither be named in config nor attached to by an init container. The
pod's cgroup lives from the pod sandbox's start to the pod's end and holds every container:
programs attached to it apply to containers that start later, since a cgroup's effective
programs include its ancestors'.

The rule: `pod` is the parent directory of the cgroup v2 cgroup that the resolving process
runs in (the "0::" line of /proc/self/cgroup under the cgroup v2 mount). That process is the
loader: the init container's, or the manager's child, which runs in the manager's cgroup.
Kubernetes makes both children of the pod's cgroup. The parent is refused when it is the
root cgroup (a process that is not in a pod, or one in a private cgroup namespace whose
root is its own cgroup), exactly as an explicit path naming the root is. Explicit paths
keep their meaning (the app's own cgroup, separate from the sidecar's).

The sidecar's own sockets are inside the intercepted cgroup in this mode. The connect
programs (bpf/redirect_connect.c) leave them alone: they compare the calling task's
ancestor at the sidecar cgroup's depth (bpf_get_current_ancestor_cgroup_id) with the
sidecar cgroup's id in the pinned one-entry map sc_sidecar_cg, so the sidecar and anything
it runs in cgroups below its own are excluded. A map entry, not a -D flag: the init
container loads the programs before the sidecar's container exists, and a restarted sidecar
container has a new cgroup. Whoever owns the instance writes its own cgroup there when it
loads or adopts it, before its workers open any connection. Sockops needs no exclusion: it
acts only on connections to the outbound listener, and the sidecar's own connections are
never rewritten to it. The getsockopt program, aimed at the sidecar's cgroup in the
explicit mode, attaches to the pod's cgroup here (the sidecar's does not exist yet when the
init container loads); it answers only for sockets accepted on the outbound listener's
port, which only the sidecar has.

Why a cgroup and not a uid (Istio and Merbridge skip uid 1337): a uid is whatever the pod
spec or an image says. An app container running as 1337 escapes interception, and a
pod-wide `runAsUser` gives the sidecar the app's uid; this sidecar runs as root besides (it
loads BPF programs), and excluding root would exclude every root process of the app. A
container's cgroup is made by the runtime, one per container; the pod spec cannot choose it
and a process cannot leave it without write access to the node's cgroup tree. So ebpf mode
offers no uid exclusion: it would only reopen that hole.
"""
from __future__ import annotations

import os
from typing import Optional

from sidecar.bpf import syscall
from sidecar.bpf.layout import MAPS, OWN_CGROUP
from sidecar.bpf.state import maps_dir

POD = "pod"
SIDECAR_CGROUP_MAP = "sc_sidecar_cg"


def is_pod(cgroup: Optional[str]) -> bool:
    """True for `interception.cgroup: pod`."""
    return cgroup == POD


def cgroup_id(path: str) -> int:
    """The cgroup v2 id of a cgroup directory: its inode number (what
    bpf_get_current_cgroup_id and a cgroup link's info report)."""
    return os.stat(path).st_ino


def cgroup_level(path: str, mount: str) -> int:
    """How deep `path` is below the cgroup v2 root `mount` (the root is level 0), as
    bpf_get_current_ancestor_cgroup_id counts."""
    rel = os.path.relpath(os.path.normpath(path), os.path.normpath(mount))
    return 0 if rel == "." else len(rel.split(os.sep))


def pod_of(own: str, mount: str) -> Optional[str]:
    """The pod's cgroup for a process in cgroup `own`: its parent directory; None when that
    is the root cgroup `mount` (or above it)."""
    parent = os.path.dirname(os.path.normpath(own))
    if cgroup_level(parent, mount) <= 0 or os.path.relpath(parent, mount).startswith(".."):
        return None
    return parent


def write_sidecar_cgroup(instance_path: str, cgroup: str, mount: str) -> Optional[dict]:
    """Makes the connect programs of the instance at `instance_path` leave `cgroup` (and
    every cgroup below it) alone; {"cgroup", "id", "level"} written, or None when the
    instance has no such map (its families do not include the connect programs)."""
    pin = os.path.join(maps_dir(instance_path), SIDECAR_CGROUP_MAP)
    if not os.path.exists(pin):
        return None
    entry = {"cgroup": cgroup, "id": cgroup_id(cgroup), "level": cgroup_level(cgroup, mount)}
    fd = syscall.obj_get(pin)
    try:
        syscall.map_update(fd, b"\0\0\0\0", OWN_CGROUP.pack(entry["id"], entry["level"], 0))
    finally:
        os.close(fd)
    return entry


def read_sidecar_cgroup(instance_path: str) -> Optional[dict]:
    """{"id", "level"} the connect programs of the instance leave alone (id 0: none), or
    None when the instance has no such map."""
    try:
        fd = syscall.obj_get(os.path.join(maps_dir(instance_path), SIDECAR_CGROUP_MAP))
    except OSError:
        return None
    try:
        raw = syscall.map_lookup(fd, b"\0\0\0\0")
    finally:
        os.close(fd)
    if not raw:
        return None
    cg_id, level, _ = OWN_CGROUP.unpack(raw[:OWN_CGROUP.size])
    return {"id": cg_id, "level": level}


assert MAPS[SIDECAR_CGROUP_MAP].value_size == OWN_CGROUP.size
