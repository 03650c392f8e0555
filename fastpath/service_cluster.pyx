# cython: language_level=3
"""A service's upstream cluster: where a request for the service goes, and what guards it.

The one place that turns "this request is for service S" into an endpoint's connection
pool, composed of:

    load balancing      `pick`: round robin, least request (the less busy of two random
                        endpoints: power of two choices) or random, over the endpoints that
                        take requests: not ejected, and healthy by the active health check
    circuit breaker     CircuitBreaker (circuit_breaker.pyx): max requests, pending, connections
    retry policy        RetryPolicy (retry_policy.pyx), applied by the exchange
    outlier detection   OutlierDetector (outlier_detection.pyx), fed by `try_ended`
    health checks       probed by fastpath/health_check.py, results through `health_result`
    request timeout     the service's timeouts.request

A service without endpoints sends each request to its original destination; load
balancing, outlier detection and health checks then have nothing to choose from.

Decisions read C fields compiled once per config: a successful request costs a modulo or
two random draws and two counter updates. The endpoints' state (Endpoint) and the
breaker are carried over from the previous config's cluster of the same name, so a
reload keeps ejections, health and requests in flight; new limits take effect when the
config is swapped in (`activate`).
"""
import logging

from libc.stdlib cimport malloc, free

from fastpath.upstream cimport EndpointPool
from fastpath.endpoint cimport Endpoint
from fastpath.circuit_breaker cimport CircuitBreaker
from fastpath.retry_policy cimport RetryPolicy
from fastpath.outlier_detection cimport OutlierDetector
from fastpath.stats cimport (
    WorkerStats, M_OUTLIER_EJECTIONS, M_HEALTH_CHECKS, M_ENDPOINTS,
    ENDPOINT_AVAILABLE, ENDPOINT_EJECTED, ENDPOINT_UNHEALTHY,
)
from fastpath.fast_random cimport rng_seed, rng_below
from fastpath.circuit_breaker import worker_limit
import os

log = logging.getLogger("sidecar.upstream")

_LB = {"round_robin": LB_ROUND_ROBIN, "least_request": LB_LEAST_REQUEST, "random": LB_RANDOM}


