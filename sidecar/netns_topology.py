"""Throwaway pods on one machine: network namespaces, veth pairs between them, child cgroups,
pods made of the three, and iptables REDIRECT interception inside a namespace.

Used by the integration tests (tests/support/netns.py), the mesh benchmark
(benchmarks/mesh/) and `sidecar demo` (sidecar/demo/). Kernel hygiene (DESIGN.md): everything happens inside namespaces and
cgroups made here. Veth pairs are created directly inside their two namespaces (never on the
host), firewall rules are added inside a namespace only, and closing a `Netns` kills every
process still in it, deletes its interfaces and the namespace itself; closing a `Cgroup` kills
what is left in it and removes the directory.

Commands run through `nsenter --net=/var/run/netns/NAME`, not `ip netns exec`, so they keep
the host's /sys (cgroup v2 mount, bpffs). Sockets the calling process itself needs inside a
namespace are made by `Netns.call`, which runs a function in a short-lived thread that has
entered the namespace: a socket belongs to the namespace it was created in, whichever thread
uses it later.
"""
import contextlib
import ctypes
import json
import os
import secrets
import signal
import socket
import subprocess
import threading
import time

from sidecar.bpf.preflight import cgroup2_mount

__all__ = [
    "CGROUP2_ROOT",
    "Cgroup",
    "CommandError",
    "Netns",
    "Pod",
    "as_app",
    "check_command",
    "in_cgroup",
    "kill_process_group",
    "link_pods",
    "redirect_inbound",
    "redirect_outbound",
    "veth_pair",
]

NETNS_DIR = "/var/run/netns"
# The cgroup v2 mount: /sys/fs/cgroup/unified on these machines (DESIGN.md).
CGROUP2_ROOT = cgroup2_mount() or "/sys/fs/cgroup/unified"
CLONE_NEWNET = 0x40000000

_libc = ctypes.CDLL(None, use_errno=True)


class CommandError(RuntimeError):
    """A command run for the topology failed."""


def check_command(cmd, timeout=30):
    """Runs cmd to completion; CommandError with its output when it exits non-zero."""
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    if r.returncode != 0:
        raise CommandError("%s: exit %d: %s" % (" ".join(cmd), r.returncode,
                                                (r.stderr or r.stdout).strip()))
    return r


def as_app(cmd, uid):
    """`cmd` run as the app's unprivileged user (its TCP is what interception captures)."""
    return ["setpriv", "--reuid=%d" % uid, "--regid=%d" % uid, "--clear-groups", "--"] + list(cmd)


