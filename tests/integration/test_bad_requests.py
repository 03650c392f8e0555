"""Malformed requests through the real sidecar, on real sockets (SPEC.md, "Bad input").

Every bad request gets its 4xx (or 501/505) with a short plain-text body and
`connection: close`, the sidecar closes the connection, and not one byte of the request
reaches the app. The app here is a raw recording server, so "nothing reached it" is
checked on the bytes it received, not on what an HTTP library managed to parse.
"""
import os
import shutil
import socket
import subprocess
import tempfile
import threading
import time
import uuid

import pytest

from tests.support.http_client import RawClient
from tests.support.servers import ScriptedServer
from tests.support.sidecar_process import SidecarProcess

MAX_REQUEST_LINE = 256
MAX_HEADER_BYTES = 2048
MAX_HEADERS = 16
HEADER_READ_TIMEOUT = 1.0
# The sidecar keeps deadlines on a coarse clock advanced by a sweep every 0.25 s: a deadline
# can be set from a clock up to 0.25 s old (fires that much early) and is seen up to 0.25 s
# late. These bounds allow for that and for scheduling noise.
EARLY_SLACK = 0.3
SWEEP_SLACK = 0.75


# --- the recording app ---------------------------------------------------------------------

def recording_app(conn, server):
    """Records every byte received (`server.chunks`, in arrival order, all connections) and
    answers each complete GET head with a small 200 (tests forward only bodiless GETs to
    be answered; other requests are left unanswered)."""
    buf = b""
    while True:
        data = conn.recv(65536)
        if not data:
            return
        with server.lock:
            server.chunks.append(data)
        buf += data
        while b"\r\n\r\n" in buf:
            head, _, buf = buf.partition(b"\r\n\r\n")
            if head.startswith(b"GET ") or head.startswith(b"get "):
                conn.sendall(b"HTTP/1.1 200 OK\r\ncontent-length: 3\r\n\r\nok\n")


class Recorder:
    def __init__(self):
        self.server = ScriptedServer(recording_app)
        self.server.chunks = []
        self.server.lock = threading.Lock()
        self.address = self.server.address

    def mark(self):
        with self.server.lock:
            return len(self.server.chunks)

    def since(self, mark):
        with self.server.lock:
            return b"".join(self.server.chunks[mark:])

    def __enter__(self):
        self.server.__enter__()
        return self

    def __exit__(self, *exc):
        self.server.__exit__(*exc)


@pytest.fixture(scope="module")
def recorder():
    with Recorder() as rec:
        yield rec


@pytest.fixture(scope="module")
def sidecar(recorder):
    limits = {"max_request_line": MAX_REQUEST_LINE, "max_header_bytes": MAX_HEADER_BYTES,
              "max_headers": MAX_HEADERS, "header_read_timeout": "1s"}
    with SidecarProcess(app=recorder.address, extra={"limits": limits}) as sc:
        yield sc


# --- helpers -------------------------------------------------------------------------------

def assert_rejected(client, status):
    """The next response is the sidecar's own `status` answer, and the connection closes."""
    got, headers, body = client.read_response()
    assert got == status, (got, headers, body)
    assert headers.get("content-type") == "text/plain", headers
    assert headers.get("connection") == "close", headers
    assert int(headers["content-length"]) == len(body)
    assert 0 < len(body) <= 100 and body.endswith(b"\n"), body
    assert all(32 <= c < 127 for c in body[:-1]), body
    assert client.is_closed(), "the sidecar left the connection open after a %d" % status


def assert_nothing_reached_app(sc, recorder, mark, expected_prefix=b""):
    """Since `mark`, the app received `expected_prefix`-started requests only as the caller
    expects, then exactly one sentinel request sent now on a fresh connection: nothing of
    the bad request reached it (before the sentinel nor behind it)."""
    sentinel = "/sentinel-%s" % uuid.uuid4().hex
    with RawClient(sc.inbound) as c:
        c.send(b"GET %s HTTP/1.1\r\nHost: sentinel\r\n\r\n" % sentinel.encode())
        status, _, body = c.read_response()
        assert (status, body) == (200, b"ok\n")
    got = recorder.since(mark)
    assert got.startswith(expected_prefix), got
    rest = got[len(expected_prefix):]
    assert rest.startswith(b"GET %s HTTP/1.1\r\n" % sentinel.encode()), got
    assert rest.count(b"\r\n\r\n") == 1 and rest.endswith(b"\r\n\r\n"), got


