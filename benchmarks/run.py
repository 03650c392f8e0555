"""`python -m benchmarks.run`: the sidecar against nginx and HAProxy as reverse proxies.

Starts an app server (nginx, `ok\\n`) and, in front of it, nginx, HAProxy and the
sidecar, each with one worker on a free loopback port, all from a private temporary
directory. Then, for each round, for each scenario, for each target in an order rotated
every round, runs wrk and records requests/s, CPU per request of the target's whole
process tree, p50/p99, RSS and errors. "direct" is wrk straight to the app: the
baseline for added latency.

A proxy that does not start (or dies) gets an error in its row; the others go on.
Every process started here is stopped and the temporary directory removed on the way
out, also on failure, Ctrl-C or SIGTERM.

Output: <out>/<YYYY-MM-DD>-<hostname>.json (raw rounds, summary, machine),
<out>/<YYYY-MM-DD>-<hostname>.md and <out>/latest.md. <out> is benchmarks/results for
a full run; --quick (1 round of 2 s) writes to a new temporary directory unless --out
is given. A full run with the defaults takes about 5 minutes.
"""

import argparse
import datetime
import shlex
import shutil
import signal
import socket
import sys
import tempfile
from pathlib import Path

from . import machine, peers, proc_stats, report, wrk

RESULTS_DIR = Path(__file__).resolve().parent / "results"

SCENARIOS = {
    "throughput": {"title": "32 keep-alive connections", "threads": 2, "connections": 32},
    "latency": {"title": "1 connection", "threads": 1, "connections": 1},
}
PROXIES = ("nginx", "haproxy", "sidecar")
TARGETS = ("direct",) + PROXIES


def parse_args(argv):
    p = argparse.ArgumentParser(prog="python -m benchmarks.run", description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="1 round of 2 s runs, results to a temp dir")
    p.add_argument("--rounds", type=int, help="interleaved rounds (default 3; 1 with --quick)")
    p.add_argument("--duration", type=int, help="seconds per wrk run (default 10; 2 with --quick)")
    p.add_argument("--warmup", type=int, help="seconds of warm-up per target (default 2; 1 with --quick)")
    p.add_argument("--out", type=Path, help="results directory (default benchmarks/results; a temp dir with --quick)")
    p.add_argument("--only", nargs="+", choices=PROXIES, help="proxies to measure (direct always runs)")
    p.add_argument("--sidecar-cmd", help="command that runs the sidecar CLI (default: .venv/bin/sidecar)")
    p.add_argument("--sidecar-config-extra", metavar="YAML", type=_yaml_mapping,
                   help="a YAML mapping merged into the sidecar's config, e.g. "
                        "'{telemetry: {tracing: {propagate: []}}}'")
    p.add_argument("--sidecar-via-service", action="store_true",
                   help="send the sidecar's load through an outbound route to a configured "
                        "service (load balancing, circuit breaker, retry policy) instead of "
                        "the inbound app pool")
    p.add_argument("--tracing", metavar="PERCENT",
                   help="sample this share of traces (e.g. 0%% or 100%%) and export them to an "
                        "OTLP sink the harness starts (benchmarks.otlp_sink, its own process)")
    args = p.parse_args(argv)
    args.rounds = args.rounds or (1 if args.quick else 3)
    args.duration = args.duration or (2 if args.quick else 10)
    args.warmup = args.warmup if args.warmup is not None else (1 if args.quick else 2)
    if args.out is None:
        args.out = Path(tempfile.mkdtemp(prefix="sidecar-bench-results-")) if args.quick else RESULTS_DIR
    return args


def _yaml_mapping(text):
    import yaml
    value = yaml.safe_load(text)
    if not isinstance(value, dict):
        raise argparse.ArgumentTypeError("must be a YAML mapping")
    return value


def say(message):
    print(message, flush=True)


class Target:
    """Something wrk loads: a proxy in front of the app, or the app itself (direct)."""

    def __init__(self, name, peer, measured_pid):
        self.name = name
        self.peer = peer  # the PeerProcess wrk talks to
        self.measured_pid = measured_pid  # root of the process tree whose CPU/RSS is counted
        self.error = None


