"""The per-route response cache on a real `sidecar run` in front of a real HTTP app that
counts its requests: hits served without an upstream request, freshness and expiry,
what is never stored, Vary, HEAD, validation, LRU bounds, max_entry passthrough,
request coalescing, and the metrics and access-log fields that show each decision.

Every test uses its own URLs (the query names the test), so they share one sidecar."""
import concurrent.futures
import email.utils
import hashlib
import json
import re
import time
import urllib.parse

import pytest

from tests.support.admin import call, scrape
from tests.support.http_client import RawClient
from tests.support.servers import HttpApp, HttpUpstream
from tests.support.services import service
from tests.support.sidecar_process import SidecarProcess
from tests.integration.test_metrics import total
from tests.integration.test_retries import first_try_fails

ROUTES = [
    {"name": "short", "match": {"path_prefix": "/short/"}, "cache": {"ttl": "1s"}},
    {"name": "small", "match": {"path_prefix": "/small/"},
     "cache": {"ttl": "30s", "max_entry": "4KiB", "max_total": "8KiB"}},
    {"name": "bounded", "match": {"path_prefix": "/bounded/"},
     "cache": {"ttl": "30s", "max_entry": "64KiB", "max_total": "1MiB"}},
    {"name": "edited", "match": {"path_prefix": "/edited/"}, "cache": {"ttl": "30s"},
     "headers": {"response": {"remove": ["server"], "add": {"x-route": "%{route}"}}}},
    {"name": "plain", "match": {"path_prefix": "/plain/"}},
    {"name": "cached", "match": {"path_prefix": "/"}, "cache": {"ttl": "30s"}},
]


@pytest.fixture(scope="module")
def cached(tmp_path_factory):
    log = tmp_path_factory.mktemp("cache") / "access.log"
    extra = {"routes": ROUTES, "telemetry": {"access_log": {"path": str(log), "format": "json"}}}
    with HttpApp() as app, SidecarProcess(app=app.address, extra=extra) as sc:
        sc.access_log = log
        yield sc, app


def url(prefix, test, **params):
    """A /respond URL of its own for `test`, shaped by `params` (see HttpApp._respond)."""
    query = [("t", test)]
    for k, v in params.items():
        for item in (v if isinstance(v, list) else [v]):
            query.append((k, item))
    return "%srespond?%s" % (prefix, urllib.parse.urlencode(query))


def get(sc, target, *fields, method="GET"):
    """(status, headers, body) of one request on a connection of its own."""
    with RawClient(sc.inbound, timeout=10) as c:
        c.send(("%s %s HTTP/1.1\r\nHost: cache.test\r\n%s\r\n" % (
            method, target, "".join(f + "\r\n" for f in fields))).encode())
        return c.read_response(method)


def test_a_hit_is_served_without_an_upstream_request(cached):
    sc, app = cached
    target = url("/c/", "hit")
    first = get(sc, target)
    assert first[0] == 200 and first[1]["x-cache"] == "MISS" and "age" not in first[1]
    for _ in range(3):
        status, headers, body = get(sc, target)
        assert status == 200 and headers["x-cache"] == "HIT" and body == first[2]
        assert headers["age"] == "0" and headers["content-length"] == str(len(body))
        assert headers["date"] == first[1]["date"]
    assert app.count(target) == 1
    # another target, and the same target on a route without a cache, go upstream
    assert get(sc, url("/c/", "hit-other"))[1]["x-cache"] == "MISS"
    plain = url("/plain/", "hit")
    assert "x-cache" not in get(sc, plain)[1] and "x-cache" not in get(sc, plain)[1]
    assert app.count(plain) == 2


def test_age_grows_while_the_response_is_stored(cached):
    sc, app = cached
    target = url("/c/", "age", h="Cache-Control: max-age=60")
    get(sc, target)
    assert get(sc, target)[1]["age"] == "0"
    time.sleep(1.2)
    headers = get(sc, target)[1]
    assert headers["x-cache"] == "HIT" and int(headers["age"]) >= 1
    assert app.count(target) == 1


def test_an_upstream_age_counts_towards_the_stored_responses_age(cached):
    sc, app = cached
    target = url("/c/", "upstream-age", h=["Cache-Control: max-age=10", "Age: 9"])
    assert get(sc, target)[1]["age"] == "9"          # forwarded as the upstream sent it
    assert int(get(sc, target)[1]["age"]) >= 9
    time.sleep(1.2)                                  # 9 + 1.2 > 10: stale
    assert get(sc, target)[1]["x-cache"] == "MISS"
    assert app.count(target) == 2


