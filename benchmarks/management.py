"""Benchmarks of the management layer (`python -m benchmarks.management`):

    reload    a 200-route config reloaded (POST /reload) on 1, 2 and 4 workers: the time to
              read and validate the file, and to apply it on every worker (push, compile,
              swap, ack)
    scrape    GET /metrics while wrk loads the sidecar (2 workers)
    overhead  CPU per request (and wrk throughput) with the shared-memory counters on and
              off (SIDECAR_STATS=off): two 1-worker sidecars side by side, loaded in
              alternating order over interleaved rounds

The app is nginx (benchmarks.peers.app_server); load is wrk on loopback. Results go to
benchmarks/results/management.json and are printed. Targets (issue 5): reload applied on
all workers in < 100 ms; a scrape < 20 ms; metrics cost <= 3% of throughput.
"""
import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

import yaml

from benchmarks import machine, proc_stats
from benchmarks.peers import app_server, free_ports, sidecar_command
from benchmarks.wrk import run_wrk

RESULTS = Path(__file__).resolve().parent / "results" / "management.json"


def config(ports, app_port, workers, routes, tag):
    inbound, outbound, admin, metrics, health = ports
    return {
        "workers": workers, "drain_timeout": "1s", "interception": {"mode": "off"},
        "inbound": {"listen": "127.0.0.1:%d" % inbound, "app": "127.0.0.1:%d" % app_port},
        "outbound": {"listen": "127.0.0.1:%d" % outbound},
        "admin": {"listen": "127.0.0.1:%d" % admin},
        "telemetry": {"metrics": {"listen": "127.0.0.1:%d" % metrics},
                      "health": {"listen": "127.0.0.1:%d" % health}, "access_log": {"path": None}},
        "services": [{"name": "svc%d" % i, "match": ["svc%d.bench:80" % i]} for i in range(20)],
        "routes": [{"name": "r%d-%s" % (i, tag), "direction": "inbound" if i % 2 else "outbound",
                    "match": {"path_prefix": "/p%d/" % i, "methods": ["GET", "POST"]},
                    **({"service": "svc%d" % (i % 20)} if i % 2 == 0 else {})} for i in range(routes)],
    }


class Sidecar:
    def __init__(self, workdir, app_port, workers, routes=200, env=None):
        self.ports = free_ports(5)
        Path(workdir).mkdir(parents=True, exist_ok=True)
        self.path = Path(workdir) / "sidecar.yaml"
        self.app_port, self.workers, self.routes = app_port, workers, routes
        self.write("a")
        self.log = open(Path(workdir) / "sidecar.log", "wb")
        self.proc = subprocess.Popen(sidecar_command() + ["run", "-c", str(self.path)],
                                     stdout=self.log, stderr=subprocess.STDOUT,
                                     env=dict(os.environ, **(env or {})), start_new_session=True)
        self.wait_ready()

    def write(self, tag):
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(yaml.safe_dump(config(self.ports, self.app_port, self.workers, self.routes, tag)))
        os.replace(tmp, self.path)

    def url(self, key, path):
        port = {"inbound": 0, "admin": 2, "metrics": 3, "health": 4}[key]
        return "http://127.0.0.1:%d%s" % (self.ports[port], path)

    def wait_ready(self, timeout=30):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                with urllib.request.urlopen(self.url("health", "/healthz/ready"), timeout=1) as r:
                    if r.status == 200:
                        return
            except OSError:
                pass
            time.sleep(0.1)
        raise RuntimeError("sidecar not ready")

    def reload(self):
        req = urllib.request.Request(self.url("admin", "/reload"), method="POST")
        with urllib.request.urlopen(req, timeout=30) as r:
            return json.loads(r.read())

    def stop(self):
        self.proc.terminate()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self.log.close()


def ms(values):
    values = sorted(values)
    return {"median_ms": round(statistics.median(values) * 1000, 2),
            "max_ms": round(values[-1] * 1000, 2), "n": len(values)}


def bench_reload(workdir, app_port, reloads):
    out = {}
    for workers in (1, 2, 4):
        sc = Sidecar(Path(workdir) / ("reload%d" % workers), app_port, workers)
        try:
            parse, apply, total = [], [], []
            for i in range(reloads):
                sc.write("b" if i % 2 == 0 else "a")
                r = sc.reload()
                assert r["ok"], r
                parse.append(r["parse_seconds"])
                apply.append(r["apply_seconds"])
                total.append(r["seconds"])
            out["%d_workers" % workers] = {"read_and_validate": ms(parse), "apply_on_all_workers": ms(apply),
                                           "total": ms(total)}
        finally:
            sc.stop()
    return out


