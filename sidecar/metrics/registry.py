"""The one place where a metrics collector per source is registered.

Sources: the workers' shared-memory counters (WorkerStatsCollector), the manager itself
(ManagerCollector), and whatever collectors the kernel interception module hands over
(`manager.kernel_collectors`, e.g. one per pinned map family), read at scrape time.
"""
from prometheus_client.core import CollectorRegistry, CounterMetricFamily, GaugeMetricFamily, InfoMetricFamily

from sidecar.metrics.worker_stats import WorkerStatsCollector


class ManagerCollector:
    """The manager's own state: workers, config generation and reloads, readiness."""

    def __init__(self, manager):
        self.manager = manager

    def describe(self):
        return []

    def collect(self):
        m = self.manager
        info = InfoMetricFamily("sidecar", "The sidecar's identity", labels=["workload", "namespace"])
        info.add_metric([m.cfg.workload.name, m.cfg.workload.namespace], {"version": m.version})
        yield info
        workers = GaugeMetricFamily("sidecar_workers", "Worker processes by state", labels=["state"])
        for state, n in m.worker_states().items():
            workers.add_metric([state], n)
        yield workers
        reloads = CounterMetricFamily("sidecar_config_reloads_total", "Config reloads", labels=["result"])
        for result, n in m.reload_counts.items():
            reloads.add_metric([result], n)
        yield reloads
        yield GaugeMetricFamily("sidecar_config_generation", "Generation of the running config",
                                value=m.generation)
        yield GaugeMetricFamily("sidecar_ready", "1 when /readyz answers 200", value=1 if m.readiness()[0] else 0)
        yield CounterMetricFamily("sidecar_worker_restarts_total", "Workers restarted after an unexpected exit",
                                  value=m.restarts)


def build_registry(manager) -> CollectorRegistry:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(WorkerStatsCollector(manager.worker_stats_source()))
    registry.register(ManagerCollector(manager))
    for collector in manager.kernel_collectors:
        registry.register(collector)
    return registry
