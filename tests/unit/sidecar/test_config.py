"""sidecar.config: YAML -> Config, every error as `path (line N): reason`, units, schema."""
import json
import textwrap

import pytest
import yaml

from sidecar.config import (
    Config, ConfigError, ConfigIssue, config_json_schema, config_to_dict, effective_defaults,
    load_config, load_config_text,
)
from sidecar.config import units
from sidecar.config.model import ServiceMatch, WeightedService

# Verbatim from SPEC.md, "Config (YAML)".
SPEC_EXAMPLE = """\
workload: {name: reviews, namespace: default}
workers: 1
drain_timeout: 5s           # SIGTERM: stop accepting, finish in-flight for at most this long, exit 0

interception:
  mode: ebpf                 # ebpf | iptables | off
  cgroup: /sys/fs/cgroup/unified/pod-reviews   # the app's cgroup v2 (ebpf mode)
  interface: eth0            # pod interface: in-kernel counters and L3/L4 policy
  accelerate_local: true     # sockops + sk_msg bypass for app <-> sidecar hops
  exclude_outbound_ports: [53]
  exclude_inbound_ports: [15090, 15021]
  fail: open                 # open | closed: app traffic when the sidecar is not running

inbound:
  listen: 0.0.0.0:15006
  app: 127.0.0.1:8080        # where accepted inbound traffic is delivered
  tcp_passthrough_ports: [5432]   # opaque TCP, spliced in the kernel after accept

outbound:
  listen: 127.0.0.1:15001

services:                    # outbound destinations; unmatched traffic goes to its original destination.
                             # A service matches by original destination (CIDR:port) or, for HTTP, by the
                             # Host header (host[:port]); with interception off, outbound routes by Host alone.
  - name: ratings
    match: ["ratings.default.svc:9080", "10.96.0.0/12:9080"]
    endpoints: ["10.0.1.5:9080", "10.0.1.6:9080"]   # optional; default: the original destination
    load_balancing: least_request                    # round_robin | least_request | random
    timeouts: {connect: 1s, request: 15s, idle: 60s}
    retries: {attempts: 2, on: [connect-failure, reset, 502, 503], per_try_timeout: 2s, budget: 20%}
    circuit_breaker: {max_connections: 1024, max_pending: 1024, max_requests: 1024}
    outlier_detection: {consecutive_5xx: 5, interval: 10s, ejection: 30s, max_ejected: 50%}
    health_check: {path: /healthz, interval: 5s, unhealthy: 3, healthy: 2}
    tls: {mode: mutual}      # disable | simple | mutual

routes:                      # first match wins, per direction
  - name: api
    direction: inbound       # inbound | outbound
    match: {path_prefix: /api/, methods: [GET, POST], headers: {x-env: prod}}
    service: ratings         # outbound routes only; inbound routes deliver to inbound.app
    authn: {jwt: {issuer: "https://issuer.example", audiences: [reviews], jwks_file: /etc/sidecar/jwks.json}}
    authz: {allow: [{principals: ["spiffe://cluster.local/ns/default/sa/productpage"]}, {claims: {scope: read}}]}
    rate_limit: {rate: 100/s, burst: 200, key: client_ip}   # client_ip | header:NAME | jwt:CLAIM | global
    max_request_body: 1MB
    headers: {request: {set: {x-source: sidecar}, remove: [x-internal]}, response: {remove: [server]}}
    cache: {ttl: 30s, max_entry: 256KiB, max_total: 64MB}
    fault: {abort: {status: 503, percent: 1}, delay: {duration: 100ms, percent: 5}}

kernel:
  deny_cidrs: ["203.0.113.0/24"]
  allow_inbound_ports: [8080, 5432]
  syn_rate_limit: {per_source: 200/s}

tls:
  cert: /etc/sidecar/tls/cert.pem      # SPIFFE URI SAN is the workload's principal
  key: /etc/sidecar/tls/key.pem
  ca: /etc/sidecar/tls/ca.pem

admin: {listen: 127.0.0.1:15000}
telemetry:
  metrics: {listen: 0.0.0.0:15090}
  health: {listen: 0.0.0.0:15021}
  access_log: {path: stdout, format: json}          # or a template string
  tracing: {propagate: [w3c, b3], sample: 1%, otlp_endpoint: null}
"""


def load(text, env=None):
    return load_config_text(textwrap.dedent(text), env=env if env is not None else {})


