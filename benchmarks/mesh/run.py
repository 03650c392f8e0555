"""`python -m benchmarks.mesh`: what a sidecar costs between two pods, against nginx and
HAProxy as sidecars, on this machine in one run.

For every row (scenarios.py) the harness builds its own client pod and server pod
(topology.py: namespaces, cgroups, veth), starts the app (nginx) and a TCP sink in the
server pod, installs the row's interception and proxies, and proves the row is what it
says with a probe. Rows whose feature does not exist yet are reported "not available"
with the reason. Then, for each round, for each load (loads.py), every row runs in an
order rotated each round, so drift on a shared machine hits all rows alike. Figures are
the medians over rounds with their min-max; targets are ratios within the run.

Everything created (processes, namespaces, veth, cgroups, the temporary directory) is
removed on the way out, also on failure, Ctrl-C or SIGTERM.

Output: <out>/<YYYY-MM-DD>-<hostname>-mesh.json (machine, settings, every round, summary,
targets), the same stem with .md (tables) and -latency.png / -cpu.png (plots), and
<out>/mesh-latest.md. <out> is benchmarks/results for a full run; --quick (1 round of 2 s
runs of 3 loads) writes to a new temporary directory unless --out is given.
"""
import argparse
import datetime
import os
import shlex
import shutil
import signal
import socket
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from sidecar.netns_topology import CommandError

from .. import machine, peers, report, wrk
from . import credentials, loadgen, loads, plots, proxies, render, summary
from .scenarios import SCENARIOS, Unavailable, sidecar_check
from .topology import APP_PORT, SERVER_IP, Mesh

RESULTS_DIR = Path(__file__).resolve().parent.parent / "results"
DURATIONS = {"closed": 3, "open": 4, "tcp": 3}
QUICK_DURATIONS = {"closed": 2, "open": 2, "tcp": 2}
SETUP_ERRORS = (peers.PeerError, CommandError, loadgen.LoadgenError, OSError, RuntimeError)


def parse_args(argv):
    names = [s.name for s in SCENARIOS]
    p = argparse.ArgumentParser(prog="python -m benchmarks.mesh", description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="1 round of 2 s runs of 3 loads, results to a temp dir")
    p.add_argument("--rounds", type=int, help="interleaved rounds (default 3; 1 with --quick)")
    p.add_argument("--duration", type=float, help="seconds per run for every load (default: closed 3, open 4, tcp 3)")
    p.add_argument("--warmup", type=float, help="seconds of warm-up per row (default 2; 1 with --quick)")
    p.add_argument("--out", type=Path, help="results directory (default benchmarks/results; a temp dir with --quick)")
    p.add_argument("--only", nargs="+", choices=names, help="rows to run (direct always runs)")
    p.add_argument("--loads", nargs="+", help="load names to run (default: the standard set)")
    p.add_argument("--sidecar-cmd", help="command that runs the sidecar CLI (default: .venv/bin/sidecar)")
    args = p.parse_args(argv)
    args.rounds = args.rounds or (1 if args.quick else 3)
    base = QUICK_DURATIONS if args.quick else DURATIONS
    args.durations = {k: (args.duration or v) for k, v in base.items()}
    args.warmup = args.warmup if args.warmup is not None else (1 if args.quick else 2)
    available = {load.name: load for load in loads.STANDARD_LOADS}
    if args.loads:
        unknown = [n for n in args.loads if n not in available]
        if unknown:
            p.error(f"unknown load(s) {unknown}; choose from {sorted(available)}")
        args.load_list = [available[n] for n in args.loads]
    else:
        args.load_list = list(loads.QUICK_LOADS if args.quick else loads.STANDARD_LOADS)
    if args.out is None:
        args.out = Path(tempfile.mkdtemp(prefix="sidecar-mesh-results-")) if args.quick else RESULTS_DIR
    return args


def say(message):
    try:
        print(message, flush=True)
    except BrokenPipeError:
        # The reader went away (`... | head`): go on without output, so that the run still
        # ends by removing its pods instead of dying on the next line it prints.
        sys.stdout = open(os.devnull, "w")