# --- malformed requests: one per parametrized case ------------------------------------------

H = b"Host: app.local\r\n"

BAD_REQUESTS = [
    # ambiguous framing
    ("cl_and_te", b"POST / HTTP/1.1\r\n" + H + b"Content-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n", 400),
    ("te_and_cl", b"POST / HTTP/1.1\r\n" + H + b"Transfer-Encoding: chunked\r\nContent-Length: 5\r\n\r\n0\r\n\r\n", 400),
    ("two_differing_cl_fields", b"POST / HTTP/1.1\r\n" + H + b"Content-Length: 5\r\nContent-Length: 6\r\n\r\nhello!", 400),
    ("differing_cl_list", b"POST / HTTP/1.1\r\n" + H + b"Content-Length: 5, 6\r\n\r\nhello!", 400),
    ("cl_with_letter", b"POST / HTTP/1.1\r\n" + H + b"Content-Length: 5a\r\n\r\nhello", 400),
    ("cl_negative", b"POST / HTTP/1.1\r\n" + H + b"Content-Length: -5\r\n\r\nhello", 400),
    ("cl_plus_sign", b"POST / HTTP/1.1\r\n" + H + b"Content-Length: +5\r\n\r\nhello", 400),
    ("cl_hex", b"POST / HTTP/1.1\r\n" + H + b"Content-Length: 0x5\r\n\r\nhello", 400),
    ("cl_empty", b"POST / HTTP/1.1\r\n" + H + b"Content-Length: \r\n\r\n", 400),
    ("cl_two_numbers", b"POST / HTTP/1.1\r\n" + H + b"Content-Length: 5 5\r\n\r\nhello", 400),
    ("cl_overflow", b"POST / HTTP/1.1\r\n" + H + b"Content-Length: 99999999999999999999999\r\n\r\nhello", 400),
    ("te_final_not_chunked", b"POST / HTTP/1.1\r\n" + H + b"Transfer-Encoding: chunked, gzip\r\n\r\n0\r\n\r\n", 400),
    ("te_gzip_only", b"POST / HTTP/1.1\r\n" + H + b"Transfer-Encoding: gzip\r\n\r\nhello", 400),
    ("te_chunked_twice", b"POST / HTTP/1.1\r\n" + H + b"Transfer-Encoding: chunked, chunked\r\n\r\n0\r\n\r\n", 400),
    ("te_in_http10", b"POST / HTTP/1.0\r\n" + H + b"Transfer-Encoding: chunked\r\n\r\n0\r\n\r\n", 400),
    ("te_gzip_then_chunked", b"POST / HTTP/1.1\r\n" + H + b"Transfer-Encoding: gzip, chunked\r\n\r\n0\r\n\r\n", 501),
    ("te_junk_after_chunked", b"POST / HTTP/1.1\r\n" + H + b"Transfer-Encoding: chunked x\r\n\r\n0\r\n\r\n", 400),
    ("te_chunked_slash", b"POST / HTTP/1.1\r\n" + H + b"Transfer-Encoding: chunked/1\r\n\r\n0\r\n\r\n", 400),
    ("te_chunked_parameter", b"POST / HTTP/1.1\r\n" + H + b"Transfer-Encoding: chunked;q=1\r\n\r\n0\r\n\r\n", 400),
    # chunked body framing
    ("chunk_size_not_hex", b"POST / HTTP/1.1\r\n" + H + b"Transfer-Encoding: chunked\r\n\r\nzz\r\nhello\r\n0\r\n\r\n", 400),
    ("chunk_size_0x_prefix", b"POST / HTTP/1.1\r\n" + H + b"Transfer-Encoding: chunked\r\n\r\n0x5\r\nhello\r\n0\r\n\r\n", 400),
    ("chunk_size_empty", b"POST / HTTP/1.1\r\n" + H + b"Transfer-Encoding: chunked\r\n\r\n\r\nhello\r\n0\r\n\r\n", 400),
    ("chunk_size_overflow", b"POST / HTTP/1.1\r\n" + H + b"Transfer-Encoding: chunked\r\n\r\nffffffffffffffffffff\r\nhello\r\n0\r\n\r\n", 400),
    ("chunk_size_line_bare_lf", b"POST / HTTP/1.1\r\n" + H + b"Transfer-Encoding: chunked\r\n\r\n5\nhello\r\n0\r\n\r\n", 400),
    ("chunk_data_bad_terminator", b"POST / HTTP/1.1\r\n" + H + b"Transfer-Encoding: chunked\r\n\r\n5\r\nhelloXX\r\n0\r\n\r\n", 400),
    ("chunk_data_too_long", b"POST / HTTP/1.1\r\n" + H + b"Transfer-Encoding: chunked\r\n\r\n3\r\nhello\r\n0\r\n\r\n", 400),
    ("last_chunk_bad_ending", b"POST / HTTP/1.1\r\n" + H + b"Transfer-Encoding: chunked\r\n\r\n0\r\n\rX", 400),
    ("trailer_obs_fold", b"POST / HTTP/1.1\r\n" + H + b"Transfer-Encoding: chunked\r\n\r\n0\r\n folded\r\n\r\n", 400),
    ("trailer_nul", b"POST / HTTP/1.1\r\n" + H + b"Transfer-Encoding: chunked\r\n\r\n0\r\nX-T: a\x00b\r\n\r\n", 400),
    ("chunk_size_then_junk", b"POST / HTTP/1.1\r\n" + H + b"Transfer-Encoding: chunked\r\n\r\n5 6\r\nhello\r\n0\r\n\r\n", 400),
    ("trailer_without_colon", b"POST / HTTP/1.1\r\n" + H + b"Transfer-Encoding: chunked\r\n\r\n0\r\nNoColon\r\n\r\n", 400),
    ("trailer_space_before_colon", b"POST / HTTP/1.1\r\n" + H + b"Transfer-Encoding: chunked\r\n\r\n0\r\nX-T : v\r\n\r\n", 400),
    # line structure
    ("obs_fold", b"GET / HTTP/1.1\r\n" + H + b"X-Folded: a\r\n  continued\r\n\r\n", 400),
    ("obs_fold_tab", b"GET / HTTP/1.1\r\n" + H + b"X-Folded: a\r\n\tcontinued\r\n\r\n", 400),
    ("first_field_starts_with_space", b"GET / HTTP/1.1\r\n Host: app.local\r\n\r\n", 400),
    ("bare_cr_in_value", b"GET / HTTP/1.1\r\n" + H + b"X-A: a\rb\r\n\r\n", 400),
    ("bare_cr_in_request_line", b"GET /a\rb HTTP/1.1\r\n" + H + b"\r\n", 400),
    ("bare_cr_line_end", b"GET / HTTP/1.1\r\n" + H + b"X-A: a\r\r\n\r\n", 400),
    ("bare_lf_everywhere", b"GET / HTTP/1.1\n" + b"Host: app.local\n\n", 400),
    ("bare_lf_after_field", b"GET / HTTP/1.1\r\nHost: app.local\nX-A: b\r\n\r\n", 400),
    ("bare_lf_end_of_head", b"GET / HTTP/1.1\r\n" + H + b"\n", 400),
    ("space_before_colon", b"GET / HTTP/1.1\r\nHost : app.local\r\n\r\n", 400),
    ("tab_before_colon", b"GET / HTTP/1.1\r\n" + H + b"X-A\t: b\r\n\r\n", 400),
    ("empty_field_name", b"GET / HTTP/1.1\r\n" + H + b": value\r\n\r\n", 400),
    ("non_token_field_name", b"GET / HTTP/1.1\r\n" + H + b"X[A]: value\r\n\r\n", 400),
    ("field_without_colon", b"GET / HTTP/1.1\r\n" + H + b"X-No-Colon\r\n\r\n", 400),
    ("nul_in_value", b"GET / HTTP/1.1\r\n" + H + b"X-A: a\x00b\r\n\r\n", 400),
    ("control_byte_in_value", b"GET / HTTP/1.1\r\n" + H + b"X-A: a\x01b\r\n\r\n", 400),
    ("del_in_value", b"GET / HTTP/1.1\r\n" + H + b"X-A: a\x7fb\r\n\r\n", 400),
    ("escape_in_host", b"GET / HTTP/1.1\r\nHost: app\x1b.local\r\n\r\n", 400),
    # request lines
    ("two_spaces_after_method", b"GET  / HTTP/1.1\r\n" + H + b"\r\n", 400),
    ("two_spaces_before_version", b"GET /  HTTP/1.1\r\n" + H + b"\r\n", 400),
    ("missing_version", b"GET /\r\n" + H + b"\r\n", 400),
    ("missing_target", b"GET HTTP/1.1\r\n" + H + b"\r\n", 400),
    ("version_with_suffix", b"GET / HTTP/1.1x\r\n" + H + b"\r\n", 400),
    ("trailing_space", b"GET / HTTP/1.1 \r\n" + H + b"\r\n", 400),
    ("lowercase_protocol", b"GET / http/1.1\r\n" + H + b"\r\n", 400),
    ("leading_space", b" GET / HTTP/1.1\r\n" + H + b"\r\n", 400),
    ("tabs_as_separators", b"GET\t/\tHTTP/1.1\r\n" + H + b"\r\n", 400),
    ("non_token_method", b"G(E)T / HTTP/1.1\r\n" + H + b"\r\n", 400),
    ("del_in_target", b"GET /a\x7fb HTTP/1.1\r\n" + H + b"\r\n", 400),
    ("non_ascii_in_target", b"GET /caf\xc3\xa9 HTTP/1.1\r\n" + H + b"\r\n", 400),
    ("two_digit_major_version", b"GET / HTTP/11.1\r\n" + H + b"\r\n", 400),
    ("five_empty_lines_first", b"\r\n" * 5 + b"GET / HTTP/1.1\r\n" + H + b"\r\n", 400),
    ("http_2_0", b"GET / HTTP/2.0\r\n" + H + b"\r\n", 505),
    ("http_1_2", b"GET / HTTP/1.2\r\n" + H + b"\r\n", 505),
    ("http_0_9_style_version", b"GET / HTTP/0.9\r\n" + H + b"\r\n", 505),
    # Host
    ("missing_host", b"GET / HTTP/1.1\r\nAccept: */*\r\n\r\n", 400),
    ("two_hosts", b"GET / HTTP/1.1\r\n" + H + b"Host: other.local\r\n\r\n", 400),
    ("two_identical_hosts", b"GET / HTTP/1.1\r\n" + H + H + b"\r\n", 400),
    ("two_hosts_http10", b"GET / HTTP/1.0\r\n" + H + b"Host: other.local\r\n\r\n", 400),
]


