"""The head rewriter (fastpath/head_rewrite.pyx): the heads the proxy forwards.

Every rewritten head is parsed again, by our parser and by h11, to check it is valid.
"""
import re
import uuid

import h11
import pytest

from fastpath import head_rewrite as HR
from fastpath import parser as P

# The Framing enum (head_rewrite.pxd) is C-level only; these are its values.
FRAME_NONE = getattr(HR, "FRAME_NONE", 0)
FRAME_LENGTH = getattr(HR, "FRAME_LENGTH", 1)
FRAME_CHUNKED = getattr(HR, "FRAME_CHUNKED", 2)
FRAME_CLOSE = getattr(HR, "FRAME_CLOSE", 3)
FRAMINGS = {"none": FRAME_NONE, "length": FRAME_LENGTH, "chunked": FRAME_CHUNKED,
            "close": FRAME_CLOSE}

UUID4 = re.compile(rb"^[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$")
CLIENT_IP = b"192.0.2.7"
HOST = b"Host: example.com"


def head_bytes(start, *fields):
    return b"".join(line + b"\r\n" for line in (start,) + fields) + b"\r\n"


def parse_request(data):
    head = P.MessageHead(100)
    end = P.new_request_parser().feed_bytes(head, data)
    assert end == len(data), (end, head.error_status, head.error_reason_text)
    return head


def parse_response(data, request_method=P.GET):
    head = P.MessageHead(100)
    end = P.new_response_parser().feed_bytes(head, data, request_method)
    assert end == len(data), (end, head.error_status, head.error_reason_text)
    return head


def rewrite(*fields, start=b"GET / HTTP/1.1", client_ip=CLIENT_IP, request_id=None,
            destination=None):
    return HR.rewrite_request(parse_request(head_bytes(start, *fields)), client_ip, request_id,
                              destination)


def field_lines(out):
    """The field lines of a rewritten head, as (name, value) with the value OWS-trimmed."""
    assert out.endswith(b"\r\n\r\n")
    lines = out[:-4].split(b"\r\n")[1:]
    pairs = []
    for line in lines:
        name, _, value = line.partition(b":")
        pairs.append((name, value.strip(b" \t")))
    return pairs


def names(out):
    return [n.lower() for n, _ in field_lines(out)]


def values(out, name):
    return [v for n, v in field_lines(out) if n.lower() == name]


def check_request(out):
    """`out` is one valid HTTP/1.1 request head for our parser and for h11; returns both."""
    ours = parse_request(out)
    assert ours.version == 11
    conn = h11.Connection(h11.SERVER)
    conn.receive_data(out)
    event = conn.next_event()
    assert isinstance(event, h11.Request), event
    assert event.http_version == b"1.1"
    assert event.method == ours.method_bytes and event.target == ours.target
    return ours, event


def check_response(out, request_method=b"GET", upgrade=False):
    """`out` is one valid response head for our parser and for h11 (as the client that
    sent `request_method`); returns both."""
    ours = parse_response(out, P.HEAD if request_method == b"HEAD" else P.GET)
    assert ours.version == 11
    conn = h11.Connection(h11.CLIENT)
    headers = [("Host", "example.com")]
    if upgrade:
        headers += [("Connection", "upgrade"), ("Upgrade", "websocket")]
    conn.send(h11.Request(method=request_method, target="/", headers=headers))
    conn.send(h11.EndOfMessage())
    conn.receive_data(out)
    event = conn.next_event()
    assert isinstance(event, (h11.Response, h11.InformationalResponse)), event
    assert event.status_code == ours.status
    return ours, event


# -- request line ---------------------------------------------------------------------------

def test_request_line_kept_with_http11():
    out = rewrite(HOST, start=b"DELETE /a/b?c=d%20e HTTP/1.1")
    assert out.startswith(b"DELETE /a/b?c=d%20e HTTP/1.1\r\n")
    check_request(out)


