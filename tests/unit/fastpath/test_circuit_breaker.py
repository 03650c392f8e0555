"""A service's circuit breaker (fastpath/circuit_breaker.pyx): admission past max_requests,
the retry budget, and the open gauge written to shared memory only when it changes."""
import mmap

from fastpath import stats
from fastpath.circuit_breaker import CircuitBreaker, worker_limit

M_CIRCUIT_BREAKER_OPEN = 5


def gauge(m, service_id=3):
    for metric, a, b, value in stats.read_segment(m)["counters"]:
        if (metric, a) == (M_CIRCUIT_BREAKER_OPEN, service_id):
            return value
    return None


def test_requests_past_max_requests_are_refused_and_the_gauge_opens_and_closes():
    m = mmap.mmap(-1, stats.segment_size(64, 64))
    stats.init_segment(m, 64, 64)
    b = CircuitBreaker()
    b.configure(10, 10, 2, 0.2, 3, stats.WorkerStats(m), 3)
    assert gauge(m) is None            # never open: nothing written
    assert b.try_admit() and not b.is_open
    assert b.try_admit() and b.is_open and gauge(m) == 1
    assert not b.try_admit() and b.overflows == 1 and b.requests == 2
    b.finish()
    assert not b.is_open and gauge(m) == 0
    assert b.try_admit()


def test_the_retry_budget_is_a_share_of_active_requests_with_a_floor():
    b = CircuitBreaker()
    b.configure(100, 100, 100, 0.2, 2, None, 0)
    for _ in range(20):
        b.try_admit()
    assert [b.try_retry() for _ in range(5)] == [True, True, True, True, False]   # 20% of 20
    assert b.retries_refused == 1
    for _ in range(4):
        b.finish_retry()
    for _ in range(19):
        b.finish()
    assert [b.try_retry() for _ in range(3)] == [True, True, False]                # the floor: 2


def test_reconfiguring_keeps_what_is_counted():
    b = CircuitBreaker()
    b.configure(10, 10, 1, 0.2, 3)
    assert b.try_admit() and b.is_open
    b.configure(10, 10, 5, 0.2, 3)
    assert b.requests == 1 and not b.is_open


def test_worker_limit_divides_rounding_up():
    assert [worker_limit(10, w) for w in (1, 2, 3, 4, 16)] == [10, 5, 4, 3, 1]
    assert worker_limit(1, 8) == 1 and worker_limit(5, 0) == 5
