"""Transparent interception, one behavioural suite for every mode the sidecar installs itself:
eBPF (connect/sockops/getsockopt on cgroups, TC steering on the pod interface) on the app's
cgroup and on the pod's (`interception.cgroup: pod`), iptables matching the app's cgroup or
the pod's, and iptables matching every user but the sidecar's.

Two pods (network namespaces) joined by a veth pair. The pod under test runs the sidecar
(in a cgroup of its own) and its app (in the app's cgroup, as uid 65534); the peer pod runs
plain servers and clients. In the pod modes both cgroups are children `app/` and `sidecar/`
of one pod cgroup, as Kubernetes places containers, and interception is attached to
(iptables: matches) that pod cgroup, the sidecar's own included. Outbound: the app's connections reach the peer through the
sidecar, which finds their original destination (HTTP proxied, opaque TCP tunnelled,
server-speaks-first tunnelled after the detect timeout); excluded ports go direct.
Inbound: the peer's connections to the pod reach the sidecar's inbound listener with
their original destination kept (the passthrough port is recognised; HTTP goes to the
app), except excluded ports and the sidecar's own listeners.

Evidence that a connection went through the sidecar: HTTP requests carry the
`x-request-id` the sidecar adds; for opaque TCP, the server sees another client port than
the app's socket has (the sidecar's upstream connection). Direct connections: the server's
peer is the client's own socket, and no header was added.
"""
import hashlib
import json
import os
import signal
import socket
import sys
import time

import pytest

from tests.conftest import require_privileges
from tests.support.cgroups import Cgroup
from tests.support.netns import (
    ROOT, Netns, NetnsSidecar, TcpServer, echo_headers_handler, run_app_python, veth_pair)

pytestmark = [pytest.mark.privileged, pytest.mark.timeout(90)]

POD_V4, PEER_V4 = "10.201.0.1", "10.201.0.2"
POD_V6, PEER_V6 = "fd00:201::1", "fd00:201::2"
HTTP_PORT = 9080            # peer's HTTP servers (outbound destination)
EXCLUDED_OUT = 9081         # exclude_outbound_ports
BANNER_PORT = 2525          # server speaks first
BINARY_PORT = 8443          # client sends binary first
APP_PORT = 8080             # the pod's app (loopback only: reachable through the sidecar)
DB_PORT = 5432              # inbound.tcp_passthrough_ports, app on loopback
EXCLUDED_IN = 9091          # exclude_inbound_ports: the app listens on the pod address itself
BANNER = b"220 smtp ready\r\n"

MODES = ["ebpf", "ebpf-pod", "iptables", "iptables-pod", "iptables-uid"]


def banner_handler(conn, server):
    conn.sendall(BANNER)
    while True:
        chunk = conn.recv(65536)
        if not chunk:
            break
        conn.sendall(chunk)


def binary_sink_handler(conn, server):
    data = bytearray()
    while True:
        chunk = conn.recv(65536)
        if not chunk:
            break
        data += chunk
    server.records.append(bytes(data))
    conn.sendall(hashlib.sha256(data).hexdigest().encode())


def db_handler(conn, server):
    """Echoes until EOF; records the peer."""
    server.records.append({"peer": conn.getpeername()[:2]})
    while True:
        chunk = conn.recv(65536)
        if not chunk:
            break
        conn.sendall(chunk)


