"""Upstreams that misbehave, through the real sidecar (SPEC.md, "Bad input").

A malformed or truncated response head is a 502 with a short plain body and a log line
saying why; a response cut mid-body can only be passed on as a cut; an unreachable app is
a 503; an app that never answers is a 504 once the request timeout passes. After a local
502/503 to a bodiless request the client connection stays usable.
"""
import re
import socket
import threading
import time

import pytest

from tests.support.http_client import RawClient
from tests.support.ports import free_port
from tests.support.servers import ScriptedServer
from tests.support.sidecar_process import SidecarProcess

OK = b"HTTP/1.1 200 OK\r\ncontent-length: 3\r\n\r\nok\n"


def path_script(respond):
    """A keep-alive upstream: for each request head, `respond(path, conn)` sends what it
    wants and returns False to close the connection. `server.paths` lists
    (connection number, path) in arrival order."""
    counter, lock = [0], threading.Lock()

    def behaviour(conn, server):
        with lock:
            number = counter[0] = counter[0] + 1
        rest = b""
        while True:
            head, rest = server.read_head(conn, rest)
            if not head.endswith(b"\r\n\r\n"):
                return
            path = head.split(b" ", 2)[1].decode()
            with lock:
                if not hasattr(server, "paths"):
                    server.paths = []
                server.paths.append((number, path))
            if respond(path, conn) is False:
                return
    return behaviour


def wait_for_log(sc, *fragments, timeout=3.0):
    """The first sidecar log line holding every fragment (waits for it to be written)."""
    deadline = time.monotonic() + timeout
    while True:
        log = sc.log()
        for line in log.splitlines():
            if all(f.search(line) if isinstance(f, re.Pattern) else f in line for f in fragments):
                return line
        assert time.monotonic() < deadline, "no log line with %r in:\n%s" % (fragments, log)
        time.sleep(0.05)


def assert_local_error(response, status, close=False):
    got, headers, body = response
    assert got == status, response
    assert headers.get("content-type") == "text/plain", headers
    assert int(headers["content-length"]) == len(body)
    assert 0 < len(body) <= 100 and body.endswith(b"\n"), body
    assert all(32 <= c < 127 for c in body[:-1]), body
    assert ("connection" in headers and headers["connection"] == "close") == close, headers


# --- malformed response heads: 502 ------------------------------------------------------------

CL2 = b"content-length: 2\r\n"
MALFORMED_RESPONSES = [
    ("garbage_status_line", b"HTTX/1.1 200 OK\r\n" + CL2 + b"\r\nok", "malformed status line"),
    ("not_http_at_all", b"hello there\r\n\r\n", "malformed status line"),
    ("http2_status_line", b"HTTP/2 200\r\n" + CL2 + b"\r\nok", "malformed status line"),
    ("four_digit_status", b"HTTP/1.1 2000 OK\r\n" + CL2 + b"\r\nok", "malformed status line"),
    ("letters_for_status", b"HTTP/1.1 abc OK\r\n" + CL2 + b"\r\nok", "malformed status code"),
    ("status_600", b"HTTP/1.1 600 Weird\r\n" + CL2 + b"\r\nok", "malformed status code"),
    ("nul_in_reason", b"HTTP/1.1 200 O\x00K\r\n" + CL2 + b"\r\nok", "control character in reason phrase"),
    ("space_in_header_name", b"HTTP/1.1 200 OK\r\nX Bad: 1\r\n" + CL2 + b"\r\nok", "invalid character in header name"),
    ("space_before_colon", b"HTTP/1.1 200 OK\r\ncontent-length : 2\r\n\r\nok", "invalid character in header name"),
    ("header_without_colon", b"HTTP/1.1 200 OK\r\nnocolon\r\n" + CL2 + b"\r\nok", "invalid character in header name"),
    ("obs_fold", b"HTTP/1.1 200 OK\r\nX-A: a\r\n b\r\n" + CL2 + b"\r\nok", "obsolete line folding"),
    ("nul_in_value", b"HTTP/1.1 200 OK\r\nX-A: a\x00b\r\n" + CL2 + b"\r\nok", "invalid character in header value"),
    ("cl_and_te", b"HTTP/1.1 200 OK\r\n" + CL2 + b"transfer-encoding: chunked\r\n\r\n2\r\nok\r\n0\r\n\r\n",
     "both Content-Length and Transfer-Encoding"),
    ("conflicting_cl", b"HTTP/1.1 200 OK\r\n" + CL2 + b"content-length: 3\r\n\r\nok!", "conflicting Content-Length"),
    ("malformed_cl", b"HTTP/1.1 200 OK\r\ncontent-length: two\r\n\r\nok", "malformed Content-Length"),
    ("unsupported_coding", b"HTTP/1.1 200 OK\r\ntransfer-encoding: gzip, chunked\r\n\r\n0\r\n\r\n",
     "unsupported transfer coding"),
    ("final_coding_not_chunked", b"HTTP/1.1 200 OK\r\ntransfer-encoding: gzip\r\n\r\n\x1f\x8b",
     "unsupported transfer coding"),
    ("bare_lf", b"HTTP/1.1 200 OK\ncontent-length: 2\n\nok", "bare LF"),
    ("bare_lf_one_line", b"HTTP/1.1 200 OK\r\nX-A: b\n" + CL2 + b"\r\nok", "bare LF"),
    ("bad_chunk_size_in_first_read", b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\nzz\r\nok\r\n0\r\n\r\n",
     "malformed chunked body from upstream: malformed chunk size"),
    ("too_many_fields", b"HTTP/1.1 200 OK\r\n" + b"".join(b"X-%d: v\r\n" % i for i in range(120)) + CL2 + b"\r\nok",
     "too many header fields"),
    ("head_too_large", b"HTTP/1.1 200 OK\r\nX-Big: " + b"v" * 70000 + b"\r\n" + CL2 + b"\r\nok",
     "malformed response from upstream"),
]


