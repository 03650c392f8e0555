"""The response cache's store and decisions without sockets (fastpath/response_cache.pyx):
what is stored and how it answers, freshness against the request's directives, Vary
variants, the LRU bound, max_entry, revalidation and 304 merging, and coalescing."""
import email.utils
import time

import pytest

from fastpath import parser as P
from fastpath import response_cache as rc

FRAME_CHUNKED = 2
T0 = 1000.0          # monotonic seconds of the tests' clock


def request(target=b"/r", *fields, method=b"GET", host=b"app"):
    data = method + b" " + target + b" HTTP/1.1\r\nHost: " + host + b"\r\n" + \
        b"".join(f + b"\r\n" for f in fields) + b"\r\n"
    head = P.MessageHead(100)
    assert P.new_request_parser().feed_bytes(head, data) == len(data)
    return head


def response(status=200, *fields, body_length=None, request_method=P.GET):
    now = email.utils.formatdate(time.time(), usegmt=True).encode()
    lines = [b"HTTP/1.1 %d X" % status, b"Date: " + now] + list(fields)
    if body_length is not None:
        lines.append(b"Content-Length: %d" % body_length)
    data = b"\r\n".join(lines) + b"\r\n\r\n"
    head = P.MessageHead(100)
    assert P.new_response_parser().feed_bytes(head, data, request_method) == len(data)
    return head


def store(cache, req, resp, body=b"hello", now=T0, framing=0):
    """A miss of `req` answered by `resp`: the fill's final state name."""
    kind, x = cache.exchange(req, now)
    assert rc.LOOKUP_NAMES[kind] in ("miss", "revalidate"), rc.LOOKUP_NAMES[kind]
    action, fill = cache.fill_for(req, x, now)
    assert rc.COALESCE_NAMES[action] == "lead"
    state = rc.FILL_NAMES[rc.fill_response(fill, resp, req, body, now, framing)]
    rc.release_fill(fill)
    return state


def lookup(cache, req, now=T0):
    kind, x = cache.exchange(req, now)
    return rc.LOOKUP_NAMES[kind], x


def split(answer):
    head, _, body = answer.partition(b"\r\n\r\n")
    lines = head.split(b"\r\n")
    return lines[0], [tuple(l.split(b": ", 1)) for l in lines[1:]], body


@pytest.fixture
def cache():
    return rc.ResponseCache(30.0, 1 << 20, 64 << 20, seed=7)


def test_a_stored_response_answers_in_one_piece_without_its_hop_by_hop_fields(cache):
    req = request()
    resp = response(200, b"Content-Type: text/plain", b"Connection: x-hop", b"X-Hop: 1",
                    b"Keep-Alive: timeout=5", b"Age: 0", b"X-Cache: HIT from elsewhere",
                    b"X-Request-Id: leader-id", b"Traceparent: 00-" + b"1" * 32 + b"-" + b"2" * 16 + b"-01",
                    body_length=5)
    assert store(cache, req, resp) == "stored"
    kind, x = lookup(cache, request(), T0 + 2.5)
    assert kind == "hit"
    status, fields, body = split(cache.answer(x, request(), T0 + 2.5))
    assert status == b"HTTP/1.1 200 X" and body == b"hello"
    names = [k.lower() for k, _ in fields]
    assert names == [b"date", b"content-type", b"content-length", b"age", b"x-cache"]
    assert dict(fields)[b"age"] == b"2" and dict(fields)[b"x-cache"] == b"HIT"
    assert dict(fields)[b"content-length"] == b"5"
    assert cache.count == 1 and cache.stores == 1


def test_head_is_answered_without_the_body_and_a_204_without_a_length(cache):
    store(cache, request(), response(200, body_length=5))
    kind, x = lookup(cache, request(method=b"HEAD"))
    status, fields, body = split(cache.answer(x, request(method=b"HEAD"), T0))
    assert kind == "hit" and body == b"" and dict(fields)[b"content-length"] == b"5"
    assert store(cache, request(b"/empty"), response(204), b"") == "stored"
    kind, x = lookup(cache, request(b"/empty"))
    status, fields, body = split(cache.answer(x, request(b"/empty"), T0))
    assert status == b"HTTP/1.1 204 X" and b"content-length" not in dict(fields) and body == b""


def test_the_key_is_the_host_without_case_and_the_target_as_sent(cache):
    store(cache, request(b"/r?a=1", host=b"App.Example"), response(200, body_length=5))
    assert lookup(cache, request(b"/r?a=1", host=b"app.example"))[0] == "hit"
    assert lookup(cache, request(b"/r?a=2", host=b"app.example"))[0] == "miss"
    assert lookup(cache, request(b"/r?a=1", host=b"other"))[0] == "miss"
    assert lookup(cache, request(b"/R?a=1", host=b"app.example"))[0] == "miss"


