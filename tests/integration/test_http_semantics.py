"""HTTP/1.1 semantics through the real sidecar, on real sockets: client -> inbound listener
-> app (the threaded `HttpApp`, or a `ScriptedServer` where the exact upstream bytes
matter).

Covers connection management (keep-alive on both sides, close, HTTP/1.0), pipelining,
`Expect: 100-continue`, responses without a body, hop-by-hop fields in both directions,
`X-Forwarded-For` / `X-Request-Id`, and the request framing the proxy writes anew.
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
from tests.support.servers import HttpApp, ScriptedServer
from tests.support.sidecar_process import SidecarProcess


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
            n = int(dict(fields)["content-length"])
            body += self.read_exact(n)
            raw += body
        return {"head": head, "line": lines[0], "fields": fields,
                "body": bytes(body), "raw_body": bytes(raw)}


def parse_fields(lines):
    """[(lower-case name, value)] of raw field lines, in order."""
    out = []
    for line in lines:
        name, _, value = line.partition(b":")
        out.append((name.decode().lower(), value.strip().decode()))
    return out


def head_fields(raw_head):
    """Fields of a raw head as returned by `RawClient.read_head` (start line excluded)."""
    return parse_fields(raw_head.split(b"\r\n")[1:])


def values(fields, name):
    return [v for k, v in fields if k == name]


def http_response(status, body=b"", headers=(), reason="X", length=True):
    out = b"HTTP/1.1 %d %s\r\n" % (status, reason.encode())
    for k, v in headers:
        out += b"%s: %s\r\n" % (k.encode(), v.encode())
    if length:
        out += b"content-length: %d\r\n" % len(body)
    return out + b"\r\n" + body


def serve_requests(respond):
    """A `ScriptedServer` behaviour: reads requests one after another on each connection,
    records them in `server.seen`, and sends what `respond(request)` returns (None closes)."""
    def behaviour(conn, server):
        peer = Peer(conn)
        while True:
            req = peer.read_request()
            server.seen.append(req)
            out = respond(req)
            if out is None:
                return
            conn.sendall(out)
    return behaviour


@contextlib.contextmanager
def scripted(behaviour):
    """A `ScriptedServer` as the app behind a fresh sidecar: yields (upstream, sidecar)."""
    up = ScriptedServer(behaviour)
    up.seen = []
    with up, SidecarProcess(app=up.address) as sc:
        yield up, sc


def app_view(client, method="GET", path="/headers", headers=(), body=b"", version="HTTP/1.1"):
    """Sends a request to the app's /headers and returns what the app saw (its JSON)."""
    req = b"%s %s %s\r\n" % (method.encode(), path.encode(), version.encode())
    if version == "HTTP/1.1":
        req += b"Host: app.test\r\n"
    for k, v in headers:
        req += b"%s: %s\r\n" % (k.encode(), v.encode())
    client.send(req + b"\r\n" + body)
    status, _, data = client.read_response(method)
    assert status == 200, data
    seen = json.loads(data)
    seen["headers"] = [tuple(f) for f in seen["headers"]]
    return seen


UUID4 = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$")


@pytest.fixture(scope="module")
def sc():
    """One HttpApp behind one sidecar, shared by the tests that only need the real app."""
    with HttpApp() as app, SidecarProcess(app=app.address) as sidecar:
        yield sidecar


# -- keep-alive -----------------------------------------------------------------------------

def test_fifty_sequential_requests_on_one_client_connection_use_one_upstream_connection():
    def respond(req):
        return http_response(200, b"answer to " + req["line"].split(b" ")[1])

    with scripted(serve_requests(respond)) as (up, sc), RawClient(sc.inbound) as c:
        for i in range(50):
            c.send(b"GET /n/%d HTTP/1.1\r\nHost: app.test\r\n\r\n" % i)
            status, headers, body = c.read_response()
            assert (status, body) == (200, b"answer to /n/%d" % i)
            assert "connection" not in headers
        assert len(up.seen) == 50
        assert up.connections == 1


