"""The strict HTTP/1.1 head parser (fastpath/parser.pyx), one test per rule of its docstring.

Most tests run twice through the `feed` fixture: once with the message in one piece and
once byte by byte, since a head may arrive in any number of reads and the verdict must
not depend on where the reads split it.
"""
from dataclasses import dataclass

import pytest

from fastpath import parser as P

HOST = b"Host: example.com"


def request(*fields, start=b"GET / HTTP/1.1"):
    """A request head: the start line, the field lines, the empty line, all CRLF."""
    return b"".join(line + b"\r\n" for line in (start,) + fields) + b"\r\n"


def response(*fields, start=b"HTTP/1.1 200 OK"):
    return request(*fields, start=start)


@dataclass
class Outcome:
    offset: int               # one past the head in the whole input, 0 incomplete, -1 error
    head: object              # the MessageHead
    feeds: int                # how many feed calls were made

    @property
    def status(self):
        return self.head.error_status

    @property
    def reason(self):
        return self.head.error_reason_text


def feed_pieces(pieces, *, response=False, limits=None, request_method=0, capacity=100):
    parser = P.new_response_parser(limits) if response else P.new_request_parser(limits)
    head = P.MessageHead(capacity)
    consumed = 0
    for n, piece in enumerate(pieces, 1):
        r = parser.feed_bytes(head, piece, request_method)
        if r == -1:
            return Outcome(-1, head, n)
        if r > 0:
            return Outcome(consumed + r, head, n)
        consumed += len(piece)
    return Outcome(0, head, len(pieces))


def whole(data):
    return [data]


def bytewise(data):
    return [data[i:i + 1] for i in range(len(data))]


def chunks_of(data, size):
    return [data[i:i + size] for i in range(0, len(data), size)]


def snapshot(head):
    """Everything the parser exposes about a parsed head, for equality checks."""
    return (head.method_bytes, head.target, head.version, head.status, head.reason_line,
            head.headers(), head.body_kind, head.content_length, head.keep_alive,
            head.upgrade, head.expect_continue, head.head_length)


@pytest.fixture(params=["whole", "bytewise"])
def feed(request):
    """feed(data, **kw) -> Outcome, with `data` in one piece or one byte per call."""
    split = whole if request.param == "whole" else bytewise

    def run(data, **kw):
        return feed_pieces(split(data), **kw)

    return run


def assert_ok(out, data_len=None):
    assert out.offset > 0, (out.status, out.reason)
    if data_len is not None:
        assert out.offset == data_len
    return out.head


def assert_rejected(out, status):
    assert out.offset == -1, "accepted a message that should be rejected"
    assert out.status == status, (out.status, out.reason)
    assert out.reason


# -- valid requests ------------------------------------------------------------------------

def test_valid_get(feed):
    data = request(HOST, b"Accept: */*", b"User-Agent: t/1")
    h = assert_ok(feed(data), len(data))
    assert h.method_bytes == b"GET"
    assert h.target == b"/"
    assert h.version == 11
    assert h.headers() == [(b"Host", b"example.com"), (b"Accept", b"*/*"), (b"User-Agent", b"t/1")]
    assert h.get("host") == b"example.com"
    assert h.get(b"ACCEPT") == b"*/*"
    assert h.get("missing") is None
    assert h.body_kind == P.NO_BODY
    assert h.content_length == -1
    assert h.keep_alive and not h.upgrade and not h.expect_continue


def test_valid_post_with_content_length(feed):
    data = request(HOST, b"Content-Type: text/plain", b"Content-Length: 11",
                   start=b"POST /submit?a=1&b=%20 HTTP/1.1")
    out = feed(data + b"hello world")
    h = assert_ok(out, len(data))
    assert h.method_bytes == b"POST"
    assert h.target == b"/submit?a=1&b=%20"
    assert h.body_kind == P.LENGTH
    assert h.content_length == 11


def test_valid_chunked_post(feed):
    data = request(HOST, b"Transfer-Encoding: chunked", start=b"POST /up HTTP/1.1")
    h = assert_ok(feed(data + b"5\r\nhello\r\n0\r\n\r\n"), len(data))
    assert h.body_kind == P.CHUNKED
    assert h.content_length == -1


def test_valid_head(feed):
    data = request(HOST, start=b"HEAD /index.html HTTP/1.1")
    h = assert_ok(feed(data), len(data))
    assert h.method_bytes == b"HEAD"
    assert h.target == b"/index.html"
    assert h.body_kind == P.NO_BODY


@pytest.mark.parametrize("target", [b"*", b"http://example.com:8080/a?b#c", b"example.com:443",
                                    b"/%7Euser/a;b=c", b"/!$&'()*+,;=:@-._~"])
def test_request_target_forms_accepted(feed, target):
    data = request(HOST, start=b"OPTIONS " + target + b" HTTP/1.1")
    assert assert_ok(feed(data)).target == target


def test_extension_method_token_accepted(feed):
    data = request(HOST, start=b"M-SEARCH! * HTTP/1.1")
    assert assert_ok(feed(data)).method_bytes == b"M-SEARCH!"


