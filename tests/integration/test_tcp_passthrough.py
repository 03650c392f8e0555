"""Inbound opaque TCP (`inbound.tcp_passthrough_ports`) next to inbound HTTP, over a real pod
network with iptables interception.

The server pod runs the sidecar (inbound listener 0.0.0.0:15006) and its apps on loopback
only: a raw TCP service on 127.0.0.1:5432 and an HTTP app on 127.0.0.1:8080. The sidecar's
own iptables mode REDIRECTs TCP arriving on the pod's veth to 15006, so the only way from
the client pod to the apps is through the sidecar: port 5432 is tunnelled byte for byte,
port 8080 proxied as HTTP.
"""
import hashlib
import json
import os
import socket
import threading

import pytest

from tests.conftest import require_privileges
from tests.support.http_client import RawClient
from tests.support.netns import (
    Netns, NetnsSidecar, TcpServer, echo_headers_handler, veth_pair)

pytestmark = [pytest.mark.privileged, pytest.mark.timeout(60)]

CLIENT_IP, SERVER_IP = "10.200.0.1", "10.200.0.2"
DB_PORT = 5432
HTTP_PORT = 8080
STREAM_BYTES = 100 * 1024 * 1024
CHUNK = 1024 * 1024


def db_handler(conn, server):
    """The opaque-TCP app. A connection opening with b"HALFCLOSE\\n" gets nothing back until
    the client's EOF, then one line counting what it read, then a close; any other connection
    is echoed until EOF, then closed. Records {"peer", "bytes", "mode"} after the EOF."""
    peer = conn.getpeername()[:2]
    conn.settimeout(30)
    first = conn.recv(65536)
    total = len(first)
    mode = "halfclose" if first.startswith(b"HALFCLOSE\n") else "echo"
    if mode == "echo" and first:
        conn.sendall(first)
    while first:
        chunk = conn.recv(262144)
        if not chunk:
            break
        total += len(chunk)
        if mode == "echo":
            conn.sendall(chunk)
    server.records.append({"peer": peer, "bytes": total, "mode": mode})
    if mode == "halfclose":
        conn.sendall(b"read %d bytes, then EOF\n" % total)


@pytest.fixture(scope="module")
def pod():
    require_privileges(root=True, netns=True, tools=("ip", "nsenter", "iptables"))
    with Netns() as client, Netns() as server:
        _, server_dev = veth_pair(client, server, "%s/24" % CLIENT_IP, "%s/24" % SERVER_IP)
        with TcpServer(server, ("127.0.0.1", DB_PORT), db_handler) as db, \
                TcpServer(server, ("127.0.0.1", HTTP_PORT), echo_headers_handler) as app:
            with NetnsSidecar(server, inbound=("0.0.0.0", 15006), app=("127.0.0.1", HTTP_PORT),
                              mode="iptables", interface=server_dev,
                              extra={"inbound": {"tcp_passthrough_ports": [DB_PORT]}}) as sc:
                yield {"client": client, "server": server, "db": db, "app": app, "sidecar": sc}
            assert db.errors == [] and app.errors == [], (db.errors, app.errors)


def _read_to_eof(sock, sink):
    """Reads until EOF, feeding `sink(chunk)`; True on a clean EOF (False on a reset)."""
    while True:
        try:
            chunk = sock.recv(262144)
        except ConnectionResetError:
            return False
        if not chunk:
            return True
        sink(chunk)


def test_100mb_echo_through_passthrough_port(pod):
    sock = pod["client"].connect((SERVER_IP, DB_PORT), timeout=30)
    sent = hashlib.sha256()
    received = hashlib.sha256()
    counts = {"received": 0}
    send_error = []

    def send():
        try:
            for _ in range(STREAM_BYTES // CHUNK):
                block = os.urandom(CHUNK)
                sent.update(block)
                sock.sendall(block)
            sock.shutdown(socket.SHUT_WR)
        except OSError as e:
            send_error.append(e)

    def sink(chunk):
        received.update(chunk)
        counts["received"] += len(chunk)

    sender = threading.Thread(target=send)
    with sock:
        sender.start()
        try:
            clean_eof = _read_to_eof(sock, sink)
        finally:
            sender.join(30)
    assert send_error == []
    assert clean_eof
    assert counts["received"] == STREAM_BYTES
    assert received.hexdigest() == sent.hexdigest()
    record = pod["db"].records[-1]
    assert record["mode"] == "echo" and record["bytes"] == STREAM_BYTES
    # The app only listens on loopback: the sidecar delivered it.
    assert record["peer"][0] == "127.0.0.1"


def test_half_close_passes_through(pod):
    """Client shutdown(SHUT_WR) -> the app sees EOF -> it answers and closes -> the client
    reads the answer, then EOF: each direction closes on its own."""
    payload = b"HALFCLOSE\n" + os.urandom(300000)
    with pod["client"].connect((SERVER_IP, DB_PORT), timeout=10) as sock:
        sock.sendall(payload)
        sock.shutdown(socket.SHUT_WR)
        reply = bytearray()
        clean_eof = _read_to_eof(sock, reply.extend)
    assert reply == b"read %d bytes, then EOF\n" % len(payload)
    assert clean_eof
    record = pod["db"].records[-1]
    assert record["mode"] == "halfclose" and record["bytes"] == len(payload)


def test_http_port_is_proxied_as_http(pod):
    client = pod["client"].call(RawClient, (SERVER_IP, HTTP_PORT))
    with client:
        client.send(b"GET /orders/7 HTTP/1.1\r\nhost: orders\r\nuser-agent: t\r\n\r\n")
        status, headers, body = client.read_response()
    assert status == 200
    seen = json.loads(body)
    app_headers = dict((k, v) for k, v in seen["headers"])
    assert seen["request"] == "GET /orders/7 HTTP/1.1"
    assert app_headers["x-forwarded-for"] == CLIENT_IP
    assert "x-request-id" in app_headers
    assert seen["peer"][0] == "127.0.0.1"