class Netns:
    """A network namespace `<prefix><random>` with `lo` up; removed on exit with everything in it."""

    def __init__(self, prefix):
        self.name = prefix + secrets.token_hex(4)
        self.path = os.path.join(NETNS_DIR, self.name)
        self.procs = []
        self.created = False

    # -- lifecycle ---------------------------------------------------------------------------

    def __enter__(self):
        check_command(["ip", "netns", "add", self.name])
        self.created = True
        try:
            self.ip("link", "set", "lo", "up")
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *exc):
        self.close()

    def close(self):
        """Kills the namespace's processes, deletes its interfaces, then the namespace."""
        if not self.created:
            return
        try:
            for proc in self.procs:
                kill_process_group(proc)
            self.procs = []
            # Anything else still living in the namespace (grandchildren that left the group).
            for _ in range(50):
                pids = self.pids()
                if not pids:
                    break
                for pid in pids:
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(pid, signal.SIGKILL)
                time.sleep(0.02)
            # Deleting a veth end here deletes its peer too: nothing is left for later.
            for dev in self.links(kind="veth"):
                subprocess.run(["ip", "-n", self.name, "link", "del", dev], capture_output=True)
        finally:
            subprocess.run(["ip", "netns", "del", self.name], capture_output=True)
            self.created = False

    def pids(self):
        r = subprocess.run(["ip", "netns", "pids", self.name], capture_output=True, text=True)
        return [int(p) for p in r.stdout.split() if int(p) != os.getpid()]

    def links(self, kind=None):
        cmd = ["ip", "-n", self.name, "-o", "link", "show"] + (["type", kind] if kind else [])
        r = subprocess.run(cmd, capture_output=True, text=True)
        return [line.split(":")[1].strip().split("@")[0] for line in r.stdout.splitlines()]

    # -- commands inside the namespace ------------------------------------------------------

    def command(self, cmd, cgroup=None):
        """`cmd` run in this namespace (and first moved into `cgroup`, a Cgroup, if given:
        the cgroup is joined before nsenter, which keeps the host's /sys)."""
        cmd = ["nsenter", "--net=" + self.path, "--"] + list(cmd)
        return in_cgroup(cmd, cgroup) if cgroup is not None else cmd

    def ip(self, *args):
        return check_command(["ip", "-n", self.name] + list(args))

    def run(self, cmd, check=True, timeout=30, cgroup=None, **kw):
        """Runs `cmd` in the namespace (and `cgroup`) to completion; text output captured
        by default."""
        kw.setdefault("capture_output", True)
        kw.setdefault("text", True)
        r = subprocess.run(self.command(cmd, cgroup), timeout=timeout, **kw)
        if check and r.returncode != 0:
            raise CommandError("in %s: %s: exit %d: %s" % (
                self.name, " ".join(cmd), r.returncode, (r.stderr or r.stdout or "").strip()))
        return r

    def popen(self, cmd, cgroup=None, **kw):
        """Starts `cmd` in the namespace (and `cgroup`) in its own process group; killed on
        exit."""
        kw.setdefault("start_new_session", True)
        proc = subprocess.Popen(self.command(cmd, cgroup), **kw)
        self.procs.append(proc)
        return proc

    def call(self, fn, *args, **kw):
        """fn(*args, **kw) in a thread that entered this namespace; its result or exception."""
        box = {}

        def body():
            try:
                fd = os.open(self.path, os.O_RDONLY)
                try:
                    if _libc.setns(fd, CLONE_NEWNET) != 0:
                        err = ctypes.get_errno()
                        raise OSError(err, "setns(%s): %s" % (self.path, os.strerror(err)))
                finally:
                    os.close(fd)
                box["result"] = fn(*args, **kw)
            except BaseException as e:      # handed to the caller
                box["error"] = e

        t = threading.Thread(target=body, name="netns-" + self.name)
        t.start()
        t.join()
        if "error" in box:
            raise box["error"]
        return box["result"]

    def socket(self, family=socket.AF_INET, type=socket.SOCK_STREAM):
        """A socket of this namespace."""
        return self.call(socket.socket, family, type)

    def connect(self, address, timeout=10.0):
        """A TCP connection made from this namespace (as root: not intercepted by uid)."""
        return self.call(socket.create_connection, address, timeout)

    def listen(self, address, backlog=128):
        family = socket.AF_INET6 if ":" in address[0] else socket.AF_INET
        sock = self.socket(family)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind(address)
            sock.listen(backlog)
        except BaseException:
            sock.close()
            raise
        return sock

    def wait_for_port(self, host, port, timeout=10.0, proc=None):
        """Waits until host:port accepts connections inside the namespace."""
        if host in ("0.0.0.0", ""):
            host = "127.0.0.1"
        elif host == "::":
            host = "::1"
        deadline = time.monotonic() + timeout
        while True:
            if proc is not None and proc.poll() is not None:
                raise RuntimeError("process exited with %s before listening" % proc.returncode)
            try:
                self.connect((host, port), timeout=0.5).close()
                return
            except OSError:
                if time.monotonic() > deadline:
                    raise TimeoutError("%s:%d is not accepting connections in %s"
                                       % (host, port, self.name))
                time.sleep(0.05)


def kill_process_group(proc):
    """SIGKILLs the process group led by `proc` (a Popen) and reaps it."""
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
    try:
        proc.wait(5)
    except subprocess.TimeoutExpired:
        pass


