"""The Markdown report of a mesh result document (the dict run.py writes as JSON).

`python -m benchmarks.mesh.render RESULT.json` writes RESULT.md again from a result file.
"""
import statistics

from ..report import format_added, format_mb, format_ratio, format_spread, format_time, one_line

__all__ = ["render_headline", "render_markdown", "render_targets"]

METHOD = """\
Method: each row runs in its own pair of pods: network namespaces with child cgroups,
joined by a veth pair. The server pod runs the app, nginx (1 worker, keep-alive, `/0` an
empty 200, `/1k` and `/64k` files), and a TCP sink; the client pod runs the load
generator as the app (its own uid and cgroup) calling the server pod's address. Each
proxy runs one worker in each pod, in the pod's sidecar cgroup. The bpf-sidecar installs
its own interception (`interception.mode`, on the pod's app cgroup and interface):
iptables REDIRECT chains in the pod's namespace, or eBPF programs (cgroup connect,
sockops and getsockopt, TC steering on the pod interface); the harness adds no rules for
it. nginx and HAProxy have no interception of their own, so the harness installs iptables
REDIRECT rules for them: the app's outbound TCP to 15001 in the client pod, TCP arriving
on the pod interface to 15006 in the server pod. They
cannot read a redirected connection's original destination, so they are configured as
what an nginx or HAProxy sidecar is in practice: fixed reverse proxies to the known
server address (client pod) and to the local app (server pod), with keep-alive pools, and
opaque TCP on its own listener and REDIRECT rule per port (nginx `stream`, HAProxy
`mode tcp`). The bpf-sidecar finds the destination itself (SO_ORIGINAL_DST) and carries
the TCP port through `inbound.tcp_passthrough_ports`. Every request carries the same
`Authorization` header (the policy row's token), in every row.

Loads: closed loop with wrk (the most a row serves; wrk's latency is flattered by
coordinated omission and shown only for reference); open loop at a fixed rate with the
harness's loadgen (C, compiled at run time; 32 keep-alive connections; every request timed
from when it was due, requests that wait for a free connection included); bulk TCP with
loadgen tcp-send (bytes counted once the far end has closed). CPU is user+sys from /proc
of every process of both pods' proxies, over the run, per request completed (per GB for
TCP); RSS is summed over those processes near the end of the load. "added" is a
percentile minus the direct row's in the same round. Rounds are interleaved, each in a
rotated row order; cells show the median and, in brackets, the min-max over rounds.
"""


def _row_label(document, name):
    return document["scenarios"][name]["title"]


def _cpu_cell(row, unit="us_per_req"):
    total = row.get(f"cpu_{unit}")
    if not total:
        return "–"
    cell = format_spread(total, lambda v: f"{v:.1f}")
    client, server = row.get(f"cpu_client_{unit}"), row.get(f"cpu_server_{unit}")
    if client and server:
        cell += f" [{client['median']:.1f} + {server['median']:.1f}]"
    return cell


def _errors_cell(row):
    errors = row.get("errors")
    text = f"{errors['max']:.0f}" if errors else "–"
    if row.get("error"):
        text += f" ({one_line(row['error'], 120)})"
    return text


def _table(head, lines):
    return "\n".join(["| " + " | ".join(head) + " |", "|" + "---|" * len(head)] + lines)


def _rss(row):
    rss = row.get("rss_total_kb")
    return format_mb(rss["median"]) if rss and rss["median"] else "–"


def _closed_table(document, rows):
    head = ["row", "req/s", "vs direct", "CPU µs/req [client + server]", "vs nginx", "vs HAProxy",
            "p50 (wrk)", "p99 (wrk)", "sidecar RSS", "errors"]
    lines = []
    for name, row in rows.items():
        lines.append("| " + " | ".join([
            _row_label(document, name),
            format_spread(row["requests_per_s"], lambda v: f"{v:,.0f}"),
            format_ratio(row["requests_per_s_vs_direct"]) if name != "direct" else "–",
            _cpu_cell(row), format_ratio(row["cpu_vs_nginx"]), format_ratio(row["cpu_vs_haproxy"]),
            format_spread(row["p50_us"], format_time), format_spread(row["p99_us"], format_time),
            _rss(row), _errors_cell(row),
        ]) + " |")
    return _table(head, lines)


