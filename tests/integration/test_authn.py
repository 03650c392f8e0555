"""Authentication on the inbound path of a real `sidecar run`, in front of a real app:
JWTs refused for each reason with 401 + WWW-Authenticate and nothing reaching the app,
key rotation in the JWKS file picked up while running, API keys, and the principal seen
by header edits, the access log and the metrics."""
import json
import time

import pytest

from tests.integration.test_metrics import samples, total
from tests.support.admin import scrape
from tests.support.http_client import RawClient
from tests.support.jwt_tokens import AUDIENCE, ISSUER, TestKeys
from tests.support.servers import HttpApp
from tests.support.sidecar_process import SidecarProcess

KEYS = TestKeys()


def get(address, path="/headers", token=None, headers=(), client=None):
    """(status, headers, body) of one keep-alive request."""
    lines = [b"GET %s HTTP/1.1" % path.encode(), b"Host: app.test"]
    if token is not None:
        lines.append(b"Authorization: Bearer " + token.encode())
    lines += [h.encode() for h in headers]
    own = client is None
    c = client or RawClient(address, timeout=5)
    try:
        c.send(b"\r\n".join(lines) + b"\r\n\r\n")
        return c.read_response()
    finally:
        if own:
            c.close()


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    d = tmp_path_factory.mktemp("authn")
    jwks = d / "jwks.json"
    KEYS.write_jwks(jwks, ["rsa-1", "ec-1", "hs-1"])
    keys = d / "api-keys"
    keys.write_text("ci-bot key-0123456789abcdef\n")
    log = d / "access.log"
    routes = [
        {"name": "keys", "match": {"headers": {"x-auth-kind": "key"}},
         "authn": {"api_keys": {"header": "x-api-key", "file": str(keys)}},
         "headers": {"request": {"set": {"x-principal": "%{principal}"}}}},
        {"name": "api", "match": {"path_prefix": "/"},
         "authn": {"jwt": {"issuer": ISSUER, "audiences": [AUDIENCE], "jwks_file": str(jwks),
                           "clock_skew": "5s"}},
         "headers": {"request": {"set": {"x-principal": "%{principal}"}}}},
    ]
    with HttpApp() as app:
        extra = {"routes": routes, "telemetry": {"access_log": {"path": str(log), "format": "json"}}}
        with SidecarProcess(app=app.address, extra=extra) as sc:
            yield sc, app, jwks, log


@pytest.fixture
def fresh(env):
    """The key set back to its first version, in effect in the sidecar."""
    sc, app, jwks, log = env
    KEYS.write_jwks(jwks, ["rsa-1", "ec-1", "hs-1"])
    probe = KEYS.token("hs-1", sub="probe")
    assert wait_for(lambda: get(sc.inbound, "/probe", token=probe)[0] == 200)
    del app.requests[:]
    return env


@pytest.mark.parametrize("kid", ["rsa-1", "ec-1", "hs-1"])
def test_a_valid_token_reaches_the_app_with_its_principal(fresh, kid):
    sc, app, _, _ = fresh
    status, _, body = get(sc.inbound, token=KEYS.token(kid, sub="alice-" + kid))
    assert status == 200
    assert ["x-principal", "alice-" + kid] in json.loads(body)["headers"]


@pytest.mark.parametrize("why, make, reason", [
    ("wrong aud", lambda: KEYS.token("rsa-1", aud="someone-else"), "audience not allowed"),
    ("expired", lambda: KEYS.token("rsa-1", exp=int(time.time()) - 60), "token expired"),
    ("nbf in the future", lambda: KEYS.token("rsa-1", nbf=int(time.time()) + 60), "token not yet valid"),
    ("wrong issuer", lambda: KEYS.token("rsa-1", iss="https://other.test"), "wrong issuer"),
    ("none alg", lambda: KEYS.token("rsa-1", alg="none"), "unsupported alg"),
    ("alg confusion", lambda: KEYS.confused_token("rsa-1"), "no key for this token"),
    ("unknown key", lambda: KEYS.token("rsa-9"), "no key for this token"),
    ("garbage", lambda: "not-a-jwt", "malformed token"),
])
def test_bad_tokens_get_401_with_the_reason_and_never_reach_the_app(fresh, why, make, reason):
    sc, app, _, _ = fresh
    with RawClient(sc.inbound, timeout=5) as c:
        status, headers, body = get(sc.inbound, token=make(), client=c)
        assert status == 401, why
        assert headers["www-authenticate"] == (
            'Bearer realm="app", error="invalid_token", error_description="%s"' % reason)
        # a bodiless refused request leaves the connection usable
        status, _, _ = get(sc.inbound, token=KEYS.token("ec-1"), client=c)
        assert status == 200
    assert len(app.requests) == 1