def veth_pair(ns_a, ns_b, addr_a, addr_b):
    """A veth pair between two namespaces (created inside them, never on the host), both ends
    up. `addr_a`/`addr_b`: an address with prefix ("10.200.0.1/24") or a list of them.
    IPv6 addresses are added with `nodad`, and each end gets a permanent neighbour entry for
    the other's IPv6 addresses: on a link that just came up the first neighbour solicitation
    goes unanswered and the first connection waits a 1 s retransmit, longer than the
    sidecar's default connect timeout. Returns (dev_a, dev_b)."""
    tag = secrets.token_hex(3)
    dev_a, dev_b = "vsc%sa" % tag, "vsc%sb" % tag
    check_command(["ip", "link", "add", dev_a, "netns", ns_a.name, "type", "veth",
            "peer", "name", dev_b, "netns", ns_b.name])
    addrs = {}
    for ns, dev, given in ((ns_a, dev_a, addr_a), (ns_b, dev_b, addr_b)):
        addrs[dev] = [given] if isinstance(given, str) else list(given)
        for addr in addrs[dev]:
            ns.ip("addr", "add", addr, "dev", dev, *(["nodad"] if ":" in addr else []))
        ns.ip("link", "set", dev, "up")
    for ns, dev, peer_ns, peer_dev in ((ns_a, dev_a, ns_b, dev_b), (ns_b, dev_b, ns_a, dev_a)):
        mac = json.loads(peer_ns.ip("-j", "link", "show", "dev", peer_dev).stdout)[0]["address"]
        for addr in addrs[peer_dev]:
            if ":" in addr:
                ns.ip("neigh", "replace", addr.split("/")[0], "lladdr", mac, "dev", dev,
                      "nud", "permanent")
    return dev_a, dev_b


# -- iptables interception inside a namespace -----------------------------------------------

def _tables(ip_versions):
    return [{4: "iptables", 6: "ip6tables"}[v] for v in ip_versions]


def redirect_outbound(ns, to_port, uid, exclude_ports=(), ip_versions=(4,),
                      chain="SC_OUTBOUND"):
    """Outbound TCP of `uid` in `ns` is REDIRECTed to local port `to_port` (the sidecar's
    outbound listener), except to destination ports in `exclude_ports`. The sidecar runs as
    another user, so its own upstream connections are never captured."""
    for tool in _tables(ip_versions):
        ns.run([tool, "-w", "-t", "nat", "-N", chain])
        for port in exclude_ports:
            ns.run([tool, "-w", "-t", "nat", "-A", chain, "-p", "tcp", "--dport", str(port),
                    "-j", "RETURN"])
        ns.run([tool, "-w", "-t", "nat", "-A", chain, "-p", "tcp", "-j", "REDIRECT",
                "--to-ports", str(to_port)])
        ns.run([tool, "-w", "-t", "nat", "-A", "OUTPUT", "-p", "tcp", "-m", "owner",
                "--uid-owner", str(uid), "-j", chain])


def redirect_inbound(ns, interface, to_port, exclude_ports=(), ip_versions=(4,),
                     chain="SC_INBOUND"):
    """TCP arriving on `interface` in `ns` is REDIRECTed to local port `to_port` (the sidecar's
    inbound listener), except to destination ports in `exclude_ports`."""
    for tool in _tables(ip_versions):
        ns.run([tool, "-w", "-t", "nat", "-N", chain])
        for port in exclude_ports:
            ns.run([tool, "-w", "-t", "nat", "-A", chain, "-p", "tcp", "--dport", str(port),
                    "-j", "RETURN"])
        ns.run([tool, "-w", "-t", "nat", "-A", chain, "-p", "tcp", "-j", "REDIRECT",
                "--to-ports", str(to_port)])
        ns.run([tool, "-w", "-t", "nat", "-A", "PREROUTING", "-i", interface, "-p", "tcp",
                "-j", chain])


# -- child cgroups ------------------------------------------------------------------------------