@pytest.fixture(scope="module", params=MODES)
def pods(request):
    mode = request.param
    require_privileges(root=True, netns=True,
                       tools=("ip", "nsenter", "setpriv", "iptables", "ip6tables"))
    with Netns() as pod, Netns() as peer, Cgroup() as first_cg, Cgroup() as second_cg:
        if mode.endswith("-pod"):
            pod_cg = first_cg
            app_cg, sidecar_cg = pod_cg.child("app"), pod_cg.child("sidecar")
            intercepted_cg = pod_cg
        else:
            app_cg, sidecar_cg = first_cg, second_cg
            intercepted_cg = app_cg
        pod_dev, _ = veth_pair(pod, peer, ["%s/24" % POD_V4, "%s/64" % POD_V6],
                               ["%s/24" % PEER_V4, "%s/64" % PEER_V6])
        servers = {}
        try:
            for host in (PEER_V4, PEER_V6):
                for port in (HTTP_PORT, EXCLUDED_OUT):
                    servers[(host, port)] = TcpServer(peer, (host, port), echo_headers_handler)
            servers["banner"] = TcpServer(peer, (PEER_V4, BANNER_PORT), banner_handler)
            servers["binary"] = TcpServer(peer, (PEER_V4, BINARY_PORT), binary_sink_handler)
            servers["app"] = TcpServer(pod, ("127.0.0.1", APP_PORT), echo_headers_handler)
            servers["db"] = TcpServer(pod, ("127.0.0.1", DB_PORT), db_handler)
            servers["excluded_in"] = TcpServer(pod, ("0.0.0.0", EXCLUDED_IN), echo_headers_handler)
            for srv in servers.values():
                srv.__enter__()
            sidecar = NetnsSidecar(
                pod, mode="iptables" if mode.startswith("iptables") else "ebpf",
                app_cgroup={"iptables-uid": None, "ebpf-pod": "pod", "iptables-pod": "pod"}.get(mode, app_cg),
                cgroup=sidecar_cg,
                interface=pod_dev, app=("127.0.0.1", APP_PORT),
                extra={"interception": {"exclude_outbound_ports": [EXCLUDED_OUT],
                                        "exclude_inbound_ports": [EXCLUDED_IN]},
                       "inbound": {"tcp_passthrough_ports": [DB_PORT]},
                       "telemetry": {"health": {"listen": "0.0.0.0:15021"}}})
            with sidecar:
                yield {"pod": pod, "peer": peer, "app_cg": app_cg, "sidecar_cg": sidecar_cg,
                       "intercepted_cg": intercepted_cg, "servers": servers, "sidecar": sidecar,
                       "mode": mode, "dev": pod_dev}
            for srv in servers.values():
                assert srv.errors == [], srv.errors
        finally:
            for srv in servers.values():
                srv.close()


def _app(pods, script, *args, **kw):
    return run_app_python(pods["pod"], script, *args, cgroup=pods["app_cg"], **kw)


HTTP_GET = r"""
import http.client, json, sys
host, port = sys.argv[1], int(sys.argv[2])
c = http.client.HTTPConnection(host, port, timeout=5)
c.request("GET", "/reviews/1")
local = c.sock.getsockname()
r = c.getresponse()
print(json.dumps({"status": r.status, "body": json.loads(r.read()), "local": list(local[:2])}))
"""


def _headers(result):
    return dict((k, v) for k, v in result["body"]["headers"])


def _through_sidecar(result, host, port=HTTP_PORT):
    """Asserts an HTTP exchange went through the sidecar to host:port."""
    assert result["status"] == 200
    headers = _headers(result)
    assert result["body"]["request"] == "GET /reviews/1 HTTP/1.1"
    assert "x-request-id" in headers, headers
    assert headers["host"] in ("%s:%d" % (host, port), "[%s]:%d" % (host, port))
    # The server's peer is the sidecar's upstream connection, not the app's socket.
    assert result["body"]["peer"][1] != result["local"][1]


def _direct(result):
    assert result["status"] == 200
    headers = _headers(result)
    assert "x-request-id" not in headers and "x-forwarded-for" not in headers, headers
    assert result["body"]["peer"][1] == result["local"][1]


# -- outbound ------------------------------------------------------------------------------

@pytest.mark.parametrize("host,pod_ip", [(PEER_V4, POD_V4), (PEER_V6, POD_V6)], ids=["ipv4", "ipv6"])
def test_outbound_http_reaches_its_original_destination(pods, host, pod_ip):
    result = _app(pods, HTTP_GET, host, HTTP_PORT)
    _through_sidecar(result, host)
    assert result["body"]["peer"][0] == pod_ip     # leaving by the pod's own address


