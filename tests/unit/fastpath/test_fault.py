"""Fault injection draws (fastpath/fault.pyx)."""
from fastpath.fault import FaultInjector


def shares(f, n=100000):
    aborts = delays = 0
    for _ in range(n):
        status, delay = f.draw()
        aborts += status != 0
        delays += delay > 0
    return aborts / n, delays / n


def test_percentages_hold_over_many_draws():
    abort, delay = shares(FaultInjector(503, 0.10, 0.05, 0.30, seed=42))
    assert abs(abort - 0.10) < 0.01 and abs(delay - 0.30) < 0.01


def test_zero_and_full():
    assert shares(FaultInjector(503, 0.0, 0.1, 0.0, seed=1), 1000) == (0.0, 0.0)
    assert shares(FaultInjector(418, 1.0, 0.1, 1.0, seed=1), 1000) == (1.0, 1.0)
    assert FaultInjector(418, 1.0, seed=1).draw() == (418, 0.0)


def test_a_fixed_seed_repeats_the_draws():
    a = [FaultInjector(503, 0.5, seed=9).draw() for _ in range(1)]
    f1, f2 = FaultInjector(503, 0.5, seed=9), FaultInjector(503, 0.5, seed=9)
    assert [f1.draw() for _ in range(50)] == [f2.draw() for _ in range(50)]
    assert a


def test_tiny_percentages_are_kept_in_parts_per_million():
    abort, _ = shares(FaultInjector(503, 0.001, seed=5), 200000)
    assert 0.0005 < abort < 0.0015
