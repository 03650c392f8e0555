"""Prometheus metrics of the sidecar (SPEC.md, "Metrics").

    labels        stable ids of route and service names (the label values in shared memory)
    segments      the workers' shared-memory segments, live and retired
    worker_stats  the collector of the workers' counters (sidecar_requests_total, ...)
    registry      the one place a collector per source is registered
    server        the /metrics endpoint (text or OpenMetrics by content negotiation)
"""

# SPEC's kernel metrics: exported by the collectors the kernel interception module
# registers (manager.kernel_collectors); the dashboard's kernel panels use these names.
KERNEL_METRIC_NAMES = (
    "sidecar_kernel_bytes_total", "sidecar_kernel_packets_total", "sidecar_kernel_drops_total",
    "sidecar_kernel_redirects_total", "sidecar_kernel_accelerated_sockets",
)