def test_field_value_whitespace_trimmed_inner_kept(feed):
    data = request(HOST, b"X-A:   a \t b  \t", b"X-B:", b"X-C:\tc", b"X-D: \x80\xff obs-text")
    h = assert_ok(feed(data))
    assert h.headers()[1:] == [(b"X-A", b"a \t b"), (b"X-B", b""), (b"X-C", b"c"),
                               (b"X-D", b"\x80\xff obs-text")]


def test_content_length_zero_means_no_body(feed):
    h = assert_ok(feed(request(HOST, b"Content-Length: 0", start=b"POST / HTTP/1.1")))
    assert h.body_kind == P.NO_BODY
    assert h.content_length == 0


# -- reads split anywhere -------------------------------------------------------------------

SPLIT_REQUESTS = [
    request(HOST, b"Content-Length: 5", b"Connection: Upgrade, close", b"Upgrade: ws",
            b"X-Pad:  a b  ", start=b"POST /p?q=1 HTTP/1.1") + b"hello",
    request(start=b"GET / HTTP/1.0"),
    request(HOST, b"Transfer-Encoding: chunked", b"Expect: 100-continue",
            start=b"PUT /x HTTP/1.1") + b"0\r\n\r\nGET / HTTP/1.1\r\n",
]


@pytest.mark.parametrize("data", SPLIT_REQUESTS, ids=["post", "http10", "chunked-pipelined"])
def test_request_split_at_every_byte_boundary_gives_same_result(data):
    head_len = data.index(b"\r\n\r\n") + 4
    ref = feed_pieces(whole(data))
    assert ref.offset == head_len
    expected = snapshot(ref.head)

    out = feed_pieces(bytewise(data))
    assert out.offset == head_len and snapshot(out.head) == expected
    assert out.feeds == head_len        # the head was complete with its last byte

    for cut in range(1, len(data)):
        out = feed_pieces([data[:cut], data[cut:]])
        assert out.offset == head_len, cut
        assert snapshot(out.head) == expected, cut


def test_feed_returns_offset_within_the_current_piece():
    data = request(HOST)
    parser = P.new_request_parser()
    head = P.MessageHead(100)
    assert parser.feed_bytes(head, data[:10]) == 0
    # The head ends 3 bytes into the last piece, whatever follows it.
    assert parser.feed_bytes(head, data[10:] + b"NEXT") == len(data) - 10
    assert head.raw.endswith(b"\r\n\r\n") and head.head_length == len(data)


def test_parser_reusable_for_pipelined_requests():
    first = request(HOST, start=b"GET /one HTTP/1.1")
    second = request(HOST, start=b"GET /two HTTP/1.1")
    parser = P.new_request_parser()
    head = P.MessageHead(100)
    stream = first + second
    end = parser.feed_bytes(head, stream)
    assert end == len(first) and head.target == b"/one"
    assert parser.feed_bytes(head, stream[end:]) == len(second) and head.target == b"/two"


def test_incomplete_head_returns_zero(feed):
    out = feed(b"GET / HTTP/1.1\r\nHost: example.com\r\n")
    assert out.offset == 0 and out.status == 0


# -- leading empty lines (RFC 9112 section 2.2) ----------------------------------------------

@pytest.mark.parametrize("n", [1, 2, 3, 4])
def test_up_to_four_leading_crlfs_tolerated(n):
    data = b"\r\n" * n + request(HOST)
    h = assert_ok(feed_pieces(whole(data)), len(data))
    assert h.method_bytes == b"GET" and h.headers() == [(b"Host", b"example.com")]
    assert h.head_length == len(data) - 2 * n


def test_five_leading_crlfs_rejected():
    assert_rejected(feed_pieces(whole(b"\r\n" * 5 + request(HOST))), 400)


@pytest.mark.parametrize("pieces", [
    [b"\r\n", b"GET / HTTP/1.1\r\n", b"Host: example.com\r\n\r\n"],
    bytewise(b"\r\n" + request(HOST)),
], ids=["three-pieces", "bytewise"])
def test_leading_crlf_tolerated_when_head_arrives_in_pieces(pieces):
    h = assert_ok(feed_pieces(pieces))
    assert h.method_bytes == b"GET" and h.headers() == [(b"Host", b"example.com")]


def test_five_leading_crlfs_rejected_when_sent_in_separate_reads():
    assert_rejected(feed_pieces([b"\r\n"] * 5 + [request(HOST)]), 400)


@pytest.mark.parametrize("pieces", [
    [b"\r\n"] * 4 + [request(HOST)],
    [b"\r", b"\n\r", b"\n\r\n\r\nGET / HTTP/1.1\r\n", HOST + b"\r\n\r\n"],
    bytewise(b"\r\n" * 4 + request(HOST)),
], ids=["crlf-per-read", "cr-and-lf-apart", "bytewise"])
def test_four_leading_crlfs_tolerated_in_separate_reads(pieces):
    data = b"".join(pieces)
    h = assert_ok(feed_pieces(pieces), len(data))
    assert h.head_length == len(request(HOST)) and h.raw.startswith(b"GET / HTTP/1.1\r\n")


