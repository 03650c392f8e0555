"""`python -m benchmarks.cache`: what a response cache hit costs (issue 4's target: "served
without an upstream connection at no more CPU per request than a plain proxied request").

Two sidecars, one worker each, loaded in turn with wrk (2 threads, 32 keep-alive
connections), interleaved over rounds in rotated order:

    plain    no routes: every request proxied to an nginx app
    hit      one inbound route with `cache: {ttl: 1h}` in front of its own nginx app:
             after the first request, every GET / is answered from the store
    miss     the same sidecar, on a path whose response says `no-store`: every request is
             looked up, misses, goes upstream and is not stored (what a miss costs)

Reported: CPU (user+system) per request of each sidecar's process tree from /proc, the
ratios hit/plain (target: at most 1.0) and miss/plain, and the proof that hits made no
upstream request: the requests for / that reached the cache's app (its nginx access log)
during the hit rounds, and the sidecar's own sidecar_cache_lookups_total. Results:
benchmarks/results/cache.json.
"""
import argparse
import json
import os
import statistics
import sys
import tempfile
from pathlib import Path

from benchmarks import machine
from benchmarks.peers import app_server, cache_app_server, free_ports
from benchmarks.policy import Sidecar, counter, measure
from benchmarks.wrk import run_wrk

RESULTS = Path(__file__).resolve().parent / "results" / "cache.json"
TARGET_RATIO = 1.0
ROWS = ("plain", "hit", "miss")
CACHE_ROUTES = [{"name": "cached", "match": {"path_prefix": "/"}, "cache": {"ttl": "1h"}}]


def _log_lines(path: Path) -> int:
    try:
        with open(path, "rb") as f:
            return sum(1 for _ in f)
    except FileNotFoundError:
        return 0


def main(argv=None):
    p = argparse.ArgumentParser(prog="benchmarks.cache")
    p.add_argument("--quick", action="store_true", help="2 rounds of 3 s")
    p.add_argument("--rounds", type=int)
    p.add_argument("--duration", type=int)
    args = p.parse_args(argv)
    rounds = args.rounds or (2 if args.quick else 5)
    duration = args.duration or (3 if args.quick else 8)
    with tempfile.TemporaryDirectory(prefix="sidecar-cache-bench-") as tmp:
        workdir = Path(tmp)
        os.chmod(workdir, 0o755)
        app_port, cache_app_port = free_ports(2)
        apps = [app_server(workdir / "app", app_port), cache_app_server(workdir / "cache-app", cache_app_port)]
        sidecars = {}
        try:
            for app in apps:
                app.start()
                app.wait_ready()
            sidecars["plain"] = Sidecar(workdir / "plain", app_port, [])
            sidecars["cache"] = Sidecar(workdir / "cache", cache_app_port, CACHE_ROUTES)
            urls = {"plain": sidecars["plain"].url, "hit": sidecars["cache"].url,
                    "miss": sidecars["cache"].url + "uncacheable"}
            for row in ROWS:        # warm-up (and the one miss that fills the store)
                run_wrk(urls[row], threads=2, connections=32, duration_s=2)
            access_log = workdir / "cache-app" / "access.log"
            runs = {row: [] for row in ROWS}
            upstream_for_hits = 0
            for r in range(rounds):
                order = ROWS[r % 3:] + ROWS[:r % 3]
                for row in order:
                    sc = sidecars["plain" if row == "plain" else "cache"]
                    before = _log_lines(access_log)
                    record = measure(sc, duration, [], url=urls[row])
                    if row == "hit":
                        record["upstream_requests"] = _log_lines(access_log) - before
                        upstream_for_hits += record["upstream_requests"]
                    runs[row].append(record)
                    print("[round %d/%d] %-5s %8.0f req/s  CPU %5.1f us/req  p50 %5.0f us  errors %d"
                          % (r + 1, rounds, row, record["requests_per_s"], record["cpu_us_per_req"],
                             record["p50_us"], record["errors"]), flush=True)
            text = sidecars["cache"].metrics()
            check = {
                "measured_hit_requests": sum(x["requests"] for x in runs["hit"]),
                "upstream_requests_during_hit_rounds": upstream_for_hits,
                "lookups": {result: counter(text, "sidecar_cache_lookups_total", route="cached", result=result)
                            for result in ("hit", "miss", "revalidated", "bypass")},
            }
        finally:
            for sc in sidecars.values():
                sc.stop()
            for app in apps:
                app.stop()
    cpu = {row: statistics.median(x["cpu_us_per_req"] for x in runs[row]) for row in ROWS}
    ratio = cpu["hit"] / cpu["plain"]
    results = {
        "scenario": "inbound, 1 worker, wrk -t2 -c32, nginx app (\"ok\\n\"); hit = route with "
                    "cache {ttl: 1h}, every request answered from the store; miss = same route, "
                    "response no-store",
        "cpu_us_per_req": {row: round(v, 2) for row, v in cpu.items()},
        "ratio_hit_to_plain": round(ratio, 3), "target_ratio": TARGET_RATIO,
        "meets_target": ratio <= TARGET_RATIO and upstream_for_hits == 0,
        "ratio_miss_to_plain": round(cpu["miss"] / cpu["plain"], 3),
        "requests_per_s": {row: round(statistics.median(x["requests_per_s"] for x in runs[row]))
                           for row in ROWS},
        "p50_us": {row: statistics.median(x["p50_us"] for x in runs[row]) for row in ROWS},
        "cache_check": check, "machine": machine.describe_machine(), "rounds": runs,
    }
    RESULTS.parent.mkdir(exist_ok=True)
    RESULTS.write_text(json.dumps(results, indent=2) + "\n")
    print(json.dumps({k: v for k, v in results.items() if k != "rounds"}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