def _open_table(document, rows):
    head = ["row", "achieved req/s", "p50", "p90", "p99", "p99.9", "added p50", "added p99", "added p99.9",
            "added p50 vs nginx", "CPU µs/req [client + server]", "sidecar RSS", "errors"]
    lines = []
    for name, row in rows.items():
        lines.append("| " + " | ".join([
            _row_label(document, name),
            format_spread(row["requests_per_s"], lambda v: f"{v:,.0f}"),
            *(format_spread(row[f"{p}_us"], format_time) for p in ("p50", "p90", "p99", "p999")),
            *(format_spread(row[f"added_{p}_us"], format_added) for p in ("p50", "p99", "p999")),
            format_ratio(row["added_p50_vs_nginx"]),
            _cpu_cell(row), _rss(row), _errors_cell(row),
        ]) + " |")
    return _table(head, lines)


def _tcp_table(document, rows):
    head = ["row", "MB/s", "vs direct", "CPU ms/GB [client + server]", "sidecar RSS", "errors"]
    lines = []
    for name, row in rows.items():
        lines.append("| " + " | ".join([
            _row_label(document, name),
            format_spread(row["mb_per_s"], lambda v: f"{v:,.0f}"),
            format_ratio(row["mb_per_s_vs_direct"]) if name != "direct" else "–",
            _cpu_cell(row, "ms_per_gb"), _rss(row), _errors_cell(row),
        ]) + " |")
    return _table(head, lines)


def _fmt_target_ratio(value):
    return "–" if value is None else f"{value:.2f}×"


def render_targets(document):
    """The targets as a Markdown table (also printed at the end of a run)."""
    lines = []
    for t in document["targets"]:
        bound = f"{'≤' if t['at_most'] else '≥'} {t['bound']:g}×"
        others = ", ".join(f"{name}: {_fmt_target_ratio(v)}" for name, v in t["other_rows"].items()) or "–"
        verdict = t["verdict"] + (f" ({one_line(t['reason'], 200)})" if t["reason"] else "")
        lines.append(f"| {t['title']} | {t['row']} / {t['reference']} at {t['load']} | "
                     f"{_fmt_target_ratio(t['ratio'])} | {bound} | {verdict} | {others} |")
    return _table(["target", "ratio of", "measured", "bound", "verdict", "other bpf-sidecar rows"], lines)


def _row_detail(info):
    if info["reason"]:
        waits = f"waits for {info['waits_for']}: " if info["status"] == "n.a." and info["waits_for"] else ""
        return one_line(waits + info["reason"], 300)
    return one_line("; ".join(f"{k}: {v}" for k, v in info["evidence"].items()), 300)


def render_headline(document):
    """One line per measured row with the figures a reader compares first (medians)."""
    summ = document["summary"]

    def med(load, row, metric, fmt):
        cell = summ.get(load, {}).get(row, {}).get(metric)
        return fmt(cell["median"]) if cell else "–"

    head = ["row", "req/s, 32 conns", "CPU µs/req, 32 conns", "p50 / p99 at 2000 req/s", "added p50 at 2000",
            "TCP MB/s", "sidecar RSS", "errors"]
    lines = []
    for name, info in document["scenarios"].items():
        if info["status"] != "ok":
            continue
        errors = sum(int(summ[load][name]["errors"]["max"]) for load in summ
                     if name in summ[load] and summ[load][name].get("errors"))
        rss = [summ[load][name]["rss_total_kb"]["median"] for load in summ
               if name in summ[load] and summ[load][name].get("rss_total_kb")]
        lines.append("| " + " | ".join([
            info["title"],
            med("closed-c32-0", name, "requests_per_s", lambda v: f"{v:,.0f}"),
            med("closed-c32-0", name, "cpu_us_per_req", lambda v: f"{v:.1f}") if name != "direct" else "–",
            med("open-2000", name, "p50_us", format_time) + " / " + med("open-2000", name, "p99_us", format_time),
            med("open-2000", name, "added_p50_us", format_added),
            med("tcp", name, "mb_per_s", lambda v: f"{v:,.0f}"),
            format_mb(max(rss)) if rss and max(rss) else "–",
            str(errors),
        ]) + " |")
    return _table(head, lines)