def test_upstream_connection_is_reused_across_sequential_client_connections():
    with scripted(serve_requests(lambda req: http_response(200, b"ok"))) as (up, sc):
        for i in range(5):
            with RawClient(sc.inbound) as c:
                c.send(b"GET /c/%d HTTP/1.1\r\nHost: app.test\r\n\r\n" % i)
                assert c.read_response()[::2] == (200, b"ok")
        assert len(up.seen) == 5
        assert up.connections == 1


def test_upstream_connection_close_does_not_close_the_client_connection():
    def one_per_connection(conn, server):
        # one request per connection: answered with `Connection: close`, then closed
        server.seen.append(Peer(conn).read_request())
        conn.sendall(http_response(200, b"bye", headers=[("Connection", "close")]))

    with scripted(one_per_connection) as (up, sc), RawClient(sc.inbound, timeout=5) as c:
        for i in range(3):
            c.send(b"GET /r/%d HTTP/1.1\r\nHost: app.test\r\n\r\n" % i)
            status, headers, body = c.read_response()
            assert (status, body) == (200, b"bye")
            assert "connection" not in headers
        assert not c.is_closed(timeout=0.2)
        assert up.connections == 3


def test_kept_alive_upstream_that_closes_without_answering_is_retried_for_a_request_without_body():
    def behaviour(conn, server):
        number = server.connections
        peer = Peer(conn)
        while True:
            req = peer.read_request()
            server.seen.append((number, req["line"]))
            if number == 1 and len(server.seen) == 2:
                return      # read and dropped unanswered, as an app closing an idle connection
            conn.sendall(http_response(200, b"conn %d" % number))

    with scripted(behaviour) as (up, sc), RawClient(sc.inbound, timeout=5) as c:
        c.send(b"GET /one HTTP/1.1\r\nHost: app.test\r\n\r\n")
        assert c.read_response()[::2] == (200, b"conn 1")
        c.send(b"GET /two HTTP/1.1\r\nHost: app.test\r\n\r\n")
        assert c.read_response()[::2] == (200, b"conn 2")
        assert up.seen == [(1, b"GET /one HTTP/1.1"), (1, b"GET /two HTTP/1.1"),
                           (2, b"GET /two HTTP/1.1")]


def test_client_connection_close_gets_connection_close_response_then_closed(sc):
    with RawClient(sc.inbound) as c:
        c.send(b"GET /bytes/100 HTTP/1.1\r\nHost: app.test\r\nConnection: close\r\n\r\n")
        status, headers, body = c.read_response()
        assert status == 200 and len(body) == 100
        assert headers["connection"] == "close"
        assert c.buf == b"" and c.is_closed()


def test_requests_pipelined_behind_connection_close_are_not_forwarded():
    with scripted(serve_requests(lambda req: http_response(200, b"ok"))) as (up, sc), \
            RawClient(sc.inbound, timeout=5) as c:
        c.send(b"GET /last HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n"
               b"GET /ignored HTTP/1.1\r\nHost: a\r\n\r\n")
        status, headers, body = c.read_response()
        assert (status, body, headers["connection"]) == (200, b"ok", "close")
        assert c.read_until_close() == b""
        time.sleep(0.1)
    assert [r["line"] for r in up.seen] == [b"GET /last HTTP/1.1"]


def test_client_half_close_after_a_request_still_gets_the_response(sc):
    with RawClient(sc.inbound) as c:
        c.send(b"GET /bytes/300000 HTTP/1.1\r\nHost: a\r\n\r\n")
        c.sock.shutdown(socket.SHUT_WR)
        status, headers, body = c.read_response()
        assert status == 200 and body == (bytes(range(256)) * 256 * 5)[:300000]
        assert c.read_until_close() == b""


