"""Route policy keys in the config schema: what loads, and every error with its line."""
import pytest

from sidecar.config import ConfigError, load_config_text


def errors(text):
    with pytest.raises(ConfigError) as raised:
        load_config_text(text)
    return [str(issue) for issue in raised.value.issues]


@pytest.mark.parametrize("text, expected", [
    ("routes:\n  - name: r\n    authn: {jwt: {issuer: i, jwks_file: /nonexistent/jwks.json}}\n",
     "routes.0.authn.jwt.jwks_file (line 3): bad JWKS file: cannot read /nonexistent/jwks.json: "
     "No such file or directory"),
    ("routes:\n  - name: r\n    authn: {}\n", "routes.0.authn (line 3): needs jwt or api_keys"),
    ("routes:\n  - name: r\n    authz: {}\n", "routes.0.authz (line 3): needs allow or deny rules"),
    ("routes:\n  - name: r\n    authz:\n      deny: [{paths: ['/a*b']}]\n",
     "routes.0.authz.deny.0.paths.0 (line 4): invalid path pattern '/a*b': use /exact, /prefix*, *suffix or *"),
    ("routes:\n  - name: r\n    authz:\n      allow: [{source_cidrs: [10.0.0.1/8]}]\n",
     "routes.0.authz.allow.0.source_cidrs.0 (line 4): invalid CIDR '10.0.0.1/8': has host bits set "
     "(did you mean '10.0.0.0/8'?)"),
    ("routes:\n  - name: r\n    rate_limit: {rate: 1/s, key: 'jwt:sub'}\n",
     "routes.0.rate_limit.key (line 3): a jwt:CLAIM key needs authn.jwt on the same route"),
    ("routes:\n  - name: r\n    headers:\n      request:\n        set: {x-a: '%{user}'}\n",
     "routes.0.headers.request.set.x-a (line 5): unknown variable %{user}; known: %{request_id}, "
     "%{principal}, %{client_ip}, %{route}, %{claim:NAME}"),
    ("routes:\n  - name: r\n    headers:\n      response:\n        add: {x-org: '%{claim:org}'}\n",
     "routes.0.headers.response.add.x-org (line 5): %{claim:NAME} needs authn.jwt on the same route"),
    ("routes:\n  - name: r\n    headers:\n      request:\n        remove: [host]\n",
     "routes.0.headers.request.remove.0 (line 5): an HTTP/1.1 request needs its Host"),
    ("routes:\n  - name: r\n    headers:\n      response:\n        set: {x-a: '1'}\n        add: {x-a: '2'}\n",
     "routes.0.headers.response.add.x-a (line 6): also in set: give it in one of them"),
    ("routes:\n  - name: r\n    headers:\n      request:\n        set: {x-request-id: abc}\n",
     "routes.0.headers.request.set.x-request-id (line 5): the request id is the proxy's (kept or "
     "generated); use %{request_id} elsewhere"),
    ("routes:\n  - name: r\n    match: {path_regex: '[a-'}\n",
     "routes.0.match.path_regex (line 3): invalid regular expression: unterminated character set at position 0"),
])
def test_policy_errors_name_the_key_and_line(text, expected):
    assert errors(text) == [expected]


def test_bad_api_key_file_is_an_error_at_load(tmp_path):
    keys = tmp_path / "keys"
    keys.write_text("tooshort\n")
    assert errors("routes:\n  - name: r\n    authn:\n      api_keys: {file: %s}\n" % keys) == [
        "routes.0.authn.api_keys.file (line 4): bad API key file: line 1: a key needs at least 16 "
        "visible ASCII characters"]


def test_an_empty_key_set_loads_with_a_warning(tmp_path):
    jwks = tmp_path / "jwks.json"
    jwks.write_text('{"keys": []}')
    c = load_config_text("routes:\n  - name: r\n    authn: {jwt: {issuer: i, jwks_file: %s}}\n" % jwks)
    assert c.warnings == ["routes.0.authn.jwt.jwks_file (line 3): the JWKS file has no usable key "
                          "(RS256, ES256, HS256) yet: every token is refused until it has one"]


def test_full_policy_route_loads(tmp_path):
    jwks = tmp_path / "jwks.json"
    jwks.write_text('{"keys": []}')
    keys = tmp_path / "keys"
    keys.write_text("bot 0123456789abcdef0123\n")
    c = load_config_text(f"""\
workers: 2
services:
  - {{name: a, match: [a.svc]}}
  - {{name: b, match: [b.svc]}}
routes:
  - name: r
    direction: outbound
    match: {{path_regex: "/v[0-9]+/.*", methods: [GET, PURGE]}}
    service: [{{name: a, weight: 90}}, {{name: b, weight: 10}}]
    authn:
      jwt: {{issuer: i, jwks_file: {jwks}, clock_skew: 5s}}
      api_keys: {{header: X-Key, file: {keys}}}
    authz:
      allow: [{{methods: [GET], paths: ["/v1/*"], source_cidrs: [10.0.0.0/8]}}]
      deny: [{{principals: [mallory]}}]
    rate_limit: {{rate: 6000/m, key: "jwt:org.id", max_keys: 100}}
    headers:
      request: {{set: {{x-user: "%{{principal}}"}}, add: {{x-via: sidecar}}, remove: [x-internal]}}
      response: {{add: {{x-request-id: "%{{request_id}}"}}}}
    fault: {{abort: {{status: 503, percent: 0.5%}}}}
""")
    r = c.routes[0]
    assert r.authn["jwt"]["clock_skew"] == 5.0 and r.authn["api_keys"]["header"] == "x-key"
    assert r.authz["deny"][0]["principals"] == ["mallory"]
    assert r.rate_limit == {"rate": 100.0, "burst": 100, "key": "jwt:org.id", "max_keys": 100}
    assert r.headers["request"]["add"] == {"x-via": "sidecar"}
    assert r.fault["abort"] == {"status": 503, "percent": 0.005}
