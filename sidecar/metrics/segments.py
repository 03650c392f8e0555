"""The workers' shared-memory stats segments, as the manager holds them.

Each worker process gets a fresh segment (a memfd, zero-filled and formatted here) and
is its only writer. When the process is gone its counters are folded into `retired`
once, so totals stay monotonic across worker restarts and replacements; gauges
(connections in flight, breakers open) only count live workers.
"""
import mmap
import os

from fastpath import stats


class Segment:
    """One worker process's segment: the manager's mapping of it and the fd to pass on."""

    def __init__(self, exchange_capacity=stats.DEFAULT_EXCHANGE_CAPACITY,
                 counter_capacity=stats.DEFAULT_COUNTER_CAPACITY):
        size = stats.segment_size(exchange_capacity, counter_capacity)
        self.fd = os.memfd_create("sidecar-stats", 0)
        os.ftruncate(self.fd, size)
        self.map = mmap.mmap(self.fd, size)
        stats.init_segment(self.map, exchange_capacity, counter_capacity)

    def close_fd(self):
        """After the worker has inherited the fd, the manager needs only its mapping."""
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None

    def read(self) -> dict:
        return stats.read_segment(self.map)


class RetiredTotals:
    """The counters of workers that are gone, summed by their raw keys."""

    def __init__(self):
        self.exchanges = {}      # (direction, route, service, method, status, flags) -> [values]
        self.counters = {}       # (metric, a, b) -> value
        self.connections_total = [[0, 0], [0, 0]]
        self.exchange_overflow = 0
        self.counter_overflow = 0

    def add(self, data: dict, gauge_metrics=frozenset()):
        if not data:
            return
        for row in data["exchanges"]:
            key, values = row[:6], row[6:]
            have = self.exchanges.get(key)
            if have is None:
                self.exchanges[key] = [values[0], values[1], values[2], values[3], list(values[4])]
            else:
                have[0] += values[0]
                have[1] += values[1]
                have[2] += values[2]
                have[3] += values[3]
                have[4] = [a + b for a, b in zip(have[4], values[4])]
        for metric, a, b, value in data["counters"]:
            if metric not in gauge_metrics:
                self.counters[(metric, a, b)] = self.counters.get((metric, a, b), 0) + value
        for d in range(2):
            for p in range(2):
                self.connections_total[d][p] += data["connections_total"][d][p]
        self.exchange_overflow += data["exchange_overflow"]
        self.counter_overflow += data["counter_overflow"]

    def as_segment(self) -> dict:
        """In read_segment's shape, so collectors treat it like one more worker."""
        return {
            "exchanges": [k + (v[0], v[1], v[2], v[3], tuple(v[4])) for k, v in self.exchanges.items()],
            "counters": [k + (v,) for k, v in self.counters.items()],
            "connections_active": [[0, 0], [0, 0]],
            "connections_total": self.connections_total,
            "exchange_overflow": self.exchange_overflow,
            "counter_overflow": self.counter_overflow,
            "generation": 0,
        }