def test_leading_crlfs_not_skipped_before_a_status_line():
    assert_rejected(feed_pieces(whole(b"\r\n" + response()), response=True), 502)


# -- line endings ---------------------------------------------------------------------------

def test_bare_lf_after_request_line_rejected(feed):
    assert_rejected(feed(b"GET / HTTP/1.1\nHost: example.com\r\n\r\n"), 400)


def test_bare_lf_after_field_line_rejected(feed):
    assert_rejected(feed(b"GET / HTTP/1.1\r\nHost: example.com\nX: y\r\n\r\n"), 400)


def test_bare_lf_as_final_empty_line_rejected(feed):
    assert_rejected(feed(b"GET / HTTP/1.1\r\nHost: example.com\r\n\n"), 400)


def test_bare_lf_inside_field_value_rejected(feed):
    assert_rejected(feed(request(HOST, b"X: a\nb")), 400)


def test_bare_cr_inside_field_value_rejected(feed):
    assert_rejected(feed(request(HOST, b"X: a\rb")), 400)


def test_bare_cr_at_end_of_field_line_rejected(feed):
    assert_rejected(feed(request(HOST, b"X: a\r")), 400)


def test_bare_cr_in_request_line_rejected(feed):
    assert_rejected(feed(request(HOST, start=b"GET /\r HTTP/1.1")), 400)


def test_bare_cr_as_final_empty_line_rejected(feed):
    # "\r\r\n" is not the empty line; the head goes on, and the line is invalid.
    data = b"GET / HTTP/1.1\r\nHost: example.com\r\n\r\r\n"
    assert feed(data).offset == 0
    assert_rejected(feed(data + b"\r\n"), 400)


# -- field lines ----------------------------------------------------------------------------

def test_obs_fold_with_space_rejected(feed):
    out = feed(request(HOST, b"X-Long: part one", b" part two"))
    assert_rejected(out, 400)
    assert "fold" in out.reason


def test_obs_fold_with_tab_rejected(feed):
    assert_rejected(feed(request(HOST, b"X-Long: part one", b"\tpart two")), 400)


def test_whitespace_before_colon_rejected(feed):
    assert_rejected(feed(request(b"Host : example.com")), 400)


def test_tab_before_colon_rejected(feed):
    assert_rejected(feed(request(HOST, b"X-A\t: b")), 400)


def test_empty_header_name_rejected(feed):
    out = feed(request(HOST, b": value"))
    assert_rejected(out, 400)
    assert "empty" in out.reason


def test_field_line_without_colon_rejected(feed):
    assert_rejected(feed(request(HOST, b"NoColonHere")), 400)


@pytest.mark.parametrize("name", [b"X(Y)", b"X@Y", b"X\x00", b"X\x80", b"X/Y", b"X\"Y"])
def test_non_token_header_name_rejected(feed, name):
    assert_rejected(feed(request(HOST, name + b": v")), 400)


@pytest.mark.parametrize("byte", [b"\x00", b"\x7f", b"\x01", b"\x1f", b"\x0b", b"\x0c"],
                         ids=["NUL", "DEL", "SOH", "US", "VT", "FF"])
@pytest.mark.parametrize("where", ["start", "middle", "end"])
def test_control_byte_in_field_value_rejected(feed, byte, where):
    value = {"start": byte + b"abc", "middle": b"a" + byte + b"c", "end": b"abc" + byte}[where]
    assert_rejected(feed(request(HOST, b"X-Ctl: " + value)), 400)


def test_control_byte_in_host_value_rejected(feed):
    assert_rejected(feed(request(b"Host: exa\x00mple.com")), 400)


# -- request line ---------------------------------------------------------------------------

@pytest.mark.parametrize("target", [b"/caf\xc3\xa9", b"/\x80", b"/\xff", b"/a\x7fb", b"/a\x00b",
                                    b"/a\tb"])
def test_non_ascii_or_control_in_target_rejected(feed, target):
    assert_rejected(feed(request(HOST, start=b"GET " + target + b" HTTP/1.1")), 400)


@pytest.mark.parametrize("line", [b"GET  / HTTP/1.1", b"GET /  HTTP/1.1", b"GET / HTTP/1.1 ",
                                  b" GET / HTTP/1.1", b"GET\t/ HTTP/1.1", b"GET /\tHTTP/1.1"])
def test_extra_or_wrong_whitespace_in_request_line_rejected(feed, line):
    assert_rejected(feed(request(HOST, start=line)), 400)


@pytest.mark.parametrize("line", [b"GET /", b"GET / ", b"/ HTTP/1.1", b"GET HTTP/1.1",
                                  b"G(T / HTTP/1.1", b"GET / HTTP/1.1.1", b"GET / HTTP/1",
                                  b"GET / HTTP/11", b"GET / HTTP/1.x", b"GET / HTTPS/1.1"])
