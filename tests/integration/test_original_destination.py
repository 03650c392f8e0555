"""Outbound interception with iptables REDIRECT: the sidecar finds where the app meant to go.

Two pods (network namespaces) joined by a veth pair. In the client pod, TCP that the app's
user (uid 65534) opens is REDIRECTed to the sidecar's outbound listener, except to excluded
ports; the sidecar reads the original destination with SO_ORIGINAL_DST and proxies (HTTP) or
tunnels (anything else) to it. The server pod runs real servers on its pod address.

Evidence that a connection went through the sidecar: HTTP requests carry the `x-request-id`
and `x-forwarded-for` the sidecar adds; for opaque TCP, the server sees a different client
port than the app's socket has (the sidecar's upstream connection, not the app's).
"""
import hashlib
import os
import subprocess

import pytest

from fastpath.original_destination import original_destination
from tests.conftest import require_privileges
from tests.support.netns import (
    APP_PYTHON, Netns, NetnsSidecar, TcpServer, as_app, echo_headers_handler, redirect_outbound,
    run_app_python, veth_pair)

pytestmark = [pytest.mark.privileged, pytest.mark.timeout(60)]

CLIENT_V4, SERVER_V4 = "10.200.0.1", "10.200.0.2"
CLIENT_V6, SERVER_V6 = "fd00:200::1", "fd00:200::2"
HTTP_PORT = 9080
EXCLUDED_PORT = 9081        # the interception rules leave it alone
BANNER_PORT = 2525          # server speaks first
BINARY_PORT = 8443          # client sends binary first
BANNER = b"220 smtp ready\r\n"


def _topology(client, server):
    return veth_pair(client, server, ["%s/24" % CLIENT_V4, "%s/64" % CLIENT_V6],
                     ["%s/24" % SERVER_V4, "%s/64" % SERVER_V6])


# -- servers in the server pod ---------------------------------------------------------------

def banner_handler(conn, server):
    """Speaks first, then echoes until EOF, then closes."""
    conn.sendall(BANNER)
    while True:
        chunk = conn.recv(65536)
        if not chunk:
            break
        conn.sendall(chunk)


def binary_sink_handler(conn, server):
    """Reads everything until EOF, records it, answers with its sha256 and closes."""
    data = bytearray()
    while True:
        chunk = conn.recv(65536)
        if not chunk:
            break
        data += chunk
    server.records.append(bytes(data))
    conn.sendall(hashlib.sha256(data).hexdigest().encode())


@pytest.fixture(scope="module")
def pods():
    """The client pod (sidecar on 127.0.0.1:15001, REDIRECT of uid 65534's TCP except to
    EXCLUDED_PORT, for IPv4 and IPv6) and the server pod with its servers."""
    require_privileges(root=True, netns=True,
                       tools=("ip", "nsenter", "setpriv", "iptables", "ip6tables"))
    with Netns() as client, Netns() as server:
        _topology(client, server)
        redirect_outbound(client, 15001, exclude_ports=[EXCLUDED_PORT], ip_versions=(4, 6))
        servers = {}
        try:
            for host in (SERVER_V4, SERVER_V6):
                for port in (HTTP_PORT, EXCLUDED_PORT):
                    servers[(host, port)] = TcpServer(server, (host, port), echo_headers_handler)
            servers["banner"] = TcpServer(server, (SERVER_V4, BANNER_PORT), banner_handler)
            servers["binary"] = TcpServer(server, (SERVER_V4, BINARY_PORT), binary_sink_handler)
            for srv in servers.values():
                srv.__enter__()
            with NetnsSidecar(client) as sidecar:
                yield {"client": client, "server": server, "servers": servers,
                       "sidecar": sidecar}
                for srv in servers.values():
                    assert srv.errors == [], srv.errors
        finally:
            for srv in servers.values():
                srv.close()


@pytest.fixture(scope="module")
def sidecar_v6(pods):
    """A second sidecar in the client pod whose outbound listener is [::1]:15001, where
    ip6tables REDIRECT sends the app's IPv6 connections."""
    sc = NetnsSidecar(pods["client"], inbound=("::1", 15006), outbound=("::1", 15001),
                      extra={"admin": {"listen": "127.0.0.1:15100"},
                             "telemetry": {"metrics": {"listen": "127.0.0.1:15190"},
                                           "health": {"listen": "127.0.0.1:15121"}}})
    with sc:
        yield sc


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


# -- HTTP to the original destination -------------------------------------------------------

def _check_proxied(result, server_host, client_ip):
    assert result["status"] == 200
    headers = _headers(result)
    assert result["body"]["request"] == "GET /reviews/1 HTTP/1.1"
    # Proxied by the sidecar: it generated a request id and appended the client address.
    assert "x-request-id" in headers, headers
    assert "x-forwarded-for" in headers, headers
    assert headers["x-forwarded-for"].split(",")[-1].strip() == client_ip
    assert headers["host"] in ("%s:%d" % (server_host, HTTP_PORT),
                               "[%s]:%d" % (server_host, HTTP_PORT))


def test_http_reaches_original_destination_through_sidecar_ipv4(pods):
    result = run_app_python(pods["client"], HTTP_GET, SERVER_V4, HTTP_PORT)
    _check_proxied(result, SERVER_V4, CLIENT_V4)
    # The server saw the sidecar's upstream connection, not the app's socket.
    assert result["body"]["peer"][0] == CLIENT_V4
    assert result["body"]["peer"][1] != result["local"][1]


