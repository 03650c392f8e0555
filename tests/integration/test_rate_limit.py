"""Rate limiting on a real `sidecar run`: 429 with Retry-After and the RateLimit-*
headers, keyed buckets under a flood of distinct keys (memory stays bounded, the hot key
stays limited), the decisions counted, and the rate divided across workers."""
import json
import time

import pytest

from tests.integration.test_metrics import total
from tests.support.admin import scrape
from tests.support.http_client import RawClient
from tests.support.servers import HttpApp
from tests.support.sidecar_process import SidecarProcess

ROUTES = [
    {"name": "by-key", "match": {"path_prefix": "/keyed/"},
     "rate_limit": {"rate": "1/m", "burst": 3, "key": "header:x-tenant", "max_keys": 64}},
    {"name": "by-ip", "match": {"path_prefix": "/ip/"}, "rate_limit": {"rate": "1/m", "burst": 2}},
    {"name": "global", "match": {"path_prefix": "/global/"},
     "rate_limit": {"rate": "1/m", "burst": 4, "key": "global"}},
]


def send_many(address, requests):
    """Statuses (and last headers) of requests sent on one keep-alive connection."""
    out = []
    with RawClient(address, timeout=10) as c:
        for path, headers in requests:
            c.send(b"GET %s HTTP/1.1\r\nHost: a\r\n%s\r\n" % (
                path.encode(), b"".join(h.encode() + b"\r\n" for h in headers)))
            status, hdrs, _ = c.read_response()
            out.append((status, hdrs))
    return out


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    log = tmp_path_factory.mktemp("rl") / "access.log"
    extra = {"routes": ROUTES, "telemetry": {"access_log": {"path": str(log)}}}
    with HttpApp() as app, SidecarProcess(app=app.address, extra=extra) as sc:
        yield sc, app, log


def test_429_with_retry_after_and_ratelimit_headers(env):
    sc, app, _ = env
    results = send_many(sc.inbound, [("/ip/x", [])] * 3)
    assert [s for s, _ in results] == [200, 200, 429]
    h = results[2][1]
    assert 1 <= int(h["retry-after"]) <= 60
    assert h["ratelimit-limit"] == "2" and h["ratelimit-remaining"] == "0"
    assert int(h["ratelimit-reset"]) >= int(h["retry-after"])
    assert h["ratelimit-policy"] == "2;w=120"
    assert "connection" not in h          # the connection stays usable after a 429


def test_a_key_flood_is_bounded_and_the_hot_key_stays_limited(env):
    sc, app, _ = env
    hot = [("/keyed/x", ["x-tenant: hot"])]
    flood = [("/keyed/x", ["x-tenant: flood-%d" % i]) for i in range(600)]
    requests = []
    for i in range(0, 600, 50):
        requests += hot + flood[i:i + 50]
    results = send_many(sc.inbound, requests)
    hot_statuses = [s for (path, hdrs), (s, _) in zip(requests, results) if hdrs == ["x-tenant: hot"]]
    assert hot_statuses[:3] == [200, 200, 200] and set(hot_statuses[3:]) == {429}
    # every flood key is new, with a full bucket: each got through once
    assert all(s == 200 for (path, hdrs), (s, _) in zip(requests, results) if hdrs != ["x-tenant: hot"])
    # the table held at most max_keys keys: the hot key survived 600 new keys because it
    # kept being used, which is only possible with LRU eviction at 64 slots


def test_global_key_shares_one_bucket(env):
    sc, app, _ = env
    results = send_many(sc.inbound, [("/global/x", ["x-tenant: %d" % i]) for i in range(6)])
    assert [s for s, _ in results] == [200] * 4 + [429] * 2


def test_decisions_and_flags_are_counted(env):
    sc, app, log = env
    send_many(sc.inbound, [("/ip/y", [])] * 4)
    _, text = scrape(sc)
    assert total(text, "sidecar_ratelimit_decisions_total", route="by-ip", decision="deny") >= 2
    assert total(text, "sidecar_ratelimit_decisions_total", route="by-ip", decision="allow") >= 2
    assert total(text, "sidecar_requests_total", route="by-ip", code="429", response_flags="RL") >= 2
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline and log.read_text().count('"/ip/y"') < 4:
        time.sleep(0.1)
    lines = [json.loads(l) for l in log.read_text().splitlines() if '"/ip/y"' in l]
    assert len(lines) == 4 and any(l["status"] == 429 for l in lines)
    assert all(l["response_flags"] == ("RL" if l["status"] == 429 else "-") for l in lines)
    assert all(l["route"] == "by-ip" for l in lines)


def test_rate_is_divided_across_workers(tmp_path):
    # 2 workers and a burst of 4: each worker's bucket holds 2, so one connection (served
    # by one worker) gets 2 requests through.
    routes = [{"name": "split", "rate_limit": {"rate": "1/m", "burst": 4, "key": "global"}}]
    with HttpApp() as app, SidecarProcess(app=app.address, workers=2, extra={"routes": routes}) as sc:
        results = send_many(sc.inbound, [("/", [])] * 3)
        assert [s for s, _ in results] == [200, 200, 429]
        assert results[2][1]["ratelimit-limit"] == "2"


def _rss_kb(pid):
    with open("/proc/%d/status" % pid) as f:
        return next(int(line.split()[1]) for line in f if line.startswith("VmRSS:"))


def test_worker_memory_stays_bounded_under_a_flood_of_20000_keys():
    # Allowed requests are answered by a fault abort (204), so the flood costs the app
    # nothing and runs at the sidecar's speed; the rate limiter decides before the fault.
    routes = [{"name": "flood", "rate_limit": {"rate": "1/m", "burst": 2, "key": "header:x-k",
                                               "max_keys": 512},
               "fault": {"abort": {"status": 204, "percent": 100}}}]
    with HttpApp() as app, SidecarProcess(app=app.address, extra={"routes": routes}) as sc:
        worker, = sc.worker_pids()
        with RawClient(sc.inbound, timeout=20) as c:
            def batch(keys):
                c.send(b"".join(b"GET / HTTP/1.1\r\nHost: a\r\nx-k: %s\r\n\r\n" % k for k in keys))
                return [c.read_response()[0] for _ in keys]
            assert batch([b"hot"] * 3) == [204, 204, 429]
            # the hot key is used every 400 new keys, within the 512 slots: never evicted
            before = None
            for start in range(0, 20000, 400):
                statuses = batch([b"flood-%d" % i for i in range(start, start + 400)] + [b"hot"])
                assert set(statuses[:-1]) == {204} and statuses[-1] == 429
                if before is None:
                    before = _rss_kb(worker)
            grown = _rss_kb(worker) - before
        assert grown < 4096, "worker RSS grew by %d KiB" % grown
        assert not app.requests