def _noise(document):
    steal, busy = [], []
    for r in document["rounds"]:
        if not r.get("error") and r.get("steal_pct") is not None:
            steal.append(r["steal_pct"])
            busy.append(r["machine_busy_pct"])
    noise = document["noise"]
    text = (f"Noise: load average {noise['loadavg_start']} at the start, {noise['loadavg_end']} at the end; "
            f"{noise['note']}.")
    if steal:
        text += (f" CPU stolen by the hypervisor during the runs: median {statistics.median(steal):.1f}%, "
                 f"max {max(steal):.1f}%; machine busy during the runs: median {statistics.median(busy):.0f}%.")
    return text


def _loadgen(document):
    lines = []
    for entry in document["loadgen_limit"]:
        if entry.get("error"):
            lines.append(f"- at {entry['rate']} req/s: failed ({one_line(entry['error'])})")
            continue
        lines.append(
            f"- asked for {entry['rate']:,} req/s against direct: achieved {entry['achieved_rps']:,.0f} req/s, "
            f"p50 {format_time(entry['p50_us'])}, p99 {format_time(entry['p99_us'])}, "
            f"send lag p99 {format_time(entry['send_lag_p99_us'])}, "
            f"{entry['cpu_us_per_req']:.1f} µs of its own CPU per request, errors {entry['errors']}")
    own = [r["loadgen_self_cpu_us_per_req"] for r in document["rounds"]
           if r.get("loadgen_self_cpu_us_per_req") and r.get("target_rate") == 5000]
    if own:
        per = statistics.median(own)
        lines.append(f"- at 5000 req/s it used {per:.1f} µs of CPU per request (median over rows and rounds): "
                     f"{5000 * per / 1e4:.1f}% of one core")
    return "\n".join(lines)


def render_markdown(document):
    m, s = document["machine"], document["settings"]
    tools = m["tools"]
    out = [
        f"# Mesh benchmark: {m['hostname']}, {document['started_at'][:10]}",
        "",
        f"Machine: {m['cores']} cores, {m['cpu_model']}, {m['memory_total_gib']} GiB, "
        f"kernel {m['kernel']}, {m['os']}.  ",
        f"Tools: {tools['nginx']}; {tools['haproxy']}; {tools['wrk']}; sidecar {tools['sidecar']}; "
        f"Python {tools['python']}.  ",
        f"Settings: {s['rounds']} round(s); run lengths {s['durations_s']} s; warm-up {s['warmup_s']} s per row"
        f"{' (quick)' if s['quick'] else ''}.",
        "",
        _noise(document),
        "",
        render_headline(document),
        "",
        METHOD,
        "## Rows",
        "",
        _table(["row", "status", "evidence or reason"], [
            f"| {info['title']} (`{name}`) | {info['status']} | {_row_detail(info)} |"
            for name, info in document["scenarios"].items()]),
        "",
        "## Targets (ratios within this run)",
        "",
        render_targets(document),
        "",
    ]
    for png in document.get("plots", []):
        out += [f"![{png}]({png})", ""]
    sections = {"closed": "Throughput, closed loop (wrk)", "open": "Latency, open loop (loadgen)",
                "tcp": "TCP passthrough (loadgen tcp-send)"}
    tables = {"closed": _closed_table, "open": _open_table, "tcp": _tcp_table}
    for kind, heading in sections.items():
        names = [n for n, load in s["loads"].items() if load["kind"] == kind]
        if not names:
            continue
        out += [f"## {heading}", ""]
        for name in names:
            out += [f"### {s['loads'][name]['title']}", "", tables[kind](document, document["summary"][name]), ""]
    out += ["## Load generator", "", _loadgen(document), "",
            f"Raw rounds, evidence and machine details: `{document['json_file']}`.", ""]
    return "\n".join(out)


if __name__ == "__main__":
    # `python -m benchmarks.mesh.render RESULT.json`: writes RESULT.md again from the JSON.
    import json
    import sys
    from pathlib import Path

    source = Path(sys.argv[1])
    target = source.with_suffix(".md")
    target.write_text(render_markdown(json.loads(source.read_text())))
    print(f"wrote {target}")
