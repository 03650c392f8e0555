"""Local-hop acceleration (`interception.accelerate_local`, bpf/local_hops.c) on the real
kernel, with eBPF interception and with iptables interception.

A pod (network namespace, app and sidecar cgroups) and a peer pod joined by veth. The
app (in its cgroup, as the app's user) calls the peer's HTTP server through the sidecar
(outbound hop: app -> outbound listener); the peer calls the app's HTTP server through the
sidecar (inbound hop: sidecar -> 127.0.0.1:8080). Every exchange carries request and
response bodies checked by sha256 at the other end, from 1 KiB to 12 MiB (past the
per-direction budget of unanswered bytes, where a direction goes back to TCP mid-body).

Proof that the hops are accelerated: while the app's connection is open, both of its
sockets (and only hop sockets: never the sidecar's connection to the peer, never the app's
own loopback traffic) are in the instance's sc_hop_socks map, under the keys the sidecar
sees; sidecar_kernel_accelerated_sockets counts them; and the pod's loopback interface
carries a few hundred bytes of handshakes while megabytes cross the hops. With
acceleration off, the same traffic crosses loopback in full and nothing is in any map.
When the sockets close they leave the map and the gauge. An opaque TCP tunnel over an
accelerated hop is copied in userspace (the splice program cannot see the hop's bytes),
intact.
"""
import contextlib
import hashlib
import http.client
import http.server
import json
import os
import random
import socket
import subprocess
import sys
import threading
import time

import pytest

from sidecar.bpf import syscall
from sidecar.bpf.layout import HOP_KEY, unpack_endpoint
from sidecar.bpf.state import instance_dir, maps_dir
from tests.conftest import require_privileges
from tests.support.cgroups import Cgroup
from tests.support.netns import (
    APP_PYTHON, ROOT, Netns, NetnsSidecar, as_app, veth_pair)
from tests.support.prometheus import total

pytestmark = [pytest.mark.privileged, pytest.mark.timeout(120)]

POD_V4, PEER_V4 = "10.205.0.1", "10.205.0.2"
POD_V6, PEER_V6 = "fd00:205::1", "fd00:205::2"
PEER_PORT = 9080          # the peer's HTTP server (outbound destination)
PEER_ECHO_PORT = 9443     # the peer's echo server (outbound opaque TCP)
APP_PORT = 8080           # the app's HTTP server (inbound.app, loopback only)
LOCAL_ONLY_PORT = 8181    # another loopback service of the app, never a hop
KB, MB = 1024, 1024 * 1024
SIZES = [KB, 64 * KB, MB, 3 * MB, 12 * MB]


def body(seed, n):
    """The deterministic body of an exchange (the same in the app's separate process)."""
    return random.Random(seed).randbytes(n)


class BodyHandler(http.server.BaseHTTPRequestHandler):
    """POST /<seed>/<size>: reads the request body, answers `size` bytes of body(seed), with
    the sha256 of what it read in X-Got-Sha256. Keep-alive (HTTP/1.1)."""
    protocol_version = "HTTP/1.1"

    def do_POST(self):
        _, seed, size = self.path.split("/")
        n = int(self.headers["Content-Length"])
        h, left = hashlib.sha256(), n
        while left:
            chunk = self.rfile.read(min(left, MB))
            if not chunk:
                return
            h.update(chunk)
            left -= len(chunk)
        out = body(int(seed), int(size))
        self.send_response(200)
        self.send_header("Content-Length", str(len(out)))
        self.send_header("X-Got-Sha256", h.hexdigest())
        self.end_headers()
        self.wfile.write(out)
        self.server.peers.append(self.client_address[:2])

    def log_message(self, *args):
        pass


@contextlib.contextmanager
def echo_server(ns, address):
    """Echoes every byte until EOF, then half-closes; one thread per connection."""
    sock = ns.listen(address)

    def serve(conn):
        with conn:
            while True:
                data = conn.recv(1 << 20)
                if not data:
                    break
                conn.sendall(data)
            conn.shutdown(socket.SHUT_WR)

    def accept():
        while True:
            try:
                conn, _ = sock.accept()
            except OSError:
                return
            threading.Thread(target=serve, args=(conn,), daemon=True).start()
    threading.Thread(target=accept, daemon=True).start()
    try:
        yield sock
    finally:
        with contextlib.suppress(OSError):
            sock.shutdown(socket.SHUT_RDWR)
        sock.close()


@contextlib.contextmanager
def http_server(ns, address):
    """A threaded HTTP/1.1 server with BodyHandler, listening in `ns`."""
    sock = ns.listen(address)
    srv = http.server.ThreadingHTTPServer(address, BodyHandler, bind_and_activate=False)
    srv.socket.close()
    srv.socket = sock
    srv.daemon_threads = True
    srv.peers = []
    t = threading.Thread(target=srv.serve_forever, daemon=True)
    t.start()
    try:
        yield srv
    finally:
        srv.shutdown()
        srv.server_close()