@pytest.mark.parametrize("fields", [
    (b"Range: bytes=0-10",), (b"If-Range: \"x\"",), (b"If-Match: \"x\"",),
    (b"If-Unmodified-Since: Sun, 06 Nov 1994 08:49:37 GMT",), (b"Cache-Control: no-store",),
])
def test_requests_that_bypass_the_cache(cache, fields):
    store(cache, request(), response(200, body_length=5))
    assert lookup(cache, request(b"/r", *fields))[0] == "bypass"


def test_methods_other_than_get_and_head_bypass_and_unsafe_ones_are_flagged(cache):
    store(cache, request(), response(200, body_length=5))
    for method in (b"POST", b"PUT", b"DELETE", b"PATCH", b"OPTIONS"):
        assert lookup(cache, request(method=method))[0] == "bypass"
    assert lookup(cache, request())[0] == "hit"


def test_freshness_and_the_requests_directives(cache):
    store(cache, request(), response(200, b"Cache-Control: max-age=10", body_length=5))
    assert lookup(cache, request(), T0 + 9.9)[0] == "hit"
    assert lookup(cache, request(b"/r", b"Cache-Control: max-age=3"), T0 + 2)[0] == "hit"
    assert lookup(cache, request(b"/r", b"Cache-Control: max-age=3"), T0 + 4)[0] == "miss"
    assert lookup(cache, request(b"/r", b"Cache-Control: min-fresh=5"), T0 + 4)[0] == "hit"
    assert lookup(cache, request(b"/r", b"Cache-Control: min-fresh=5"), T0 + 6)[0] == "miss"
    assert lookup(cache, request(b"/r", b"Cache-Control: no-cache"), T0)[0] == "miss"
    assert lookup(cache, request(b"/r", b"Pragma: no-cache"), T0)[0] == "miss"
    # Pragma counts only without Cache-Control
    assert lookup(cache, request(b"/r", b"Pragma: no-cache", b"Cache-Control: max-age=60"), T0)[0] == "hit"
    assert lookup(cache, request(b"/r", b"Cache-Control: only-if-cached"), T0)[0] == "hit"
    assert cache.count == 1
    # stale, and no validator: dropped
    assert lookup(cache, request(), T0 + 10)[0] == "miss"
    assert cache.count == 0
    assert lookup(cache, request(b"/r", b"Cache-Control: only-if-cached"), T0 + 10)[0] == "only-if-cached"


@pytest.mark.parametrize("fields,request_fields", [
    ((b"Cache-Control: no-store",), ()),
    ((b"Cache-Control: private",), ()),
    ((b"Cache-Control: max-age=60", b"Set-Cookie: a=b"), ()),
    ((b"Vary: Accept, *",), ()),
    ((b"Vary: " + b", ".join(b"x-f%d" % i for i in range(17)),), ()),     # too many fields
    ((b"Cache-Control: max-age=60",), (b"Authorization: Bearer x",)),
    ((b"Cache-Control: max-age=0",), ()),
    ((b"Cache-Control: no-cache",), ()),
    ((b"Expires: 0",), ()),
])
def test_responses_the_rules_refuse(cache, fields, request_fields):
    req = request(b"/r", *request_fields)
    assert store(cache, req, response(200, *fields, body_length=5), now=T0) == "uncacheable"
    assert cache.count == 0


@pytest.mark.parametrize("directive", [b"public", b"s-maxage=60", b"must-revalidate"])
def test_an_authorized_requests_response_is_stored_when_shared_explicitly(cache, directive):
    req = request(b"/r", b"Authorization: Bearer x")
    assert store(cache, req, response(200, b"Cache-Control: max-age=60, " + directive, body_length=5)) == "stored"


def test_statuses(cache):
    assert store(cache, request(b"/a"), response(404, body_length=5)) == "uncacheable"
    assert store(cache, request(b"/b"), response(404, b"Cache-Control: max-age=5", body_length=5)) == "stored"
    assert store(cache, request(b"/c"), response(301, b"Location: /x", body_length=5)) == "stored"
    assert store(cache, request(b"/d"), response(500, b"Cache-Control: max-age=5", body_length=5)) == "uncacheable"