@pytest.mark.parametrize("request_bytes,status", [(r, s) for _, r, s in BAD_REQUESTS],
                         ids=[name for name, _, _ in BAD_REQUESTS])
def test_malformed_request_is_answered_and_closed_and_never_forwarded(sidecar, recorder,
                                                                        request_bytes, status):
    mark = recorder.mark()
    with RawClient(sidecar.inbound) as c:
        c.send(request_bytes)
        assert_rejected(c, status)
    assert_nothing_reached_app(sidecar, recorder, mark)


def test_rejection_is_logged_with_status_and_reason(sidecar, recorder):
    with RawClient(sidecar.inbound) as c:
        c.send(b"GET / HTTP/1.1\r\nHost : nope\r\n\r\n")
        assert_rejected(c, 400)
    deadline = time.monotonic() + 3
    while "rejected request from 127.0.0.1: 400 " not in sidecar.log():
        assert time.monotonic() < deadline, sidecar.log()
        time.sleep(0.05)


def test_lowercase_method_is_a_valid_token_and_is_forwarded(sidecar, recorder):
    """The parser is strict, not picky: `get` is a legal (if unusual) method token."""
    mark = recorder.mark()
    with RawClient(sidecar.inbound) as c:
        c.send(b"get /lower HTTP/1.1\r\nHost: app.local\r\n\r\n")
        assert c.read_response()[0] == 200
    assert recorder.since(mark).startswith(b"get /lower HTTP/1.1\r\n")


