"""GET /stats: the same shared-memory counters as /metrics, summarised as JSON for people
and for `sidecar stats`: per route and service, requests by status class, latency
quantiles (estimated from the histogram buckets, as Prometheus' histogram_quantile does),
bytes; connections; workers and config generation."""
import time

from fastpath.stats import DURATION_BOUNDS
from sidecar.metrics.labels import NO_SERVICE
from sidecar.metrics.worker_stats import (
    M_ACCESS_LOG_DROPPED, M_CIRCUIT_BREAKER_OPEN, M_ENDPOINTS, M_HEALTH_CHECKS,
    M_OUTLIER_EJECTIONS, M_RETRIES, M_SPANS_DROPPED, M_SPANS_EXPORTED, M_SPANS_FAILED, aggregate,
)
from sidecar.telemetry import (
    DIRECTIONS, ENDPOINT_STATES, HEALTH_CHECK_RESULTS, PROTOCOLS, RETRY_REASONS,
)


def quantile(q: float, buckets) -> float:
    """The q-quantile of a non-cumulative histogram over DURATION_BOUNDS (+Inf last), by
    linear interpolation within the bucket; None when empty."""
    total = sum(buckets)
    if not total:
        return None
    rank = q * total
    seen = 0
    lower = 0.0
    for i, n in enumerate(buckets):
        upper = DURATION_BOUNDS[i] if i < len(DURATION_BOUNDS) else DURATION_BOUNDS[-1]
        if seen + n >= rank and n:
            if i >= len(DURATION_BOUNDS):
                return DURATION_BOUNDS[-1]
            return lower + (upper - lower) * (rank - seen) / n
        seen += n
        lower = upper
    return DURATION_BOUNDS[-1]


def stats_summary(manager) -> dict:
    exchanges, counters, gauges, active, total, overflow = aggregate(manager.segments_data())
    routes = manager.labels.route_names()
    services = manager.labels.service_names()
    rows = {}
    for (d, rid, sid, method, status, flags), (n, req_b, resp_b, dur_sum, buckets) in exchanges.items():
        direction = DIRECTIONS[d]
        key = (direction, routes.get(rid, "_other"),
               services.get(sid, "_other") if sid else NO_SERVICE[direction])
        row = rows.get(key)
        if row is None:
            row = rows[key] = {"direction": key[0], "route": key[1], "service": key[2],
                               "requests": 0, "codes": {}, "request_bytes": 0,
                               "response_bytes": 0, "duration_sum": 0.0,
                               "buckets": [0] * len(buckets)}
        row["requests"] += n
        cls = "%dxx" % (status // 100) if status else "none"
        row["codes"][cls] = row["codes"].get(cls, 0) + n
        row["request_bytes"] += req_b
        row["response_bytes"] += resp_b
        row["duration_sum"] += dur_sum
        row["buckets"] = [a + b for a, b in zip(row["buckets"], buckets)]
    out_rows = []
    for row in sorted(rows.values(), key=lambda r: (r["direction"], r["route"], r["service"])):
        buckets = row.pop("buckets")
        n = row["requests"]
        errors = row["codes"].get("5xx", 0)
        row["error_ratio"] = errors / n if n else 0.0
        row["latency_seconds"] = {"mean": row["duration_sum"] / n if n else None,
                                  "p50": quantile(0.5, buckets), "p90": quantile(0.9, buckets),
                                  "p99": quantile(0.99, buckets)}
        out_rows.append(row)
    ready, checks = manager.readiness()
    return {
        **_summary(manager, out_rows, counters, active, total, overflow, ready, checks),
        "services": _services(counters, gauges, services),
    }


def _services(counters, gauges, services) -> list:
    """Per service: retries by reason, workers with the breaker open, ejections, health
    check probes and endpoints by state (summed over workers)."""
    rows = {}

    def row(sid):
        name = services.get(sid, "_other")
        if name not in rows:
            rows[name] = {"service": name, "retries": {}, "circuit_breaker_open": 0,
                          "ejections": 0, "health_checks": {}, "endpoints": {}}
        return rows[name]

    for (metric, a, b), value in counters.items():
        if not a:
            continue
        if metric == M_RETRIES:
            r = row(a)["retries"]
            r[RETRY_REASONS.get(b, "other")] = r.get(RETRY_REASONS.get(b, "other"), 0) + value
        elif metric == M_OUTLIER_EJECTIONS:
            row(a)["ejections"] += value
        elif metric == M_HEALTH_CHECKS:
            h = row(a)["health_checks"]
            h[HEALTH_CHECK_RESULTS.get(b, "other")] = h.get(HEALTH_CHECK_RESULTS.get(b, "other"), 0) + value
    for (metric, a, b), value in gauges.items():
        if not a:
            continue
        if metric == M_CIRCUIT_BREAKER_OPEN:
            row(a)["circuit_breaker_open"] += value
        elif metric == M_ENDPOINTS:
            e = row(a)["endpoints"]
            e[ENDPOINT_STATES.get(b, "other")] = e.get(ENDPOINT_STATES.get(b, "other"), 0) + value
    return [rows[name] for name in sorted(rows)]


def _summary(manager, out_rows, counters, active, total, overflow, ready, checks) -> dict:
    return {
        "time": time.time(),
        "workload": {"name": manager.cfg.workload.name, "namespace": manager.cfg.workload.namespace},
        "ready": ready,
        "checks": {name: {"ok": ok, "reason": None if ok else why} for name, (ok, why) in checks.items()},
        "interception": manager.interception.snapshot() if manager.interception else None,
        "config": {"generation": manager.generation, "source": manager.config_path,
                   "applied_at": manager.applied_at, "reloads": dict(manager.reload_counts)},
        "workers": [{"index": w.index, "pid": w.proc.pid if w.proc else None, "ready": w.ready,
                     "generation": w.generation} for w in manager.workers],
        "workers_draining": len(manager.retiring),
        "restarts": manager.restarts,
        "connections": {DIRECTIONS[d]: {PROTOCOLS[p]: {"active": active[d][p], "total": total[d][p]}
                                        for p in range(2)} for d in range(2)},
        "requests": out_rows,
        "totals": {"requests": sum(r["requests"] for r in out_rows),
                   "5xx": sum(r["codes"].get("5xx", 0) for r in out_rows),
                   "access_log_dropped": counters.get((M_ACCESS_LOG_DROPPED, 0, 0), 0),
                   "spans_exported": counters.get((M_SPANS_EXPORTED, 0, 0), 0),
                   "spans_dropped": counters.get((M_SPANS_DROPPED, 0, 0), 0),
                   "spans_failed": counters.get((M_SPANS_FAILED, 0, 0), 0),
                   "stats_overflow": overflow},
    }
