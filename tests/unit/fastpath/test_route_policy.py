"""A route's policy chain (fastpath/route_policy.pyx) and the compiler that builds it from
config (fastpath/policy.py): the verdicts the downstream acts on, with no sockets."""
import collections
import time

import pytest

from fastpath.policy import compile_policy
from fastpath.outbound import OutboundRouter
from fastpath.parser import Limits
from sidecar.config import load_config_text
from tests.support.jwt_tokens import AUDIENCE, ISSUER, TestKeys
from tests.unit.fastpath.policy_helpers import request

KEYS = TestKeys()
RF_RL, RF_UAEX, RF_DI, RF_FI = 0x010, 0x020, 0x040, 0x080
ALLOW, DENY = 1, 2


def compiled(tmp_path, routes, services="", workers=1, seed=7):
    jwks = tmp_path / "jwks.json"
    KEYS.write_jwks(jwks, ["rsa-1"])
    text = "workers: %d\n%s\nroutes:\n%s" % (workers, services, routes.replace("JWKS", str(jwks)))
    cfg = load_config_text(text)
    router = OutboundRouter(None, Limits(), cfg.services)
    return compile_policy(cfg, router, seed=seed), cfg


def inbound(ps, index=0):
    return ps.inbound.policy(index)


def bearer(token, target=b"/api/x", method=b"GET", *more):
    return request(target, method, b"Authorization: Bearer " + token.encode(), *more)


JWT_ROUTE = """\
  - name: api
    match: {path_prefix: /api/}
    authn: {jwt: {issuer: "%s", audiences: [%s], jwks_file: JWKS}}
    authz:
      allow: [{claims: {scope: read}}]
      deny: [{paths: ["/api/admin*"]}]
    rate_limit: {rate: 10/s, burst: 2, key: "jwt:sub"}
    headers: {request: {set: {x-user: "%%{principal}"}}}
""" % (ISSUER, AUDIENCE)


def test_full_chain_allows_a_good_request(tmp_path):
    ps, _ = compiled(tmp_path, JWT_ROUTE)
    v = inbound(ps).evaluate(bearer(KEYS.token("rsa-1", sub="alice", scope="read")), now=1.0)
    assert (v["status"], v["authz"], v["ratelimit"], v["flags"]) == (0, ALLOW, ALLOW, 0)
    assert v["principal"].name == b"alice"


def test_each_stage_refuses_with_its_status_and_flag(tmp_path):
    ps, _ = compiled(tmp_path, JWT_ROUTE)
    p = inbound(ps)
    v = p.evaluate(request(b"/api/x"), now=1.0)
    assert (v["status"], v["flags"], v["reason"]) == (401, RF_UAEX, "authentication required")
    assert v["headers"].startswith(b"www-authenticate: Bearer")
    v = p.evaluate(bearer(KEYS.token("rsa-1", exp=int(time.time()) - 3600)), now=1.0)
    assert (v["status"], v["flags"]) == (401, RF_UAEX) and b'error="invalid_token"' in v["headers"]
    v = p.evaluate(bearer(KEYS.token("rsa-1", scope="write")), now=1.0)
    assert (v["status"], v["authz"], v["flags"]) == (403, DENY, RF_UAEX)
    v = p.evaluate(bearer(KEYS.token("rsa-1", scope="read"), b"/api/admin/x"), now=1.0)
    assert (v["status"], v["authz"]) == (403, DENY)            # deny wins
    token = KEYS.token("rsa-1", sub="bob", scope="read")
    results = [p.evaluate(bearer(token), now=2.0) for _ in range(3)]
    assert [r["status"] for r in results] == [0, 0, 429]
    assert results[2]["flags"] == RF_RL and results[2]["ratelimit"] == DENY
    assert b"retry-after: 1\r\n" in results[2]["headers"] and b"ratelimit-limit: 2" in results[2]["headers"]
    # another subject has its own bucket
    assert p.evaluate(bearer(KEYS.token("rsa-1", sub="carol", scope="read")), now=2.0)["status"] == 0


def test_body_limit_on_content_length(tmp_path):
    ps, _ = compiled(tmp_path, "  - name: up\n    max_request_body: 10\n")
    p = inbound(ps)
    assert p.evaluate(request(b"/", b"POST", b"Content-Length: 10"))["status"] == 0
    assert p.evaluate(request(b"/", b"POST", b"Content-Length: 11"))["status"] == 413
    assert p.max_request_body == 10


def test_fault_abort_and_delay_shares(tmp_path):
    ps, _ = compiled(tmp_path, "  - name: f\n    fault: {abort: {status: 503, percent: 20}, "
                               "delay: {duration: 50ms, percent: 50}}\n")
    p = inbound(ps)
    n = 20000
    verdicts = [p.evaluate(request(b"/")) for _ in range(n)]
    aborted = sum(1 for v in verdicts if v["status"] == 503 or v["abort_after_delay"] == 503)
    delayed = sum(1 for v in verdicts if v["delay"] == 0.05)
    assert abs(aborted / n - 0.20) < 0.015 and abs(delayed / n - 0.50) < 0.015
    both = [v for v in verdicts if v["delay"] and v["abort_after_delay"]]
    assert both and all(v["flags"] == RF_DI | RF_FI and v["status"] == 0 for v in both)


def test_weighted_split_proportions(tmp_path):
    services = ("services:\n  - {name: a, match: [a.svc], endpoints: ['127.0.0.1:1']}\n"
                "  - {name: b, match: [b.svc], endpoints: ['127.0.0.1:2']}\n")
    ps, _ = compiled(tmp_path, "  - name: split\n    direction: outbound\n"
                               "    service: [{name: a, weight: 90}, {name: b, weight: 10}]\n", services)
    p = ps.outbound.policy(0)
    counts = collections.Counter(p.pick_service() for _ in range(20000))
    assert abs(counts[0] / 20000 - 0.9) < 0.01 and abs(counts[1] / 20000 - 0.1) < 0.01


def test_rate_is_divided_across_workers_and_kept_over_a_recompile(tmp_path):
    route = "  - name: rl\n    rate_limit: {rate: 100/s, burst: 40, key: global}\n"
    ps, cfg = compiled(tmp_path, route, workers=4)
    limiter = inbound(ps).rate_limiter
    assert (limiter.rate, limiter.burst) == (25.0, 10.0)
    again = compile_policy(cfg, OutboundRouter(None, Limits(), cfg.services), previous=ps)
    assert inbound(again).rate_limiter is limiter


def test_mtls_peer_identity_seam(tmp_path):
    ps, _ = compiled(tmp_path, "  - name: peer\n    authz: {allow: [{principals: [spiffe://c/ns/a/sa/web]}]}\n")
    p = inbound(ps)
    assert p.evaluate(request(b"/"))["status"] == 403
    assert p.evaluate(request(b"/"), peer_identity=b"spiffe://c/ns/a/sa/web")["status"] == 0


def test_source_cidr_rules(tmp_path):
    ps, _ = compiled(tmp_path, "  - name: src\n    authz: {allow: [{source_cidrs: [10.0.0.0/8]}]}\n")
    p = inbound(ps)
    assert p.evaluate(request(b"/"), client_ip=b"10.9.8.7")["status"] == 0
    assert p.evaluate(request(b"/"), client_ip=b"192.168.1.1")["status"] == 403


def test_a_bad_key_file_fails_the_compile(tmp_path):
    ps, cfg = compiled(tmp_path, JWT_ROUTE)
    (tmp_path / "jwks.json").write_text("nope")
    with pytest.raises(ValueError, match="not JSON"):
        compile_policy(cfg, OutboundRouter(None, Limits(), cfg.services))
