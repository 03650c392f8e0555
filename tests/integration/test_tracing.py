"""Tracing through a real `sidecar run`: W3C and B3 contexts continued or started, the
headers the app receives, the spans a local OTLP/HTTP receiver gets (decoded with the
official protobuf bindings), sampling, a collector that is down or slow, the access log's
trace ids, reload of the tracing settings, and the flush on drain."""
import http.client
import json
import re
import signal
import time

import pytest

from tests.support.admin import call, scrape
from tests.support.otlp_receiver import OtlpReceiver
from tests.support.servers import HttpApp, ScriptedServer, closed_port
from tests.support.sidecar_process import SidecarProcess

TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"
PARENT = "00f067aa0ba902b7"
B3_TRACE = "80f198ee56343ba864fe8b2a57d3eff7"
B3_SPAN = "e457b5a2e4d86bd1"
HEX16 = re.compile(r"^[0-9a-f]{16}$")


def tracing(endpoint, sample="100%", propagate=("w3c", "b3"), access_log=None):
    return {"telemetry": {"tracing": {"sample": sample, "propagate": list(propagate),
                                      "otlp_endpoint": endpoint},
                          "access_log": {"path": access_log}}}


def get(address, path="/headers", headers=None, host="traced.test"):
    """(status, the headers the app received as {name: [values]} for /headers, or None)."""
    conn = http.client.HTTPConnection(*address, timeout=10)
    try:
        conn.request("GET", path, headers=dict({"Host": host}, **(headers or {})))
        resp = conn.getresponse()
        body = resp.read()
    finally:
        conn.close()
    seen = None
    if path == "/headers" and resp.status == 200:
        seen = {}
        for name, value in json.loads(body)["headers"]:
            seen.setdefault(name, []).append(value)
    return resp.status, seen


def traceparent(seen):
    (value,) = seen["traceparent"]
    version, trace, parent, flags = value.split("-")
    assert version == "00"
    return trace, parent, flags


def counter(sc, name):
    _, text = scrape(sc)
    m = re.search(r"^%s (\S+)$" % re.escape(name), text, re.M)
    return float(m.group(1)) if m else None


def wait_for(cond, timeout=10.0, what="condition"):
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError("timed out waiting for " + what)
        time.sleep(0.05)


@pytest.fixture(scope="module")
def app():
    with HttpApp() as a:
        yield a


@pytest.fixture(scope="module")
def traced(app):
    """A sidecar sampling every trace, exporting to a local receiver."""
    with OtlpReceiver() as rx, SidecarProcess(app=app.address, extra=tracing(rx.endpoint)) as sc:
        yield sc, rx


def test_a_request_without_context_starts_a_trace_the_app_and_the_collector_both_see(traced, app):
    sc, rx = traced
    status, seen = get(sc.inbound, "/headers")
    assert status == 200
    trace, span, flags = traceparent(seen)
    assert flags == "03"            # sampled, random trace id
    assert seen["x-b3-traceid"] == [trace] and seen["x-b3-spanid"] == [span]
    assert seen["x-b3-sampled"] == ["1"] and "x-b3-parentspanid" not in seen
    wait_for(lambda: rx.spans_of_trace(trace), what="the span")
    (s,) = rx.spans_of_trace(trace)
    assert s.span_id == span and s.parent_id is None
    assert s.kind == 2 and s.name == "GET"            # SPAN_KIND_SERVER
    a = s.attributes
    assert a["http.request.method"] == "GET" and a["url.path"] == "/headers"
    assert a["http.response.status_code"] == 200 and a["sidecar.direction"] == "inbound"
    assert a["upstream_address"] == "%s:%d" % app.address
    assert a["network.peer.address"] == "127.0.0.1" and a["server.address"] == "traced.test"
    assert a["response_flags"] == "-" and a["http.response.body.size"] > 0
    assert a["guid:x-request-id"] == seen["x-request-id"][0]
    assert s.resource["service.name"] == "app" and s.status_code == 0
    assert 0 < s.end_ns - s.start_ns < 5e9 and abs(s.end_ns / 1e9 - time.time()) < 60


