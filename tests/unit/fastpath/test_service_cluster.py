"""A service's cluster (fastpath/service_cluster.pyx) with no sockets: load balancing over
the endpoints that take requests, ejection and return, health check thresholds, and the
state a reload carries over."""
import collections
import mmap

import pytest

from fastpath import stats
from fastpath.outbound import OutboundRouter
from fastpath.parser import Limits
from sidecar.config import load_config_text


def router(services_yaml, previous=None, workers=1, stats_writer=None, seed=11):
    cfg = load_config_text("workers: %d\nservices:\n%s" % (workers, services_yaml))
    r = OutboundRouter(None, Limits(), cfg.services, previous=previous, workers=workers,
                       stats=stats_writer, service_ids=list(range(1, len(cfg.services) + 1)),
                       seed=seed)
    r.activate(previous, now=0.0)
    return r


def three(settings=""):
    return router("""
  - name: svc
    endpoints: ["10.0.0.1:80", "10.0.0.2:80", "10.0.0.3:80"]
    %s
""" % settings).clusters[0]


def pick(cluster, now=0.0, avoid=-1, end="success"):
    """The endpoint index of one try, ended at once with `end` (or left active: None)."""
    pool, index = cluster.pick_pool(None, now, avoid)
    assert pool is cluster.pool_of(index)
    if end is not None:
        cluster.end_try(index, end, now)
    return index


def test_round_robin_takes_endpoints_in_turn_and_a_retry_skips_the_one_that_failed():
    c = three()
    assert [pick(c) for _ in range(6)] == [0, 1, 2, 0, 1, 2]
    # The next in turn is 0; a retry avoiding 0 gets the one after.
    assert pick(c, avoid=0) == 1


def test_random_spreads_picks_evenly():
    c = three("load_balancing: random")
    counts = collections.Counter(pick(c) for _ in range(3000))
    assert all(900 <= counts[i] <= 1100 for i in range(3)), counts
    for avoid in range(3):
        assert all(pick(c, avoid=avoid) != avoid for _ in range(200))


def test_least_request_picks_the_less_busy_of_two_random_endpoints():
    c = three("load_balancing: least_request")
    held = [c.pick_pool(None, 0.0, -1)[1] for _ in range(15)]
    counts = collections.Counter(held)
    assert max(counts.values()) - min(counts.values()) <= 2, counts      # balanced while held
    for index in held:
        if index != 0:
            c.end_try(index, "none")            # endpoint 0 still holds its requests
    picks = collections.Counter(pick(c) for _ in range(600))
    # Every pair of two has an idle endpoint in it: the busy one is never the less busy.
    assert picks[0] == 0 and 200 <= picks[1] <= 400 and picks[1] + picks[2] == 600, picks


def test_least_request_never_picks_the_busiest_of_two():
    c = router("""
  - name: svc
    endpoints: ["10.0.0.1:80", "10.0.0.2:80"]
    load_balancing: least_request
""").clusters[0]
    _, busy = c.pick_pool(None, 0.0, -1)
    assert {pick(c) for _ in range(100)} == {1 - busy}


def test_an_endpoint_failing_in_a_row_is_ejected_for_longer_each_time_and_comes_back():
    c = three("outlier_detection: {consecutive_5xx: 2, ejection: 10s, max_ejection: 25s, "
              "interval: 100s, max_ejected: 50%}")
    ep = c.endpoints[0]
    c.report_outcome(0, "failure", 1.0)
    c.report_outcome(0, "success", 1.0)        # a success ends the streak
    c.report_outcome(0, "failure", 1.0)
    assert not ep.ejected
    c.report_outcome(0, "failure", 1.0)
    assert ep.ejected and ep.ejected_until == 11.0 and c.available_count == 2
    assert {pick(c, now=5.0) for _ in range(10)} == {1, 2}
    assert pick(c, now=11.0) in (0, 1, 2) and not ep.ejected      # back at 11 s
    for _ in range(2):
        c.report_outcome(0, "failure", 20.0)
    assert ep.ejected_until == 40.0        # twice as long
    c.tick(40.0)
    for _ in range(2):
        c.report_outcome(0, "failure", 50.0)
    assert ep.ejected_until == 75.0        # three times would be 30 s: max_ejection 25 s
    assert c.ejections_total == 3


def test_well_endpoints_lose_an_ejection_per_interval():
    c = three("outlier_detection: {consecutive_5xx: 1, ejection: 1s, interval: 10s}")
    ep = c.endpoints[1]
    c.report_outcome(1, "failure", 0.0)
    assert ep.ejections == 1
    c.tick(1.0)                # back
    c.tick(5.0)
    assert ep.ejections == 1
    c.tick(11.0)               # well for an interval
    assert ep.ejections == 0


def test_at_most_max_ejected_endpoints_are_out_but_one_of_two_always_may_be():
    c = three("outlier_detection: {consecutive_5xx: 1, ejection: 10s, max_ejected: 34%}")
    for i in range(3):
        c.report_outcome(i, "failure", 0.0)
    assert [e.ejected for e in c.endpoints] == [True, False, False]
    two = router("""
  - name: svc
    endpoints: ["10.0.0.1:80", "10.0.0.2:80"]
    outlier_detection: {consecutive_5xx: 1, max_ejected: 10%}
""").clusters[0]
    two.report_outcome(0, "failure", 0.0)
    two.report_outcome(1, "failure", 0.0)
    assert [e.ejected for e in two.endpoints] == [True, False]
    one = router("""
  - name: svc
    endpoints: ["10.0.0.1:80"]
    outlier_detection: {consecutive_5xx: 1}
""").clusters[0]
    one.report_outcome(0, "failure", 0.0)
    assert not one.endpoints[0].ejected        # the only endpoint, max_ejected below 100%


