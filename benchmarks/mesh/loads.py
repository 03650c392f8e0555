"""The loads each row is measured under, and one measurement of one row under one load.

    closed-*   wrk, closed loop (each connection sends its next request when the last one
               is answered): the most a row can serve. Its latency figures are wrk's, which
               coordinated omission flatters; they are shown, not compared.
    open-*     loadgen http at a constant rate over 32 keep-alive connections: the latency
               percentiles (p50 to p99.9), each request timed from when it was due.
    tcp        loadgen tcp-send: bulk opaque TCP to the server pod's sink port, through
               `inbound.tcp_passthrough_ports` (MB/s and CPU per GB).

A measurement samples the CPU ticks of both pods' proxy process trees (/proc, user+sys)
before and after the load, their RSS near its end, and, from the cgroups' cpu.stat, the
CPU of the load generator (client app cgroup), the app (server app cgroup) and the sidecar
cgroups (a cross-check of the /proc figures); the machine's busy and steal time show how
noisy the run was. The returned record is flat (see summary.py for its keys).
"""
import os
from dataclasses import dataclass

from .. import proc_stats, wrk
from . import loadgen
from .topology import APP_PORT, SERVER_IP, TCP_PORT

__all__ = ["Load", "MeasureError", "QUICK_LOADS", "STANDARD_LOADS", "measure"]

OPEN_LOOP_CONNECTIONS = 32
TCP_CONNECTIONS = 2


class MeasureError(Exception):
    """A load could not be run against a row (the record carries the reason)."""


@dataclass(frozen=True)
class Load:
    name: str
    kind: str                 # "closed" | "open" | "tcp"
    title: str
    connections: int
    payload: str = "0"        # proxies.PAYLOADS key: the response body
    rate: int = 0             # requests/s (open loop)
    threads: int = 1          # wrk threads (closed loop)

    @property
    def path(self):
        return "/" + self.payload


def _closed(connections, payload, threads):
    size = {"0": "0 B", "1k": "1 KiB", "64k": "64 KiB"}[payload]
    return Load(f"closed-c{connections}-{payload}", "closed",
                f"closed loop, {connections} connection{'s' if connections > 1 else ''}, {size} responses",
                connections, payload, threads=threads)


def _open(rate):
    return Load(f"open-{rate}", "open", f"open loop at {rate} req/s, {OPEN_LOOP_CONNECTIONS} connections, 0 B",
                OPEN_LOOP_CONNECTIONS, "0", rate=rate)


TCP_LOAD = Load("tcp", "tcp", f"TCP passthrough, {TCP_CONNECTIONS} connections, bulk", TCP_CONNECTIONS)

STANDARD_LOADS = (
    _closed(1, "0", 1), _closed(32, "0", 2), _closed(256, "0", 2), _closed(32, "1k", 2), _closed(32, "64k", 2),
    _open(500), _open(2000), _open(5000),
    TCP_LOAD,
)
QUICK_LOADS = (_closed(32, "0", 2), _open(2000), TCP_LOAD)
# The target ratios are read at these loads (summary.TARGETS).
HEADLINE_CPU_LOAD, LATENCY_TARGET_LOAD = "closed-c32-0", "open-2000"


class _Sampler:
    """CPU of the row's proxies (/proc trees) and of the pods' cgroups, machine busy/steal."""

    def __init__(self, row):
        self.row = row

    def take(self):
        mesh = self.row.mesh
        groups = {
            "loadgen": mesh.client.app_cgroup, "app": mesh.server.app_cgroup,
            "sidecar_cgroups": None,
        }
        sample = {
            "proxies": {side: proc_stats.sample_cpu([p.pid]) for side, p in self.row.proxies.items()},
            "busy": proc_stats.sample_machine_busy(),
            "steal": proc_stats.sample_machine_steal(),
        }
        for name, cg in groups.items():
            if cg is not None:
                sample[name] = sum(cg.cpu_seconds())
        sample["sidecar_cgroups"] = sum(sum(p.sidecar_cgroup.cpu_seconds()) for p in (mesh.client, mesh.server))
        return sample


def _cpu_fields(before, after, scale, suffix):
    """CPU seconds between two samples times `scale` (per request or per GB), as
    fields named cpu_..._<suffix>. A row without proxies (direct) has no proxy CPU to
    report, rather than zero of it."""
    def scaled(seconds, factor):
        return seconds * factor if factor else None

    proxy_scale = scale if before["proxies"] else None
    out = {}
    user_total = system_total = 0.0
    for side in before["proxies"]:
        user, system = proc_stats.cpu_delta(before["proxies"][side], after["proxies"][side])
        user_total += user
        system_total += system
        out[f"cpu_{side}_{suffix}"] = scaled(user + system, scale)
    out[f"cpu_{suffix}"] = scaled(user_total + system_total, proxy_scale)
    out[f"cpu_user_{suffix}"] = scaled(user_total, proxy_scale)
    out[f"cpu_system_{suffix}"] = scaled(system_total, proxy_scale)
    for name in ("loadgen", "app", "sidecar_cgroups"):
        out[f"{name}_cpu_{suffix}"] = scaled(after[name] - before[name], scale)
    out[f"machine_cpu_{suffix}"] = scaled(after["busy"] - before["busy"], scale)
    return out