def test_http10_request_sent_as_http11():
    out = rewrite(HOST, start=b"GET /old HTTP/1.0")
    assert out.startswith(b"GET /old HTTP/1.1\r\n")
    ours, _ = check_request(out)
    assert ours.get("host") == b"example.com"


def test_http10_request_without_host_rewritten_to_a_valid_http11_request():
    check_request(rewrite(start=b"GET /old HTTP/1.0"))


def test_http10_request_without_host_gets_the_destination_as_host():
    out = rewrite(b"Accept: */*", start=b"GET /old HTTP/1.0", destination=b"10.1.2.3:8080")
    # Host first, as RFC 9110 7.2 recommends, then the client's fields in order.
    assert out.split(b"\r\n")[:3] == [b"GET /old HTTP/1.1", b"host: 10.1.2.3:8080", b"Accept: */*"]
    ours, _ = check_request(out)
    assert ours.get("host") == b"10.1.2.3:8080"


def test_http10_request_without_host_or_destination_gets_an_empty_host():
    # RFC 9112 3.2: a client that knows no authority sends Host with an empty value.
    out = rewrite(start=b"GET /old HTTP/1.0")
    assert values(out, b"host") == [b""]


@pytest.mark.parametrize("target, host", [
    (b"http://legacy.example:8080/x?y=1", b"legacy.example:8080"),
    (b"HTTP://user:pw@legacy.example/x", b"legacy.example"),
    (b"http://[2001:db8::1]:80", b"[2001:db8::1]:80"),
    (b"https://a.example?q", b"a.example"),
    (b"coap+tcp://a.example#f", b"a.example"),
], ids=["port-and-query", "userinfo", "ipv6", "query-right-after", "scheme-chars"])
def test_http10_absolute_form_request_without_host_gets_the_target_authority(target, host):
    out = rewrite(start=b"GET " + target + b" HTTP/1.0", destination=b"10.1.2.3:80")
    assert values(out, b"host") == [host]
    check_request(out)


@pytest.mark.parametrize("target", [b"/x", b"*", b"http:///x", b"http:/x", b"urn:isbn:1",
                                    b"http://@/x", b"1http://a.example/"])
def test_target_without_an_authority_leaves_the_destination(target):
    head = parse_request(head_bytes(b"OPTIONS " + target + b" HTTP/1.0"))
    assert HR.host_for_request(head, b"10.1.2.3:80") == b"10.1.2.3:80"
    assert HR.host_for_request(head, None) is None


@pytest.mark.parametrize("start", [b"GET / HTTP/1.0", b"GET http://other.example/ HTTP/1.0",
                                   b"GET / HTTP/1.1"])
def test_request_with_host_keeps_it_and_gets_no_second_one(start):
    out = rewrite(HOST, start=start, destination=b"10.1.2.3:80")
    assert values(out, b"host") == [b"example.com"]
    check_request(out)


# -- hop-by-hop fields ----------------------------------------------------------------------

@pytest.mark.parametrize("field", [
    b"Connection: keep-alive", b"Keep-Alive: timeout=5, max=100", b"Proxy-Connection: keep-alive",
    b"TE: trailers", b"Trailer: X-Checksum", b"Upgrade: websocket", b"CONNECTION: close",
    b"keep-alive: 1", b"te: gzip",
])
def test_hop_by_hop_field_removed(field):
    out = rewrite(HOST, field, b"X-Kept: 1")
    name = field.split(b":")[0].lower()
    assert name not in names(out)
    assert (b"X-Kept", b"1") in field_lines(out)
    check_request(out)


def test_fields_named_in_connection_removed():
    out = rewrite(HOST, b"X-Hop-A: 1", b"Connection: X-Hop-A, x-hop-b", b"X-HOP-B: 2",
                  b"Connection: X-Hop-C", b"x-hop-c: 3", b"X-Hop-D: 4")
    assert names(out) == [b"host", b"x-hop-d", b"x-forwarded-for", b"x-request-id"]
    check_request(out)


