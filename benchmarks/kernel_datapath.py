"""`python -m benchmarks.kernel_datapath`: the kernel layer's data-path targets (issue 3), each
measured on ONE sidecar, so a figure belongs to the feature and not to a pair of proxies:

    accelerate_local  sidecar CPU per request with local-hop acceleration / the same sidecar
                      without it; inbound (peer -> sidecar -> app on loopback: the hop is
                      sidecar -> app) and outbound (app -> sidecar -> peer: the hop is
                      app -> sidecar), closed loop (wrk, 32 connections, empty responses)
    splice            bytes per second of TCP passthrough (inbound.tcp_passthrough_ports)
                      spliced in the kernel / a direct connection to the same sink; and the
                      same passthrough copied in userspace (interception.splice: false)
    interception      sidecar CPU per request of outbound requests the eBPF interception
                      brings to the sidecar / the same requests from an app that connects
                      to the sidecar's outbound listener itself (no interception loaded):
                      what the connect hook, the original-destination lookup and the pod
                      interface's programs cost. Outbound rows send `Host: server.bench:80`,
                      a service of the sidecar's config, so both take the same proxy path.

The pods are the mesh benchmark's (benchmarks.mesh.topology: two network namespaces with
app and sidecar cgroups, joined by veth; nginx and a TCP sink in the server pod, wrk and
loadgen as the client pod's app). Each row has its own pair of pods and runs the sidecar,
eBPF interception, in one pod only. Rows are measured in interleaved rounds in a rotated
order; figures are medians with their min-max; the targets are ratios within the run.
CPU is user+sys of the sidecar's processes from /proc (what the sidecar costs its pod);
kernel work done outside them (softirqs, the splice's kworkers) is in "machine CPU".

Output: benchmarks/results/kernel-datapath.json and .md (or --out DIR).
"""
import argparse
import datetime
import json
import os
import shutil
import signal
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from . import machine, peers, report
from .mesh import loadgen, loads, proxies
from .mesh.topology import APP_PORT, OUTBOUND_PORT, SERVER_IP, Mesh, http_status

RESULTS_DIR = Path(__file__).resolve().parent / "results"
CLOSED = next(l for l in loads.STANDARD_LOADS if l.name == "closed-c32-0")
TCP = loads.TCP_LOAD
METRICS = ("requests_per_s", "cpu_us_per_req", "cpu_user_us_per_req", "cpu_system_us_per_req",
           "machine_cpu_us_per_req", "p50_us", "p99_us", "mb_per_s", "cpu_ms_per_gb",
           "machine_cpu_ms_per_gb", "errors")
# Outbound rows go to the server app as this service (by Host), with or without interception.
SERVICE_HOST = "server.bench:80"
SERVICE = {"name": "server-app", "match": [SERVICE_HOST], "endpoints": [f"{SERVER_IP}:{APP_PORT}"]}


@dataclass(frozen=True)
class Variant:
    name: str
    title: str
    sidecar: str = None          # the pod running the sidecar: "server", "client", None
    overlay: dict = field(default_factory=dict)   # interception keys beyond the eBPF ones
    load: object = CLOSED
    to_sidecar: bool = False     # the app connects to the sidecar's outbound listener itself


VARIANTS = (
    Variant("direct", "no sidecar", None, load=None),
    Variant("inbound", "inbound (sidecar -> app), eBPF", "server", {"accelerate_local": False}),
    Variant("inbound-accel", "inbound, eBPF + accelerate_local", "server", {"accelerate_local": True}),
    Variant("outbound", "outbound (app -> sidecar), eBPF", "client", {"accelerate_local": False}),
    Variant("outbound-accel", "outbound, eBPF + accelerate_local", "client", {"accelerate_local": True}),
    Variant("outbound-no-interception", "outbound, no interception (the app connects to the sidecar)",
            "client", {"mode": "off"}, to_sidecar=True),
    Variant("passthrough-spliced", "TCP passthrough, spliced in the kernel", "server", {"splice": "auto"}, TCP),
    Variant("passthrough-userspace", "TCP passthrough, copied in userspace", "server", {"splice": "false"}, TCP),
)