cdef class ServiceCluster:
    def __cinit__(self, int index, service, pool_factory, ServiceCluster previous=None,
                  int workers=1, WorkerStats stats=None, int service_id=0, seed=None):
        """`pool_factory(host, port, service, breaker)` -> EndpointPool (the router's).
        `previous`: the last config's cluster of this service, whose endpoint state and
        breaker carry over. `workers` divides the breaker's limits; `seed` fixes the
        random draws (tests)."""
        cdef int i
        cdef Endpoint ep
        self.index = index
        self.name = service.name
        self.service = service
        self.stats = stats
        self.service_id = service_id
        self.lb = _LB[service.load_balancing]
        self.request_timeout = service.timeouts.request
        self.breaker = previous.breaker if previous is not None else CircuitBreaker()
        old = {}
        if previous is not None:
            old = {(e.host, e.port): e for e in previous.endpoints}
        self.endpoints = []
        for host, port in service.endpoints:
            ep = old.pop((host, port), None)
            self.endpoints.append(ep if ep is not None else Endpoint(host, port))
        self.n_endpoints = len(self.endpoints)
        self.pools = [pool_factory(host, port, service, self.breaker) for host, port in service.endpoints]
        self.destination_pool = pool_factory
        self.available = <int*>malloc(sizeof(int) * (self.n_endpoints or 1))
        if self.available == NULL:
            raise MemoryError()
        r = service.retries
        if r.attempts > 0:
            self.retry = RetryPolicy(r.attempts, r.on, r.per_try_timeout or 0.0, r.backoff.base,
                                     r.backoff.max, r.replay_buffer, seed)
        elif r.per_try_timeout:
            # No retries, but a per-try timeout still bounds the (only) try.
            self.retry = RetryPolicy(0, (), r.per_try_timeout, r.backoff.base, r.backoff.max, 0, seed)
        od = service.outlier_detection
        if od is not None:
            self.outlier = OutlierDetector(od.consecutive_5xx, od.interval, od.ejection,
                                           od.max_ejection, od.max_ejected)
        hc = service.health_check
        self.healthy_after = hc.healthy if hc is not None else 1
        self.unhealthy_after = hc.unhealthy if hc is not None else 1
        rng_seed(&self.rng, int.from_bytes(os.urandom(8), "little") if seed is None else seed)
        self.workers = workers
        self._refresh(0.0)

    def __dealloc__(self):
        free(self.available)

    def activate(self, double now):
        """Called as the config holding this cluster is swapped in (nothing before this
        changes state the running config shares): the breaker takes this config's limits
        (this worker's share) and the cluster's pools; without a health check (any
        longer) every endpoint counts as healthy, without outlier detection none stays
        ejected."""
        cdef Endpoint ep
        cb = self.service.circuit_breaker
        r = self.service.retries
        self.breaker.configure(worker_limit(cb.max_connections, self.workers),
                               worker_limit(cb.max_pending, self.workers),
                               worker_limit(cb.max_requests, self.workers),
                               r.budget, worker_limit(r.min_concurrency, self.workers)
                               if r.min_concurrency else 0,
                               self.stats, self.service_id, list(self.pools))
        for ep in self.endpoints:
            if self.service.health_check is None:
                ep.healthy = True
                ep.checks_passed = ep.checks_failed = 0
            if self.outlier is None:
                ep.ejected_until = 0
        self.active = True
        self._refresh(now)

    # -- load balancing ------------------------------------------------------------------

    cdef EndpointPool pick(self, object original_dst, double now, int avoid, int* index):
        """The pool of the endpoint for the next try, or None: no endpoint takes requests
        (503 UH), or none is configured and the request has no original destination.
        `avoid`: the endpoint of the failed try before (-1: none), chosen again only when
        it is the only one left. Sets *index (-1 for the original destination) and counts
        the try as active there until `try_ended`."""
        cdef int i
        cdef Endpoint ep
        index[0] = -1
        if self.n_endpoints == 0:
            if original_dst is not None:
                return self.destination_pool(original_dst[0], original_dst[1], self.service, self.breaker)
            return None
        if self.next_change and now >= self.next_change:
            self._refresh(now)
        if self.n_available == 0:
            return None
        i = self.available[0] if self.n_available == 1 else self._choose(avoid)
        index[0] = i
        ep = <Endpoint>self.endpoints[i]
        ep.active += 1
        return <EndpointPool>self.pools[i]

    cdef int _choose(self, int avoid):
        """An endpoint among two or more available ones, by the service's policy."""
        cdef int n = self.n_available
        cdef int a, b
        cdef Endpoint ea, eb
        if self.lb == LB_ROUND_ROBIN:
            a = self.next_endpoint % n
            self.next_endpoint += 1
            if self.available[a] == avoid:
                a = self.next_endpoint % n
                self.next_endpoint += 1
            return self.available[a]
        a = <int>rng_below(&self.rng, n)
        if self.lb == LB_RANDOM:
            if self.available[a] == avoid:
                a = (a + 1 + <int>rng_below(&self.rng, n - 1)) % n
            return self.available[a]
        # least request: the less busy of two distinct random endpoints
        b = <int>rng_below(&self.rng, n - 1)
        if b >= a:
            b += 1
        if self.available[a] == avoid:
            return self.available[b]
        if self.available[b] == avoid:
            return self.available[a]
        ea = <Endpoint>self.endpoints[self.available[a]]
        eb = <Endpoint>self.endpoints[self.available[b]]
        return self.available[b] if eb.active < ea.active else self.available[a]

    # -- outcomes, ejection, health ----------------------------------------------------------

    cdef void try_ended(self, int index, int outcome, double now):
        """A try on endpoint `index` is over: it is no longer active there; its outcome
        (if not reported yet) feeds outlier detection."""
        if index < 0:
            return
        (<Endpoint>self.endpoints[index]).active -= 1
        if outcome != OUTCOME_NONE:
            self.report(index, outcome, now)

    cdef void report(self, int index, int outcome, double now):
        """What a try says of endpoint `index`: success ends its failure streak, a failure
        may eject it."""
        cdef Endpoint ep
        cdef double took
        if index < 0:
            return
        ep = <Endpoint>self.endpoints[index]
        if outcome == OUTCOME_SUCCESS:
            ep.failures = 0
        elif outcome == OUTCOME_FAILURE:
            if self.outlier is None:
                ep.failures += 1
                return
            if self.outlier.failed(ep, now, self._ejected_count(), self.n_endpoints):
                took = self.outlier.eject(ep, now)
                self.ejections_total += 1
                if self.stats is not None:
                    self.stats.counter_add(M_OUTLIER_EJECTIONS, self.service_id, 0, 1)
                log.warning("service %s: endpoint %s:%d ejected for %.3gs after %d failures in "
                            "a row (ejection %d)", self.name, ep.host, ep.port, took,
                            self.outlier.consecutive, ep.ejections)
                self._refresh(now)

    cdef int _ejected_count(self):
        cdef int n = 0
        cdef Endpoint ep
        for ep in self.endpoints:
            if ep.ejected_until > 0:
                n += 1
        return n

    cdef void _refresh(self, double now):
        """Recomputes the endpoints that take requests; ends the ejections that are over."""
        cdef int i
        cdef Endpoint ep
        cdef double next_change = 0
        self.n_available = 0
        for i in range(self.n_endpoints):
            ep = <Endpoint>self.endpoints[i]
            if ep.ejected_until > 0 and now >= ep.ejected_until:
                ep.ejected_until = 0
                ep.well_since = now
                ep.failures = 0
                log.info("service %s: endpoint %s:%d back from ejection", self.name, ep.host, ep.port)
            if ep.ejected_until > 0:
                if next_change == 0 or ep.ejected_until < next_change:
                    next_change = ep.ejected_until
            elif ep.healthy:
                self.available[self.n_available] = i
                self.n_available += 1
        self.next_change = next_change
        if self.active:
            self._report_endpoints()

    def _report_endpoints(self):
        cdef Endpoint ep
        cdef int ejected = 0, unhealthy = 0
        if self.stats is None or self.n_endpoints == 0:
            return
        for ep in self.endpoints:
            if ep.ejected_until > 0:
                ejected += 1
            elif not ep.healthy:
                unhealthy += 1
        self.stats.gauge_set(M_ENDPOINTS, self.service_id, ENDPOINT_AVAILABLE, self.n_available)
        self.stats.gauge_set(M_ENDPOINTS, self.service_id, ENDPOINT_EJECTED, ejected)
        self.stats.gauge_set(M_ENDPOINTS, self.service_id, ENDPOINT_UNHEALTHY, unhealthy)

    def health_result(self, int index, bint passed, double now):
        """An active health check's probe of endpoint `index` passed or failed: after
        `healthy` passes (or `unhealthy` failures) in a row the endpoint changes state."""
        cdef Endpoint ep = <Endpoint>self.endpoints[index]
        if self.stats is not None:
            self.stats.counter_add(M_HEALTH_CHECKS, self.service_id, 0 if passed else 1, 1)
        if passed:
            ep.checks_passed += 1
            ep.checks_failed = 0
            if not ep.healthy and ep.checks_passed >= self.healthy_after:
                ep.healthy = True
                log.info("service %s: endpoint %s:%d healthy again (%d health checks passed)",
                         self.name, ep.host, ep.port, ep.checks_passed)
                self._refresh(now)
        else:
            ep.checks_failed += 1
            ep.checks_passed = 0
            if ep.healthy and ep.checks_failed >= self.unhealthy_after:
                ep.healthy = False
                log.warning("service %s: endpoint %s:%d unhealthy (%d health checks failed)",
                            self.name, ep.host, ep.port, ep.checks_failed)
                self._refresh(now)

    def tick(self, double now):
        """Housekeeping a few times a second (the worker's sweep): ejections that are
        over end even without traffic, and well endpoints lose counted ejections."""
        cdef Endpoint ep
        if self.next_change and now >= self.next_change:
            self._refresh(now)
        if self.outlier is not None:
            for ep in self.endpoints:
                self.outlier.decay(ep, now)

    def retire(self):
        """The service is gone from the config: its gauges go back to 0."""
        if self.stats is not None:
            self.breaker.configure(self.breaker.max_connections, self.breaker.max_pending,
                                   self.breaker.max_requests, 0.0, 0, None, 0, [])
            if self.n_endpoints:
                for state in (ENDPOINT_AVAILABLE, ENDPOINT_EJECTED, ENDPOINT_UNHEALTHY):
                    self.stats.gauge_set(M_ENDPOINTS, self.service_id, state, 0)

    # -- Python-level forms, for tests, tools and the health checker ----------------------------

    def pick_pool(self, original_dst=None, double now=0.0, int avoid=-1):
        """(pool, endpoint index) of the next try, counted active until `end_try`."""
        cdef int index = -1
        pool = self.pick(original_dst, now, avoid, &index)
        return pool, index

    def report_outcome(self, int index, str outcome, double now=0.0):
        self.report(index, {"success": OUTCOME_SUCCESS, "failure": OUTCOME_FAILURE}[outcome], now)

    def end_try(self, int index, str outcome="success", double now=0.0):
        self.try_ended(index, {"none": OUTCOME_NONE, "success": OUTCOME_SUCCESS,
                               "failure": OUTCOME_FAILURE}[outcome], now)

    def pool_of(self, int index):
        return self.pools[index]

    @property
    def available_count(self):
        return self.n_available

    def state(self):
        return {"name": self.name, "endpoints": [e.state() for e in self.endpoints],
                "available": self.n_available, "circuit_breaker": self.breaker.state(),
                "ejections": self.ejections_total}
