"""Network namespaces for the integration tests: pods, veth pairs, and the real sidecar
inside a pod, intercepting the pod's traffic in its own mode (iptables or eBPF).

The namespaces and veth pairs come from `sidecar.netns_topology` (shared with the mesh
benchmark); this module adds the tests' defaults (the app's uid, the `sc-t-` prefix), the
real sidecar inside a pod, and small servers. The sidecar installs its interception inside
its pod only, and leaving a `Netns` block kills every process still in the namespace,
deletes its interfaces and the namespace itself, also when the test failed.

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
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time

import yaml

from sidecar import netns_topology as _topology
from sidecar.netns_topology import (  # noqa: F401  (re-exported for the tests)
    CommandError, check_command, veth_pair)
from sidecar.netns_topology import kill_process_group as _kill_group

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
APP_UID = 65534          # `nobody`: the app's user, whose outbound TCP is intercepted
APP_PYTHON = "/usr/bin/python3"


class Netns(_topology.Netns):
    """A network namespace `sc-t-<random>` with `lo` up; removed on exit with everything in it."""

    def __init__(self, prefix="sc-t-"):
        super().__init__(prefix)


def as_app(cmd, uid=APP_UID):
    """`cmd` run as the app's unprivileged user (its TCP is what interception captures)."""
    return _topology.as_app(cmd, uid)


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

    `mode` is interception.mode; `app_cgroup` (a Cgroup, or "pod") is interception.cgroup,
    and `cgroup` (a Cgroup) the one the sidecar runs in (eBPF mode refuses the root cgroup;
    with "pod", its parent is the pod's);
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
            interception["cgroup"] = app_cgroup if isinstance(app_cgroup, str) else app_cgroup.path
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

    def metrics(self):
        """The Prometheus text of /metrics, scraped inside the namespace."""
        import http.client
        host, _, port = self.config["telemetry"]["metrics"]["listen"].rpartition(":")
        host = "127.0.0.1" if host in ("0.0.0.0", "") else host.strip("[]")

        def call():
            c = http.client.HTTPConnection(host, int(port), timeout=5)
            try:
                c.request("GET", "/metrics")
                r = c.getresponse()
                assert r.status == 200, r.status
                return r.read().decode()
            finally:
                c.close()
        return self.ns.call(call)

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


# An app's GET / to argv[1]:argv[2] (for run_app_python): the echo server's view of the
# request (headers, peer) and the app socket's own address, as JSON.
HTTP_GET = r"""
import http.client, json, sys
c = http.client.HTTPConnection(sys.argv[1], int(sys.argv[2]), timeout=5)
c.request("GET", "/")
local = c.sock.getsockname()
r = c.getresponse()
body = json.loads(r.read())
print(json.dumps({"headers": dict(body["headers"]), "peer": body["peer"], "local": list(local[:2])}))
"""
