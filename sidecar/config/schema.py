"""Every key of the config file, declared once.

Each section below is a list of `Field(key, kind, doc)`; the loader validates with it,
`config_json_schema()` describes it and `effective_defaults()` dumps its defaults, so a
new key is added here and nowhere else (plus its attribute in model.py, which holds the
defaults of model-backed sections). Rules that span keys are the `_check_*` functions next
to the section they belong to. The layout follows SPEC.md's "Config (YAML)" section.
"""
from __future__ import annotations

import difflib
import ipaddress
import re

from . import units
from .context import is_invalid, join, partial_of
from .fields import SECTION_DEFAULTS, Bool, ByShape, Enum, Field, Int, ListOf, MapOf, Section, Str, Unit
from .model import (
    TLS, AccessLog, Admin, CircuitBreaker, Config, HealthCheck, Inbound, Interception,
    KernelPolicy, Limits, OutlierDetection, Outbound, Retries, RetryBackoff, Route, RouteMatch, Service,
    ServiceMatch, ServiceTLS, Telemetry, Timeouts, Tracing, WeightedService, Workload,
)

__all__ = ["CONFIG", "config_json_schema", "effective_defaults", "config_to_dict"]

# --- value kinds -----------------------------------------------------------------------

DURATION = Unit(units.parse_duration, units.format_duration, "a duration (250ms, 5s, 1m)",
                {"type": "string", "pattern": units.DURATION_PATTERN})
POSITIVE_DURATION = Unit(units.parse_duration, units.format_duration, "a duration (250ms, 5s, 1m)",
                         {"type": "string", "pattern": units.DURATION_PATTERN}, positive=True)
SIZE = Unit(units.parse_size, units.format_size, "a size (64KiB, 10MB, or bytes)",
            {"anyOf": [{"type": "integer", "minimum": 1}, {"type": "string", "pattern": units.SIZE_PATTERN}]},
            positive=True, from_text=False)
RATE = Unit(units.parse_rate, units.format_rate, "a rate (100/s, 6000/m)",
            {"type": "string", "pattern": units.RATE_PATTERN})
PERCENT = Unit(units.parse_percent, units.format_percent, "a percentage (20%)",
               {"anyOf": [{"type": "number", "minimum": 0, "maximum": 100},
                          {"type": "string", "pattern": units.PERCENT_PATTERN}]}, from_text=False)
ADDRESS = Unit(units.parse_address, units.format_address, "host:port",
               {"type": "string", "pattern": units.ADDRESS_PATTERN})
PORT = Int(1, 65535)


# Names become metric label values and admin keys: keep them plain.
NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$"


def _name(text: str) -> str:
    if not re.match(NAME_PATTERN, text):
        raise ValueError(f"invalid name '{text}': use letters, digits, '-', '_' and '.'")
    return text


NAME = Str(_name, "a name", {"type": "string", "pattern": NAME_PATTERN})


def _url_path(text: str) -> str:
    if not text.startswith("/") or re.search(r"[\s\x00-\x1f\x7f]", text):
        raise ValueError(f"invalid path '{text}': must start with '/' and have no spaces")
    return text


def _regex(text: str) -> str:
    try:
        re.compile(text)
    except re.error as e:
        raise ValueError(f"invalid regular expression: {e.msg} at position {e.pos}") from None
    return text


_TOKEN = re.compile(r"^[!#$%&'*+.^_`|~0-9A-Za-z-]+$")   # RFC 9110 token

# Framing and hop-by-hop headers belong to the proxy: letting policy set or strip them
# would let a config desynchronise message boundaries between client, sidecar and app.
_PROXY_OWNED_HEADERS = frozenset({
    "content-length", "transfer-encoding", "connection", "keep-alive", "te", "trailer",
    "upgrade", "proxy-connection",
})


def _header_name(text: str) -> str:
    if not _TOKEN.match(text):
        raise ValueError(f"invalid header name '{text}'")
    return text.lower()


def _editable_header_name(text: str) -> str:
    name = _header_name(text)
    if name in _PROXY_OWNED_HEADERS:
        raise ValueError(f"header '{name}' is managed by the proxy and cannot be changed")
    return name


def _header_value(text: str) -> str:
    if re.search(r"[\r\n\x00]", text):
        raise ValueError("header values must not contain CR, LF or NUL")
    return text


def _method(text: str) -> str:
    if not _TOKEN.match(text):
        raise ValueError(f"invalid HTTP method '{text}'")
    return text.upper()


def _service_match(text: str) -> ServiceMatch:
    """'ratings.default.svc:9080' -> host; '10.96.0.0/12:9080' -> cidr; 'ratings' -> host,
    any port. A bare IP is a one-address CIDR (it names an original destination)."""
    host_text, port = units.split_host_port(text, "service match")
    if "/" in host_text or _is_ip(host_text):
        return ServiceMatch(cidr=units.parse_cidr(host_text), port=port)
    return ServiceMatch(host=units.parse_host(host_text), port=port)


