"""Outlier detection (services.*.outlier_detection) through the real sidecar: an endpoint
that fails consecutive_5xx times in a row (5xx responses or connect failures) leaves load
balancing for `ejection`, comes back, and is ejected longer when it fails again; at most
max_ejected of the endpoints are out at once; a reload keeps the ejection."""
import os
import subprocess
import sys
import time

from tests.integration.test_metrics import total
from tests.support.admin import admin_json, call, scrape
from tests.support.http_client import RawClient
from tests.support.servers import HttpUpstream, closed_port, http_response
from tests.support.services import request, service
from tests.support.sidecar_process import ROOT, SidecarProcess


def answer(status):
    return lambda r, conn: conn.sendall(http_response(status, b"%d\n" % status))


def send_for(sc, seconds, pause=0.01, host="svc.local"):
    """Sequential requests on one keep-alive connection for `seconds`: their statuses."""
    statuses = []
    deadline = time.monotonic() + seconds
    with RawClient(sc.outbound) as c:
        i = 0
        while time.monotonic() < deadline:
            c.send(b"GET /r%d HTTP/1.1\r\nHost: %s\r\n\r\n" % (i, host.encode()))
            statuses.append(c.read_response()[0])
            i += 1
            time.sleep(pause)
    return statuses


def gaps(times, longer_than=0.1):
    """The pauses between consecutive times longer than `longer_than`."""
    return [b - a for a, b in zip(times, times[1:]) if b - a > longer_than]


def test_failing_endpoint_is_ejected_comes_back_after_ejection_and_is_ejected_longer_next_time(tmp_path):
    with HttpUpstream(answer(500)) as bad, HttpUpstream(answer(200)) as good:
        svc = service("svc", [bad, good], outlier_detection={
            "consecutive_5xx": 3, "ejection": "400ms", "interval": "10s", "max_ejected": "50%"})
        with SidecarProcess(extra={"services": [svc]}) as sc:
            statuses = send_for(sc, 1.7)
            _, text = scrape(sc)
            # (a third ejection may have begun as the window closed)
            assert 2 <= total(text, "sidecar_outlier_ejections_total", service="svc") <= 3
            log = sc.log()
        # Ejected after 3 failures for 0.4 s, back, 3 failures again, ejected for 0.8 s.
        pauses = gaps([r.at for r in bad.requests])
        assert len(pauses) == 2, (pauses, len(bad.requests))
        assert 0.39 <= pauses[0] <= 0.55 and 0.79 <= pauses[1] <= 0.95, pauses
        assert len(bad.requests) >= 6 and statuses.count(500) == len(bad.requests)
        assert statuses.count(200) == len(good.requests) > len(bad.requests)
        assert "endpoint %s:%d ejected for 0.4s after 3 failures in a row (ejection 1)" % bad.address in log
        assert "endpoint %s:%d ejected for 0.8s after 3 failures in a row (ejection 2)" % bad.address in log
        assert "endpoint %s:%d back from ejection" % bad.address in log


def test_connect_failures_eject_an_endpoint():
    refused = ("127.0.0.1", closed_port())
    with HttpUpstream(answer(200)) as good:
        svc = service("svc", [refused, good], outlier_detection={
            "consecutive_5xx": 2, "ejection": "30s", "max_ejected": "50%"})
        with SidecarProcess(extra={"services": [svc]}) as sc:
            statuses = [request(sc.outbound, "svc.local", "/c%d" % i)[0] for i in range(12)]
            # Round robin: the refused endpoint takes the 1st and 3rd; then it is out.
            assert statuses == [503, 200, 503] + [200] * 9, statuses
            _, text = scrape(sc)
            assert total(text, "sidecar_upstream_endpoints", service="svc", state="ejected") == 1
            assert total(text, "sidecar_upstream_endpoints", service="svc", state="available") == 1
            (svc_stats,) = admin_json(sc, "/stats")["services"]
            assert svc_stats["service"] == "svc" and svc_stats["ejections"] == 1
            assert svc_stats["endpoints"] == {"available": 1, "ejected": 1, "unhealthy": 0}
            r = subprocess.run([sys.executable, "-m", "sidecar.cli", "stats", "-c", sc.config_path],
                               cwd=ROOT, capture_output=True, text=True, timeout=30,
                               env=dict(os.environ, COLUMNS="200"))
            assert r.returncode == 0 and "Upstream services" in r.stdout, r.stderr
            assert [l for l in r.stdout.splitlines() if " svc " in l], r.stdout


def test_at_most_max_ejected_endpoints_are_ejected_at_once():
    with HttpUpstream(answer(500)) as a, HttpUpstream(answer(500)) as b, HttpUpstream(answer(500)) as c:
        svc = service("svc", [a, b, c], outlier_detection={
            "consecutive_5xx": 3, "ejection": "30s", "max_ejected": "34%"})     # one of three
        with SidecarProcess(extra={"services": [svc]}) as sc:
            for i in range(21):
                assert request(sc.outbound, "svc.local", "/m%d" % i)[0] == 500
            # a failed 3 times first and is out; b and c failed as often but stay in.
            assert len(a.requests) == 3 and len(b.requests) + len(c.requests) == 18
            assert len(b.requests) == len(c.requests) == 9
            _, text = scrape(sc)
            assert total(text, "sidecar_outlier_ejections_total", service="svc") == 1
            assert total(text, "sidecar_upstream_endpoints", service="svc", state="ejected") == 1
            assert total(text, "sidecar_upstream_endpoints", service="svc", state="available") == 2


def test_a_success_ends_the_failure_streak():
    flip = {"n": 0}

    def sometimes(r, conn):
        flip["n"] += 1
        status = 200 if flip["n"] % 3 == 0 else 500     # never 3 failures in a row
        conn.sendall(http_response(status))

    with HttpUpstream(sometimes) as flaky:
        svc = service("svc", [flaky], outlier_detection={
            "consecutive_5xx": 3, "ejection": "30s", "max_ejected": "100%"})
        with SidecarProcess(extra={"services": [svc]}) as sc:
            for i in range(12):
                assert request(sc.outbound, "svc.local", "/s%d" % i)[0] in (200, 500)
            assert len(flaky.requests) == 12


def test_a_reload_keeps_the_ejection_of_an_endpoint_that_remains():
    with HttpUpstream(answer(500)) as bad, HttpUpstream(answer(200)) as good:
        svc = service("svc", [bad, good], outlier_detection={
            "consecutive_5xx": 2, "ejection": "30s", "max_ejected": "50%"})
        with SidecarProcess(extra={"services": [svc]}) as sc:
            for i in range(8):
                request(sc.outbound, "svc.local", "/before%d" % i)
            assert len(bad.requests) == 2
            # A new config: another timeout for the service and a route; the endpoints stay.
            sc.config["services"][0]["timeouts"] = {"request": "5s"}
            sc.config["routes"] = [{"name": "other", "match": {"path_prefix": "/other"}}]
            sc.write_config()
            status, _, body = call(sc, "admin", "/reload", "POST")
            assert status == 200, body
            for i in range(8):
                assert request(sc.outbound, "svc.local", "/after%d" % i)[0] == 200
            assert len(bad.requests) == 2