def test_four_empty_lines_before_request_line_are_tolerated(sidecar, recorder):
    mark = recorder.mark()
    with RawClient(sidecar.inbound) as c:
        c.send(b"\r\n" * 4 + b"GET /after-empty-lines HTTP/1.1\r\nHost: app.local\r\n\r\n")
        assert c.read_response()[0] == 200
    assert recorder.since(mark).startswith(b"GET /after-empty-lines HTTP/1.1\r\n")


def send_in_reads(c, pieces):
    """Sends each piece on its own, with a pause between, so the sidecar reads them apart."""
    for piece in pieces:
        c.send(piece)
        time.sleep(0.05)


def test_empty_lines_before_request_line_in_separate_reads_are_tolerated(sidecar, recorder):
    mark = recorder.mark()
    with RawClient(sidecar.inbound) as c:
        send_in_reads(c, [b"\r\n", b"\r\n\r", b"\nGET /after-reads HTTP/1.1\r\n",
                          b"Host: app.local\r\n", b"\r\n"])
        assert c.read_response()[0] == 200
    assert recorder.since(mark).startswith(b"GET /after-reads HTTP/1.1\r\n")


def test_five_empty_lines_in_separate_reads_are_rejected(sidecar, recorder):
    mark = recorder.mark()
    with RawClient(sidecar.inbound) as c:
        send_in_reads(c, [b"\r\n"] * 5)
        c.send(b"GET / HTTP/1.1\r\n" + H + b"\r\n")
        assert_rejected(c, 400)
    assert_nothing_reached_app(sidecar, recorder, mark)