# The app's HTTP server, as its own process in the app's cgroup (its accepted sockets are
# what the app's side of an inbound hop is): BodyHandler, on 127.0.0.1:<port>.
APP_SERVER = r"""
import hashlib, http.server, random, sys
class H(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    def do_POST(self):
        _, seed, size = self.path.split("/")
        n, h = int(self.headers["Content-Length"]), hashlib.sha256()
        while n:
            chunk = self.rfile.read(min(n, 1 << 20))
            if not chunk:
                return
            h.update(chunk)
            n -= len(chunk)
        out = random.Random(int(seed)).randbytes(int(size))
        self.send_response(200)
        self.send_header("Content-Length", str(len(out)))
        self.send_header("X-Got-Sha256", h.hexdigest())
        self.end_headers()
        self.wfile.write(out)
    def log_message(self, *args):
        pass
http.server.ThreadingHTTPServer.daemon_threads = True
http.server.ThreadingHTTPServer(("127.0.0.1", int(sys.argv[1])), H).serve_forever()
"""


@contextlib.contextmanager
def app_server(pod_ns, cgroup, port):
    proc = pod_ns.popen(as_app([APP_PYTHON, "-I", "-c", APP_SERVER, str(port)]), cgroup=cgroup, cwd="/")
    try:
        pod_ns.wait_for_port("127.0.0.1", port, proc=proc)
        yield proc
    finally:
        proc.kill()
        proc.wait(5)


# The app: POSTs every size over one keep-alive connection, checks both bodies, then holds
# the connection open until told to close (the test looks at the kernel meanwhile).
APP_CLIENT = r"""
import hashlib, http.client, json, random, sys
host, port = sys.argv[1], int(sys.argv[2])
sizes = [int(s) for s in sys.argv[3].split(",")]
c = http.client.HTTPConnection(host, port, timeout=30)
results = []
for i, n in enumerate(sizes):
    sent = random.Random(1000 + i).randbytes(n)
    c.request("POST", "/%d/%d" % (2000 + i, n), body=sent)
    r = c.getresponse()
    got = r.read()
    results.append({"status": r.status, "sent_ok": r.headers["X-Got-Sha256"] == hashlib.sha256(sent).hexdigest(),
                    "got_ok": got == random.Random(2000 + i).randbytes(n)})
print(json.dumps({"results": results, "local": list(c.sock.getsockname()[:2]),
                  "remote": list(c.sock.getpeername()[:2])}), flush=True)
sys.stdin.readline()
c.close()
print("closed", flush=True)
sys.stdin.readline()
"""


class App:
    """The app's client process: start, read its results, let it close, reap it."""

    def __init__(self, pod, host, port, sizes=SIZES):
        self.closed = False
        cmd = as_app([APP_PYTHON, "-I", "-c", APP_CLIENT, host, str(port), ",".join(map(str, sizes))])
        self.proc = pod["pod"].popen(cmd, cgroup=pod["app_cg"], cwd="/", stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)

    def results(self):
        line = self.proc.stdout.readline()
        if not line:
            raise RuntimeError("app client failed: %s" % self.proc.stderr.read())
        return json.loads(line)

    def close_connection(self):
        self.proc.stdin.write("close\n")
        self.proc.stdin.flush()
        assert self.proc.stdout.readline().strip() == "closed"
        self.closed = True

    def finish(self):
        with contextlib.suppress(OSError):
            self.proc.stdin.write("exit\n" if self.closed else "close\nexit\n")
            self.proc.stdin.flush()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(5)


def _pod(mode, accelerate):
    require_privileges(root=True, netns=True, tools=("ip", "nsenter", "setpriv", "iptables", "ip6tables"))
    stack = contextlib.ExitStack()
    pod = stack.enter_context(Netns())
    peer = stack.enter_context(Netns())
    app_cg = stack.enter_context(Cgroup())
    sc_cg = stack.enter_context(Cgroup())
    dev, _ = veth_pair(pod, peer, ["%s/24" % POD_V4, "%s/64" % POD_V6],
                       ["%s/24" % PEER_V4, "%s/64" % PEER_V6])
    servers = {"peer": stack.enter_context(http_server(peer, (PEER_V4, PEER_PORT))),
               "echo": stack.enter_context(echo_server(peer, (PEER_V4, PEER_ECHO_PORT))),
               "peer6": stack.enter_context(http_server(peer, (PEER_V6, PEER_PORT))),
               "app": stack.enter_context(app_server(pod, app_cg, APP_PORT)),
               "local": stack.enter_context(app_server(pod, app_cg, LOCAL_ONLY_PORT))}
    sc = stack.enter_context(NetnsSidecar(
        pod, mode=mode, app_cgroup=app_cg, cgroup=sc_cg, interface=dev, app=("127.0.0.1", APP_PORT),
        extra={"interception": {"accelerate_local": accelerate}}))
    return stack, {"pod": pod, "peer": peer, "app_cg": app_cg, "sc_cg": sc_cg, "dev": dev,
                   "servers": servers, "sidecar": sc, "mode": mode}