def _is_ip(text: str) -> bool:
    try:
        ipaddress.ip_address(text)
        return True
    except ValueError:
        return False


def _dump_service_match(match: ServiceMatch) -> str:
    target = match.host or match.cidr
    if match.port is None:
        return target
    return f"[{target}]:{match.port}" if ":" in target else f"{target}:{match.port}"


# Envoy's names: `5xx` is every 5xx status, `gateway-error` 502, 503 and 504.
_RETRY_CONDITIONS = ("connect-failure", "reset", "timeout", "5xx", "gateway-error")


def _retry_on(text: str) -> str:
    if text in _RETRY_CONDITIONS or re.fullmatch(r"[45][0-9][0-9]", text):
        return text
    close = difflib.get_close_matches(text, _RETRY_CONDITIONS, n=1)
    hint = f"; did you mean '{close[0]}'?" if close else ""
    raise ValueError(f"'{text}' is not a retry condition: connect-failure, reset, timeout, "
                     f"or a 4xx/5xx status{hint}")


def _status_range(text: str) -> tuple:
    """'200' -> (200, 200); '200-399' -> (200, 399)."""
    m = re.fullmatch(r"([1-5][0-9][0-9])(?:-([1-5][0-9][0-9]))?", text.strip())
    if not m:
        raise ValueError(f"'{text}' is not a status or a range of statuses (200, 200-399)")
    low = int(m.group(1))
    high = int(m.group(2)) if m.group(2) else low
    if high < low:
        raise ValueError(f"'{text}': the range ends before it starts")
    return (low, high)


def _dump_status_range(value: tuple) -> str:
    return str(value[0]) if value[0] == value[1] else f"{value[0]}-{value[1]}"


def _rate_limit_key(text: str) -> str:
    if text in ("client_ip", "global"):
        return text
    kind, _, name = text.partition(":")
    if kind == "header" and name:
        return "header:" + _header_name(name)
    if kind == "jwt" and name:
        return text
    raise ValueError(f"invalid key '{text}': expected client_ip, header:NAME, jwt:CLAIM or global")


def _interface_name(text: str) -> str:
    if len(text) > 15 or "/" in text or re.search(r"\s", text):
        raise ValueError(f"invalid interface name '{text}'")
    return text


# --- workload, interception, limits, listeners ----------------------------------------

WORKLOAD = Section([
    Field("name", NAME, "the workload's name (metrics, access log)"),
    Field("namespace", NAME, "the workload's namespace"),
], Workload)

def _instance_name(text: str) -> str:
    # bpffs refuses "." in names
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_-]{0,63}", text):
        raise ValueError(f"invalid instance name '{text}': letters, digits, '_' and '-', at most 64")
    return text


def _check_interception(values, given, path, ctx):
    cgroup = values["cgroup"]
    if cgroup is not None and not cgroup.startswith("/") and cgroup != "pod":
        ctx.error_at(join(path, given["cgroup"]), "must be an absolute path (the app's cgroup v2 "
                                                  "directory) or `pod` (the parent of the sidecar's own cgroup)")
    if values["mode"] == "ebpf" and cgroup is None:
        ctx.error_at(join(path, given.get("mode", "mode")),
                     "ebpf mode needs interception.cgroup (the app's cgroup v2 directory, or `pod`)")
    if values["mode"] == "ebpf" and values["interface"] is None:
        ctx.warn_at(join(path, given.get("mode", "mode")),
                    "no interception.interface: inbound traffic is not intercepted")
    if values["accelerate_local"] and "accelerate_local" in given:
        if values["mode"] == "off":
            ctx.warn_at(join(path, given["accelerate_local"]),
                        "no effect with interception.mode off (nothing is intercepted)")
        elif cgroup is None:
            ctx.warn_at(join(path, given["accelerate_local"]),
                        "needs interception.cgroup (the app's side of each hop is found there): "
                        "local hops are not accelerated")
        elif cgroup == "pod":
            ctx.warn_at(join(path, given["accelerate_local"]),
                        "not with interception.cgroup: pod (one cgroup holds the app and the "
                        "sidecar, whose sockets the programs must tell apart): local hops are "
                        "not accelerated; name the app's cgroup to accelerate them")