def bench_scrape(workdir, app_port, duration):
    sc = Sidecar(Path(workdir) / "scrape", app_port, 2)
    times, sizes = [], []
    stop = threading.Event()

    def scraper():
        while not stop.is_set():
            t = time.perf_counter()
            with urllib.request.urlopen(sc.url("metrics", "/metrics"), timeout=5) as r:
                sizes.append(len(r.read()))
            times.append(time.perf_counter() - t)
            time.sleep(0.25)
    try:
        thread = threading.Thread(target=scraper, daemon=True)
        thread.start()
        wrk, _ = run_wrk(sc.url("inbound", "/"), threads=2, connections=32, duration_s=duration)
        stop.set()
        thread.join(10)
        return {"under_load": ms(times[1:]), "bytes": sizes[-1], "load_requests_per_s": wrk.requests_per_s}
    finally:
        sc.stop()


def bench_overhead(workdir, app_port, rounds, duration):
    """The shared-memory counters' cost: CPU per request of the sidecar's processes (the
    figure that decides throughput once the proxy is CPU-bound) with them on and off.

    Both sidecars run side by side for the whole measurement and are loaded in turn,
    in an order that alternates every round, so drift on this shared machine hits both
    alike; medians over the rounds are compared."""
    sidecars = {mode: Sidecar(Path(workdir) / ("overhead-%s" % mode), app_port, 1, routes=0,
                              env={"SIDECAR_STATS": mode})
                for mode in ("on", "off")}
    cpu = {"on": [], "off": []}
    rates = {"on": [], "off": []}
    try:
        for sc in sidecars.values():        # warm both (connection pools, caches)
            run_wrk(sc.url("inbound", "/"), threads=2, connections=32, duration_s=1)
        for r in range(rounds):
            for mode in ("on", "off") if r % 2 == 0 else ("off", "on"):
                sc = sidecars[mode]
                before = proc_stats.sample_cpu([sc.proc.pid])
                wrk, _ = run_wrk(sc.url("inbound", "/"), threads=2, connections=32, duration_s=duration)
                user, system = proc_stats.cpu_delta(before, proc_stats.sample_cpu([sc.proc.pid]))
                assert wrk.errors == 0, wrk.to_dict()
                cpu[mode].append((user + system) * 1e6 / wrk.requests)
                rates[mode].append(wrk.requests_per_s)
    finally:
        for sc in sidecars.values():
            sc.stop()
    cpu_on, cpu_off = statistics.median(cpu["on"]), statistics.median(cpu["off"])
    on, off = statistics.median(rates["on"]), statistics.median(rates["off"])
    return {"cpu_us_per_request_with_metrics": round(cpu_on, 2),
            "cpu_us_per_request_without": round(cpu_off, 2),
            "cost_percent": round((cpu_on - cpu_off) / cpu_off * 100, 2),
            "requests_per_s_with_metrics": on, "requests_per_s_without": off,
            "throughput_cost_percent": round((off - on) / off * 100, 2),
            "rounds": {"cpu_us_per_request": cpu, "requests_per_s": rates}}


def main(argv=None):
    p = argparse.ArgumentParser(prog="benchmarks.management")
    p.add_argument("--quick", action="store_true", help="fewer reloads, shorter loads")
    args = p.parse_args(argv)
    reloads, duration, rounds = (6, 3, 2) if args.quick else (20, 5, 8)
    with tempfile.TemporaryDirectory(prefix="sidecar-mgmt-bench-") as workdir:
        app_port, = free_ports(1)
        app = app_server(Path(workdir) / "app", app_port)
        (Path(workdir) / "app").mkdir(exist_ok=True)
        app.start()
        app.wait_ready()
        try:
            results = {
                "machine": machine.describe_machine(),
                "note": "shared 2-core machine: other work ran during the measurement",
                "reload_200_routes": bench_reload(workdir, app_port, reloads),
                "metrics_scrape": bench_scrape(workdir, app_port, duration),
                "metrics_overhead": bench_overhead(workdir, app_port, rounds, duration),
            }
        finally:
            app.stop()
    RESULTS.parent.mkdir(exist_ok=True)
    RESULTS.write_text(json.dumps(results, indent=2) + "\n")
    print(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
