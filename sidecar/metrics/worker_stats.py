"""The collector of the workers' shared-memory counters (one source: every worker).

At scrape time it reads each live worker's segment and the retired totals, adds them up
by raw label ids, then turns ids into names once per label set. Nothing is counted in
Python per request. Families (SPEC.md, "Metrics"): sidecar_requests_total,
sidecar_request_duration_seconds, sidecar_request_bytes_total,
sidecar_response_bytes_total, sidecar_connections_active/_total,
sidecar_upstream_retries_total, sidecar_ratelimit_decisions_total,
sidecar_authz_decisions_total, sidecar_circuit_breaker_open, sidecar_cache_lookups_total,
sidecar_access_log_dropped_total, sidecar_tracing_spans_{dropped,exported,failed}_total,
sidecar_outlier_ejections_total, sidecar_health_checks_total, sidecar_upstream_endpoints,
sidecar_tcp_received_bytes_total/_sent_bytes_total and sidecar_tcp_tunnels_total (byte
tunnels); with `telemetry.istio_compat`, Istio's istio_requests_total and
istio_request_duration_milliseconds too.

Label values are bounded: routes and services come from config (sidecar.metrics.labels),
methods from the parser's list, codes are the status sent (100-599, or 0 when none was),
response flags are combinations of a fixed set.
"""
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily

from fastpath.stats import DURATION_BOUNDS
from sidecar.metrics.labels import NO_SERVICE
from sidecar.telemetry import (
    CACHE_RESULTS, DECISIONS, DIRECTIONS, ENDPOINT_STATES, HEALTH_CHECK_RESULTS, PROTOCOLS,
    RETRY_REASONS, method_name, response_flags,
)

# fastpath/stats.pxd StatsMetric
M_RATELIMIT, M_AUTHZ, M_CACHE, M_RETRIES, M_CIRCUIT_BREAKER_OPEN = 1, 2, 3, 4, 5
M_ACCESS_LOG_DROPPED, M_SPANS_DROPPED, M_SPANS_EXPORTED, M_SPANS_FAILED = 6, 7, 8, 9
M_OUTLIER_EJECTIONS, M_HEALTH_CHECKS, M_ENDPOINTS = 10, 11, 12
M_TCP_BYTES = 13                # a=direction, b=0 from the downstream client, 1 to it
M_TCP_TUNNELS = 14              # a=direction, b=path (TUNNEL_PATHS)
TUNNEL_PATHS = ("kernel", "userspace")   # fastpath/tunnel.pyx PATH_*
GAUGE_METRICS = frozenset({M_CIRCUIT_BREAKER_OPEN, M_ENDPOINTS})

_LE = tuple("%g" % b for b in DURATION_BOUNDS) + ("+Inf",)
_LE_MS = tuple("%g" % (b * 1000) for b in DURATION_BOUNDS) + ("+Inf",)


class WorkerStatsSource:
    """What the collector reads: `segments()` -> list of read_segment() dicts (live workers
    and the retired totals), `route_names()`/`service_names()` -> id -> label, and the
    workload identity for Istio's labels. The manager provides it; tests feed fixtures."""

    def __init__(self, segments, route_names, service_names, workload=lambda: ("app", "default"),
                 istio_compat=lambda: False):
        self.segments = segments
        self.route_names = route_names
        self.service_names = service_names
        self.workload = workload
        self.istio_compat = istio_compat


def aggregate(segments):
    """Sums segment data by raw keys: (exchanges, counters, gauges, conns_active, conns_total,
    overflow)."""
    exchanges = {}
    counters = {}
    gauges = {}
    active = [[0, 0], [0, 0]]
    total = [[0, 0], [0, 0]]
    overflow = 0
    for seg in segments:
        if not seg:
            continue
        for row in seg["exchanges"]:
            key = row[:6]
            have = exchanges.get(key)
            if have is None:
                exchanges[key] = [row[6], row[7], row[8], row[9], list(row[10])]
            else:
                have[0] += row[6]
                have[1] += row[7]
                have[2] += row[8]
                have[3] += row[9]
                buckets = have[4]
                for i, n in enumerate(row[10]):
                    buckets[i] += n
        for metric, a, b, value in seg["counters"]:
            table = gauges if metric in GAUGE_METRICS else counters
            table[(metric, a, b)] = table.get((metric, a, b), 0) + value
        for d in range(2):
            for p in range(2):
                active[d][p] += seg["connections_active"][d][p]
                total[d][p] += seg["connections_total"][d][p]
        overflow += seg["exchange_overflow"]
    return exchanges, counters, gauges, active, total, overflow


