"""The `sidecar` command line as a user runs it: `check` and `run` on good and bad files
(every error as `path.to.key (line N): reason`, exit 1, nothing started), `config schema`
and `config defaults`, the SPEC's own example config, and the installed console script."""
import json
import os
import signal
import subprocess
import sys
import textwrap
import time

import pytest
import yaml

from tests.support.ports import free_ports
from tests.support.sidecar_process import ROOT

SIDECAR_SCRIPT = os.path.join(os.path.dirname(sys.executable), "sidecar")

# The SPEC's top-level keys ("Config (YAML)").
SPEC_TOP_LEVEL_KEYS = {"workload", "workers", "drain_timeout", "interception", "inbound",
                       "outbound", "services", "routes", "kernel", "tls", "admin", "telemetry"}

_SESSIONS = set()


def _state(pid):
    try:
        with open("/proc/%d/stat" % pid) as f:
            return f.read().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError):
        return None


def _alive(pid):
    return _state(pid) not in (None, "Z")


@pytest.fixture(scope="module", autouse=True)
def no_stray_processes():
    """After the module: nothing any CLI run of ours started is still running (`pgrep -f
    sidecar.worker`, restricted to this module's sessions)."""
    yield
    stray = _session_processes()
    workers = subprocess.run(["pgrep", "-f", "sidecar.worker"], capture_output=True, text=True)
    for p in workers.stdout.split():
        try:
            if _alive(int(p)) and os.getsid(int(p)) in _SESSIONS:
                stray.append(int(p))
        except ProcessLookupError:
            pass
    for pid in set(stray):
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    assert not stray, "processes left behind: %s" % sorted(set(stray))


def _session_processes():
    """Live processes in the sessions of the CLI runs so far."""
    if not _SESSIONS:
        return []
    out = subprocess.run(["pgrep", "-s", ",".join(map(str, _SESSIONS))],
                         capture_output=True, text=True)
    return [int(p) for p in out.stdout.split() if _alive(int(p))]


def _cli(*args, command=None, timeout=20):
    """Runs the CLI in its own session; returns (exit code, stdout, stderr). A run that
    does not end in `timeout` is killed with everything it started, and fails the test."""
    argv = (command or [sys.executable, "-m", "sidecar.cli"]) + list(args)
    proc = subprocess.Popen(argv, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, start_new_session=True)
    _SESSIONS.add(proc.pid)
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, err = proc.communicate()
        pytest.fail("`%s` did not exit within %ss:\n%s%s" % (" ".join(args), timeout, out, err))
    return proc.returncode, out, err


def _listening_ports():
    ports = set()
    for name in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            with open(name) as f:
                for line in f.readlines()[1:]:
                    cols = line.split()
                    if cols[3] == "0A":
                        ports.add(int(cols[1].rsplit(":", 1)[1], 16))
        except FileNotFoundError:
            pass
    return ports


def _ports_config():
    """Listener settings on free loopback ports (so a wrongly started sidecar is visible)."""
    *listeners, app = free_ports(6)
    ports = dict(zip(("inbound", "outbound", "admin", "metrics", "health"), listeners))
    return ports, textwrap.dedent("""\
        inbound:
          listen: 127.0.0.1:{inbound}
          app: 127.0.0.1:{app}
        outbound:
          listen: 127.0.0.1:{outbound}
        admin: {{listen: 127.0.0.1:{admin}}}
        telemetry:
          metrics: {{listen: 127.0.0.1:{metrics}}}
          health: {{listen: 127.0.0.1:{health}}}
          access_log: {{path: null}}
        """).format(app=app, **ports)


@pytest.fixture
def good_config(tmp_path):
    ports, listeners = _ports_config()
    path = tmp_path / "good.yaml"
    path.write_text("workload: {name: reviews, namespace: default}\n"
                    "workers: 2\n"
                    "drain_timeout: 3s\n"
                    "interception: {mode: 'off'}\n" + listeners)
    return str(path)


@pytest.fixture
def bad_config(tmp_path):
    """A config with four errors of different kinds; `.expected` are the exact lines."""
    ports, listeners = _ports_config()
    text = textwrap.dedent("""\
        workload: {name: reviews, namespace: default}
        workerz: 2
        drain_timeout: 5 seconds
        interception:
          mode: ebpff
        services:
          - name: ratings
            match: ["ratings.default.svc:9080"]
        routes:
          - name: api
            direction: outbound
            service: ratingz
        """) + listeners
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    lines = text.splitlines()
    assert lines[1] == "workerz: 2" and lines[2].startswith("drain_timeout")
    assert lines[4] == "  mode: ebpff" and lines[11] == "    service: ratingz"
    expected = [
        "workerz (line 2): unknown key; did you mean 'workers'?",
        "drain_timeout (line 3): invalid duration '5 seconds': expected e.g. 250ms, 5s, 1.5s, 1m, 1h",
        "interception.mode (line 5): 'ebpff' is not one of: ebpf, iptables, off; did you mean 'ebpf'?",
        "routes.0.service (line 12): unknown service 'ratingz'; did you mean 'ratings'?",
    ]
    return str(path), ports, expected


def _error_lines(stderr):
    return [l for l in stderr.splitlines() if l.strip()]


# --- check --------------------------------------------------------------------------------

def test_check_accepts_a_good_config_with_exit_0(good_config):
    code, out, err = _cli("check", "-c", good_config)
    assert code == 0, err
    assert out.strip() == "%s: ok" % good_config
    assert err == ""