MALFORMED_BY_NAME = {name: response for name, response, _ in MALFORMED_RESPONSES}


@pytest.fixture(scope="module")
def malformed_upstream():
    """Answers /bad/NAME with MALFORMED_RESPONSES' NAME response, anything else with 200."""
    def respond(path, conn):
        if path.startswith("/bad/"):
            conn.sendall(MALFORMED_BY_NAME[path[5:]])
        else:
            conn.sendall(OK)
    with ScriptedServer(path_script(respond)) as app, SidecarProcess(app=app.address) as sc:
        yield app, sc


@pytest.mark.parametrize("name,reason", [(n, why) for n, _, why in MALFORMED_RESPONSES],
                         ids=[n for n, _, _ in MALFORMED_RESPONSES])
def test_malformed_response_head_is_502_with_logged_reason_and_connection_stays_usable(
        malformed_upstream, name, reason):
    app, sc = malformed_upstream
    with RawClient(sc.inbound) as c:
        c.send(b"GET /bad/%s HTTP/1.1\r\nHost: app.local\r\n\r\n" % name.encode())
        response = c.read_response()
        assert_local_error(response, 502)
        assert response[2] == b"bad upstream response\n"
        line = wait_for_log(sc, "inbound ", re.compile(r"/bad/%s\b" % name))
        assert " WARNING " in line, line
        assert "malformed response from upstream" in line or "malformed chunked body" in line, line
        assert reason in line, line
        # Same client connection, next request: a fresh upstream connection serves it (the
        # one that carried the malformed response is never reused).
        c.send(b"GET /ok HTTP/1.1\r\nHost: app.local\r\n\r\n")
        assert c.read_response()[::2] == (200, b"ok\n")
    paths = list(app.paths)
    bad_conn = [n for n, p in paths if p == "/bad/" + name]
    assert len(bad_conn) == 1, paths
    after_bad = paths[paths.index((bad_conn[0], "/bad/" + name)) + 1:]
    assert after_bad and after_bad[0][1] == "/ok", paths
    assert bad_conn[0] not in [n for n, _ in after_bad], paths


def test_upstream_closing_mid_head_is_502():
    def respond(path, conn):
        if path == "/truncated":
            conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Le")
            return False
        conn.sendall(OK)
    with ScriptedServer(path_script(respond)) as app, SidecarProcess(app=app.address) as sc:
        with RawClient(sc.inbound) as c:
            c.send(b"GET /truncated HTTP/1.1\r\nHost: app.local\r\n\r\n")
            assert_local_error(c.read_response(), 502)
            line = wait_for_log(sc, "inbound ", "/truncated")
            assert "upstream closed the connection before a complete response" in line, line
            c.send(b"GET /ok HTTP/1.1\r\nHost: app.local\r\n\r\n")
            assert c.read_response()[::2] == (200, b"ok\n")


