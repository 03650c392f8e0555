# cython: language_level=3
"""The outbound pipeline: accept -> original destination -> detect -> HTTP/1.1 or TCP.

Connections the app makes are redirected to the outbound listener (127.0.0.1:15001). The
first bytes decide the protocol: an HTTP/1 request line start goes to the HTTP proxy,
anything else (TLS, a database protocol) is tunnelled to the original destination. If
the client sends nothing within `protocol_detect_timeout`, the server speaks first (SMTP,
MySQL...): tunnel at once.

HTTP requests go to a configured service when one matches (by original destination
CIDR:port, or by Host), to one of its endpoints; otherwise to the original destination.
"""
import ipaddress
import logging
import time

from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_GET_SIZE

from fastpath.downstream cimport HttpDownstream, ListenerContext
from fastpath.parser cimport Limits
from fastpath.upstream cimport EndpointPool
from fastpath.service_cluster cimport ServiceCluster
from fastpath.circuit_breaker cimport CircuitBreaker
from fastpath.circuit_breaker import worker_limit
from fastpath.original_destination import original_destination
from fastpath.tunnel import start_tunnel

log = logging.getLogger("sidecar.outbound")

DEF DETECT_BYTES = 24


cdef bint looks_like_http1(bytes first):
    """True when `first` starts like an HTTP/1 request line: a method token and a SP."""
    cdef const unsigned char* p = <const unsigned char*>PyBytes_AS_STRING(first)
    cdef Py_ssize_t n = PyBytes_GET_SIZE(first)
    cdef Py_ssize_t i
    for i in range(min(n, DETECT_BYTES)):
        if p[i] == 32:
            return i > 0
        if not (65 <= p[i] <= 90 or 97 <= p[i] <= 122 or p[i] == 45 or p[i] == 95):
            return False
    return n < DETECT_BYTES


def is_http1_start(bytes first):
    return looks_like_http1(first)


class OutboundRouter:
    """The outbound destinations: one ServiceCluster per configured service (found by
    Host or by original destination, see the module rules), and the pools of original
    destinations. A service's endpoints have pools of their own (they share its circuit
    breaker); requests to no service share one pool per (host, port).

    Built per config; `previous` (the running config's router) hands each service's
    endpoint state and breaker to the cluster of the same name. `activate` runs when the
    config is swapped in: limits take effect, health checks move to the new clusters."""

    def __init__(self, loop, Limits limits, services=(), double connect_timeout=1.0,
                 double idle_timeout=60.0, previous=None, int workers=1, stats=None,
                 service_ids=None, seed=None):
        self.loop = loop
        self.limits = limits
        self.connect_timeout = connect_timeout
        self.idle_timeout = idle_timeout
        self.workers = workers
        self.pools = {}
        self.clusters = []         # config index -> ServiceCluster
        self.by_host = {}          # (host, port or None) -> ServiceCluster
        self.by_cidr = []          # (network, port or None, ServiceCluster)
        self.health_checkers = []
        self.active = False
        old = {c.name: c for c in previous.clusters} if previous is not None else {}
        for index, svc in enumerate(services):
            cluster = ServiceCluster(index, svc, self.pool, old.get(svc.name), workers, stats,
                                     service_ids[index] if service_ids else 0,
                                     None if seed is None else seed * 7919 + index)
            self.clusters.append(cluster)
            for m in svc.match:
                if m.host:
                    self.by_host[(m.host, m.port)] = cluster
                if m.cidr:
                    self.by_cidr.append((ipaddress.ip_network(m.cidr, strict=False), m.port, cluster))

    def pool(self, host, int port, svc=None, CircuitBreaker breaker=None):
        """The pool of endpoint (host, port) of service `svc` (None: an original
        destination outside any service), made on first use."""
        key = (svc.name, host, port) if svc is not None else (host, port)
        pool = self.pools.get(key)
        if pool is None:
            if svc is not None:
                max_connections = worker_limit(svc.circuit_breaker.max_connections, self.workers)
                max_idle = svc.pool_max_idle
                if max_idle is None:
                    max_idle = max_connections
                pool = EndpointPool(self.loop, host, port, self.limits, max_connections, max_idle,
                                    svc.timeouts.idle, svc.timeouts.connect, breaker)
                if breaker is not None and self.active:
                    # An original destination of a service without endpoints: it shares
                    # the service's connection limit with the others.
                    breaker.pools.append(pool)
            else:
                pool = EndpointPool(self.loop, host, port, self.limits, 1024, 1024,
                                    self.idle_timeout, self.connect_timeout)
            self.pools[key] = pool
        return pool

    def activate(self, previous=None, now=None):
        """The config is swapped in: clusters take their limits, health checks start here
        and stop in `previous`, services gone from the config drop their gauges."""
        from fastpath.health_check import HealthChecker
        now = time.monotonic() if now is None else now
        for cluster in self.clusters:
            cluster.activate(now)
        self.active = True
        if previous is not None:
            previous.stop_health_checks()
            names = {c.name for c in self.clusters}
            for cluster in previous.clusters:
                if cluster.name not in names:
                    cluster.retire()
        if self.loop is not None:
            for cluster in self.clusters:
                if cluster.service.health_check is not None and cluster.endpoints:
                    checker = HealthChecker(self.loop, cluster, cluster.service.health_check)
                    checker.start()
                    self.health_checkers.append(checker)

    def stop_health_checks(self):
        for checker in self.health_checkers:
            checker.stop()
        self.health_checkers = []

    def tick(self, double now):
        """The worker's housekeeping, a few times a second."""
        for cluster in self.clusters:
            cluster.tick(now)

    def cluster_for(self, original_dst, bytes host_header):
        """The ServiceCluster a request is for (by Host, then original destination), or None."""
        if host_header:
            host, _, port = host_header.decode("latin-1").lower().rpartition(":")
            if not host or not port.isdigit():
                host, port = host_header.decode("latin-1").lower(), None
            cluster = (self.by_host.get((host, int(port) if port else None))
                       or self.by_host.get((host, None)))
            if cluster is not None:
                return cluster
        if original_dst is not None and self.by_cidr:
            addr = ipaddress.ip_address(original_dst[0])
            for net, port, cluster in self.by_cidr:
                if addr in net and (port is None or port == original_dst[1]):
                    return cluster
        return None

    def pool_for(self, original_dst, bytes host_header):
        """The pool a request without a route service goes to, or None."""
        cluster = self.cluster_for(original_dst, host_header)
        if cluster is not None:
            pool, index = cluster.pick_pool(original_dst)
            cluster.end_try(index, "none")
            return pool
        if original_dst is not None:
            return self.pool(original_dst[0], original_dst[1])
        return None

    def close_idle(self, double now):
        for pool in self.pools.values():
            pool.close_idle(now)

    def state(self):
        """The services' endpoints and breakers, for /stats."""
        return [cluster.state() for cluster in self.clusters]