def test_malformed_request_line_rejected(feed, line):
    assert_rejected(feed(request(HOST, start=line)), 400)


@pytest.mark.parametrize("version", [b"http/1.1", b"Http/1.1", b"HTTP/1.1".lower()])
def test_lowercase_http_version_rejected(feed, version):
    assert_rejected(feed(request(HOST, start=b"GET / " + version)), 400)


@pytest.mark.parametrize("version", [b"HTTP/2.0", b"HTTP/1.2", b"HTTP/0.9", b"HTTP/3.0",
                                     b"HTTP/1.9"])
def test_unsupported_http_version_gives_505(feed, version):
    assert_rejected(feed(request(HOST, start=b"GET / " + version)), 505)


def test_http10_version_parsed(feed):
    assert assert_ok(feed(request(start=b"GET / HTTP/1.0"))).version == 10


# -- Content-Length -------------------------------------------------------------------------

@pytest.mark.parametrize("value", [b"abc", b"-1", b"+5", b"1 2", b"", b"0x10", b"5.0", b"5,",
                                   b",5", b"5,,5", b"1e3", b"\xd9\xa3"],
                         ids=["abc", "negative", "plus", "inner-space", "empty", "hex",
                              "decimal-point", "trailing-comma", "leading-comma",
                              "empty-element", "exponent", "non-ascii-digit"])
def test_malformed_content_length_rejected(feed, value):
    out = feed(request(HOST, b"Content-Length: " + value, start=b"POST / HTTP/1.1"))
    assert_rejected(out, 400)


def test_content_length_with_18_digits_accepted(feed):
    h = assert_ok(feed(request(HOST, b"Content-Length: 999999999999999999",
                               start=b"POST / HTTP/1.1")))
    assert h.content_length == 999999999999999999 and h.body_kind == P.LENGTH


@pytest.mark.parametrize("value", [b"1" * 19, b"0" * 18 + b"5", b"99999999999999999999999999"])
def test_content_length_with_too_many_digits_rejected(feed, value):
    out = feed(request(HOST, b"Content-Length: " + value, start=b"POST / HTTP/1.1"))
    assert_rejected(out, 400)


@pytest.mark.parametrize("fields", [
    (b"Content-Length: 5", b"Content-Length: 6"),
    (b"Content-Length: 5, 6",),
    (b"Content-Length: 5", b"Content-Length: 5, 7"),
    (b"Content-Length: 0", b"Content-Length: 5"),
], ids=["two-fields", "one-field-list", "list-and-field", "zero-and-five"])
def test_conflicting_content_lengths_rejected(feed, fields):
    out = feed(request(HOST, *fields, start=b"POST / HTTP/1.1"))
    assert_rejected(out, 400)


@pytest.mark.parametrize("fields", [
    (b"Content-Length: 5, 5",),
    (b"Content-Length: 5,5",),
    (b"Content-Length: 5 ,\t5 , 5",),
    (b"Content-Length: 5", b"Content-Length: 5"),
    (b"Content-Length: 5", b"content-length: 5, 5"),
], ids=["one-field", "no-space", "whitespace", "two-fields", "field-and-list"])
def test_identical_duplicate_content_lengths_accepted(feed, fields):
    h = assert_ok(feed(request(HOST, *fields, start=b"POST / HTTP/1.1")))
    assert h.content_length == 5 and h.body_kind == P.LENGTH


def test_content_length_field_name_case_insensitive(feed):
    h = assert_ok(feed(request(HOST, b"CONTENT-LENGTH: 7", start=b"POST / HTTP/1.1")))
    assert h.content_length == 7


# -- Transfer-Encoding ----------------------------------------------------------------------

def post(*fields, version=b"HTTP/1.1"):
    return request(*fields, start=b"POST / " + version)


@pytest.mark.parametrize("order", ["te-first", "cl-first"])
def test_transfer_encoding_with_content_length_rejected(feed, order):
    te, cl = b"Transfer-Encoding: chunked", b"Content-Length: 5"
    fields = (te, cl) if order == "te-first" else (cl, te)
    assert_rejected(feed(post(HOST, *fields)), 400)


def test_transfer_encoding_in_http10_rejected(feed):
    assert_rejected(feed(post(HOST, b"Transfer-Encoding: chunked", version=b"HTTP/1.0")), 400)


@pytest.mark.parametrize("value", [b"chunked, gzip", b"gzip", b"identity", b"", b"chunked;q=1, br"])
def test_final_transfer_coding_not_chunked_rejected(feed, value):
    assert_rejected(feed(post(HOST, b"Transfer-Encoding: " + value)), 400)


def test_final_coding_not_chunked_across_two_fields_rejected(feed):
    assert_rejected(feed(post(HOST, b"Transfer-Encoding: chunked", b"Transfer-Encoding: gzip")),
                    400)


@pytest.mark.parametrize("fields", [
    (b"Transfer-Encoding: gzip, chunked",),
    (b"Transfer-Encoding: deflate,chunked",),
    (b"Transfer-Encoding: gzip", b"Transfer-Encoding: chunked"),
], ids=["one-field", "no-space", "two-fields"])
def test_unsupported_coding_before_chunked_gives_501(feed, fields):
    assert_rejected(feed(post(HOST, *fields)), 501)