INTERCEPTION = Section([
    Field("mode", Enum("ebpf", "iptables", "off"), "how app traffic is steered through the sidecar"),
    Field("cgroup", Str(), "the app's cgroup v2 directory, or `pod`: the parent of the sidecar's "
          "own cgroup (in Kubernetes the pod's cgroup, holding every container of the pod)"),
    Field("interface", Str(_interface_name), "pod interface: in-kernel counters and L3/L4 policy"),
    Field("accelerate_local", Bool(), "sockops + sk_msg bypass for app <-> sidecar hops"),
    Field("exclude_outbound_ports", ListOf(PORT), "outbound ports never captured"),
    Field("exclude_inbound_ports", ListOf(PORT), "inbound ports never captured"),
    Field("fail", Enum("open", "closed"), "app traffic when the sidecar is not running, "
          "or when the kernel refuses interception: open lets it pass, closed refuses it"),
    Field("instance", Str(_instance_name), "name of this sidecar's kernel state "
          "(default: <namespace>-<name>-<network namespace inode>)"),
    Field("splice", Enum("auto", "true", "false"), "opaque TCP tunnels (passthrough ports, "
          "outbound TCP, upgraded connections) spliced in the kernel: auto where BPF programs "
          "are loaded anyway (ebpf mode, iptables with accelerate_local), true also in "
          "iptables mode, false never"),
], Interception, check=_check_interception)

LIMITS = Section([
    Field("max_request_line", SIZE, "longest request line (414 past it)"),
    Field("max_header_bytes", SIZE, "largest request head (431 past it)"),
    Field("max_headers", Int(1), "most header fields in a request (431 past it)"),
    Field("header_read_timeout", POSITIVE_DURATION, "time to receive a complete request head"),
    Field("idle_timeout", POSITIVE_DURATION, "a kept-alive downstream connection with no request is closed after"),
    Field("connect_timeout", POSITIVE_DURATION, "upstream connect, where no service sets one"),
    Field("request_timeout", POSITIVE_DURATION, "outbound request to an original destination "
          "(no service), to its last response byte"),
    Field("upstream_idle_timeout", POSITIVE_DURATION, "idle pooled upstream connections are closed after"),
], Limits, doc="protocol limits and proxy-wide timeouts")

INBOUND = Section([
    Field("listen", ADDRESS, "inbound capture listener"),
    Field("app", ADDRESS, "where accepted inbound traffic is delivered"),
    Field("tcp_passthrough_ports", ListOf(PORT), "opaque TCP, spliced in the kernel after accept"),
], Inbound)

OUTBOUND = Section([
    Field("listen", ADDRESS, "outbound capture listener"),
    Field("protocol_detect_timeout", POSITIVE_DURATION, "no client bytes by then: opaque TCP"),
], Outbound)

# --- services ----------------------------------------------------------------------------

TIMEOUTS = Section([
    Field("connect", POSITIVE_DURATION, "upstream connect"),
    Field("request", POSITIVE_DURATION, "whole request, to its last response byte, retries included"),
    Field("idle", POSITIVE_DURATION, "idle upstream connection"),
], Timeouts)

def _check_backoff(values, given, path, ctx):
    if values["max"] < values["base"]:
        ctx.error_at(join(path, given.get("max", given.get("base", "base"))),
                     "backoff max must be at least its base")


RETRIES = Section([
    Field("attempts", Int(0, 10), "retries after the first try"),
    Field("on", ListOf(Str(_retry_on, "a retry condition",
                           {"anyOf": [{"enum": list(_RETRY_CONDITIONS)},
                                      {"type": "string", "pattern": "^[45][0-9][0-9]$"},
                                      {"type": "integer", "minimum": 400, "maximum": 599}]})),
          "connect-failure, reset, timeout (the per-try timeout), 5xx, gateway-error "
          "(502, 503, 504), or a 4xx/5xx status"),
    Field("per_try_timeout", POSITIVE_DURATION,
          "timeout of each try, until its response starts (default: none)"),
    Field("budget", PERCENT, "retries in flight, at most this share of the service's active requests"),
    Field("min_concurrency", Int(0), "retries in flight allowed whatever the budget"),
    Field("backoff", Section([
        Field("base", POSITIVE_DURATION, "the nth retry waits a random time up to "
              "base * (2^n - 1) ..."),
        Field("max", POSITIVE_DURATION, "... and at most this"),
    ], RetryBackoff, check=_check_backoff), "exponential backoff with full jitter"),
    Field("replay_buffer", SIZE, "request bytes (head and body) kept to send again: a request "
          "whose body does not fit is retried only if nothing of it was sent"),
], Retries)

CIRCUIT_BREAKER = Section([
    Field("max_connections", Int(1), "upstream connections (per worker: divided by workers)"),
    Field("max_pending", Int(1), "requests waiting for a connection (per worker: divided by workers)"),
    Field("max_requests", Int(1), "requests in flight (per worker: divided by workers)"),
], CircuitBreaker)

OUTLIER_DETECTION = Section([
    Field("consecutive_5xx", Int(1), "5xx responses, connect failures, resets or try timeouts "
          "in a row that eject an endpoint"),
    Field("interval", POSITIVE_DURATION, "an endpoint that stays well this long has one "
          "ejection fewer counted against it"),
    Field("ejection", POSITIVE_DURATION, "ejection time, times the number of ejections"),
    Field("max_ejection", POSITIVE_DURATION, "longest ejection"),
    Field("max_ejected", PERCENT, "most endpoints ejected at once"),
], OutlierDetection)

