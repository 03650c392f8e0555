"""Pure logic of the management layer: access-log formatting, response-flag names, the
metrics collector over fixture segments, reload planning, config-dump redaction."""
import json
import mmap
import time

import pytest
from prometheus_client.core import CollectorRegistry
from prometheus_client.exposition import generate_latest

from fastpath import stats
from sidecar.admin import redact
from sidecar.config import load_config_text
from sidecar.metrics.labels import LabelIds
from sidecar.metrics.segments import RetiredTotals
from sidecar.metrics.worker_stats import WorkerStatsCollector, WorkerStatsSource
from sidecar.reload import plan
from sidecar.telemetry import response_flags
from sidecar.telemetry.access_log import AccessLog, Formatter, check_format

FACTS = ("inbound", 100.0, 100.0125, b"GET", b"/api/x", b"shop.example", b"id-1", 0, -1,
         ("127.0.0.1", 8080), 200, 0x011, 0, 42, 0, b"10.0.0.9")


def test_response_flags_names():
    assert response_flags(0) == "-"
    assert response_flags(0x001 | 0x200) == "UF,URX"


def test_json_access_log_line_has_the_exchange_facts():
    f = Formatter("json")
    f.set_names(["api"], [], [], 0.0)
    line = json.loads(f.line(FACTS))
    assert line["route"] == "api" and line["service"] is None
    assert line["method"] == "GET" and line["path"] == "/api/x" and line["request_id"] == "id-1"
    assert line["upstream"] == "127.0.0.1:8080" and line["status"] == 200
    assert line["response_flags"] == "UF,RL" and line["duration_ms"] == 12.5
    assert line["bytes_sent"] == 42 and line["client"] == "10.0.0.9"


def test_template_access_log_with_envoy_operators():
    f = Formatter("%RESPONSE_CODE% %REQ(:METHOD)% %path% %principal%")
    assert f.line(FACTS) == "200 GET /api/x -"
    with pytest.raises(ValueError, match="unknown access log field"):
        check_format("%NOPE%")
    with pytest.raises(ValueError):
        check_format("no fields")


def test_access_log_queue_is_bounded_and_counts_drops(tmp_path):
    dropped = []
    log = AccessLog(str(tmp_path / "access.log"), "json", on_drop=lambda: dropped.append(1), capacity=3)
    log._stop = True            # the writer drains only at close: the queue fills
    log._wake.set()
    log._thread.join(5)
    for _ in range(5):
        log.push(FACTS)
    assert len(dropped) == 2 and log.dropped == 2
    log._drain()
    log.close()
    assert len((tmp_path / "access.log").read_text().splitlines()) == 3


def test_an_access_log_format_error_names_its_key_and_line():
    from sidecar.config import ConfigError
    with pytest.raises(ConfigError, match=r"telemetry.access_log.format \(line 3\): unknown access log field"):
        load_config_text("telemetry:\n  access_log:\n    format: '%BOGUS%'\n")


def _segment_with(counts):
    m = mmap.mmap(-1, stats.segment_size(64, 16))
    stats.init_segment(m, 64, 16)
    w = stats.WorkerStats(m)
    w.set_labels([1], [], [1], 0.0)
    for route, status in counts:
        w.count_exchange(0, route=route, status=status, method=1, duration=0.01)
    return stats.read_segment(m)


def test_collector_sums_workers_and_retired_totals_with_config_names():
    labels = LabelIds()
    labels.assign(load_config_text("services: [{name: ratings, match: [ratings]}]\n"
                                   "routes: [{name: api, direction: inbound}]\n"))
    retired = RetiredTotals()
    retired.add(_segment_with([(0, 200)]))
    segments = [_segment_with([(0, 200), (0, 200)]), _segment_with([(0, 503)]), retired.as_segment()]
    registry = CollectorRegistry(auto_describe=False)
    registry.register(WorkerStatsCollector(WorkerStatsSource(
        lambda: segments, labels.route_names, labels.service_names)))
    text = generate_latest(registry).decode()
    assert ('sidecar_requests_total{code="200",direction="inbound",method="GET",'
            'response_flags="-",route="api",service="_app"} 3.0') in text
    assert 'sidecar_request_duration_seconds_count{code="503",direction="inbound",route="api",service="_app"} 1.0' in text