@pytest.fixture(scope="module", params=["ebpf", "iptables"])
def accelerated(request):
    stack, pod = _pod(request.param, True)
    with stack:
        yield pod


@pytest.fixture(scope="module")
def not_accelerated():
    stack, pod = _pod("ebpf", False)
    with stack:
        yield pod


# -- what the kernel shows ------------------------------------------------------------------

def _instance_path(pod):
    info = pod["sidecar"].stats()["interception"]
    return instance_dir(info["instance"])


def hop_sockets(pod):
    """The keys of sc_hop_socks now, as ((local host, port), (remote host, port)) pairs."""
    try:
        fd = syscall.obj_get(os.path.join(maps_dir(_instance_path(pod)), "sc_hop_socks"))
    except FileNotFoundError:
        return None
    try:
        keys = syscall.map_keys(fd, HOP_KEY.size)
    finally:
        os.close(fd)
    return {(unpack_endpoint(k[:20]), unpack_endpoint(k[20:])) for k in keys}


def gauge(pod):
    return total(pod["sidecar"].metrics(), "sidecar_kernel_accelerated_sockets")


def loopback_bytes(pod):
    """rx + tx bytes of the pod's lo so far (its own /proc/net/dev)."""
    out = pod["pod"].run(["cat", "/proc/net/dev"]).stdout
    for line in out.splitlines():
        name, _, rest = line.partition(":")
        if name.strip() == "lo":
            fields = rest.split()
            return int(fields[0]) + int(fields[8])
    raise AssertionError(out)


def wait_for(predicate, timeout=5.0):
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True


def _all_identical(result):
    assert [(r["status"], r["sent_ok"], r["got_ok"]) for r in result["results"]] == \
        [(200, True, True)] * len(result["results"]), result


def _inbound_exchanges(pod, sizes, host=POD_V4):
    """The peer POSTs every size to the pod's app port over one connection; checks bodies."""
    def call():
        c = http.client.HTTPConnection(host, APP_PORT, timeout=30)
        out = []
        for i, n in enumerate(sizes):
            sent = body(3000 + i, n)
            c.request("POST", "/%d/%d" % (4000 + i, n), body=sent)
            r = c.getresponse()
            got = r.read()
            out.append((r.status, r.headers["X-Got-Sha256"] == hashlib.sha256(sent).hexdigest(),
                        got == body(4000 + i, n)))
        c.close()
        return out
    return pod["peer"].call(call)


# -- outbound hop ---------------------------------------------------------------------------

@pytest.mark.parametrize("host", [PEER_V4, PEER_V6], ids=["ipv4", "ipv6"])
def test_outbound_hop_is_accelerated_and_bodies_are_identical(accelerated, host):
    pod = accelerated
    lo_before = loopback_bytes(pod)
    app = App(pod, host, PEER_PORT)
    try:
        result = app.results()
        _all_identical(result)
        moved = 2 * sum(SIZES)
        lo = loopback_bytes(pod) - lo_before
        # Both of the hop's sockets are in the map, under the sidecar's view of the
        # connection: the app's own endpoint and the outbound listener.
        local = tuple(result["local"])
        listener = ("127.0.0.1" if ":" not in local[0] else "::1", 15001)
        socks = hop_sockets(pod)
        assert (local, listener) in socks and (listener, local) in socks, (result, socks)
        assert gauge(pod) >= 2
        # Only the 12 MiB exchange went past the budget (4 MiB of unanswered bytes per
        # direction) and back to TCP; the rest did not touch loopback beyond handshakes.
        # (lo counts each byte twice: sent and received.)
        past_budget = 2 * 2 * (12 * MB - 4 * MB)
        assert lo < 1.1 * past_budget, (lo, moved)
        app.close_connection()
        assert wait_for(lambda: (local, listener) not in hop_sockets(pod) and
                        (listener, local) not in hop_sockets(pod))
    finally:
        app.finish()


def test_small_exchanges_skip_loopback_entirely(accelerated):
    """Within the budget, the hop's bytes never appear on loopback: only the handshake and
    the close do."""
    pod = accelerated
    sizes = [64 * KB] * 30
    lo_before = loopback_bytes(pod)
    app = App(pod, PEER_V4, PEER_PORT, sizes)
    try:
        _all_identical(app.results())
    finally:
        app.finish()
    lo = loopback_bytes(pod) - lo_before
    assert lo < 20 * KB, "%d bytes on loopback for %d bytes across the hop" % (lo, 2 * sum(sizes))