def _rss(row):
    total = worker_max = processes = 0
    for peer in row.proxies.values():
        peer.remember_processes()
        sample = proc_stats.sample_rss(peer.pid)
        total += sample.total_kb
        worker_max = max(worker_max, sample.worker_max_kb)
        processes += sample.processes
    return {"rss_total_kb": total, "rss_worker_max_kb": worker_max, "processes": processes}


def measure(row, load, duration_s, binary, headers=(), target=None):
    """Runs `load` against `row` for duration_s; returns the round record's figures.
    `target` (host, port) is where an HTTP load connects (default: the server app, which
    interception takes to the client's sidecar). Raises MeasureError (wrk or loadgen failed)."""
    host, port = target or (SERVER_IP, APP_PORT)
    sampler = _Sampler(row)
    before = sampler.take()
    near_end = (lambda: _rss(row)) if row.proxies else (lambda: {"rss_total_kb": 0, "rss_worker_max_kb": 0,
                                                                 "processes": 0})
    app = row.mesh.client.app_command
    try:
        if load.kind == "closed":
            result, rss = wrk.run_wrk(
                f"http://{host}:{port}{load.path}", threads=load.threads,
                connections=load.connections, duration_s=duration_s, near_end=near_end,
                headers=headers, command_prefix=app([]))
            figures = _closed_figures(result)
        elif load.kind == "open":
            cmd = loadgen.http_command(binary, host, port, path=load.path, rate=load.rate,
                                       connections=load.connections, duration_s=duration_s, headers=headers)
            report, rss = loadgen.run(app(cmd), duration_s + 20, near_end, duration_s - 0.5)
            figures = _open_figures(report)
        else:
            cmd = loadgen.tcp_send_command(binary, SERVER_IP, TCP_PORT, connections=load.connections,
                                           duration_s=duration_s)
            report, rss = loadgen.run(app(cmd), duration_s + 20, near_end, duration_s - 0.5)
            figures = _tcp_figures(report)
    except (wrk.WrkError, loadgen.LoadgenError) as e:
        raise MeasureError(str(e)) from e
    after = sampler.take()
    figures.update(rss)
    if load.kind == "tcp":
        gigabytes = figures["bytes"] / 1e9
        figures.update(_cpu_fields(before, after, 1e3 / gigabytes if gigabytes else None, "ms_per_gb"))
    else:
        n = figures["requests"]
        figures.update(_cpu_fields(before, after, 1e6 / n if n else None, "us_per_req"))
    elapsed = figures.get("elapsed_s") or duration_s
    figures["steal_pct"] = 100 * (after["steal"] - before["steal"]) / (elapsed * _cores())
    figures["machine_busy_pct"] = 100 * (after["busy"] - before["busy"]) / (elapsed * _cores())
    return figures


def _cores():
    return os.cpu_count() or 1


def _closed_figures(result):
    return {
        "requests": result.requests,
        "requests_per_s": result.requests_per_s,
        "elapsed_s": result.duration_s,
        "p50_us": result.percentiles_us[50],
        "p90_us": result.percentiles_us[90],
        "p99_us": result.percentiles_us[99],
        "errors": result.errors,
        "wrk": result.to_dict(),
    }


def _open_figures(report):
    lat, lag = report["latency_us"], report["send_lag_us"]
    errors = sum(report["errors"].values()) + report["non_2xx"]
    return {
        "requests": report["completed"],
        "requests_per_s": report["achieved_rps"],
        "target_rate": report["target_rate"],
        "elapsed_s": report["elapsed_s"],
        "p50_us": lat["p50"], "p90_us": lat["p90"], "p99_us": lat["p99"], "p999_us": lat["p99.9"],
        "max_us": lat["max"], "mean_us": lat["mean"],
        "send_lag_p50_us": lag["p50"], "send_lag_p99_us": lag["p99"],
        "max_queue": report["max_queue"],
        "errors": errors,
        "loadgen_self_cpu_us_per_req": (
            (report["cpu_user_s"] + report["cpu_system_s"]) * 1e6 / report["sent"] if report["sent"] else None),
        "loadgen": report,
    }


def _tcp_figures(report):
    return {
        "bytes": report["bytes"],
        "mb_per_s": report["mb_per_s"],
        "elapsed_s": report["elapsed_s"],
        "errors": report["errors"],
        "loadgen": report,
    }