@dataclass
class Context:
    """What every row shares: the load generator, the request headers, key material."""

    binary: Path
    headers: tuple
    jwks_path: Path
    certificates: dict
    sidecar_cmd: list = None


@dataclass
class Row:
    """One scenario, built: its mesh and proxies, or why it is not measured."""

    scenario: object
    mesh: Mesh = None
    proxies: dict = field(default_factory=dict)   # "client"/"server" -> PeerProcess
    status: str = "ok"                            # ok | n.a. | error
    reason: str = None
    evidence: dict = field(default_factory=dict)
    interception: str = None                      # who steers the app's traffic, and how

    @property
    def name(self):
        return self.scenario.name


def build_row(row, workdir, context):
    """Builds the row's pods and proxies and runs its proof; never raises for a row that
    cannot run (the row's status says why). The caller holds the row before this starts,
    so a Ctrl-C or SIGTERM in the middle still finds the pods to remove."""
    scenario = row.scenario
    row.mesh = Mesh(workdir / scenario.name)
    # Until the row's own proxies are started, a failure is the harness's, never "not
    # available"; from then on an optional row's failure is its feature's.
    feature_stage = False
    try:
        row.mesh.build()
        proxies.start_app(row.mesh, context.binary)
        feature_stage = True
        paths = None
        if scenario.proxy == "sidecar":
            paths = proxies.write_sidecar_configs(
                row.mesh, lambda pod: scenario.overlay(pod, context) if scenario.overlay else {})
            for role, path in paths.items():
                refused = sidecar_check(path, context.sidecar_cmd)
                if refused:
                    raise Unavailable(f"`sidecar check` refuses the {role} pod's config: {refused}")
            row.interception = f"the sidecar's own, {proxies.interception_mode(paths['client'])}"
        elif scenario.harness_iptables:
            row.interception = "iptables REDIRECT installed by the harness"
        if scenario.harness_iptables:
            row.mesh.intercept(tcp_by_listener=True)
        if scenario.proxy:
            server, client = proxies.start_proxies(row.mesh, scenario.proxy, paths, context.sidecar_cmd)
            row.proxies = {"client": client, "server": server}
        row.evidence = scenario.proof(row, context)
    except Unavailable as e:
        row.status, row.reason = ("n.a." if scenario.optional else "error"), str(e)
    except SETUP_ERRORS as e:
        row.status = "n.a." if scenario.optional and feature_stage else "error"
        row.reason = f"did not start: {e}"
    if row.status != "ok":
        row.mesh.close()
    return row


def _identities(row):
    return {p.name: p.identities() for p in row.mesh.processes} if row.mesh else {}


def warm_up(rows, args, context):
    if not args.warmup:
        return
    say(f"warm-up: {args.warmup:g} s per row")
    for row in rows:
        try:
            wrk.run_wrk(f"http://{SERVER_IP}:{APP_PORT}/0", threads=2, connections=32,
                        duration_s=max(1, int(args.warmup)), headers=context.headers,
                        command_prefix=row.mesh.client.app_command([]))
        except wrk.WrkError as e:
            say(f"  warm-up of {row.name} failed: {e}")