def test_vary_keeps_a_variant_per_request_value(cache):
    vary = response(200, b"Vary: Accept-Language, accept-encoding", body_length=2)
    de = request(b"/v", b"Accept-Language: de", b"Accept-Encoding: gzip")
    en = request(b"/v", b"Accept-Language: en", b"Accept-Encoding: gzip")
    assert store(cache, de, vary, b"de") == "stored"
    assert lookup(cache, en)[0] == "miss"
    assert store(cache, en, vary, b"en") == "stored"
    for req, body in ((de, b"de"), (en, b"en")):
        kind, x = lookup(cache, req)
        assert kind == "hit" and split(cache.answer(x, req, T0))[2] == body
    # values compared as sent, repeated fields joined; an absent field is its own value
    assert lookup(cache, request(b"/v", b"Accept-Language: DE", b"Accept-Encoding: gzip"))[0] == "miss"
    assert lookup(cache, request(b"/v", b"Accept-Language: de", b"Accept-Encoding: gzip, br"))[0] == "miss"
    assert lookup(cache, request(b"/v", b"Accept-Language: de"))[0] == "miss"
    both = request(b"/w", b"Accept-Language: de", b"Accept-Language: en")
    assert store(cache, both, response(200, b"Vary: accept-language", body_length=2), b"xx") == "stored"
    assert lookup(cache, request(b"/w", b"Accept-Language: de", b"Accept-Language: en"))[0] == "hit"
    assert lookup(cache, request(b"/w", b"Accept-Language: de"))[0] == "miss"
    # the same variant stored again replaces the old one
    assert store(cache, request(b"/v", b"Accept-Language: de", b"Accept-Encoding: gzip",
                                b"Cache-Control: no-cache"), vary, b"DE") == "stored"
    kind, x = lookup(cache, de)
    assert split(cache.answer(x, de, T0))[2] == b"DE" and cache.count == 3


def test_variants_per_url_are_bounded(cache):
    vary = response(200, b"Vary: x-user", body_length=1)
    for i in range(20):
        assert store(cache, request(b"/u", b"x-user: %d" % i), vary, b"u") == "stored"
    assert cache.count == 16
    assert lookup(cache, request(b"/u", b"x-user: 19"))[0] == "hit"
    assert lookup(cache, request(b"/u", b"x-user: 0"))[0] == "miss"


def test_the_store_is_bounded_by_max_total_least_recently_used_first():
    cache = rc.ResponseCache(30.0, 4096, 8192, seed=1)
    body = b"x" * 3000
    for name in (b"/a", b"/b"):
        assert store(cache, request(name), response(200, body_length=3000), body) == "stored"
    one = cache.total // 2
    assert 3000 < one <= 4096 and cache.count == 2
    assert lookup(cache, request(b"/a"))[0] == "hit"            # /a is now the most recent
    assert store(cache, request(b"/c"), response(200, body_length=3000), body) == "stored"
    assert cache.urls() == [(b"app", b"/c"), (b"app", b"/a")]
    assert cache.evictions == 1 and cache.total <= cache.max_total
    # an entry larger than the whole store is not kept, and evicts nothing
    big = rc.ResponseCache(30.0, 4096, 4096, seed=1)
    assert store(big, request(b"/x"), response(200, body_length=4000), b"y" * 4000) == "uncacheable"


def test_a_body_over_max_entry_is_not_kept():
    cache = rc.ResponseCache(30.0, 100, 1 << 20, seed=1)
    assert store(cache, request(b"/declared"), response(200, body_length=101), b"z" * 101) == "uncacheable"
    chunked = response(200, b"Transfer-Encoding: chunked")
    framed = b"65\r\n" + b"z" * 101 + b"\r\n0\r\n\r\n"
    assert store(cache, request(b"/streamed"), chunked, framed, framing=FRAME_CHUNKED) == "uncacheable"
    framed = b"64\r\n" + b"z" * 100 + b"\r\n0\r\n\r\n"
    assert store(cache, request(b"/fits"), chunked, framed, framing=FRAME_CHUNKED) == "stored"
    kind, x = lookup(cache, request(b"/fits"))
    assert split(cache.answer(x, request(b"/fits"), T0))[2] == b"z" * 100
    # a body shorter than its Content-Length is never stored
    assert store(cache, request(b"/short"), response(200, body_length=10), b"z" * 5) == "uncacheable"


def test_a_response_delimited_by_close_is_not_stored(cache):
    resp = response(200, b"Cache-Control: max-age=60")
    assert resp.body_kind == P.UNTIL_CLOSE
    assert store(cache, request(), resp, b"body") == "uncacheable"


