"""Upgrade (WebSocket) through the real sidecar: after the upstream's `101 Switching
Protocols` the connection pair is a byte tunnel, both ways, with half-close passed on; a
101 the client did not ask for is a 502.

The upstream is a `ScriptedServer` that reads the upgrade request, answers 101 and then
runs a byte-level behaviour (echo, count-until-EOF, ...).
"""
import contextlib
import hashlib
import os
import socket
import threading
import time

from tests.support.http_client import RawClient
from tests.support.servers import ScriptedServer
from tests.support.sidecar_process import SidecarProcess

MB = 1024 * 1024

UPGRADE_REQUEST = (b"GET /chat HTTP/1.1\r\nHost: app.test\r\nConnection: Upgrade\r\n"
                   b"Upgrade: websocket\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
                   b"Sec-WebSocket-Version: 13\r\n\r\n")
SWITCHING = (b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
             b"Sec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n\r\n")


# -- helpers --------------------------------------------------------------------------------

def read_head(conn, buf=b""):
    """(head, bytes after it) from a raw socket; ("", buf) at EOF."""
    while b"\r\n\r\n" not in buf:
        data = conn.recv(65536)
        if not data:
            return b"", buf
        buf += data
    head, _, rest = buf.partition(b"\r\n\r\n")
    return head + b"\r\n\r\n", rest


def fields_of(head):
    out = []
    for line in head.split(b"\r\n")[1:]:
        if line:
            name, _, value = line.partition(b":")
            out.append((name.decode().lower(), value.strip().decode()))
    return out


def values(fields, name):
    return [v for k, v in fields if k == name]


def upgrading(after_101, reply=SWITCHING):
    """Behaviour: reads the request head (kept in `server.heads`), answers `reply`, then
    runs `after_101(conn, server, early_bytes)`."""
    def behaviour(conn, server):
        head, rest = read_head(conn)
        server.heads.append(head)
        if not head:
            return
        conn.sendall(reply)
        after_101(conn, server, rest)
    return behaviour


def echo(conn, server, early):
    if early:
        conn.sendall(early)
    while True:
        data = conn.recv(1 << 20)
        if not data:
            conn.shutdown(socket.SHUT_WR)
            return
        conn.sendall(data)


@contextlib.contextmanager
def scripted(behaviour):
    """A `ScriptedServer` as the app behind a fresh sidecar: yields (upstream, sidecar)."""
    up = ScriptedServer(behaviour)
    up.heads = []
    up.events = []
    with up, SidecarProcess(app=up.address) as sc:
        yield up, sc


def upgrade(sc, timeout=10):
    """A client connection upgraded through the sidecar: (RawClient, 101 headers)."""
    c = RawClient(sc.inbound, timeout=timeout)
    try:
        c.send(UPGRADE_REQUEST)
        status, headers, raw = c.read_head()
        assert status == 101, raw
    except BaseException:
        c.close()
        raise
    return c, headers


def rss_mb(pid):
    """VmRSS of a process, in MB."""
    with open("/proc/%d/status" % pid) as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024.0
    return 0.0


def wait_for(predicate, timeout=5.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.02)
    return predicate()


# -- tests ----------------------------------------------------------------------------------

def test_upgrade_request_reaches_upstream_with_upgrade_fields_and_101_reaches_client():
    with scripted(upgrading(echo)) as (up, sc):
        c, headers = upgrade(sc)
        with c:
            assert headers["upgrade"] == "websocket"
            assert headers["connection"].lower() == "upgrade"
            assert headers["sec-websocket-accept"] == "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="
            assert "content-length" not in headers and "transfer-encoding" not in headers
        fields = fields_of(up.heads[0])
        assert values(fields, "upgrade") == ["websocket"]
        assert [v.lower() for v in values(fields, "connection")] == ["upgrade"]
        assert values(fields, "sec-websocket-key") == ["dGhlIHNhbXBsZSBub25jZQ=="]
        assert values(fields, "sec-websocket-version") == ["13"]