# (title, numerator row, denominator row, load, metric, bound, at_most)
TARGETS = (
    ("sidecar CPU per request, accelerate_local vs without: inbound", "inbound-accel", "inbound",
     CLOSED.name, "cpu_us_per_req", 0.6, True),
    ("sidecar CPU per request, accelerate_local vs without: outbound", "outbound-accel", "outbound",
     CLOSED.name, "cpu_us_per_req", 0.6, True),
    ("spliced TCP passthrough bytes/s vs a direct connection", "passthrough-spliced", "direct",
     TCP.name, "mb_per_s", 0.8, False),
    ("userspace TCP passthrough bytes/s vs a direct connection (for reference)", "passthrough-userspace",
     "direct", TCP.name, "mb_per_s", None, False),
    ("sidecar CPU per request, eBPF interception vs the app connecting to the sidecar", "outbound",
     "outbound-no-interception", CLOSED.name, "cpu_us_per_req", 1.05, True),
    ("machine CPU per request, the same (for reference: softirq work outside the sidecar)", "outbound",
     "outbound-no-interception", CLOSED.name, "machine_cpu_us_per_req", None, True),
)


@dataclass
class Row:
    """A variant, built: its mesh and its sidecar (the shape benchmarks.mesh.loads measures)."""
    variant: Variant
    mesh: Mesh = None
    proxies: dict = field(default_factory=dict)
    status: str = "ok"
    reason: str = None

    @property
    def name(self):
        return self.variant.name


def _sidecar_overlay(pod, variant):
    ic = {"mode": "ebpf", "cgroup": pod.app_cgroup.path, "interface": pod.dev}
    ic.update(variant.overlay)
    overlay = {"interception": ic}
    if variant.sidecar == "client":
        overlay["services"] = [SERVICE]
    return overlay


def _load_options(variant):
    """(headers, target) of the row's HTTP loads (see loads.measure)."""
    if variant.sidecar != "client":
        return (), None
    return ("Host: " + SERVICE_HOST,), (("127.0.0.1", OUTBOUND_PORT) if variant.to_sidecar else None)


def build(row, workdir, binary, sidecar_cmd):
    v = row.variant
    row.mesh = Mesh(workdir / v.name)
    try:
        row.mesh.build()
        proxies.start_app(row.mesh, binary)
        if v.sidecar:
            pod = row.mesh.server if v.sidecar == "server" else row.mesh.client
            path = workdir / v.name / "sidecar.yaml"
            path.write_text(yaml.safe_dump(proxies.sidecar_config(pod, _sidecar_overlay(pod, v))))
            cmd = list(sidecar_cmd or peers.sidecar_command()) + ["run", "-c", str(path)]
            peer = row.mesh.peer(f"sidecar-{pod.role}", pod.sidecar_command(cmd), 15000,
                                 lambda: pod.call(http_status, "127.0.0.1", 15000, "/readyz"),
                                 stop_signal=signal.SIGTERM)
            row.mesh.start(peer)
            peer.wait_ready()
            row.proxies = {pod.role: peer}
    except (peers.PeerError, loadgen.LoadgenError, OSError, RuntimeError) as e:
        row.status, row.reason = "error", str(e)
        row.mesh.close()
    return row