def test_all_hop_by_hop_fields_removed_together_end_to_end_kept_in_order():
    fields = (b"Connection: keep-alive, X-Private", b"Keep-Alive: timeout=5", HOST,
              b"Proxy-Connection: keep-alive", b"TE: trailers", b"Accept: */*",
              b"Trailer: X-T", b"Upgrade: h2c", b"X-Private: secret", b"Cookie: a=b; c=d",
              b"X-Spaced:   v  v  ", b"X-Obs: \xe2\x9c\x93")
    out = rewrite(*fields, request_id=HR.RequestId())
    kept = out.split(b"\r\n")[1:5]
    # End-to-end field lines are copied byte for byte, in their order.
    assert kept == [HOST, b"Accept: */*", b"Cookie: a=b; c=d", b"X-Spaced:   v  v  "]
    assert names(out) == [b"host", b"accept", b"cookie", b"x-spaced", b"x-obs",
                          b"x-forwarded-for", b"x-request-id"]
    check_request(out)


def test_expect_kept():
    out = rewrite(HOST, b"Expect: 100-continue", b"Content-Length: 3", start=b"PUT / HTTP/1.1")
    assert values(out, b"expect") == [b"100-continue"]
    ours, _ = check_request(out)
    assert ours.expect_continue


# -- framing --------------------------------------------------------------------------------

@pytest.mark.parametrize("fields", [
    (b"Content-Length: 5",),
    (b"Content-Length: 5, 5",),
    (b"Content-Length: 5", b"content-length: 5"),
    (b"CONTENT-LENGTH: 5,5", b"Content-Length: 5"),
], ids=["one", "list", "two-fields", "mixed"])
def test_one_content_length_written(fields):
    out = rewrite(HOST, *fields, start=b"POST / HTTP/1.1")
    assert values(out, b"content-length") == [b"5"]
    assert b"content-length: 5\r\n" in out
    assert b"transfer-encoding" not in names(out)
    ours, event = check_request(out)
    assert ours.body_kind == P.LENGTH and ours.content_length == 5
    assert dict(event.headers)[b"content-length"] == b"5"


def test_content_length_zero_written():
    out = rewrite(HOST, b"Content-Length: 0", start=b"POST / HTTP/1.1")
    assert values(out, b"content-length") == [b"0"]
    check_request(out)


@pytest.mark.parametrize("value", [b"chunked", b"Chunked", b"  CHUNKED "])
def test_chunked_written_anew(value):
    out = rewrite(HOST, b"Transfer-Encoding: " + value, start=b"POST / HTTP/1.1")
    assert values(out, b"transfer-encoding") == [b"chunked"]
    assert b"transfer-encoding: chunked\r\n" in out
    assert b"content-length" not in names(out)
    ours, _ = check_request(out)
    assert ours.body_kind == P.CHUNKED


def test_no_framing_fields_without_a_body():
    out = rewrite(HOST)
    assert b"content-length" not in names(out) and b"transfer-encoding" not in names(out)
    ours, _ = check_request(out)
    assert ours.body_kind == P.NO_BODY


# -- X-Forwarded-For ------------------------------------------------------------------------

def test_xff_added():
    out = rewrite(HOST)
    assert values(out, b"x-forwarded-for") == [CLIENT_IP]
    check_request(out)


def test_xff_appended_to_existing():
    out = rewrite(HOST, b"X-Forwarded-For: 203.0.113.1")
    assert values(out, b"x-forwarded-for") == [b"203.0.113.1, " + CLIENT_IP]
    check_request(out)


def test_multiple_xff_lines_merged_into_one():
    out = rewrite(b"x-forwarded-for: 203.0.113.1", HOST, b"X-Forwarded-For: 198.51.100.2, 10.0.0.3",
                  b"X-FORWARDED-FOR: 10.0.0.4")
    assert values(out, b"x-forwarded-for") == [
        b"203.0.113.1, 198.51.100.2, 10.0.0.3, 10.0.0.4, " + CLIENT_IP]
    check_request(out)