def test_an_incoming_w3c_context_is_continued_with_the_sidecar_span_as_parent(traced):
    sc, rx = traced
    status, seen = get(sc.inbound, "/headers", {
        "traceparent": "00-%s-%s-01" % (TRACE, PARENT), "tracestate": "congo=t61rcWkgMzE"})
    assert status == 200
    trace, span, flags = traceparent(seen)
    assert trace == TRACE and span != PARENT and HEX16.match(span) and flags == "01"
    assert seen["tracestate"] == ["congo=t61rcWkgMzE"]
    assert seen["x-b3-traceid"] == [TRACE] and seen["x-b3-parentspanid"] == [PARENT]
    wait_for(lambda: rx.spans_of_trace(TRACE), what="the span")
    (s,) = rx.spans_of_trace(TRACE)
    assert (s.span_id, s.parent_id) == (span, PARENT)
    assert s.trace_state == "congo=t61rcWkgMzE"
    assert s.flags & 0x300 == 0x300          # the parent is remote


def test_an_incoming_b3_multi_context_is_continued(traced):
    sc, rx = traced
    status, seen = get(sc.inbound, "/headers", {
        "X-B3-TraceId": B3_TRACE, "X-B3-SpanId": B3_SPAN, "X-B3-Sampled": "1"})
    assert status == 200
    assert seen["x-b3-traceid"] == [B3_TRACE] and seen["x-b3-parentspanid"] == [B3_SPAN]
    (span,) = seen["x-b3-spanid"]
    assert span != B3_SPAN and traceparent(seen)[:2] == (B3_TRACE, span)
    assert "b3" not in seen
    wait_for(lambda: rx.spans_of_trace(B3_TRACE), what="the span")
    (s,) = rx.spans_of_trace(B3_TRACE)
    assert (s.span_id, s.parent_id) == (span, B3_SPAN)


def test_an_incoming_b3_single_context_is_continued_in_both_b3_forms(traced):
    sc, rx = traced
    trace = "463ac35c9f6413ad48485a3953bb6124"
    status, seen = get(sc.inbound, "/headers", {"b3": "%s-%s-1" % (trace, B3_SPAN)})
    assert status == 200
    (single,) = seen["b3"]
    t, span, state, parent = single.split("-")
    assert (t, state, parent) == (trace, "1", B3_SPAN)
    assert seen["x-b3-spanid"] == [span] and seen["x-b3-traceid"] == [trace]
    wait_for(lambda: rx.spans_of_trace(trace), what="the span")
    assert rx.spans_of_trace(trace)[0].parent_id == B3_SPAN


def test_a_5xx_span_has_error_status(traced):
    sc, rx = traced
    status, _ = get(sc.inbound, "/status/503", {"traceparent": "00-%s-%s-01" % ("5" * 32, PARENT)})
    assert status == 503
    wait_for(lambda: rx.spans_of_trace("5" * 32), what="the span")
    (s,) = rx.spans_of_trace("5" * 32)
    assert s.status_code == 2 and s.attributes["http.response.status_code"] == 503


def test_exported_spans_are_counted(traced):
    sc, rx = traced
    for _ in range(3):
        get(sc.inbound, "/")
    wait_for(lambda: counter(sc, "sidecar_tracing_spans_exported_total") == len(rx.spans),
             what="the exported counter to match the receiver")
    assert counter(sc, "sidecar_tracing_spans_dropped_total") == 0
    assert counter(sc, "sidecar_tracing_spans_failed_total") == 0


def test_sample_zero_exports_only_traces_sampled_upstream(app):
    with OtlpReceiver() as rx, SidecarProcess(app=app.address, extra=tracing(rx.endpoint, "0%")) as sc:
        for _ in range(20):
            status, seen = get(sc.inbound, "/headers")
            assert status == 200 and traceparent(seen)[2] == "02"     # not sampled
            assert seen["x-b3-sampled"] == ["0"]
        get(sc.inbound, "/headers", {"traceparent": "00-%s-%s-00" % ("1" * 32, PARENT)})
        get(sc.inbound, "/headers", {"x-b3-sampled": "0"})
        _, seen = get(sc.inbound, "/headers", {"traceparent": "00-%s-%s-01" % (TRACE, PARENT)})
        assert traceparent(seen)[2] == "01"
        _, seen = get(sc.inbound, "/headers", {"x-b3-sampled": "1"})
        b3_sampled = seen["x-b3-traceid"][0]
        spans = rx.wait_for_spans(2)
        time.sleep(1.5)             # past the exporter's interval: nothing else comes
        assert sorted(s.trace_id for s in rx.spans) == sorted([TRACE, b3_sampled])
        assert counter(sc, "sidecar_tracing_spans_exported_total") == 2
        assert spans


