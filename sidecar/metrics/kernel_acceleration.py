"""sidecar_kernel_accelerated_sockets: app <-> sidecar sockets whose bytes skip the TCP/IP
stack right now (interception.accelerate_local), read at scrape time from the counters the
local_hops programs keep (sockets added to sc_hop_socks minus those that closed), through
the bpf(2) wrapper: the manager never imports bcc.

Also sidecar_kernel_local_hop_bytes_total: the bytes those sockets moved without TCP."""
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

from sidecar.bpf.state import read_hop_counters


class KernelAccelerationCollector:
    def __init__(self, programs_path):
        self.programs_path = programs_path      # () -> instance directory or None

    def describe(self):
        return []

    def collect(self):
        path = self.programs_path()
        hops = read_hop_counters(path) if path else {}
        yield GaugeMetricFamily("sidecar_kernel_accelerated_sockets",
                                "App <-> sidecar sockets on the in-kernel local-hop path",
                                value=hops.get("accelerated_sockets", 0))
        yield CounterMetricFamily("sidecar_kernel_local_hop_bytes_total",
                                  "Bytes moved between app and sidecar sockets without TCP/IP",
                                  value=hops.get("hop_bytes_redirected", 0))