HTTP10_WITHOUT_HOST = r"""
import json, socket, sys
s = socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=5)
s.sendall(b"GET /legacy HTTP/1.0\r\n\r\n")
data = b""
while True:
    chunk = s.recv(65536)
    if not chunk:
        break
    data += chunk
head, _, body = data.partition(b"\r\n\r\n")
print(json.dumps({"status": int(head.split(b" ")[1]), "body": json.loads(body)}))
"""


@pytest.mark.parametrize("host,expected", [(PEER_V4, "%s:%d" % (PEER_V4, HTTP_PORT)),
                                           (PEER_V6, "[%s]:%d" % (PEER_V6, HTTP_PORT))],
                         ids=["ipv4", "ipv6"])
def test_outbound_http10_without_host_gets_the_original_destination_as_host(pods, host, expected):
    """Forwarded as HTTP/1.1, which needs a Host: the authority is where the app connected."""
    result = _app(pods, HTTP10_WITHOUT_HOST, host, HTTP_PORT)
    assert result["status"] == 200
    assert result["body"]["request"] == "GET /legacy HTTP/1.1"
    assert _headers(result)["host"] == expected


@pytest.mark.parametrize("host", [PEER_V4, PEER_V6], ids=["ipv4", "ipv6"])
def test_outbound_excluded_port_goes_direct(pods, host):
    _direct(_app(pods, HTTP_GET, host, EXCLUDED_OUT))


BANNER_CLIENT = r"""
import json, socket, sys, time
s = socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=5)
t0 = time.monotonic()
banner = b""
while not banner.endswith(b"\r\n"):
    chunk = s.recv(1024)
    if not chunk:
        break
    banner += chunk
waited = time.monotonic() - t0
echoes = []
for line in (b"EHLO client.example\r\n", bytes(range(256)) * 64):
    s.sendall(line)
    got = b""
    while len(got) < len(line):
        chunk = s.recv(65536)
        if not chunk:
            break
        got += chunk
    echoes.append(got == line)
s.shutdown(socket.SHUT_WR)
tail = s.recv(1024)
print(json.dumps({"banner": banner.decode("latin-1"), "waited": waited, "echoes": echoes,
                  "tail": tail.decode("latin-1"), "local": list(s.getsockname()[:2])}))
"""


def test_outbound_server_speaks_first_is_tunnelled_to_the_original_destination(pods):
    srv = pods["servers"]["banner"]
    result = _app(pods, BANNER_CLIENT, PEER_V4, BANNER_PORT)
    assert result["banner"] == BANNER.decode()
    assert result["waited"] < 2.0
    assert result["echoes"] == [True, True]
    assert result["tail"] == ""
    assert srv.peers[-1][0] == POD_V4 and srv.peers[-1][1] != result["local"][1]


BINARY_CLIENT = r"""
import json, socket, sys
payload = sys.stdin.buffer.read()
s = socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=5)
s.sendall(payload)
s.shutdown(socket.SHUT_WR)
reply = b""
while True:
    chunk = s.recv(65536)
    if not chunk:
        break
    reply += chunk
print(json.dumps({"reply": reply.decode("latin-1"), "local": list(s.getsockname()[:2])}))
"""


def test_outbound_opaque_tcp_is_tunnelled_unchanged(pods):
    srv = pods["servers"]["binary"]
    body = b"\x01\x00\x01\xfc\x03\x03" + os.urandom(32) + b"\x00" + os.urandom(470)
    payload = b"\x16\x03\x01" + len(body).to_bytes(2, "big") + body + os.urandom(200000)
    result = _app(pods, BINARY_CLIENT, PEER_V4, BINARY_PORT, input=payload)
    assert result["reply"] == hashlib.sha256(payload).hexdigest()
    assert srv.records[-1] == payload
    assert srv.peers[-1][1] != result["local"][1]


