"""sidecar_kernel_redirects_total{direction, mode}: connections the kernel sent through the
sidecar, read at scrape time from the interception's own counters (the eBPF counter map,
or the packet counts of the iptables REDIRECT rules)."""
from prometheus_client.core import CounterMetricFamily


class KernelRedirectsCollector:
    def __init__(self, interception):
        self.interception = interception

    def describe(self):
        return []

    def collect(self):
        family = CounterMetricFamily("sidecar_kernel_redirects_total",
                                     "Connections redirected to the sidecar by the kernel",
                                     labels=["direction", "mode"])
        for direction, n in sorted(self.interception.redirects().items()):
            family.add_metric([direction, self.interception.mode], n)
        yield family
