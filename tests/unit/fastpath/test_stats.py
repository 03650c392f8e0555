"""fastpath.stats: the shared-memory counter tables (no processes: an anonymous mmap)."""
import mmap

import pytest

from fastpath import stats


def segment(exchanges=64, counters=16):
    m = mmap.mmap(-1, stats.segment_size(exchanges, counters))
    stats.init_segment(m, exchanges, counters)
    return m


def test_exchanges_are_counted_by_label_set_with_bytes_and_duration_buckets():
    m = segment()
    w = stats.WorkerStats(m)
    w.set_labels([7, 8], [9], [11, 12], 0.0, 3)
    for _ in range(3):
        w.count_exchange(0, route=1, status=200, method=1, request_bytes=5, response_bytes=10, duration=0.003)
    w.count_exchange(1, route=0, service=1, status=503, flags=0x001, duration=20.0)
    data = stats.read_segment(m)
    assert data["generation"] == 3
    rows = {r[:6]: r[6:] for r in data["exchanges"]}
    n, req, resp, dur, buckets = rows[(0, 8, 0, 1, 200, 0)]
    assert (n, req, resp) == (3, 15, 30) and dur == pytest.approx(0.009, rel=1e-3)
    assert buckets[stats.DURATION_BOUNDS.index(0.005)] == 3
    n, _, _, _, buckets = rows[(1, 9, 12, 0, 503, 1)]
    assert n == 1 and buckets[-1] == 1          # past the last bound: +Inf


def test_indices_past_the_snapshot_tables_and_no_route_get_reserved_ids():
    m = segment()
    w = stats.WorkerStats(m)
    w.set_labels([5], [], [], 0.0)
    w.count_exchange(0, route=-1, service=-1)
    w.count_exchange(0, route=3)
    rows = {r[:3] for r in stats.read_segment(m)["exchanges"]}
    assert rows == {(0, 0, 0), (0, stats.OTHER, 0)}


def test_an_exchange_begun_before_a_reload_is_counted_with_the_labels_it_began_with():
    m = segment()
    w = stats.WorkerStats(m)
    w.set_labels([1], [], [], 10.0)
    w.set_labels([2], [], [], 20.0)
    w.count_exchange(0, route=0, start=15.0)     # began under the first snapshot
    w.count_exchange(0, route=0, start=25.0)
    routes = sorted(r[1] for r in stats.read_segment(m)["exchanges"])
    assert routes == [1, 2]


def test_a_full_table_counts_under_other_labels_and_says_so():
    m = segment(exchanges=4)
    w = stats.WorkerStats(m)
    w.set_labels([], [], [], 0.0)
    for status in range(200, 210):
        w.count_exchange(0, status=status)
    data = stats.read_segment(m)
    assert sum(r[6] for r in data["exchanges"]) == 10      # nothing lost
    assert data["exchange_overflow"] > 0
    assert any(r[1] == stats.OTHER and r[2] == stats.OTHER for r in data["exchanges"])


def test_generic_counters_and_connection_gauges():
    m = segment()
    w = stats.WorkerStats(m)
    w.add(4, 3, 1, 2)
    w.add(4, 3, 1, 5)
    w.open_connection(1, 0)
    w.open_connection(1, 0)
    w.close_connection(1, 0)
    data = stats.read_segment(m)
    assert data["counters"] == [(4, 3, 1, 7)]
    assert data["connections_active"][1][0] == 1 and data["connections_total"][1][0] == 2


def test_segments_are_checked():
    with pytest.raises(ValueError):
        stats.WorkerStats(mmap.mmap(-1, stats.segment_size(64, 16)))     # not formatted
    with pytest.raises(ValueError):
        stats.init_segment(mmap.mmap(-1, 1 << 20), 100, 16)              # not a power of two
