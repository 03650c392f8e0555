"""Turns raw benchmark rounds into medians, ratios to nginx, a JSON file and a Markdown table.

A round record (one wrk run against one target) is a flat dict made by run.py:

    {"round": 1, "scenario": "latency", "target": "nginx", "error": None,
     "requests_per_s": .., "requests": .., "cpu_us_per_req": .., "cpu_user_us_per_req": ..,
     "cpu_system_us_per_req": .., "app_cpu_us_per_req": .., "machine_cpu_us_per_req": ..,
     "p50_us": .., "p99_us": ..,
     "rss_total_kb": .., "rss_worker_max_kb": .., "errors": .., "wrk": {...}}

summarize() adds "added_p50_us" (p50 minus the direct row's p50 in the same round and
scenario: the rounds are interleaved, so this pairs runs taken seconds apart) and
reduces each metric to median, min and max over the rounds. Ratios divide medians by
nginx's medians.
"""

import json
import statistics
from pathlib import Path

__all__ = [
    "METRICS", "format_added", "format_mb", "format_ratio", "format_spread", "format_time", "one_line",
    "ratio", "spread", "summarize", "write_json", "write_markdown",
]

METRICS = (
    "requests_per_s",
    "cpu_us_per_req",
    "cpu_user_us_per_req",
    "cpu_system_us_per_req",
    "app_cpu_us_per_req",
    "machine_cpu_us_per_req",
    "p50_us",
    "p99_us",
    "added_p50_us",
    "rss_total_kb",
    "rss_worker_max_kb",
    "errors",
)


def spread(values):
    """{"median", "min", "max"} of the values that are not None (None when there are none)."""
    values = [v for v in values if v is not None]
    if not values:
        return None
    return {"median": statistics.median(values), "min": min(values), "max": max(values)}


def _add_added_p50(rounds):
    direct = {
        (r["round"], r["scenario"]): r["p50_us"]
        for r in rounds
        if r["target"] == "direct" and not r.get("error")
    }
    for r in rounds:
        base = direct.get((r["round"], r["scenario"]))
        if r.get("error") or base is None or r["target"] == "direct":
            r["added_p50_us"] = None
        else:
            r["added_p50_us"] = r["p50_us"] - base


def ratio(value, reference):
    """value / reference, or None when either is missing or the reference is not positive."""
    if value is None or reference is None or reference <= 0:
        return None
    return value / reference


def summarize(rounds, scenarios, targets, target_errors):
    """{scenario: {target: row}} where row holds a median/min/max per metric, the
    number of good rounds, ratios to nginx and an error (None when all went well).

    target_errors maps a target that could not run at all to its reason."""
    _add_added_p50(rounds)
    summary = {}
    for scenario in scenarios:
        rows = {}
        for target in targets:
            good = [r for r in rounds if r["scenario"] == scenario and r["target"] == target and not r.get("error")]
            failed = [r for r in rounds if r["scenario"] == scenario and r["target"] == target and r.get("error")]
            row = {metric: spread([r.get(metric) for r in good]) for metric in METRICS}
            row["rounds"] = len(good)
            row["error"] = target_errors.get(target) or (failed[0]["error"] if failed else None)
            if not good and row["error"] is None:
                row["error"] = "no completed rounds"
            rows[target] = row
        nginx = rows.get("nginx")
        for target, row in rows.items():
            if target == "direct":  # its CPU is the app's, not a proxy's: no ratio
                row["cpu_vs_nginx"] = row["added_p50_vs_nginx"] = None
                continue
            row["cpu_vs_nginx"] = ratio(_median(row, "cpu_us_per_req"), _median(nginx, "cpu_us_per_req"))
            row["added_p50_vs_nginx"] = ratio(_median(row, "added_p50_us"), _median(nginx, "added_p50_us"))
        summary[scenario] = rows
    return summary


def _median(row, metric):
    if not row or not row.get(metric):
        return None
    return row[metric]["median"]


def write_json(path, document):
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(document, indent=2, sort_keys=False) + "\n")
    return path


# ---- Markdown ----------------------------------------------------------------------


def format_time(us):
    if us is None:
        return "–"
    if abs(us) < 1000:
        return f"{us:.0f} µs"
    return f"{us / 1000:.2f} ms"


def format_added(us):
    if us is None:
        return "–"
    sign = "+" if us >= 0 else "−"
    return sign + format_time(abs(us))