@pytest.mark.parametrize("name,params", [
    ("max-age", {"h": "Cache-Control: max-age=1"}),
    ("s-maxage wins over max-age", {"h": "Cache-Control: max-age=600, s-maxage=1"}),
    ("Expires", {"expires_in": "2"}),
])
def test_a_response_is_fresh_for_its_lifetime_then_fetched_again(cached, name, params):
    sc, app = cached
    target = url("/c/", "expiry " + name, **params)
    get(sc, target)
    assert get(sc, target)[1]["x-cache"] == "HIT"
    time.sleep(2.2 if "expires_in" in params else 1.2)
    assert get(sc, target)[1]["x-cache"] == "MISS"
    assert get(sc, target)[1]["x-cache"] == "HIT"
    assert app.count(target) == 2


def test_s_maxage_keeps_a_response_fresh_past_its_max_age(cached):
    sc, app = cached
    target = url("/c/", "s-maxage long", h="Cache-Control: max-age=1, s-maxage=60")
    get(sc, target)
    time.sleep(1.2)
    assert get(sc, target)[1]["x-cache"] == "HIT"
    assert app.count(target) == 1


def test_ttl_sets_the_freshness_a_response_does_not_state_and_caps_what_it_states(cached):
    sc, app = cached
    silent = url("/short/", "ttl silent")
    long = url("/short/", "ttl capped", h="Cache-Control: max-age=3600")
    for target in (silent, long):
        get(sc, target)
        assert get(sc, target)[1]["x-cache"] == "HIT"
    time.sleep(1.2)
    for target in (silent, long):
        assert get(sc, target)[1]["x-cache"] == "MISS"
        assert app.count(target) == 2


@pytest.mark.parametrize("params", [
    {"h": "Cache-Control: no-store"},
    {"h": "Cache-Control: private, max-age=60"},
    {"h": 'Cache-Control: private="x-user", max-age=60'},
    {"h": ["Cache-Control: max-age=60", "Set-Cookie: session=abc"]},
    {"h": ["Cache-Control: max-age=60", "Vary: *"]},
    {"h": "Cache-Control: max-age=60", "status": "500"},
    {"h": "Cache-Control: max-age=60", "status": "302"},
    {"status": "404"},                                   # an error without explicit freshness
    {"h": "Cache-Control: max-age=0"},                   # stale at once, and no validator
    {"h": "Cache-Control: no-cache"},                    # to revalidate, and no validator
])
def test_responses_the_rules_do_not_allow_are_never_stored(cached, params):
    sc, app = cached
    target = url("/c/", "never %r" % (params,), **params)
    for _ in range(3):
        status, headers, _ = get(sc, target)
        assert status == int(params.get("status", 200)) and headers["x-cache"] == "MISS"
    assert app.count(target) == 3


def test_an_error_with_explicit_freshness_is_stored(cached):
    sc, app = cached
    target = url("/c/", "negative", status="404", h="Cache-Control: max-age=60")
    assert get(sc, target)[0] == 404
    status, headers, _ = get(sc, target)
    assert status == 404 and headers["x-cache"] == "HIT"
    assert app.count(target) == 1


def test_one_users_private_response_is_never_served_to_another(cached):
    sc, app = cached
    # `private`, personalised by cookie
    target = url("/c/", "private users", h="Cache-Control: private, max-age=60")
    alice = get(sc, target, "Cookie: user=alice")
    bob = get(sc, target, "Cookie: user=bob")
    assert b"user=user=alice" in alice[2] and b"user=user=bob" in bob[2]
    assert b"alice" not in get(sc, target, "Cookie: user=bob")[2]
    # a response to a request with Authorization, without `public`
    target = url("/c/", "authorized users", h="Cache-Control: max-age=60")
    alice = get(sc, target, "Authorization: Bearer alice")
    bob = get(sc, target, "Authorization: Bearer bob")
    assert b"Bearer alice" in alice[2] and b"Bearer bob" in bob[2]
    assert bob[1]["x-cache"] == "MISS"
    assert b"alice" not in get(sc, target, "Authorization: Bearer bob")[2]
    assert app.count(target) == 3