def measure_loadgen_limit(direct, args, context):
    """The load generator's own ceiling: open loop at rising rates against the direct row."""
    rates = (10000,) if args.quick else (10000, 20000)
    out = []
    for rate in rates:
        cmd = loadgen.http_command(context.binary, SERVER_IP, APP_PORT, path="/0", rate=rate,
                                   connections=loads.OPEN_LOOP_CONNECTIONS, duration_s=1 if args.quick else 2,
                                   headers=context.headers)
        try:
            rep, _ = loadgen.run(direct.mesh.client.app_command(cmd), 30)
        except loadgen.LoadgenError as e:
            out.append({"rate": rate, "error": str(e)})
            continue
        cpu = rep["cpu_user_s"] + rep["cpu_system_s"]
        out.append({"rate": rate, "achieved_rps": rep["achieved_rps"], "p50_us": rep["latency_us"]["p50"],
                    "p99_us": rep["latency_us"]["p99"], "send_lag_p99_us": rep["send_lag_us"]["p99"],
                    "errors": sum(rep["errors"].values()) + rep["non_2xx"],
                    "cpu_us_per_req": cpu * 1e6 / rep["sent"] if rep["sent"] else None})
        say(f"  loadgen at {rate} req/s: achieved {rep['achieved_rps']:.0f}, "
            f"{out[-1]['cpu_us_per_req'] or 0:.1f} µs CPU per request of its own")
    return out


def _progress(round_no, rounds, load, record):
    head = f"[round {round_no}/{rounds}] {load.name:13} {record['scenario']:23}"
    if record.get("error"):
        return f"{head} ERROR: {record['error'][:300]}"
    if load.kind == "tcp":
        return (f"{head} {record['mb_per_s']:8.1f} MB/s  CPU {record['cpu_ms_per_gb'] or 0:7.1f} ms/GB  "
                f"errors {record['errors']}")
    p999 = f"  p99.9 {record['p999_us']:7.0f}" if record.get("p999_us") is not None else ""
    return (f"{head} {record['requests_per_s']:8,.0f} req/s  CPU {record['cpu_us_per_req'] or 0:6.1f} µs/req  "
            f"p50 {record['p50_us']:7.0f}  p99 {record['p99_us']:7.0f}{p999} µs  "
            f"RSS {record['rss_total_kb'] / 1024:5.1f} MB  errors {record['errors']}")


def run_rounds(rows, args, context):
    records = []
    for round_no in range(1, args.rounds + 1):
        shift = (round_no - 1) % len(rows)
        order = rows[shift:] + rows[:shift]
        for load in args.load_list:
            for row in order:
                if not row.scenario.runs(load) or row.status != "ok":
                    continue
                record = {"round": round_no, "load": load.name, "scenario": row.name, "error": None}
                dead = [p.name for p in row.mesh.processes if not p.alive()]
                if dead:
                    record["error"] = f"exited: {', '.join(dead)}"
                else:
                    try:
                        record.update(loads.measure(row, load, args.durations[load.kind], context.binary,
                                                    headers=context.headers))
                    except loads.MeasureError as e:
                        record["error"] = str(e)
                records.append(record)
                say(_progress(round_no, args.rounds, load, record))
    return records


def _raise_system_exit(signum, _frame):
    raise SystemExit(128 + signum)