class Cgroup:
    """A child cgroup `<root>/<prefix><random>` (cgroup v2). `.path` is its directory;
    `child(name)` makes a sub-cgroup that `close()` removes too. Processes are placed with
    `in_cgroup(cmd, cgroup)`; `close()` kills whatever is still in it (children first)
    and removes the directories. Never the root cgroup: only what this object made."""

    def __init__(self, prefix, root=CGROUP2_ROOT, _name=None):
        self.root = root
        self.name = _name or prefix + secrets.token_hex(4)
        self.path = os.path.join(root, self.name)
        self.children = []
        self.created = False

    def __enter__(self):
        return self.create()

    def __exit__(self, *exc):
        self.close()

    def create(self):
        if not os.path.isfile(os.path.join(self.root, "cgroup.procs")):
            raise CommandError("%s is not a cgroup v2 mount" % self.root)
        os.mkdir(self.path)
        self.created = True
        return self

    @property
    def relative(self):
        """The path from the hierarchy's root, as xt_cgroup's --path and /proc/PID/cgroup
        name it."""
        return "/" + os.path.relpath(self.path, CGROUP2_ROOT)

    def command(self, cmd):
        """`cmd` started inside this cgroup (see `in_cgroup`)."""
        return in_cgroup(cmd, self)

    def child(self, name):
        """A sub-cgroup `<this>/<name>`, created now."""
        sub = Cgroup("", root=self.path, _name=name).create()
        self.children.append(sub)
        return sub

    def pids(self):
        try:
            with open(os.path.join(self.path, "cgroup.procs")) as f:
                return [int(p) for p in f.read().split()]
        except FileNotFoundError:
            return []

    def cpu_seconds(self):
        """(user, system) CPU seconds of everything that ran in this cgroup and its
        children (cgroup v2 `cpu.stat`, kept without any controller enabled)."""
        stat = {}
        with open(os.path.join(self.path, "cpu.stat")) as f:
            for line in f:
                key, value = line.split()
                stat[key] = int(value)
        return stat["user_usec"] / 1e6, stat["system_usec"] / 1e6

    def close(self):
        for sub in reversed(self.children):
            sub.close()
        self.children = []
        if not self.created:
            return
        for _ in range(100):
            pids = self.pids()
            if not pids:
                break
            for pid in pids:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
            time.sleep(0.02)
        for _ in range(100):
            try:
                os.rmdir(self.path)
                break
            except FileNotFoundError:
                break
            except OSError:          # EBUSY while the last killed process is reaped
                time.sleep(0.02)
        self.created = False


def in_cgroup(cmd, cgroup):
    """`cmd` started inside `cgroup`: the shell writes its own pid to cgroup.procs, then
    execs `cmd` (same pid), so the program and all its children are in the cgroup from
    their first instruction. Prefix it to a `Netns.command(...)` to enter both."""
    return ["sh", "-c", 'echo $$ > "$0/cgroup.procs" && exec "$@"', cgroup.path] + list(cmd)


# -- pods: a namespace and a cgroup with the app's and the sidecar's children -----------------

class Pod:
    """One pod, the way a node runs it: a network namespace `<netns_prefix><random>`, a cgroup
    `<cgroup_prefix><random>` with `app/` and `sidecar/` children, and, once linked to another
    pod (`link_pods`), its veth end `.dev` with address `.ip`. `close()` removes all of it
    (the namespace with every process, rule and interface in it, then the cgroups), also
    after a partial `create()`."""

    def __init__(self, netns_prefix, cgroup_prefix, ip=None):
        self.ip = ip
        self.ns = Netns(netns_prefix)
        self.cgroup = Cgroup(cgroup_prefix)
        self.app_cgroup = self.sidecar_cgroup = None
        self.dev = None

    def create(self):
        self.ns.__enter__()
        self.cgroup.create()
        self.app_cgroup = self.cgroup.child("app")
        self.sidecar_cgroup = self.cgroup.child("sidecar")
        return self

    def app_command(self, cmd, uid):
        """cmd as the pod's app: in the app cgroup, in the namespace, as `uid`."""
        return in_cgroup(self.ns.command(as_app(cmd, uid)), self.app_cgroup)

    def server_command(self, cmd):
        """cmd as an app server that starts as root (nginx drops to its workers' user)."""
        return in_cgroup(self.ns.command(cmd), self.app_cgroup)

    def sidecar_command(self, cmd):
        """cmd as the pod's proxy: in the sidecar cgroup and the namespace, as root."""
        return in_cgroup(self.ns.command(cmd), self.sidecar_cgroup)

    def call(self, fn, *args, **kw):
        """fn(*args, **kw) inside the pod's namespace (Netns.call)."""
        return self.ns.call(fn, *args, **kw)

    def close(self):
        try:
            self.ns.close()
        finally:
            self.cgroup.close()


def link_pods(a, b, prefix_len=24):
    """A veth pair between pods `a` and `b`, addressed with their `.ip`s; sets their `.dev`."""
    a.dev, b.dev = veth_pair(a.ns, b.ns, "%s/%d" % (a.ip, prefix_len), "%s/%d" % (b.ip, prefix_len))
    return a.dev, b.dev