@pytest.mark.parametrize("directive", ["public, max-age=60", "s-maxage=60", "max-age=60, must-revalidate"])
def test_a_response_to_an_authorized_request_is_stored_when_it_says_it_may_be_shared(cached, directive):
    sc, app = cached
    target = url("/c/", "shared " + directive, h="Cache-Control: " + directive)
    first = get(sc, target, "Authorization: Bearer alice")
    status, headers, body = get(sc, target, "Authorization: Bearer bob")
    assert headers["x-cache"] == "HIT" and body == first[2]
    assert app.count(target) == 1


def test_vary_makes_the_listed_request_fields_part_of_the_key(cached):
    sc, app = cached
    target = url("/c/", "vary", h=["Cache-Control: max-age=60", "Vary: Accept-Language"])
    de = get(sc, target, "Accept-Language: de")
    en = get(sc, target, "Accept-Language: en")
    assert b"lang=de" in de[2] and b"lang=en" in en[2]
    assert en[1]["x-cache"] == "MISS"
    for _ in range(2):
        hit_de = get(sc, target, "Accept-Language: de")
        hit_en = get(sc, target, "Accept-Language: en")
        assert hit_de[1]["x-cache"] == "HIT" and hit_de[2] == de[2]
        assert hit_en[1]["x-cache"] == "HIT" and hit_en[2] == en[2]
    none = get(sc, target)                   # without the field: a variant of its own
    assert none[1]["x-cache"] == "MISS" and b"lang=None" in none[2]
    assert get(sc, target)[2] == none[2]
    assert app.count(target) == 3


def test_head_is_answered_from_a_stored_get_and_never_stored_itself(cached):
    sc, app = cached
    target = url("/c/", "head")
    status, headers, body = get(sc, target, method="HEAD")
    assert status == 200 and headers["x-cache"] == "MISS" and body == b""
    assert get(sc, target, method="HEAD")[1]["x-cache"] == "MISS"
    full = get(sc, target)
    assert full[1]["x-cache"] == "MISS"          # the HEAD responses were not stored
    with RawClient(sc.inbound, timeout=5) as c:
        c.send(b"HEAD %s HTTP/1.1\r\nHost: cache.test\r\n\r\nGET /c/respond?t=head-next HTTP/1.1\r\n"
               b"Host: cache.test\r\n\r\n" % target.encode())
        status, headers, body = c.read_response("HEAD")
        assert status == 200 and headers["x-cache"] == "HIT" and body == b""
        assert headers["content-length"] == str(len(full[2]))
        assert c.read_response()[0] == 200          # no body bytes were left in between
    assert app.count(target) == 3


def test_no_cache_is_stored_and_revalidated_with_the_etag_on_every_use(cached):
    sc, app = cached
    target = url("/c/", "no-cache etag", h="Cache-Control: no-cache", etag='"v1"')
    first = get(sc, target)
    assert first[1]["x-cache"] == "MISS" and first[1]["etag"] == '"v1"'
    for n in range(2, 4):
        status, headers, body = get(sc, target)
        assert status == 200 and body == first[2]          # the stored body: the app sent a 304
        assert headers["x-cache"] == "MISS" and headers["etag"] == '"v1"'
        assert app.count(target) == n
        assert ("if-none-match", '"v1"') in app.requests[-1]["headers"]


def test_a_stale_response_is_revalidated_with_last_modified(cached):
    sc, app = cached
    modified = email.utils.formatdate(time.time() - 3600, usegmt=True)
    target = url("/c/", "stale lm", h="Cache-Control: max-age=1", last_modified=modified)
    first = get(sc, target)
    assert get(sc, target)[1]["x-cache"] == "HIT"
    time.sleep(1.2)
    status, headers, body = get(sc, target)
    assert status == 200 and body == first[2] and headers["x-cache"] == "MISS"
    assert ("if-modified-since", modified) in app.requests[-1]["headers"]
    # the 304 refreshed it: fresh again for max-age
    status, headers, body = get(sc, target)
    assert headers["x-cache"] == "HIT" and body == first[2]
    assert app.count(target) == 2


def test_a_clients_conditional_request_gets_a_304_from_the_store(cached):
    sc, app = cached
    target = url("/c/", "client conditional", h="Cache-Control: max-age=60", etag='"abc"')
    get(sc, target)
    status, headers, body = get(sc, target, 'If-None-Match: "x", W/"abc"')
    assert status == 304 and body == b"" and headers["x-cache"] == "HIT"
    assert headers["etag"] == '"abc"' and "content-length" not in headers
    assert get(sc, target, 'If-None-Match: "other"')[0] == 200
    assert app.count(target) == 1


