"""Retries of requests to a service (services.*.retries), through the real sidecar, against
upstreams that fail, hang and reset on purpose: per-try timeouts, retriable statuses,
connect failures and resets; only idempotent requests (or ones not sent at all) and only
while their body fits the replay buffer; backoff with jitter; the request timeout over all
tries; the retry budget stopping a retry storm; URX and the retry counters."""
import statistics
import threading
import time

from tests.integration.test_metrics import total
from tests.support.admin import scrape
from tests.support.http_client import RawClient
from tests.support.servers import HttpUpstream, closed_port, http_response
from tests.support.services import access_log, concurrent, request, service, with_access_log
from tests.support.sidecar_process import SidecarProcess


def hang(request, conn):
    """Never answers: blocks until the sidecar closes the connection."""
    conn.recv(65536)
    return False


def first_try_fails(status=503, close=False):
    """A responder that fails the first try of each request (by its x-request-id, the same
    on every try) with `status`, or by closing the connection without a byte, and answers
    the next try 200 with "METHOD PATH BODY-LENGTH"."""
    seen, lock = set(), threading.Lock()

    def respond(r, conn):
        with lock:
            first = r.headers["x-request-id"] not in seen
            seen.add(r.headers["x-request-id"])
        if first and close:
            return False
        body = b"%s %s %d" % (r.method.encode(), r.path.encode(), len(r.body))
        conn.sendall(http_response(status if first else 200, body))
    return respond


def tries_by_id(upstream):
    """x-request-id -> the requests of that exchange the upstream saw, in order."""
    out = {}
    for r in upstream.requests:
        out.setdefault(r.headers["x-request-id"], []).append(r)
    return out


# --- per-try timeout ------------------------------------------------------------------------

def test_per_try_timeout_then_success_on_the_second_endpoint(tmp_path):
    log = tmp_path / "access.log"
    with HttpUpstream(hang) as stuck, HttpUpstream() as good:
        svc = service("svc", [stuck, good],   # round robin: the first try goes to `stuck`
                      retries={"attempts": 1, "on": ["timeout"], "per_try_timeout": "200ms"})
        with SidecarProcess(extra=with_access_log({"services": [svc]}, log)) as sc:
            status, _, body, took = request(sc.outbound, "svc.local", "/slow-then-fast")
            assert (status, body) == (200, b"ok\n")
            assert 0.2 <= took < 0.6, took
            assert stuck.paths() == ["/slow-then-fast"] and good.paths() == ["/slow-then-fast"]
            (line,) = access_log(log, 1)
            assert line["retries"] == 1 and line["response_flags"] == "-" and line["status"] == 200
            assert line["upstream"] == "%s:%d" % good.address
            _, text = scrape(sc)
            assert total(text, "sidecar_upstream_retries_total", service="svc", reason="timeout") == 1


def test_per_try_timeout_without_a_retry_left_is_504_ut(tmp_path):
    log = tmp_path / "access.log"
    with HttpUpstream(hang) as stuck:
        svc = service("svc", [stuck], retries={"attempts": 1, "on": ["timeout"],
                                               "per_try_timeout": "150ms"})
        with SidecarProcess(extra=with_access_log({"services": [svc]}, log)) as sc:
            status, _, body, took = request(sc.outbound, "svc.local", "/never")
            assert status == 504 and 0.3 <= took < 0.8, (status, took)
            assert len(stuck.requests) == 2
            (line,) = access_log(log, 1)
            assert line["retries"] == 1 and set(line["response_flags"].split(",")) == {"UT", "URX"}


def test_request_timeout_bounds_all_tries_together():
    with HttpUpstream(hang) as stuck:
        svc = service("svc", [stuck], timeouts={"request": "400ms"},
                      retries={"attempts": 5, "on": ["timeout"], "per_try_timeout": "150ms"})
        with SidecarProcess(extra={"services": [svc]}) as sc:
            status, _, _, took = request(sc.outbound, "svc.local", "/never")
            assert status == 504 and 0.38 <= took < 0.7, (status, took)
            assert 2 <= len(stuck.requests) <= 3, stuck.requests


# --- statuses, methods and the replay buffer ------------------------------------------------------

