"""Routing on a real `sidecar run`: outbound routes pick services (weighted splits in
proportion), exact/prefix/regex paths, methods and headers, first match wins, unmatched
outbound traffic goes by Host; the route and service labels in the metrics; a reload
applies new routes and policy as one snapshot."""
import collections
import json
import time

import pytest
import yaml

from tests.integration.test_metrics import total
from tests.support.admin import call, scrape
from tests.support.http_client import RawClient
from tests.support.servers import HttpApp
from tests.support.sidecar_process import SidecarProcess


def backend(address, path, host, client=None, method=b"GET", headers=()):
    own = client is None
    c = client or RawClient(address, timeout=5)
    try:
        c.send(b"%s %s HTTP/1.1\r\nHost: %s\r\n%s\r\n" % (
            method, path.encode(), host.encode(), b"".join(h + b"\r\n" for h in headers)))
        return c.read_response()
    finally:
        if own:
            c.close()


@pytest.fixture(scope="module")
def mesh():
    with HttpApp() as a, HttpApp() as b, HttpApp() as legacy:
        services = [
            {"name": "reviews-v1", "match": ["reviews-v1.local"], "endpoints": ["%s:%d" % a.address]},
            {"name": "reviews-v2", "match": ["reviews-v2.local"], "endpoints": ["%s:%d" % b.address]},
            {"name": "legacy", "match": ["legacy.local"], "endpoints": ["%s:%d" % legacy.address]},
        ]
        routes = [
            {"name": "canary", "direction": "outbound", "match": {"path_prefix": "/reviews/"},
             "service": [{"name": "reviews-v1", "weight": 80}, {"name": "reviews-v2", "weight": 20}]},
            {"name": "exact", "direction": "outbound", "match": {"path": "/exact"}, "service": "legacy"},
            {"name": "regex", "direction": "outbound", "match": {"path_regex": "/items/[0-9]+"},
             "service": "reviews-v2"},
            {"name": "options", "direction": "outbound", "match": {"methods": ["OPTIONS"]}, "service": "legacy"},
            {"name": "beta", "direction": "outbound", "match": {"headers": {"x-beta": "1"}},
             "service": "reviews-v2"},
        ]
        with SidecarProcess(extra={"services": services, "routes": routes}) as sc:
            yield sc, a, b, legacy


@pytest.fixture
def apps(mesh):
    for app in mesh[1:]:
        del app.requests[:]
    return mesh


def test_weighted_split_proportions(apps):
    sc, a, b, legacy = apps
    n = 500
    with RawClient(sc.outbound, timeout=10) as c:
        for i in range(n):
            assert backend(sc.outbound, "/reviews/%d" % i, "anything.local", client=c)[0] == 200
    # binomial(500, 0.2): mean 100, sd 8.9
    assert len(a.requests) + len(b.requests) == n
    assert 55 <= len(b.requests) <= 145, (len(a.requests), len(b.requests))
    _, text = scrape(sc)
    v1 = total(text, "sidecar_requests_total", route="canary", service="reviews-v1")
    v2 = total(text, "sidecar_requests_total", route="canary", service="reviews-v2")
    assert (v1, v2) == (len(a.requests), len(b.requests))


def test_exact_regex_method_and_header_matches(apps):
    sc, a, b, legacy = apps
    backend(sc.outbound, "/exact", "x.local")
    backend(sc.outbound, "/exact/not", "legacy.local")         # no route: by Host
    backend(sc.outbound, "/items/42?x=1", "x.local")
    backend(sc.outbound, "/items/abc", "reviews-v1.local")     # regex is whole-path: by Host
    backend(sc.outbound, "/anything", "x.local", method=b"OPTIONS")
    backend(sc.outbound, "/flag", "x.local", headers=[b"X-Beta: 1"])
    assert [r["path"] for r in legacy.requests] == ["/exact", "/exact/not", "/anything"]
    assert [r["path"] for r in b.requests] == ["/items/42?x=1", "/flag"]
    assert [r["path"] for r in a.requests] == ["/items/abc"]


def test_unmatched_requests_without_a_service_get_404(apps):
    sc, a, b, legacy = apps
    status, _, body = backend(sc.outbound, "/nowhere", "unknown.local")
    assert status == 404 and body == b"no route to this destination\n"


def test_reload_applies_new_routes_and_policy_as_one_snapshot(tmp_path):
    with HttpApp() as app:
        routes = [{"name": "open", "match": {"path_prefix": "/"}}]
        with SidecarProcess(app=app.address, extra={"routes": routes}) as sc:
            assert backend(sc.inbound, "/x", "a")[0] == 200
            sc.config["routes"] = [
                {"name": "locked", "match": {"path_prefix": "/"},
                 "authz": {"deny": [{"paths": ["/x"]}]},
                 "headers": {"response": {"add": {"x-route": "%{route}"}}}},
            ]
            sc.write_config()
            status, _, body = call(sc, "admin", "/reload", method="POST")
            assert status == 200, body
            status, headers, _ = backend(sc.inbound, "/x", "a")
            assert status == 403
            status, headers, _ = backend(sc.inbound, "/y", "a")
            assert status == 200 and headers["x-route"] == "locked"
            # a config whose JWKS file is missing is refused whole; the running one stays
            sc.config["routes"][0]["authn"] = {"jwt": {"issuer": "i", "jwks_file": str(tmp_path / "none")}}
            sc.write_config()
            status, _, body = call(sc, "admin", "/reload", method="POST")
            assert status != 200 and b"jwks_file" in body
            assert backend(sc.inbound, "/y", "a")[0] == 200