def test_all_requests_pipelined_before_a_client_half_close_are_answered(sc):
    with RawClient(sc.inbound, timeout=5) as c:
        c.send(b"GET /bytes/3 HTTP/1.1\r\nHost: a\r\n\r\nGET /bytes/4 HTTP/1.1\r\nHost: a\r\n\r\n")
        c.sock.shutdown(socket.SHUT_WR)
        assert c.read_response()[::2] == (200, bytes(range(3)))
        assert c.read_response()[::2] == (200, bytes(range(4)))
        assert c.read_until_close() == b""


def test_http10_client_without_keep_alive_gets_close(sc):
    with RawClient(sc.inbound) as c:
        c.send(b"GET /headers HTTP/1.0\r\n\r\n")
        status, headers, body = c.read_response()
        assert status == 200
        assert headers["connection"] == "close"
        seen = json.loads(body)
        assert seen["version"] == "HTTP/1.1"       # the proxy speaks HTTP/1.1 upstream
        assert c.buf == b"" and c.is_closed()


def test_http10_client_with_keep_alive_stays_open(sc):
    with RawClient(sc.inbound) as c:
        for i in range(3):
            c.send(b"GET /bytes/%d HTTP/1.0\r\nConnection: keep-alive\r\n\r\n" % (10 + i))
            status, headers, body = c.read_response()
            assert status == 200 and len(body) == 10 + i
            assert headers["connection"].lower() == "keep-alive"
            assert headers["content-length"] == str(10 + i)
        assert not c.is_closed(timeout=0.3)


def test_http10_request_without_host_reaches_the_app_with_the_address_it_was_sent_to(sc):
    """Forwarded as HTTP/1.1, which needs a Host: the authority is the address the client
    connected to (RFC 9112 3.3), here the inbound listener's."""
    with RawClient(sc.inbound) as c:
        seen = app_view(c, version="HTTP/1.0")
    assert seen["version"] == "HTTP/1.1"
    assert values(seen["headers"], "host") == ["%s:%d" % sc.inbound]


def test_http10_absolute_form_request_without_host_gets_the_target_authority_as_host():
    with scripted(serve_requests(lambda req: http_response(200, b"ok"))) as (up, sc), \
            RawClient(sc.inbound) as c:
        c.send(b"GET http://user@legacy.example:8080/page?q=1 HTTP/1.0\r\n\r\n")
        assert c.read_response()[::2] == (200, b"ok")
    (req,) = up.seen
    assert req["line"] == b"GET http://user@legacy.example:8080/page?q=1 HTTP/1.1"
    assert values(req["fields"], "host") == ["legacy.example:8080"]


# -- pipelining -----------------------------------------------------------------------------

def test_ten_pipelined_requests_in_one_write_are_answered_in_order(sc):
    big = bytes(range(256)) * 300             # 76800 bytes: more than one segment
    chunked_body = b"5;x=1\r\nhello\r\n6\r\n world\r\n0\r\nX-Trailer: t\r\n\r\n"
    reqs = [
        (b"GET /headers?i=0 HTTP/1.1\r\nHost: a\r\n\r\n", "GET"),
        (b"POST /echo HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\n\r\nalpha", "POST"),
        (b"GET /bytes/1000 HTTP/1.1\r\nHost: a\r\n\r\n", "GET"),
        (b"POST /sha256 HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n"
         + chunked_body, "POST"),
        (b"HEAD /bytes/5000 HTTP/1.1\r\nHost: a\r\n\r\n", "HEAD"),
        (b"GET /status/204 HTTP/1.1\r\nHost: a\r\n\r\n", "GET"),
        (b"PUT /echo HTTP/1.1\r\nHost: a\r\nContent-Length: %d\r\n\r\n" % len(big) + big, "PUT"),
        (b"GET /status/404 HTTP/1.1\r\nHost: a\r\n\r\n", "GET"),
        (b"DELETE /headers?i=8 HTTP/1.1\r\nHost: a\r\n\r\n", "DELETE"),
        (b"POST /echo HTTP/1.1\r\nHost: a\r\nContent-Length: 0\r\n\r\n", "POST"),
    ]
    with RawClient(sc.inbound) as c:
        c.send(b"".join(r for r, _ in reqs))
        got = [c.read_response(method) for _, method in reqs]
        assert not c.is_closed(timeout=0.2)
    assert [s for s, _, _ in got] == [200, 200, 200, 200, 200, 204, 200, 404, 200, 200]
    assert json.loads(got[0][2])["path"] == "/headers?i=0"
    assert got[1][2] == b"alpha"
    assert got[2][2] == (bytes(range(256)) * 4)[:1000]
    assert json.loads(got[3][2]) == {
        "sha256": "b94d27b9934d3e08a52e52d7da7dabfac484efe37a5380ee9088f7ace2efcde9", "bytes": 11}
    assert got[4][1]["content-length"] == "5000" and got[4][2] == b""
    assert got[5][2] == b""
    assert got[6][2] == big
    assert got[7][2] == b"status 404\n"
    assert json.loads(got[8][2])["method"] == "DELETE"
    assert json.loads(got[8][2])["path"] == "/headers?i=8"
    assert got[9][2] == b""