def test_outbound_loopback_is_not_intercepted(pods):
    """The app's connections to its own loopback services stay local."""
    result = _app(pods, HTTP_GET, "127.0.0.1", APP_PORT)
    _direct(result)


def test_sidecar_own_connections_are_not_redirected(pods):
    """A process of the sidecar (its cgroup, its user) reaches the peer directly."""
    r = pods["pod"].run([sys.executable, "-I", "-c", HTTP_GET, PEER_V4, str(HTTP_PORT)],
                        cgroup=pods["sidecar_cg"], cwd="/")
    _direct(json.loads(r.stdout))


# -- inbound -------------------------------------------------------------------------------

def _inbound_get(pods, host, port):
    import http.client

    def call():
        c = http.client.HTTPConnection(host, port, timeout=5)
        c.request("GET", "/reviews/1")
        local = c.sock.getsockname()
        r = c.getresponse()
        return {"status": r.status, "body": json.loads(r.read()), "local": list(local[:2])}
    return pods["peer"].call(call)


@pytest.mark.parametrize("host,peer_ip", [(POD_V4, PEER_V4), (POD_V6, PEER_V6)], ids=["ipv4", "ipv6"])
def test_inbound_http_reaches_the_app_through_the_sidecar(pods, host, peer_ip):
    """The app listens on loopback only: the sidecar delivered it, and says who asked."""
    result = _inbound_get(pods, host, APP_PORT)
    assert result["status"] == 200
    headers = _headers(result)
    assert "x-request-id" in headers
    assert headers["x-forwarded-for"].split(",")[-1].strip() == peer_ip
    assert result["body"]["peer"][0] == "127.0.0.1"


@pytest.mark.parametrize("host", [POD_V4, POD_V6], ids=["ipv4", "ipv6"])
def test_inbound_keeps_the_original_destination_port(pods, host):
    """Port 5432 is a passthrough port: only a sidecar that knows the connection was meant
    for 5432 tunnels it to the app's 5432 (anything else would be parsed as HTTP)."""
    db = pods["servers"]["db"]
    payload = os.urandom(100000)

    def call():
        with socket.create_connection((host, DB_PORT), timeout=5) as s:
            s.sendall(payload)
            s.shutdown(socket.SHUT_WR)
            got = b""
            while True:
                chunk = s.recv(65536)
                if not chunk:
                    return got
                got += chunk
    assert pods["peer"].call(call) == payload
    assert db.records[-1]["peer"][0] == "127.0.0.1"


def test_inbound_excluded_port_reaches_the_app_directly(pods):
    result = _inbound_get(pods, POD_V4, EXCLUDED_IN)
    _direct(result)
    assert result["body"]["peer"][0] == PEER_V4


def test_inbound_sidecar_listeners_are_not_steered(pods):
    """The kubelet's probe reaches the sidecar's health listener, not the app."""
    import http.client

    def call():
        c = http.client.HTTPConnection(POD_V4, 15021, timeout=5)
        c.request("GET", "/healthz/ready")
        r = c.getresponse()
        return r.status, r.read()
    status, body = pods["peer"].call(call)
    assert status == 200 and body.startswith(b"ready"), body


# -- what the sidecar reports, and reload -----------------------------------------------------

