"""Circuit breaking per service (services.*.circuit_breaker) through the real sidecar:
max_requests and max_pending overflow answer 503 at once with flag UO, the breaker's gauge
opens and closes, and max_connections holds for all of a service's endpoints together."""
import threading
import time

from tests.integration.test_metrics import total
from tests.support.admin import scrape
from tests.support.servers import HttpUpstream, http_response
from tests.support.services import access_log, concurrent, request, service, with_access_log
from tests.support.sidecar_process import SidecarProcess


def slow(seconds):
    def respond(r, conn):
        time.sleep(seconds)
        conn.sendall(http_response(200, r.path.encode()))
    return respond


def breaker_open(sc, name="svc"):
    _, text = scrape(sc)
    return total(text, "sidecar_circuit_breaker_open", service=name)


def test_requests_past_max_requests_are_503_uo_at_once_and_the_breaker_opens_and_closes(tmp_path):
    log = tmp_path / "access.log"
    with HttpUpstream(slow(0.4)) as app:
        svc = service("svc", [app], circuit_breaker={"max_requests": 2})
        with SidecarProcess(extra=with_access_log({"services": [svc]}, log)) as sc:
            assert breaker_open(sc) == 0
            in_flight = threading.Thread(target=concurrent, daemon=True, args=(
                request, [(sc.outbound, "svc.local", "/a"), (sc.outbound, "svc.local", "/b")]))
            in_flight.start()
            time.sleep(0.15)
            assert breaker_open(sc) == 1
            status, _, body, took = request(sc.outbound, "svc.local", "/over")
            assert (status, body) == (503, b"upstream overflow (circuit breaker)\n") and took < 0.1, took
            in_flight.join(5)
            assert breaker_open(sc) == 0
            assert request(sc.outbound, "svc.local", "/after")[0] == 200
            assert sorted(app.paths()) == ["/a", "/after", "/b"]
            lines = {l["path"]: l for l in access_log(log, 4)}
            assert lines["/over"]["response_flags"] == "UO" and lines["/over"]["status"] == 503
            assert lines["/a"]["response_flags"] == "-"
            _, text = scrape(sc)
            assert total(text, "sidecar_requests_total", service="svc", code="503", response_flags="UO") == 1


def test_requests_past_max_pending_are_503_uo_and_the_breaker_shows_the_full_queue(tmp_path):
    log = tmp_path / "access.log"
    with HttpUpstream(slow(0.4)) as app:
        svc = service("svc", [app], circuit_breaker={"max_connections": 1, "max_pending": 1})
        with SidecarProcess(extra=with_access_log({"services": [svc]}, log)) as sc:
            waiting = threading.Thread(target=concurrent, daemon=True, kwargs={"stagger": 0.1}, args=(
                request, [(sc.outbound, "svc.local", "/on-the-connection"),
                          (sc.outbound, "svc.local", "/pending")]))
            waiting.start()
            time.sleep(0.25)
            assert breaker_open(sc) == 1        # the pending queue is full
            status, _, _, took = request(sc.outbound, "svc.local", "/overflow")
            assert status == 503 and took < 0.1, took
            waiting.join(5)
            assert breaker_open(sc) == 0
            assert app.paths() == ["/on-the-connection", "/pending"] and app.count == 1
            flags = {l["path"]: l["response_flags"] for l in access_log(log, 3)}
            assert flags == {"/on-the-connection": "-", "/pending": "-", "/overflow": "UO"}


def test_max_connections_holds_for_all_endpoints_of_the_service_together():
    """Two endpoints, max_connections 1: a request for the second endpoint waits while the
    first one's connection is busy, and that connection is closed (not kept idle) so the
    second endpoint can have one."""
    with HttpUpstream(slow(0.15)) as a, HttpUpstream(slow(0.15)) as b:
        svc = service("svc", [a, b], circuit_breaker={"max_connections": 1})
        with SidecarProcess(extra={"services": [svc]}) as sc:
            started = time.monotonic()
            results = concurrent(request, [(sc.outbound, "svc.local", "/r%d" % i) for i in range(4)],
                                 stagger=0.02)
            elapsed = time.monotonic() - started
            assert [r[0] for r in results] == [200] * 4, results
            assert len(a.requests) == 2 and len(b.requests) == 2
            # Never two requests in flight across both: one connection for the service.
            spans = sorted((r.at, r.at + 0.15) for r in a.requests + b.requests)
            assert all(later[0] >= earlier[1] - 0.02 for earlier, later in zip(spans, spans[1:])), spans
            assert elapsed >= 0.55, elapsed
            # A's waiting request took A's connection first; then that connection closed
            # instead of idling, and B connected.
            assert a.count == 1 and b.count == 1
            assert min(r.at for r in b.requests) >= max(r.at for r in a.requests) + 0.13