def test_health_check_thresholds_and_no_endpoint_left():
    c = router("""
  - name: svc
    endpoints: ["10.0.0.1:80", "10.0.0.2:80"]
    health_check: {unhealthy: 2, healthy: 3}
""").clusters[0]
    c.health_result(0, False, 0.0)
    assert c.endpoints[0].healthy
    c.health_result(0, False, 0.0)
    assert not c.endpoints[0].healthy and {pick(c) for _ in range(6)} == {1}
    c.health_result(1, False, 0.0)
    c.health_result(1, False, 0.0)
    assert c.pick_pool(None, 0.0, -1) == (None, -1)       # UH
    for _ in range(2):
        c.health_result(0, True, 0.0)
    assert c.pick_pool(None, 0.0, -1) == (None, -1)
    c.health_result(0, True, 0.0)
    assert pick(c) == 0


def test_a_service_without_endpoints_goes_to_the_original_destination():
    c = router("""
  - name: passthrough
    match: ["10.96.0.0/12"]
""").clusters[0]
    pool, index = c.pick_pool(("10.96.1.2", 8080), 0.0, -1)
    assert (pool.host, pool.port, index) == ("10.96.1.2", 8080, -1)
    assert pool.breaker is c.breaker
    assert c.pick_pool(None, 0.0, -1) == (None, -1)


def test_a_reload_keeps_endpoint_state_and_the_breaker_for_endpoints_that_remain():
    old = router("""
  - name: svc
    endpoints: ["10.0.0.1:80", "10.0.0.2:80"]
    outlier_detection: {consecutive_5xx: 1, ejection: 30s}
    health_check: {unhealthy: 1}
""")
    c = old.clusters[0]
    c.report_outcome(0, "failure", 0.0)
    c.health_result(1, False, 0.0)
    assert c.breaker.try_admit()                # a request in flight across the reload
    new = router("""
  - name: svc
    endpoints: ["10.0.0.1:80", "10.0.0.2:80", "10.0.0.3:80"]
    outlier_detection: {consecutive_5xx: 1, ejection: 30s}
    health_check: {unhealthy: 1}
    circuit_breaker: {max_requests: 7}
""", previous=old)
    n = new.clusters[0]
    assert n.endpoints[0] is c.endpoints[0] and n.endpoints[0].ejected
    assert not n.endpoints[1].healthy
    assert n.endpoints[2].healthy and not n.endpoints[2].ejected
    assert n.breaker is c.breaker and n.breaker.requests == 1 and n.breaker.max_requests == 7
    assert {pick(n, now=1.0) for _ in range(6)} == {2}
    # Without outlier detection and health checks any more, every endpoint is back.
    bare = router("""
  - name: svc
    endpoints: ["10.0.0.1:80", "10.0.0.2:80"]
""", previous=new).clusters[0]
    assert {pick(bare) for _ in range(4)} == {0, 1}


def test_limits_are_divided_between_workers():
    c = router("""
  - name: svc
    endpoints: ["10.0.0.1:80"]
    circuit_breaker: {max_connections: 10, max_pending: 3, max_requests: 1}
    retries: {attempts: 1, min_concurrency: 3}
""", workers=4).clusters[0]
    state = c.breaker.state()
    assert (state["max_connections"], state["max_pending"], state["max_requests"]) == (3, 1, 1)
    assert c.pool_of(0).breaker is c.breaker


def test_gauges_of_endpoint_states_and_ejections_go_to_shared_memory():
    m = mmap.mmap(-1, stats.segment_size(64, 64))
    stats.init_segment(m, 64, 64)
    w = stats.WorkerStats(m)
    c = router("""
  - name: svc
    endpoints: ["10.0.0.1:80", "10.0.0.2:80"]
    outlier_detection: {consecutive_5xx: 1}
""", stats_writer=w).clusters[0]
    c.report_outcome(0, "failure", 0.0)
    counters = {(metric, a, b): v for metric, a, b, v in stats.read_segment(m)["counters"]}
    M_OUTLIER_EJECTIONS, M_ENDPOINTS = 10, 12
    assert counters[(M_OUTLIER_EJECTIONS, 1, 0)] == 1
    assert (counters[(M_ENDPOINTS, 1, 0)], counters[(M_ENDPOINTS, 1, 1)]) == (1, 1)
    c.tick(1000.0)
    counters = {(metric, a, b): v for metric, a, b, v in stats.read_segment(m)["counters"]}
    assert (counters[(M_ENDPOINTS, 1, 0)], counters[(M_ENDPOINTS, 1, 1)]) == (2, 0)


@pytest.mark.parametrize("policy", ["round_robin", "random", "least_request"])
def test_every_policy_goes_around_an_ejected_endpoint(policy):
    c = three("load_balancing: %s\n    outlier_detection: {consecutive_5xx: 1, max_ejected: 50%%}" % policy)
    c.report_outcome(1, "failure", 0.0)
    assert {pick(c) for _ in range(60)} == {0, 2}
