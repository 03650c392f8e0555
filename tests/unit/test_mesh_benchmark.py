"""The mesh benchmark's pure parts: medians and added latency over interleaved rounds, target
verdicts, the Markdown report, loadgen report parsing and the wire classifiers."""
import copy
from types import SimpleNamespace

import pytest

from benchmarks.mesh import loadgen, proxies, render, summary
from benchmarks.mesh.scenarios import SCENARIOS, Scenario
from benchmarks.mesh.loads import QUICK_LOADS, STANDARD_LOADS
from benchmarks.mesh.wire import _tcp_payload_to, looks_like_http, looks_like_tls


def _record(round_no, load, scenario, **figures):
    base = {"round": round_no, "load": load, "scenario": scenario, "error": None}
    base.update(figures)
    return base


def _open_rounds():
    records = []
    for rnd, (direct, sidecar, nginx) in enumerate([(100, 300, 400), (120, 310, 460), (90, 350, 390)], 1):
        records.append(_record(rnd, "open-2000", "direct", p50_us=direct, p99_us=direct * 10,
                               requests_per_s=2000, errors=0))
        records.append(_record(rnd, "open-2000", "bpf-sidecar", p50_us=sidecar, p99_us=sidecar * 10,
                               requests_per_s=2000, cpu_us_per_req=40.0 + rnd, errors=0))
        records.append(_record(rnd, "open-2000", "nginx", p50_us=nginx, p99_us=nginx * 10,
                               requests_per_s=2000, cpu_us_per_req=60.0, errors=0))
    return records


def test_added_latency_pairs_each_round_with_its_own_direct_run():
    records = _open_rounds()
    out = summary.summarize(records, ["open-2000"], ["direct", "bpf-sidecar", "nginx"], {})
    row = out["open-2000"]["bpf-sidecar"]
    # per round: 300-100, 310-120, 350-90
    assert row["added_p50_us"] == {"median": 200, "min": 190, "max": 260}
    assert row["p50_us"]["median"] == 310
    assert row["rounds"] == 3
    assert out["open-2000"]["direct"]["added_p50_us"] is None
    # nginx added: 300, 340, 300 -> median 300
    assert row["added_p50_vs_nginx"] == pytest.approx(200 / 300)
    assert row["cpu_vs_nginx"] == pytest.approx(42 / 60)


def test_a_failed_round_is_left_out_of_the_median_and_reported():
    records = _open_rounds()
    records[1] = _record(1, "open-2000", "bpf-sidecar", error="loadgen exited 2")
    out = summary.summarize(records, ["open-2000"], ["direct", "bpf-sidecar", "nginx"], {})
    row = out["open-2000"]["bpf-sidecar"]
    assert row["rounds"] == 2
    assert row["error"] == "loadgen exited 2"
    assert row["added_p50_us"]["min"] == 190


def test_targets_pass_fail_and_not_available():
    records = []
    for rnd in (1, 2, 3):
        records += [
            _record(rnd, "closed-c32-0", "nginx", cpu_us_per_req=40.0, requests_per_s=1, errors=0),
            _record(rnd, "closed-c32-0", "haproxy", cpu_us_per_req=30.0, requests_per_s=1, errors=0),
            _record(rnd, "closed-c32-0", "bpf-sidecar-ebpf-accel", cpu_us_per_req=20.0, requests_per_s=1,
                    errors=0),
            _record(rnd, "tcp", "direct", mb_per_s=1000.0, errors=0),
            _record(rnd, "tcp", "bpf-sidecar", mb_per_s=700.0, errors=0),
        ]
    names = ["direct", "bpf-sidecar", "bpf-sidecar-ebpf-accel", "nginx", "haproxy"]
    out = summary.summarize(records, ["closed-c32-0", "tcp"], names, {})
    verdicts = {t["target"]: t for t in summary.judge_targets(out, {})}
    assert verdicts["cpu-vs-nginx"]["verdict"] == "PASS"          # 20/40 = 0.5 <= 0.6
    assert verdicts["cpu-vs-haproxy"]["verdict"] == "FAIL"        # 20/30 = 0.67 > 0.6
    assert verdicts["cpu-vs-haproxy"]["ratio"] == pytest.approx(2 / 3)
    assert verdicts["passthrough-vs-direct"]["verdict"] == "FAIL"  # 0.7 < 0.8
    assert verdicts["latency-vs-nginx"]["verdict"] == "n.a."       # no open-loop load ran

    unavailable = {"bpf-sidecar-ebpf-accel": "the client sidecar saw 0 of 20 probe requests"}
    out = summary.summarize(records, ["closed-c32-0", "tcp"], names, unavailable)
    verdicts = {t["target"]: t for t in summary.judge_targets(out, unavailable)}
    assert verdicts["cpu-vs-nginx"]["verdict"] == "n.a."
    assert "saw 0 of 20" in verdicts["cpu-vs-nginx"]["reason"]