def test_empty_existing_xff_skipped():
    out = rewrite(HOST, b"X-Forwarded-For:", b"X-Forwarded-For: 203.0.113.1")
    assert values(out, b"x-forwarded-for") == [b"203.0.113.1, " + CLIENT_IP]
    check_request(out)


def test_xff_with_ipv6_client():
    out = rewrite(HOST, client_ip=b"2001:db8::1")
    assert values(out, b"x-forwarded-for") == [b"2001:db8::1"]
    check_request(out)


def test_xff_named_in_connection_not_forwarded():
    out = rewrite(HOST, b"Connection: X-Forwarded-For", b"X-Forwarded-For: 203.0.113.1")
    assert values(out, b"x-forwarded-for") == [CLIENT_IP]


@pytest.mark.parametrize("fields", [
    (b"X-Forwarded-For: 203.0.113.1", b"Connection: x-forwarded-for"),
    (b"connection: keep-alive, X-FORWARDED-FOR", b"x-forwarded-for: 203.0.113.1",
     b"X-Forwarded-For: 198.51.100.2"),
], ids=["nominated-after", "several-lines"])
def test_xff_named_in_connection_not_forwarded_whatever_the_order_and_case(fields):
    out = rewrite(HOST, *fields)
    assert values(out, b"x-forwarded-for") == [CLIENT_IP]
    check_request(out)
    assert b"x-forwarded-for" not in names(rewrite(HOST, *fields, client_ip=None))


def test_xff_named_in_connection_removed_from_a_response():
    upstream = head_bytes(b"HTTP/1.1 200 OK", b"Content-Length: 0", b"X-Forwarded-For: kept",
                          b"Connection: X-Forwarded-For")
    out = HR.rewrite_response(parse_response(upstream), FRAME_LENGTH)
    assert b"x-forwarded-for" not in names(out)


def test_host_named_in_connection_kept():
    # Every HTTP/1.1 request needs its Host: it cannot be one hop's connection option.
    out = rewrite(HOST, b"Connection: host, x-hop", b"X-Hop: 1")
    assert values(out, b"host") == [b"example.com"] and b"x-hop" not in names(out)
    check_request(out)


# -- X-Request-Id ---------------------------------------------------------------------------

@pytest.mark.parametrize("field", [b"X-Request-Id: abc-123", b"x-request-id: abc-123",
                                   b"X-REQUEST-ID:   abc-123  "])
def test_request_id_kept(field):
    rid = HR.RequestId()
    out = rewrite(HOST, field, request_id=rid)
    assert values(out, b"x-request-id") == [b"abc-123"]
    check_request(out)


def test_request_id_generated_uuid4():
    rid = HR.RequestId()
    out = rewrite(HOST, request_id=rid)
    (value,) = values(out, b"x-request-id")
    assert UUID4.match(value), value
    assert value == rid.current
    parsed = uuid.UUID(value.decode())
    assert parsed.version == 4 and parsed.variant == uuid.RFC_4122
    check_request(out)


def test_request_ids_unique_across_10000_calls():
    rid = HR.RequestId()
    ids = [rid.new() for _ in range(10000)]
    assert len(set(ids)) == 10000
    assert all(UUID4.match(i) for i in ids)


def test_generated_request_ids_in_heads_unique_across_10000_calls():
    head = parse_request(head_bytes(b"GET / HTTP/1.1", HOST))
    rid = HR.RequestId()
    seen = set()
    for _ in range(10000):
        out = HR.rewrite_request(head, None, rid)
        seen.add(out[out.index(b"x-request-id: ") + 14:-4])
    assert len(seen) == 10000
    assert all(UUID4.match(i) for i in seen)


def test_request_id_generators_do_not_collide():
    a, b = HR.RequestId(), HR.RequestId()
    assert a.new() != b.new()
    assert {a.new() for _ in range(100)}.isdisjoint({b.new() for _ in range(100)})