def start_targets(workdir, app, names, sidecar_cmd, started, sidecar_extra=None, via_service=False):
    """Starts the proxies and returns the targets, direct first; a proxy that fails to
    start gets an error. Each started PeerProcess is appended to `started` at once, so
    the caller can stop it whatever happens next."""
    targets = [Target("direct", app, app.pid)]
    configure = {
        "nginx": peers.nginx_proxy,
        "haproxy": peers.haproxy_proxy,
        "sidecar": lambda d, port, app_port: peers.sidecar_proxy(
            d, port, app_port, command=sidecar_cmd, extra=sidecar_extra, via_service=via_service),
    }
    ports = peers.free_ports(len(names))
    for name, port in zip(names, ports):
        peer = configure[name](workdir / name, port, app.port)
        started.append(peer)
        target = Target(name, peer, None)
        try:
            peer.start()
            target.measured_pid = peer.pid
        except OSError as e:
            target.peer, target.error = None, f"could not start: {e}"
        targets.append(target)
    # All are launched before any is waited for: they start up in parallel.
    for target in targets[1:]:
        if target.error is not None:
            continue
        try:
            target.peer.wait_ready()
            say(f"  {target.name:8} ready on 127.0.0.1:{target.peer.port} (pids {' '.join(map(str, target.peer.pids()))})")
        except peers.PeerError as e:
            target.error = str(e)
            say(f"  {target.name:8} FAILED: {e}")
            target.peer.stop()
    return targets


def measure(target, app, scenario, duration):
    """One wrk run against target; returns the round record (see report.py)."""
    roots = [target.measured_pid]
    cpu_before = proc_stats.sample_cpu(roots)
    app_before = proc_stats.sample_cpu([app.pid])
    machine_before = proc_stats.sample_machine_busy()

    def near_end():
        target.peer.remember_processes()
        return proc_stats.sample_rss(target.measured_pid)

    result, rss = wrk.run_wrk(
        target.peer.url,
        threads=scenario["threads"],
        connections=scenario["connections"],
        duration_s=duration,
        near_end=near_end,
    )
    machine_busy_s = proc_stats.sample_machine_busy() - machine_before
    user_s, system_s = proc_stats.cpu_delta(cpu_before, proc_stats.sample_cpu(roots))
    app_user_s, app_system_s = proc_stats.cpu_delta(app_before, proc_stats.sample_cpu([app.pid]))
    n = result.requests

    def per_req(seconds):
        return seconds * 1e6 / n if n else None

    return {
        "requests": n,
        "requests_per_s": result.requests_per_s,
        "cpu_user_s": user_s,
        "cpu_system_s": system_s,
        "cpu_us_per_req": per_req(user_s + system_s),
        "cpu_user_us_per_req": per_req(user_s),
        "cpu_system_us_per_req": per_req(system_s),
        "app_cpu_us_per_req": per_req(app_user_s + app_system_s),
        # Whole machine, wrk included: a cross-check that no work escaped the process tree.
        "machine_cpu_us_per_req": per_req(machine_busy_s),
        "p50_us": result.percentiles_us[50],
        "p99_us": result.percentiles_us[99],
        "rss_total_kb": rss.total_kb,
        "rss_worker_max_kb": rss.worker_max_kb,
        "processes": rss.processes,
        "errors": result.errors,
        "wrk": result.to_dict(),
    }


def _progress(round_no, rounds, scenario, record):
    head = f"[round {round_no}/{rounds}] {scenario:10} {record['target']:8}"
    if record.get("error"):
        return f"{head} ERROR: {record['error'][:300]}"
    return (
        f"{head} {record['requests_per_s']:9,.0f} req/s  CPU {record['cpu_us_per_req'] or 0:6.1f} µs/req  "
        f"p50 {record['p50_us']:8.0f} µs  p99 {record['p99_us']:8.0f} µs  "
        f"RSS {record['rss_total_kb'] / 1024:5.1f} MB  errors {record['errors']}"
    )


def run_rounds(targets, app, args):
    rounds = []
    runnable = [t for t in targets if t.error is None]
    if args.warmup:
        say(f"warm-up: {args.warmup} s per target")
        warm = SCENARIOS["throughput"]
        for t in runnable:
            try:
                wrk.run_wrk(t.peer.url, threads=warm["threads"], connections=warm["connections"], duration_s=args.warmup)
            except wrk.WrkError as e:
                say(f"  warm-up of {t.name} failed: {e}")
    for round_no in range(1, args.rounds + 1):
        shift = (round_no - 1) % len(targets)
        order = targets[shift:] + targets[:shift]
        for scenario_name, scenario in SCENARIOS.items():
            for target in order:
                if target.error is not None:
                    continue
                record = {"round": round_no, "scenario": scenario_name, "target": target.name, "error": None}
                if not target.peer.alive():
                    target.error = f"{target.name} exited with {target.peer.proc.returncode}: {target.peer.log_tail()}"
                    record["error"] = target.error
                else:
                    try:
                        record.update(measure(target, app, scenario, args.duration))
                    except wrk.WrkError as e:
                        record["error"] = str(e)
                    if not target.peer.alive():
                        target.error = f"{target.name} died during the run: {target.peer.log_tail()}"
                        record["error"] = record["error"] or target.error
                rounds.append(record)
                say(_progress(round_no, args.rounds, scenario_name, record))
    return rounds