@pytest.mark.parametrize("fields", [
    (b"Transfer-Encoding: chunked, chunked",),
    (b"Transfer-Encoding: chunked", b"Transfer-Encoding: chunked"),
    (b"Transfer-Encoding: chunked, gzip, chunked",),
], ids=["one-field", "two-fields", "around-gzip"])
def test_chunked_twice_rejected(feed, fields):
    assert_rejected(feed(post(HOST, *fields)), 400)


@pytest.mark.parametrize("value", [b"chunked x", b"chunked/1", b"chunked=1", b"chunked\x80"],
                         ids=["space-junk", "slash", "equals", "obs-text"])
def test_transfer_coding_with_junk_after_the_name_rejected(feed, value):
    out = feed(post(HOST, b"Transfer-Encoding: " + value))
    assert out.offset == -1 and out.status in (400, 501), (out.status, out.reason)


@pytest.mark.parametrize("value", [b"chunked", b"Chunked", b"CHUNKED", b"  chunked  "])
def test_chunked_coding_name_case_insensitive(feed, value):
    assert assert_ok(feed(post(HOST, b"Transfer-Encoding: " + value))).body_kind == P.CHUNKED


@pytest.mark.parametrize("value", [b"chunked;q=1", b"chunked ;q=1", b"chunked, /", b"/x, chunked",
                                   b"gzip x, chunked"],
                         ids=["parameter", "bws-parameter", "no-name-last", "no-name-first",
                              "junk-before-chunked"])
def test_transfer_coding_with_parameters_or_without_a_name_rejected(feed, value):
    # chunked takes no parameters; an element must start with a coding name.
    out = feed(post(HOST, b"Transfer-Encoding: " + value))
    assert out.offset == -1 and out.status in (400, 501), (out.status, out.reason)


@pytest.mark.parametrize("value", [b", chunked", b"chunked,", b" , chunked , ,"])
def test_empty_transfer_encoding_list_elements_ignored(feed, value):
    # RFC 9110 5.6.1: a recipient accepts and ignores empty list elements.
    assert assert_ok(feed(post(HOST, b"Transfer-Encoding: " + value))).body_kind == P.CHUNKED


# -- Host -----------------------------------------------------------------------------------

def test_missing_host_in_http11_rejected(feed):
    out = feed(request(b"Accept: */*"))
    assert_rejected(out, 400)
    assert "Host" in out.reason


def test_two_hosts_in_http11_rejected(feed):
    assert_rejected(feed(request(HOST, b"host: other.example")), 400)


def test_two_identical_hosts_rejected(feed):
    assert_rejected(feed(request(HOST, HOST)), 400)


def test_two_hosts_in_http10_rejected(feed):
    assert_rejected(feed(request(HOST, HOST, start=b"GET / HTTP/1.0")), 400)


def test_http10_without_host_accepted(feed):
    h = assert_ok(feed(request(b"Accept: */*", start=b"GET / HTTP/1.0")))
    assert h.version == 10 and h.get("host") is None


def test_empty_host_value_accepted(feed):
    # RFC 9112 3.2: a Host with an empty value is what a client sends when the target has
    # no authority.
    assert assert_ok(feed(request(b"Host:"))).get("host") == b""


# -- limits ---------------------------------------------------------------------------------

LINE = b"GET /" + b"a" * 95 + b" HTTP/1.1"        # 109 bytes


def test_request_line_at_max_accepted():
    limits = P.Limits(len(LINE), 65536, 100)
    assert_ok(feed_pieces(whole(request(HOST, start=LINE)), limits=limits))
    # Split anywhere but between its CR and LF (that split has its own test below).
    data = request(HOST, start=LINE)
    for cut in range(1, len(data)):
        if cut != len(LINE) + 1:
            assert_ok(feed_pieces([data[:cut], data[cut:]], limits=limits)), cut


def test_request_line_over_max_gives_414(feed):
    limits = P.Limits(len(LINE) - 1, 65536, 100)
    assert_rejected(feed(request(HOST, start=LINE), limits=limits), 414)


def test_request_line_over_max_rejected_before_its_end_arrives():
    limits = P.Limits(100, 65536, 100)
    pieces = chunks_of(b"GET /" + b"a" * 1000, 30)
    out = feed_pieces(pieces, limits=limits)
    assert_rejected(out, 414)
    assert out.feeds < len(pieces)        # did not wait for (or buffer) the whole line


@pytest.mark.parametrize("split", ["between-cr-and-lf", "bytewise"])
def test_request_line_at_max_accepted_when_split_between_cr_and_lf(split):
    limits = P.Limits(len(LINE), 65536, 100)
    data = request(HOST, start=LINE)
    cut = len(LINE) + 1
    pieces = [data[:cut], data[cut:]] if split == "between-cr-and-lf" else bytewise(data)
    assert_ok(feed_pieces(pieces, limits=limits))