def test_a_requests_no_cache_and_no_store_go_upstream(cached):
    sc, app = cached
    target = url("/c/", "request directives", h="Cache-Control: max-age=60")
    first = get(sc, target)
    assert get(sc, target, "Cache-Control: no-cache")[1]["x-cache"] == "MISS"     # refetched
    assert get(sc, target, "Pragma: no-cache")[1]["x-cache"] == "MISS"
    assert get(sc, target, "Cache-Control: no-store")[1]["x-cache"] == "MISS"
    assert get(sc, target, "Cache-Control: max-age=0")[1]["x-cache"] == "MISS"
    assert get(sc, target)[1]["x-cache"] == "HIT"
    assert app.count(target) == 5
    assert b"n=" in first[2]


def test_only_if_cached_gets_a_504_when_nothing_is_stored(cached):
    sc, app = cached
    target = url("/c/", "only-if-cached")
    status, _, body = get(sc, target, "Cache-Control: only-if-cached")
    assert status == 504 and app.count(target) == 0
    get(sc, target)
    assert get(sc, target, "Cache-Control: only-if-cached")[1]["x-cache"] == "HIT"


def test_an_unsafe_request_that_succeeds_removes_the_stored_response(cached):
    sc, app = cached
    target = url("/c/", "invalidate", h="Cache-Control: max-age=60")
    get(sc, target)
    assert get(sc, target)[1]["x-cache"] == "HIT"
    with RawClient(sc.inbound, timeout=5) as c:
        c.send(b"POST %s HTTP/1.1\r\nHost: cache.test\r\nContent-Length: 2\r\n\r\nhi" % target.encode())
        assert c.read_response()[0] == 200
    assert get(sc, target)[1]["x-cache"] == "MISS"
    assert app.count(target) == 3


def test_the_routes_response_edits_apply_to_hits(cached):
    sc, app = cached
    target = url("/edited/", "edits")
    miss = get(sc, target)
    hit = get(sc, target)
    for headers in (miss[1], hit[1]):
        assert "server" not in headers and headers["x-route"] == "edited"
    assert hit[1]["x-cache"] == "HIT"


def test_the_least_recently_used_response_is_evicted_past_max_total(cached):
    sc, app = cached
    # about 3.5-4 KiB each as stored (body, head, overhead): two fit in max_total 8 KiB
    a, b, c = (url("/small/", "lru " + n, size="3000") for n in "abc")
    get(sc, a)
    get(sc, b)
    assert get(sc, a)[1]["x-cache"] == "HIT"       # a is now the most recently used
    get(sc, c)                                      # evicts b
    assert get(sc, a)[1]["x-cache"] == "HIT"
    assert get(sc, c)[1]["x-cache"] == "HIT"
    assert get(sc, b)[1]["x-cache"] == "MISS"
    assert [app.count(t) for t in (a, b, c)] == [1, 2, 1]


