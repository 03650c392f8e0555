"""The kernel-counters benchmark's pure parts: medians over interleaved rounds, the
counting target's ratio, and the Markdown report."""
from benchmarks import kernel_counters as kc


def _run(rate, cpu=40.0):
    return {"rate": rate, "requests_per_s": rate, "errors": 0, "machine_cpu_us_per_req": cpu,
            "pods_cpu_us_per_req": cpu / 2, "p50_us": 100.0, "p99_us": 900.0}


def _rounds():
    rounds = []
    for base in (40000, 42000, 38000):
        rounds.append({"http-c32": {"none": _run(base * 1.1), "steer+policy": _run(base),
                                    "+counters": _run(base * 0.98), "+counters+tables": _run(base * 0.95)}})
    return rounds


def test_summary_takes_medians_with_the_spread():
    summary = kc.summarise(_rounds())
    row = summary["http-c32"]["steer+policy"]
    assert row["rate"] == 40000 and row["min_rate"] == 38000 and row["max_rate"] == 42000
    assert "tcp-bulk" in summary and summary["tcp-bulk"] == {}


def test_the_counting_target_is_the_median_of_paired_round_ratios():
    rounds = _rounds()
    rounds[1]["http-c32"]["+counters"] = _run(42000 * 0.90)          # one noisy round
    ratios = kc.ratios(rounds, kc.summarise(rounds))
    r = ratios["http-c32"]
    assert (r["ratio"], r["min"], r["max"], r["rounds"]) == (0.98, 0.9, 0.98, 3) and r["throughput_ok"]
    assert r["ok"]                   # no derived share: the throughput ratio decides
    assert r["policy_tables_ratio"] == round(0.95 / 0.98, 4)
    failing = [{"http-c32": {"steer+policy": {"rate": 100.0}, "+counters": {"rate": 96.0}}}]
    assert kc.ratios(failing, kc.summarise(failing))["http-c32"]["ok"] is False


def test_the_derived_share_is_runs_times_cost_over_the_pods_cpu():
    rounds = _rounds()
    for r in rounds:
        r["http-c32"]["+counters"]["counter_runs_per_unit"] = 8.0     # per request
    per_packet = {"sc_count_in: TCP ACK": 60, "sc_count_out: segment": 70, "sc_policy: ACK": 20}
    r = kc.ratios(rounds, kc.summarise(rounds), per_packet)["http-c32"]
    # 8 runs x 70 ns = 0.56 us of 20 us of pods' CPU per request
    assert r["derived_cpu_share"] == 0.028 and r["counter_runs_per_unit"] == 8.0
    assert r["ok"]                   # 2.8% <= 3%
    for rnd in rounds:
        rnd["http-c32"]["+counters"]["counter_runs_per_unit"] = 10.0
    assert not kc.ratios(rounds, kc.summarise(rounds), per_packet)["http-c32"]["ok"]


def test_report_has_every_row_the_target_and_the_per_packet_costs():
    rounds = _rounds()
    summary = kc.summarise(rounds)
    doc = {"machine": {"cpu_model": "cpu", "cores": 2, "kernel": "6.18"},
           "settings": {"rounds": 3, "duration_s": 4.0}, "summary": summary, "ratios": kc.ratios(rounds, summary),
           "per_packet_ns": {"sc_count_in: TCP ACK, existing label set": 60},
           "map_memory": {"sc_traffic": {"max_entries": 4096, "memory_bytes": 525312}}}
    text = kc.render(doc)
    assert "| http-c32 | +counters | 39200 req/s" in text
    assert "- http-c32: ok; throughput ratio 0.980 (0.980-0.980 over 3 rounds)" in text
    assert "| sc_count_in: TCP ACK, existing label set | 60 |" in text
    assert "| sc_traffic | 4096 | 513.0 KiB |" in text
