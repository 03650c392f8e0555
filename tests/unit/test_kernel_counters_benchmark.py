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


def test_the_counting_target_is_counters_over_the_same_programs_without_them():
    ratios = kc.ratios(kc.summarise(_rounds()))
    assert ratios["http-c32"]["ratio"] == 0.98 and ratios["http-c32"]["ok"]
    assert ratios["http-c32"]["policy_tables_ratio"] == round(0.95 / 0.98, 4)
    failing = kc.ratios({"http-c32": {"steer+policy": {"rate": 100.0}, "+counters": {"rate": 96.0}}})
    assert failing["http-c32"] == {"ratio": 0.96, "bound": 0.97, "ok": False}


def test_report_has_every_row_the_target_and_the_per_packet_costs():
    summary = kc.summarise(_rounds())
    doc = {"machine": {"cpu_model": "cpu", "cores": 2, "kernel": "6.18"},
           "settings": {"rounds": 3, "duration_s": 4.0}, "summary": summary, "ratios": kc.ratios(summary),
           "per_packet_ns": {"sc_count_in: TCP ACK, existing label set": 60},
           "map_memory": {"sc_traffic": {"max_entries": 4096, "memory_bytes": 525312}}}
    text = kc.render(doc)
    assert "| http-c32 | +counters | 39200 req/s" in text
    assert "- http-c32: 0.980 (ok)" in text
    assert "| sc_count_in: TCP ACK, existing label set | 60 |" in text
    assert "| sc_traffic | 4096 | 513.0 KiB |" in text