def test_outbound_spans_are_client_spans_of_the_service(app):
    with OtlpReceiver() as rx:
        extra = tracing(rx.endpoint)
        extra["services"] = [{"name": "ratings", "match": ["ratings.local"],
                              "endpoints": ["%s:%d" % app.address]}]
        with SidecarProcess(extra=extra) as sc:
            status, seen = get(sc.outbound, "/headers", {"traceparent": "00-%s-%s-01" % (TRACE, PARENT)},
                               host="ratings.local")
            assert status == 200 and traceparent(seen)[0] == TRACE
            (s,) = rx.wait_for_spans(1)
    assert s.kind == 3 and s.attributes["sidecar.direction"] == "outbound"   # SPAN_KIND_CLIENT
    assert s.attributes["upstream_address"] == "%s:%d" % app.address
    assert s.parent_id == PARENT and s.span_id == traceparent(seen)[1]


def _fast_app(conn, server):
    """Answers every request on the connection with one write (no Nagle delays)."""
    rest = b""
    while True:
        head, rest = server.read_head(conn, rest)
        if not head.endswith(b"\r\n\r\n"):
            return
        conn.sendall(b"HTTP/1.1 200 OK\r\ncontent-length: 3\r\n\r\nok\n")


def _timed_requests(address, n):
    worst = 0.0
    conn = http.client.HTTPConnection(*address, timeout=10)
    for _ in range(n):
        started = time.monotonic()
        conn.request("GET", "/", headers={"Host": "x"})
        resp = conn.getresponse()
        resp.read()
        assert resp.status == 200
        worst = max(worst, time.monotonic() - started)
    conn.close()
    return worst


def test_a_collector_that_is_down_neither_fails_nor_slows_requests():
    endpoint = "http://127.0.0.1:%d" % closed_port()
    with ScriptedServer(_fast_app) as app, \
            SidecarProcess(app=app.address, extra=tracing(endpoint)) as sc:
        worst = _timed_requests(sc.inbound, 300)
        # A wide bound for a shared 2-core machine; a request that waited on the
        # collector would take its connect timeout or retry backoff (>= 0.5 s).
        assert worst < 0.4, worst
        wait_for(lambda: counter(sc, "sidecar_tracing_spans_exported_total") == 0
                 and sc.proc.poll() is None, what="a scrape")
        started = time.monotonic()
    assert sc.proc.returncode == 0
    assert time.monotonic() - started < 2.0       # the exit does not wait on the collector


def test_a_slow_collector_neither_fails_nor_slows_requests():
    with OtlpReceiver() as rx, ScriptedServer(_fast_app) as app:
        rx.delay = 2.0
        with SidecarProcess(app=app.address, extra=tracing(rx.endpoint)) as sc:
            worst = _timed_requests(sc.inbound, 300)
            assert worst < 0.4, worst
            rx.wait_for_spans(300, timeout=15)


def test_access_log_lines_carry_the_trace_the_app_saw(app, tmp_path):
    log_path = tmp_path / "access.log"
    with SidecarProcess(app=app.address, extra=tracing(None, "0%", access_log=str(log_path))) as sc:
        _, seen = get(sc.inbound, "/headers", {"traceparent": "00-%s-%s-00" % (TRACE, PARENT)})
        wait_for(lambda: log_path.exists() and log_path.read_text().strip(), what="the access log")
    line = json.loads(log_path.read_text().splitlines()[0])
    trace, span, _ = traceparent(seen)
    assert (line["trace_id"], line["span_id"]) == (trace, span) and trace == TRACE


def test_tracing_settings_reload_in_place(app):
    with OtlpReceiver() as rx, OtlpReceiver() as rx2:
        with SidecarProcess(app=app.address, extra=tracing(rx.endpoint, "0%", ["w3c"])) as sc:
            _, seen = get(sc.inbound, "/headers")
            assert "traceparent" in seen and "x-b3-traceid" not in seen
            sc.config["telemetry"]["tracing"] = {"sample": "100%", "propagate": ["b3"],
                                                 "otlp_endpoint": rx2.endpoint}
            sc.write_config()
            status, _, body = call(sc, "admin", "/reload", "POST")
            assert status == 200, body
            _, seen = get(sc.inbound, "/headers")
            assert "traceparent" not in seen and seen["x-b3-sampled"] == ["1"]
            (s,) = rx2.wait_for_spans(1)
            assert s.trace_id == seen["x-b3-traceid"][0]
        assert not rx.spans


def test_drain_sends_the_spans_still_queued(app):
    with OtlpReceiver() as rx:
        sc = SidecarProcess(app=app.address, extra=tracing(rx.endpoint))
        with sc:
            _, seen = get(sc.inbound, "/headers")
            sc.signal(signal.SIGTERM)
            assert sc.proc.wait(10) == 0
        assert [s.trace_id for s in rx.spans] == [traceparent(seen)[0]]