def test_http_reaches_original_destination_through_sidecar_ipv6(pods, sidecar_v6):
    result = run_app_python(pods["client"], HTTP_GET, SERVER_V6, HTTP_PORT, timeout=10)
    _check_proxied(result, SERVER_V6, CLIENT_V6)
    assert result["body"]["peer"][0] == CLIENT_V6
    assert result["body"]["peer"][1] != result["local"][1]


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


def test_http10_request_without_host_gets_the_original_destination_as_host(pods):
    """Forwarded as HTTP/1.1, which needs a Host: the authority is where the app connected."""
    result = run_app_python(pods["client"], HTTP10_WITHOUT_HOST, SERVER_V4, HTTP_PORT)
    assert result["status"] == 200
    assert result["body"]["request"] == "GET /legacy HTTP/1.1"
    assert _headers(result)["host"] == "%s:%d" % (SERVER_V4, HTTP_PORT)


def test_http10_request_without_host_over_ipv6_gets_a_bracketed_host(pods, sidecar_v6):
    result = run_app_python(pods["client"], HTTP10_WITHOUT_HOST, SERVER_V6, HTTP_PORT, timeout=10)
    assert result["status"] == 200
    assert _headers(result)["host"] == "[%s]:%d" % (SERVER_V6, HTTP_PORT)


@pytest.mark.parametrize("server_host", [SERVER_V4, SERVER_V6], ids=["ipv4", "ipv6"])
def test_excluded_port_goes_direct(pods, server_host):
    """The interception rules' exclusion: no sidecar on the path, the app's own socket
    reaches the server, no header added."""
    result = run_app_python(pods["client"], HTTP_GET, server_host, EXCLUDED_PORT)
    assert result["status"] == 200
    headers = _headers(result)
    assert "x-request-id" not in headers and "x-forwarded-for" not in headers, headers
    assert result["body"]["peer"] == result["local"]


# -- opaque TCP through the outbound listener -----------------------------------------------

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
for line in (b"EHLO client.example\r\n", b"MAIL FROM:<a@example>\r\n", bytes(range(256)) * 64):
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


def test_server_speaks_first_is_tunnelled(pods):
    """Nothing from the client: after protocol_detect_timeout the sidecar connects to the
    original destination and lets the server talk; then bytes flow both ways."""
    srv = pods["servers"]["banner"]
    result = run_app_python(pods["client"], BANNER_CLIENT, SERVER_V4, BANNER_PORT)
    assert result["banner"] == BANNER.decode()
    assert result["waited"] < 2.0
    assert result["echoes"] == [True, True, True]
    assert result["tail"] == ""          # the server closed after our EOF, cleanly
    # Through the sidecar: the server's peer is not the app's socket.
    peer = srv.peers[-1]
    assert peer[0] == CLIENT_V4 and peer[1] != result["local"][1]


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


def _client_hello_like():
    """A TLS 1.0 record header, a ClientHello-shaped body, then random bytes."""
    body = b"\x01\x00\x01\xfc\x03\x03" + os.urandom(32) + b"\x00" + os.urandom(470)
    return b"\x16\x03\x01" + len(body).to_bytes(2, "big") + body + os.urandom(200000)


def test_binary_first_bytes_are_tunnelled_unchanged(pods):
    srv = pods["servers"]["binary"]
    payload = _client_hello_like()
    before = len(srv.records)
    result = run_app_python(pods["client"], BINARY_CLIENT, SERVER_V4, BINARY_PORT,
                            input=payload)
    assert result["reply"] == hashlib.sha256(payload).hexdigest()
    assert len(srv.records) == before + 1
    assert srv.records[-1] == payload            # byte for byte
    peer = srv.peers[-1]
    assert peer[0] == CLIENT_V4 and peer[1] != result["local"][1]


# -- fastpath.original_destination on real sockets ---------------------------------------------

HOLD_CLIENT = r"""
import socket, sys
s = socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=10)
print(s.getsockname()[1], flush=True)
s.recv(1)
"""


@pytest.fixture
def bare_pods(privileged_netns):
    """A client pod without a sidecar, joined to an empty server pod."""
    with Netns() as client, Netns() as server:
        _topology(client, server)
        yield client


def _redirected_and_direct(client, listen_host, dst_host):
    """A plain listener on listen_host:15001 behind REDIRECT; returns the original
    destination of an app connection to dst_host:7777 and of a direct connection."""
    redirect_outbound(client, 15001, ip_versions=(6 if ":" in listen_host else 4,))
    listener = client.listen((listen_host, 15001))
    app = None
    try:
        listener.settimeout(10)
        app = client.popen(as_app([APP_PYTHON, "-I", "-c", HOLD_CLIENT, dst_host, "7777"]),
                           stdout=subprocess.PIPE, cwd="/")
        conn, _ = listener.accept()
        with conn:
            redirected = original_destination(conn)
        app.wait(10)
        direct_client = client.connect((listen_host, 15001))
        with direct_client:
            conn, _ = listener.accept()
            with conn:
                direct = original_destination(conn)
        return redirected, direct
    finally:
        listener.close()
        if app is not None and app.poll() is None:
            app.kill()
            app.wait()


def test_original_destination_of_redirected_socket_ipv4(bare_pods):
    redirected, direct = _redirected_and_direct(bare_pods, "127.0.0.1", SERVER_V4)
    assert redirected == (SERVER_V4, 7777)
    assert direct is None


def test_original_destination_of_redirected_socket_ipv6(bare_pods):
    redirected, direct = _redirected_and_direct(bare_pods, "::1", SERVER_V6)
    assert redirected == (SERVER_V6, 7777)
    assert direct is None