def test_request_id_present_when_client_marks_it_hop_by_hop():
    out = rewrite(HOST, b"Connection: x-request-id", b"X-Request-Id: abc")
    assert len(values(out, b"x-request-id")) == 1


@pytest.mark.parametrize("fields", [
    (b"Connection: x-request-id", b"X-Request-Id: abc"),
    (b"X-Request-Id: abc", b"Connection: close, X-REQUEST-ID"),
    (b"x-request-id: abc", b"Connection: x-request-id", b"X-Request-Id: def"),
], ids=["nominated-before", "nominated-after", "two-ids"])
def test_request_id_named_in_connection_replaced_by_a_generated_one(fields):
    rid = HR.RequestId()
    head = parse_request(head_bytes(b"GET / HTTP/1.1", HOST, *fields))
    out = HR.rewrite_request(head, CLIENT_IP, rid)
    assert values(out, b"x-request-id") == [rid.current]
    assert UUID4.match(rid.current)
    check_request(out)


def test_only_the_first_of_several_request_ids_forwarded():
    out = rewrite(HOST, b"X-Request-Id: first", b"x-request-id: second")
    assert values(out, b"x-request-id") == [b"first"]
    check_request(out)


# -- upgrade --------------------------------------------------------------------------------

def test_upgrade_keeps_upgrade_and_says_connection_upgrade():
    out = rewrite(HOST, b"Connection: keep-alive, Upgrade", b"Upgrade: websocket",
                  b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==", b"Sec-WebSocket-Version: 13",
                  start=b"GET /chat HTTP/1.1")
    assert values(out, b"connection") == [b"upgrade"]
    assert values(out, b"upgrade") == [b"websocket"]
    assert b"sec-websocket-key" in names(out)
    ours, event = check_request(out)
    assert ours.upgrade


def test_upgrade_field_without_connection_upgrade_removed():
    out = rewrite(HOST, b"Upgrade: websocket")
    assert b"upgrade" not in names(out) and b"connection" not in names(out)
    check_request(out)


def test_no_client_ip_means_no_xff_line():
    out = rewrite(HOST, client_ip=None)
    assert b"x-forwarded-for" not in names(out)
    check_request(out)


# -- responses ------------------------------------------------------------------------------

UPSTREAM_LENGTH = head_bytes(b"HTTP/1.1 200 OK", b"Content-Length: 5", b"Connection: keep-alive",
                             b"Keep-Alive: timeout=5", b"Server: app", b"X-Forwarded-For: kept")
UPSTREAM_CHUNKED = head_bytes(b"HTTP/1.1 200 OK", b"Transfer-Encoding: chunked", b"Server: app",
                              b"Trailer: X-T", b"Connection: close, X-Hop", b"X-Hop: 1")
UPSTREAM_CLOSE = head_bytes(b"HTTP/1.0 200 OK", b"Server: app")


# The proxy writes a length only when the upstream gave one.
UPSTREAM_AND_FRAMING = [
    pytest.param(upstream, framing, id=f"{uid}-to-{framing}")
    for uid, upstream in (("length", UPSTREAM_LENGTH), ("chunked", UPSTREAM_CHUNKED),
                          ("until-close", UPSTREAM_CLOSE))
    for framing in FRAMINGS
    if framing != "length" or uid == "length"
]


@pytest.mark.parametrize("upstream, framing", UPSTREAM_AND_FRAMING)
@pytest.mark.parametrize("close, keep_alive_header", [(False, False), (True, False),
                                                      (False, True), (True, True)],
                         ids=["plain", "close", "keep-alive", "close-wins"])