HEALTH_CHECK = Section([
    Field("path", Str(_url_path), "HTTP path probed on each endpoint"),
    Field("interval", POSITIVE_DURATION, "time between probes (each jittered by up to 10%)"),
    Field("unhealthy", Int(1), "failed probes in a row that mark an endpoint unhealthy"),
    Field("healthy", Int(1), "passed probes in a row that mark it healthy again"),
    Field("timeout", POSITIVE_DURATION, "a probe's connect and response head"),
    Field("expected_statuses", ListOf(Str(_status_range, "a status or a range (200-399)",
                                          {"anyOf": [{"type": "string", "pattern": "^[1-5][0-9][0-9](-[1-5][0-9][0-9])?$"},
                                                     {"type": "integer", "minimum": 100, "maximum": 599}]},
                                          dump=_dump_status_range)),
          "statuses that pass"),
    Field("host", Str(units.parse_host), "Host header of the probes (default: the service name)"),
], HealthCheck)

SERVICE = Section([
    Field("name", NAME, "referenced by routes' service"),
    Field("match", ListOf(Str(_service_match, "host[:port] or CIDR[:port]", dump=_dump_service_match)),
          "original destination CIDR[:port], or Host header host[:port]"),
    Field("endpoints", ListOf(ADDRESS), "default: the original destination"),
    Field("load_balancing", Enum("round_robin", "least_request", "random")),
    Field("timeouts", TIMEOUTS),
    Field("retries", RETRIES),
    Field("circuit_breaker", CIRCUIT_BREAKER),
    Field("outlier_detection", OUTLIER_DETECTION, "default: off"),
    Field("health_check", HEALTH_CHECK, "default: off"),
    Field("tls", Section([Field("mode", Enum("disable", "simple", "mutual"))], ServiceTLS)),
    Field("pool_max_idle", Int(0), "idle upstream connections kept per endpoint (default: "
          "up to circuit_breaker.max_connections; idle ones close after timeouts.idle)",
          default=None),
], Service)

# --- routes ------------------------------------------------------------------------------


def _check_route_match(values, given, path, ctx):
    paths = [given[attr] for attr in ("path_exact", "path_prefix", "path_regex") if values[attr] is not None]
    for key in paths[1:]:
        ctx.error_at(join(path, key), f"only one of path, path_prefix, path_regex may be set "
                                      f"(also has '{paths[0]}')")


ROUTE_MATCH = Section([
    Field("path", Str(_url_path), "exact path", attr="path_exact", aliases=("path_exact",)),
    Field("path_prefix", Str(_url_path), "path prefix"),
    Field("path_regex", Str(_regex),
          "Python regular expression, matched against the whole path"),
    Field("methods", ListOf(Str(_method)), "any of these methods (default: any)"),
    Field("headers", MapOf(_header_name, Str(_header_value, allow_empty=True), "header name"),
          "header name -> exact value, all must match"),
], RouteMatch, check=_check_route_match)

WEIGHTED_SERVICE = Section([
    Field("name", NAME, "a service name"),
    Field("weight", Int(0, 1_000_000), "share of requests, relative to the other entries"),
], WeightedService)

def _check_jwks_file(values, given, path, ctx):
    # The file is read now, so a missing or broken key set is refused at load with its
    # line; the workers watch it afterwards, and a later bad version keeps the last keys.
    from fastpath.jwt_verify import load_jwks
    where = join(path, given.get("jwks_file", "jwks_file"))
    try:
        keys = load_jwks(values["jwks_file"])
    except ValueError as e:
        ctx.error_at(where, f"bad JWKS file: {e}")
        return
    if not keys:
        ctx.warn_at(where, "the JWKS file has no usable key (RS256, ES256, HS256) yet: "
                           "every token is refused until it has one")


JWT = Section([
    Field("issuer", Str(), "expected 'iss'", required=True),
    Field("audiences", ListOf(Str()), "accepted 'aud' values (default: any)", default=[]),
    Field("jwks_file", Str(), "JSON Web Key Set file (reloaded when it changes)", required=True),
    Field("clock_skew", DURATION, "tolerance on 'exp' and 'nbf'", default=60.0),
    Field("cache_entries", Int(1, 1 << 20), "verified tokens kept per route (LRU)", default=4096),
], check=_check_jwks_file)


def _check_api_keys_file(values, given, path, ctx):
    from fastpath.api_keys import load_api_keys
    try:
        load_api_keys(values["file"])
    except ValueError as e:
        ctx.error_at(join(path, given.get("file", "file")), f"bad API key file: {e}")


API_KEYS = Section([
    Field("header", Str(_header_name, "a header name"), "request field carrying the key", default="x-api-key"),
    Field("file", Str(), "one 'KEY' or 'PRINCIPAL KEY' per line (reloaded when it changes)", required=True),
], check=_check_api_keys_file)


