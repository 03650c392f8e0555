"""The kernel's traffic and drop counters, read from the instance's pinned maps at scrape
time (through sidecar.bpf.syscall, never bcc): one small collector per map family, the map
directory a constructor argument so tests feed fixture maps.

    KernelTrafficCollector  sc_traffic -> sidecar_kernel_bytes_total and
                            sidecar_kernel_packets_total {direction, peer, port, protocol};
                            sidecar_kernel_map_entries / _max_entries {map="sc_traffic"};
                            sidecar_kernel_traffic_evicted_total
    KernelDropsCollector    sc_drops -> sidecar_kernel_drops_total {reason}, every reason of
                            bpf/lib/sidecar_drop_reasons.h, zeros included

Labels (bpf/traffic_counters.c has the kernel's side): direction is the packet's
(inbound: received by the pod, outbound: sent by it); port is the connection's service
port, the same both ways (the pod's port when it serves, the peer's when it is the
client); protocol a name (tcp, udp, icmp, icmpv6) or the IP protocol number. Label sets
come from a bounded LRU map, so there are at most SC_TRAFFIC_MAX live ones.

Evicted entries and counter monotonicity: when the kernel map is full, the least recently
used entry is evicted and its counts are gone from the kernel. A Prometheus counter must
never go down, so this collector keeps, per label set, what it last read:
  - an entry that vanished keeps being exported at its last value (a finished
    connection's counter simply stops growing);
  - an entry that comes back (or was evicted and re-created between two scrapes, seen as
    a value lower than the last one read) continues from that value;
  - at most RETAINED_MAX vanished label sets are kept; past that the one gone longest is
    no longer exported (its series goes stale, like any label set that stops being
    reported).
Totals are not folded into an "other" series: its sudden jump would make rate() and
increase() count those bytes a second time. What is lost is only what an entry counted
between the last scrape and its eviction; a map sized above the live working set keeps
that rare, and sidecar_kernel_traffic_evicted_total says how often it happens.
"""
from __future__ import annotations

import threading
from collections import OrderedDict

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

from sidecar.bpf.layout import DROP_REASONS, MAPS
from sidecar.bpf.traffic import read_drops, read_traffic

__all__ = ["KernelTrafficCollector", "KernelDropsCollector", "TrafficContinuity"]

LABELS = ["direction", "peer", "port", "protocol"]
RETAINED_MAX = MAPS["sc_traffic"].max_entries


class TrafficContinuity:
    """Turns successive reads of an LRU counter map into counters that never go down (the
    rules in this module's docstring). Pure: fed rows, gives totals; unit-tested alone."""

    def __init__(self, retained_max: int = RETAINED_MAX):
        self.retained_max = retained_max
        self.last = {}                  # key -> (bytes, packets) as last read from the kernel
        self.offset = {}                # key -> (bytes, packets) carried over from before
        self.retained = OrderedDict()   # key -> exported totals of label sets gone from the map
        self.evicted = 0                # label sets seen leaving the map (or re-created)

    def update(self, rows) -> dict:
        """{key: (bytes, packets)} to export, given every row read from the map now."""
        now = {r.key: (r.bytes, r.packets) for r in rows}
        out = {}
        for key, (b, p) in now.items():
            off = self.offset.get(key, (0, 0))
            if key in self.retained:
                off = self.retained.pop(key)
            elif key in self.last and (b < self.last[key][0] or p < self.last[key][1]):
                seen = self.last[key]      # evicted and re-created since the last read
                off = (off[0] + seen[0], off[1] + seen[1])
                self.evicted += 1
            if off != (0, 0):
                self.offset[key] = off
            out[key] = (off[0] + b, off[1] + p)
        for key, seen in self.last.items():
            if key not in now:
                off = self.offset.pop(key, (0, 0))
                self.retained[key] = (off[0] + seen[0], off[1] + seen[1])
                self.retained.move_to_end(key)
                self.evicted += 1
        while len(self.retained) > self.retained_max:
            self.retained.popitem(last=False)
        self.last = now
        for key, totals in self.retained.items():
            out[key] = totals
        return out


class KernelTrafficCollector:
    def __init__(self, map_dir: str, retained_max: int = RETAINED_MAX):
        self.map_dir = map_dir
        self.continuity = TrafficContinuity(retained_max)
        self.lock = threading.Lock()     # scrapes may run concurrently

    def describe(self):
        return []

    def collect(self):
        rows = read_traffic(self.map_dir)
        if rows is None:                 # not pinned (yet, or any more): nothing to say
            return
        with self.lock:
            totals = self.continuity.update(rows)
            evicted = self.continuity.evicted
        bytes_family = CounterMetricFamily(
            "sidecar_kernel_bytes_total", "IP bytes through the pod interface, counted in the kernel",
            labels=LABELS)
        packets_family = CounterMetricFamily(
            "sidecar_kernel_packets_total", "Packets through the pod interface, counted in the kernel",
            labels=LABELS)
        for (direction, peer, port, protocol), (b, p) in sorted(totals.items()):
            labels = [direction, peer, str(port), protocol]
            bytes_family.add_metric(labels, b)
            packets_family.add_metric(labels, p)
        yield bytes_family
        yield packets_family
        spec = MAPS["sc_traffic"]
        entries = GaugeMetricFamily("sidecar_kernel_map_entries", "Entries in a kernel map",
                                    labels=["map"])
        entries.add_metric([spec.name], len(rows))
        yield entries
        capacity = GaugeMetricFamily("sidecar_kernel_map_max_entries", "Size of a kernel map",
                                     labels=["map"])
        capacity.add_metric([spec.name], spec.max_entries)
        yield capacity
        yield CounterMetricFamily("sidecar_kernel_traffic_evicted_total",
                                  "Label sets evicted from the full kernel traffic map", value=evicted)


class KernelDropsCollector:
    def __init__(self, map_dir: str):
        self.map_dir = map_dir

    def describe(self):
        return []

    def collect(self):
        drops = read_drops(self.map_dir)
        if not drops:
            return
        family = CounterMetricFamily("sidecar_kernel_drops_total",
                                     "Packets dropped in the kernel, by reason", labels=["reason"])
        for reason in DROP_REASONS:
            family.add_metric([reason], drops.get(reason, 0))
        yield family