def errors_of(text, env=None):
    with pytest.raises(ConfigError) as raised:
        load(text, env)
    return [str(issue) for issue in raised.value.issues]


# --- the SPEC's example ----------------------------------------------------------------

def spec_example(tmp_path):
    """The SPEC example with its JWKS file (read at load) pointing at a key set with one key."""
    jwks = tmp_path / "jwks.json"
    jwks.write_text('{"keys": [{"kty": "oct", "kid": "k1", "k": "%s"}]}\n' % ("A" * 43))
    return SPEC_EXAMPLE.replace("/etc/sidecar/jwks.json", str(jwks)), str(jwks)


def test_spec_example_loads_with_every_value_parsed(tmp_path):
    text, jwks = spec_example(tmp_path)
    c = load_config_text(text, source="spec.yaml")
    assert c.source == "spec.yaml"
    assert (c.workload.name, c.workload.namespace, c.workers, c.drain_timeout) == ("reviews", "default", 1, 5.0)

    i = c.interception
    assert (i.mode, i.cgroup, i.interface, i.accelerate_local, i.fail) == (
        "ebpf", "/sys/fs/cgroup/unified/pod-reviews", "eth0", True, "open")
    assert i.exclude_outbound_ports == [53] and i.exclude_inbound_ports == [15090, 15021]
    assert c.inbound.listen == ("0.0.0.0", 15006) and c.inbound.app == ("127.0.0.1", 8080)
    assert c.inbound.tcp_passthrough_ports == [5432]
    assert c.outbound.listen == ("127.0.0.1", 15001)

    (s,) = c.services
    assert s.name == "ratings"
    assert s.match == [ServiceMatch(host="ratings.default.svc", port=9080),
                       ServiceMatch(cidr="10.96.0.0/12", port=9080)]
    assert s.endpoints == [("10.0.1.5", 9080), ("10.0.1.6", 9080)]
    assert s.load_balancing == "least_request"
    assert (s.timeouts.connect, s.timeouts.request, s.timeouts.idle) == (1.0, 15.0, 60.0)
    assert s.retries.attempts == 2
    assert s.retries.on == ["connect-failure", "reset", "502", "503"]
    assert (s.retries.per_try_timeout, s.retries.budget) == (2.0, 0.2)
    assert (s.circuit_breaker.max_connections, s.circuit_breaker.max_pending,
            s.circuit_breaker.max_requests) == (1024, 1024, 1024)
    od = s.outlier_detection
    assert (od.consecutive_5xx, od.interval, od.ejection, od.max_ejected) == (5, 10.0, 30.0, 0.5)
    hc = s.health_check
    assert (hc.path, hc.interval, hc.unhealthy, hc.healthy) == ("/healthz", 5.0, 3, 2)
    assert s.tls.mode == "mutual"

    (r,) = c.routes
    assert (r.name, r.direction) == ("api", "inbound")
    assert r.match.path_prefix == "/api/" and r.match.methods == ["GET", "POST"]
    assert r.match.headers == {"x-env": "prod"}
    assert r.authn == {"jwt": {"issuer": "https://issuer.example", "audiences": ["reviews"],
                               "jwks_file": jwks, "clock_skew": 60.0, "cache_entries": 4096},
                       "api_keys": None}
    no_conditions = {"principals": [], "claims": {}, "methods": [], "paths": [], "source_cidrs": []}
    assert r.authz == {"allow": [
        {**no_conditions, "principals": ["spiffe://cluster.local/ns/default/sa/productpage"]},
        {**no_conditions, "claims": {"scope": "read"}},
    ], "deny": []}
    assert r.rate_limit == {"rate": 100.0, "burst": 200, "key": "client_ip", "max_keys": 16384}
    assert r.max_request_body == 1_000_000
    assert r.headers == {"request": {"set": {"x-source": "sidecar"}, "add": {}, "remove": ["x-internal"]},
                         "response": {"set": {}, "add": {}, "remove": ["server"]}}
    assert r.cache == {"ttl": 30.0, "max_entry": 262144, "max_total": 64_000_000}
    assert r.fault == {"abort": {"status": 503, "percent": 0.01}, "delay": {"duration": 0.1, "percent": 0.05}}

    assert c.kernel.deny_cidrs == ["203.0.113.0/24"]
    assert c.kernel.allow_inbound_ports == [8080, 5432]
    assert c.kernel.syn_rate_limit == 200.0
    assert (c.tls.cert, c.tls.key, c.tls.ca) == (
        "/etc/sidecar/tls/cert.pem", "/etc/sidecar/tls/key.pem", "/etc/sidecar/tls/ca.pem")
    assert c.admin.listen == ("127.0.0.1", 15000)
    t = c.telemetry
    assert t.metrics_listen == ("0.0.0.0", 15090) and t.health_listen == ("0.0.0.0", 15021)
    assert (t.access_log.path, t.access_log.format) == ("stdout", "json")
    assert (t.tracing.propagate, t.tracing.sample, t.tracing.otlp_endpoint) == (["w3c", "b3"], 0.01, None)
    assert t.istio_compat is False