def _raise_system_exit(signum, _frame):
    raise SystemExit(128 + signum)


def main(argv=None):
    args = parse_args(sys.argv[1:] if argv is None else argv)
    # SIGTERM/SIGHUP unwind like Ctrl-C, through the finally below.
    signal.signal(signal.SIGTERM, _raise_system_exit)
    signal.signal(signal.SIGHUP, _raise_system_exit)
    names = [p for p in PROXIES if not args.only or p in args.only]
    sidecar_cmd = shlex.split(args.sidecar_cmd) if args.sidecar_cmd else None
    started_at = datetime.datetime.now().astimezone()
    est = args.rounds * len(SCENARIOS) * (len(names) + 1) * args.duration + (len(names) + 1) * args.warmup
    say(f"benchmark: {args.rounds} round(s) x {len(SCENARIOS)} scenarios x {len(names) + 1} targets, "
        f"{args.duration} s each (about {est // 60} min {est % 60} s of load)")

    workdir = Path(tempfile.mkdtemp(prefix="sidecar-bench-"))
    # nginx workers run as nobody: they must be able to reach their files under here.
    workdir.chmod(0o755)
    started = []  # every PeerProcess launched, app first: all are stopped in the finally
    targets = []
    try:
        say(f"starting peers in {workdir}")
        app = peers.app_server(workdir / "app", peers.free_ports(1)[0])
        started.append(app)
        app.start().wait_ready()
        say(f"  app      ready on 127.0.0.1:{app.port} (pids {' '.join(map(str, app.pids()))})")
        sidecar_extra = args.sidecar_config_extra
        if args.tracing is not None:
            sink = peers.otlp_sink(workdir / "otlp-sink", peers.free_ports(1)[0])
            started.append(sink)
            sink.start().wait_ready()
            say(f"  otlp-sink ready on 127.0.0.1:{sink.port}")
            sidecar_extra = peers.merge_config(sidecar_extra or {}, {"telemetry": {"tracing": {
                "sample": args.tracing, "otlp_endpoint": f"http://127.0.0.1:{sink.port}"}}})
        args.sidecar_extra = sidecar_extra
        targets = start_targets(workdir, app, names, sidecar_cmd, started, sidecar_extra,
                                args.sidecar_via_service)
        rounds = run_rounds(targets, app, args)
    finally:
        # A second Ctrl-C must not cut the clean-up short.
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        say("stopping peers")
        for peer in reversed(started):
            peer.stop()
        shutil.rmtree(workdir, ignore_errors=True)
        signal.signal(signal.SIGINT, signal.default_int_handler)
        signal.signal(signal.SIGTERM, _raise_system_exit)

    finished_at = datetime.datetime.now().astimezone()
    target_names = [t.name for t in targets]
    target_errors = {t.name: t.error for t in targets}
    stem = f"{started_at:%Y-%m-%d}-{socket.gethostname()}"
    out = Path(args.out)
    json_path, md_path = out / f"{stem}.json", out / f"{stem}.md"
    document = {
        "started_at": started_at.isoformat(timespec="seconds"),
        "finished_at": finished_at.isoformat(timespec="seconds"),
        "json_file": json_path.name,
        "settings": {
            "quick": args.quick,
            "rounds": args.rounds,
            "duration_s": args.duration,
            "warmup_s": args.warmup,
            "scenarios": SCENARIOS,
            "sidecar_config_extra": getattr(args, "sidecar_extra", None),
            "sidecar_via_service": args.sidecar_via_service,
        },
        "machine": machine.describe_machine(),
        "temp_dir": str(workdir),
        # Every process started, as [pid, starttime] (field 22 of /proc/<pid>/stat).
        "processes": {
            name: peer.identities() if peer else []
            for name, peer in [("app", started[0])] + [(t.name, t.peer) for t in targets if t.name != "direct"]
        },
        "target_errors": target_errors,
        "summary": report.summarize(rounds, list(SCENARIOS), target_names, target_errors),
        "rounds": rounds,
    }
    report.write_json(json_path, document)
    report.write_markdown(md_path, document)
    shutil.copyfile(md_path, out / "latest.md")
    say(f"wrote {json_path}\nwrote {md_path}\nwrote {out / 'latest.md'}")
    say("")
    say(report.render_markdown(document))
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except KeyboardInterrupt:
        print("interrupted; peers stopped", file=sys.stderr)
        sys.exit(130)
    except peers.PeerError as e:
        print(f"benchmark: {e}", file=sys.stderr)
        sys.exit(1)