def _document():
    records = _open_rounds()
    for r in records:
        r.update(target_rate=2000, steal_pct=0.5, machine_busy_pct=80.0)
    names = ["direct", "bpf-sidecar", "nginx"]
    unavailable = {"bpf-sidecar-mtls": "the pod link carried 20 plaintext HTTP and 0 TLS segments: not mTLS"}
    out = summary.summarize(copy.deepcopy(records), ["open-2000"], names + ["bpf-sidecar-mtls"], unavailable)
    scenario = {"proxy": "sidecar", "interception": "the sidecar's own, iptables", "waits_for": None, "evidence": {}, "processes": {},
                "resources": {}}
    return {
        "started_at": "2026-01-01T00:00:00+00:00", "json_file": "x-mesh.json",
        "machine": {"hostname": "h", "cores": 2, "cpu_model": "cpu", "memory_total_gib": 1, "kernel": "6",
                    "os": "Debian", "tools": {"nginx": "n", "haproxy": "h", "wrk": "w", "sidecar": "s",
                                              "python": "3"}},
        "settings": {"quick": True, "rounds": 3, "durations_s": {"open": 4}, "warmup_s": 1,
                     "loads": {"open-2000": {"kind": "open", "title": "open loop at 2000 req/s", "rate": 2000}}},
        "noise": {"loadavg_start": [1, 1, 1], "loadavg_end": [1, 1, 1], "note": "shared"},
        "scenarios": {
            "direct": dict(scenario, title="no sidecar", status="ok", reason=None),
            "bpf-sidecar": dict(scenario, title="bpf-sidecar, iptables", status="ok", reason=None),
            "nginx": dict(scenario, title="nginx", status="ok", reason=None),
            "bpf-sidecar-mtls": dict(scenario, title="mTLS", status="n.a.", waits_for="mTLS",
                                     reason=unavailable["bpf-sidecar-mtls"]),
        },
        "loadgen_limit": [{"rate": 10000, "achieved_rps": 9990.0, "p50_us": 80, "p99_us": 900,
                           "send_lag_p99_us": 500, "errors": 0, "cpu_us_per_req": 20.0}],
        "summary": out,
        "targets": summary.judge_targets(out, unavailable),
        "rounds": records,
        "plots": ["x-mesh-latency.png"],
    }


def test_markdown_shows_rows_targets_tables_and_unavailable_reasons():
    text = render.render_markdown(_document())
    assert "| mTLS (`bpf-sidecar-mtls`) | n.a. | waits for mTLS: the pod link carried" in text
    assert "### open loop at 2000 req/s" in text
    assert "+200 µs (+190 µs–+260 µs)" in text        # bpf-sidecar's added p50, median (min–max)
    assert "![x-mesh-latency.png](x-mesh-latency.png)" in text
    assert "| target | ratio of | measured | bound | verdict |" in text
    assert "n.a." in render.render_targets(_document())


def test_every_scenario_is_a_small_definition_with_a_proof():
    names = [s.name for s in SCENARIOS]
    assert names[0] == "direct" and len(set(names)) == len(names)
    for s in SCENARIOS:
        assert isinstance(s, Scenario) and s.proof is not None
        assert s.optional == bool(s.waits_for), s.name
    policy = next(s for s in SCENARIOS if s.name == "bpf-sidecar-policy")
    tcp = next(load for load in STANDARD_LOADS if load.kind == "tcp")
    assert not policy.runs(tcp)
    assert {load.kind for load in QUICK_LOADS} == {"closed", "open", "tcp"}


def test_only_proxies_without_interception_of_their_own_get_the_harness_rules():
    for s in SCENARIOS:
        assert s.harness_iptables == (s.proxy in ("nginx", "haproxy")), s.name
    with pytest.raises(ValueError, match="installs its own interception"):
        Scenario("twice", "twice", proxy="sidecar", harness_iptables=True, proof=lambda row, context: {})


def test_the_sidecar_rows_configure_their_own_interception_on_the_pod():
    pod = SimpleNamespace(role="client", app_cgroup=SimpleNamespace(path="/sys/fs/cgroup/unified/x/app"),
                          dev="vscabcdefa", sidecar_instance="bench-mesh-abc-client")
    rows = {s.name: s for s in SCENARIOS}
    config = proxies.sidecar_config(pod)
    assert config["interception"] == {"mode": "iptables", "cgroup": "/sys/fs/cgroup/unified/x/app",
                                      "interface": "vscabcdefa", "instance": "bench-mesh-abc-client"}
    for name, accelerate in (("bpf-sidecar-ebpf", False), ("bpf-sidecar-ebpf-accel", True)):
        config = proxies.sidecar_config(pod, rows[name].overlay(pod, None))
        assert config["interception"] == {"mode": "ebpf", "cgroup": "/sys/fs/cgroup/unified/x/app",
                                          "interface": "vscabcdefa", "instance": "bench-mesh-abc-client",
                                          "accelerate_local": accelerate}


def test_loadgen_report_parsing():
    assert loadgen.parse_report('starting\n{"mode": "http", "sent": 1}\n') == {"mode": "http", "sent": 1}
    with pytest.raises(loadgen.LoadgenError):
        loadgen.parse_report("")
    with pytest.raises(loadgen.LoadgenError):
        loadgen.parse_report("segfault")
    with pytest.raises(loadgen.LoadgenError):
        loadgen.parse_report('{"no": "mode"}')


def test_wire_classifiers():
    assert looks_like_tls(bytes([22, 3, 1, 0, 5]))
    assert not looks_like_tls(b"GET / HTTP/1.1")
    assert looks_like_http(b"GET /0 HTTP/1.1\r\n")
    # IPv4 (20 bytes) + TCP (20 bytes, dport 8080) + payload
    ip = bytes([0x45, 0, 0, 45]) + bytes(5) + bytes([6]) + bytes(10)
    tcp = bytes([0x30, 0x39, 0x1f, 0x90]) + bytes(8) + bytes([0x50]) + bytes(7)
    assert _tcp_payload_to(ip + tcp + b"hello", 8080) == b"hello"
    assert _tcp_payload_to(ip + tcp + b"hello", 9090) == b""