def test_spec_example_inbound_route_service_is_dropped_with_a_warning(tmp_path):
    # SPEC's example puts `service:` on an inbound route while saying it is outbound-only:
    # the file must load, and no inbound pipeline may see the service.
    c = load_config_text(spec_example(tmp_path)[0])
    assert c.routes[0].service == []
    assert c.warnings == ["routes.0.service (line 40): ignored: only outbound routes have a service; "
                          "inbound routes deliver to inbound.app"]


def test_spec_example_dumps_and_loads_back_equal(tmp_path):
    c = load_config_text(spec_example(tmp_path)[0])
    again = load_config_text(yaml.safe_dump(config_to_dict(c)))
    again.warnings = c.warnings
    assert again == c


# --- defaults ------------------------------------------------------------------------

@pytest.mark.parametrize("text", ["", "{}", "~", "# only a comment\n"])
def test_empty_documents_give_the_defaults(text):
    c = load_config_text(text)
    c.source = None
    assert c == Config()


def test_load_config_sets_source_to_the_path(tmp_path):
    path = tmp_path / "sidecar.yaml"
    path.write_text("workers: 3\n")
    c = load_config(str(path))
    assert c.source == str(path) and c.workers == 3


def test_unreadable_file_is_a_config_error(tmp_path):
    missing = str(tmp_path / "nope.yaml")
    with pytest.raises(ConfigError) as raised:
        load_config(missing)
    assert str(raised.value).startswith(f"<config>: cannot read {missing}")


def test_effective_defaults_round_trip_to_the_default_config():
    text = yaml.safe_dump(effective_defaults(), sort_keys=False)
    c = load_config_text(text)
    c.source = None
    assert c == Config()


def test_effective_defaults_use_the_files_layout_and_units():
    d = effective_defaults()
    assert d["drain_timeout"] == "5s"
    assert d["limits"]["max_header_bytes"] == "64KiB"
    assert d["outbound"]["protocol_detect_timeout"] == "100ms"
    assert d["telemetry"]["metrics"] == {"listen": "0.0.0.0:15090"}
    assert d["telemetry"]["tracing"]["sample"] == "1%"
    assert d["kernel"]["syn_rate_limit"] == {"per_source": None, "burst": None}
    assert "source" not in d and "warnings" not in d


# --- errors: exact `path (line N): reason` ------------------------------------------------