# --- pipelining ------------------------------------------------------------------------------

PIPELINED_BAD = [
    ("cl_and_te", b"POST /bad HTTP/1.1\r\n" + H + b"Content-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n", 400),
    ("obs_fold", b"GET /bad HTTP/1.1\r\n" + H + b"X-A: a\r\n b\r\n\r\n", 400),
    ("bare_lf", b"GET /bad HTTP/1.1\n" + b"Host: app.local\n\n", 400),
    ("bad_chunk", b"POST /bad HTTP/1.1\r\n" + H + b"Transfer-Encoding: chunked\r\n\r\nzz\r\n", 400),
    ("http_2_0", b"GET /bad HTTP/2.0\r\n" + H + b"\r\n", 505),
]


@pytest.mark.parametrize("bad,status", [(b, s) for _, b, s in PIPELINED_BAD],
                         ids=[n for n, _, _ in PIPELINED_BAD])
def test_bad_request_pipelined_behind_good_one_answers_good_then_rejects(sidecar, recorder, bad, status):
    mark = recorder.mark()
    good = b"GET /good HTTP/1.1\r\nHost: app.local\r\n\r\n"
    with RawClient(sidecar.inbound) as c:
        c.send(good + bad)
        assert c.read_response()[::2] == (200, b"ok\n")
        assert_rejected(c, status)
    got = recorder.since(mark)
    assert got.startswith(b"GET /good HTTP/1.1\r\n") and got.count(b"\r\n\r\n") >= 1
    good_forwarded = got[:got.index(b"\r\n\r\n") + 4]
    assert_nothing_reached_app(sidecar, recorder, mark, expected_prefix=good_forwarded)


def test_good_request_pipelined_behind_bad_one_is_never_forwarded(sidecar, recorder):
    mark = recorder.mark()
    with RawClient(sidecar.inbound) as c:
        c.send(b"GET /bad HTTP/1.1\r\nHost : app.local\r\n\r\n"
               b"GET /after-bad HTTP/1.1\r\nHost: app.local\r\n\r\n")
        assert_rejected(c, 400)
    assert_nothing_reached_app(sidecar, recorder, mark)


def test_bad_chunk_after_body_streaming_started_aborts_upstream_request(sidecar, recorder):
    """A body is streamed, so a framing error found after the head left cannot unsend it;
    the upstream request must then be cut, never completed, and the client told 400."""
    mark = recorder.mark()
    with RawClient(sidecar.inbound) as c:
        c.send(b"POST /streaming HTTP/1.1\r\nHost: app.local\r\nTransfer-Encoding: chunked\r\n\r\n"
               b"5\r\nhello\r\n")
        deadline = time.monotonic() + 3
        while b"hello" not in recorder.since(mark):
            assert time.monotonic() < deadline, "the head and first chunk never reached the app"
            time.sleep(0.02)
        c.send(b"5\r\nworldXX0\r\n\r\n")
        assert_rejected(c, 400)
    time.sleep(0.2)
    got = recorder.since(mark)
    assert got.startswith(b"POST /streaming HTTP/1.1\r\n")
    assert b"world" not in got and not got.endswith(b"0\r\n\r\n"), got