def _head_of_length(n):
    base = request(HOST, b"X-Pad: ")
    return request(HOST, b"X-Pad: " + b"p" * (n - len(base)))


def test_head_at_max_header_bytes_accepted(feed):
    data = _head_of_length(300)
    assert len(data) == 300
    assert_ok(feed(data, limits=P.Limits(8192, 300, 100)), 300)


@pytest.mark.parametrize("over", [10, 1000])
def test_head_over_max_header_bytes_gives_431(feed, over):
    data = _head_of_length(300 + over)
    assert_rejected(feed(data, limits=P.Limits(8192, 300, 100)), 431)


@pytest.mark.parametrize("over, split", [
    (1, "whole"),
    (2, "whole"),
    (1, "bytewise"),
    (2, "bytewise"),
])
def test_head_one_or_two_bytes_over_max_header_bytes_gives_431(over, split):
    data = _head_of_length(300 + over)
    pieces = whole(data) if split == "whole" else bytewise(data)
    assert_rejected(feed_pieces(pieces, limits=P.Limits(8192, 300, 100)), 431)


def test_leading_empty_lines_do_not_count_towards_the_head_limits(feed):
    data = b"\r\n" * 4 + _head_of_length(300)
    assert_ok(feed(data, limits=P.Limits(8192, 300, 100)), len(data))
    data = b"\r\n" * 4 + request(HOST, start=LINE)
    assert_ok(feed(data, limits=P.Limits(len(LINE), 65536, 100)), len(data))
    assert_rejected(feed(b"\r\n" * 4 + _head_of_length(301), limits=P.Limits(8192, 300, 100)),
                    431)


@pytest.mark.parametrize("over", [1, 2])
def test_response_head_over_max_header_bytes_by_its_last_bytes_gives_502(feed, over):
    data = response(b"X-Pad: " + b"p" * (300 + over - len(response(b"X-Pad: "))))
    assert len(data) == 300 + over
    assert_rejected(feed(data, response=True, limits=P.Limits(8192, 300, 100)), 502)


def test_header_bytes_over_max_rejected_before_the_head_ends():
    limits = P.Limits(8192, 1000, 1000)
    data = b"GET / HTTP/1.1\r\n" + HOST + b"\r\n" + b"X-Pad: aaaaaaaaaaaaaaaaaaaaaaaa\r\n" * 200
    pieces = chunks_of(data, 64)
    out = feed_pieces(pieces, limits=limits)
    assert_rejected(out, 431)
    assert out.feeds * 64 <= 1000 + 2 * 64


def test_single_huge_field_line_in_pieces_gives_431():
    limits = P.Limits(8192, 1000, 100)
    pieces = [b"GET / HTTP/1.1\r\n", HOST + b"\r\n"] + chunks_of(b"X-Big: " + b"b" * 5000, 100)
    out = feed_pieces(pieces, limits=limits)
    assert_rejected(out, 431)
    assert out.feeds < len(pieces)


def _head_with_fields(n):
    return request(HOST, *[b"X-F%d: v" % i for i in range(n - 1)])


def test_header_count_at_max_accepted(feed):
    h = assert_ok(feed(_head_with_fields(10), limits=P.Limits(8192, 65536, 10)))
    assert len(h.headers()) == 10


def test_header_count_over_max_gives_431(feed):
    assert_rejected(feed(_head_with_fields(11), limits=P.Limits(8192, 65536, 10)), 431)


def test_header_count_over_max_in_pieces_rejected_before_the_head_ends():
    data = _head_with_fields(200)
    pieces = chunks_of(data, 16)
    out = feed_pieces(pieces, limits=P.Limits(8192, 65536, 10))
    assert_rejected(out, 431)
    assert out.feeds < len(pieces) // 2


def test_header_count_over_message_head_capacity_gives_431(feed):
    out = feed(_head_with_fields(20), limits=P.Limits(8192, 65536, 100), capacity=8)
    assert_rejected(out, 431)


def test_default_limits_values():
    limits = P.Limits()
    assert (limits.max_request_line, limits.max_header_bytes, limits.max_headers) == (8192, 65536, 100)


# -- connection semantics -------------------------------------------------------------------

def test_http11_keep_alive_by_default(feed):
    assert assert_ok(feed(request(HOST))).keep_alive is True


@pytest.mark.parametrize("value", [b"close", b"Close", b"keep-alive, close", b"  close  ",
                                   b"x-foo,close"])
def test_http11_connection_close(feed, value):
    assert assert_ok(feed(request(HOST, b"Connection: " + value))).keep_alive is False


def test_http11_connection_close_in_second_connection_field(feed):
    h = assert_ok(feed(request(HOST, b"Connection: keep-alive", b"Connection: close")))
    assert h.keep_alive is False


def test_http11_connection_token_must_match_whole(feed):
    assert assert_ok(feed(request(HOST, b"Connection: closed"))).keep_alive is True


def test_http10_closes_by_default(feed):
    assert assert_ok(feed(request(start=b"GET / HTTP/1.0"))).keep_alive is False


