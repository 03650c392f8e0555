"""Network namespaces for the integration tests: pods, veth pairs, the real sidecar inside a
pod, and iptables REDIRECT interception.

The namespaces, veth pairs and iptables rules come from `sidecar.netns_topology` (shared
with the mesh benchmark); this module adds the tests' defaults (the app's uid, the `sc-t-`
prefix), the real sidecar inside a pod, and small servers. Leaving a `Netns` block kills every
process still in the namespace, deletes its interfaces and the namespace itself, also when the
test failed.

    with Netns() as client, Netns() as server:
        veth_pair(client, server, ["10.200.0.1/24", "fd00:200::1/64"],
                  ["10.200.0.2/24", "fd00:200::2/64"])
        redirect_outbound(client, 15001, uid=APP_UID)
        with NetnsSidecar(client) as sc:
            client.run(as_app(["python3", "-c", "..."]))

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

import yaml

from sidecar import netns_topology as _topology
from sidecar.netns_topology import (  # noqa: F401  (re-exported for the tests)
    CommandError, check_command, redirect_inbound, veth_pair)
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


def run_app_python(ns, script, *args, input=b"", timeout=15.0, uid=APP_UID):
    """Runs a Python snippet in `ns` as the app's user (system python3, isolated mode, cwd /)
    with `args` in sys.argv[1:] and `input` on stdin; returns its stdout parsed as JSON."""
    cmd = as_app([APP_PYTHON, "-I", "-c", script] + [str(a) for a in args], uid=uid)
    r = ns.run(cmd, check=False, timeout=timeout, input=input, text=False, cwd="/")
    if r.returncode != 0:
        raise CommandError("app script in %s failed (exit %d):\n%s" % (
            ns.name, r.returncode, r.stderr.decode(errors="replace")))
    return json.loads(r.stdout)


def redirect_outbound(ns, to_port, uid=APP_UID, **kw):
    """Outbound TCP of the app's user in `ns` REDIRECTed to `to_port` (see
    sidecar.netns_topology.redirect_outbound)."""
    return _topology.redirect_outbound(ns, to_port, uid, **kw)


# -- the real sidecar inside a namespace ------------------------------------------------------

def _merge(base, extra):
    for key, value in (extra or {}).items():
        if isinstance(value, dict) and isinstance(base.get(key), dict):
            _merge(base[key], value)
        else:
            base[key] = value
    return base


def _fmt(address):
    host, port = address
    return ("[%s]:%d" if ":" in host else "%s:%d") % (host, port)


class NetnsSidecar:
    """`python -m sidecar.cli run -c FILE` inside a namespace, configured like
    `tests.support.sidecar_process.SidecarProcess` (the ports are the pod's own, so Istio's
    defaults are used). `.inbound`, `.outbound`: listener addresses; `.log()`: its output.
    `extra` is merged into the config dict key by key."""

    def __init__(self, ns, inbound=("0.0.0.0", 15006), outbound=("127.0.0.1", 15001),
                 app=("127.0.0.1", 8080), workers=1, extra=None):
        self.ns = ns
        self.inbound = tuple(inbound)
        self.outbound = tuple(outbound)
        self.config = _merge({
            "workers": workers,
            "drain_timeout": "2s",
            "interception": {"mode": "iptables"},
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

    def start(self, timeout=15.0):
        with open(self.config_path, "w") as f:
            yaml.safe_dump(self.config, f)
        self._log = open(self.log_path, "wb")
        self.proc = self.ns.popen([sys.executable, "-m", "sidecar.cli", "run", "-c",
                                   self.config_path],
                                  cwd=ROOT, stdout=self._log, stderr=subprocess.STDOUT)
        try:
            self.ns.wait_for_port(*self.inbound, timeout=timeout, proc=self.proc)
            self.ns.wait_for_port(*self.outbound, timeout=timeout, proc=self.proc)
        except BaseException:
            self.stop()
            raise RuntimeError("sidecar did not start in %s:\n%s" % (self.ns.name, self.log()))
        return self

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