def test_rejected_request_with_large_body_still_gets_its_answer(sidecar, recorder):
    """The client is still sending a 1 MiB body when the head is rejected: the 400 must
    reach it anyway (not be lost to a reset)."""
    mark = recorder.mark()
    body = b"x" * (1 << 20)
    sock = socket.create_connection(sidecar.inbound, timeout=5)
    try:
        def send_all():
            try:
                sock.sendall(b"POST / HTTP/1.1\r\nHost: a\r\nHost: b\r\nContent-Length: %d\r\n\r\n"
                             % len(body) + body)
            except OSError:
                pass    # the sidecar closed on us mid-body, as it may
        sender = threading.Thread(target=send_all, daemon=True)
        sender.start()
        data = b""
        try:
            while b"\r\n\r\n" not in data or not data.endswith(b"\n"):
                chunk = sock.recv(65536)
                if not chunk:
                    break
                data += chunk
        except ConnectionResetError:
            pass
        sender.join(5)
        assert data.startswith(b"HTTP/1.1 400 "), data
        assert b"\r\nconnection: close\r\n" in data
    finally:
        sock.close()
    assert_nothing_reached_app(sidecar, recorder, mark)


# --- limits ------------------------------------------------------------------------------------

def test_request_line_at_limit_is_accepted(sidecar, recorder):
    prefix, suffix = b"GET /", b" HTTP/1.1"
    target = b"a" * (MAX_REQUEST_LINE - len(prefix) - len(suffix))
    line = prefix + target + suffix
    assert len(line) == MAX_REQUEST_LINE
    mark = recorder.mark()
    with RawClient(sidecar.inbound) as c:
        c.send(line + b"\r\nHost: app.local\r\n\r\n")
        assert c.read_response()[0] == 200
    assert recorder.since(mark).startswith(line + b"\r\n")


def test_request_line_at_limit_is_accepted_when_its_cr_and_lf_arrive_apart(sidecar, recorder):
    line = b"GET /" + b"b" * (MAX_REQUEST_LINE - 14) + b" HTTP/1.1"
    assert len(line) == MAX_REQUEST_LINE
    mark = recorder.mark()
    with RawClient(sidecar.inbound) as c:
        send_in_reads(c, [line + b"\r", b"\nHost: app.local\r\n\r\n"])
        assert c.read_response()[0] == 200
    assert recorder.since(mark).startswith(line + b"\r\n")


def test_request_line_over_limit_gets_414(sidecar, recorder):
    mark = recorder.mark()
    with RawClient(sidecar.inbound) as c:
        c.send(b"GET /" + b"a" * MAX_REQUEST_LINE + b" HTTP/1.1\r\nHost: app.local\r\n\r\n")
        assert_rejected(c, 414)
    assert_nothing_reached_app(sidecar, recorder, mark)


def test_request_line_over_limit_gets_414_before_its_line_ends(sidecar, recorder):
    """No need to wait for a CRLF that may never come: 414 as soon as the limit is passed."""
    mark = recorder.mark()
    with RawClient(sidecar.inbound) as c:
        c.send(b"GET /" + b"a" * (MAX_REQUEST_LINE + 10))
        started = time.monotonic()
        assert_rejected(c, 414)
        assert time.monotonic() - started < HEADER_READ_TIMEOUT / 2
    assert_nothing_reached_app(sidecar, recorder, mark)


def test_header_bytes_over_limit_get_431(sidecar, recorder):
    mark = recorder.mark()
    fields = b"".join(b"X-Big-%d: %s\r\n" % (i, b"v" * 500) for i in range(5))   # 5 < max_headers
    request = b"GET / HTTP/1.1\r\n" + H + fields + b"\r\n"
    assert len(request) > MAX_HEADER_BYTES
    with RawClient(sidecar.inbound) as c:
        c.send(request)
        assert_rejected(c, 431)
    assert_nothing_reached_app(sidecar, recorder, mark)


def _head_of(size, path=b"/"):
    base = b"GET " + path + b" HTTP/1.1\r\n" + H + b"X-Pad: \r\n\r\n"
    return base[:-4] + b"p" * (size - len(base)) + b"\r\n\r\n"


def test_head_of_exactly_max_header_bytes_is_accepted(sidecar, recorder):
    request = _head_of(MAX_HEADER_BYTES, b"/at-limit")
    assert len(request) == MAX_HEADER_BYTES
    mark = recorder.mark()
    with RawClient(sidecar.inbound) as c:
        c.send(request)
        assert c.read_response()[0] == 200
    assert recorder.since(mark).startswith(b"GET /at-limit HTTP/1.1\r\n")