cdef class OutboundAccept:
    """First protocol of an outbound connection: waits for the first bytes to decide."""
    cdef ListenerContext ctx
    cdef double detect_timeout
    cdef object transport
    cdef object original_dst
    cdef object timer
    cdef bint decided

    def __cinit__(self, ListenerContext ctx, double detect_timeout):
        self.ctx = ctx
        self.detect_timeout = detect_timeout

    def connection_made(self, transport):
        self.transport = transport
        self.original_dst = original_destination(transport.get_extra_info("socket"))
        self.timer = self.ctx.loop.call_later(self.detect_timeout, self._silent_client)

    def data_received(self, bytes data):
        if self.decided:
            return
        self.decided = True
        self.timer.cancel()
        if looks_like_http1(data):
            self._become_http(data)
        elif self.original_dst is None:
            # Not HTTP/1 (TLS, a binary protocol) and nowhere to tunnel it: refuse now
            # rather than wait for a line end that will never come.
            self._become_http(None).refuse_not_http()
        else:
            start_tunnel(self.ctx.loop, self.transport, self.original_dst[0],
                         self.original_dst[1], data, 5.0, self.ctx.worker_stats,
                         self.ctx.direction_index)

    def _silent_client(self):
        if self.decided:
            return
        self.decided = True
        if self.original_dst is not None:
            # Server-speaks-first protocol: connect and let the server talk.
            start_tunnel(self.ctx.loop, self.transport, self.original_dst[0], self.original_dst[1],
                         None, 5.0, self.ctx.worker_stats, self.ctx.direction_index)
        else:
            self._become_http(None)

    def _become_http(self, bytes first):
        cdef HttpDownstream http = HttpDownstream(self.ctx)
        http.original_dst = self.original_dst
        self.transport.set_protocol(http)
        http.connection_made(self.transport)
        if first:
            http.data_received(first)
        return http

    def eof_received(self):
        return False

    def connection_lost(self, exc):
        self.decided = True
        if self.timer is not None:
            self.timer.cancel()


def outbound_protocol_factory(ListenerContext ctx, double detect_timeout):
    """The protocol factory for the outbound listener."""
    return lambda: OutboundAccept(ctx, detect_timeout)