@pytest.mark.parametrize("text, expected", [
    ("services:\n  - name: a\n    timeout: {connect: 1s}\n",
     "services.0.timeout (line 3): unknown key; did you mean 'timeouts'?"),
    ("workers: 1\nzzz: 1\n",
     "zzz (line 2): unknown key; expected one of: workload, workers, drain_timeout, log_level, "
     "interception, limits, inbound, outbound, services, routes, kernel, tls, admin, telemetry"),
    ("services:\n  - name: a\n    timeouts:\n      connect: 1x\n",
     "services.0.timeouts.connect (line 4): invalid duration '1x': expected e.g. 250ms, 5s, 1.5s, 1m, 1h"),
    ("drain_timeout: 5\n",
     "drain_timeout (line 1): invalid duration '5': expected e.g. 250ms, 5s, 1.5s, 1m, 1h"),
    ("inbound:\n  listen: 0.0.0.0:99999\n",
     "inbound.listen (line 2): invalid port 99999: must be 1..65535"),
    ("inbound:\n  app: ::1:8080\n",
     "inbound.app (line 2): invalid address '::1:8080': an IPv6 address needs brackets, e.g. [::1]:15000"),
    ("workers: 0\n", "workers (line 1): must be at least 1, got 0"),
    ("workers: two\n", "workers (line 1): expected an integer, got 'two'"),
    ("interception: {fail: closd}\n",
     "interception.fail (line 1): 'closd' is not one of: open, closed; did you mean 'closed'?"),
    ("log_level: verbose\n", "log_level (line 1): 'verbose' is not one of: debug, info, warning, error"),
    ("inbound:\n  tcp_passthrough_ports: 5432\n",
     "inbound.tcp_passthrough_ports (line 2): expected a list, got a number (write [x] for a single item)"),
    ("services:\n  - name: a\n    retries: {on: [connect_failure]}\n",
     "services.0.retries.on.0 (line 3): 'connect_failure' is not a retry condition: connect-failure, "
     "reset, timeout, or a 4xx/5xx status; did you mean 'connect-failure'?"),
    ("services:\n  - name: a\n    retries: {budget: 120%}\n",
     "services.0.retries.budget (line 3): invalid percentage 120%: must be between 0% and 100%"),
    ("services:\n  - name: a\n    retries: {backoff: {base: 100ms, max: 50ms}}\n",
     "services.0.retries.backoff.max (line 3): backoff max must be at least its base"),
    ("services:\n  - name: a\n    health_check: {expected_statuses: [200-99]}\n",
     "services.0.health_check.expected_statuses.0 (line 3): '200-99' is not a status or a range of "
     "statuses (200, 200-399)"),
    ("services:\n  - name: a\n    health_check: {expected_statuses: [399-200]}\n",
     "services.0.health_check.expected_statuses.0 (line 3): '399-200': the range ends before it starts"),
    ("services:\n  - name: a\n  - name: a\n",
     "services.1.name (line 3): duplicate name 'a' (first at line 2)"),
    ("services:\n  - match: [x]\n", "services.0.name (line 2): required key is missing"),
    ("routes:\n  - name: r\n    direction: outbound\n    service: ratingz\n"
     "services:\n  - name: ratings\n",
     "routes.0.service (line 4): unknown service 'ratingz'; did you mean 'ratings'?"),
    ("routes:\n  - name: r\n    direction: outbound\n    service:\n      - {name: a, weight: 1}\n",
     "routes.0.service.0.name (line 5): unknown service 'a' (no services are defined)"),
    ("routes:\n  - name: r\n    match:\n      path_regex: '(unclosed'\n",
     "routes.0.match.path_regex (line 4): invalid regular expression: missing ), unterminated subpattern "
     "at position 0"),
    ("routes:\n  - name: r\n    match: {path: /a, path_prefix: /b}\n",
     "routes.0.match.path_prefix (line 3): only one of path, path_prefix, path_regex may be set (also has 'path')"),
    ("routes:\n  - name: r\n    rate_limit: {burst: 10}\n",
     "routes.0.rate_limit.rate (line 3): required key is missing"),
    ("routes:\n  - name: r\n    headers:\n      request:\n        set: {Content-Length: '5'}\n",
     "routes.0.headers.request.set.Content-Length (line 5): header 'content-length' is managed by the "
     "proxy and cannot be changed"),
    ("routes:\n  - name: r\n    cache: {ttl: 1s, max_entry: 2MiB, max_total: 1MiB}\n",
     "routes.0.cache.max_entry (line 3): larger than max_total (1MiB)"),
    ("routes:\n  - name: r\n    authz:\n      allow: [{}]\n",
     "routes.0.authz.allow.0 (line 4): a rule needs at least one of principals, claims, methods, paths, "
     "source_cidrs (an empty rule would match every request)"),
    ("kernel:\n  deny_cidrs: [10.0.0.1/8]\n",
     "kernel.deny_cidrs.0 (line 2): invalid CIDR '10.0.0.1/8': has host bits set (did you mean '10.0.0.0/8'?)"),
    ("kernel:\n  syn_rate_limit: {per_source: 5}\n",
     "kernel.syn_rate_limit.per_source (line 2): invalid rate '5': expected e.g. 100/s, 6000/m, 10/h"),
    ("kernel:\n  syn_rate_limit: {burst: 20}\n",
     "kernel.syn_rate_limit.burst (line 2): needs syn_rate_limit.per_source too"),
    ("kernel:\n  syn_rate_limit: {per_source: 10/s, burst: 0}\n",
     "kernel.syn_rate_limit.burst (line 2): must be at least 1, got 0"),
    ("services:\n  - name: a\n    tls: {mode: mutual}\n",
     "services.0.tls.mode (line 3): mutual TLS needs tls.cert, tls.key, tls.ca"),
    ("tls:\n  cert: /c.pem\n", "tls.cert (line 2): needs tls.key too"),
    ("admin: {listen: 0.0.0.0:15000}\n",
     "admin.listen (line 1): the admin API listens on loopback only (127.0.0.1 or [::1]), not 0.0.0.0"),
    ("telemetry:\n  metrics: {listen: 0.0.0.0:15006}\n",
     "telemetry.metrics.listen (line 2): port 15006 is also used by inbound.listen"),
    ("telemetry:\n  metrics: {listn: 0.0.0.0:9000}\n",
     "telemetry.metrics.listn (line 2): unknown key; did you mean 'listen'?"),
    ("workers: 2\nworkers: 3\n", "workers (line 2): duplicate key (first at line 1)"),
    ("- 1\n", "<config> (line 1): expected a mapping, got a list"),
    ("workers: 1\ninbound:\n  listen: [1, 2\n",
     "<config> (line 4): YAML syntax: while parsing a flow sequence expected ',' or ']', but got '<stream end>'"),
    ("workers: 1\n  bad: indent\n",
     "<config> (line 2): YAML syntax: mapping values are not allowed here"),
])
def test_each_error_has_its_path_line_and_reason(text, expected):
    assert errors_of(text) == [expected]


