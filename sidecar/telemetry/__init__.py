"""Names of the values the fastpath records in C (fastpath/exchange.pxd, fastpath/stats.pxd).

These tables are ABI with those headers: a bit or a number added there gets its name
here, in the same change. They turn an ExchangeRecord into metric label values and
access-log fields.

    access_log      the bounded queue of finished exchanges and its writer
    span_exporter   the bounded queue of sampled spans and its OTLP/HTTP exporter
"""

# ResponseFlag bits (exchange.pxd), in Envoy's order of precedence for the label.
RESPONSE_FLAGS = (
    (0x001, "UF"),      # upstream connect failure
    (0x002, "UO"),      # upstream overflow (circuit breaker)
    (0x004, "UT"),      # upstream request timeout
    (0x008, "UH"),      # no healthy upstream
    (0x010, "RL"),      # rate limited
    (0x020, "UAEX"),    # unauthorized
    (0x040, "DI"),      # delay injected
    (0x080, "FI"),      # fault injected
    (0x100, "DC"),      # downstream closed
    (0x200, "URX"),     # retry limit exceeded
    (0x400, "UC"),      # upstream connection terminated
)

NO_FLAGS = "-"          # Envoy's and Istio's value when no flag is set

# parser Method (parser.pxd) -> method label; extension methods are "OTHER".
METHODS = ("OTHER", "GET", "HEAD", "POST", "PUT", "DELETE", "OPTIONS", "PATCH", "CONNECT", "TRACE")

# Decision (exchange.pxd) -> decision label.
DECISIONS = {1: "allow", 2: "deny"}

# CacheResult (exchange.pxd) -> result label (and the access log's `cache` field).
CACHE_RESULTS = {1: "hit", 2: "miss", 3: "revalidated", 4: "bypass"}

# RetryReason (stats.pxd) -> reason label.
RETRY_REASONS = {0: "connect-failure", 1: "reset", 2: "timeout", 3: "status"}

# EndpointState (stats.pxd) -> state label of sidecar_upstream_endpoints.
ENDPOINT_STATES = {0: "available", 1: "ejected", 2: "unhealthy"}

# sidecar_health_checks_total result label (stats.pxd M_HEALTH_CHECKS b).
HEALTH_CHECK_RESULTS = {0: "passed", 1: "failed"}

DIRECTIONS = ("inbound", "outbound")
PROTOCOLS = ("http", "tcp")

_flag_names_cache: dict[int, str] = {}


def response_flags(bits: int) -> str:
    """The response_flags label of a flag set: "UF,URX", or "-" for none."""
    text = _flag_names_cache.get(bits)
    if text is None:
        text = ",".join(name for bit, name in RESPONSE_FLAGS if bits & bit) or NO_FLAGS
        _flag_names_cache[bits] = text
    return text


def method_name(method: int) -> str:
    return METHODS[method] if 0 <= method < len(METHODS) else "OTHER"