@pytest.mark.parametrize("chunked", ["1", "0"])
def test_a_body_larger_than_max_entry_passes_through_intact_and_is_not_stored(cached, chunked):
    sc, app = cached
    size = 300000                       # max_entry is 64 KiB on this route
    target = url("/bounded/", "large " + chunked, size=str(size), chunked=chunked)
    want = hashlib.sha256((bytes(range(256)) * (size // 256 + 1))[:size]).hexdigest()
    for _ in range(2):
        status, headers, body = get(sc, target)
        assert status == 200 and headers["x-cache"] == "MISS"
        assert len(body) == size and hashlib.sha256(body).hexdigest() == want
    assert app.count(target) == 2
    small = url("/bounded/", "fits " + chunked, size="60000", chunked=chunked)
    body = get(sc, small)[2]
    status, headers, again = get(sc, small)
    assert headers["x-cache"] == "HIT" and again == body and len(body) == 60000


def _burst(sc, target, n):
    with concurrent.futures.ThreadPoolExecutor(n) as pool:
        return list(pool.map(lambda _: get(sc, target), range(n)))


def test_concurrent_misses_make_one_upstream_request(cached):
    sc, app = cached
    target = url("/c/", "coalesce", h="Cache-Control: max-age=60", delay="0.5")
    results = _burst(sc, target, 10)
    assert app.count(target) == 1
    assert all(r[0] == 200 for r in results) and len({r[2] for r in results}) == 1
    assert sorted(r[1]["x-cache"] for r in results) == ["HIT"] * 9 + ["MISS"]


def test_waiters_go_upstream_themselves_when_the_response_may_not_be_stored(cached):
    sc, app = cached
    target = url("/c/", "coalesce private", h="Cache-Control: private", delay="0.3")
    results = _burst(sc, target, 6)
    assert all(r[0] == 200 and r[1]["x-cache"] == "MISS" for r in results)
    assert len({r[2] for r in results}) == 6           # each its own response
    assert app.count(target) == 6


def test_a_hung_fetch_delays_a_waiting_miss_once_by_the_coalescing_timeout(cached):
    """Waits out COALESCE_TIMEOUT (5 s), which is what this test is about."""
    sc, app = cached
    target = url("/c/", "hung leader", h="Cache-Control: max-age=60", delay_first="6.5")
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        leader = pool.submit(get, sc, target)          # its upstream answers after 6.5 s
        time.sleep(0.3)
        started = time.monotonic()
        status, headers, _ = get(sc, target)
        waited = time.monotonic() - started
        assert status == 200 and headers["x-cache"] == "MISS" and 4.0 <= waited < 6.0
        # it fetched and stored in the hung one's place: the next miss waits no more
        started = time.monotonic()
        assert get(sc, target)[1]["x-cache"] == "HIT" and time.monotonic() - started < 1.0
        assert leader.result()[0] == 200
    assert app.count(target) == 2


def test_a_client_that_does_not_read_gets_no_more_answers_from_the_store_meanwhile(cached):
    sc, app = cached
    target = url("/bounded/", "backpressure", size="60000")
    get(sc, target)
    worker = sc.worker_pids()[0]

    def rss_kib():
        with open("/proc/%d/status" % worker) as f:
            return int(re.search(r"VmRSS:\s+(\d+)", f.read()).group(1))

    before = rss_kib()
    n = 400                    # 400 pipelined requests: 24 MB of answers if all were written
    with RawClient(sc.inbound, timeout=10) as c:
        c.send(("GET %s HTTP/1.1\r\nHost: cache.test\r\n\r\n" % target).encode() * n)
        time.sleep(1.0)
        grown = rss_kib() - before
        bodies = set()
        for _ in range(n):
            status, headers, body = c.read_response()
            assert status == 200 and headers["x-cache"] == "HIT"
            bodies.add(body)
    assert len(bodies) == 1 and len(bodies.pop()) == 60000
    assert grown < 8 * 1024, "the worker buffered %d KiB for a client that did not read" % grown
    assert app.count(target) == 1


def test_an_http_1_0_client_gets_its_hit_and_the_close(cached):
    sc, app = cached
    target = url("/c/", "http 1.0")
    get(sc, target)
    with RawClient(sc.inbound, timeout=5) as c:
        c.send(b"GET %s HTTP/1.0\r\nHost: cache.test\r\n\r\n" % target.encode())
        status, headers, body = c.read_response()
        assert status == 200 and headers["x-cache"] == "HIT" and headers["connection"] == "close"
        assert c.is_closed()
    with RawClient(sc.inbound, timeout=5) as c:
        c.send(b"GET %s HTTP/1.0\r\nHost: cache.test\r\nConnection: keep-alive\r\n\r\n" % target.encode())
        assert c.read_response()[1]["connection"] == "keep-alive"
        c.send(b"GET %s HTTP/1.0\r\nHost: cache.test\r\nConnection: keep-alive\r\n\r\n" % target.encode())
        assert c.read_response()[1]["x-cache"] == "HIT"


def test_cache_results_are_counted_and_logged(cached):
    sc, app = cached
    target = url("/c/", "metrics")
    _, before = scrape(sc)
    get(sc, target)
    get(sc, target)
    get(sc, target)
    get(sc, url("/c/", "metrics"), "Cache-Control: no-store")
    _, text = scrape(sc)
    name = "sidecar_cache_lookups_total"
    for result, n in (("hit", 2), ("miss", 1), ("bypass", 1)):
        assert total(text, name, route="cached", result=result) - \
            total(before, name, route="cached", result=result) == n, result
    assert total(text, "sidecar_requests_total", route="cached", code="200") >= 4
    time.sleep(0.3)                                    # the access log's writer thread
    lines = [json.loads(x) for x in sc.access_log.read_text().splitlines()]
    mine = [x["cache"] for x in lines if x["path"] == target]
    assert mine == ["miss", "hit", "hit", "bypass"]
    assert all(x["cache"] is None for x in lines if x["route"] == "plain")
    hits = [x for x in lines if x["path"] == target and x["cache"] == "hit"]
    assert all(x["upstream"] is None and x["status"] == 200 and x["bytes_sent"] > 0 for x in hits)


def test_a_reload_keeps_the_entries_of_unchanged_routes_and_drops_changed_ones():
    routes = [{"name": "kept", "match": {"path_prefix": "/kept/"}, "cache": {"ttl": "30s"}},
              {"name": "changed", "match": {"path_prefix": "/changed/"}, "cache": {"ttl": "30s"}}]
    with HttpApp() as app, SidecarProcess(app=app.address, extra={"routes": routes}) as sc:
        kept, changed = url("/kept/", "reload"), url("/changed/", "reload")
        for target in (kept, changed):
            get(sc, target)
            assert get(sc, target)[1]["x-cache"] == "HIT"
        sc.config["routes"][1]["cache"]["ttl"] = "20s"
        sc.config["routes"].append({"name": "new", "match": {"path_prefix": "/new/"}})
        sc.write_config()
        status, _, body = call(sc, "admin", "/reload", method="POST")
        assert status == 200, body
        assert get(sc, kept)[1]["x-cache"] == "HIT"
        assert get(sc, changed)[1]["x-cache"] == "MISS"
        assert [app.count(kept), app.count(changed)] == [1, 2]


def test_an_outbound_routes_cache_answers_before_a_service_endpoint_is_picked():
    with HttpApp() as one, HttpApp() as two:
        services = [{"name": "backend", "match": ["backend.local"],
                     "endpoints": ["%s:%d" % one.address, "%s:%d" % two.address]}]
        routes = [{"name": "out-cached", "direction": "outbound", "match": {"path_prefix": "/"},
                   "service": [{"name": "backend", "weight": 1}], "cache": {"ttl": "30s"}}]
        with SidecarProcess(extra={"services": services, "routes": routes}) as sc:
            target = url("/", "outbound")
            answers = []
            for _ in range(4):
                with RawClient(sc.outbound, timeout=5) as c:
                    c.send(b"GET %s HTTP/1.1\r\nHost: backend.local\r\n\r\n" % target.encode())
                    answers.append(c.read_response())
            assert [a[1]["x-cache"] for a in answers] == ["MISS", "HIT", "HIT", "HIT"]
            assert len({a[2] for a in answers}) == 1
            assert one.count(target) + two.count(target) == 1      # round robin never ran again
            _, text = scrape(sc)
            assert total(text, "sidecar_cache_lookups_total", route="out-cached", result="hit") == 3
            # hits carry the service whose response they are, and no upstream
            assert total(text, "sidecar_requests_total", route="out-cached", service="backend") == 4


def test_a_retried_status_is_never_stored_and_the_retrys_response_is():
    with HttpUpstream(first_try_fails(503)) as flaky:
        svc = service("backend", [flaky], retries={"attempts": 1, "on": [503]})
        routes = [{"name": "out-retried", "direction": "outbound", "match": {"path_prefix": "/"},
                   "service": [{"name": "backend", "weight": 1}], "cache": {"ttl": "30s"}}]
        with SidecarProcess(extra={"services": [svc], "routes": routes}) as sc:
            answers = []
            for _ in range(3):
                with RawClient(sc.outbound, timeout=5) as c:
                    c.send(b"GET /item HTTP/1.1\r\nHost: backend.local\r\n\r\n")
                    answers.append(c.read_response())
            assert [(a[0], a[1]["x-cache"]) for a in answers] == [(200, "MISS"), (200, "HIT"), (200, "HIT")]
            assert {a[2] for a in answers} == {b"GET /item 0"}
            assert len(flaky.requests) == 2         # the 503 and its retry, then only hits
            _, text = scrape(sc)
            assert total(text, "sidecar_upstream_retries_total", service="backend", reason="status") == 1
            assert total(text, "sidecar_cache_lookups_total", route="out-retried", result="hit") == 2
