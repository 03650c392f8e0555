"""Upstream servers for the integration tests, on real loopback sockets.

- `HttpApp`: a real HTTP/1.1 application server (the standard library's threaded server)
  with endpoints the tests need, recording every request it receives, so a test can assert
  that nothing of a malformed request reached the app. `.../respond?...` answers as its
  query says (status, fields, validators, delay, size, chunked), for the cache tests.
- `ScriptedServer`: a raw TCP server whose per-connection behaviour is a test function:
  for upstreams that misbehave on purpose (malformed, truncated, slow, resetting).
"""
import email.utils
import hashlib
import http.server
import json
import socket
import socketserver
import threading
import time
import urllib.parse

from tests.support.ports import free_port


class _AppHandler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    # The head and the body go out in separate writes: without TCP_NODELAY the body
    # waits for the proxy's delayed ACK (40 ms) on every kept-alive request.
    disable_nagle_algorithm = True

    def log_message(self, *args):
        pass

    def _record(self):
        self.server.requests.append({
            "method": self.command, "path": self.path, "version": self.request_version,
            "headers": [(k.lower(), v) for k, v in self.headers.items()],
        })

    def _body_chunks(self):
        """The request body, streamed (Content-Length or chunked)."""
        if self.headers.get("transfer-encoding", "").lower() == "chunked":
            while True:
                size = int(self.rfile.readline().split(b";")[0], 16)
                if size == 0:
                    while self.rfile.readline() not in (b"\r\n", b""):
                        pass
                    return
                left = size
                while left:
                    chunk = self.rfile.read(min(left, 65536))
                    left -= len(chunk)
                    yield chunk
                self.rfile.readline()
        else:
            left = int(self.headers.get("content-length") or 0)
            while left:
                chunk = self.rfile.read(min(left, 65536))
                if not chunk:
                    return
                left -= len(chunk)
                yield chunk

    def _send(self, status, body=b"", headers=()):
        self.send_response(status)
        for k, v in headers:
            self.send_header(k, v)
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def _respond(self, query):
        """A response shaped by the query, for the cache tests:

            status=N        the status (200)
            h=Name:value    a field (repeatable)
            etag=V, last_modified=DATE   validators; the request's If-None-Match naming V,
                            or an If-Modified-Since not before DATE, gets a 304
            expires_in=S    Expires: the response's Date + S seconds
            delay=S         wait before answering
            delay_first=S   wait before answering the first request for this URL only
            size=N          N deterministic bytes (else a line naming this response: its
                            sequence number, the request's Accept-Language and its
                            Authorization or Cookie)
            chunked=1       the body in 16 KiB chunks (no Content-Length)
        """
        for _ in self._body_chunks():
            pass
        q = urllib.parse.parse_qs(query)
        one = lambda k, d=None: q.get(k, [d])[0]
        with self.server.lock:
            self.server.responded += 1
            seq = self.server.responded
            first = self.path not in self.server.seen
            self.server.seen.add(self.path)
        if one("delay"):
            time.sleep(float(one("delay")))
        if one("delay_first") and first:
            time.sleep(float(one("delay_first")))
        headers = [tuple(h.split(":", 1)) for h in q.get("h", [])]
        etag, modified = one("etag"), one("last_modified")
        if etag:
            headers.append(("ETag", etag))
        if modified:
            headers.append(("Last-Modified", modified))
        if one("expires_in"):
            headers.append(("Expires", email.utils.formatdate(int(time.time()) + int(one("expires_in")),
                                                              usegmt=True)))
        inm, ims = self.headers.get("if-none-match"), self.headers.get("if-modified-since")
        if (etag and inm and etag in [t.strip() for t in inm.split(",")]) or (
                modified and ims and not inm and email.utils.parsedate_to_datetime(ims)
                >= email.utils.parsedate_to_datetime(modified)):
            self.send_response(304)
            for k, v in headers:
                self.send_header(k, v)
            self.end_headers()
            return
        status = int(one("status", "200"))
        if one("size"):
            body = (bytes(range(256)) * (int(one("size")) // 256 + 1))[:int(one("size"))]
        else:
            body = ("n=%d lang=%s user=%s\n" % (
                seq, self.headers.get("accept-language"),
                self.headers.get("authorization") or self.headers.get("cookie"))).encode()
        if one("chunked") != "1":
            self._send(status, body, headers)
            return
        self.send_response(status)
        for k, v in headers:
            self.send_header(k, v)
        self.send_header("transfer-encoding", "chunked")
        self.end_headers()
        if self.command != "HEAD":
            for i in range(0, len(body), 16384):
                part = body[i:i + 16384]
                self.wfile.write(b"%x\r\n%s\r\n" % (len(part), part))
            self.wfile.write(b"0\r\n\r\n")

    def _dispatch(self):
        self._record()
        path, _, query = self.path.partition("?")
        if path.rsplit("/", 1)[-1] == "respond":
            self._respond(query)
        elif path == "/sha256":
            h = hashlib.sha256()
            n = 0
            for chunk in self._body_chunks():
                h.update(chunk)
                n += len(chunk)
            self._send(200, json.dumps({"sha256": h.hexdigest(), "bytes": n}).encode(),
                       [("content-type", "application/json")])
        elif path == "/echo":
            body = b"".join(self._body_chunks())
            self._send(200, body)
        elif path.startswith("/bytes/"):
            # N deterministic bytes, streamed in 64 KiB writes.
            for _ in self._body_chunks():
                pass
            n = int(path.split("/")[2])
            self.send_response(200)
            self.send_header("content-length", str(n))
            self.end_headers()
            block = bytes(range(256)) * 256
            sent = 0
            while sent < n and self.command != "HEAD":
                part = block[: min(len(block), n - sent)]
                self.wfile.write(part)
                sent += len(part)
        elif path.startswith("/status/"):
            for _ in self._body_chunks():
                pass
            status = int(path.split("/")[2])
            if status in (204, 304) or status < 200:
                self.send_response(status)
                self.end_headers()
            else:
                self._send(status, b"status %d\n" % status)
        elif path == "/headers":
            for _ in self._body_chunks():
                pass
            self._send(200, json.dumps(self.server.requests[-1]).encode(),
                       [("content-type", "application/json")])
        elif path.startswith("/sleep/"):
            time.sleep(float(path.split("/")[2]))
            self._send(200, b"slept\n")
        else:
            for _ in self._body_chunks():
                pass
            self._send(200, b"hello from app\n")

    do_GET = do_POST = do_PUT = do_DELETE = do_HEAD = do_PATCH = do_OPTIONS = _dispatch


class _ThreadingServer(socketserver.ThreadingMixIn, http.server.HTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 128     # socketserver's 5 drops SYNs as soon as a client opens a few at once


def sha256_of_bytes_endpoint(n):
    """The sha256 of what `/bytes/n` sends."""
    block = bytes(range(256)) * 256
    h = hashlib.sha256()
    sent = 0
    while sent < n:
        part = block[: min(len(block), n - sent)]
        h.update(part)
        sent += len(part)
    return h.hexdigest()


class HttpApp:
    """A real HTTP/1.1 server on 127.0.0.1; `.address`, `.requests` (what it received)."""

    def __init__(self, host="127.0.0.1"):
        self.server = _ThreadingServer((host, 0), _AppHandler)
        self.server.requests = []
        self.server.lock = threading.Lock()
        self.server.responded = 0
        self.server.seen = set()
        self.address = (host, self.server.server_address[1])
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    @property
    def requests(self):
        return self.server.requests

    def count(self, path):
        """How many requests for `path` (path and query, as sent) the app received."""
        return sum(1 for r in self.server.requests if r["path"] == path)

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.server.shutdown()
        self.server.server_close()


class ScriptedServer:
    """A TCP server on 127.0.0.1 running `behaviour(conn, server)` per connection in a
    thread. `.received` collects the bytes each connection sent (list of bytearrays),
    `.connections` counts accepted connections."""

    def __init__(self, behaviour, host="127.0.0.1"):
        self.behaviour = behaviour
        self.sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind((host, 0))
        self.sock.listen(128)
        self.address = (host, self.sock.getsockname()[1])
        self.received = []
        self.connections = 0
        self.closed = False
        self.thread = threading.Thread(target=self._accept, daemon=True)

    def _accept(self):
        while not self.closed:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            self.connections += 1
            threading.Thread(target=self._run, args=(conn,), daemon=True).start()

    def _run(self, conn):
        try:
            self.behaviour(conn, self)
        except OSError:
            pass
        finally:
            conn.close()

    def read_head(self, conn, buf=None):
        """Reads up to the end of a request head; returns (head bytes, bytes after it)."""
        data = bytearray(buf or b"")
        record = bytearray()
        self.received.append(record)
        while b"\r\n\r\n" not in data:
            chunk = conn.recv(65536)
            if not chunk:
                record += data
                return bytes(data), b""
            data += chunk
        record += data
        head, _, rest = bytes(data).partition(b"\r\n\r\n")
        return head + b"\r\n\r\n", rest

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.closed = True
        self.sock.close()


def closed_port():
    """A loopback port nothing listens on (connections to it are refused)."""
    return free_port()


class UpstreamRequest:
    """One request an HttpUpstream received."""

    def __init__(self, number, nth, method, path, headers, body, at):
        self.number = number          # the connection's 1-based number
        self.nth = nth                # the request's 1-based position on it
        self.method = method
        self.path = path
        self.headers = headers        # lower-case name -> value (last wins)
        self.body = body
        self.at = at                  # time.monotonic() when its head arrived

    def __repr__(self):
        return "<%s %s on #%d>" % (self.method, self.path, self.number)


def http_response(status=200, body=b"ok\n", headers=()):
    """The bytes of a Content-Length framed HTTP/1.1 response."""
    extra = b"".join(b"%s: %s\r\n" % (k.encode(), v.encode()) for k, v in headers)
    return b"HTTP/1.1 %d X\r\ncontent-length: %d\r\n%s\r\n%s" % (status, len(body), extra, body)


class HttpUpstream(ScriptedServer):
    """A keep-alive HTTP/1.1 upstream on real sockets for tests of upstream failures: for
    each request (head and Content-Length body read), `respond(request, conn)` sends the
    answer (or nothing, or half of one) and returns False to close the connection. Records
    `.requests` (UpstreamRequest, in arrival order) and the concurrency it saw: `.active`
    / `.max_active` connections, `.in_flight` / `.max_in_flight` requests."""

    def __init__(self, respond=None, host="127.0.0.1"):
        super().__init__(self._serve, host)
        self.respond = respond or (lambda request, conn: conn.sendall(http_response()))
        self.lock = threading.Lock()
        self.requests = []
        self.count = 0
        self.active = self.max_active = 0
        self.in_flight = self.max_in_flight = 0

    def paths(self):
        with self.lock:
            return [r.path for r in self.requests]

    def _serve(self, conn, _server):
        with self.lock:
            self.count += 1
            number = self.count
            self.active += 1
            self.max_active = max(self.max_active, self.active)
        try:
            rest, nth = b"", 0
            while True:
                head, rest = self.read_head(conn, rest)
                if not head.endswith(b"\r\n\r\n"):
                    return
                nth += 1
                lines = head[:-4].split(b"\r\n")
                method, path = lines[0].split(b" ")[:2]
                headers = {}
                for line in lines[1:]:
                    k, _, v = line.partition(b":")
                    headers[k.strip().lower().decode()] = v.strip().decode()
                length = int(headers.get("content-length", "0"))
                while len(rest) < length:
                    chunk = conn.recv(65536)
                    if not chunk:
                        break
                    rest += chunk
                body, rest = rest[:length], rest[length:]
                request = UpstreamRequest(number, nth, method.decode(), path.decode(), headers,
                                          body, time.monotonic())
                with self.lock:
                    self.requests.append(request)
                    self.in_flight += 1
                    self.max_in_flight = max(self.max_in_flight, self.in_flight)
                try:
                    if self.respond(request, conn) is False:
                        return
                finally:
                    with self.lock:
                        self.in_flight -= 1
        finally:
            with self.lock:
                self.active -= 1