@pytest.mark.parametrize("value", [b"keep-alive", b"Keep-Alive", b"x, keep-alive"])
def test_http10_keep_alive_on_request(feed, value):
    h = assert_ok(feed(request(b"Connection: " + value, start=b"GET / HTTP/1.0")))
    assert h.keep_alive is True


def test_http10_keep_alive_and_close_means_close(feed):
    h = assert_ok(feed(request(b"Connection: keep-alive, close", start=b"GET / HTTP/1.0")))
    assert h.keep_alive is False


def test_upgrade_detected(feed):
    h = assert_ok(feed(request(HOST, b"Connection: Upgrade", b"Upgrade: websocket")))
    assert h.upgrade is True


def test_upgrade_detected_among_other_connection_options(feed):
    h = assert_ok(feed(request(HOST, b"Connection: keep-alive, upgrade", b"Upgrade: h2c")))
    assert h.upgrade is True


def test_upgrade_field_without_connection_upgrade_is_not_an_upgrade(feed):
    assert assert_ok(feed(request(HOST, b"Upgrade: websocket"))).upgrade is False


def test_connection_upgrade_without_upgrade_field_is_not_an_upgrade(feed):
    assert assert_ok(feed(request(HOST, b"Connection: upgrade"))).upgrade is False


def test_upgrade_ignored_in_http10(feed):
    h = assert_ok(feed(request(b"Connection: upgrade", b"Upgrade: websocket",
                               start=b"GET / HTTP/1.0")))
    assert h.upgrade is False


@pytest.mark.parametrize("value", [b"100-continue", b"100-Continue"])
def test_expect_100_continue(feed, value):
    h = assert_ok(feed(post(HOST, b"Content-Length: 3", b"Expect: " + value)))
    assert h.expect_continue is True


@pytest.mark.parametrize("value", [b"100-continuex", b"200-ok", b""])
def test_other_expectations_are_not_100_continue(feed, value):
    h = assert_ok(feed(post(HOST, b"Content-Length: 3", b"Expect: " + value)))
    assert h.expect_continue is False


# -- responses ------------------------------------------------------------------------------

def test_status_line_parsed(feed):
    data = response(b"Content-Length: 2", b"Server: s", start=b"HTTP/1.1 404 Not Found")
    h = assert_ok(feed(data + b"ok", response=True, request_method=P.GET), len(data))
    assert h.status == 404
    assert h.version == 11
    assert h.reason_line == b"404 Not Found"
    assert h.headers() == [(b"Content-Length", b"2"), (b"Server", b"s")]
    assert h.body_kind == P.LENGTH and h.content_length == 2
    assert h.keep_alive is True


def test_http10_status_line_parsed(feed):
    h = assert_ok(feed(response(b"Content-Length: 0", start=b"HTTP/1.0 200 OK"), response=True))
    assert h.version == 10 and h.status == 200 and h.keep_alive is False


def test_status_line_without_reason_accepted(feed):
    h = assert_ok(feed(response(b"Content-Length: 0", start=b"HTTP/1.1 200"), response=True))
    assert h.status == 200 and h.reason_line == b"200"


def test_status_line_with_empty_reason_accepted(feed):
    h = assert_ok(feed(response(b"Content-Length: 0", start=b"HTTP/1.1 200 "), response=True))
    assert h.status == 200 and h.reason_line == b"200 "


def test_reason_phrase_with_obs_text_and_tabs_accepted(feed):
    start = b"HTTP/1.1 500 Internal\tError \xe2\x9c\x97"
    h = assert_ok(feed(response(b"Content-Length: 0", start=start), response=True))
    assert h.reason_line == start[9:]


@pytest.mark.parametrize("line", [
    b"HTTP/1.1 20 OK", b"HTTP/1.1 2000 OK", b"HTTP/1.1 abc OK", b"HTTP/1.1  200 OK",
    b"HTTP/1.1 200OK", b"HTTP/2 200 OK", b"HTTP/2.0 200 OK", b"http/1.1 200 OK",
    b"HTTP/1.1 600 Nope", b"HTTP/1.1 099 Nope", b"HTTP/1.1 200 O\x00K", b"HTTP/1.1 200 O\x7fK",
    b"HTTP/1.1", b"", b"HTTP/1.1\t200 OK", b"ICY 200 OK",
])
def test_malformed_status_line_rejected(feed, line):
    out = feed(response(b"Content-Length: 0", start=line), response=True)
    assert_rejected(out, 502)


@pytest.mark.parametrize("status", [100, 101, 102, 103, 199])
def test_no_body_for_1xx(feed, status):
    start = b"HTTP/1.1 %d Info" % status
    h = assert_ok(feed(response(start=start), response=True))
    assert h.status == status and h.body_kind == P.NO_BODY


def test_101_response_is_an_upgrade(feed):
    h = assert_ok(feed(response(b"Connection: upgrade", b"Upgrade: websocket",
                                start=b"HTTP/1.1 101 Switching Protocols"), response=True))
    assert h.upgrade is True and h.body_kind == P.NO_BODY