def test_all_errors_are_reported_together_in_file_order():
    text = """\
        workers: 0
        inbound:
          listen: 0.0.0.0:70000
        services:
          - name: ratings
            timeouts: {conect: 1s, idle: forever}
        routes:
          - name: r
            direction: outbound
            service: reviews
        telemetry: {tracing: {propagate: [w3c, zipkin]}}
    """
    assert errors_of(text) == [
        "workers (line 1): must be at least 1, got 0",
        "inbound.listen (line 3): invalid port 70000: must be 1..65535",
        "services.0.timeouts.conect (line 6): unknown key; did you mean 'connect'?",
        "services.0.timeouts.idle (line 6): invalid duration 'forever': expected e.g. 250ms, 5s, 1.5s, 1m, 1h",
        "routes.0.service (line 10): unknown service 'reviews' (services: ratings)",
        "telemetry.tracing.propagate.1 (line 11): 'zipkin' is not one of: w3c, b3",
    ]


def test_config_error_str_is_one_issue_per_line():
    error = ConfigError([ConfigIssue("a.b", 3, "bad"), ConfigIssue("c", 7, "worse")])
    assert str(error) == "a.b (line 3): bad\nc (line 7): worse"
    assert str(ConfigIssue("services.0.timeouts.connect", 12, "x")) == "services.0.timeouts.connect (line 12): x"


# --- environment substitution ---------------------------------------------------------

def test_env_substitution_types_values_after_substitution():
    c = load("""\
        workers: ${WORKERS}
        drain_timeout: ${DRAIN:-250ms}
        workload: {name: "${POD}-x", namespace: "${NS:-default}"}
        outbound: {listen: "127.0.0.1:${PORT}"}
        interception: {accelerate_local: "${ACCEL}"}
    """, env={"WORKERS": "4", "POD": "reviews", "NS": "", "PORT": "15101", "ACCEL": "true"})
    assert c.workers == 4
    assert c.drain_timeout == 0.25
    assert c.workload.name == "reviews-x" and c.workload.namespace == "default"
    assert c.outbound.listen == ("127.0.0.1", 15101)
    assert c.interception.accelerate_local is True


def test_env_substitution_escape_and_keys_are_left_alone():
    c = load("""\
        routes:
          - name: r
            match: {headers: {x-tmpl: "$${NOT_A_VAR}"}}
    """, env={})
    assert c.routes[0].match.headers == {"x-tmpl": "${NOT_A_VAR}"}
    assert errors_of("${KEY}: 1\n", env={"KEY": "workers"})[0].startswith("${KEY} (line 1): unknown key")


def test_env_substitution_errors_name_the_variable():
    assert errors_of("workers: ${NWORKERS}\n") == ["workers (line 1): environment variable NWORKERS is not set"]
    assert errors_of("workload: {name: '${N'}\n") == ["workload.name (line 1): unterminated '${' (missing '}')"]
    assert errors_of("workload: {name: '${1X}'}\n") == ["workload.name (line 1): invalid environment reference '${1X}'"]