class WorkerStatsCollector:
    def __init__(self, source: WorkerStatsSource):
        self.source = source

    def describe(self):
        return []

    def collect(self):
        src = self.source
        exchanges, counters, gauges, active, total, overflow = aggregate(src.segments())
        routes = src.route_names()
        services = src.service_names()

        def service_label(direction, sid):
            return services.get(sid, "_other") if sid else NO_SERVICE[direction]

        requests = CounterMetricFamily(
            "sidecar_requests_total", "HTTP requests (exchanges) finished",
            labels=["direction", "route", "service", "method", "code", "response_flags"])
        durations = {}
        bytes_in = {}
        bytes_out = {}
        for (d, rid, sid, method, status, flags), (n, req_b, resp_b, dur_sum, buckets) in exchanges.items():
            direction = DIRECTIONS[d]
            route = routes.get(rid, "_other")
            service = service_label(direction, sid)
            code = str(status)
            requests.add_metric([direction, route, service, method_name(method), code,
                                 response_flags(flags)], n)
            _add_histogram(durations, (direction, route, service, code), buckets, dur_sum)
            bkey = (direction, route, service)
            bytes_in[bkey] = bytes_in.get(bkey, 0) + req_b
            bytes_out[bkey] = bytes_out.get(bkey, 0) + resp_b
        yield requests

        hist = HistogramMetricFamily(
            "sidecar_request_duration_seconds",
            "Time from a complete request head to the end of the response",
            labels=["direction", "route", "service", "code"])
        for key, (buckets, dur_sum) in durations.items():
            hist.add_metric(list(key), _cumulative(buckets, _LE), dur_sum)
        yield hist

        for name, doc, table in (
                ("sidecar_request_bytes_total", "Request body bytes received from clients", bytes_in),
                ("sidecar_response_bytes_total", "Response body bytes sent to clients", bytes_out)):
            family = CounterMetricFamily(name, doc, labels=["direction", "route", "service"])
            for key, value in table.items():
                family.add_metric(list(key), value)
            yield family

        conns_active = GaugeMetricFamily("sidecar_connections_active", "Downstream connections open",
                                         labels=["direction", "protocol"])
        conns_total = CounterMetricFamily("sidecar_connections_total", "Downstream connections accepted",
                                          labels=["direction", "protocol"])
        for d, direction in enumerate(DIRECTIONS):
            for p, protocol in enumerate(PROTOCOLS):
                conns_active.add_metric([direction, protocol], active[d][p])
                conns_total.add_metric([direction, protocol], total[d][p])
        yield conns_active
        yield conns_total

        retries = CounterMetricFamily("sidecar_upstream_retries_total", "Upstream retries",
                                      labels=["service", "reason"])
        ratelimit = CounterMetricFamily("sidecar_ratelimit_decisions_total", "Rate limit decisions",
                                        labels=["route", "decision"])
        authz = CounterMetricFamily("sidecar_authz_decisions_total", "Authorization decisions",
                                    labels=["route", "decision"])
        cache = CounterMetricFamily("sidecar_cache_lookups_total", "Response cache lookups",
                                    labels=["route", "result"])
        ejections = CounterMetricFamily("sidecar_outlier_ejections_total",
                                        "Endpoints ejected by outlier detection", labels=["service"])
        checks = CounterMetricFamily("sidecar_health_checks_total", "Active health check probes",
                                     labels=["service", "result"])
        dropped = {M_ACCESS_LOG_DROPPED: 0, M_SPANS_DROPPED: 0, M_SPANS_EXPORTED: 0, M_SPANS_FAILED: 0}
        tcp_bytes = {(d, b): 0 for d in range(2) for b in range(2)}
        tunnels = {}
        for (metric, a, b), value in counters.items():
            if metric == M_TCP_BYTES:
                tcp_bytes[(a & 1, b & 1)] += value
            elif metric == M_TCP_TUNNELS:
                key = (DIRECTIONS[a & 1], TUNNEL_PATHS[b] if b < len(TUNNEL_PATHS) else "other")
                tunnels[key] = tunnels.get(key, 0) + value
            elif metric == M_RETRIES:
                retries.add_metric([services.get(a, "_other") if a else "_passthrough",
                                    RETRY_REASONS.get(b, "other")], value)
            elif metric == M_RATELIMIT:
                ratelimit.add_metric([routes.get(a, "_other"), DECISIONS.get(b, "other")], value)
            elif metric == M_AUTHZ:
                authz.add_metric([routes.get(a, "_other"), DECISIONS.get(b, "other")], value)
            elif metric == M_CACHE:
                cache.add_metric([routes.get(a, "_other"), CACHE_RESULTS.get(b, "other")], value)
            elif metric == M_OUTLIER_EJECTIONS:
                ejections.add_metric([services.get(a, "_other")], value)
            elif metric == M_HEALTH_CHECKS:
                checks.add_metric([services.get(a, "_other"), HEALTH_CHECK_RESULTS.get(b, "other")], value)
            elif metric in dropped:
                dropped[metric] += value
        yield from (retries, ratelimit, authz, cache, ejections, checks)

        # Byte tunnels (opaque TCP, upgraded connections), spliced ones included.
        for b, name, doc in ((0, "sidecar_tcp_received_bytes_total",
                              "Bytes received from downstream clients through byte tunnels"),
                             (1, "sidecar_tcp_sent_bytes_total",
                              "Bytes sent to downstream clients through byte tunnels")):
            family = CounterMetricFamily(name, doc, labels=["direction"])
            for d, direction in enumerate(DIRECTIONS):
                family.add_metric([direction], tcp_bytes[(d, b)])
            yield family
        family = CounterMetricFamily("sidecar_tcp_tunnels_total",
                                     "Byte tunnels by how their bytes are forwarded: kernel "
                                     "(spliced) or userspace (copied by a worker)",
                                     labels=["direction", "path"])
        for key, value in sorted(tunnels.items()):
            family.add_metric(list(key), value)
        yield family

        breakers = GaugeMetricFamily("sidecar_circuit_breaker_open",
                                     "Workers whose circuit breaker for the service is open",
                                     labels=["service"])
        endpoints = GaugeMetricFamily("sidecar_upstream_endpoints",
                                      "Endpoints of the service by state, summed over workers "
                                      "(each worker balances, ejects and health-checks on its own)",
                                      labels=["service", "state"])
        for (metric, a, b), value in gauges.items():
            if metric == M_CIRCUIT_BREAKER_OPEN:
                breakers.add_metric([services.get(a, "_other")], value)
            elif metric == M_ENDPOINTS:
                endpoints.add_metric([services.get(a, "_other"), ENDPOINT_STATES.get(b, "other")], value)
        yield breakers
        yield endpoints

        yield CounterMetricFamily("sidecar_access_log_dropped_total",
                                  "Access log lines dropped because the queue was full",
                                  value=dropped[M_ACCESS_LOG_DROPPED])
        for metric, name, doc in (
                (M_SPANS_DROPPED, "sidecar_tracing_spans_dropped_total",
                 "Spans dropped because the export queue was full (or unsent at shutdown)"),
                (M_SPANS_EXPORTED, "sidecar_tracing_spans_exported_total",
                 "Spans the OTLP collector accepted"),
                (M_SPANS_FAILED, "sidecar_tracing_spans_failed_total",
                 "Spans lost to OTLP export errors or rejected by the collector")):
            yield CounterMetricFamily(name, doc, value=dropped[metric])
        yield CounterMetricFamily("sidecar_stats_overflow_total",
                                  "Requests counted under the _other labels (stats table full)",
                                  value=overflow)

        if src.istio_compat():
            yield from self._istio(exchanges, routes, services)

    def _istio(self, exchanges, routes, services):
        """Istio's standard metrics, from the same counts, with Istio's labels."""
        name, namespace = self.source.workload()
        labels = ["reporter", "source_workload", "source_workload_namespace",
                  "destination_workload", "destination_workload_namespace",
                  "destination_service", "destination_service_name", "request_protocol",
                  "response_code", "response_flags", "connection_security_policy"]
        requests = CounterMetricFamily("istio_requests_total", "Requests (Istio standard metric)",
                                       labels=labels)
        durations = {}
        per_key = {}
        for (d, rid, sid, method, status, flags), (n, _, _, dur_sum, buckets) in exchanges.items():
            if d == 0:      # inbound: this workload is the destination
                values = ("destination", "unknown", "unknown", name, namespace,
                          name, name, "http", str(status), response_flags(flags), "unknown")
            else:
                svc = services.get(sid, "unknown") if sid else "unknown"
                values = ("source", name, namespace, "unknown", "unknown", svc, svc, "http",
                          str(status), response_flags(flags), "unknown")
            per_key[values] = per_key.get(values, 0) + n
            _add_histogram(durations, values, buckets, dur_sum)
        for values, n in per_key.items():
            requests.add_metric(list(values), n)
        yield requests
        hist = HistogramMetricFamily("istio_request_duration_milliseconds",
                                     "Request duration (Istio standard metric)", labels=labels)
        for values, (buckets, dur_sum) in durations.items():
            hist.add_metric(list(values), _cumulative(buckets, _LE_MS), dur_sum * 1000.0)
        yield hist


def _add_histogram(table, key, buckets, dur_sum):
    """Adds one label set's bucket counts and sum into table[key] = [buckets, sum]."""
    h = table.get(key)
    if h is None:
        table[key] = [list(buckets), dur_sum]
    else:
        h[0] = [a + b for a, b in zip(h[0], buckets)]
        h[1] += dur_sum


def _cumulative(buckets, bounds):
    out = []
    running = 0
    for le, n in zip(bounds, buckets):
        running += n
        out.append((le, running))
    return out