@pytest.mark.parametrize("status", [204, 304])
def test_no_body_for_204_and_304_even_with_framing_fields(feed, status):
    start = b"HTTP/1.1 %d X" % status
    for field in (b"Content-Length: 10", b"Transfer-Encoding: chunked"):
        h = assert_ok(feed(response(field, start=start), response=True))
        assert h.body_kind == P.NO_BODY and h.content_length == -1


@pytest.mark.parametrize("field", [b"Content-Length: 10", b"Transfer-Encoding: chunked", None])
def test_no_body_for_response_to_head(feed, field):
    fields = (field,) if field else ()
    h = assert_ok(feed(response(*fields), response=True, request_method=P.HEAD))
    assert h.body_kind == P.NO_BODY
    assert h.keep_alive is True


def test_response_to_get_with_same_fields_has_body(feed):
    h = assert_ok(feed(response(b"Content-Length: 10"), response=True, request_method=P.GET))
    assert h.body_kind == P.LENGTH and h.content_length == 10


def test_response_content_length_zero_has_no_body(feed):
    h = assert_ok(feed(response(b"Content-Length: 0"), response=True))
    assert h.body_kind == P.NO_BODY and h.content_length == 0 and h.keep_alive is True


def test_response_chunked(feed):
    h = assert_ok(feed(response(b"Transfer-Encoding: chunked"), response=True))
    assert h.body_kind == P.CHUNKED and h.keep_alive is True


def test_response_without_length_reads_until_close(feed):
    h = assert_ok(feed(response(b"Server: old"), response=True))
    assert h.body_kind == P.UNTIL_CLOSE and h.keep_alive is False


@pytest.mark.parametrize("value", [b"gzip", b"chunked, gzip", b"identity"])
def test_response_with_final_coding_not_chunked_rejected(feed, value):
    # RFC 9112 6.3 item 4 would read it until close, but the client could not decode it:
    # Transfer-Encoding is hop-by-hop and not forwarded.
    assert_rejected(feed(response(b"Transfer-Encoding: " + value), response=True), 502)


def test_response_connection_close(feed):
    h = assert_ok(feed(response(b"Content-Length: 1", b"Connection: close"), response=True))
    assert h.keep_alive is False


@pytest.mark.parametrize("order", ["te-first", "cl-first"])
def test_response_with_content_length_and_transfer_encoding_rejected(feed, order):
    te, cl = b"Transfer-Encoding: chunked", b"Content-Length: 5"
    fields = (te, cl) if order == "te-first" else (cl, te)
    assert_rejected(feed(response(*fields), response=True), 502)


@pytest.mark.parametrize("fields", [
    (b"Content-Length: abc",), (b"Content-Length: 5", b"Content-Length: 6"),
    (b"Transfer-Encoding: gzip, chunked",), (b"Transfer-Encoding: chunked, chunked",),
    (b"X: a\x00b",), (b"X : b",), (b"X: a", b" folded"), (b": empty",),
])
def test_response_field_errors_give_502(feed, fields):
    assert_rejected(feed(response(*fields), response=True), 502)


def test_response_bare_lf_gives_502(feed):
    assert_rejected(feed(b"HTTP/1.1 200 OK\nContent-Length: 0\r\n\r\n", response=True), 502)


def test_response_limits_give_502(feed):
    limits = P.Limits(8192, 100, 100)
    assert_rejected(feed(response(b"X: " + b"x" * 200), response=True, limits=limits), 502)


def test_http10_response_with_transfer_encoding_rejected(feed):
    out = feed(response(b"Transfer-Encoding: chunked", start=b"HTTP/1.0 200 OK"), response=True)
    assert_rejected(out, 502)


@pytest.mark.parametrize("fields, request_method", [
    ((b"Transfer-Encoding: chunked", b"Content-Length: 5"), P.GET),
    ((b"Transfer-Encoding: gzip",), P.GET),
    ((b"Transfer-Encoding: chunked",), P.HEAD),
], ids=["with-content-length", "not-chunked", "to-head"])
def test_http10_response_with_transfer_encoding_rejected_whatever_else_it_says(
        feed, fields, request_method):
    out = feed(response(*fields, start=b"HTTP/1.0 200 OK"), response=True,
               request_method=request_method)
    assert_rejected(out, 502)


@pytest.mark.parametrize("value", [b"chunked x", b"chunked/1", b"chunked;q=1, x y"])
def test_response_transfer_coding_with_junk_gives_502(feed, value):
    assert_rejected(feed(response(b"Transfer-Encoding: " + value), response=True), 502)


@pytest.mark.parametrize("n", [2, 3])
def test_response_parser_reusable_for_a_sequence_of_responses(n):
    one = response(b"Content-Length: 0")
    parser = P.new_response_parser()
    head = P.MessageHead(100)
    stream = one * n
    pos = 0
    for _ in range(n):
        end = parser.feed_bytes(head, stream[pos:], P.GET)
        assert end == len(one) and head.status == 200
        pos += end