def test_env_substitution_uses_os_environ_by_default(monkeypatch):
    monkeypatch.setenv("SIDECAR_TEST_WORKERS", "6")
    assert load_config_text("workers: ${SIDECAR_TEST_WORKERS}\n").workers == 6


# --- units ------------------------------------------------------------------------------

@pytest.mark.parametrize("text, seconds", [
    ("250ms", 0.25), ("5s", 5.0), ("1.5s", 1.5), ("1m", 60.0), ("1h", 3600.0), ("100ms", 0.1), ("0s", 0.0),
])
def test_durations(text, seconds):
    assert units.parse_duration(text) == seconds
    assert units.parse_duration(units.format_duration(seconds)) == seconds


@pytest.mark.parametrize("value, size", [
    ("64KiB", 65536), ("10MB", 10_000_000), ("1GiB", 1 << 30), ("512B", 512), (4096, 4096),
    ("1.5KiB", 1536), ("2KB", 2000), ("100", 100),
])
def test_sizes(value, size):
    assert units.parse_size(value) == size
    assert units.parse_size(units.format_size(size)) == size


@pytest.mark.parametrize("text, per_second", [("100/s", 100.0), ("6000/m", 100.0), ("10/h", 10 / 3600)])
def test_rates(text, per_second):
    assert units.parse_rate(text) == per_second
    assert units.parse_rate(units.format_rate(per_second)) == per_second


@pytest.mark.parametrize("value, fraction", [("20%", 0.2), ("0.5%", 0.005), (5, 0.05), ("100%", 1.0), (0, 0.0)])
def test_percentages(value, fraction):
    assert units.parse_percent(value) == fraction
    assert units.parse_percent(units.format_percent(fraction)) == fraction


@pytest.mark.parametrize("text, address", [
    ("127.0.0.1:15000", ("127.0.0.1", 15000)), ("[::1]:80", ("::1", 80)),
    ("Ratings.Default:9080", ("ratings.default", 9080)), ("0.0.0.0:1", ("0.0.0.0", 1)),
])
def test_addresses(text, address):
    assert units.parse_address(text) == address
    assert units.parse_address(units.format_address(address)) == address


@pytest.mark.parametrize("fn, value", [
    (units.parse_duration, "5"), (units.parse_duration, "5 sec"), (units.parse_duration, 5),
    (units.parse_size, "10 MiBs"), (units.parse_size, "1.3B"), (units.parse_size, -1),
    (units.parse_rate, "100"), (units.parse_rate, "0/s"), (units.parse_percent, "101%"),
    (units.parse_address, "127.0.0.1"), (units.parse_address, "host:0"), (units.parse_address, "[1.2.3.4]:80"),
    (units.parse_address, ":80"),
])
def test_bad_unit_values_raise_value_error(fn, value):
    with pytest.raises(ValueError):
        fn(value)


def test_units_are_parsed_into_the_model():
    c = load("""\
        limits: {max_request_line: 4KiB, max_header_bytes: 32768, header_read_timeout: 1.5s}
        services:
          - name: a
            match: [ratings, "10.0.0.5:80", "[fd00::/8]:9080", "Ratings.Default.SVC"]
          - name: b
        routes:
          - name: r
            direction: outbound
            match: {path: /exact}
            service: [{name: a, weight: 90}, {name: b, weight: 10}]
            rate_limit: {rate: 6000/m, key: "header:X-Api-Key"}
            max_request_body: 64KiB
          - name: r2
            match: {path_exact: /other, path_regex: null}
    """)
    assert c.limits.max_request_line == 4096 and c.limits.max_header_bytes == 32768
    assert c.limits.header_read_timeout == 1.5
    assert c.services[0].match == [
        ServiceMatch(host="ratings"), ServiceMatch(cidr="10.0.0.5/32", port=80),
        ServiceMatch(cidr="fd00::/8", port=9080), ServiceMatch(host="ratings.default.svc"),
    ]
    r, r2 = c.routes
    assert r.match.path_exact == "/exact" and r2.match.path_exact == "/other"
    assert r.service == [WeightedService("a", 90), WeightedService("b", 10)]
    assert r.rate_limit == {"rate": 100.0, "burst": 100, "key": "header:x-api-key", "max_keys": 16384}
    assert r.max_request_body == 65536