def test_revalidation_sends_the_validators_and_a_304_refreshes_the_stored_head(cache):
    modified = b"Sat, 01 Jan 2000 00:00:00 GMT"
    first = response(200, b"Cache-Control: no-cache", b"ETag: \"v1\"", b"Last-Modified: " + modified,
                     b"X-Kept: stored", b"X-Replaced: old", body_length=5)
    assert store(cache, request(), first) == "stored"
    kind, x = lookup(cache, request())
    assert kind == "revalidate"
    action, fill = cache.fill_for(request(), x, T0)
    assert rc.revalidation_lines(fill) == (b'if-none-match: "v1"\r\nif-modified-since: ' + modified + b"\r\n")
    not_modified = response(304, b"Cache-Control: max-age=60", b"ETag: \"v1\"", b"X-Replaced: new",
                            b"Content-Length: 99", request_method=P.GET)
    assert rc.FILL_NAMES[rc.fill_response(fill, not_modified, request(), b"", T0)] == "validated"
    rc.release_fill(fill)
    kind, x = lookup(cache, request(), T0 + 1)
    assert kind == "hit"                                  # max-age=60 from the 304
    status, fields, body = split(cache.answer(x, request(), T0 + 1))
    got = dict((k.lower(), v) for k, v in fields)
    assert status == b"HTTP/1.1 200 X" and body == b"hello"
    assert got[b"x-kept"] == b"stored" and got[b"x-replaced"] == b"new"
    assert got[b"cache-control"] == b"max-age=60" and got[b"content-length"] == b"5"
    assert cache.count == 1


def test_a_full_response_to_a_revalidation_replaces_the_stored_one(cache):
    store(cache, request(), response(200, b"Cache-Control: max-age=1", b"ETag: \"v1\"", body_length=5))
    kind, x = lookup(cache, request(), T0 + 2)
    assert kind == "revalidate"
    action, fill = cache.fill_for(request(), x, T0 + 2)
    state = rc.fill_response(fill, response(200, b"ETag: \"v2\"", body_length=3), request(), b"new", T0 + 2)
    assert rc.FILL_NAMES[state] == "stored" and cache.count == 1
    kind, x = lookup(cache, request(), T0 + 3)
    assert split(cache.answer(x, request(), T0 + 3))[2] == b"new"


def test_a_clients_conditional_gets_a_304_with_the_validator_fields(cache):
    store(cache, request(), response(200, b"ETag: W/\"e\"", b"Cache-Control: max-age=60",
                                     b"Content-Type: text/html", body_length=5))
    for fields in ((b"If-None-Match: \"e\"",), (b"If-None-Match: *",),
                   (b"If-Modified-Since: " + email.utils.formatdate(time.time() + 60, usegmt=True).encode(),)):
        req = request(b"/r", *fields)
        kind, x = lookup(cache, req)
        status, got, body = split(cache.answer(x, req, T0))
        assert kind == "hit" and status == b"HTTP/1.1 304 Not Modified" and body == b""
        names = [k.lower() for k, _ in got]
        assert b"etag" in names and b"content-type" not in names and b"content-length" not in names
    for fields in ((b"If-None-Match: \"other\"",),
                   (b"If-Modified-Since: Sat, 01 Jan 2000 00:00:00 GMT",),
                   (b"If-None-Match: \"other\"", b"If-Modified-Since: " +
                    email.utils.formatdate(time.time() + 60, usegmt=True).encode())):
        req = request(b"/r", *fields)
        kind, x = lookup(cache, req)
        assert split(cache.answer(x, req, T0))[0] == b"HTTP/1.1 200 X"


def test_misses_of_one_key_coalesce_behind_one_fetch(cache):
    kind, leader = cache.exchange(request(), T0)
    action, fill = cache.fill_for(request(), leader, T0)
    assert rc.COALESCE_NAMES[action] == "lead"
    waiting = []
    for req in (request(), request(method=b"HEAD"), request(b"/r", b"If-None-Match: \"x\"")):
        kind, x = cache.exchange(req, T0)
        action, same = cache.fill_for(req, x, T0)
        assert rc.COALESCE_NAMES[action] == "wait" and same is fill
        waiting.append(x)
    assert cache.coalesced == 3
    # without a fetch in flight, HEAD and conditional requests pass; another URL leads its own
    for req in (request(b"/other", method=b"HEAD"), request(b"/other", b"If-None-Match: \"x\"")):
        kind, x = cache.exchange(req, T0)
        assert rc.COALESCE_NAMES[cache.fill_for(req, x, T0)[0]] == "pass"
    assert len(rc.release_fill(fill)) == 3
    assert rc.FILL_NAMES[fill.state] == "abandoned"      # released before a response head
    kind, x = cache.exchange(request(), T0)
    assert rc.COALESCE_NAMES[cache.fill_for(request(), x, T0)[0]] == "lead"   # a new fetch