@pytest.mark.parametrize("over", [1, 2])
def test_head_over_max_header_bytes_by_its_final_empty_line_gets_431(sidecar, recorder, over):
    mark = recorder.mark()
    with RawClient(sidecar.inbound) as c:
        c.send(_head_of(MAX_HEADER_BYTES + over))
        assert_rejected(c, 431)
    assert_nothing_reached_app(sidecar, recorder, mark)


def test_header_bytes_over_limit_get_431_before_head_ends(sidecar, recorder):
    mark = recorder.mark()
    with RawClient(sidecar.inbound) as c:
        c.send(b"GET / HTTP/1.1\r\n" + H + b"X-Endless: " + b"v" * MAX_HEADER_BYTES)
        started = time.monotonic()
        assert_rejected(c, 431)
        assert time.monotonic() - started < HEADER_READ_TIMEOUT / 2
    assert_nothing_reached_app(sidecar, recorder, mark)


def test_exactly_max_headers_fields_are_accepted(sidecar, recorder):
    fields = H + b"".join(b"X-F-%d: v\r\n" % i for i in range(MAX_HEADERS - 1))
    mark = recorder.mark()
    with RawClient(sidecar.inbound) as c:
        c.send(b"GET /max-fields HTTP/1.1\r\n" + fields + b"\r\n")
        assert c.read_response()[0] == 200
    assert b"X-F-%d: v\r\n" % (MAX_HEADERS - 2) in recorder.since(mark)


def test_more_than_max_headers_fields_get_431(sidecar, recorder):
    fields = H + b"".join(b"X-F-%d: v\r\n" % i for i in range(MAX_HEADERS))
    mark = recorder.mark()
    with RawClient(sidecar.inbound) as c:
        c.send(b"GET / HTTP/1.1\r\n" + fields + b"\r\n")
        assert_rejected(c, 431)
    assert_nothing_reached_app(sidecar, recorder, mark)


# --- slow clients ------------------------------------------------------------------------------

def test_client_stalling_mid_head_gets_408_after_header_read_timeout(sidecar, recorder):
    mark = recorder.mark()
    with RawClient(sidecar.inbound) as c:
        started = time.monotonic()
        c.send(b"GET /slow HTTP/1.1\r\nHost: app.local\r\nX-Half: ")
        assert_rejected(c, 408)
        elapsed = time.monotonic() - started
    assert HEADER_READ_TIMEOUT - EARLY_SLACK <= elapsed <= HEADER_READ_TIMEOUT + SWEEP_SLACK, elapsed
    assert_nothing_reached_app(sidecar, recorder, mark)


def test_trickling_header_bytes_do_not_extend_the_header_deadline(sidecar, recorder):
    """Slowloris: a byte now and then must not keep the head's deadline moving."""
    mark = recorder.mark()
    with RawClient(sidecar.inbound) as c:
        started = time.monotonic()
        c.send(b"GET /trickle HTTP/1.1\r\n")
        c.sock.settimeout(0.2)
        i = 0
        while time.monotonic() - started < 3 * HEADER_READ_TIMEOUT:
            try:
                c.send(b"X-T-%d: v\r\n" % i)
            except OSError:
                pass        # closed under us: the answer is already on its way
            i += 1
            try:
                chunk = c.sock.recv(65536)
            except socket.timeout:
                continue
            c.buf += chunk
            break
        assert c.buf, "no answer while trickling for %.1fs" % (time.monotonic() - started)
        c.sock.settimeout(5)
        assert_rejected(c, 408)
        elapsed = time.monotonic() - started
    assert elapsed <= HEADER_READ_TIMEOUT + SWEEP_SLACK, elapsed
    assert_nothing_reached_app(sidecar, recorder, mark)


def test_silent_connection_is_closed_without_a_response_after_header_read_timeout(sidecar):
    with RawClient(sidecar.inbound) as c:
        started = time.monotonic()
        assert c.is_closed(timeout=HEADER_READ_TIMEOUT + SWEEP_SLACK + 0.5)
        elapsed = time.monotonic() - started
        assert c.buf == b""
    assert HEADER_READ_TIMEOUT - EARLY_SLACK <= elapsed <= HEADER_READ_TIMEOUT + SWEEP_SLACK, elapsed


