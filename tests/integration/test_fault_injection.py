"""Fault injection on a real `sidecar run`: abort and delay by percentage (statistically,
over many requests), the aborted requests never reaching the app, and the FI/DI flags in
the access log and sidecar_requests_total."""
import json
import time

from tests.integration.test_metrics import total
from tests.support.admin import scrape
from tests.support.http_client import RawClient
from tests.support.servers import HttpApp
from tests.support.sidecar_process import SidecarProcess

N = 400


def test_abort_percentage_holds_and_aborted_requests_never_reach_the_app(tmp_path):
    routes = [{"name": "flaky", "fault": {"abort": {"status": 503, "percent": 30}}}]
    log = tmp_path / "access.log"
    extra = {"routes": routes, "telemetry": {"access_log": {"path": str(log)}}}
    with HttpApp() as app, SidecarProcess(app=app.address, extra=extra) as sc:
        statuses = []
        with RawClient(sc.inbound, timeout=10) as c:
            for i in range(N):
                c.send(b"GET /r%d HTTP/1.1\r\nHost: a\r\n\r\n" % i)
                status, headers, body = c.read_response()
                statuses.append(status)
        aborted = statuses.count(503)
        # binomial(400, 0.3): mean 120, sd 9.2; +-5 sd
        assert 74 <= aborted <= 166, aborted
        assert statuses.count(200) == N - aborted
        assert len(app.requests) == N - aborted
        _, text = scrape(sc)
        assert total(text, "sidecar_requests_total", route="flaky", code="503", response_flags="FI") == aborted
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline and len(log.read_text().splitlines()) < N:
            time.sleep(0.1)
        lines = [json.loads(l) for l in log.read_text().splitlines()]
        assert sum(1 for l in lines if l["response_flags"] == "FI" and l["status"] == 503) == aborted


def test_delay_percentage_and_the_delay_itself(tmp_path):
    routes = [{"name": "slow", "fault": {"delay": {"duration": "150ms", "percent": 50}}}]
    log = tmp_path / "access.log"
    extra = {"routes": routes, "telemetry": {"access_log": {"path": str(log)}}}
    n = 60
    with HttpApp() as app, SidecarProcess(app=app.address, extra=extra) as sc:
        with RawClient(sc.inbound, timeout=10) as c:
            for i in range(n):
                c.send(b"GET /d%d HTTP/1.1\r\nHost: a\r\n\r\n" % i)
                assert c.read_response()[0] == 200
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline and len(log.read_text().splitlines()) < n:
            time.sleep(0.1)
        lines = [json.loads(l) for l in log.read_text().splitlines()]
        delayed = [l for l in lines if l["response_flags"] == "DI"]
        assert len(lines) == n and all(l["duration_ms"] >= 150 for l in delayed)
        assert 12 <= len(delayed) <= 48, len(delayed)     # binomial(60, 0.5): mean 30, sd 3.9
        assert {l["response_flags"] for l in lines} <= {"DI", "-"}
        _, text = scrape(sc)
        assert total(text, "sidecar_requests_total", route="slow", response_flags="DI") == len(delayed)


def test_a_delayed_request_body_waits_and_arrives_whole(tmp_path):
    routes = [{"name": "slow", "fault": {"delay": {"duration": "200ms", "percent": 100}}}]
    with HttpApp() as app, SidecarProcess(app=app.address, extra={"routes": routes}) as sc:
        with RawClient(sc.inbound, timeout=10) as c:
            t = time.monotonic()
            body = b"z" * 100000
            c.send(b"POST /echo HTTP/1.1\r\nHost: a\r\nContent-Length: %d\r\n\r\n" % len(body) + body)
            status, _, echoed = c.read_response()
            assert status == 200 and echoed == body and time.monotonic() - t >= 0.2


def test_delay_then_abort(tmp_path):
    routes = [{"name": "both", "fault": {"delay": {"duration": "100ms", "percent": 100},
                                         "abort": {"status": 429, "percent": 100}}}]
    with HttpApp() as app, SidecarProcess(app=app.address, extra={"routes": routes}) as sc:
        with RawClient(sc.inbound, timeout=10) as c:
            t = time.monotonic()
            c.send(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n")
            status, _, body = c.read_response()
            assert status == 429 and body == b"fault filter abort\n" and time.monotonic() - t >= 0.1
            c.send(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n")         # kept alive
            assert c.read_response()[0] == 429
        assert not app.requests
        _, text = scrape(sc)
        assert total(text, "sidecar_requests_total", route="both", response_flags="DI,FI") == 2


def test_an_abort_with_204_has_no_body(tmp_path):
    routes = [{"name": "empty", "fault": {"abort": {"status": 204, "percent": 100}}}]
    with HttpApp() as app, SidecarProcess(app=app.address, extra={"routes": routes}) as sc:
        with RawClient(sc.inbound, timeout=10) as c:
            c.send(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n" * 2)
            for _ in range(2):
                status, headers, body = c.read_response()
                assert status == 204 and body == b"" and "content-length" not in headers