def test_access_log_lines_carry_the_trace_and_span_ids():
    traced = FACTS + (None, (0x0af7651916cd43dd, 0x8448eb211c80319c), 0x00f067aa0ba902b7)
    line = json.loads(Formatter("json").line(traced))
    assert line["trace_id"] == "0af7651916cd43dd8448eb211c80319c"
    assert line["span_id"] == "00f067aa0ba902b7"
    assert Formatter("%TRACE_ID% %span_id%").line(traced) == \
        "0af7651916cd43dd8448eb211c80319c 00f067aa0ba902b7"
    assert json.loads(Formatter("json").line(FACTS + (None, None, None)))["trace_id"] is None


def test_collector_exports_the_tracing_counters():
    m = mmap.mmap(-1, stats.segment_size(64, 16))
    stats.init_segment(m, 64, 16)
    w = stats.WorkerStats(m)
    for metric, n in ((7, 3), (8, 40), (9, 2)):
        w.add(metric, 0, 0, n)
    registry = CollectorRegistry(auto_describe=False)
    registry.register(WorkerStatsCollector(WorkerStatsSource(
        lambda: [stats.read_segment(m)], dict, dict)))
    text = generate_latest(registry).decode()
    assert "sidecar_tracing_spans_dropped_total 3.0" in text
    assert "sidecar_tracing_spans_exported_total 40.0" in text
    assert "sidecar_tracing_spans_failed_total 2.0" in text


def test_collector_exports_cache_lookups_by_route_and_result():
    m = mmap.mmap(-1, stats.segment_size(64, 16))
    stats.init_segment(m, 64, 16)
    w = stats.WorkerStats(m)
    w.set_labels([7], [], [], 0.0)
    for cache, n in ((1, 5), (2, 2), (3, 1), (4, 1), (0, 3)):
        for _ in range(n):
            w.count_exchange(0, route=0, status=200, method=1, cache=cache)
    registry = CollectorRegistry(auto_describe=False)
    registry.register(WorkerStatsCollector(WorkerStatsSource(
        lambda: [stats.read_segment(m)], lambda: {7: "pages"}, dict)))
    text = generate_latest(registry).decode()
    for result, n in (("hit", 5), ("miss", 2), ("revalidated", 1), ("bypass", 1)):
        assert 'sidecar_cache_lookups_total{result="%s",route="pages"} %d.0' % (result, n) in text
    assert text.count("sidecar_cache_lookups_total{") == 4      # none for exchanges off the cache


def test_access_log_lines_carry_the_cache_result():
    base = FACTS + (None, None, None)
    assert json.loads(Formatter("json").line(base + (1,)))["cache"] == "hit"
    assert json.loads(Formatter("json").line(base + (3,)))["cache"] == "revalidated"
    assert json.loads(Formatter("json").line(base + (0,)))["cache"] is None
    assert json.loads(Formatter("json").line(FACTS))["cache"] is None
    assert Formatter("%status% %cache%").line(base + (2,)) == "200 miss"


def test_label_ids_are_stable_across_configs():
    labels = LabelIds()
    first = labels.assign(load_config_text("routes: [{name: a}, {name: b}]\n"))
    second = labels.assign(load_config_text("routes: [{name: b}, {name: c}]\n"))
    assert second["routes"]["b"] == first["routes"]["b"]
    assert len(set(second["routes"].values())) == 3


def test_reload_plan_replaces_workers_only_for_listeners_and_counts():
    base = load_config_text("workers: 2\n")
    assert plan(base, load_config_text("workers: 2\ninbound: {app: '127.0.0.1:9'}\n")) == plan(base, base)
    assert plan(base, load_config_text("workers: 3\n")).add_workers == 1
    assert plan(base, load_config_text("workers: 1\n")).remove_workers == 1
    assert plan(base, load_config_text("workers: 2\ninbound: {listen: '0.0.0.0:7'}\n")).replace_workers
    assert plan(base, load_config_text("workers: 2\nadmin: {listen: '127.0.0.1:9'}\n")).notes


def test_redact_hides_keys_credentials_and_credential_headers():
    cfg = {"tls": {"key": "/k.pem"}, "telemetry": {"tracing": {"otlp_endpoint": "http://u:p@otel:4318"}},
           "routes": [{"headers": {"request": {"set": {"Authorization": "x", "x-a": "y"}}}}]}
    out = redact(cfg)
    assert out["tls"]["key"] == "[redacted]"
    assert out["telemetry"]["tracing"]["otlp_endpoint"] == "http://[redacted]@otel:4318"
    assert out["routes"][0]["headers"]["request"]["set"] == {"Authorization": "[redacted]", "x-a": "y"}
