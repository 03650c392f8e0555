"""The kernel traffic and drop collectors (sidecar.metrics.kernel_traffic): the continuity
rules that keep counters monotonic over an LRU map, on their own; then the collectors
over fixture maps (real pinned BPF maps filled by the test: tests.support.bpf_fixtures),
as a scrape sees them."""
import pytest
from prometheus_client import generate_latest
from prometheus_client.core import CollectorRegistry

from sidecar.bpf.layout import DROP_REASONS
from sidecar.bpf.traffic import TrafficRow
from sidecar.metrics.kernel_traffic import KernelDropsCollector, KernelTrafficCollector, TrafficContinuity
from tests.conftest import require_privileges


def _row(peer, b, p, direction="inbound", port=8080, protocol="tcp"):
    return TrafficRow(direction, peer, port, protocol, b, p)


A = ("inbound", "10.0.0.1", 8080, "tcp")
B = ("inbound", "10.0.0.2", 8080, "tcp")


# -- continuity (pure) ------------------------------------------------------------------------

def test_counters_pass_through_while_entries_stay():
    c = TrafficContinuity()
    assert c.update([_row("10.0.0.1", 100, 2)]) == {A: (100, 2)}
    assert c.update([_row("10.0.0.1", 250, 5)]) == {A: (250, 5)}
    assert c.evicted == 0


def test_an_evicted_entry_keeps_its_last_value():
    c = TrafficContinuity()
    c.update([_row("10.0.0.1", 100, 2), _row("10.0.0.2", 7, 1)])
    assert c.update([_row("10.0.0.2", 9, 2)]) == {A: (100, 2), B: (9, 2)}
    assert c.evicted == 1


def test_an_entry_that_comes_back_continues_from_its_last_value():
    c = TrafficContinuity()
    c.update([_row("10.0.0.1", 100, 2)])
    c.update([])
    assert c.update([_row("10.0.0.1", 30, 1)]) == {A: (130, 3)}
    assert c.update([_row("10.0.0.1", 40, 2)]) == {A: (140, 4)}
    assert c.retained == {}


def test_an_entry_recreated_between_scrapes_is_seen_by_its_lower_value():
    c = TrafficContinuity()
    c.update([_row("10.0.0.1", 100, 2)])
    assert c.update([_row("10.0.0.1", 10, 1)]) == {A: (110, 3)}
    assert c.update([_row("10.0.0.1", 20, 2)]) == {A: (120, 4)}
    assert c.evicted == 1


def test_exported_values_never_go_down_through_any_sequence():
    c = TrafficContinuity()
    seen = {}
    reads = [[_row("10.0.0.1", 5, 1)], [_row("10.0.0.1", 9, 2), _row("10.0.0.2", 4, 1)], [],
             [_row("10.0.0.2", 1, 1)], [_row("10.0.0.1", 3, 1), _row("10.0.0.2", 2, 2)],
             [_row("10.0.0.1", 1, 1)]]
    for rows in reads:
        for key, value in c.update(rows).items():
            assert value >= seen.get(key, (0, 0)), (key, value, seen.get(key))
            seen[key] = value


def test_retained_label_sets_are_bounded_oldest_first():
    c = TrafficContinuity(retained_max=2)
    c.update([_row("10.0.0.%d" % i, i, 1) for i in range(1, 5)])
    c.update([_row("10.0.0.4", 4, 1)])           # 1, 2, 3 gone: only the last two kept
    out = c.update([_row("10.0.0.4", 5, 2)])
    assert sorted(k[1] for k in out) == ["10.0.0.2", "10.0.0.3", "10.0.0.4"]
    assert len(c.retained) == 2


# -- the collectors over fixture maps ----------------------------------------------------------

@pytest.fixture
def maps():
    require_privileges(root=True)
    from tests.support.bpf_fixtures import FixtureMaps
    with FixtureMaps("sc_traffic", "sc_drops") as fx:
        yield fx


def _scrape(*collectors):
    registry = CollectorRegistry(auto_describe=False)
    for c in collectors:
        registry.register(c)
    samples = {}
    for family in registry.collect():
        for s in family.samples:
            samples[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return samples, generate_latest(registry).decode()


def _labels(direction, peer, port, protocol):
    return tuple(sorted({"direction": direction, "peer": peer, "port": str(port),
                         "protocol": protocol}.items()))


def test_traffic_collector_sums_cpus_and_names_labels(maps):
    maps.set_traffic("inbound", "10.0.0.2", 8080, 6, (1000, 10), (500, 5))
    maps.set_traffic("outbound", "fd00::2", 53, 17, (300, 3))
    maps.set_traffic("inbound", "10.0.0.3", 0, 1, (84, 1))
    samples, text = _scrape(KernelTrafficCollector(maps.dir))
    assert samples[("sidecar_kernel_bytes_total", _labels("inbound", "10.0.0.2", 8080, "tcp"))] == 1500
    assert samples[("sidecar_kernel_packets_total", _labels("inbound", "10.0.0.2", 8080, "tcp"))] == 15
    assert samples[("sidecar_kernel_bytes_total", _labels("outbound", "fd00::2", 53, "udp"))] == 300
    assert samples[("sidecar_kernel_packets_total", _labels("inbound", "10.0.0.3", 0, "icmp"))] == 1
    assert samples[("sidecar_kernel_map_entries", (("map", "sc_traffic"),))] == 3
    assert samples[("sidecar_kernel_map_max_entries", (("map", "sc_traffic"),))] == 4096
    assert "# TYPE sidecar_kernel_bytes_total counter" in text


def test_traffic_collector_keeps_an_evicted_entry_and_resumes_it(maps):
    collector = KernelTrafficCollector(maps.dir)
    maps.set_traffic("inbound", "10.0.0.2", 8080, 6, (1000, 10))
    _scrape(collector)
    maps.delete_traffic("inbound", "10.0.0.2", 8080, 6)        # what an LRU eviction does
    samples, _ = _scrape(collector)
    key = ("sidecar_kernel_bytes_total", _labels("inbound", "10.0.0.2", 8080, "tcp"))
    assert samples[key] == 1000
    assert samples[("sidecar_kernel_traffic_evicted_total", ())] == 1
    assert samples[("sidecar_kernel_map_entries", (("map", "sc_traffic"),))] == 0
    maps.set_traffic("inbound", "10.0.0.2", 8080, 6, (40, 1))
    samples, _ = _scrape(collector)
    assert samples[key] == 1040


def test_traffic_collector_says_nothing_without_the_map():
    collector = KernelTrafficCollector("/sys/fs/bpf/sidecar/no-such-instance/maps")
    assert list(collector.collect()) == []


def test_drops_collector_exports_every_reason(maps):
    maps.set_drops(DROP_REASONS.index("syn_rate_limit"), 3, 4)
    maps.set_drops(DROP_REASONS.index("deny_cidr"), 1)
    samples, _ = _scrape(KernelDropsCollector(maps.dir))
    got = {dict(labels)["reason"]: v for (name, labels), v in samples.items()
           if name == "sidecar_kernel_drops_total"}
    assert got == {r: {"syn_rate_limit": 7, "deny_cidr": 1}.get(r, 0) for r in DROP_REASONS}