def _check_authn(values, given, path, ctx):
    if values["jwt"] is None and values["api_keys"] is None:
        ctx.error_at(path, "needs jwt or api_keys")


AUTHN = Section([
    Field("jwt", JWT, "bearer JWT validation (default: none)", default=None),
    Field("api_keys", API_KEYS, "API keys in a request field (default: none)", default=None),
], check=_check_authn, doc="a request needs a valid credential of one of these kinds (401 otherwise)")


def _authz_path(text: str) -> str:
    if text == "*":
        return text
    core = text[:-1] if text.endswith("*") else text[1:] if text.startswith("*") else text
    if "*" in core or (not text.startswith("*") and not text.startswith("/")):
        raise ValueError(f"invalid path pattern '{text}': use /exact, /prefix*, *suffix or *")
    if re.search(r"[\s\x00-\x1f\x7f]", text):
        raise ValueError(f"invalid path pattern '{text}': no spaces or control characters")
    return text


_AUTHZ_CONDITIONS = ("principals", "claims", "methods", "paths", "source_cidrs")
MAX_IDENTITY_RULES = 64     # fastpath/authz.pyx: one bit per rule with principals or claims


def _check_authz_rule(values, given, path, ctx):
    if not any(values[c] for c in _AUTHZ_CONDITIONS):
        ctx.error_at(path, "a rule needs at least one of " + ", ".join(_AUTHZ_CONDITIONS)
                     + " (an empty rule would match every request)")


AUTHZ_RULE = Section([
    Field("principals", ListOf(Str()), "any of these: JWT subject, API-key principal, or peer SPIFFE ID",
          default=[]),
    Field("claims", MapOf(str, Str(allow_empty=True), "claim name"),
          "JWT claim (dotted for nested) -> value, all must match; list claims and scope/scp contain it",
          default={}),
    Field("methods", ListOf(Str(_method)), "any of these methods", default=[]),
    Field("paths", ListOf(Str(_authz_path, "a path pattern")), "any of: /exact, /prefix*, *suffix, *",
          default=[]),
    Field("source_cidrs", ListOf(Str(units.parse_cidr, "a CIDR")), "client address in any of these",
          default=[]),
], check=_check_authz_rule, doc="matches when every condition given matches")


def _check_authz(values, given, path, ctx):
    rules = values["allow"] + values["deny"]
    if not rules:
        ctx.error_at(path, "needs allow or deny rules")
    if sum(1 for r in rules if r["principals"] or r["claims"]) > MAX_IDENTITY_RULES:
        ctx.error_at(path, f"at most {MAX_IDENTITY_RULES} rules with principals or claims")


AUTHZ = Section([
    Field("allow", ListOf(AUTHZ_RULE), "when given, a request is allowed only if a rule matches", default=[]),
    Field("deny", ListOf(AUTHZ_RULE), "a request that matches any of these is denied (deny wins)", default=[]),
], check=_check_authz)