def run_rounds(rows, rounds, durations, binary, say):
    records = []
    for round_no in range(1, rounds + 1):
        shift = (round_no - 1) % len(rows)
        for row in rows[shift:] + rows[:shift]:
            loads_here = [row.variant.load] if row.variant.load else [CLOSED, TCP]
            for load in loads_here:
                record = {"round": round_no, "row": row.name, "load": load.name, "error": None}
                headers, target = _load_options(row.variant)
                try:
                    record.update(loads.measure(row, load, durations[load.kind], binary, headers, target))
                except loads.MeasureError as e:
                    record["error"] = str(e)
                records.append(record)
                if record["error"]:
                    say(f"[round {round_no}/{rounds}] {row.name:22} {load.name:13} ERROR {record['error'][:200]}")
                elif load.kind == "tcp":
                    say(f"[round {round_no}/{rounds}] {row.name:22} {load.name:13} {record['mb_per_s']:8.1f} MB/s"
                        f"  sidecar CPU {record['cpu_ms_per_gb'] or 0:6.1f} ms/GB"
                        f"  machine {record['machine_cpu_ms_per_gb'] or 0:6.1f} ms/GB")
                else:
                    say(f"[round {round_no}/{rounds}] {row.name:22} {load.name:13} {record['requests_per_s']:8,.0f} req/s"
                        f"  sidecar CPU {record['cpu_us_per_req'] or 0:6.1f} µs/req"
                        f"  (user {record['cpu_user_us_per_req'] or 0:.1f}, sys {record['cpu_system_us_per_req'] or 0:.1f})")
    return records


def summarize(records):
    """{(row, load): {metric: spread}} over the rounds without errors."""
    out = {}
    for key in {(r["row"], r["load"]) for r in records}:
        good = [r for r in records if (r["row"], r["load"]) == key and not r["error"]]
        out[key] = {m: report.spread([r.get(m) for r in good]) for m in METRICS}
        out[key]["rounds"] = len(good)
    return out


def judge(summary):
    verdicts = []
    for title, num, den, load, metric, bound, at_most in TARGETS:
        a = (summary.get((num, load)) or {}).get(metric)
        b = (summary.get((den, load)) or {}).get(metric)
        ratio = a["median"] / b["median"] if a and b and b["median"] else None
        if ratio is None:
            verdict = "n.a."
        elif bound is None:
            verdict = "–"
        else:
            verdict = "PASS" if (ratio <= bound if at_most else ratio >= bound) else "FAIL"
        verdicts.append({"target": title, "ratio_of": f"{num} / {den} at {load}", "metric": metric,
                         "ratio": ratio, "bound": bound, "at_most": at_most, "verdict": verdict})
    return verdicts


def _cell(s, fmt):
    if not s:
        return "–"
    return f"{fmt.format(s['median'])} ({fmt.format(s['min'])}–{fmt.format(s['max'])})"


def markdown(doc):
    m = doc["machine"]
    lines = [f"# Kernel data-path benchmark: {m.get('hostname', '')}, {doc['started'][:10]}", "",
             f"Machine: {m['cores']} cores, {m['cpu_model']}, kernel {m['kernel']}, {m['os']}. "
             f"{doc['rounds']} interleaved rounds of {doc['duration_s']:g} s; "
             f"load average {doc['loadavg_start']} at the start, {doc['loadavg_end']} at the end "
             "(a shared VM: other users' work runs at the same time).", "",
             "One sidecar per row (eBPF interception unless the row says otherwise), pods as in the mesh benchmark. CPU: the "
             "sidecar's processes (user+sys from /proc); machine: every CPU of the VM over the run.", "",
             "## Targets", "", "| target | ratio of | measured | bound | verdict |", "|---|---|---|---|---|"]
    for t in doc["targets"]:
        bound = "–" if t["bound"] is None else ("≤ %g×" if t["at_most"] else "≥ %g×") % t["bound"]
        ratio = "–" if t["ratio"] is None else "%.2f×" % t["ratio"]
        lines.append(f"| {t['target']} | {t['ratio_of']} ({t['metric']}) | {ratio} | {bound} | {t['verdict']} |")
    lines += ["", "## Requests (closed loop, 32 connections, empty responses)", "",
              "| row | req/s | sidecar CPU µs/req | user | sys | machine CPU µs/req | p50 µs (wrk) | errors |",
              "|---|---|---|---|---|---|---|---|"]
    s = {tuple(k.split("|")): v for k, v in doc["summary"].items()}
    for v in VARIANTS:
        row = s.get((v.name, CLOSED.name))
        if row:
            lines.append(f"| {v.title} | {_cell(row['requests_per_s'], '{:,.0f}')} | "
                         f"{_cell(row['cpu_us_per_req'], '{:.1f}')} | {_cell(row['cpu_user_us_per_req'], '{:.1f}')} | "
                         f"{_cell(row['cpu_system_us_per_req'], '{:.1f}')} | {_cell(row['machine_cpu_us_per_req'], '{:.1f}')} | "
                         f"{_cell(row['p50_us'], '{:.0f}')} | {_cell(row['errors'], '{:.0f}')} |")
    lines += ["", f"## TCP passthrough ({TCP.connections} connections, bulk, loadgen tcp-send)", "",
              "| row | MB/s | sidecar CPU ms/GB | machine CPU ms/GB | errors |", "|---|---|---|---|---|"]
    for v in VARIANTS:
        row = s.get((v.name, TCP.name))
        if row:
            lines.append(f"| {v.title} | {_cell(row['mb_per_s'], '{:,.0f}')} | {_cell(row['cpu_ms_per_gb'], '{:.0f}')} | "
                         f"{_cell(row['machine_cpu_ms_per_gb'], '{:.0f}')} | {_cell(row['errors'], '{:.0f}')} |")
    return "\n".join(lines) + "\n"