def test_resilience_keys_beyond_the_spec_parse_with_their_defaults():
    c = load("""
        limits: {request_timeout: 20s}
        services:
          - name: a
            retries:
              attempts: 3
              on: [5xx, gateway-error, timeout, 409]
              min_concurrency: 5
              backoff: {base: 10ms, max: 1s}
              replay_buffer: 16KiB
            outlier_detection: {max_ejection: 2m}
            health_check: {timeout: 500ms, expected_statuses: [200-299, 304], host: health.local}
          - name: b
        """)
    a, b = c.services
    assert c.limits.request_timeout == 20.0
    assert a.retries.on == ["5xx", "gateway-error", "timeout", "409"]
    assert (a.retries.min_concurrency, a.retries.backoff.base, a.retries.backoff.max,
            a.retries.replay_buffer) == (5, 0.01, 1.0, 16384)
    assert a.outlier_detection.max_ejection == 120.0
    hc = a.health_check
    assert (hc.timeout, hc.expected_statuses, hc.host) == (0.5, [(200, 299), (304, 304)], "health.local")
    assert (b.retries.min_concurrency, b.retries.backoff.base, b.retries.backoff.max,
            b.retries.replay_buffer) == (3, 0.025, 0.25, 65536)
    assert b.outlier_detection is None and b.health_check is None
    assert config_to_dict(c)["services"][0]["health_check"]["expected_statuses"] == ["200-299", "304"]
    assert load_config_text(yaml.safe_dump(config_to_dict(c))).services == c.services


def test_null_sections_take_their_defaults_and_anchors_merge():
    c = load("""\
        tls:
        services:
          - &base {name: a, timeouts: {connect: 2s}, retries:}
          - <<: *base
            name: b
    """)
    assert c.tls.cert is None
    a, b = c.services
    assert a.timeouts.connect == b.timeouts.connect == 2.0
    assert b.name == "b" and b.retries.on == ["connect-failure"]


# --- JSON Schema --------------------------------------------------------------------

TOP_LEVEL_KEYS = {"workload", "workers", "drain_timeout", "log_level", "interception", "limits", "inbound",
                  "outbound", "services", "routes", "kernel", "tls", "admin", "telemetry"}


def test_json_schema_is_json_and_lists_the_top_level_keys():
    schema = json.loads(json.dumps(config_json_schema()))
    assert schema["$schema"] == "https://json-schema.org/draft/2020-12/schema"
    assert schema["type"] == "object" and schema["additionalProperties"] is False
    assert set(schema["properties"]) == TOP_LEVEL_KEYS == set(effective_defaults())
    service = schema["properties"]["services"]["anyOf"][0]["items"]
    assert service["required"] == ["name"]
    assert service["properties"]["timeouts"]["default"] == {"connect": "1s", "request": "15s", "idle": "1m"}
    telemetry = schema["properties"]["telemetry"]["anyOf"][0]
    assert set(telemetry["properties"]["metrics"]["anyOf"][0]["properties"]) == {"listen"}


def test_json_schema_accepts_what_the_loader_accepts(tmp_path):
    jsonschema = pytest.importorskip("jsonschema")
    schema = config_json_schema()
    jsonschema.Draft202012Validator.check_schema(schema)
    validator = jsonschema.Draft202012Validator(schema)
    validator.validate(effective_defaults())
    validator.validate(config_to_dict(load_config_text(spec_example(tmp_path)[0])))
    assert not validator.is_valid({"workers": 1, "wrokers": 2})
    assert not validator.is_valid({"drain_timeout": "5 seconds"})


def test_config_error_survives_pickling():
    import pickle
    error = pickle.loads(pickle.dumps(ConfigError([ConfigIssue("workers", 1, "bad")], "f.yaml")))
    assert error.issues == [ConfigIssue("workers", 1, "bad")] and error.source == "f.yaml"


def test_every_model_attribute_has_a_key_in_the_schema():
    # A field added to model.py but not to schema.py could never be set from a file.
    import dataclasses

    from sidecar.config.fields import ByShape, ListOf, Section
    from sidecar.config.schema import CONFIG

    def sections(kind):
        if isinstance(kind, Section):
            yield kind
            for field in kind.fields:
                yield from sections(field.kind)
        elif isinstance(kind, ListOf):
            yield from sections(kind.item)
        elif isinstance(kind, ByShape):
            yield from sections(kind.sequence)

    not_from_the_file = {"source", "warnings"}
    for section in sections(CONFIG):
        if section.model is None:
            continue
        declared = {f.attr for f in section.fields if not f.flatten}
        declared |= {sub.attr for f in section.fields if f.flatten for sub in f.kind.fields}
        model_attrs = {f.name for f in dataclasses.fields(section.model)} - not_from_the_file
        assert model_attrs == declared, section.model.__name__