def test_pipelined_uploads_far_beyond_the_pipeline_buffer_are_answered_in_order(sc):
    bodies = [bytes([i]) * (200000 + i) for i in range(20)]      # about 4 MB in one write
    data = b"".join(b"POST /sha256?n=%d HTTP/1.1\r\nHost: a\r\nContent-Length: %d\r\n\r\n%s"
                    % (i, len(b), b) for i, b in enumerate(bodies))
    with RawClient(sc.inbound) as c:
        sender = threading.Thread(target=c.send, args=(data,), daemon=True)
        sender.start()                        # sendall blocks until the proxy catches up
        answers = [c.read_response("POST") for _ in bodies]
        sender.join(5)
        assert not sender.is_alive()
    for body, (status, _, answer) in zip(bodies, answers):
        assert status == 200
        assert json.loads(answer) == {"sha256": hashlib.sha256(body).hexdigest(), "bytes": len(body)}


# -- Expect: 100-continue -------------------------------------------------------------------

def test_expect_100_continue_relays_the_apps_100_before_the_body_is_sent(sc):
    body = b"x" * 100000
    with RawClient(sc.inbound, timeout=5) as c:
        c.send(b"POST /sha256 HTTP/1.1\r\nHost: a\r\nExpect: 100-continue\r\n"
               b"Content-Length: %d\r\n\r\n" % len(body))
        status, _, raw = c.read_head()          # the client has sent no body yet
        assert status == 100
        assert raw.startswith(b"HTTP/1.1 100 ")
        c.send(body)
        status, _, data = c.read_response("POST")
        assert status == 200
        assert json.loads(data) == {"sha256": hashlib.sha256(body).hexdigest(), "bytes": len(body)}


def test_expect_100_continue_interim_comes_from_the_upstream():
    def behaviour(conn, server):
        peer = Peer(conn)
        head = peer.read_until(b"\r\n\r\n")
        server.seen.append(head)
        conn.sendall(b"HTTP/1.1 100 Continue\r\nX-Interim: from-upstream\r\n\r\n")
        n = int(re.search(rb"(?i)content-length: *(\d+)", head).group(1))
        data = peer.read_exact(n)
        conn.sendall(http_response(201, b"got " + data))
        peer.read_until(b"\r\n\r\n")

    with scripted(behaviour) as (up, sc), RawClient(sc.inbound, timeout=5) as c:
        c.send(b"PUT /item HTTP/1.1\r\nHost: a\r\nExpect: 100-continue\r\nContent-Length: 4\r\n\r\n")
        status, headers, _ = c.read_head()
        assert status == 100 and headers["x-interim"] == "from-upstream"
        c.send(b"data")
        assert c.read_response("PUT")[::2] == (201, b"got data")
        assert b"\r\nexpect: 100-continue\r\n" in up.seen[0].lower()