def test_a_missing_token_gets_a_bare_bearer_challenge(fresh):
    sc, app, _, _ = fresh
    status, headers, body = get(sc.inbound)
    assert status == 401 and headers["www-authenticate"] == 'Bearer realm="app"'
    assert body == b"authentication required\n" and not app.requests


def test_hs256_confusion_fails_even_for_the_hmac_route_kid(fresh):
    # The HS256 token names the RSA kid: the RSA key is never an HMAC secret.
    sc, app, _, _ = fresh
    token = KEYS.confused_token("rsa-1")
    assert get(sc.inbound, token=token)[0] == 401


def wait_for(predicate, timeout=5.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.1)
    return predicate()


def test_rotating_the_jwks_file_is_picked_up_and_removed_keys_stop_working(fresh):
    sc, app, jwks, _ = fresh
    old = KEYS.token("rsa-1", sub="old")
    assert get(sc.inbound, token=old)[0] == 200             # verified and cached
    new = KEYS.token("rsa-2", sub="new")
    assert get(sc.inbound, token=new)[0] == 401
    KEYS.write_jwks(jwks, ["rsa-2"])                         # rotate: rsa-1 out, rsa-2 in
    assert wait_for(lambda: get(sc.inbound, token=new)[0] == 200)
    status, headers, _ = get(sc.inbound, token=old)
    assert status == 401 and "no key for this token" in headers["www-authenticate"]


def test_a_jwks_file_that_goes_bad_keeps_the_last_good_keys(fresh):
    sc, app, jwks, _ = fresh
    jwks.write_text("{ broken")
    time.sleep(1.5)                                          # past a file check
    assert get(sc.inbound, token=KEYS.token("ec-1"))[0] == 200
    assert wait_for(lambda: "keeping the last good version" in sc.log())


def test_api_keys(fresh):
    sc, app, _, _ = fresh
    kind = "x-auth-kind: key"
    status, _, body = get(sc.inbound, "/headers", headers=[kind, "X-Api-Key: key-0123456789abcdef"])
    assert status == 200 and ["x-principal", "ci-bot"] in json.loads(body)["headers"]
    status, headers, _ = get(sc.inbound, "/x", headers=[kind, "X-Api-Key: key-0123456789abcdeX"])
    assert status == 401 and headers["www-authenticate"].startswith("APIKey")
    assert get(sc.inbound, "/x", headers=[kind])[0] == 401
    assert [r["path"] for r in app.requests] == ["/headers"]


def test_a_refused_request_with_a_body_closes_and_its_body_never_reaches_the_app(fresh):
    sc, app, _, _ = fresh
    with RawClient(sc.inbound, timeout=5) as c:
        c.send(b"POST /upload HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\n\r\nhello")
        status, headers, _ = c.read_response()
        assert status == 401 and headers.get("connection") == "close"
        assert c.is_closed()
    assert not app.requests


def test_principal_and_flags_in_access_log_and_metrics(fresh):
    sc, app, _, log = fresh
    assert get(sc.inbound, "/who", token=KEYS.token("ec-1", sub="log-me"))[0] == 200
    assert get(sc.inbound, "/denied")[0] == 401

    def lines():
        return [json.loads(l) for l in log.read_text().splitlines() if l.strip()]
    assert wait_for(lambda: any(l["path"] == "/denied" for l in lines()))
    by_path = {l["path"]: l for l in lines()}
    assert by_path["/who"]["principal"] == "log-me" and by_path["/who"]["route"] == "api"
    assert by_path["/denied"]["status"] == 401 and by_path["/denied"]["response_flags"] == "UAEX"
    _, text = scrape(sc)
    assert total(text, "sidecar_requests_total", route="api", code="401", response_flags="UAEX") >= 1


def test_a_refused_head_request_gets_no_body_and_the_connection_stays_in_step(fresh):
    sc, app, _, _ = fresh
    with RawClient(sc.inbound, timeout=5) as c:
        c.send(b"HEAD /x HTTP/1.1\r\nHost: a\r\n\r\nGET /headers HTTP/1.1\r\nHost: a\r\n"
               b"Authorization: Bearer %s\r\n\r\n" % KEYS.token("ec-1").encode())
        status, headers, body = c.read_response("HEAD")
        assert status == 401 and body == b"" and int(headers["content-length"]) > 0
        status, _, body = c.read_response()
        assert status == 200 and json.loads(body)["path"] == "/headers"