def test_retriable_status_retries_idempotent_requests_only_and_bodies_only_within_the_replay_buffer(tmp_path):
    log = tmp_path / "access.log"
    with HttpUpstream(first_try_fails(503)) as app:
        svc = service("svc", [app], retries={"attempts": 1, "on": [503], "replay_buffer": "4KiB"})
        with SidecarProcess(extra=with_access_log({"services": [svc]}, log)) as sc:
            small, large = b"s" * 1000, b"L" * 10000
            assert request(sc.outbound, "svc.local", "/get")[:3:2] == (200, b"GET /get 0")
            assert request(sc.outbound, "svc.local", "/delete", "DELETE")[:3:2] == (200, b"DELETE /delete 0")
            # PUT is idempotent: its body is kept and sent again whole.
            assert request(sc.outbound, "svc.local", "/put", "PUT", small)[:3:2] == (200, b"PUT /put 1000")
            # POST is not: a 503 after it was sent is the answer.
            assert request(sc.outbound, "svc.local", "/post", "POST", small)[::2] == (503, b"POST /post 1000")
            # A body past the replay buffer cannot be sent again either.
            assert request(sc.outbound, "svc.local", "/put-large", "PUT", large)[::2] == (503, b"PUT /put-large 10000")
            tries = {rs[0].path: rs for rs in tries_by_id(app).values()}
            assert {p: len(rs) for p, rs in tries.items()} == {
                "/get": 2, "/delete": 2, "/put": 2, "/post": 1, "/put-large": 1}
            assert [r.body for r in tries["/put"]] == [small, small]
            lines = {l["path"]: l for l in access_log(log, 5)}
            assert {p: (l["retries"], l["response_flags"]) for p, l in lines.items()} == {
                "/get": (1, "-"), "/delete": (1, "-"), "/put": (1, "-"), "/post": (0, "-"),
                "/put-large": (0, "-")}
            _, text = scrape(sc)
            assert total(text, "sidecar_upstream_retries_total", service="svc", reason="status") == 3


def test_5xx_and_gateway_error_name_groups_of_statuses():
    with HttpUpstream(first_try_fails(504)) as app:
        svc = service("svc", [app], retries={"attempts": 1, "on": ["gateway-error"]})
        with SidecarProcess(extra={"services": [svc]}) as sc:
            assert request(sc.outbound, "svc.local", "/gw")[0] == 200
    with HttpUpstream(first_try_fails(500)) as app:
        svc = service("svc", [app], retries={"attempts": 1, "on": ["gateway-error"]})
        with SidecarProcess(extra={"services": [svc]}) as sc:
            assert request(sc.outbound, "svc.local", "/not-a-gateway-error")[0] == 500


def test_retries_used_up_pass_the_last_response_on_with_urx(tmp_path):
    log = tmp_path / "access.log"
    with HttpUpstream(lambda r, c: c.sendall(http_response(503, b"down\n"))) as app:
        svc = service("svc", [app], retries={"attempts": 2, "on": [503]})
        with SidecarProcess(extra=with_access_log({"services": [svc]}, log)) as sc:
            assert request(sc.outbound, "svc.local", "/down")[::2] == (503, b"down\n")
            assert len(app.requests) == 3
            # The 503s came whole: their connection served every try.
            assert {r.number for r in app.requests} == {1}
            (line,) = access_log(log, 1)
            assert (line["retries"], line["response_flags"]) == (2, "URX")
            _, text = scrape(sc)
            assert total(text, "sidecar_requests_total", service="svc", code="503", response_flags="URX") == 1


# --- connect failures and resets --------------------------------------------------------------------

def test_post_is_retried_when_nothing_of_it_was_sent(tmp_path):
    """A connect failure sent nothing: any method may go again, whatever the size of its
    body (it is still queued, not replayed)."""
    log = tmp_path / "access.log"
    with HttpUpstream(lambda r, c: c.sendall(http_response(200, b"got %d" % len(r.body)))) as good:
        svc = service("svc", [("127.0.0.1", closed_port()), good],
                      retries={"attempts": 1, "on": ["connect-failure"]})
        with SidecarProcess(extra=with_access_log({"services": [svc]}, log)) as sc:
            body = bytes(range(256)) * 400       # 100 KiB: more than the replay buffer
            assert request(sc.outbound, "svc.local", "/post", "POST", body)[::2] == (200, b"got 102400")
            assert [(r.method, r.body == body) for r in good.requests] == [("POST", True)]
            (line,) = access_log(log, 1)
            assert (line["retries"], line["response_flags"]) == (1, "-")
            _, text = scrape(sc)
            assert total(text, "sidecar_upstream_retries_total", service="svc", reason="connect-failure") == 1


def test_connect_failure_on_every_endpoint_is_503_uf_urx(tmp_path):
    log = tmp_path / "access.log"
    svc = service("svc", [("127.0.0.1", closed_port()), ("127.0.0.1", closed_port())],
                  retries={"attempts": 1, "on": ["connect-failure"]})
    with SidecarProcess(extra=with_access_log({"services": [svc]}, log)) as sc:
        status, _, body, _ = request(sc.outbound, "svc.local", "/nowhere")
        assert (status, body) == (503, b"upstream connect error\n")
        (line,) = access_log(log, 1)
        assert (line["retries"], line["response_flags"]) == (1, "UF,URX")


def test_reset_before_the_response_retries_get_but_not_post():
    with HttpUpstream(first_try_fails(close=True)) as app:
        svc = service("svc", [app], retries={"attempts": 1, "on": ["reset"]})
        with SidecarProcess(extra={"services": [svc]}) as sc:
            assert request(sc.outbound, "svc.local", "/get")[::2] == (200, b"GET /get 0")
            assert request(sc.outbound, "svc.local", "/post", "POST", b"x" * 10)[0] == 502
            assert {rs[0].path: len(rs) for rs in tries_by_id(app).values()} == {"/get": 2, "/post": 1}
            _, text = scrape(sc)
            assert total(text, "sidecar_upstream_retries_total", service="svc", reason="reset") == 1


