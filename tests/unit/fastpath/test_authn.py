"""Authentication (fastpath/authn.pyx): bearer JWTs and API keys, the token cache, key
set reloads (fastpath/watched_file.py)."""
import os
import time

import pytest

from fastpath.api_keys import load_api_keys, parse_api_keys
from fastpath.authn import Authenticator
from fastpath.authz import AuthzPolicy
from fastpath.jwt_verify import JwtVerifier, load_jwks
from fastpath.route_table import METHOD_CODES
from fastpath.watched_file import WatchedFile
from tests.support.jwt_tokens import AUDIENCE, ISSUER, TestKeys
from tests.unit.fastpath.policy_helpers import request

OK, MISSING, INVALID = 0, 1, 2
KEYS = TestKeys()


@pytest.fixture
def jwks(tmp_path):
    path = tmp_path / "jwks.json"
    KEYS.write_jwks(path, ["rsa-1", "ec-1"])
    return path


def authenticator(jwks_path, api_keys=None, **kw):
    watched = WatchedFile(str(jwks_path), load_jwks, "JWKS file")
    verifier = JwtVerifier(ISSUER, [AUDIENCE], 30.0, watched.value)
    key_file = WatchedFile(str(api_keys), load_api_keys, "API key file") if api_keys else None
    return Authenticator(verifier, watched, key_file, **kw), watched


def bearer(token):
    return request(b"/", b"GET", b"Authorization: Bearer " + token.encode())


def test_valid_token_gives_its_principal_and_claims(jwks):
    a, _ = authenticator(jwks)
    outcome, p, _ = a.check(bearer(KEYS.token("ec-1", sub="alice", role="admin")), time.time())
    assert outcome == OK and p.name == b"alice" and p.claims["role"] == "admin" and p.method == "jwt"


def test_missing_and_invalid_credentials(jwks):
    a, _ = authenticator(jwks)
    assert a.check(request(b"/"), time.time())[0] == MISSING
    assert a.check(request(b"/", b"GET", b"Authorization: Basic dXNlcg=="), time.time())[0] == MISSING
    outcome, p, reason = a.check(bearer(KEYS.token("rsa-1", aud="other")), time.time())
    assert (outcome, p, reason) == (INVALID, None, "audience not allowed")
    assert a.challenge_for(MISSING) == b'www-authenticate: Bearer realm="sidecar"\r\n'
    assert a.challenge_for(INVALID) == (b'www-authenticate: Bearer realm="sidecar", error="invalid_token", '
                                        b'error_description="audience not allowed"\r\n')


def test_verified_tokens_are_cached_and_checked_against_their_expiry(jwks):
    a, _ = authenticator(jwks)
    now = time.time()
    token = KEYS.token("rsa-1", exp=int(now) + 5)
    for _ in range(100):
        assert a.check(bearer(token), now)[0] == OK
    assert a.verifications == 1 and a.cached_tokens == 1
    # past exp + skew the cached entry is no longer good, and verification refuses it
    outcome, _, reason = a.check(bearer(token), now + 40)
    assert outcome == INVALID and reason == "token expired"


def test_token_cache_is_bounded(jwks):
    a, _ = authenticator(jwks, cache_entries=8)
    for i in range(20):
        assert a.check(bearer(KEYS.token("ec-1", sub="u%d" % i)), time.time())[0] == OK
    assert a.cached_tokens == 8


def test_a_rotated_key_set_drops_the_cache_and_removed_keys(jwks):
    a, watched = authenticator(jwks)
    old = KEYS.token("rsa-1")
    assert a.check(bearer(old), time.time())[0] == OK
    assert a.check(bearer(KEYS.token("rsa-2")), time.time())[0] == INVALID
    KEYS.write_jwks(jwks, ["rsa-2"])
    assert watched.check()
    assert a.check(bearer(KEYS.token("rsa-2")), time.time())[0] == OK
    outcome, _, reason = a.check(bearer(old), time.time())
    assert outcome == INVALID and reason == "no key for this token"


def test_a_key_set_that_goes_bad_keeps_the_last_good_keys(jwks, caplog):
    a, watched = authenticator(jwks)
    jwks.write_text("{ not json")
    assert not watched.check()
    assert "keeping the last good version" in caplog.text
    assert a.check(bearer(KEYS.token("rsa-1")), time.time())[0] == OK
    os.remove(jwks)
    assert not watched.check()
    assert a.check(bearer(KEYS.token("ec-1")), time.time())[0] == OK


