"""JWT verification (fastpath/jwt_verify.py): signatures, algorithms, claims, key sets."""
import json
import time

import pytest

from fastpath.jwt_verify import AuthnError, JwtVerifier, parse_jwks
from tests.support.jwt_tokens import AUDIENCE, ISSUER, TestKeys, b64url

KEYS = TestKeys()
NOW = time.time()


def verifier(kids=("rsa-1", "ec-1", "hs-1"), audiences=(AUDIENCE,), skew=30.0):
    return JwtVerifier(ISSUER, audiences, skew, parse_jwks(KEYS.jwks(kids).encode()))


def verify(token, v=None, now=None):
    return (v or verifier()).verify(token.encode(), NOW if now is None else now)


@pytest.mark.parametrize("kid", ["rsa-1", "ec-1", "hs-1"])
def test_each_supported_algorithm_verifies(kid):
    claims = verify(KEYS.token(kid, sub="alice"))
    assert claims["sub"] == "alice"


@pytest.mark.parametrize("claims, reason", [
    ({"aud": "someone-else"}, "audience not allowed"),
    ({"aud": ["x", "y"]}, "audience not allowed"),
    ({"iss": "https://evil.test"}, "wrong issuer"),
    ({"exp": int(NOW) - 31}, "token expired"),
    ({"nbf": int(NOW) + 31}, "token not yet valid"),
    ({"exp": "tomorrow"}, "'exp' is not a number"),
])
def test_claims_are_checked(claims, reason):
    with pytest.raises(AuthnError, match=reason):
        verify(KEYS.token("rsa-1", **claims))


def test_clock_skew_tolerates_small_differences():
    verify(KEYS.token("rsa-1", exp=int(NOW) - 10, nbf=int(NOW) + 10))


def test_audience_list_with_one_match_is_accepted_and_no_audiences_accepts_any():
    verify(KEYS.token("rsa-1", aud=["other", AUDIENCE]))
    verify(KEYS.token("rsa-1", aud="anything"), verifier(audiences=()))


def test_none_algorithm_is_refused():
    with pytest.raises(AuthnError, match="unsupported alg"):
        verify(KEYS.token("rsa-1", alg="none"))


def test_unsupported_algorithms_are_refused():
    with pytest.raises(AuthnError, match="unsupported alg"):
        verify(KEYS.token("rsa-1", alg="RS512"))


def test_hs256_token_against_an_rsa_key_fails_algorithm_confusion():
    # An attacker signs HS256 with the RSA public key (PEM) as the secret: no RSA key is
    # ever used as an HMAC secret, whether the header names the RSA kid or none.
    with pytest.raises(AuthnError):
        verify(KEYS.confused_token("rsa-1"), verifier(kids=("rsa-1",)))
    with pytest.raises(AuthnError):
        verify(KEYS.confused_token("rsa-1"), JwtVerifier(ISSUER, (), 30, parse_jwks(
            KEYS.jwks(["rsa-1"], with_alg=False).encode())))


def test_a_key_whose_alg_differs_is_not_used():
    doc = json.loads(KEYS.jwks(["ec-1"]))
    doc["keys"][0]["alg"] = "RS256"
    with pytest.raises(ValueError, match="does not fit"):
        parse_jwks(json.dumps(doc).encode())


def test_bad_signature_and_unknown_kid_fail():
    token = KEYS.token("rsa-1")
    head, body, sig = token.split(".")
    tampered = head + "." + b64url(json.dumps({"iss": ISSUER, "aud": AUDIENCE, "sub": "admin"}).encode()) + "." + sig
    with pytest.raises(AuthnError, match="bad signature"):
        verify(tampered)
    with pytest.raises(AuthnError, match="no key"):
        verify(KEYS.token("rsa-2"), verifier(kids=("rsa-1",)))


def test_token_without_kid_tries_every_key_of_the_type():
    token = KEYS.token("rsa-2", header={"kid": None})
    head = json.loads(__import__("base64").urlsafe_b64decode(token.split(".")[0] + "=="))
    assert head["kid"] is None
    verify(token, verifier(kids=("rsa-1", "rsa-2")))


@pytest.mark.parametrize("token", ["", "a.b", "a.b.c.d", "!!.e30.", "e30.e30.!!", "W10.e30.abc",
                                   "e30=.e30.abc", "e3 0.e30.abc", "e30.e30.a"])
def test_malformed_tokens_fail_cleanly(token):
    with pytest.raises(AuthnError):
        verify(token)


def test_non_base64url_bytes_in_a_signed_token_are_refused():
    head, body, sig = KEYS.token("rsa-1").split(".")
    with pytest.raises(AuthnError):
        verify(head + "." + body + "." + sig[:10] + "!" + sig[10:])


def test_crit_header_is_refused():
    with pytest.raises(AuthnError, match="critical"):
        verify(KEYS.token("rsa-1", header={"crit": ["exp"]}))


@pytest.mark.parametrize("doc, reason", [
    (b"not json", "not JSON"),
    (b'{"nokeys": []}', "JWK Set"),
    (b'{"keys": [{"kty": "RSA", "n": "AQAB"}]}', "lacks 'e'"),
    (b'{"keys": [{"kty": "oct", "k": "c2hvcnQ"}]}', "at least 32 bytes"),
])
def test_bad_key_sets_are_refused_with_a_reason(doc, reason):
    with pytest.raises(ValueError, match=reason):
        parse_jwks(doc)


def test_unknown_key_types_are_skipped_and_an_empty_set_is_valid():
    assert parse_jwks(b'{"keys": [{"kty": "OKP", "crv": "Ed25519", "x": "abc"}]}') == []
    assert parse_jwks(b'{"keys": []}') == []
