"""Bodies through the real sidecar: streamed, re-framed, and under backpressure.

Content-Length and chunked bodies both ways (chunked re-framed with the proxy's own framing,
extensions and trailers dropped), close-delimited responses, and memory: a client that
stops reading or an upstream that reads slowly must block the sender, not grow the
worker (its VmRSS is sampled from /proc while the transfer runs), and 100 MB both ways
arrives intact.
"""
import contextlib
import hashlib
import json
import re
import socket
import threading
import time

import pytest

from tests.support.http_client import RawClient
from tests.support.servers import HttpApp, ScriptedServer, sha256_of_bytes_endpoint
from tests.support.sidecar_process import SidecarProcess

MB = 1024 * 1024
RSS_LIMIT_MB = 60


# -- helpers --------------------------------------------------------------------------------

class PeerClosed(ConnectionError):
    """The other side closed (an OSError, so `ScriptedServer` ends the behaviour quietly)."""


class Peer:
    """Buffered reads of HTTP/1.1 messages from a raw socket (the upstream's view)."""

    def __init__(self, sock):
        self.sock = sock
        self.buf = bytearray()

    def _fill(self):
        data = self.sock.recv(65536)
        if not data:
            raise PeerClosed("peer closed")
        self.buf += data

    def read_until(self, marker):
        while True:
            i = self.buf.find(marker)
            if i >= 0:
                out = bytes(self.buf[:i + len(marker)])
                del self.buf[:i + len(marker)]
                return out
            self._fill()

    def read_exact(self, n):
        while len(self.buf) < n:
            self._fill()
        out = bytes(self.buf[:n])
        del self.buf[:n]
        return out

    def read_request(self):
        """One request: dict(head, line, fields, body (decoded), raw_body (as framed))."""
        head = self.read_until(b"\r\n\r\n")
        lines = head[:-4].split(b"\r\n")
        fields = parse_fields(lines[1:])
        names = [k for k, _ in fields]
        raw = bytearray()
        body = bytearray()
        if "transfer-encoding" in names:
            while True:
                size_line = self.read_until(b"\r\n")
                raw += size_line
                size = int(size_line.split(b";")[0], 16)
                if size == 0:
                    while True:
                        line = self.read_until(b"\r\n")
                        raw += line
                        if line == b"\r\n":
                            break
                    break
                data = self.read_exact(size + 2)
                raw += data
                body += data[:-2]
        elif "content-length" in names:
            body += self.read_exact(int(dict(fields)["content-length"]))
            raw += body
        return {"head": head, "line": lines[0], "fields": fields,
                "body": bytes(body), "raw_body": bytes(raw)}


def parse_fields(lines):
    out = []
    for line in lines:
        name, _, value = line.partition(b":")
        out.append((name.decode().lower(), value.strip().decode()))
    return out


def values(fields, name):
    return [v for k, v in fields if k == name]


def serve_requests(respond):
    """A `ScriptedServer` behaviour: requests one after another on each connection,
    recorded in `server.seen`; `respond(request, conn)` answers (False closes)."""
    def behaviour(conn, server):
        peer = Peer(conn)
        while True:
            req = peer.read_request()
            server.seen.append(req)
            if respond(req, conn) is False:
                return
    return behaviour


@contextlib.contextmanager
def scripted(behaviour):
    """A `ScriptedServer` as the app behind a fresh sidecar: yields (upstream, sidecar)."""
    up = ScriptedServer(behaviour)
    up.seen = []
    with up, SidecarProcess(app=up.address) as sc:
        yield up, sc


def decode_own_chunked_framing(raw):
    """`raw` is a complete chunked body framed by the proxy: lower-case hex sizes with no
    extensions, CRLF after each chunk, a bare last-chunk and no trailer fields."""
    pos = 0
    body = bytearray()
    while True:
        end = raw.index(b"\r\n", pos)
        size_line = raw[pos:end]
        assert re.fullmatch(rb"[0-9a-f]+", size_line), "chunk size line %r" % size_line
        size = int(size_line, 16)
        pos = end + 2
        if size == 0:
            assert raw[pos:] == b"\r\n", "trailer section %r" % raw[pos:]
            return bytes(body)
        body += raw[pos:pos + size]
        assert raw[pos + size:pos + size + 2] == b"\r\n"
        pos += size + 2