def _check_rate_limit(values, given, path, ctx):
    if values["burst"] is None:
        values["burst"] = max(1, int(-(-values["rate"] // 1)))     # one second's worth, rounded up


RATE_LIMIT = Section([
    Field("rate", RATE, "sustained rate per key, for the whole sidecar (each worker gets rate/workers)",
          required=True),
    Field("burst", Int(1), "bucket size (default: one second's worth of rate)", default=None),
    Field("key", Str(_rate_limit_key, schema={"type": "string",
                                              "pattern": "^(client_ip|global|header:.+|jwt:.+)$"}),
          "client_ip | header:NAME | jwt:CLAIM | global", default="client_ip"),
    Field("max_keys", Int(1, 1 << 22), "keys tracked per worker (least recently used evicted)",
          default=16384),
], check=_check_rate_limit)


def _header_template(text: str) -> str:
    from fastpath.header_template import split_template
    split_template(_header_value(text))
    return text


def _check_header_edits(values, given, path, ctx):
    for name in values["set"]:
        if name in values["add"]:
            ctx.error_at(join(join(path, "add"), name), "also in set: give it in one of them")


HEADER_VALUE = Str(_header_template, "a header value (%{request_id}, %{principal}, %{client_ip}, %{route})",
                   allow_empty=True)

HEADER_EDITS = Section([
    Field("set", MapOf(_editable_header_name, HEADER_VALUE, "header name"),
          "header name -> value, replacing any", default={}),
    Field("add", MapOf(_editable_header_name, HEADER_VALUE, "header name"),
          "header name -> value, added to any", default={}),
    Field("remove", ListOf(Str(_editable_header_name)), "header names to drop", default=[]),
], check=_check_header_edits)


def _check_request_edits(values, given, path, ctx):
    _check_header_edits(values, given, path, ctx)
    for index, name in enumerate(values["remove"]):
        if name == "host":
            ctx.error_at(join(join(path, "remove"), index), "an HTTP/1.1 request needs its Host")
    for key in ("set", "add"):
        if "x-request-id" in values[key]:
            # The proxy keeps the client's id or generates one; a second would disagree.
            ctx.error_at(join(join(path, key), "x-request-id"),
                         "the request id is the proxy's (kept or generated); use %{request_id} elsewhere")


REQUEST_HEADER_EDITS = Section(HEADER_EDITS.fields, check=_check_request_edits)

HEADERS = Section([
    Field("request", REQUEST_HEADER_EDITS, "edits before the request is forwarded", default=SECTION_DEFAULTS),
    Field("response", HEADER_EDITS, "edits before the response is returned", default=SECTION_DEFAULTS),
])


def _check_cache(values, given, path, ctx):
    if values["max_entry"] > values["max_total"]:
        ctx.error_at(join(path, given.get("max_entry", "max_entry")),
                     f"larger than max_total ({units.format_size(values['max_total'])})")


CACHE = Section([
    Field("ttl", POSITIVE_DURATION, "freshness of a response that states none (200, 203, 204, "
          "300, 301, 308), and the cap on what a response states", required=True),
    Field("max_entry", SIZE, "largest cached response body (larger ones pass through)", default=1 << 20),
    Field("max_total", SIZE, "bytes stored per worker for this route (LRU)", default=64 << 20),
], check=_check_cache)

FAULT = Section([
    Field("abort", Section([
        Field("status", Int(200, 599), "status returned instead of forwarding", required=True),
        Field("percent", PERCENT, "share of requests aborted", default=1.0),
    ]), "answer some requests with an error", default=None),
    Field("delay", Section([
        Field("duration", POSITIVE_DURATION, "added latency", required=True),
        Field("percent", PERCENT, "share of requests delayed", default=1.0),
    ]), "delay some requests", default=None),
])


def _check_route(values, given, path, ctx):
    if values["direction"] == "inbound" and values["service"]:
        # SPEC's own example has `service:` on an inbound route, and the SPEC's example
        # must load, so this is a warning, and the service is dropped so that no inbound
        # pipeline can act on it.
        ctx.warn_at(join(path, given["service"]),
                    "ignored: only outbound routes have a service; inbound routes deliver to inbound.app")
        values["service"] = []
    elif values["service"] and sum(s.weight for s in values["service"]) == 0:
        ctx.error_at(join(path, given["service"]), "the weights add up to 0")
    rate_limit = values["rate_limit"]
    has_jwt = bool((values["authn"] or {}).get("jwt"))
    if rate_limit and rate_limit["key"].startswith("jwt:") and not has_jwt:
        ctx.error_at(join(join(path, given["rate_limit"]), "key"),
                     "a jwt:CLAIM key needs authn.jwt on the same route")
    for side, edits in (values["headers"] or {}).items():
        for key in ("set", "add"):
            for name, value in edits[key].items():
                if "%{claim:" in value and not has_jwt:
                    ctx.error_at(join(join(join(join(path, given["headers"]), side), key), name),
                                 "%{claim:NAME} needs authn.jwt on the same route")


ROUTE = Section([
    Field("name", NAME, "route name (metrics label)"),
    Field("direction", Enum("inbound", "outbound")),
    Field("match", ROUTE_MATCH, "default: every request"),
    Field("service", ByShape(Str(lambda text: [WeightedService(_name(text), 100)], "a service name",
                                 {"type": "string", "pattern": NAME_PATTERN}),
                             ListOf(WEIGHTED_SERVICE, unique_by="name"),
                             dump_with=ListOf(WEIGHTED_SERVICE)),
          "outbound only: a service name, or a list of {name, weight}"),
    Field("authn", AUTHN, "default: none"),
    Field("authz", AUTHZ, "default: allow all"),
    Field("rate_limit", RATE_LIMIT, "default: none"),
    Field("max_request_body", SIZE, "413 past it (default: no limit)"),
    Field("headers", HEADERS, "default: no edits"),
    Field("cache", CACHE, "default: none"),
    Field("fault", FAULT, "default: none"),
], Route, check=_check_route)

# --- kernel, tls, admin, telemetry -------------------------------------------------------


def _access_log_format(text: str) -> str:
    from sidecar.telemetry.access_log import check_format
    return check_format(text)


def _otlp_endpoint(text: str) -> str:
    from sidecar.telemetry.span_exporter import traces_url
    traces_url(text)            # raises ValueError with the reason
    return text


def _check_kernel(values, given, path, ctx):
    # The kernel tables' sizes (bpf/lib/sidecar_maps.h, mirrored in sidecar.bpf.layout):
    # a policy that does not fit is refused here, not half-written into the kernel.
    from sidecar.bpf.layout import MAPS
    if values["syn_burst"] is not None and values["syn_rate_limit"] is None:
        ctx.error_at(join(join(path, "syn_rate_limit"), "burst"), "needs syn_rate_limit.per_source too")
    for version, table in ((4, "sc_deny4"), (6, "sc_deny6")):
        n = sum(1 for c in values["deny_cidrs"] if ipaddress.ip_network(c).version == version)
        if n > MAPS[table].max_entries:
            ctx.error_at(join(path, given["deny_cidrs"]), f"{n} IPv{version} prefixes: the kernel table "
                         f"holds at most {MAPS[table].max_entries}")
    room = MAPS["sc_allow_in"].max_entries - 8      # the sidecar's own ports take a few
    if len(set(values["allow_inbound_ports"])) > room:
        ctx.error_at(join(path, given["allow_inbound_ports"]), f"at most {room} ports")


KERNEL = Section([
    Field("deny_cidrs", ListOf(Str(units.parse_cidr, "a CIDR")),
          "every packet from these sources (IPv4, IPv6) is dropped in the kernel"),
    Field("allow_inbound_ports", ListOf(PORT), "new inbound TCP connections and UDP datagrams "
          "reach only these pod ports (default: all ports); the sidecar's own ports always do"),
    Field("syn_rate_limit", Section([
        Field("per_source", RATE, "SYNs per second per source address (IPv6: per /64; "
              "default: no limit)", attr="syn_rate_limit"),
        Field("burst", Int(1, 1_000_000), "SYNs a source may send at once before the rate "
              "applies (default: one second's worth of the rate, at least 1)", attr="syn_burst"),
    ]), flatten=True),
], KernelPolicy, check=_check_kernel, doc="L3/L4 policy enforced at the pod interface (ebpf mode)")


def _check_tls(values, given, path, ctx):
    for have, need in (("cert", "key"), ("key", "cert")):
        if values[have] and not values[need]:
            ctx.error_at(join(path, have), f"needs tls.{need} too")


TLS_SECTION = Section([
    Field("cert", Str(), "PEM certificate; its SPIFFE URI SAN is the workload's principal"),
    Field("key", Str(), "PEM private key"),
    Field("ca", Str(), "PEM CA bundle for peers"),
], TLS, check=_check_tls)

TELEMETRY = Section([
    Field("metrics", Section([Field("listen", ADDRESS, "Prometheus /metrics", attr="metrics_listen")]),
          flatten=True),
    Field("health", Section([Field("listen", ADDRESS, "/healthz/ready for probes", attr="health_listen")]),
          flatten=True),
    Field("access_log", Section([
        Field("path", Str(), "stdout, stderr, a file, or null for none", nullable=True),
        Field("format", Str(_access_log_format), "json, or a template of %field% (Envoy's operators too)"),
    ], AccessLog)),
    Field("tracing", Section([
        Field("propagate", ListOf(Enum("w3c", "b3")),
              "trace header formats read and written, first match wins ([] for none)"),
        Field("sample", PERCENT, "share of new traces sampled (an incoming decision is followed)"),
        Field("otlp_endpoint", Str(_otlp_endpoint, "an http(s) URL"),
              "OTLP/HTTP collector, e.g. http://otel-collector:4318 (default: none)"),
    ], Tracing)),
    Field("istio_compat", Bool(), "also emit Istio's standard metric names"),
], Telemetry)

# --- the whole file --------------------------------------------------------------------


def _get(obj, attr, partial=False):
    """An attribute of a parsed or partially parsed value: None when unknown, or with
    `partial` what did parse of it."""
    obj = partial_of(obj)
    value = obj.get(attr) if isinstance(obj, dict) else getattr(obj, attr, None)
    if is_invalid(value):
        return value.partial if partial else None
    return value


def _check_config(values, given, path, ctx):
    services = partial_of(values["services"]) or []
    if not (is_invalid(values["services"]) and not services):   # else `services` was not even a list
        names = [_get(s, "name") for s in services]
        _check_route_services(partial_of(values["routes"]) or [], names, ctx)
    _check_service_tls(services, values["tls"], ctx)
    _check_listeners(values, ctx)
    _check_allowed_ports(values, ctx)
    _check_kernel_mode(values, ctx)


def _check_kernel_mode(values, ctx):
    """The kernel policy runs on interception.interface in ebpf mode only: iptables mode
    loads no interface programs, also where local-hop acceleration or splice makes it run
    the loader, so a policy there would silently not be enforced."""
    if _get(values["interception"], "mode") != "iptables":
        return
    for attr in ("deny_cidrs", "allow_inbound_ports", "syn_rate_limit"):
        if _get(values["kernel"], attr):
            ctx.warn_at("kernel." + attr, "not enforced with interception.mode iptables: the "
                        "kernel policy runs at the pod interface in ebpf mode")
            return


def _check_allowed_ports(values, ctx):
    """kernel.allow_inbound_ports admits connections by port, interception or not: an
    excluded or passthrough port left off it is refused in the kernel, which is rarely
    what was meant (the sidecar's own ports are always allowed)."""
    allowed = _get(values["kernel"], "allow_inbound_ports")
    if not allowed:
        return
    own = set()
    for section, attr in (("admin", "listen"), ("telemetry", "metrics_listen"), ("telemetry", "health_listen")):
        address = _get(values[section], attr)
        if address:
            own.add(address[1])
    for section, attr, path in (("interception", "exclude_inbound_ports", "interception.exclude_inbound_ports"),
                                ("inbound", "tcp_passthrough_ports", "inbound.tcp_passthrough_ports")):
        for index, port in enumerate(_get(values[section], attr) or []):
            if port not in allowed and port not in own:
                ctx.warn_at(f"{path}.{index}", f"port {port} is not in kernel.allow_inbound_ports: "
                            "connections to it are dropped in the kernel")


def _check_route_services(routes, names, ctx):
    if None in names:
        return      # a service name did not parse: do not guess what it was
    for r, route in enumerate(routes):
        refs = _get(route, "service", partial=True) or []
        for s, ref in enumerate(refs):
            name = _get(ref, "name")
            if name is None or name in names:
                continue
            where = f"routes.{r}.service.{s}.name"
            if where not in ctx.lines:
                where = f"routes.{r}.service"      # written as a plain name
            close = difflib.get_close_matches(name, names, n=1)
            hint = (f"; did you mean '{close[0]}'?" if close else
                    f" (services: {', '.join(names)})" if names else " (no services are defined)")
            ctx.error_at(where, f"unknown service '{name}'{hint}")


def _check_service_tls(services, tls, ctx):
    if is_invalid(tls):
        return
    for index, service in enumerate(services):
        mode = _get(_get(service, "tls"), "mode")
        needed = {"simple": ("ca",), "mutual": ("cert", "key", "ca")}.get(mode, ())
        missing = [f"tls.{k}" for k in needed if not getattr(tls, k)]
        if missing:
            ctx.error_at(f"services.{index}.tls.mode", f"{mode} TLS needs {', '.join(missing)}")


def _check_listeners(values, ctx):
    """Two listeners on one port (or the app on a sidecar port) cannot both work."""
    seen = []
    for path, section, attr in (("inbound.listen", "inbound", "listen"),
                                ("outbound.listen", "outbound", "listen"),
                                ("admin.listen", "admin", "listen"),
                                ("telemetry.metrics.listen", "telemetry", "metrics_listen"),
                                ("telemetry.health.listen", "telemetry", "health_listen"),
                                ("inbound.app", "inbound", "app")):
        address = _get(values[section], attr)
        if address is None:
            continue
        for other_path, other in seen:
            wildcard = {"0.0.0.0", "::"}
            if address[1] == other[1] and (address[0] == other[0] or {address[0], other[0]} & wildcard):
                ctx.error_at(path, f"port {address[1]} is also used by {other_path}")
                break
        seen.append((path, address))


def _check_admin(values, given, path, ctx):
    # The admin API can drain and stop the sidecar and has no authentication: SPEC keeps
    # it on loopback, and a config must not be able to publish it.
    host = values["listen"][0]
    if host != "localhost" and not (_is_ip(host) and ipaddress.ip_address(host).is_loopback):
        ctx.error_at(join(path, "listen"), f"the admin API listens on loopback only (127.0.0.1 or [::1]), not {host}")


CONFIG = Section([
    Field("workload", WORKLOAD),
    Field("workers", Int(1, 1024), "worker processes sharing the listeners"),
    Field("drain_timeout", DURATION, "SIGTERM: finish in-flight requests for at most this long"),
    Field("log_level", Enum("debug", "info", "warning", "error")),
    Field("interception", INTERCEPTION),
    Field("limits", LIMITS),
    Field("inbound", INBOUND),
    Field("outbound", OUTBOUND),
    Field("services", ListOf(SERVICE, unique_by="name"), "outbound destinations"),
    Field("routes", ListOf(ROUTE, unique_by="name"), "first match wins, per direction"),
    Field("kernel", KERNEL, "in-kernel L3/L4 policy"),
    Field("tls", TLS_SECTION, "the workload's identity"),
    Field("admin", Section([Field("listen", ADDRESS, "admin API, on a loopback address")], Admin,
                           check=_check_admin)),
    Field("telemetry", TELEMETRY),
], Config, check=_check_config, check_partial=True)


def config_json_schema() -> dict:
    """The config file's JSON Schema (draft 2020-12), derived from `CONFIG`.

    `${ENV_VAR}` references are substituted before validation, so a file that uses them
    for non-string values only matches the schema after substitution.
    """
    return {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "title": "bpf-sidecar config",
        **CONFIG.json_schema(),
    }


def config_to_dict(config: Config) -> dict:
    """A parsed Config in the file's own layout and units (loads back to an equal Config)."""
    return CONFIG.dump(config)


def effective_defaults() -> dict:
    """The defaults, as a YAML-able dict in the file's own key layout."""
    return config_to_dict(Config())
