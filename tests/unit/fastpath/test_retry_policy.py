"""A service's retry policy (fastpath/retry_policy.pyx): retriable conditions and statuses,
and the backoff's bounds and jitter."""
import statistics

import pytest

from fastpath.retry_policy import RetryPolicy


def test_conditions_and_statuses():
    p = RetryPolicy(2, ["connect-failure", "503", 429, "gateway-error"])
    assert p.retries_on("connect-failure") and not p.retries_on("reset") and not p.retries_on("timeout")
    assert [s for s in range(400, 600) if p.retries_on(s)] == [429, 502, 503, 504]
    assert not p.retries_on(200) and not p.retries_on(600)
    every = RetryPolicy(1, ["5xx"])
    assert [s for s in (499, 500, 550, 599) if every.retries_on(s)] == [500, 550, 599]


def test_a_status_outside_4xx_5xx_is_refused():
    with pytest.raises(ValueError):
        RetryPolicy(1, ["302"])


def test_backoff_is_full_jitter_under_an_exponential_ceiling():
    p = RetryPolicy(5, [], backoff_base=0.01, backoff_max=0.05, seed=3)
    for n, ceiling in ((1, 0.01), (2, 0.03), (3, 0.05), (4, 0.05), (40, 0.05)):
        waits = [p.backoff_for(n) for _ in range(2000)]
        assert 0 <= min(waits) and max(waits) <= ceiling
        assert statistics.mean(waits) == pytest.approx(ceiling / 2, rel=0.1)     # uniform
        assert max(waits) > ceiling * 0.95


def test_the_same_seed_gives_the_same_waits():
    a = RetryPolicy(3, [], seed=9)
    b = RetryPolicy(3, [], seed=9)
    assert [a.backoff_for(2) for _ in range(5)] == [b.backoff_for(2) for _ in range(5)]
