"""Network namespaces for the integration tests: pods, veth pairs, and the real sidecar
inside a pod, intercepting the pod's traffic in its own mode (iptables or eBPF).

Kernel hygiene (DESIGN.md): everything here happens inside namespaces this module creates.
Veth pairs are created directly inside their two namespaces (never on the host), the
sidecar installs its interception inside its pod only, and leaving a `Netns` block kills
every process still in the namespace, deletes its interfaces and the namespace itself,
also when the test failed.

    with Netns() as client, Netns() as server, Cgroup() as app, Cgroup() as sc_cg:
        dev, _ = veth_pair(client, server, ["10.200.0.1/24", "fd00:200::1/64"],
                           ["10.200.0.2/24", "fd00:200::2/64"])
        with NetnsSidecar(client, mode="ebpf", app_cgroup=app, cgroup=sc_cg, interface=dev):
            run_app_python(client, "...", cgroup=app)

Commands run through `nsenter --net=/var/run/netns/NAME`, not `ip netns exec`, so they keep
the host's /sys (cgroup v2 mount, bpffs). Sockets the test process itself needs inside a
namespace (listeners, servers, clients) are made by `Netns.call`, which runs a function in a
short-lived thread that has entered the namespace: a socket belongs to the namespace it was
created in, whichever thread uses it later.
"""
import contextlib
import ctypes
import json
import os
import secrets
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time

import yaml

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
NETNS_DIR = "/var/run/netns"
CLONE_NEWNET = 0x40000000
APP_UID = 65534          # `nobody`: the app's user, whose outbound TCP is intercepted
APP_PYTHON = "/usr/bin/python3"

_libc = ctypes.CDLL(None, use_errno=True)


class CommandError(RuntimeError):
    pass


def _check(cmd, timeout=30):
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    if r.returncode != 0:
        raise CommandError("%s: exit %d: %s" % (" ".join(cmd), r.returncode,
                                                (r.stderr or r.stdout).strip()))
    return r


def as_app(cmd, uid=APP_UID):
    """`cmd` run as the app's unprivileged user (its TCP is what interception captures)."""
    return ["setpriv", "--reuid=%d" % uid, "--regid=%d" % uid, "--clear-groups", "--"] + list(cmd)


def run_app_python(ns, script, *args, input=b"", timeout=15.0, uid=APP_UID, cgroup=None):
    """Runs a Python snippet in `ns` (and in `cgroup`, the app's) as the app's user (system
    python3, isolated mode, cwd /) with `args` in sys.argv[1:] and `input` on stdin;
    returns its stdout parsed as JSON."""
    cmd = as_app([APP_PYTHON, "-I", "-c", script] + [str(a) for a in args], uid=uid)
    r = ns.run(cmd, check=False, timeout=timeout, input=input, text=False, cwd="/", cgroup=cgroup)
    if r.returncode != 0:
        raise CommandError("app script in %s failed (exit %d):\n%s" % (
            ns.name, r.returncode, r.stderr.decode(errors="replace")))
    return json.loads(r.stdout)


class Netns:
    """A network namespace `sc-t-<random>` with `lo` up; removed on exit with everything in it."""

    def __init__(self, prefix="sc-t-"):
        self.name = prefix + secrets.token_hex(4)
        self.path = os.path.join(NETNS_DIR, self.name)
        self.procs = []
        self.created = False

    # -- lifecycle ---------------------------------------------------------------------------

    def __enter__(self):
        _check(["ip", "netns", "add", self.name])
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
                _kill_group(proc)
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

    def ip(self, *args):
        return _check(["ip", "-n", self.name] + list(args))

    def command(self, cmd, cgroup=None):
        """`cmd` run in this namespace (and first moved into `cgroup`, a Cgroup, if given:
        the cgroup is joined before nsenter, which keeps the host's /sys)."""
        cmd = ["nsenter", "--net=" + self.path, "--"] + list(cmd)
        return cgroup.command(cmd) if cgroup is not None else cmd

    def run(self, cmd, check=True, timeout=30, cgroup=None, **kw):
        """Runs `cmd` in the namespace to completion; text output captured by default."""
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