def test_no_retry_once_bytes_of_the_response_reached_the_client():
    def partial(r, conn):
        if r.path == "/interim":
            conn.sendall(b"HTTP/1.1 100 Continue\r\n\r\n")
            time.sleep(0.05)
        else:
            conn.sendall(b"HTTP/1.1 200 OK\r\ncontent-length: 100\r\n\r\n" + b"a" * 10)
            time.sleep(0.05)
        return False

    with HttpUpstream(partial) as app:
        svc = service("svc", [app], retries={"attempts": 2, "on": ["reset", "connect-failure"]})
        with SidecarProcess(extra={"services": [svc]}) as sc:
            with RawClient(sc.outbound) as c:
                c.send(b"GET /cut HTTP/1.1\r\nHost: svc.local\r\n\r\n")
                status, headers, _ = c.read_head()
                assert status == 200 and headers["content-length"] == "100"
                assert c.is_closed(timeout=3)
            with RawClient(sc.outbound) as c:
                c.send(b"PUT /interim HTTP/1.1\r\nHost: svc.local\r\nExpect: 100-continue\r\n"
                       b"content-length: 2\r\n\r\nhi")
                assert c.read_head()[0] == 100
                assert c.read_response()[0] == 502
            assert app.paths() == ["/cut", "/interim"]


# --- backoff ----------------------------------------------------------------------------------------

def test_backoff_is_exponential_with_jitter_within_its_bounds():
    """The nth retry waits a random time up to min(max, base * (2^n - 1)): with base 40 ms
    and max 100 ms, up to 40, 100 and 100 ms."""
    with HttpUpstream(lambda r, c: c.sendall(http_response(503))) as app:
        svc = service("svc", [app], retries={"attempts": 3, "on": [503],
                                             "backoff": {"base": "40ms", "max": "100ms"}})
        with SidecarProcess(extra={"services": [svc]}) as sc:
            for i in range(15):
                assert request(sc.outbound, "svc.local", "/b%d" % i)[0] == 503
    gaps = [[], [], []]
    for tries in tries_by_id(app).values():
        assert len(tries) == 4
        for n in range(3):
            gaps[n].append(tries[n + 1].at - tries[n].at)
    slack = 0.04        # a sweep's granularity, the 503's round trip, a busy machine
    assert max(gaps[0]) <= 0.04 + slack and max(gaps[1]) <= 0.1 + slack and max(gaps[2]) <= 0.1 + slack, gaps
    assert statistics.mean(gaps[0]) < statistics.mean(gaps[1]), gaps      # grows
    assert max(gaps[1]) - min(gaps[1]) > 0.02, gaps                         # jittered, not fixed


# --- the retry budget ---------------------------------------------------------------------------------

def test_retry_budget_stops_a_retry_storm(tmp_path):
    """40 requests at once against a service that answers every request 503 after 200 ms:
    with 3 attempts each, unbounded retries would triple the load on the failing service.
    The budget (20% of the requests in flight) holds the retries in flight to 8, and most
    requests end without a retry, with URX."""
    n = 40
    lock = threading.Lock()
    seen = set()
    retries_now = [0, 0]      # in flight, most at once

    def overloaded(r, conn):
        rid = r.headers["x-request-id"]
        with lock:
            retry = rid in seen
            seen.add(rid)
            if retry:
                retries_now[0] += 1
                retries_now[1] = max(retries_now[1], retries_now[0])
        time.sleep(0.2)
        with lock:
            if retry:
                retries_now[0] -= 1
        conn.sendall(http_response(503, b"overloaded\n"))

    log = tmp_path / "access.log"
    with HttpUpstream(overloaded) as app:
        svc = service("svc", [app], retries={"attempts": 3, "on": [503], "budget": "20%",
                                             "min_concurrency": 2})
        with SidecarProcess(extra=with_access_log({"services": [svc]}, log)) as sc:
            barrier = threading.Barrier(n)

            def client(i):
                with RawClient(sc.outbound, timeout=20) as c:
                    barrier.wait(10)
                    c.send(b"GET /storm-%d HTTP/1.1\r\nHost: svc.local\r\n\r\n" % i)
                    return c.read_response()[0]

            assert concurrent(client, [(i,) for i in range(n)]) == [503] * n
            retries = len(app.requests) - n
            assert retries_now[1] <= n * 0.2, retries_now
            assert 1 <= retries <= n * 0.2 * 3, retries     # unbounded: n * 3 = 120
            _, text = scrape(sc)
            assert total(text, "sidecar_upstream_retries_total", service="svc") == retries
            assert total(text, "sidecar_requests_total", service="svc", response_flags="URX") == n
            assert sum(l["retries"] for l in access_log(log, n)) == retries