def read_chunked_raw(client):
    """The raw bytes of one chunked body from a `RawClient`, up to its end."""
    raw = bytearray()
    while True:
        while b"\r\n" not in client.buf:
            client._fill()
        line, _, client.buf = client.buf.partition(b"\r\n")
        raw += line + b"\r\n"
        size = int(line.split(b";")[0], 16)
        if size == 0:
            while True:
                while b"\r\n" not in client.buf:
                    client._fill()
                line, _, client.buf = client.buf.partition(b"\r\n")
                raw += line + b"\r\n"
                if line == b"":
                    return bytes(raw)
        raw += client.read_exact(size + 2)


def chunked_encode(pieces, ext=b"", trailers=b""):
    out = b"".join(b"%x%s\r\n%s\r\n" % (len(p), ext, p) for p in pieces)
    return out + b"0\r\n" + trailers + b"\r\n"


def rss_mb(pid):
    with open("/proc/%d/status" % pid) as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024.0
    return 0.0


class RssSampler:
    """Samples the VmRSS of the sidecar's workers every 20 ms while in the `with` block."""

    def __init__(self, sc):
        self.pids = sc.worker_pids()
        assert self.pids, "no worker process"
        self.samples = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self):
        while not self._stop.is_set():
            self.samples.append(max(rss_mb(pid) for pid in self.pids))
            self._stop.wait(0.02)

    @property
    def max_mb(self):
        return max(self.samples)

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()