def test_response_rewrite(upstream, framing, close, keep_alive_header):
    resp = parse_response(upstream)
    out = HR.rewrite_response(resp, FRAMINGS[framing], close, keep_alive_header)
    assert out.startswith(b"HTTP/1.1 200 OK\r\n")
    got = names(out)
    for hop in (b"keep-alive", b"trailer", b"x-hop", b"te", b"proxy-connection", b"upgrade"):
        assert hop not in got
    assert b"server" in got
    assert values(out, b"transfer-encoding") == ([b"chunked"] if framing == "chunked" else [])
    assert values(out, b"content-length") == ([b"5"] if framing == "length" else [])
    if close:
        assert values(out, b"connection") == [b"close"]
    elif keep_alive_header:
        assert values(out, b"connection") == [b"keep-alive"]
    else:
        assert values(out, b"connection") == []
    ours, event = check_response(out)
    expected_kind = {"length": P.LENGTH, "chunked": P.CHUNKED}.get(framing, P.UNTIL_CLOSE)
    assert ours.body_kind == expected_kind
    if framing == "length":
        assert ours.content_length == 5
    assert ours.keep_alive == (not close and expected_kind != P.UNTIL_CLOSE)


def test_response_xff_kept():
    out = HR.rewrite_response(parse_response(UPSTREAM_LENGTH), FRAME_LENGTH)
    assert values(out, b"x-forwarded-for") == [b"kept"]


def test_response_without_reason_phrase():
    out = HR.rewrite_response(parse_response(head_bytes(b"HTTP/1.1 200", b"Content-Length: 2")),
                              FRAME_LENGTH)
    assert out.startswith(b"HTTP/1.1 200\r\n")
    check_response(out)


def test_response_length_written_from_the_parsed_value():
    upstream = head_bytes(b"HTTP/1.1 201 Created", b"Content-Length: 7, 7", b"Content-Length: 7")
    out = HR.rewrite_response(parse_response(upstream), FRAME_LENGTH)
    assert values(out, b"content-length") == [b"7"]
    check_response(out)


@pytest.mark.parametrize("status", [204, 304])
def test_no_body_response_with_frame_none(status):
    upstream = head_bytes(b"HTTP/1.1 %d X" % status, b"ETag: \"e\"")
    out = HR.rewrite_response(parse_response(upstream), FRAME_NONE)
    assert b"content-length" not in names(out) and b"transfer-encoding" not in names(out)
    ours, _ = check_response(out)
    assert ours.body_kind == P.NO_BODY


def test_head_response_keeps_its_announced_length():
    upstream = head_bytes(b"HTTP/1.1 200 OK", b"Content-Length: 1234", b"Connection: keep-alive")
    out = HR.rewrite_response(parse_response(upstream, P.HEAD), FRAME_NONE)
    assert values(out, b"content-length") == [b"1234"]
    assert b"connection" not in names(out)
    ours, _ = check_response(out, request_method=b"HEAD")
    assert ours.body_kind == P.NO_BODY


def test_304_keeps_its_announced_length():
    upstream = head_bytes(b"HTTP/1.1 304 Not Modified", b"Content-Length: 99")
    out = HR.rewrite_response(parse_response(upstream), FRAME_NONE)
    assert values(out, b"content-length") == [b"99"]
    check_response(out)


def test_101_response_keeps_upgrade():
    upstream = head_bytes(b"HTTP/1.1 101 Switching Protocols", b"Connection: Upgrade",
                          b"Upgrade: websocket", b"Sec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=")
    out = HR.rewrite_response(parse_response(upstream), FRAME_NONE)
    assert values(out, b"connection") == [b"upgrade"]
    assert values(out, b"upgrade") == [b"websocket"]
    assert b"sec-websocket-accept" in names(out)
    ours, event = check_response(out, upgrade=True)
    assert ours.upgrade and event.status_code == 101


def test_informational_response_rewritten():
    upstream = head_bytes(b"HTTP/1.1 103 Early Hints", b"Link: </s.css>; rel=preload")
    out = HR.rewrite_response(parse_response(upstream), FRAME_NONE)
    assert out == head_bytes(b"HTTP/1.1 103 Early Hints", b"Link: </s.css>; rel=preload")
    check_response(out)
