"""/metrics (SPEC.md, "Metrics") from a real `sidecar run`: the names and labels of SPEC,
counts equal to the requests sent, both exposition formats, Istio's names with
istio_compat, and counters that never go back when a worker is restarted."""
import os
import re
import signal
import time

from tests.support.admin import admin_json, scrape
from tests.support.http_client import RawClient
from tests.support.servers import HttpApp, closed_port
from tests.support.sidecar_process import SidecarProcess


def _request(address, path="/headers", method="GET", host="metrics.test"):
    with RawClient(address, timeout=5) as c:
        c.send(b"%s %s HTTP/1.1\r\nHost: %s\r\nConnection: close\r\n\r\n" % (
            method.encode(), path.encode(), host.encode()))
        return c.read_response()[0]


def samples(text, name):
    """{frozenset(labels): value} of the samples of `name` in Prometheus text."""
    out = {}
    for line in text.splitlines():
        m = re.match(r'^%s\{(.*)\} (\S+)$' % re.escape(name), line)
        if m:
            labels = frozenset(re.findall(r'(\w+)="([^"]*)"', m.group(1)))
            out[labels] = float(m.group(2))
    return out


def total(text, name, **labels):
    want = set(labels.items())
    return sum(v for k, v in samples(text, name).items() if want <= k)


def settled_scrape(sc, name, expected, **labels):
    """The /metrics text once `name{labels}` totals `expected`: a worker counts an
    exchange just after writing its last byte, so a client can read the response a
    moment before the count is in shared memory."""
    deadline = time.monotonic() + 2.0
    while True:
        ctype, text = scrape(sc)
        if total(text, name, **labels) == expected or time.monotonic() > deadline:
            return ctype, text
        time.sleep(0.02)


def test_requests_are_counted_with_spec_labels_in_both_exposition_formats():
    with HttpApp() as app, SidecarProcess(app=app.address, workers=2) as sc:
        for _ in range(7):
            assert _request(sc.inbound) == 200
        assert _request(sc.inbound, "/status/503") == 503
        assert _request(sc.inbound, "/headers", method="POST") in (200, 501, 405)

        ctype, text = settled_scrape(sc, "sidecar_requests_total", 9)
        assert ctype.startswith("text/plain")
        ok = samples(text, "sidecar_requests_total")
        got = {k: v for k, v in ok.items() if dict(k).get("code") == "200" and dict(k)["method"] == "GET"}
        assert len(got) == 1, ok
        (labels, value), = got.items()
        assert value == 7
        assert dict(labels) == {"direction": "inbound", "route": "_none", "service": "_app",
                                "method": "GET", "code": "200", "response_flags": "-"}
        assert total(text, "sidecar_requests_total", code="503") == 1
        assert total(text, "sidecar_request_duration_seconds_count", code="200") == \
            total(text, "sidecar_requests_total", code="200")
        assert total(text, "sidecar_request_duration_seconds_bucket", le="+Inf", code="200") == \
            total(text, "sidecar_requests_total", code="200")
        assert total(text, "sidecar_response_bytes_total", direction="inbound") > 0
        assert total(text, "sidecar_connections_total", direction="inbound", protocol="http") >= 9
        for name in ("sidecar_connections_active", "sidecar_upstream_retries_total",
                     "sidecar_ratelimit_decisions_total", "sidecar_authz_decisions_total",
                     "sidecar_circuit_breaker_open", "sidecar_cache_lookups_total"):
            assert "# TYPE %s " % name in text or "# TYPE %s " % name.replace("_total", "") in text, name

        ctype, om = scrape(sc, "application/openmetrics-text; version=1.0.0")
        assert ctype.startswith("application/openmetrics-text")
        assert om.rstrip().endswith("# EOF")
        assert total(om, "sidecar_requests_total", code="200", method="GET") == 7


def test_upstream_connect_failure_is_counted_with_its_response_flag():
    with SidecarProcess(app=("127.0.0.1", closed_port())) as sc:
        assert _request(sc.inbound) == 503
        _, text = settled_scrape(sc, "sidecar_requests_total", 1, code="503")
        assert total(text, "sidecar_requests_total", code="503", response_flags="UF") == 1


def test_counters_never_go_back_when_a_worker_is_killed_and_restarted():
    with HttpApp() as app, SidecarProcess(app=app.address, workers=2) as sc:
        for _ in range(10):
            assert _request(sc.inbound) == 200
        _, before = scrape(sc)
        assert total(before, "sidecar_requests_total") == 10
        victim = sc.worker_pids()[0]
        os.kill(victim, signal.SIGKILL)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            pids = sc.worker_pids()
            if victim not in pids and len(pids) == 2 and admin_json(sc, "/stats")["ready"]:
                break
            time.sleep(0.1)
        _, after = scrape(sc)
        assert total(after, "sidecar_requests_total") == 10
        assert _request(sc.inbound) == 200
        _, later = scrape(sc)
        assert total(later, "sidecar_requests_total") == 11


def test_istio_compat_adds_istio_names_with_the_workload_labels():
    extra = {
        "workload": {"name": "reviews", "namespace": "shop"},
        "routes": [{"name": "api", "direction": "inbound", "match": {"path_prefix": "/api/"}}],
        "telemetry": {"istio_compat": True},
    }
    with HttpApp() as app, SidecarProcess(app=app.address, extra=extra) as sc:
        assert _request(sc.inbound) == 200
        _, text = scrape(sc)
        assert 'sidecar_info{namespace="shop",version="0.1.0",workload="reviews"} 1.0' in text
        istio = samples(text, "istio_requests_total")
        assert len(istio) == 1, istio
        (labels, value), = istio.items()
        labels = dict(labels)
        assert value == 1 and labels["reporter"] == "destination"
        assert labels["destination_workload"] == "reviews" and labels["response_code"] == "200"
        assert total(text, "istio_request_duration_milliseconds_count") == 1