def test_without_acceleration_the_same_bytes_cross_loopback_and_no_map_exists(not_accelerated):
    pod = not_accelerated
    sizes = [64 * KB] * 30
    lo_before = loopback_bytes(pod)
    app = App(pod, PEER_V4, PEER_PORT, sizes)
    try:
        _all_identical(app.results())
        assert hop_sockets(pod) is None
        assert gauge(pod) == 0
    finally:
        app.finish()
    assert loopback_bytes(pod) - lo_before > 2 * sum(sizes)


def test_only_hop_sockets_are_in_the_map(accelerated):
    """The app's own loopback traffic and the sidecar's connection to the peer stay on TCP."""
    pod = accelerated
    app = App(pod, "127.0.0.1", LOCAL_ONLY_PORT, [64 * KB])
    try:
        result = app.results()
        _all_identical(result)
        local = tuple(result["local"])
        own = [k for k in hop_sockets(pod) if local in k]
        assert own == [], own
    finally:
        app.finish()
    app = App(pod, PEER_V4, PEER_PORT, [64 * KB])
    try:
        app.results()
        for local, remote in hop_sockets(pod):
            assert PEER_V4 not in (local[0], remote[0]), hop_sockets(pod)
    finally:
        app.finish()


# -- inbound hop ------------------------------------------------------------------------------

def test_inbound_hop_is_accelerated_and_bodies_are_identical(accelerated):
    pod = accelerated
    lo_before = loopback_bytes(pod)
    sizes = [KB, 64 * KB, MB, 2 * MB]
    assert _inbound_exchanges(pod, sizes) == [(200, True, True)] * len(sizes)
    lo = loopback_bytes(pod) - lo_before
    assert lo < 40 * KB, "%d bytes on loopback for %d bytes across the hop" % (lo, 2 * sum(sizes))
    # The sidecar's pooled connection to the app (and the app's side of it) are in the map.
    socks = hop_sockets(pod)
    app = ("127.0.0.1", APP_PORT)
    sidecar_side = [k for k in socks if k[1] == app]
    app_side = [k for k in socks if k[0] == app]
    assert sidecar_side and app_side, socks
    assert {(k[1], k[0]) for k in sidecar_side} & set(app_side)


def test_the_gauge_and_status_count_what_the_map_holds(accelerated):
    pod = accelerated
    app = App(pod, PEER_V4, PEER_PORT, [KB])
    try:
        app.results()
        n = len(hop_sockets(pod))
        assert n >= 2 and gauge(pod) == n
        hops = pod["sidecar"].stats()["interception"]
        hops = hops.get("local_hops") or hops["programs"]["local_hops"]
        assert hops["accelerated_sockets"] == n and hops["outbound_hops"] >= 1
        r = pod["pod"].run([sys.executable, "-m", "sidecar.cli", "bpf", "status"], cwd=ROOT)
        assert "local-hop acceleration: %d sockets accelerated now" % n in r.stdout, r.stdout
        assert "sc_hop_msg" in r.stdout and "map sc_hop_socks" in r.stdout
    finally:
        app.finish()
    assert wait_for(lambda: gauge(pod) == len(hop_sockets(pod)))


OPAQUE_CLIENT = r"""
import hashlib, json, socket, sys, threading
data = bytes([0]) + bytes(range(256)) * (int(sys.argv[3]) // 256)
s = socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=30)
got = []
t = threading.Thread(target=lambda: got.extend(iter(lambda: s.recv(1 << 20), b"")))
t.start()
s.sendall(data)
s.shutdown(socket.SHUT_WR)
t.join(30)
print(json.dumps({"same": b"".join(got) == data, "bytes": len(data)}))
"""


def test_an_opaque_tunnel_over_an_accelerated_hop_is_copied_intact(accelerated):
    """The sidecar's socket of an accelerated hop receives the app's bytes outside TCP,
    where the splice program would not see them: that tunnel is copied in userspace, and
    its bytes (8 MiB each way, half-close passed on) arrive unchanged."""
    from tests.support.netns import run_app_python
    pod = accelerated
    before = total(pod["sidecar"].metrics(), "sidecar_tcp_tunnels_total", path="userspace")
    result = run_app_python(pod["pod"], OPAQUE_CLIENT, PEER_V4, PEER_ECHO_PORT, 8 * MB,
                            cgroup=pod["app_cg"], timeout=60)
    assert result == {"same": True, "bytes": 8 * MB + 1}
    assert wait_for(lambda: total(pod["sidecar"].metrics(), "sidecar_tcp_tunnels_total",
                                  path="userspace") == before + 1)