def test_upstream_closing_without_any_response_on_fresh_connection_is_502():
    def respond(path, conn):
        if path == "/silent-close":
            return False
        conn.sendall(OK)
    with ScriptedServer(path_script(respond)) as app, SidecarProcess(app=app.address) as sc:
        with RawClient(sc.inbound) as c:
            c.send(b"GET /silent-close HTTP/1.1\r\nHost: app.local\r\n\r\n")
            assert_local_error(c.read_response(), 502)
            line = wait_for_log(sc, "inbound ", "/silent-close")
            assert "upstream closed the connection without a response" in line, line
            c.send(b"GET /ok HTTP/1.1\r\nHost: app.local\r\n\r\n")
            assert c.read_response()[::2] == (200, b"ok\n")
        # A fresh connection that fails is not retried: one try, then the good request.
        assert app.connections == 2


def test_switching_protocols_without_upgrade_request_is_502():
    def respond(path, conn):
        if path == "/no-upgrade-asked":
            conn.sendall(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n"
                         b"Connection: upgrade\r\n\r\n")
            return True
        conn.sendall(OK)
    with ScriptedServer(path_script(respond)) as app, SidecarProcess(app=app.address) as sc:
        with RawClient(sc.inbound) as c:
            c.send(b"GET /no-upgrade-asked HTTP/1.1\r\nHost: app.local\r\n\r\n")
            assert_local_error(c.read_response(), 502)
            wait_for_log(sc, "inbound ", "/no-upgrade-asked", "switched protocols")
            c.send(b"GET /ok HTTP/1.1\r\nHost: app.local\r\n\r\n")
            assert c.read_response()[::2] == (200, b"ok\n")


def test_malformed_final_response_after_interim_100_is_502():
    def respond(path, conn):
        if path == "/interim-then-garbage":
            conn.sendall(b"HTTP/1.1 100 Continue\r\n\r\n")
            time.sleep(0.1)
            conn.sendall(b"HTTP/1.1 200 OK\r\nX Bad: 1\r\ncontent-length: 2\r\n\r\nok")
            return True
        conn.sendall(OK)
    with ScriptedServer(path_script(respond)) as app, SidecarProcess(app=app.address) as sc:
        with RawClient(sc.inbound) as c:
            c.send(b"GET /interim-then-garbage HTTP/1.1\r\nHost: app.local\r\n\r\n")
            status, _, head = c.read_head()
            assert status == 100 and head == b"HTTP/1.1 100 Continue", head
            assert_local_error(c.read_response(), 502)
            line = wait_for_log(sc, "inbound ", "/interim-then-garbage")
            assert "invalid character in header name" in line, line


# --- responses that overrun their framing: never forwarded, connection never reused ---------------

def _ok_for(path):
    body = path.encode()
    return b"HTTP/1.1 200 OK\r\ncontent-length: %d\r\n\r\n%s" % (len(body), body)


SMUGGLED = b"HTTP/1.1 200 OK\r\ncontent-length: 8\r\n\r\nSMUGGLED"

