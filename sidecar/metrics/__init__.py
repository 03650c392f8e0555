"""Prometheus metrics of the sidecar (SPEC.md, "Metrics").

    labels        stable ids of route and service names (the label values in shared memory)
    segments      the workers' shared-memory segments, live and retired
    worker_stats  the collector of the workers' counters (sidecar_requests_total, ...)
    registry      the one place a collector per source is registered
    kernel_traffic  the kernel's traffic and drop counters (pinned maps, read at scrape time)
    kernel_redirects  connections the kernel redirected (interception counters)
    server        the /metrics endpoint (text or OpenMetrics by content negotiation)
"""

# SPEC's kernel metrics: exported by the collectors the kernel interception module
# registers (manager.kernel_collectors); the dashboard's kernel panels use these names.
KERNEL_METRIC_NAMES = (
    "sidecar_kernel_bytes_total", "sidecar_kernel_packets_total", "sidecar_kernel_drops_total",
    "sidecar_kernel_redirects_total", "sidecar_kernel_accelerated_sockets",
    # the traffic counters' map (sidecar.metrics.kernel_traffic)
    "sidecar_kernel_map_entries", "sidecar_kernel_map_max_entries", "sidecar_kernel_traffic_evicted_total",
)
