"""Authorization rules (fastpath/authz.pyx): deny wins, conditions AND, rules OR."""
from fastpath.authz import AuthzPolicy, claim_values
from fastpath.route_table import METHOD_CODES

GET, POST = METHOD_CODES["GET"], METHOD_CODES["POST"]


def policy(allow=(), deny=()):
    full = lambda r: {"principals": [], "claims": {}, "methods": [], "paths": [], "source_cidrs": [], **r}
    return AuthzPolicy([full(r) for r in allow], [full(r) for r in deny], METHOD_CODES)


def test_deny_wins_over_allow():
    p = policy(allow=[{"paths": ["/api/*"]}], deny=[{"paths": ["/api/admin*"]}])
    assert p.check(GET, b"GET", b"/api/x", b"10.0.0.1") == "allow"
    assert p.check(GET, b"GET", b"/api/admin/users", b"10.0.0.1") == "deny"
    assert p.check(GET, b"GET", b"/other", b"10.0.0.1") == "deny"      # allow rules exist


def test_deny_rules_alone_allow_the_rest():
    p = policy(deny=[{"methods": ["DELETE"]}])
    assert p.check(GET, b"GET", b"/x", b"10.0.0.1") == "allow"
    assert p.check(METHOD_CODES["DELETE"], b"DELETE", b"/x", b"10.0.0.1") == "deny"


def test_source_cidrs_v4_and_v6():
    p = policy(allow=[{"source_cidrs": ["10.1.0.0/16", "fd00::/8"]}])
    assert p.check(GET, b"GET", b"/", b"10.1.200.3") == "allow"
    assert p.check(GET, b"GET", b"/", b"10.2.0.1") == "deny"
    assert p.check(GET, b"GET", b"/", b"fd12::1") == "allow"
    assert p.check(GET, b"GET", b"/", b"::ffff:10.1.0.9") == "allow"     # v4-mapped
    assert p.check(GET, b"GET", b"/", b"::1") == "deny"


def test_conditions_of_a_rule_all_hold():
    p = policy(allow=[{"methods": ["POST"], "paths": ["/upload", "*.csv"], "source_cidrs": ["127.0.0.0/8"]}])
    assert p.check(POST, b"POST", b"/upload", b"127.0.0.1") == "allow"
    assert p.check(POST, b"POST", b"/data/x.csv", b"127.0.0.1") == "allow"
    assert p.check(GET, b"GET", b"/upload", b"127.0.0.1") == "deny"
    assert p.check(POST, b"POST", b"/upload", b"10.0.0.1") == "deny"


def test_extension_methods_by_name():
    p = policy(allow=[{"methods": ["PURGE"]}])
    assert p.check(0, b"PURGE", b"/", b"127.0.0.1") == "allow"
    assert p.check(0, b"PURGEX", b"/", b"127.0.0.1") == "deny"


def test_identity_bits_principals_and_claims():
    p = policy(allow=[{"principals": ["alice", "spiffe://c/ns/a/sa/b"]}, {"claims": {"scope": "read", "org.id": "7"}}],
               deny=[{"principals": ["mallory"]}])
    alice = p.identity_bits((b"alice",), {"sub": "alice"})
    reader = p.identity_bits((b"bob",), {"scope": "write read", "org": {"id": 7}})
    nobody = p.identity_bits((b"bob",), {"scope": "write"})
    mallory = p.identity_bits((b"mallory",), {"scope": "read", "org": {"id": "7"}})
    assert p.check(GET, b"GET", b"/", b"127.0.0.1", alice) == "allow"
    assert p.check(GET, b"GET", b"/", b"127.0.0.1", reader) == "allow"
    assert p.check(GET, b"GET", b"/", b"127.0.0.1", nobody) == "deny"
    assert p.check(GET, b"GET", b"/", b"127.0.0.1", mallory) == "deny"       # deny wins
    peer = p.identity_bits((None, b"spiffe://c/ns/a/sa/b"), None)
    assert p.check(GET, b"GET", b"/", b"127.0.0.1", peer) == "allow"


def test_claim_values_lists_nested_and_scopes():
    claims = {"groups": ["a", "b"], "scope": "x y", "nested": {"k": True}, "n": 5, "other": "x y"}
    assert claim_values(claims, "groups") == ["a", "b"]
    assert claim_values(claims, "scope") == ["x", "y"]
    assert claim_values(claims, "other") == ["x y"]
    assert claim_values(claims, "nested.k") == ["true"]
    assert claim_values(claims, "n") == ["5"]
    assert claim_values(claims, "missing.x") == []