def main(argv=None):
    args = parse_args(sys.argv[1:] if argv is None else argv)
    if os.geteuid() != 0:
        print("benchmark: the mesh harness needs root (network namespaces, cgroups, iptables)", file=sys.stderr)
        return 1
    signal.signal(signal.SIGTERM, _raise_system_exit)
    signal.signal(signal.SIGHUP, _raise_system_exit)
    selected = [s for s in SCENARIOS if s.name == "direct" or not args.only or s.name in args.only]
    started_at = datetime.datetime.now().astimezone()
    per_row = sum(args.durations[load.kind] for load in args.load_list)
    say(f"mesh benchmark: {args.rounds} round(s) x {len(args.load_list)} loads x up to {len(selected)} rows "
        f"(about {args.rounds * per_row:.0f} s of load per available row)")

    workdir = Path(tempfile.mkdtemp(prefix="sidecar-mesh-"))
    workdir.chmod(0o755)    # nginx workers and the app's uid read files under here
    rows = []
    loadgen_limit = []
    loadavg_start = machine.loadavg()
    try:
        binary = loadgen.build(workdir)
        jwks_path, token = credentials.jwt_material(workdir / "credentials")
        context = Context(
            binary=binary,
            # Every row's requests carry the same token, so every row moves the same bytes.
            headers=(f"Authorization: Bearer {token}",),
            jwks_path=jwks_path,
            certificates=credentials.pod_certificates(workdir / "credentials"),
            sidecar_cmd=shlex.split(args.sidecar_cmd) if args.sidecar_cmd else None,
        )
        for path in (workdir / "credentials").iterdir():
            path.chmod(0o644)
        say(f"building pods in {workdir}")
        for scenario in selected:
            row = Row(scenario)
            rows.append(row)
            build_row(row, workdir, context)
            detail = row.reason if row.reason else ", ".join(f"{k} {v}" for k, v in row.evidence.items())
            say(f"  {row.name:23} {row.status:5} {detail}")
        ready = [r for r in rows if r.status == "ok"]
        direct = next((r for r in ready if r.name == "direct"), None)
        if direct is None:
            raise peers.PeerError(f"the direct row did not come up: {rows[0].reason}")
        say("load generator limit (open loop against direct):")
        loadgen_limit = measure_loadgen_limit(direct, args, context)
        warm_up(ready, args, context)
        records = run_rounds(ready, args, context)
    finally:
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        say("removing pods")
        for row in rows:
            if row.mesh is not None:
                row.mesh.close()
        shutil.rmtree(workdir, ignore_errors=True)
        signal.signal(signal.SIGINT, signal.default_int_handler)
        signal.signal(signal.SIGTERM, _raise_system_exit)

    finished_at = datetime.datetime.now().astimezone()
    unavailable = {r.name: r.reason for r in rows if r.status != "ok"}
    load_names = [load.name for load in args.load_list]
    summarized = summary.summarize(records, load_names, [r.name for r in rows], unavailable)
    stem = f"{started_at:%Y-%m-%d}-{socket.gethostname()}-mesh"
    out = Path(args.out)
    json_path = out / f"{stem}.json"
    document = {
        "started_at": started_at.isoformat(timespec="seconds"),
        "finished_at": finished_at.isoformat(timespec="seconds"),
        "json_file": json_path.name,
        "settings": {
            "quick": args.quick, "rounds": args.rounds, "durations_s": args.durations, "warmup_s": args.warmup,
            "loads": {load.name: {"kind": load.kind, "title": load.title, "connections": load.connections,
                                  "payload": load.payload, "rate": load.rate, "threads": load.threads}
                      for load in args.load_list},
        },
        "machine": machine.describe_machine(),
        "noise": {"loadavg_start": loadavg_start, "loadavg_end": machine.loadavg(),
                  "note": "shared 2-core VM: other users' tests may run at the same time; "
                          "steal_pct and machine_busy_pct per round show how busy it was"},
        "temp_dir": str(workdir),
        "scenarios": {
            r.name: {"title": r.scenario.title, "proxy": r.scenario.proxy, "interception": r.interception,
                     "status": r.status, "reason": r.reason, "waits_for": r.scenario.waits_for or None,
                     "evidence": r.evidence, "processes": _identities(r),
                     "resources": r.mesh.resources() if r.mesh else {}}
            for r in rows
        },
        "loadgen_limit": loadgen_limit,
        "summary": summarized,
        "targets": summary.judge_targets(summarized, unavailable),
        "rounds": records,
    }
    out.mkdir(parents=True, exist_ok=True)
    pngs = plots.write_plots(out / stem, document)
    document["plots"] = [p.name for p in pngs]
    report.write_json(json_path, document)
    md_path = out / f"{stem}.md"
    md_path.write_text(render.render_markdown(document))
    shutil.copyfile(md_path, out / "mesh-latest.md")
    written = [json_path, *pngs, md_path, out / "mesh-latest.md"]
    say("\n".join(f"wrote {p}" for p in written))
    say("")
    say(render.render_targets(document))
    return 0


def entry():
    try:
        sys.exit(main())
    except KeyboardInterrupt:
        print("interrupted; pods removed", file=sys.stderr)
        sys.exit(130)
    except (peers.PeerError, loadgen.LoadgenError) as e:
        print(f"benchmark: {e}", file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    entry()