SLOWHTTPTEST = "/usr/bin/slowhttptest"


def _established_peers(port):
    """Peer ports of the sidecar's established connections on its listener `port`."""
    out = subprocess.run(["ss", "-Htn", "state", "established", "( sport = :%d )" % port],
                         capture_output=True, text=True, check=True).stdout
    return {int(line.split()[-1].rpartition(":")[2]) for line in out.splitlines() if line.strip()}


def test_slowloris_connections_are_cut_at_header_timeout_while_normal_clients_are_served(recorder):
    # slowhttptest comes from Debian's package, installed by `make` set-up (scripts/setup-host.sh).
    if not os.path.exists(SLOWHTTPTEST) or shutil.which("ss") is None:
        pytest.skip("needs %s (Debian package slowhttptest, installed by `make` set-up) and ss"
                    % SLOWHTTPTEST)
    timeout = 2.0
    out_dir = tempfile.mkdtemp(prefix="slowloris-")
    with SidecarProcess(app=recorder.address, extra={"limits": {"header_read_timeout": "2s"}}) as sc:
        port = sc.inbound[1]
        probe_ports, probe_failures, probe_latencies = set(), [], []
        stop = threading.Event()

        def probe():
            while not stop.is_set():
                t = time.monotonic()
                try:
                    with RawClient(sc.inbound, timeout=2) as c:
                        probe_ports.add(c.sock.getsockname()[1])
                        c.send(b"GET /probe HTTP/1.1\r\nHost: app.local\r\nConnection: close\r\n\r\n")
                        status = c.read_response()[0]
                        if status != 200:
                            probe_failures.append(status)
                except OSError as e:
                    probe_failures.append(repr(e))
                probe_latencies.append(time.monotonic() - t)
                stop.wait(0.2)

        attack = subprocess.Popen(
            [SLOWHTTPTEST, "-H", "-c", "50", "-i", "1", "-r", "50", "-l", "6", "-p", "2",
             "-g", "-o", os.path.join(out_dir, "slowloris"), "-u", "http://127.0.0.1:%d/" % port],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        prober = threading.Thread(target=probe, daemon=True)
        prober.start()
        first_seen, last_seen = {}, {}
        try:
            started = time.monotonic()
            while attack.poll() is None and time.monotonic() - started < 12:
                now = time.monotonic()
                for peer in _established_peers(port):
                    first_seen.setdefault(peer, now)
                    last_seen[peer] = now
                time.sleep(0.1)
        finally:
            stop.set()
            prober.join(5)
            if attack.poll() is None:
                attack.kill()
            attack.wait()
            shutil.rmtree(out_dir, ignore_errors=True)
        slow = {p: last_seen[p] - first_seen[p] for p in first_seen if p not in probe_ports}
        assert len(slow) >= 40, "slowhttptest held only %d connections" % len(slow)
        assert max(slow.values()) <= timeout + SWEEP_SLACK, sorted(slow.values())[-5:]
        assert not _established_peers(port) - probe_ports
        assert probe_failures == [], probe_failures
        assert len(probe_latencies) >= 5 and max(probe_latencies) < 1.0, probe_latencies


# --- floods ---------------------------------------------------------------------------------------

def test_flood_of_bad_requests_leaves_worker_alive_and_serving(recorder):
    with SidecarProcess(app=recorder.address) as sc:
        pids_before = sc.worker_pids()
        assert len(pids_before) == 1
        statuses = []
        lock = threading.Lock()
        bad = b"GET / HTTP/1.1\r\nHost: a\r\nContent-Length: 1\r\nTransfer-Encoding: chunked\r\n\r\n"

        def flood(n):
            mine = []
            for _ in range(n):
                with RawClient(sc.inbound, timeout=5) as c:
                    c.send(bad)
                    mine.append(c.read_response()[0])
            with lock:
                statuses.extend(mine)

        threads = [threading.Thread(target=flood, args=(250,), daemon=True) for _ in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
        assert len(statuses) == 2000 and set(statuses) == {400}
        for i in range(5):
            with RawClient(sc.inbound) as c:
                c.send(b"GET /after-flood-%d HTTP/1.1\r\nHost: app.local\r\n\r\n" % i)
                assert c.read_response()[::2] == (200, b"ok\n")
        assert sc.worker_pids() == pids_before
        assert sc.proc.poll() is None
        assert "exited" not in sc.log()