def main(argv=None):
    p = argparse.ArgumentParser(prog="python -m benchmarks.kernel_datapath", description=__doc__.split("\n\n")[0])
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--duration", type=float, default=4.0, help="seconds per run")
    p.add_argument("--only", nargs="+", choices=[v.name for v in VARIANTS], help="rows (direct always runs)")
    p.add_argument("--out", type=Path, default=RESULTS_DIR)
    p.add_argument("--sidecar-cmd", help="command that runs the sidecar CLI (default: .venv/bin/sidecar)")
    args = p.parse_args(sys.argv[1:] if argv is None else argv)
    if os.geteuid() != 0:
        print("benchmark: needs root (network namespaces, cgroups, BPF)", file=sys.stderr)
        return 1
    signal.signal(signal.SIGTERM, lambda s, f: (_ for _ in ()).throw(SystemExit(128 + s)))
    say = lambda m: print(m, flush=True)
    variants = [v for v in VARIANTS if v.name == "direct" or not args.only or v.name in args.only]
    workdir = Path(tempfile.mkdtemp(prefix="sidecar-datapath-"))
    workdir.chmod(0o755)
    rows = []
    started = datetime.datetime.now().astimezone()
    loadavg_start = machine.loadavg()
    try:
        binary = loadgen.build(workdir)
        for v in variants:
            row = build(Row(v), workdir, binary, args.sidecar_cmd.split() if args.sidecar_cmd else None)
            rows.append(row)
            say(f"  {v.name:22} {row.status} {row.reason or ''}")
        ready = [r for r in rows if r.status == "ok"]
        durations = {"closed": args.duration, "tcp": args.duration}
        for r in ready:            # warm-up: pools filled, programs and caches warm
            loads.measure(r, r.variant.load or CLOSED, 1.0, binary, *_load_options(r.variant))
        records = run_rounds(ready, args.rounds, durations, binary, say)
    finally:
        for row in rows:
            if row.mesh is not None:
                row.mesh.close()
        shutil.rmtree(workdir, ignore_errors=True)
    summary = summarize(records)
    doc = {"started": started.isoformat(), "machine": machine.describe_machine(), "rounds": args.rounds,
           "duration_s": args.duration, "loadavg_start": loadavg_start, "loadavg_end": machine.loadavg(),
           "rows": {r.name: {"status": r.status, "reason": r.reason} for r in rows},
           "records": [{k: v for k, v in r.items() if k not in ("wrk", "loadgen")} for r in records],
           "summary": {"|".join(k): v for k, v in summary.items()}, "targets": judge(summary)}
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "kernel-datapath.json").write_text(json.dumps(doc, indent=2, sort_keys=True))
    md = markdown(doc)
    (args.out / "kernel-datapath.md").write_text(md)
    say("\n" + md)
    return 0


if __name__ == "__main__":
    sys.exit(main())