OVERRUNS = [
    ("bytes_after_content_length_body", b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok" + SMUGGLED, (200, b"ok")),
    ("body_on_204", b"HTTP/1.1 204 No Content\r\n\r\n" + SMUGGLED, (204, b"")),
    ("body_on_304", b"HTTP/1.1 304 Not Modified\r\n\r\n" + SMUGGLED, (304, b"")),
    ("bytes_after_last_chunk", b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n2\r\nok\r\n0\r\n\r\n" + SMUGGLED,
     (200, b"ok")),
]


@pytest.mark.parametrize("response,expected", [(r, e) for _, r, e in OVERRUNS], ids=[n for n, _, _ in OVERRUNS])
def test_bytes_past_end_of_response_are_dropped_and_connection_not_reused(response, expected):
    def respond(path, conn):
        conn.sendall(response if path == "/overrun" else _ok_for(path))
    with ScriptedServer(path_script(respond)) as app, SidecarProcess(app=app.address) as sc:
        with RawClient(sc.inbound) as c:
            c.send(b"GET /overrun HTTP/1.1\r\nHost: app.local\r\n\r\n")
            assert c.read_response()[::2] == expected
            c.send(b"GET /next HTTP/1.1\r\nHost: app.local\r\n\r\n")
            assert c.read_response()[::2] == (200, b"/next")
            assert c.buf == b""
        assert app.paths == [(1, "/overrun"), (2, "/next")]


def test_unsolicited_bytes_on_idle_upstream_connection_discard_it():
    def respond(path, conn):
        conn.sendall(_ok_for(path))
        if path == "/first":
            time.sleep(0.2)
            conn.sendall(SMUGGLED)     # nobody asked: a desynchronised upstream
    with ScriptedServer(path_script(respond)) as app, SidecarProcess(app=app.address) as sc:
        with RawClient(sc.inbound) as c:
            c.send(b"GET /first HTTP/1.1\r\nHost: app.local\r\n\r\n")
            assert c.read_response()[::2] == (200, b"/first")
            time.sleep(0.4)
            c.send(b"GET /second HTTP/1.1\r\nHost: app.local\r\n\r\n")
            assert c.read_response()[::2] == (200, b"/second")
            assert c.buf == b""
        assert app.paths == [(1, "/first"), (2, "/second")]


# --- failures after the response head went out: the client sees a cut -------------------------

def _read_until_cut(client):
    """Everything the client still receives until the connection ends (EOF or reset)."""
    data = client.buf
    client.buf = b""
    client.sock.settimeout(5)
    try:
        while True:
            chunk = client.sock.recv(65536)
            if not chunk:
                return data
            data += chunk
    except ConnectionResetError:
        return data


def test_upstream_closing_mid_body_cuts_client_connection():
    def respond(path, conn):
        conn.sendall(b"HTTP/1.1 200 OK\r\ncontent-length: 100\r\n\r\n" + b"a" * 40)
        time.sleep(0.1)
        return False
    with ScriptedServer(path_script(respond)) as app, SidecarProcess(app=app.address) as sc:
        with RawClient(sc.inbound) as c:
            c.send(b"GET /partial HTTP/1.1\r\nHost: app.local\r\n\r\n")
            status, headers, _ = c.read_head()
            assert status == 200 and headers["content-length"] == "100"
            rest = _read_until_cut(c)
            assert rest == b"a" * 40, rest      # no 502 appended, no padding: a cut
        line = wait_for_log(sc, "inbound ", "/partial")
        assert "upstream closed the connection mid-body" in line, line


def test_upstream_closing_mid_chunked_body_never_sends_the_last_chunk():
    """Re-framed chunked: a truncated body must not be made to look complete."""
    def respond(path, conn):
        conn.sendall(b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n5\r\nhello\r\n")
        time.sleep(0.1)
        return False
    with ScriptedServer(path_script(respond)) as app, SidecarProcess(app=app.address) as sc:
        with RawClient(sc.inbound) as c:
            c.send(b"GET /partial-chunked HTTP/1.1\r\nHost: app.local\r\n\r\n")
            status, headers, _ = c.read_head()
            assert status == 200 and headers["transfer-encoding"] == "chunked"
            rest = _read_until_cut(c)
            assert rest == b"5\r\nhello\r\n", rest
        wait_for_log(sc, "inbound ", "/partial-chunked", "upstream closed the connection mid-body")


def test_malformed_chunk_after_response_started_cuts_client_connection():
    def respond(path, conn):
        conn.sendall(b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n5\r\nhello\r\n")
        time.sleep(0.2)
        conn.sendall(b"zz\r\nbroken\r\n0\r\n\r\n")
        time.sleep(0.5)
        return False
    with ScriptedServer(path_script(respond)) as app, SidecarProcess(app=app.address) as sc:
        with RawClient(sc.inbound) as c:
            c.send(b"GET /bad-chunk-later HTTP/1.1\r\nHost: app.local\r\n\r\n")
            assert c.read_head()[0] == 200
            started = time.monotonic()
            rest = _read_until_cut(c)
            assert rest == b"5\r\nhello\r\n", rest
            assert time.monotonic() - started < 0.5, "cut only when the upstream closed"
        line = wait_for_log(sc, "inbound ", "/bad-chunk-later")
        assert "malformed chunked body from upstream" in line, line


def test_close_delimited_response_ends_cleanly_when_upstream_closes():
    """The one case where an upstream close is the end of the body, not a failure."""
    def respond(path, conn):
        conn.sendall(b"HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\n\r\nuntil close")
        return False
    with ScriptedServer(path_script(respond)) as app, SidecarProcess(app=app.address) as sc:
        with RawClient(sc.inbound) as c:
            c.send(b"GET /close-delimited HTTP/1.1\r\nHost: app.local\r\n\r\n")
            status, headers, body = c.read_response()
            assert (status, body) == (200, b"until close")
            assert headers.get("transfer-encoding") == "chunked"


# --- unreachable app: 503 ------------------------------------------------------------------------

def test_unreachable_app_is_503_with_log_line_and_connection_stays_usable():
    """The app's port is bound but not listening (connections refused); once it listens,
    the same client connection gets through."""
    port = free_port()
    app_sock = socket.socket()
    app_sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    app_sock.bind(("127.0.0.1", port))
    stop = threading.Event()

    def serve():
        app_sock.settimeout(0.2)
        while not stop.is_set():
            try:
                conn, _ = app_sock.accept()
            except OSError:
                continue
            with conn:
                data = b""
                while b"\r\n\r\n" not in data:
                    chunk = conn.recv(65536)
                    if not chunk:
                        break
                    data += chunk
                conn.sendall(b"HTTP/1.1 200 OK\r\ncontent-length: 3\r\nconnection: close\r\n\r\nup\n")

    server = threading.Thread(target=serve, daemon=True)
    try:
        with SidecarProcess(app=("127.0.0.1", port)) as sc:
            with RawClient(sc.inbound) as c:
                for _ in range(2):
                    c.send(b"GET /refused HTTP/1.1\r\nHost: app.local\r\n\r\n")
                    response = c.read_response()
                    assert_local_error(response, 503)
                    assert response[2] == b"upstream connect error\n"
                line = wait_for_log(sc, "inbound ", "/refused", "upstream connect error")
                assert "127.0.0.1:%d" % port in line and "refused" in line.lower(), line
                app_sock.listen(16)
                server.start()
                c.send(b"GET /now-up HTTP/1.1\r\nHost: app.local\r\n\r\n")
                assert c.read_response()[::2] == (200, b"up\n")
    finally:
        stop.set()
        if server.is_alive():
            server.join(2)
        app_sock.close()


def test_unreachable_app_for_request_with_body_is_503():
    port = free_port()
    with SidecarProcess(app=("127.0.0.1", port)) as sc:
        with RawClient(sc.inbound) as c:
            c.send(b"POST /refused-body HTTP/1.1\r\nHost: app.local\r\ncontent-length: 5\r\n\r\nhello")
            response = c.read_response()
            assert response[0] == 503 and response[2] == b"upstream connect error\n"
        wait_for_log(sc, "inbound ", "/refused-body", "upstream connect error")


# --- an upstream that never answers: 504 (outbound service request timeout) ------------------------

def _outbound_service(port, request_timeout="1s"):
    return {"services": [{"name": "slow", "match": ["slow.local"],
                          "endpoints": ["127.0.0.1:%d" % port],
                          "timeouts": {"request": request_timeout}}]}


def test_upstream_never_answering_is_504_after_request_timeout():
    def silent(conn, server):
        server.read_head(conn)
        conn.recv(65536)        # blocks until the sidecar gives up and closes
    with ScriptedServer(silent) as app, SidecarProcess(extra=_outbound_service(app.address[1])) as sc:
        with RawClient(sc.outbound) as c:
            started = time.monotonic()
            c.send(b"GET /never HTTP/1.1\r\nHost: slow.local\r\n\r\n")
            response = c.read_response()
            elapsed = time.monotonic() - started
            assert_local_error(response, 504, close=True)
            assert c.is_closed()
        assert 0.7 <= elapsed <= 1.75, elapsed
        assert app.connections == 1 and app.received[0].startswith(b"GET /never HTTP/1.1\r\n")
        wait_for_log(sc, "outbound ", "/never", "upstream request timeout")


def test_upstream_stalling_mid_body_past_request_timeout_cuts_client_connection():
    def stall(conn, server):
        server.read_head(conn)
        conn.sendall(b"HTTP/1.1 200 OK\r\ncontent-length: 100\r\n\r\n" + b"b" * 10)
        conn.recv(65536)
    with ScriptedServer(stall) as app, SidecarProcess(extra=_outbound_service(app.address[1])) as sc:
        with RawClient(sc.outbound) as c:
            started = time.monotonic()
            c.send(b"GET /stall HTTP/1.1\r\nHost: slow.local\r\n\r\n")
            assert c.read_head()[0] == 200
            rest = _read_until_cut(c)
            elapsed = time.monotonic() - started
        assert rest == b"b" * 10, rest
        assert 0.7 <= elapsed <= 1.75, elapsed
        wait_for_log(sc, "outbound ", "/stall", "upstream request timeout")


def test_request_timeout_is_per_service():
    def silent(conn, server):
        server.read_head(conn)
        conn.recv(65536)
    with ScriptedServer(silent) as app:
        endpoint = "127.0.0.1:%d" % app.address[1]
        services = {"services": [
            {"name": "slow", "match": ["slow.local"], "endpoints": [endpoint], "timeouts": {"request": "1s"}},
            {"name": "patient", "match": ["patient.local"], "endpoints": [endpoint], "timeouts": {"request": "4s"}},
        ]}
        with SidecarProcess(extra=services) as sc, RawClient(sc.outbound) as c:
            started = time.monotonic()
            c.send(b"GET /never HTTP/1.1\r\nHost: slow.local\r\n\r\n")
            assert c.read_response()[0] == 504
            elapsed = time.monotonic() - started
        assert elapsed <= 1.75, elapsed