@pytest.mark.parametrize("status", [417, 401])
def test_upstream_final_status_without_100_reaches_the_client_that_held_its_body(status):
    def behaviour(conn, server):
        peer = Peer(conn)
        server.seen.append(peer.read_until(b"\r\n\r\n"))
        conn.sendall(http_response(status, b"refused %d" % status))
        while True:                             # whatever comes next is not wanted
            peer._fill()

    with scripted(behaviour) as (up, sc), RawClient(sc.inbound, timeout=5) as c:
        c.send(b"POST /upload HTTP/1.1\r\nHost: a\r\nExpect: 100-continue\r\n"
               b"Content-Length: 1000000\r\n\r\n")
        got, headers, raw = c.read_head()
        assert got == status                  # final, with no 100 before it
        assert c.read_exact(int(headers["content-length"])) == b"refused %d" % status


# -- responses without a body ---------------------------------------------------------------

def test_head_response_keeps_content_length_without_body_and_next_pipelined_request_parses(sc):
    with RawClient(sc.inbound) as c:
        c.send(b"HEAD /bytes/5000 HTTP/1.1\r\nHost: a\r\n\r\n"
               b"GET /bytes/7 HTTP/1.1\r\nHost: a\r\n\r\n")
        status, headers, raw = c.read_head()
        assert status == 200 and headers["content-length"] == "5000"
        assert "transfer-encoding" not in headers
        # no body bytes: what follows the head is the next response
        status, headers, body = c.read_response()
        assert status == 200 and body == bytes(range(7))


def test_204_response_has_no_body_and_next_pipelined_request_parses(sc):
    with RawClient(sc.inbound) as c:
        c.send(b"GET /status/204 HTTP/1.1\r\nHost: a\r\n\r\nGET /bytes/3 HTTP/1.1\r\nHost: a\r\n\r\n")
        status, headers, raw = c.read_head()
        assert status == 204
        assert "transfer-encoding" not in headers
        assert headers.get("content-length", "0") == "0"
        assert c.read_response()[::2] == (200, bytes(range(3)))


@pytest.mark.parametrize("length_field", [True, False], ids=["with-content-length", "without"])
def test_304_response_has_no_body_and_next_request_follows(length_field):
    def respond(req):
        if req["line"].startswith(b"GET /cached"):
            fields = [("ETag", '"v1"')] + ([("Content-Length", "1234")] if length_field else [])
            return http_response(304, headers=fields, reason="Not Modified", length=False)
        return http_response(200, b"next")

    with scripted(serve_requests(respond)) as (up, sc), RawClient(sc.inbound, timeout=5) as c:
        c.send(b"GET /cached HTTP/1.1\r\nHost: a\r\nIf-None-Match: \"v1\"\r\n\r\n"
               b"GET /next HTTP/1.1\r\nHost: a\r\n\r\n")
        status, headers, raw = c.read_head()
        assert status == 304 and headers["etag"] == '"v1"'
        assert "transfer-encoding" not in headers
        if length_field:
            assert headers["content-length"] == "1234"   # the representation's length, kept
        else:
            assert "content-length" not in headers
        assert c.read_response()[::2] == (200, b"next")
        assert up.connections == 1


def test_103_early_hints_is_relayed_before_the_final_200():
    def respond(req):
        return (b"HTTP/1.1 103 Early Hints\r\nLink: </style.css>; rel=preload\r\n\r\n"
                + http_response(200, b"page", reason="OK"))

    with scripted(serve_requests(respond)) as (up, sc), RawClient(sc.inbound, timeout=5) as c:
        c.send(b"GET /page HTTP/1.1\r\nHost: a\r\n\r\n")
        status, headers, raw = c.read_head()
        assert status == 103
        assert headers["link"] == "</style.css>; rel=preload"
        assert "content-length" not in headers and "transfer-encoding" not in headers
        status, headers, raw = c.read_head()
        assert status == 200
        assert c.read_exact(int(headers["content-length"])) == b"page"
        # and the connection carries on
        c.send(b"GET /page2 HTTP/1.1\r\nHost: a\r\n\r\n")
        assert c.read_response()[::2] == (200, b"page")