def test_stats_metrics_and_readyz_show_the_interception(pods):
    sc = pods["sidecar"]
    mode = "iptables" if pods["mode"].startswith("iptables") else "ebpf"
    _through_sidecar(_app(pods, HTTP_GET, PEER_V4, HTTP_PORT), PEER_V4)
    assert _inbound_get(pods, POD_V4, APP_PORT)["status"] == 200
    status, body = sc.admin("/readyz")
    assert status == 200 and "kernel: ok (%s interception active" % mode in body, body
    info = sc.stats()["interception"]
    assert info["mode"] == mode and info["state"] == "active"
    if mode == "ebpf":
        attached = {l["function"]: l for l in info["links"]}
        assert set(attached) == {"sc_connect4", "sc_connect6", "sc_sockops", "sc_getsockopt", "sc_inbound",
                                 "sc_splice_verdict",     # interception.splice: auto
                                 "sc_policy", "sc_count_in", "sc_count_out"}
        assert attached["sc_connect4"]["cgroup"] == pods["intercepted_cg"].path
        # pod mode: on the pod's cgroup too (the sidecar's may not exist when it loads)
        assert attached["sc_getsockopt"]["cgroup"] == (
            pods["intercepted_cg"] if pods["mode"] == "ebpf-pod" else pods["sidecar_cg"]).path
        excluded = info["sidecar_cgroup_excluded"]
        assert excluded["id"] == os.stat(pods["sidecar_cg"].path).st_ino
        assert excluded["cgroup"] == pods["sidecar_cg"].path
        assert attached["sc_inbound"]["interface"] == pods["dev"]
        assert info["counters"]["outbound_redirected"] >= 1
        assert info["counters"]["original_dst_answered"] >= 1
        assert info["counters"]["inbound_steered"] >= 1
        assert info["exclusions"] == {"outbound": [EXCLUDED_OUT],
                                      "inbound": sorted([15000, 15021, 15090, EXCLUDED_IN])}
        # The loader did the bcc work and exited: no long-running process maps it.
        pids = [sc.proc.pid] + [w["pid"] for w in sc.stats()["workers"]]
        for pid in pids:
            with open("/proc/%d/maps" % pid) as f:
                assert "libbcc" not in f.read(), "pid %d has bcc loaded" % pid
    else:
        assert info["redirected"]["outbound"] >= 1 and info["redirected"]["inbound"] >= 1
        if pods["mode"] == "iptables-pod":
            assert info["app"] == {"cgroup": pods["intercepted_cg"].relative}
            assert info["sidecar_cgroup"] == pods["sidecar_cg"].relative
    shown = sc.ns.run([sys.executable, "-m", "sidecar.cli", "stats"], cwd=ROOT).stdout
    assert "interception: %s active" % mode in shown, shown
    _, metrics = sc.ns.call(_get_metrics)
    for direction in ("outbound", "inbound"):
        line = [l for l in metrics.splitlines() if l.startswith("sidecar_kernel_redirects_total{")
                and 'direction="%s"' % direction in l and 'mode="%s"' % mode in l]
        assert line and float(line[0].rsplit(" ", 1)[1]) >= 1, metrics


def _get_metrics():
    import http.client
    c = http.client.HTTPConnection("127.0.0.1", 15090, timeout=5)
    c.request("GET", "/metrics")
    r = c.getresponse()
    return r.status, r.read().decode()


def _reload(sc):
    sc.write_config()
    status, body = sc.admin("/reload", "POST")
    assert status == 200, body
    return json.loads(body)


def test_exclusions_change_on_reload_without_reloading_programs(pods):
    sc = pods["sidecar"]
    before = sc.stats()["interception"]
    excl = sc.config["interception"]["exclude_outbound_ports"]
    try:
        excl.append(HTTP_PORT)
        assert _reload(sc)["ok"]
        _direct(_app(pods, HTTP_GET, PEER_V4, HTTP_PORT))
    finally:
        excl.remove(HTTP_PORT)
        assert _reload(sc)["ok"]
    _through_sidecar(_app(pods, HTTP_GET, PEER_V4, HTTP_PORT), PEER_V4)
    after = sc.stats()["interception"]
    assert "takes effect when the sidecar restarts" not in sc.log()
    if before["mode"] == "ebpf":
        # Same programs, same links: only the exclusion map was written.
        ids = lambda info: {l["function"]: (l["link_id"], l["prog_id"]) for l in info["links"]}
        assert ids(after) == ids(before)
        assert after["exclusions"]["outbound"] == [EXCLUDED_OUT]