def test_api_keys(tmp_path, jwks):
    keys = tmp_path / "keys.txt"
    keys.write_text("# comment\nci-bot  key-aaaaaaaaaaaaaaaa\nkey-bbbbbbbbbbbbbbbb\n")
    a, _ = authenticator(jwks, api_keys=keys, api_key_header="x-api-key")
    outcome, p, _ = a.check(request(b"/", b"GET", b"X-Api-Key: key-aaaaaaaaaaaaaaaa"), time.time())
    assert outcome == OK and p.name == b"ci-bot" and p.method == "api_key"
    outcome, p, _ = a.check(request(b"/", b"GET", b"x-api-key: key-bbbbbbbbbbbbbbbb"), time.time())
    assert outcome == OK and p.name.startswith(b"apikey:") and b"bbbb" not in p.name
    outcome, _, reason = a.check(request(b"/", b"GET", b"x-api-key: key-aaaaaaaaaaaaaaab"), time.time())
    assert (outcome, reason) == (INVALID, "unknown API key")
    # a bearer token decides when present
    assert a.check(request(b"/", b"GET", b"x-api-key: key-aaaaaaaaaaaaaaaa",
                           b"authorization: Bearer x.y.z"), time.time())[0] == INVALID
    assert b"APIKey" in a.challenge_for(MISSING)


def test_identity_bits_are_computed_once_per_credential(jwks):
    authz = AuthzPolicy([{"principals": ["alice"]}, {"claims": {"scope": "read"}}], [], METHOD_CODES)
    a, _ = authenticator(jwks, authz=authz)
    _, alice, _ = a.check(bearer(KEYS.token("ec-1", sub="alice")), time.time())
    _, reader, _ = a.check(bearer(KEYS.token("ec-1", sub="bob", scope="read write")), time.time())
    _, nobody, _ = a.check(bearer(KEYS.token("ec-1", sub="bob")), time.time())
    assert alice.identity_bits == 1 and reader.identity_bits == 2 and nobody.identity_bits == 0


def test_subject_with_control_characters_is_refused(jwks):
    a, _ = authenticator(jwks)
    outcome, _, reason = a.check(bearer(KEYS.token("ec-1", sub="x\r\nset-cookie: a")), time.time())
    assert outcome == INVALID and "control" in reason


@pytest.mark.parametrize("text, reason", [
    (b"short\n", "at least 16"),
    (b"a b c\n", "expected"),
    (b"k-aaaaaaaaaaaaaaaaa\nk-aaaaaaaaaaaaaaaaa\n", "duplicate"),
])
def test_bad_api_key_files_are_refused(text, reason):
    with pytest.raises(ValueError, match=reason):
        parse_api_keys(text)


def test_api_key_file_changes_are_picked_up(tmp_path, jwks):
    keys = tmp_path / "keys.txt"
    keys.write_text("old key-oooooooooooooooo\n")
    watched = WatchedFile(str(keys), load_api_keys, "API key file")
    a = Authenticator(None, None, watched)
    old = request(b"/", b"GET", b"x-api-key: key-oooooooooooooooo")
    new = request(b"/", b"GET", b"x-api-key: key-nnnnnnnnnnnnnnnn")
    assert a.check(old, 0)[0] == OK and a.check(new, 0)[0] == INVALID
    tmp = tmp_path / "keys.tmp"
    tmp.write_text("new key-nnnnnnnnnnnnnnnn\n")
    os.replace(tmp, keys)
    assert watched.check()
    assert a.check(old, 0)[0] == INVALID
    outcome, p, _ = a.check(new, 0)
    assert outcome == OK and p.name == b"new"


def test_a_repeated_bad_token_is_refused_from_the_refusal_cache(jwks):
    a, watched = authenticator(jwks)
    bad = KEYS.token("rsa-2")                          # no such key yet
    now = time.time()
    for _ in range(50):
        outcome, _, reason = a.check(bearer(bad), now)
        assert (outcome, reason) == (INVALID, "no key for this token")
    assert a.verifications == 1
    assert a.check(bearer(bad), now + 11)[0] == INVALID     # remembered for a while only
    assert a.verifications == 2
    KEYS.write_jwks(jwks, ["rsa-2"])                   # new keys forget the refusals
    assert watched.check()
    assert a.check(bearer(bad), now + 11)[0] == OK