def test_upgraded_connection_carries_arbitrary_binary_bytes_both_ways():
    with scripted(upgrading(echo)) as (up, sc):
        c, _ = upgrade(sc)
        with c:
            messages = [bytes(range(256)), b"\r\n\r\n", b"GET / HTTP/1.1\r\nHost: x\r\n\r\n",
                        b"\x00" * 10, b"HTTP/1.1 200 OK\r\n\r\n", os.urandom(70000), b"\xff"]
            for msg in messages:           # one at a time: each must come back alone
                c.send(msg)
                assert c.read_exact(len(msg)) == msg
            assert c.buf == b""
        assert up.connections == 1


def test_upgraded_connection_transfers_10mb_each_way_with_matching_sha256():
    n = 10 * MB
    data = os.urandom(MB)
    sent = hashlib.sha256()

    with scripted(upgrading(echo)) as (up, sc):
        c, _ = upgrade(sc, timeout=20)
        with c:
            def write():
                for i in range(n // MB):
                    block = bytes([i]) + data[1:]
                    sent.update(block)
                    c.sock.sendall(block)

            writer = threading.Thread(target=write, daemon=True)
            writer.start()
            got = hashlib.sha256()
            received = len(c.buf)
            got.update(c.buf)
            c.buf = b""
            while received < n:
                chunk = c.sock.recv(1 << 20)
                assert chunk, "tunnel closed after %d of %d bytes" % (received, n)
                got.update(chunk)
                received += len(chunk)
            writer.join(10)
            assert not writer.is_alive()
            assert received == n
            assert got.hexdigest() == sent.hexdigest()


def test_client_half_close_after_upgrade_reaches_upstream_as_eof():
    def count_until_eof(conn, server, early):
        total = len(early)
        while True:
            data = conn.recv(65536)
            if not data:
                break
            total += len(data)
        server.events.append(("eof", total))
        conn.sendall(b"eof after %d bytes" % total)
        conn.shutdown(socket.SHUT_WR)

    with scripted(upgrading(count_until_eof)) as (up, sc):
        c, _ = upgrade(sc)
        with c:
            c.send(b"a" * 12345)
            c.sock.shutdown(socket.SHUT_WR)
            # The upstream answers only once it has seen the EOF; the answer still arrives.
            assert c.read_until_close() == b"eof after 12345 bytes"
        assert up.events == [("eof", 12345)]


def test_upstream_half_close_after_upgrade_reaches_client_as_eof_and_client_can_still_send():
    def say_bye_then_listen(conn, server, early):
        conn.sendall(b"bye")
        conn.shutdown(socket.SHUT_WR)
        got = early
        while True:
            data = conn.recv(65536)
            if not data:
                break
            got += data
        server.events.append(got)

    with scripted(upgrading(say_bye_then_listen)) as (up, sc):
        c, _ = upgrade(sc)
        with c:
            assert c.read_until_close() == b"bye"
            c.send(b"still talking")
            c.sock.shutdown(socket.SHUT_WR)
            assert wait_for(lambda: up.events), "upstream never saw the client's EOF"
        assert up.events == [b"still talking"]


def test_bytes_the_upstream_sends_in_the_same_write_as_the_101_reach_the_client():
    hello = b"\x81\x05hello"                   # a WebSocket text frame, right behind the 101
    with scripted(upgrading(echo, reply=SWITCHING + hello)) as (up, sc):
        c, _ = upgrade(sc, timeout=3)
        with c:
            assert c.read_exact(len(hello)) == hello
            c.send(b"ping")
            assert c.read_exact(4) == b"ping"


def test_bytes_the_client_sends_right_behind_the_upgrade_request_reach_upstream_in_order():
    with scripted(upgrading(echo)) as (up, sc), RawClient(sc.inbound, timeout=5) as c:
        c.send(UPGRADE_REQUEST + b"\x81\x05early")      # not waiting for the 101
        status, _, _ = c.read_head()
        assert status == 101
        c.send(b"later")
        assert c.read_exact(12) == b"\x81\x05earlylater"
        assert b"early" not in up.heads[0]


def test_upstream_101_to_a_request_without_upgrade_is_a_502():
    with scripted(upgrading(echo)) as (up, sc), RawClient(sc.inbound, timeout=5) as c:
        c.send(b"GET /plain HTTP/1.1\r\nHost: app.test\r\n\r\n")
        status, headers, body = c.read_response()
        assert status == 502
        assert body


def test_upgrade_declined_with_200_keeps_the_connection_as_http():
    def decline(conn, server):
        buf = b""
        while True:
            head, buf = read_head(conn, buf)
            if not head:
                return
            server.heads.append(head)
            conn.sendall(b"HTTP/1.1 200 OK\r\ncontent-length: 6\r\n\r\nplain\n")

    with scripted(decline) as (up, sc), RawClient(sc.inbound, timeout=5) as c:
        c.send(UPGRADE_REQUEST)
        status, headers, body = c.read_response()
        assert (status, body) == (200, b"plain\n")
        c.send(b"GET /next HTTP/1.1\r\nHost: app.test\r\n\r\n")
        assert c.read_response()[::2] == (200, b"plain\n")
        assert len(up.heads) == 2
        assert up.heads[1].startswith(b"GET /next HTTP/1.1\r\n")


def test_client_closing_an_upgraded_connection_closes_the_upstream_side():
    def read_until_closed(conn, server, early):
        got = early
        try:
            while True:
                data = conn.recv(65536)
                if not data:
                    break
                got += data
        except ConnectionResetError:
            pass
        server.events.append(got)

    with scripted(upgrading(read_until_closed)) as (up, sc):
        c, _ = upgrade(sc)
        with c:
            c.send(b"last words")
        assert wait_for(lambda: up.events), "the upstream side stayed open"
        assert up.events == [b"last words"]


def test_tunnel_to_a_client_that_stops_reading_keeps_worker_memory_bounded():
    n = 64 * MB
    block = os.urandom(MB)

    def flood(conn, server, early):
        for i in range(n // MB):
            conn.sendall(bytes([i]) + block[1:])
        conn.shutdown(socket.SHUT_WR)
        while conn.recv(65536):
            pass

    expected = hashlib.sha256()
    for i in range(n // MB):
        expected.update(bytes([i]) + block[1:])

    with scripted(upgrading(flood)) as (up, sc):
        pids = sc.worker_pids()
        c, _ = upgrade(sc, timeout=20)
        with c:
            samples = []
            deadline = time.monotonic() + 1.5       # not reading meanwhile
            while time.monotonic() < deadline:
                samples.append(max(rss_mb(pid) for pid in pids))
                time.sleep(0.02)
            assert max(samples) < 60, samples
            got = hashlib.sha256(c.buf)
            received = len(c.buf)
            c.buf = b""
            while True:
                data = c.sock.recv(1 << 20)
                if not data:
                    break
                got.update(data)
                received += len(data)
        assert received == n
        assert got.hexdigest() == expected.hexdigest()


def test_tunnel_to_an_upstream_that_stops_reading_blocks_the_client_instead_of_buffering():
    n = 64 * MB
    release = threading.Event()
    received = {}

    def stall_then_count(conn, server, early):
        conn.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 65536)
        release.wait(10)
        h = hashlib.sha256(early)
        total = len(early)
        while True:
            data = conn.recv(1 << 20)
            if not data:
                break
            h.update(data)
            total += len(data)
        received["bytes"], received["sha256"] = total, h.hexdigest()
        conn.sendall(b"done")
        conn.shutdown(socket.SHUT_WR)

    block = os.urandom(MB)
    sent = [0]
    expected = hashlib.sha256()

    with scripted(upgrading(stall_then_count)) as (up, sc):
        pids = sc.worker_pids()
        c, _ = upgrade(sc, timeout=20)
        with c:
            c.sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 65536)

            def write():
                for i in range(n // MB):
                    part = bytes([i]) + block[1:]
                    expected.update(part)
                    c.sock.sendall(part)
                    sent[0] += len(part)
                c.sock.shutdown(socket.SHUT_WR)

            writer = threading.Thread(target=write, daemon=True)
            try:
                writer.start()
                samples = []
                deadline = time.monotonic() + 1.5
                while time.monotonic() < deadline:
                    samples.append(max(rss_mb(pid) for pid in pids))
                    time.sleep(0.02)
                blocked, sent_then = writer.is_alive(), sent[0]
            finally:
                release.set()
            writer.join(20)
            assert blocked and sent_then < n, "the client wrote all %d bytes" % n
            assert max(samples) < 60, samples
            assert c.read_until_close() == b"done"
        assert received == {"bytes": n, "sha256": expected.hexdigest()}
