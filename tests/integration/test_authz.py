"""Authorization on a real `sidecar run`: deny wins over allow, source CIDRs, methods and
paths, principals and claims from JWTs; 403 with flag UAEX and the decisions counted."""
import pytest

from tests.integration.test_authn import get
from tests.integration.test_metrics import total
from tests.support.admin import scrape
from tests.support.jwt_tokens import AUDIENCE, ISSUER, TestKeys
from tests.support.servers import HttpApp
from tests.support.sidecar_process import SidecarProcess

KEYS = TestKeys()


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    d = tmp_path_factory.mktemp("authz")
    jwks = d / "jwks.json"
    KEYS.write_jwks(jwks, ["ec-1"])
    routes = [
        {"name": "local-only", "match": {"path_prefix": "/local/"},
         "authz": {"allow": [{"source_cidrs": ["127.0.0.0/8"]}]}},
        {"name": "remote-only", "match": {"path_prefix": "/remote/"},
         "authz": {"allow": [{"source_cidrs": ["10.0.0.0/8"]}]}},
        {"name": "claims", "match": {"path_prefix": "/api/"},
         "authn": {"jwt": {"issuer": ISSUER, "audiences": [AUDIENCE], "jwks_file": str(jwks)}},
         "authz": {"allow": [{"claims": {"scope": "read"}, "methods": ["GET"]},
                             {"principals": ["admin"]}],
                   "deny": [{"paths": ["/api/secret*"]}, {"principals": ["mallory"]}]}},
    ]
    with HttpApp() as app, SidecarProcess(app=app.address, extra={"routes": routes}) as sc:
        yield sc, app


def test_source_cidr_rules(env):
    sc, app = env
    assert get(sc.inbound, "/local/x")[0] == 200
    status, _, body = get(sc.inbound, "/remote/x")
    assert status == 403 and body == b"RBAC: access denied\n"


def test_claims_principals_and_deny_wins(env):
    sc, app = env
    reader = KEYS.token("ec-1", sub="bob", scope="read write")
    assert get(sc.inbound, "/api/x", token=reader)[0] == 200
    assert get(sc.inbound, "/api/x", token=KEYS.token("ec-1", sub="bob", scope="write"))[0] == 403
    assert get(sc.inbound, "/api/x", token=KEYS.token("ec-1", sub="admin"))[0] == 200
    # deny wins: an allowed reader on a denied path, an allowed-scope mallory
    assert get(sc.inbound, "/api/secret/1", token=reader)[0] == 403
    assert get(sc.inbound, "/api/secret/1", token=KEYS.token("ec-1", sub="admin"))[0] == 403
    assert get(sc.inbound, "/api/x", token=KEYS.token("ec-1", sub="mallory", scope="read"))[0] == 403
    # a path trick does not get past the deny rule
    assert get(sc.inbound, "/api/public/../secret/1", token=reader)[0] == 403
    assert get(sc.inbound, "/api//secret/1", token=reader)[0] == 403
    paths = [r["path"] for r in app.requests]
    assert not any("secret" in p for p in paths)


def test_decisions_are_counted(env):
    sc, app = env
    get(sc.inbound, "/local/y")
    get(sc.inbound, "/remote/y")
    _, text = scrape(sc)
    assert total(text, "sidecar_authz_decisions_total", route="local-only", decision="allow") >= 1
    assert total(text, "sidecar_authz_decisions_total", route="remote-only", decision="deny") >= 1
    assert total(text, "sidecar_requests_total", route="remote-only", code="403", response_flags="UAEX") >= 1
