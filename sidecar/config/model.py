"""The validated, typed form of a sidecar config file.

Everything here is already parsed: durations are float seconds, sizes int bytes, rates
float events per second, addresses (host, port) tuples. `sidecar.config.loader` builds
these from YAML (with the key path and line of every error); the manager pickles the
result to the workers, so this module imports nothing heavier than the standard library.
Defaults here are the effective defaults (`sidecar config defaults`).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

Address = tuple[str, int]


@dataclass
class Workload:
    name: str = "app"
    namespace: str = "default"


@dataclass
class Interception:
    mode: str = "off"                      # ebpf | iptables | off
    cgroup: Optional[str] = None           # the app's cgroup v2 directory, or "pod" (sidecar.bpf.pod_cgroup)
    interface: Optional[str] = None        # pod interface for counters and L3/L4 policy
    accelerate_local: bool = False
    exclude_outbound_ports: list[int] = field(default_factory=list)
    exclude_inbound_ports: list[int] = field(default_factory=list)
    fail: str = "open"                     # open | closed
    instance: Optional[str] = None         # name of this sidecar's kernel state (/sys/fs/bpf/sidecar/<instance>);
                                           # default: <namespace>-<name>-<network namespace inode>
    splice: str = "auto"                   # auto | true | false: opaque tunnels spliced in the kernel


@dataclass
class Limits:
    """Per-connection protocol limits of the HTTP/1.1 parser (414/431 past them)."""
    max_request_line: int = 8192
    max_header_bytes: int = 65536
    max_headers: int = 100
    header_read_timeout: float = 10.0      # downstream: time to receive a complete request head
    idle_timeout: float = 300.0            # downstream: a kept-alive connection with no request
    connect_timeout: float = 1.0           # upstream connect, where no service sets one
    request_timeout: float = 15.0          # outbound request to an original destination (no service)
    upstream_idle_timeout: float = 60.0    # idle pooled upstream connections are closed after


@dataclass
class Inbound:
    listen: Address = ("0.0.0.0", 15006)
    app: Address = ("127.0.0.1", 8080)
    tcp_passthrough_ports: list[int] = field(default_factory=list)


@dataclass
class Outbound:
    listen: Address = ("127.0.0.1", 15001)
    protocol_detect_timeout: float = 0.1   # no bytes from the client by then: opaque TCP


@dataclass
class Timeouts:
    connect: float = 1.0
    request: float = 15.0
    idle: float = 60.0


@dataclass
class RetryBackoff:
    """Full-jitter exponential backoff: the nth retry waits a random time in
    [0, min(max, base * (2**n - 1))]."""
    base: float = 0.025
    max: float = 0.25


@dataclass
class Retries:
    attempts: int = 0
    on: list[str] = field(default_factory=lambda: ["connect-failure"])
    per_try_timeout: Optional[float] = None
    budget: float = 0.2                    # retries in flight, as a fraction of active requests
    min_concurrency: int = 3               # retries in flight allowed whatever the budget
    backoff: RetryBackoff = field(default_factory=RetryBackoff)
    replay_buffer: int = 65536             # request bytes kept to send again; a longer body is not retried


@dataclass
class CircuitBreaker:
    max_connections: int = 1024
    max_pending: int = 1024
    max_requests: int = 1024


@dataclass
class OutlierDetection:
    consecutive_5xx: int = 5               # 5xx, connect failures, resets or try timeouts in a row
    interval: float = 10.0                 # an endpoint that stays well this long loses one repeat
    ejection: float = 30.0                 # ejected for ejection * times ejected ...
    max_ejection: float = 300.0            # ... up to this long
    max_ejected: float = 0.5               # fraction of endpoints


@dataclass
class HealthCheck:
    path: str = "/healthz"
    interval: float = 5.0
    unhealthy: int = 3
    healthy: int = 2
    timeout: float = 1.0                   # connect + response head
    expected_statuses: list[tuple[int, int]] = field(default_factory=lambda: [(200, 399)])
    host: Optional[str] = None             # Host of the probe; default: the service name


@dataclass
class ServiceTLS:
    mode: str = "disable"                  # disable | simple | mutual


@dataclass
class ServiceMatch:
    """One `match` entry: a hostname or a CIDR, with an optional port (None: any port)."""
    host: Optional[str] = None             # lower-case hostname, for the Host header
    cidr: Optional[str] = None             # e.g. "10.96.0.0/12", for the original destination
    port: Optional[int] = None


@dataclass
class Service:
    name: str
    match: list[ServiceMatch] = field(default_factory=list)
    endpoints: list[Address] = field(default_factory=list)   # empty: the original destination
    load_balancing: str = "round_robin"    # round_robin | least_request | random
    timeouts: Timeouts = field(default_factory=Timeouts)
    retries: Retries = field(default_factory=Retries)
    circuit_breaker: CircuitBreaker = field(default_factory=CircuitBreaker)
    outlier_detection: Optional[OutlierDetection] = None
    health_check: Optional[HealthCheck] = None
    tls: ServiceTLS = field(default_factory=ServiceTLS)
    # Idle upstream connections kept per endpoint; None: as many as max_connections. A
    # smaller cap makes closed-loop load over many connections reconnect all the time.
    pool_max_idle: Optional[int] = None


@dataclass
class WeightedService:
    name: str
    weight: int


@dataclass
class RouteMatch:
    path_prefix: Optional[str] = None
    path_exact: Optional[str] = None
    path_regex: Optional[str] = None
    methods: list[str] = field(default_factory=list)
    headers: dict[str, str] = field(default_factory=dict)     # lower-case name -> exact value


@dataclass
class Route:
    """A route; its policy sections stay plain dicts of parsed values until the policy
    compiler (fastpath) turns them into its own form."""
    name: str
    direction: str = "inbound"             # inbound | outbound
    match: RouteMatch = field(default_factory=RouteMatch)
    service: list[WeightedService] = field(default_factory=list)
    authn: Optional[dict] = None
    authz: Optional[dict] = None
    rate_limit: Optional[dict] = None
    max_request_body: Optional[int] = None
    headers: Optional[dict] = None
    cache: Optional[dict] = None
    fault: Optional[dict] = None


@dataclass
class KernelPolicy:
    deny_cidrs: list[str] = field(default_factory=list)
    allow_inbound_ports: list[int] = field(default_factory=list)   # empty: all ports allowed
    syn_rate_limit: Optional[float] = None                          # SYNs per second per source
    syn_burst: Optional[int] = None                                 # default: one second's worth


@dataclass
class TLS:
    cert: Optional[str] = None
    key: Optional[str] = None
    ca: Optional[str] = None


@dataclass
class Admin:
    listen: Address = ("127.0.0.1", 15000)


@dataclass
class AccessLog:
    path: Optional[str] = "stdout"         # None: off
    format: str = "json"                   # json, or a template string


@dataclass
class Tracing:
    propagate: list[str] = field(default_factory=lambda: ["w3c", "b3"])
    sample: float = 0.01
    otlp_endpoint: Optional[str] = None


@dataclass
class Telemetry:
    metrics_listen: Address = ("0.0.0.0", 15090)
    health_listen: Address = ("0.0.0.0", 15021)
    access_log: AccessLog = field(default_factory=AccessLog)
    tracing: Tracing = field(default_factory=Tracing)
    istio_compat: bool = False


@dataclass
class Config:
    workload: Workload = field(default_factory=Workload)
    workers: int = 1
    drain_timeout: float = 5.0
    log_level: str = "info"
    interception: Interception = field(default_factory=Interception)
    limits: Limits = field(default_factory=Limits)
    inbound: Inbound = field(default_factory=Inbound)
    outbound: Outbound = field(default_factory=Outbound)
    services: list[Service] = field(default_factory=list)
    routes: list[Route] = field(default_factory=list)
    kernel: KernelPolicy = field(default_factory=KernelPolicy)
    tls: TLS = field(default_factory=TLS)
    admin: Admin = field(default_factory=Admin)
    telemetry: Telemetry = field(default_factory=Telemetry)
    source: Optional[str] = None           # the file it was loaded from
    warnings: list[str] = field(default_factory=list)   # "path (line N): reason", accepted but doubtful