# --- interception ----------------------------------------------------------------------

def test_ebpf_mode_needs_the_apps_cgroup():
    assert errors_of("interception: {mode: ebpf, interface: eth0}\n") == [
        "interception.mode (line 1): ebpf mode needs interception.cgroup (the app's cgroup v2 directory, "
        "or `pod`)"]


def test_interception_cgroup_must_be_absolute_and_instance_a_bpffs_name():
    assert errors_of("interception:\n  mode: iptables\n  cgroup: pod-x\n") == [
        "interception.cgroup (line 3): must be an absolute path (the app's cgroup v2 directory) or `pod` "
        "(the parent of the sidecar's own cgroup)"]
    assert errors_of("interception:\n  instance: a.b\n") == [
        "interception.instance (line 2): invalid instance name 'a.b': letters, digits, '_' and '-', at most 64"]


def test_interception_cgroup_pod_is_the_pods_cgroup():
    c = load("interception: {mode: ebpf, cgroup: pod, interface: eth0}\n")
    assert c.interception.cgroup == "pod" and c.warnings == []
    assert load("interception: {mode: iptables, cgroup: pod}\n").interception.cgroup == "pod"


def test_ebpf_mode_without_an_interface_warns_that_inbound_is_not_intercepted():
    c = load("interception: {mode: ebpf, cgroup: /sys/fs/cgroup/unified/pod}\n")
    assert c.warnings == ["interception.mode (line 1): no interception.interface: inbound traffic is not intercepted"]


def test_an_excluded_or_passthrough_port_left_off_the_allow_list_is_warned_about():
    """They would be dropped in the kernel; the sidecar's own ports are always allowed."""
    c = load("interception: {exclude_inbound_ports: [9091, 15021]}\n"
             "inbound: {tcp_passthrough_ports: [5432]}\n"
             "kernel: {allow_inbound_ports: [8080, 9091]}\n")
    assert c.warnings == ["inbound.tcp_passthrough_ports.0 (line 2): port 5432 is not in "
                          "kernel.allow_inbound_ports: connections to it are dropped in the kernel"]
    assert load("interception: {exclude_inbound_ports: [9091]}\n").warnings == []


def test_a_kernel_policy_larger_than_its_kernel_tables_is_refused():
    many = ", ".join("10.%d.%d.0/24" % (i // 256, i % 256) for i in range(1025))
    assert errors_of("kernel:\n  deny_cidrs: [%s]\n" % many) == [
        "kernel.deny_cidrs (line 2): 1025 IPv4 prefixes: the kernel table holds at most 1024"]
    assert load("kernel:\n  deny_cidrs: [%s, '2001:db8::/32']\n" % many.rsplit(",", 1)[0]).kernel.deny_cidrs
    ports = ", ".join(str(p) for p in range(1, 250))
    assert errors_of("kernel:\n  allow_inbound_ports: [%s]\n" % ports) == [
        "kernel.allow_inbound_ports (line 2): at most 248 ports"]


def test_a_kernel_policy_change_applies_in_place():
    from sidecar.reload import plan
    old = load("kernel: {deny_cidrs: [203.0.113.0/24]}\n")
    new = load("kernel: {deny_cidrs: ['2001:db8::/32'], allow_inbound_ports: [8080],"
               " syn_rate_limit: {per_source: 100/s, burst: 10}}\n")
    assert plan(old, new).notes == []
    assert new.kernel.syn_burst == 10 and new.kernel.deny_cidrs == ["2001:db8::/32"]


def test_an_exclusion_change_reloads_in_place_other_interception_changes_need_a_restart():
    from sidecar.reload import plan
    base = "interception: {mode: iptables, exclude_outbound_ports: [53]}\n"
    old = load(base)
    assert plan(old, load(base.replace("[53]", "[53, 5432]"))).notes == []
    assert plan(old, load(base.replace("iptables", "off"))).notes == [
        "interception changed: takes effect when the sidecar restarts"]
