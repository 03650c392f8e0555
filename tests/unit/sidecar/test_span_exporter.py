"""The span exporter (sidecar/telemetry/span_exporter.py): batching, the bounded queue and
its drop count, retry with backoff on collector errors, the flush on close, against the
tests' OTLP receiver on loopback."""
import time

import pytest

from fastpath import otlp
from fastpath import parser as P
from sidecar.telemetry.span_exporter import SpanExporter, traces_url
from tests.support.otlp_receiver import OtlpReceiver
from tests.support.servers import closed_port

RESOURCE = [("service.name", "reviews")]


def span(i):
    data = b"GET /%d HTTP/1.1\r\nHost: h\r\n\r\n" % i
    h = P.MessageHead(10)
    P.new_request_parser().feed_bytes(h, data)
    return otlp.exchange_span(h, span_id=i + 1)


class Counts:
    def __init__(self):
        self.dropped = self.exported = self.failed = 0

    def kwargs(self):
        return {"on_dropped": self._add("dropped"), "on_exported": self._add("exported"),
                "on_failed": self._add("failed")}

    def _add(self, name):
        def add(n):
            setattr(self, name, getattr(self, name) + n)
        return add


def wait_until(cond, timeout=5.0):
    deadline = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.01)


def test_traces_url():
    assert traces_url("http://collector:4318") == ("http", "collector", 4318, "/v1/traces", None)
    assert traces_url("https://otel.example/") == ("https", "otel.example", 443, "/v1/traces", None)
    assert traces_url("http://c:4318/custom/path?x=1")[3] == "/custom/path?x=1"
    assert traces_url("http://u:p%40ss@c:1")[4] == "Basic dTpwQHNz"
    for bad in ("collector:4318", "grpc://c:4317", "http://", "http://c:99999"):
        with pytest.raises(ValueError):
            traces_url(bad)


def test_full_batches_go_at_once_and_the_rest_on_the_interval():
    counts = Counts()
    with OtlpReceiver() as rx:
        ex = SpanExporter(rx.endpoint, RESOURCE, batch_size=100, interval=0.3, **counts.kwargs())
        for i in range(250):
            ex.push(span(i))
        got = rx.wait_for_spans(250)
        ex.close()
    assert sorted(int(s.attributes["url.path"][1:]) for s in got) == list(range(250))
    sizes = [sum(len(ss.spans) for rs in r.resource_spans for ss in rs.scope_spans) for r in rx.requests]
    assert max(sizes) <= 100 and sum(sizes) == 250 and len(sizes) >= 3
    assert rx.posts[0]["headers"]["Content-Type"] == "application/x-protobuf"
    assert got[0].resource == {"service.name": "reviews"} and got[0].scope == "bpf-sidecar"
    assert (counts.exported, counts.dropped, counts.failed) == (250, 0, 0)
    assert ex.exported == 250


def test_a_full_queue_drops_and_counts_without_waiting():
    counts = Counts()
    with OtlpReceiver() as rx:
        rx.delay = 0.3                  # a slow collector: the queue fills behind it
        ex = SpanExporter(rx.endpoint, RESOURCE, capacity=50, batch_size=10, interval=0.05,
                          **counts.kwargs())
        spans = [span(i) for i in range(2000)]
        started = time.perf_counter()
        for s in spans:
            ex.push(s)
        took = time.perf_counter() - started
        ex.close(timeout=1.0)
    assert took < 0.5, took             # push never waits for the collector
    assert counts.dropped >= 2000 - 50 - 10
    assert counts.exported + counts.dropped + counts.failed == 2000
    assert ex.dropped == counts.dropped


def test_collector_errors_are_retried_with_backoff():
    counts = Counts()
    with OtlpReceiver() as rx:
        rx.fail_next(2, 503)
        ex = SpanExporter(rx.endpoint, RESOURCE, interval=0.05, initial_backoff=0.2,
                          **counts.kwargs())
        ex.push(span(1))
        rx.wait_for_spans(1)
        ex.close()
    assert len(rx.posts) == 3
    assert counts.exported == 1 and counts.failed == 0


def test_retry_after_is_honoured():
    with OtlpReceiver() as rx:
        rx.fail_next(1, 429, retry_after=0.6)
        ex = SpanExporter(rx.endpoint, RESOURCE, interval=0.05, initial_backoff=0.01)
        ex.push(span(1))
        rx.wait_for_spans(1)
        ex.close()
    assert rx.posts[1]["time"] - rx.posts[0]["time"] >= 0.55


def test_a_non_retryable_answer_fails_the_batch_at_once():
    counts = Counts()
    with OtlpReceiver() as rx:
        rx.fail_next(1, 400)
        ex = SpanExporter(rx.endpoint, RESOURCE, interval=0.05, **counts.kwargs())
        ex.push(span(1))
        wait_until(lambda: counts.failed == 1)
        ex.push(span(2))
        rx.wait_for_spans(1)
        ex.close()
    assert len(rx.posts) == 2 and counts.exported == 1


def test_a_collector_that_is_down_fails_batches_after_the_attempts():
    counts = Counts()
    ex = SpanExporter("http://127.0.0.1:%d" % closed_port(), RESOURCE, interval=0.05,
                      initial_backoff=0.01, max_attempts=3, **counts.kwargs())
    for i in range(5):
        ex.push(span(i))
    wait_until(lambda: counts.failed == 5)
    ex.close()
    assert counts.exported == 0


def test_rejected_spans_count_as_failed():
    counts = Counts()
    with OtlpReceiver() as rx:
        rx.reject_spans = 2
        ex = SpanExporter(rx.endpoint, RESOURCE, interval=0.05, **counts.kwargs())
        for i in range(5):
            ex.push(span(i))
        wait_until(lambda: counts.exported + counts.failed == 5)
        ex.close()
    assert (counts.exported, counts.failed) == (3, 2)


def test_close_flushes_what_is_queued():
    with OtlpReceiver() as rx:
        ex = SpanExporter(rx.endpoint, RESOURCE, interval=60.0)
        for i in range(7):
            ex.push(span(i))
        started = time.monotonic()
        ex.close(timeout=3.0)
        assert time.monotonic() - started < 2.0
        assert len(rx.spans) == 7


def test_close_gives_up_on_time_when_the_collector_does_not_answer():
    counts = Counts()
    with OtlpReceiver() as rx:
        rx.delay = 5.0
        ex = SpanExporter(rx.endpoint, RESOURCE, interval=60.0, **counts.kwargs())
        for i in range(3):
            ex.push(span(i))
        started = time.monotonic()
        ex.close(timeout=0.5)
        assert time.monotonic() - started < 1.6
        rx.delay = 0
    assert counts.exported == 0 and counts.failed + counts.dropped == 3


def test_close_without_waiting_returns_at_once_and_still_sends():
    with OtlpReceiver() as rx:
        ex = SpanExporter(rx.endpoint, RESOURCE, interval=60.0)
        ex.push(span(1))
        started = time.monotonic()
        ex.close(wait=False)
        assert time.monotonic() - started < 0.1
        rx.wait_for_spans(1)
