"""Outbound routing with interception off: requests sent straight to the outbound listener
have no original destination, so the Host header alone picks the service (SPEC.md,
"Config": "with interception off, outbound routes by Host alone"), and the service's
endpoints take turns (round robin).
"""
import time

import pytest

from tests.support.http_client import RawClient
from tests.support.servers import HttpApp
from tests.support.sidecar_process import SidecarProcess

HEADER_READ_TIMEOUT = 3.0


@pytest.fixture(scope="module")
def mesh():
    """Two app endpoints behind service `svc` (matched as svc.local:80), and service `any`
    matched by host alone (any port)."""
    with HttpApp() as one, HttpApp() as two, HttpApp() as three:
        services = [
            {"name": "svc", "match": ["svc.local:80"],
             "endpoints": ["%s:%d" % one.address, "%s:%d" % two.address],
             "load_balancing": "round_robin"},
            {"name": "any", "match": ["any.local"], "endpoints": ["%s:%d" % three.address]},
        ]
        extra = {"services": services, "interception": {"mode": "off"},
                 "limits": {"header_read_timeout": "%ds" % HEADER_READ_TIMEOUT}}
        with SidecarProcess(extra=extra) as sc:
            yield sc, one, two, three


@pytest.fixture
def apps(mesh):
    sc, one, two, three = mesh
    for app in (one, two, three):
        del app.requests[:]
    return sc, one, two, three


def paths(app):
    return [r["path"] for r in app.requests]


def test_requests_to_outbound_listener_are_routed_by_host_round_robin_over_endpoints(apps):
    sc, one, two, three = apps
    for i in range(6):
        with RawClient(sc.outbound) as c:
            c.send(b"GET /rr-%d HTTP/1.1\r\nHost: svc.local:80\r\n\r\n" % i)
            assert c.read_response()[::2] == (200, b"hello from app\n")
    assert paths(one) == ["/rr-0", "/rr-2", "/rr-4"]
    assert paths(two) == ["/rr-1", "/rr-3", "/rr-5"]
    assert three.requests == []
    assert all(("host", "svc.local:80") in r["headers"] for r in one.requests + two.requests)


def test_round_robin_applies_per_request_on_one_kept_alive_connection(apps):
    sc, one, two, three = apps
    with RawClient(sc.outbound) as c:
        for i in range(4):
            c.send(b"GET /ka-%d HTTP/1.1\r\nHost: svc.local:80\r\n\r\n" % i)
            assert c.read_response()[0] == 200
    assert sorted(paths(one) + paths(two)) == ["/ka-0", "/ka-1", "/ka-2", "/ka-3"]
    assert len(paths(one)) == len(paths(two)) == 2
    # Strict alternation, whichever endpoint the turn started on.
    order = [("one" if "/ka-%d" % i in paths(one) else "two") for i in range(4)]
    assert order in (["one", "two"] * 2, ["two", "one"] * 2), order


def test_host_match_is_case_insensitive(apps):
    sc, one, two, three = apps
    with RawClient(sc.outbound) as c:
        c.send(b"GET /upper HTTP/1.1\r\nHost: SVC.Local:80\r\n\r\n")
        assert c.read_response()[0] == 200
    assert paths(one) + paths(two) == ["/upper"]


def test_match_without_port_accepts_host_with_any_port_or_none(apps):
    sc, one, two, three = apps
    for i, host in enumerate([b"any.local", b"any.local:8080", b"any.local:80"]):
        with RawClient(sc.outbound) as c:
            c.send(b"GET /any-%d HTTP/1.1\r\nHost: %s\r\n\r\n" % (i, host))
            assert c.read_response()[0] == 200
    assert paths(three) == ["/any-0", "/any-1", "/any-2"]
    assert one.requests == [] and two.requests == []


def test_kept_alive_connection_goes_on_after_404_for_bodiless_request(apps):
    sc, one, two, three = apps
    with RawClient(sc.outbound) as c:
        c.send(b"GET /nowhere HTTP/1.1\r\nHost: unknown.local\r\n\r\n")
        status, headers, _ = c.read_response()
        assert status == 404 and "connection" not in headers, headers
        c.send(b"GET /then-routed HTTP/1.1\r\nHost: svc.local:80\r\n\r\n")
        assert c.read_response()[0] == 200
    assert paths(one) + paths(two) == ["/then-routed"]


def test_unmatched_host_on_other_port_of_matched_name_is_404(apps):
    sc, one, two, three = apps
    with RawClient(sc.outbound) as c:
        c.send(b"GET /wrong-port HTTP/1.1\r\nHost: svc.local:8080\r\n\r\n")
        assert c.read_response()[0] == 404
    assert one.requests == [] and two.requests == [] and three.requests == []


def test_unmatched_host_with_body_is_404_and_closes(apps):
    """The unread body would be taken for the next request: the connection must end."""
    sc, one, two, three = apps
    with RawClient(sc.outbound) as c:
        c.send(b"POST /nowhere HTTP/1.1\r\nHost: unknown.local\r\ncontent-length: 5\r\n\r\nhello")
        status, headers, body = c.read_response()
        assert status == 404 and headers.get("connection") == "close"
        assert c.is_closed()
    assert one.requests == [] and two.requests == [] and three.requests == []


def test_http10_request_without_host_has_no_route(apps):
    sc, one, two, three = apps
    with RawClient(sc.outbound) as c:
        c.send(b"GET /no-host HTTP/1.0\r\n\r\n")
        status, headers, body = c.read_response()
        assert status == 404 and headers.get("connection") == "close"
        assert c.is_closed()
    assert one.requests == [] and two.requests == [] and three.requests == []


def test_non_http_line_without_original_destination_is_rejected_and_closed(apps):
    sc, one, two, three = apps
    with RawClient(sc.outbound) as c:
        c.send(b"\x00\x01\x02 not http at all\r\n\r\n")
        started = time.monotonic()
        status, headers, _ = c.read_response()
        assert status == 400 and headers.get("connection") == "close"
        assert c.is_closed()
        assert time.monotonic() - started < 1.0
    assert one.requests == [] and two.requests == [] and three.requests == []


def test_tls_hello_without_original_destination_is_closed_at_once(apps):
    sc, one, two, three = apps
    client_hello = bytes.fromhex("16 03 01 02 00 01 00 01 fc 03 03") + b"\x5a" * 32
    with RawClient(sc.outbound) as c:
        c.send(client_hello)
        started = time.monotonic()
        c.sock.settimeout(HEADER_READ_TIMEOUT + 1)
        received = b""
        try:
            while True:
                chunk = c.sock.recv(65536)
                if not chunk:
                    break
                received += chunk
        except ConnectionResetError:
            pass
        elapsed = time.monotonic() - started
        assert elapsed < 1.0, (elapsed, received)
    assert one.requests == [] and two.requests == [] and three.requests == []