def test_interim_responses_are_not_sent_to_an_http10_client():
    def respond(req):
        return (b"HTTP/1.1 100 Continue\r\n\r\n"
                b"HTTP/1.1 103 Early Hints\r\nLink: </a.css>; rel=preload\r\n\r\n"
                + http_response(200, b"final", reason="OK"))

    with scripted(serve_requests(respond)) as (up, sc), RawClient(sc.inbound, timeout=5) as c:
        c.send(b"GET /page HTTP/1.0\r\n\r\n")
        status, headers, raw = c.read_head()
        assert status == 200, raw
        assert "link" not in headers
        assert c.read_exact(int(headers["content-length"])) == b"final"


# -- hop-by-hop fields ----------------------------------------------------------------------

def test_request_hop_by_hop_fields_do_not_reach_the_app(sc):
    with RawClient(sc.inbound) as c:
        seen = app_view(c, headers=[
            ("Connection", "x-foo, keep-alive"), ("X-Foo", "1"), ("Keep-Alive", "timeout=5"),
            ("TE", "trailers"), ("Trailer", "x-checksum"), ("Proxy-Connection", "keep-alive"),
            ("Upgrade", "h2c"), ("X-Keep", "yes")])
    names = [k for k, _ in seen["headers"]]
    for hop in ("connection", "x-foo", "keep-alive", "te", "trailer", "proxy-connection", "upgrade"):
        assert hop not in names, seen
    assert ("x-keep", "yes") in seen["headers"]
    assert ("host", "app.test") in seen["headers"]


def test_request_fields_named_by_connection_are_removed_case_insensitively(sc):
    with RawClient(sc.inbound) as c:
        seen = app_view(c, headers=[("X-Before", "1"), ("Connection", "X-BEFORE , x-after"),
                                    ("x-After", "2"), ("X-Other", "3")])
    names = [k for k, _ in seen["headers"]]
    assert "x-before" not in names and "x-after" not in names and "connection" not in names
    assert ("x-other", "3") in seen["headers"]


