"""Load balancing over a service's endpoints (services.*.load_balancing) through the real
sidecar: round robin in turn, random spread evenly but not in turn, least request away
from the busy endpoint."""
import time

from tests.support.http_client import RawClient
from tests.support.servers import HttpUpstream, http_response
from tests.support.services import concurrent, request, service
from tests.support.sidecar_process import SidecarProcess


def named(name, delay=0.0):
    def respond(r, conn):
        if delay:
            time.sleep(delay)
        conn.sendall(http_response(200, name.encode()))
    return respond


def sequence(sc, n):
    """Which endpoint answered each of n sequential requests on one connection."""
    out = []
    with RawClient(sc.outbound) as c:
        for i in range(n):
            c.send(b"GET /s%d HTTP/1.1\r\nHost: svc.local\r\n\r\n" % i)
            status, _, body = c.read_response()
            assert status == 200
            out.append(body.decode())
    return out


def test_round_robin_takes_the_endpoints_in_turn():
    with HttpUpstream(named("a")) as a, HttpUpstream(named("b")) as b, HttpUpstream(named("c")) as c:
        with SidecarProcess(extra={"services": [service("svc", [a, b, c])]}) as sc:
            assert sequence(sc, 9) == ["a", "b", "c"] * 3


def test_random_spreads_requests_evenly_but_not_in_turn():
    with HttpUpstream(named("a")) as a, HttpUpstream(named("b")) as b, HttpUpstream(named("c")) as c:
        svc = service("svc", [a, b, c], load_balancing="random")
        with SidecarProcess(extra={"services": [svc]}) as sc:
            seq = sequence(sc, 300)
    counts = {name: seq.count(name) for name in "abc"}
    # binomial(300, 1/3): mean 100, sd 8.2; +-5 sd
    assert all(59 <= n <= 141 for n in counts.values()), counts
    assert any(x == y for x, y in zip(seq, seq[1:])), "a strict rotation, not random"
    assert seq[:30] != (["a", "b", "c"] * 10)


def _busy_and_idle(policy):
    """10 requests 30 ms apart to a slow endpoint (0.5 s) and a fast one: how many each got."""
    with HttpUpstream(named("slow", 0.5)) as slow, HttpUpstream(named("fast")) as fast:
        svc = service("svc", [slow, fast], load_balancing=policy)
        with SidecarProcess(extra={"services": [svc]}) as sc:
            results = concurrent(request, [(sc.outbound, "svc.local", "/l%d" % i) for i in range(10)],
                                 stagger=0.03)
            assert [r[0] for r in results] == [200] * 10, results
            return len(slow.requests), len(fast.requests)


def test_least_request_prefers_the_less_busy_endpoint():
    slow, fast = _busy_and_idle("least_request")
    # The slow endpoint holds what it got for 0.5 s: every later pick sees it busier.
    assert slow <= 1 and fast >= 9, (slow, fast)
    assert _busy_and_idle("round_robin") == (5, 5)