def test_check_reports_every_error_with_key_path_and_line_exits_1_and_starts_nothing(bad_config):
    path, ports, expected = bad_config
    code, out, err = _cli("check", "-c", path)
    assert code == 1
    assert _error_lines(err) == expected, err
    assert out == ""
    assert not set(ports.values()) & _listening_ports()


def test_check_of_a_missing_file_exits_1_naming_the_file(tmp_path):
    missing = str(tmp_path / "nope.yaml")
    code, out, err = _cli("check", "-c", missing)
    assert code == 1
    assert missing in err and "No such file" in err, err
    assert "Traceback" not in err


# --- run ----------------------------------------------------------------------------------

def test_run_with_a_bad_config_exits_1_with_the_same_errors_and_listens_on_nothing(bad_config):
    path, ports, expected = bad_config
    started = time.monotonic()
    code, out, err = _cli("run", "-c", path, timeout=15)
    assert code == 1
    assert _error_lines(err) == expected, err
    assert time.monotonic() - started < 10
    assert not set(ports.values()) & _listening_ports()
    assert not _session_processes(), "the failed run left processes behind"


# --- config schema / defaults ---------------------------------------------------------------

def test_config_schema_prints_a_json_schema_with_the_spec_top_level_keys():
    code, out, err = _cli("config", "schema")
    assert code == 0, err
    schema = json.loads(out)
    assert schema["type"] == "object"
    assert SPEC_TOP_LEVEL_KEYS <= set(schema["properties"]), sorted(schema["properties"])
    assert schema.get("additionalProperties") is False     # unknown keys are errors
    jsonschema = pytest.importorskip("jsonschema")
    jsonschema.validators.validator_for(schema).check_schema(schema)


def test_config_defaults_prints_yaml_that_check_accepts_and_the_schema_validates(tmp_path):
    code, out, err = _cli("config", "defaults")
    assert code == 0, err
    defaults = yaml.safe_load(out)
    assert SPEC_TOP_LEVEL_KEYS <= set(defaults), sorted(defaults)
    path = tmp_path / "defaults.yaml"
    path.write_text(out)
    code, check_out, err = _cli("check", "-c", str(path))
    assert code == 0, err
    assert check_out.strip() == "%s: ok" % path
    _, schema_out, _ = _cli("config", "schema")
    jsonschema = pytest.importorskip("jsonschema")
    errors = list(jsonschema.validators.validator_for(json.loads(schema_out))(
        json.loads(schema_out)).iter_errors(defaults))
    assert not errors, [e.message for e in errors]


# --- the SPEC's example --------------------------------------------------------------------

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


def _spec_example_with_files(tmp_path):
    """The SPEC example with its file paths (JWKS, TLS) pointing at files that exist."""
    text = SPEC_EXAMPLE
    for original, name, content in (
            ("/etc/sidecar/jwks.json", "jwks.json", '{"keys": []}\n'),
            ("/etc/sidecar/tls/cert.pem", "cert.pem", "-----BEGIN CERTIFICATE-----\n"),
            ("/etc/sidecar/tls/key.pem", "key.pem", "-----BEGIN PRIVATE KEY-----\n"),
            ("/etc/sidecar/tls/ca.pem", "ca.pem", "-----BEGIN CERTIFICATE-----\n")):
        assert original in text
        (tmp_path / name).write_text(content)
        text = text.replace(original, str(tmp_path / name))
    path = tmp_path / "spec-example.yaml"
    path.write_text(text)
    return path


class _Yaml12Loader(yaml.SafeLoader):
    """YAML 1.2 booleans (true/false only): `on:` in `retries` is a key, as in the
    sidecar's own loader, not PyYAML's YAML 1.1 boolean True."""


_Yaml12Loader.yaml_implicit_resolvers = {
    first: [(tag, regexp) for tag, regexp in resolvers if tag != "tag:yaml.org,2002:bool"]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()}
_Yaml12Loader.add_implicit_resolver("tag:yaml.org,2002:bool", __import__("re").compile(
    r"^(?:true|True|TRUE|false|False|FALSE)$"), list("tTfF"))


def test_the_spec_example_config_passes_check_and_matches_the_schema(tmp_path):
    path = _spec_example_with_files(tmp_path)
    code, out, err = _cli("check", "-c", str(path))
    assert code == 0, err
    assert out.strip() == "%s: ok" % path
    jsonschema = pytest.importorskip("jsonschema")
    _, schema_out, _ = _cli("config", "schema")
    schema = json.loads(schema_out)
    document = yaml.load(path.read_text(), Loader=_Yaml12Loader)
    assert document["services"][0]["retries"]["on"][0] == "connect-failure"
    errors = list(jsonschema.validators.validator_for(schema)(schema).iter_errors(document))
    assert not errors, ["%s: %s" % (list(e.path), e.message) for e in errors]


# --- the installed console script ------------------------------------------------------------

def test_console_script_runs_check_like_the_module(good_config, bad_config):
    assert os.access(SIDECAR_SCRIPT, os.X_OK), SIDECAR_SCRIPT
    code, out, err = _cli("check", "-c", good_config, command=[SIDECAR_SCRIPT])
    assert code == 0, err
    assert out.strip() == "%s: ok" % good_config
    path, _, expected = bad_config
    code, out, err = _cli("check", "-c", path, command=[SIDECAR_SCRIPT])
    assert code == 1
    assert _error_lines(err) == expected, err