def _kill_group(proc):
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
    _check(["ip", "link", "add", dev_a, "netns", ns_a.name, "type", "veth",
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


# -- the real sidecar inside a namespace ------------------------------------------------------

def _merge(base, extra):
    for key, value in (extra or {}).items():
        if isinstance(value, dict) and isinstance(base.get(key), dict):
            _merge(base[key], value)
        else:
            base[key] = value
    return base


def _admin_address(config):
    host, _, port = config["admin"]["listen"].rpartition(":")
    return host.strip("[]"), int(port)


def _fmt(address):
    host, port = address
    return ("[%s]:%d" if ":" in host else "%s:%d") % (host, port)


class NetnsSidecar:
    """`python -m sidecar.cli run -c FILE` inside a namespace, configured like
    `tests.support.sidecar_process.SidecarProcess` (the ports are the pod's own, so Istio's
    defaults are used). `.inbound`, `.outbound`: listener addresses; `.log()`: its output.

    `mode` is interception.mode; `app_cgroup` (a Cgroup) is interception.cgroup, and
    `cgroup` (a Cgroup) the one the sidecar runs in (eBPF mode refuses the root cgroup);
    `interface` the pod interface. `extra` is merged into the config dict key by key;
    `prefix` goes before the command (inside the namespace), `env` adds to its environment.
    `start()` returns once /readyz answers 200 (the kernel side attached), unless told not
    to wait."""

    def __init__(self, ns, inbound=("0.0.0.0", 15006), outbound=("127.0.0.1", 15001),
                 app=("127.0.0.1", 8080), workers=1, extra=None, mode="iptables",
                 app_cgroup=None, cgroup=None, interface=None, prefix=(), env=None):
        self.ns = ns
        self.prefix = list(prefix)     # e.g. setpriv dropping capabilities
        self.env = env
        self.inbound = tuple(inbound)
        self.outbound = tuple(outbound)
        self.cgroup = cgroup
        interception = {"mode": mode}
        if app_cgroup is not None:
            interception["cgroup"] = app_cgroup.path
        if interface is not None:
            interception["interface"] = interface
        self.config = _merge({
            "workers": workers,
            "drain_timeout": "2s",
            "interception": interception,
            "inbound": {"listen": _fmt(self.inbound), "app": _fmt(app)},
            "outbound": {"listen": _fmt(self.outbound)},
            "admin": {"listen": "127.0.0.1:15000"},
            "telemetry": {
                "metrics": {"listen": "127.0.0.1:15090"},
                "health": {"listen": "127.0.0.1:15021"},
                "access_log": {"path": None},
            },
        }, extra)
        self.dir = tempfile.mkdtemp(prefix="sidecar-netns-test-")
        self.config_path = os.path.join(self.dir, "sidecar.yaml")
        self.log_path = os.path.join(self.dir, "sidecar.log")
        self.proc = None
        self._log = None

    def write_config(self):
        """Writes the config atomically (the sidecar's file watch never sees half a file)."""
        tmp = self.config_path + ".tmp"
        with open(tmp, "w") as f:
            yaml.safe_dump(self.config, f)
        os.replace(tmp, self.config_path)

    def spawn(self):
        """Starts the process and returns it, without waiting for anything."""
        self.write_config()
        self._log = open(self.log_path, "wb")
        env = dict(os.environ, **self.env) if self.env else None
        self.proc = self.ns.popen(self.prefix + [sys.executable, "-m", "sidecar.cli", "run", "-c",
                                                 self.config_path], cgroup=self.cgroup, env=env,
                                  cwd=ROOT, stdout=self._log, stderr=subprocess.STDOUT)
        return self.proc

    def start(self, timeout=15.0, wait_ready=True):
        self.spawn()
        try:
            self.ns.wait_for_port(*self.inbound, timeout=timeout, proc=self.proc)
            self.ns.wait_for_port(*self.outbound, timeout=timeout, proc=self.proc)
            if wait_ready:
                self.wait_ready(timeout)
        except BaseException:
            self.stop()
            raise RuntimeError("sidecar did not start in %s:\n%s" % (self.ns.name, self.log()))
        return self

    def admin(self, path, method="GET"):
        """(status, body text) of an admin API call, made inside the namespace."""
        import http.client
        host, port = _admin_address(self.config)

        def call():
            c = http.client.HTTPConnection(host, port, timeout=5)
            try:
                c.request(method, path)
                r = c.getresponse()
                return r.status, r.read().decode(errors="replace")
            finally:
                c.close()
        return self.ns.call(call)

    def stats(self):
        status, body = self.admin("/stats")
        assert status == 200, body
        return json.loads(body)

    def wait_ready(self, timeout=15.0):
        deadline = time.monotonic() + timeout
        last = None
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError("sidecar exited with %s" % self.proc.returncode)
            try:
                last = self.admin("/readyz")
                if last[0] == 200:
                    return last[1]
            except OSError as e:
                last = e
            if time.monotonic() > deadline:
                raise TimeoutError("sidecar not ready after %gs: %s" % (timeout, last))
            time.sleep(0.05)

    def stop(self, timeout=10.0):
        """SIGTERM (drain), then SIGKILL of the whole group. Returns the exit code."""
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                pass
        _kill_group(self.proc)
        with contextlib.suppress(ValueError):
            self.ns.procs.remove(self.proc)
        if self._log is not None:
            self._log.close()
            self._log = None
        return self.proc.returncode

    def log(self):
        try:
            with open(self.log_path, "rb") as f:
                return f.read().decode(errors="replace")
        except OSError:
            return ""

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()


# -- servers living in a namespace, run by the test process -------------------------------------

class TcpServer:
    """A threaded TCP server listening inside `ns` on `address`, running `handler(conn,
    server)` per connection in its own thread. `.peers`: the peer (host, port) of every
    accepted connection; `.records`: what handlers append; `.errors`: handler exceptions."""

    def __init__(self, ns, address, handler):
        self.handler = handler
        self.sock = ns.listen(tuple(address))
        self.address = self.sock.getsockname()[:2]
        self.peers = []
        self.records = []
        self.errors = []
        self.conns = set()
        self.lock = threading.Lock()
        self.closed = False
        self.thread = threading.Thread(target=self._accept, daemon=True)

    def _accept(self):
        while not self.closed:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            with self.lock:
                self.conns.add(conn)
                self.peers.append(conn.getpeername()[:2])
            threading.Thread(target=self._run, args=(conn,), daemon=True).start()

    def _run(self, conn):
        try:
            self.handler(conn, self)
        except Exception as e:
            self.errors.append(e)
        finally:
            with self.lock:
                self.conns.discard(conn)
            conn.close()

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.close()

    def close(self):
        self.closed = True
        with contextlib.suppress(OSError):
            self.sock.shutdown(socket.SHUT_RDWR)
        self.sock.close()
        self.thread.join(5)
        with self.lock:
            for conn in list(self.conns):
                with contextlib.suppress(OSError):
                    conn.shutdown(socket.SHUT_RDWR)


def read_http_request(conn, timeout=10.0):
    """(request line, headers list of (lower-case name, value)) of one request without a body."""
    conn.settimeout(timeout)
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = conn.recv(65536)
        if not chunk:
            raise EOFError("connection closed inside a request head")
        data += chunk
    head = data.split(b"\r\n\r\n", 1)[0].decode("latin-1").split("\r\n")
    headers = []
    for line in head[1:]:
        name, _, value = line.partition(":")
        headers.append((name.strip().lower(), value.strip()))
    return head[0], headers


def echo_headers_handler(conn, server):
    """HTTP/1.1 handler, one request per connection: answers with a JSON body of what it
    received: {"request": line, "headers": [[name, value]...], "peer": [host, port]}."""
    peer = list(conn.getpeername()[:2])
    line, headers = read_http_request(conn)
    record = {"request": line, "headers": headers, "peer": peer}
    server.records.append(record)
    body = json.dumps(record).encode()
    conn.sendall(b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\n"
                 b"content-length: %d\r\nconnection: close\r\n\r\n%s" % (len(body), body))


def echo_handler(conn, server):
    """Echoes every byte until EOF, then closes; records {"peer", "bytes", "eof": True}."""
    peer = conn.getpeername()[:2]
    total = 0
    while True:
        chunk = conn.recv(262144)
        if not chunk:
            break
        conn.sendall(chunk)
        total += len(chunk)
    server.records.append({"peer": peer, "bytes": total, "eof": True})