def block_stream(total, block_size=MB):
    """`total` bytes of a varying pattern, as blocks; the same every call."""
    block = hashlib.sha256(b"seed").digest() * (block_size // 32)
    sent = 0
    i = 0
    while sent < total:
        part = bytes([i & 255]) + block[1:min(block_size, total - sent)]
        yield part
        sent += len(part)
        i += 1


def sha256_of_stream(total, block_size=MB):
    h = hashlib.sha256()
    for part in block_stream(total, block_size):
        h.update(part)
    return h.hexdigest()


def recv_head(sock):
    """(head, bytes after it) from a raw socket."""
    buf = b""
    while b"\r\n\r\n" not in buf:
        data = sock.recv(65536)
        if not data:
            raise EOFError("closed before a complete head: %r" % buf)
        buf += data
    head, _, rest = buf.partition(b"\r\n\r\n")
    return head, rest


def recv_json_response(sock):
    """(status line, JSON body) of a Content-Length response from a raw socket."""
    head, body = recv_head(sock)
    length = int(re.search(rb"(?i)\r\ncontent-length: *(\d+)", head).group(1))
    while len(body) < length:
        data = sock.recv(65536)
        if not data:
            raise EOFError("closed mid-body")
        body += data
    return head.split(b"\r\n")[0], json.loads(body)


def recv_body_sha256(sock, first, n):
    """Reads an n-byte body (its first bytes already in `first`); returns its sha256."""
    h = hashlib.sha256(first)
    got = len(first)
    while got < n:
        data = sock.recv(min(4 * MB, n - got))
        if not data:
            raise EOFError("closed after %d of %d bytes" % (got, n))
        h.update(data)
        got += len(data)
    return h.hexdigest()


@pytest.fixture(scope="module")
def sc():
    """One HttpApp behind one sidecar, shared by the tests that only need the real app."""
    with HttpApp() as app, SidecarProcess(app=app.address) as sidecar:
        yield sidecar


# -- framing --------------------------------------------------------------------------------

def test_content_length_upload_in_odd_pieces_reaches_the_app_intact(sc):
    body = b"".join(block_stream(3 * MB + 7))
    with RawClient(sc.inbound) as c:
        c.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        c.send(b"POST /sha256 HTTP/1.1\r\nHost: a\r\nContent-Length: %d\r\n\r\n" % len(body))
        pos = 0
        for size in [1, 2, 3, 4093, 65537, 17, 1000003] * 100:
            if pos >= len(body):
                break
            c.send(body[pos:pos + size])
            pos += size
        c.send(body[pos:])
        status, _, data = c.read_response("POST")
    assert status == 200
    assert json.loads(data) == {"sha256": hashlib.sha256(body).hexdigest(), "bytes": len(body)}


def test_chunked_upload_with_odd_sizes_extensions_and_trailers_reaches_the_app_intact(sc):
    payload = b"".join(block_stream(2 * MB + 3))
    sizes = [1, 7, 4093, 65537, 3, 300001, 2, 1 << 20]
    pieces, pos = [], 0
    for size in sizes:
        pieces.append(payload[pos:pos + size])
        pos += size
    pieces.append(payload[pos:])
    body = chunked_encode(pieces, ext=b';ext=1;name="q v"',
                          trailers=b"X-Checksum: abc\r\nX-Other: 1\r\n")
    with RawClient(sc.inbound) as c:
        c.send(b"POST /sha256 HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n"
               b"Trailer: X-Checksum\r\n\r\n")
        for i in range(0, len(body), 9973):       # splits size lines and CRLFs too
            c.send(body[i:i + 9973])
        status, _, data = c.read_response("POST")
    assert status == 200
    assert json.loads(data) == {"sha256": hashlib.sha256(payload).hexdigest(),
                                "bytes": len(payload)}


def test_chunked_upload_is_reframed_upstream_without_extensions_or_trailers():
    def respond(req, conn):
        conn.sendall(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok")

    payload = bytes(range(256)) * 500
    pieces = [payload[:1], payload[1:4001], payload[4001:4002], payload[4002:]]
    body = chunked_encode(pieces, ext=b";foo=bar;baz", trailers=b"X-Checksum: 123\r\n")
    with scripted(serve_requests(respond)) as (up, sc), RawClient(sc.inbound) as c:
        c.send(b"PUT /blob HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n"
               b"Trailer: X-Checksum\r\n\r\n" + body[:100])
        time.sleep(0.05)
        c.send(body[100:5000])
        time.sleep(0.05)
        c.send(body[5000:])
        assert c.read_response("PUT")[::2] == (200, b"ok")
    [req] = up.seen
    assert values(req["fields"], "transfer-encoding") == ["chunked"]
    assert values(req["fields"], "trailer") == []
    assert values(req["fields"], "content-length") == []
    assert decode_own_chunked_framing(req["raw_body"]) == payload
    assert b"x-checksum" not in req["raw_body"].lower()


def test_chunked_response_with_extensions_and_trailers_is_reframed_clean_to_the_client():
    payload = bytes(range(256)) * 40 + b"tail"

    def respond(req, conn):
        conn.sendall(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nTrailer: X-Sum\r\n\r\n")
        conn.sendall(b"1;a=b\r\n" + payload[:1] + b"\r\n")
        time.sleep(0.02)
        conn.sendall(b"FFF ; name=\"x\"\r\n" + payload[1:4096] + b"\r\n")
        conn.sendall(b"%X;last\r\n%s\r\n0;end=1\r\nX-Sum: 99\r\n\r\n"
                     % (len(payload) - 4096, payload[4096:]))

    with scripted(serve_requests(respond)) as (up, sc), RawClient(sc.inbound, timeout=5) as c:
        for _ in range(2):                 # the framing is exact: the connection carries on
            c.send(b"GET /chunks HTTP/1.1\r\nHost: a\r\n\r\n")
            status, headers, raw_head = c.read_head()
            assert status == 200
            assert headers["transfer-encoding"] == "chunked"
            assert "trailer" not in headers and "content-length" not in headers
            assert decode_own_chunked_framing(read_chunked_raw(c)) == payload
        assert up.connections == 1


def test_chunked_response_reaches_an_http10_client_decoded_and_close_delimited():
    def respond(req, conn):
        conn.sendall(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
                     b"5;x=y\r\nhello\r\n6\r\n world\r\n0\r\nX-T: 1\r\n\r\n")

    with scripted(serve_requests(respond)) as (up, sc), RawClient(sc.inbound, timeout=5) as c:
        c.send(b"GET /old HTTP/1.0\r\n\r\n")
        status, headers, raw_head = c.read_head()
        assert status == 200
        assert "transfer-encoding" not in headers and "content-length" not in headers
        assert headers["connection"] == "close"
        assert c.read_until_close() == b"hello world"


def _close_delimited(conn):
    conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\n\r\nfirst part, ")
    time.sleep(0.05)
    conn.sendall(b"second part, ")
    time.sleep(0.05)
    conn.sendall(b"end")
    conn.shutdown(socket.SHUT_WR)
    return False


def test_close_delimited_response_reaches_an_http11_client_as_chunked_on_a_kept_connection():
    with scripted(serve_requests(lambda req, conn: _close_delimited(conn))) as (up, sc), \
            RawClient(sc.inbound, timeout=5) as c:
        for _ in range(2):
            c.send(b"GET /stream HTTP/1.1\r\nHost: a\r\n\r\n")
            status, headers, raw_head = c.read_head()
            assert status == 200
            assert headers["transfer-encoding"] == "chunked"
            assert headers.get("connection") != "close"
            assert decode_own_chunked_framing(read_chunked_raw(c)) == \
                b"first part, second part, end"
        assert up.connections == 2


def test_close_delimited_response_reaches_an_http10_client_close_delimited():
    with scripted(serve_requests(lambda req, conn: _close_delimited(conn))) as (up, sc), \
            RawClient(sc.inbound, timeout=5) as c:
        c.send(b"GET /stream HTTP/1.0\r\n\r\n")
        status, headers, raw_head = c.read_head()
        assert status == 200
        assert "transfer-encoding" not in headers and "content-length" not in headers
        assert c.read_until_close() == b"first part, second part, end"


# -- backpressure and memory ----------------------------------------------------------------

def test_client_that_stops_reading_a_64mb_download_keeps_worker_memory_bounded(sc):
    n = 64 * MB
    with socket.create_connection(sc.inbound, timeout=10) as s:
        s.sendall(b"GET /bytes/%d HTTP/1.1\r\nHost: a\r\n\r\n" % n)
        with RssSampler(sc) as rss:
            time.sleep(2.0)                       # not reading
        assert rss.max_mb < RSS_LIMIT_MB, rss.samples
        head, rest = recv_head(s)
        assert head.startswith(b"HTTP/1.1 200 ")
        assert recv_body_sha256(s, rest, n) == sha256_of_bytes_endpoint(n)


def test_upstream_reading_slowly_blocks_the_clients_upload_instead_of_buffering():
    total = 128 * MB
    progress = {"upstream": 0, "fast": threading.Event()}

    def behaviour(conn, server):
        conn.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 65536)
        peer = Peer(conn)
        head = peer.read_until(b"\r\n\r\n")
        n = int(re.search(rb"(?i)\r\ncontent-length: *(\d+)", head).group(1))
        h = hashlib.sha256(bytes(peer.buf))
        got = len(peer.buf)
        while got < n:
            if not progress["fast"].is_set():
                time.sleep(0.02)                  # about 3 MB/s
            data = conn.recv(min(65536, n - got))
            if not data:
                return
            h.update(data)
            got += len(data)
            progress["upstream"] = got
        body = json.dumps({"sha256": h.hexdigest(), "bytes": got}).encode()
        conn.sendall(b"HTTP/1.1 200 OK\r\ncontent-length: %d\r\n\r\n%s" % (len(body), body))

    sent = [0]

    def upload(sock):
        for part in block_stream(total, 256 * 1024):
            sock.sendall(part)
            sent[0] += len(part)

    with scripted(behaviour) as (up, sc), socket.create_connection(sc.inbound, timeout=20) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 65536)
        s.sendall(b"POST /slow HTTP/1.1\r\nHost: a\r\nContent-Length: %d\r\n\r\n" % total)
        sender = threading.Thread(target=upload, args=(s,), daemon=True)
        try:
            with RssSampler(sc) as rss:
                sender.start()
                time.sleep(2.5)
                sent_then, read_then = sent[0], progress["upstream"]
                blocked = sender.is_alive()
        finally:
            progress["fast"].set()
        sender.join(30)
        assert not sender.is_alive()
        assert blocked, "the client sent all %d bytes while the upstream read %d" % (
            total, read_then)
        # What the client got ahead of the upstream is in socket buffers, not the worker.
        assert sent_then - read_then < 64 * MB, (sent_then, read_then)
        assert rss.max_mb < RSS_LIMIT_MB, rss.samples
        line, answer = recv_json_response(s)
    assert line.startswith(b"HTTP/1.1 200 ")
    assert answer == {"sha256": sha256_of_stream(total, 256 * 1024), "bytes": total}


def test_100mb_upload_arrives_intact_with_bounded_worker_memory(sc):
    n = 100 * MB
    with socket.create_connection(sc.inbound, timeout=20) as s, RssSampler(sc) as rss:
        s.sendall(b"POST /sha256 HTTP/1.1\r\nHost: a\r\nContent-Length: %d\r\n\r\n" % n)
        for part in block_stream(n):
            s.sendall(part)
        line, answer = recv_json_response(s)
    assert line.startswith(b"HTTP/1.1 200 ")
    assert answer == {"sha256": sha256_of_stream(n), "bytes": n}
    assert len(rss.samples) > 3
    assert rss.max_mb < RSS_LIMIT_MB, rss.samples


def test_100mb_download_arrives_intact_with_bounded_worker_memory(sc):
    n = 100 * MB
    with socket.create_connection(sc.inbound, timeout=20) as s, RssSampler(sc) as rss:
        s.sendall(b"GET /bytes/%d HTTP/1.1\r\nHost: a\r\n\r\n" % n)
        head, rest = recv_head(s)
        assert head.startswith(b"HTTP/1.1 200 ")
        assert b"\r\ncontent-length: %d" % n in head.lower()
        digest = recv_body_sha256(s, rest, n)
    assert digest == sha256_of_bytes_endpoint(n)
    assert rss.samples
    assert rss.max_mb < RSS_LIMIT_MB, rss.samples
