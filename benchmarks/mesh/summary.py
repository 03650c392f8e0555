"""Round records -> medians with spread, latency added over direct, ratios, target verdicts.

A round record is one load against one row in one round (made by run.py from
loads.measure): {"round", "load", "scenario", "error", <figures>}. summarize() first adds
"added_<p>_us" = the row's percentile minus the direct row's in the same round and load (the
rounds are interleaved, so each pair was taken seconds apart), then reduces every metric
to median, min and max over the rounds (report.spread). Ratios divide medians.

The targets (issue 6, and issue 3's acceleration target) are judged on one row each, from ratios within this run; a target
whose row is not available is "n.a.", and the same ratio is shown for the other
bpf-sidecar rows that ran, so a reader sees where today's sidecar stands.
"""
from dataclasses import dataclass

from ..report import ratio, spread

__all__ = ["METRICS", "TARGETS", "Target", "judge_targets", "summarize"]

PERCENTILES = ("p50", "p90", "p99", "p999")

METRICS = (
    "requests_per_s", "target_rate",
    "cpu_us_per_req", "cpu_client_us_per_req", "cpu_server_us_per_req",
    "cpu_user_us_per_req", "cpu_system_us_per_req",
    "sidecar_cgroups_cpu_us_per_req", "loadgen_cpu_us_per_req", "app_cpu_us_per_req",
    "machine_cpu_us_per_req", "loadgen_self_cpu_us_per_req",
    *(f"{p}_us" for p in PERCENTILES), *(f"added_{p}_us" for p in PERCENTILES),
    "send_lag_p50_us", "send_lag_p99_us", "max_queue",
    "mb_per_s", "cpu_ms_per_gb", "cpu_client_ms_per_gb", "cpu_server_ms_per_gb",
    "rss_total_kb", "rss_worker_max_kb", "errors", "steal_pct", "machine_busy_pct",
)


@dataclass(frozen=True)
class Target:
    name: str
    title: str
    row: str            # the row judged
    load: str
    metric: str
    reference: str      # the row it is divided by
    bound: float
    at_most: bool       # True: ratio <= bound passes; False: ratio >= bound passes


TARGETS = (
    Target("cpu-vs-nginx", "CPU per request (both sidecars), eBPF + acceleration vs nginx",
           "bpf-sidecar-ebpf-accel", "closed-c32-0", "cpu_us_per_req", "nginx", 0.6, True),
    Target("cpu-vs-haproxy", "CPU per request (both sidecars), eBPF + acceleration vs HAProxy",
           "bpf-sidecar-ebpf-accel", "closed-c32-0", "cpu_us_per_req", "haproxy", 0.6, True),
    Target("latency-vs-nginx", "added p50 latency at 2000 req/s, eBPF + acceleration vs nginx",
           "bpf-sidecar-ebpf-accel", "open-2000", "added_p50_us", "nginx", 0.5, True),
    Target("passthrough-vs-direct", "TCP passthrough throughput vs direct",
           "bpf-sidecar", "tcp", "mb_per_s", "direct", 0.8, False),
    # The kernel layer's own target (issue 3): what accelerate_local saves the same sidecar.
    Target("accel-vs-ebpf", "CPU per request (both sidecars), eBPF with accelerate_local vs without",
           "bpf-sidecar-ebpf-accel", "closed-c32-0", "cpu_us_per_req", "bpf-sidecar-ebpf", 0.6, True),
)

# Issue 3's other target: the eBPF rows splice their tunnels in the kernel.
TARGETS += (
    Target("spliced-passthrough-vs-direct", "spliced TCP passthrough throughput (eBPF) vs direct",
           "bpf-sidecar-ebpf", "tcp", "mb_per_s", "direct", 0.8, False),
)


def _add_added_latency(records):
    direct = {(r["round"], r["load"]): r for r in records if r["scenario"] == "direct" and not r.get("error")}
    for r in records:
        base = direct.get((r["round"], r["load"]))
        for p in PERCENTILES:
            key = f"{p}_us"
            ok = not r.get("error") and base is not None and r["scenario"] != "direct"
            ok = ok and r.get(key) is not None and base.get(key) is not None
            r[f"added_{p}_us"] = r[key] - base[key] if ok else None


def _median(row, metric):
    if not row or not row.get(metric):
        return None
    return row[metric]["median"]


def summarize(records, load_names, scenario_names, unavailable):
    """{load: {scenario: row}}: a median/min/max per metric, the number of good rounds,
    ratios, and "error" (None when every round went well). unavailable maps a row that
    was not measured at all to its reason; such rows are left out."""
    _add_added_latency(records)
    summary = {}
    for load in load_names:
        rows = {}
        for name in scenario_names:
            if name in unavailable:
                continue
            mine = [r for r in records if r["load"] == load and r["scenario"] == name]
            if not mine:
                continue
            good = [r for r in mine if not r.get("error")]
            failed = [r for r in mine if r.get("error")]
            row = {metric: spread([r.get(metric) for r in good]) for metric in METRICS}
            row["rounds"] = len(good)
            row["error"] = failed[0]["error"] if failed else None
            rows[name] = row
        for name, row in rows.items():
            row["cpu_vs_nginx"] = ratio(_median(row, "cpu_us_per_req"), _median(rows.get("nginx"), "cpu_us_per_req"))
            row["cpu_vs_haproxy"] = ratio(_median(row, "cpu_us_per_req"),
                                          _median(rows.get("haproxy"), "cpu_us_per_req"))
            row["added_p50_vs_nginx"] = ratio(_median(row, "added_p50_us"),
                                              _median(rows.get("nginx"), "added_p50_us"))
            row["mb_per_s_vs_direct"] = ratio(_median(row, "mb_per_s"), _median(rows.get("direct"), "mb_per_s"))
            row["requests_per_s_vs_direct"] = ratio(_median(row, "requests_per_s"),
                                                    _median(rows.get("direct"), "requests_per_s"))
        summary[load] = rows
    return summary


def _target_ratio(summary, target, row_name):
    rows = summary.get(target.load, {})
    return ratio(_median(rows.get(row_name), target.metric), _median(rows.get(target.reference), target.metric))


def judge_targets(summary, unavailable):
    """One verdict per target: {"target", "title", "row", "ratio", "bound", "verdict", "reason",
    "other_rows": {row: ratio}} with verdict PASS, FAIL or n.a."""
    out = []
    for t in TARGETS:
        value = _target_ratio(summary, t, t.row)
        if t.row in unavailable:
            verdict, reason = "n.a.", f"{t.row} not available: {unavailable[t.row]}"
        elif t.reference in unavailable:
            verdict, reason = "n.a.", f"{t.reference} not available: {unavailable[t.reference]}"
        elif value is None:
            verdict, reason = "n.a.", f"no {t.metric} for {t.row} or {t.reference} at {t.load}"
        else:
            passed = value <= t.bound if t.at_most else value >= t.bound
            verdict, reason = ("PASS" if passed else "FAIL"), None
        others = {}
        for name in summary.get(t.load, {}):
            if name.startswith("bpf-sidecar") and name not in (t.row, t.reference):
                others[name] = _target_ratio(summary, t, name)
        out.append({
            "target": t.name, "title": t.title, "row": t.row, "reference": t.reference, "load": t.load,
            "metric": t.metric, "ratio": value, "bound": t.bound, "at_most": t.at_most,
            "verdict": verdict, "reason": reason, "other_rows": others,
        })
    return out
