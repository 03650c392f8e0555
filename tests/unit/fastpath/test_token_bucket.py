"""Token buckets (fastpath/token_bucket.pyx) and the 429 headers."""
import pytest

from fastpath.policy import worker_share
from fastpath.token_bucket import TokenBucketLimiter, headers_for


def test_burst_then_refill_at_the_rate():
    rl = TokenBucketLimiter(10.0, 5.0, 16)
    results = [rl.check(b"k", 100.0)[0] for _ in range(6)]
    assert results == [True] * 5 + [False]
    allowed, remaining, retry_after, reset = rl.check(b"k", 100.0)
    assert not allowed and retry_after == pytest.approx(0.1)
    assert rl.check(b"k", 100.1)[0]          # one token refilled after 100 ms
    assert not rl.check(b"k", 100.1)[0]
    assert rl.check(b"k", 200.0)[1] == pytest.approx(4.0)   # full again (5), one taken


def test_keys_have_their_own_buckets_and_global_shares_one():
    rl = TokenBucketLimiter(1.0, 1.0, 16)
    assert rl.check(b"a", 1.0)[0] and rl.check(b"b", 1.0)[0]
    assert not rl.check(b"a", 1.0)[0]
    g = TokenBucketLimiter(1.0, 1.0, global_key=True)
    assert g.check(b"a", 1.0)[0] and not g.check(b"b", 1.0)[0]


def test_a_key_flood_stays_bounded_and_the_hot_key_stays_limited():
    rl = TokenBucketLimiter(1.0, 3.0, max_keys=100)
    hot_allowed = 0
    for i in range(20000):
        rl.check(b"10.0.%d.%d" % (i // 256 % 256, i % 256), 5.0)
        if i % 50 == 0:
            hot_allowed += rl.check(b"hot", 5.0)[0]
    assert rl.keys_held == 100 and rl.max_keys == 100
    assert rl.evictions >= 19900
    assert hot_allowed == 3                 # its burst, no more: it was never evicted


def test_an_evicted_key_starts_with_a_full_bucket():
    rl = TokenBucketLimiter(1.0, 1.0, max_keys=2)
    assert rl.check(b"a", 0.0)[0] and not rl.check(b"a", 0.0)[0]
    rl.check(b"b", 0.0)
    rl.check(b"c", 0.0)                     # evicts a
    assert rl.check(b"a", 0.0)[0]


def test_refusal_headers_use_the_draft_names():
    text = headers_for(10, 0.4, 0.06, 0.96, 1.0).decode()
    assert text == ("retry-after: 1\r\nratelimit-limit: 10\r\nratelimit-remaining: 0\r\n"
                    "ratelimit-reset: 1\r\nratelimit-policy: 10;w=1\r\n")


def test_the_configured_rate_is_divided_across_workers():
    assert worker_share(100.0, 200, 4) == (25.0, 50.0)
    assert worker_share(1.0, 1, 4) == (0.25, 1.0)       # at least one token per worker


def test_bad_parameters_are_refused():
    with pytest.raises(ValueError):
        TokenBucketLimiter(0.0, 1.0)


def _rss_kb():
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("VmRSS:"))


def test_a_large_key_table_costs_memory_only_as_keys_arrive():
    before = _rss_kb()
    rl = TokenBucketLimiter(1.0, 1.0, max_keys=1 << 20)     # ~100 MB if touched up front
    assert _rss_kb() - before < 8 * 1024
    for i in range(1000):
        rl.check(b"k%d" % i, 0.0)
    assert _rss_kb() - before < 16 * 1024
    assert rl.keys_held == 1000
