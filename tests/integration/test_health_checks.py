"""Active health checks (services.*.health_check) through the real sidecar: each endpoint
is probed every interval; after `unhealthy` failed probes in a row it takes no requests,
after `healthy` passed ones it takes them again; a service with no healthy endpoint
answers 503 UH; probes say who they are and honour expected_statuses."""
import threading
import time

from tests.integration.test_metrics import total
from tests.support.admin import scrape
from tests.support.servers import HttpUpstream, http_response
from tests.support.services import access_log, request, service, with_access_log
from tests.support.sidecar_process import SidecarProcess

PROBE_AGENT = "bpf-sidecar-health-check"


class Checked(HttpUpstream):
    """An upstream whose /healthz answers `health_status`; records the probes' results."""

    def __init__(self, health_status=200):
        super().__init__(self._respond)
        self.health_status = health_status
        self.probes = []          # (time, status answered)
        self.probe_heads = []
        self.cond = threading.Condition()

    def _respond(self, r, conn):
        if r.headers.get("user-agent") == PROBE_AGENT:
            with self.cond:
                status = self.health_status
                self.probes.append((time.monotonic(), status))
                self.probe_heads.append(r)
                self.cond.notify_all()
            conn.sendall(http_response(status))
            return False
        conn.sendall(http_response(200, b"served\n"))

    def set_health(self, status):
        """Answers `status` from now on; returns the number of probes answered so far."""
        with self.cond:
            self.health_status = status
            return len(self.probes)

    def wait_probes(self, n, timeout=3.0):
        with self.cond:
            assert self.cond.wait_for(lambda: len(self.probes) >= n, timeout), self.probes

    def proxied(self):
        return [r for r in self.requests if r.headers.get("user-agent") != PROBE_AGENT]


HC = {"path": "/healthz", "interval": "100ms", "unhealthy": 2, "healthy": 2, "timeout": "200ms"}


def served_by(sc, a, b, n=6):
    """Sends n requests; how many each of a and b served."""
    before_a, before_b = len(a.proxied()), len(b.proxied())
    for i in range(n):
        assert request(sc.outbound, "svc.local", "/x%d" % i)[0] == 200
    return len(a.proxied()) - before_a, len(b.proxied()) - before_b


def test_endpoint_leaves_after_unhealthy_failed_probes_and_returns_after_healthy_passed_ones():
    with Checked() as a, Checked() as b:
        svc = service("svc", [a, b], health_check=HC)
        with SidecarProcess(extra={"services": [svc]}) as sc:
            a.wait_probes(2)
            assert served_by(sc, a, b) == (3, 3)
            # One failed probe is not enough ...
            seen = a.set_health(503)
            a.wait_probes(seen + 1)
            assert served_by(sc, a, b, 2) == (1, 1)
            # ... the second one is.
            a.wait_probes(seen + 2)
            time.sleep(0.01)
            assert served_by(sc, a, b) == (0, 6)
            _, text = scrape(sc)
            assert total(text, "sidecar_upstream_endpoints", service="svc", state="unhealthy") == 1
            assert total(text, "sidecar_health_checks_total", service="svc", result="failed") >= 2
            # Healthy again after two passed probes, not one.
            seen = a.set_health(200)
            a.wait_probes(seen + 1)
            assert served_by(sc, a, b, 2) == (0, 2)
            a.wait_probes(seen + 2)
            time.sleep(0.01)
            assert served_by(sc, a, b) == (3, 3)
            log = sc.log()
        assert "endpoint %s:%d unhealthy (2 health checks failed)" % a.address in log
        assert "endpoint %s:%d healthy again (2 health checks passed)" % a.address in log


def test_no_healthy_endpoint_is_503_uh_until_one_recovers(tmp_path):
    log = tmp_path / "access.log"
    with Checked(503) as a:
        svc = service("svc", [a], health_check=dict(HC, unhealthy=1, healthy=1))
        with SidecarProcess(extra=with_access_log({"services": [svc]}, log)) as sc:
            a.wait_probes(1)
            time.sleep(0.01)
            status, _, body, _ = request(sc.outbound, "svc.local", "/none-healthy")
            assert (status, body) == (503, b"no healthy upstream for service svc\n")
            seen = a.set_health(200)
            a.wait_probes(seen + 1)
            time.sleep(0.01)
            assert request(sc.outbound, "svc.local", "/recovered")[0] == 200
            assert [r.path for r in a.proxied()] == ["/recovered"]
            lines = access_log(log, 2)
            assert [(l["status"], l["response_flags"]) for l in lines] == [(503, "UH"), (200, "-")]
            _, text = scrape(sc)
            assert total(text, "sidecar_requests_total", service="svc", response_flags="UH") == 1


def test_probes_name_themselves_and_honour_expected_statuses():
    with Checked(204) as a, Checked(404) as b:
        svc = service("svc", [a, b], health_check=dict(HC, host="health.svc", unhealthy=1,
                                                       expected_statuses=["200-299"]))
        with SidecarProcess(extra={"services": [svc]}) as sc:
            a.wait_probes(2)
            b.wait_probes(2)
            time.sleep(0.01)
            assert served_by(sc, a, b, 4) == (4, 0)     # 204 passes, 404 fails
            probe = a.probe_heads[0]
            assert (probe.method, probe.path) == ("GET", "/healthz")
            assert probe.headers["host"] == "health.svc" and probe.headers["connection"] == "close"
            # Probes come on their own connections, one each, none from the request pool.
            assert all(p.nth == 1 for p in a.probe_heads)


def test_probes_that_time_out_or_find_nothing_listening_fail():
    def silent(r, conn):
        if r.headers.get("user-agent") == PROBE_AGENT:
            conn.recv(65536)       # never answers a probe
            return False
        conn.sendall(http_response(200))

    with HttpUpstream(silent) as mute, Checked() as ok:
        svc = service("svc", [mute, ok], health_check=dict(HC, unhealthy=1, timeout="100ms"))
        with SidecarProcess(extra={"services": [svc]}) as sc:
            deadline = time.monotonic() + 3
            while time.monotonic() < deadline:
                _, text = scrape(sc)
                if total(text, "sidecar_upstream_endpoints", service="svc", state="unhealthy") == 1:
                    break
                time.sleep(0.05)
            else:
                raise AssertionError("the silent endpoint never became unhealthy")
            before = len([r for r in mute.requests if r.headers.get("user-agent") != PROBE_AGENT])
            for i in range(4):
                assert request(sc.outbound, "svc.local", "/t%d" % i)[0] == 200
            after = len([r for r in mute.requests if r.headers.get("user-agent") != PROBE_AGENT])
            assert after == before