def format_spread(spread, fmt):
    if spread is None:
        return "–"
    if spread["min"] == spread["max"]:
        return fmt(spread["median"])
    return f"{fmt(spread['median'])} ({fmt(spread['min'])}–{fmt(spread['max'])})"


def format_ratio(ratio):
    return "–" if ratio is None else f"{ratio:.2f}×"


def format_mb(kb):
    return f"{kb / 1024:.1f} MB"


def _cpu_cell(row):
    total, user, system = (row.get(k) for k in ("cpu_us_per_req", "cpu_user_us_per_req", "cpu_system_us_per_req"))
    if total is None:
        return "–"
    cell = format_spread(total, lambda v: f"{v:.1f}")
    if user and system:
        cell += f" [{user['median']:.1f}+{system['median']:.1f}]"
    return cell


def _table(rows, labels, with_added):
    head = ["proxy", "req/s", "CPU µs/req (user+sys)", "CPU/req vs nginx", "p50", "p99"]
    if with_added:
        head += ["p50 added", "added p50 vs nginx"]
    head += ["RSS total", "worker RSS", "errors"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for target, row in rows.items():
        label = labels.get(target, target)
        if row["rounds"] == 0:
            lines.append(f"| {label} | failed: {one_line(row['error'])} |" + " |" * (len(head) - 2))
            continue
        cells = [
            label,
            format_spread(row["requests_per_s"], lambda v: f"{v:,.0f}"),
            _cpu_cell(row),
            format_ratio(row["cpu_vs_nginx"]),
            format_spread(row["p50_us"], format_time),
            format_spread(row["p99_us"], format_time),
        ]
        if with_added:
            cells += [format_spread(row["added_p50_us"], format_added), format_ratio(row["added_p50_vs_nginx"])]
        cells += [
            format_mb(row["rss_total_kb"]["median"]),
            format_mb(row["rss_worker_max_kb"]["median"]),
            f"{row['errors']['max']:.0f}" + (f" ({one_line(row['error'])})" if row["error"] else ""),
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def one_line(text, limit=160):
    text = " ".join(str(text).split()).replace("|", "/")
    return text if len(text) <= limit else text[: limit - 1] + "…"


def render_markdown(document):
    """The Markdown report of a result document (the same dict written as JSON)."""
    m = document["machine"]
    s = document["settings"]
    tools = m["tools"]
    labels = {"direct": "direct (app itself)"}
    out = [
        f"# Reverse-proxy benchmark: {m['hostname']}, {document['started_at'][:10]}",
        "",
        f"Machine: {m['cores']} cores, {m['cpu_model']}, {m['memory_total_gib']} GiB, "
        f"kernel {m['kernel']}, {m['os']}.  ",
        f"Tools: {tools['nginx']}; {tools['haproxy']}; {tools['wrk']}; sidecar {tools['sidecar']}; "
        f"Python {tools['python']}.",
        "",
    ]
    if s.get("sidecar_config_extra"):
        out += [f"Sidecar config merged in: `{json.dumps(s['sidecar_config_extra'], sort_keys=True)}`.", ""]
    out += [
        "Method: every proxy runs one worker on loopback in front of the same nginx app "
        "(`return 200 \"ok\\n\"`, 1 worker, keep-alive). "
        f"{s['rounds']} round(s) of {s['duration_s']} s per proxy and scenario, interleaved in rotated "
        f"order after {s['warmup_s']} s of warm-up each; cells show the median and the min–max over rounds. "
        "CPU is user+sys of all of the proxy's processes (from /proc) over the run divided by the "
        "requests wrk completed; RSS is summed over those processes near the end of the load, worker "
        "RSS is the largest worker. The direct row sends wrk straight to the app: its CPU and RSS are "
        "the app's own, and its p50 is the base of \"p50 added\" (paired per round). Ratios divide by "
        "nginx's medians. The load generator shares the machine's cores with the proxy and the app.",
        "",
    ]
    for name, scenario in s["scenarios"].items():
        out += [f"## {scenario['title']} (`wrk -t{scenario['threads']} -c{scenario['connections']} --latency`)", ""]
        out += [_table(document["summary"][name], labels, with_added=scenario["connections"] == 1), ""]
    failures = {t: e for t, e in document.get("target_errors", {}).items() if e}
    if failures:
        out += ["## Errors", ""]
        out += [f"- **{t}**: {one_line(e, 600)}" for t, e in failures.items()]
        out += [""]
    out += [f"Raw rounds and machine details: `{document['json_file']}`.", ""]
    return "\n".join(out)


def write_markdown(path, document):
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(render_markdown(document))
    return path