def test_response_hop_by_hop_fields_do_not_reach_the_client():
    def respond(req):
        return http_response(200, b"ok", reason="OK", headers=[
            ("Connection", "x-bar, keep-alive"), ("X-Bar", "1"), ("Keep-Alive", "timeout=5"),
            ("Proxy-Connection", "keep-alive"), ("Trailer", "x-checksum"), ("TE", "trailers"),
            ("Upgrade", "h2c"), ("X-Keep", "yes")])

    with scripted(serve_requests(respond)) as (up, sc), RawClient(sc.inbound) as c:
        c.send(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n")
        status, headers, raw = c.read_head()
        assert c.read_exact(2) == b"ok"
    names = [k for k, _ in head_fields(raw)]
    for hop in ("connection", "x-bar", "keep-alive", "proxy-connection", "trailer", "te", "upgrade"):
        assert hop not in names, raw
    assert values(head_fields(raw), "x-keep") == ["yes"]
    assert values(head_fields(raw), "content-length") == ["2"]


# -- X-Forwarded-For, X-Request-Id ----------------------------------------------------------

def test_x_forwarded_for_is_added_with_the_client_address(sc):
    with RawClient(sc.inbound) as c:
        seen = app_view(c)
    assert values(seen["headers"], "x-forwarded-for") == ["127.0.0.1"]


def test_x_forwarded_for_existing_values_get_the_client_address_appended(sc):
    with RawClient(sc.inbound) as c:
        one = app_view(c, headers=[("X-Forwarded-For", "203.0.113.7")])
        two = app_view(c, headers=[("X-Forwarded-For", "203.0.113.7, 198.51.100.2"),
                                   ("x-forwarded-for", "192.0.2.9")])
    assert values(one["headers"], "x-forwarded-for") == [
        "203.0.113.7, 127.0.0.1"]
    assert values(two["headers"], "x-forwarded-for") == [
        "203.0.113.7, 198.51.100.2, 192.0.2.9, 127.0.0.1"]


def test_x_request_id_is_kept_when_present(sc):
    with RawClient(sc.inbound) as c:
        seen = app_view(c, headers=[("X-Request-Id", "req-abc-123")])
    assert values(seen["headers"], "x-request-id") == ["req-abc-123"]


def test_x_request_id_is_generated_as_unique_uuid4_when_absent(sc):
    ids = []
    for _ in range(2):
        with RawClient(sc.inbound) as c:
            for _ in range(10):
                seen = app_view(c)
                got = values(seen["headers"], "x-request-id")
                assert len(got) == 1 and UUID4.match(got[0]), got
                ids.append(got[0])
    assert len(set(ids)) == 20


def test_x_forwarded_for_named_in_connection_is_replaced_by_the_client_address(sc):
    with RawClient(sc.inbound) as c:
        seen = app_view(c, headers=[("Connection", "X-Forwarded-For"),
                                    ("X-Forwarded-For", "203.0.113.66")])
    assert values(seen["headers"], "x-forwarded-for") == ["127.0.0.1"]


def test_x_request_id_named_in_connection_is_replaced_by_a_generated_one(sc):
    with RawClient(sc.inbound) as c:
        seen = app_view(c, headers=[("X-Request-Id", "client-id"),
                                    ("Connection", "x-request-id")])
    got = values(seen["headers"], "x-request-id")
    assert len(got) == 1 and UUID4.match(got[0]), got


def test_host_named_in_connection_still_reaches_the_app(sc):
    with RawClient(sc.inbound) as c:
        seen = app_view(c, headers=[("Connection", "host")])
    assert values(seen["headers"], "host") == ["app.test"]


# -- request framing written anew -----------------------------------------------------------

@pytest.mark.parametrize("fields", [
    [("Content-Length", "5, 5")],
    [("Content-Length", "5"), ("Content-Length", "5")],
], ids=["list", "repeated"])
def test_agreeing_duplicate_content_lengths_reach_the_app_as_one(fields, sc):
    with RawClient(sc.inbound) as c:
        seen = app_view(c, method="POST", path="/headers", headers=fields, body=b"hello")
        # the body was exactly 5 bytes: the next request on the connection is intact
        again = app_view(c)
    assert values(seen["headers"], "content-length") == ["5"]
    assert again["path"] == "/headers"


def test_duplicate_content_length_reaches_upstream_as_single_field_with_body():
    with scripted(serve_requests(lambda req: http_response(200, b"ok"))) as (up, sc), \
            RawClient(sc.inbound) as c:
        c.send(b"POST /x HTTP/1.1\r\nHost: a\r\nContent-Length: 5, 5\r\n\r\nhello"
               b"GET /y HTTP/1.1\r\nHost: a\r\n\r\n")
        assert c.read_response()[::2] == (200, b"ok")
        assert c.read_response()[::2] == (200, b"ok")
    first, second = up.seen
    assert values(first["fields"], "content-length") == ["5"]
    assert first["body"] == b"hello"
    assert second["line"] == b"GET /y HTTP/1.1"


def test_request_without_body_gets_no_framing_fields_and_empty_post_keeps_content_length_zero(
        sc):
    with RawClient(sc.inbound) as c:
        get = app_view(c)
        post = app_view(c, method="POST", headers=[("Content-Length", "0")])
    get_fields = get["headers"]
    assert values(get_fields, "content-length") == []
    assert values(get_fields, "transfer-encoding") == []
    assert values(post["headers"], "content-length") == ["0"]
