# cython: language_level=3
"""A service's circuit breaker: the limits that keep one slow or failing service from
holding every request (and every connection) of the caller.

Three limits, as Envoy's cluster circuit breakers:

    max_connections   upstream connections to the service's endpoints, all together. A
                      request that finds none idle and the limit reached waits (pending);
                      an idle connection to another endpoint is closed to make room.
    max_pending       requests waiting for a connection: past it, 503 at once (flag UO)
    max_requests      requests in flight to the service, pending ones included: past it,
                      503 at once (flag UO)

and the retry budget (Envoy's `retry_budget`, Linkerd's idea): retries in flight may be at
most `budget` of the requests in flight, or `min_retries`, whichever is more, so retries
cannot multiply the load of a service that is already failing.

State is per worker process (the kernel spreads connections over workers): the config's
limits are divided by `workers` (rounded up, at least 1), so they hold for the sidecar
when the load is spread evenly. The object outlives a reload while its service remains,
so requests in flight keep counting against the limits they began under; `configure`
takes the new limits when the new config is swapped in.

`is_open` (sidecar_circuit_breaker_open{service}) is 1 while the next request would be
refused: requests at max_requests, or the pending queue full. It is written to shared
memory only when it changes.
"""
from fastpath.stats cimport WorkerStats, M_CIRCUIT_BREAKER_OPEN


def worker_limit(int limit, int workers):
    """One worker's share of a limit: limit / workers rounded up, at least 1."""
    if workers < 1:
        workers = 1
    return max(1, (limit + workers - 1) // workers)


cdef class CircuitBreaker:
    def __cinit__(self):
        self.max_connections = 1024
        self.max_pending = 1024
        self.max_requests = 1024
        self.budget = 0.2
        self.min_retries = 3
        self.pools = []
        self.service_id = 0

    def configure(self, int max_connections, int max_pending, int max_requests, double budget,
                  int min_retries, WorkerStats stats=None, int service_id=0, list pools=None):
        """Takes a config's limits (already this worker's share) and where the gauge goes.
        Requests in flight stay counted."""
        self.max_connections = max_connections
        self.max_pending = max_pending
        self.max_requests = max_requests
        self.budget = budget
        self.min_retries = min_retries
        if self.stats is not None and (stats is not self.stats or service_id != self.service_id):
            self.stats.gauge_set(M_CIRCUIT_BREAKER_OPEN, self.service_id, 0, 0)
            self.is_open = False
        self.stats = stats
        self.service_id = service_id
        self.pools = pools if pools is not None else []
        self._update_open()

    cdef bint admit_request(self):
        """Counts a new request to the service; False (refused: UO) at max_requests."""
        if self.requests >= self.max_requests:
            self.overflows += 1
            return False
        self.requests += 1
        if self.requests >= self.max_requests:
            self._update_open()
        return True

    cdef void request_done(self):
        self.requests -= 1
        if self.is_open:
            self._update_open()

    cdef bint admit_retry(self):
        """Takes a retry slot when the budget allows one more retry in flight."""
        cdef double allowed = self.budget * self.requests
        if allowed < self.min_retries:
            allowed = self.min_retries
        if self.retries + 1 > allowed:
            self.retries_refused += 1
            return False
        self.retries += 1
        return True

    cdef void retry_done(self):
        self.retries -= 1

    cdef void pending_changed(self, int delta):
        self.pending += delta
        if self.is_open or self.pending >= self.max_pending:
            self._update_open()

    cdef void _update_open(self):
        cdef bint now_open = self.requests >= self.max_requests or self.pending >= self.max_pending
        if now_open == self.is_open:
            return
        self.is_open = now_open
        if self.stats is not None:
            self.stats.gauge_set(M_CIRCUIT_BREAKER_OPEN, self.service_id, 0, 1 if now_open else 0)

    # -- Python-level forms, for tests and /stats ------------------------------------------

    def try_admit(self):
        return self.admit_request()

    def finish(self):
        self.request_done()

    def try_retry(self):
        return self.admit_retry()

    def finish_retry(self):
        self.retry_done()

    def state(self):
        return {"connections": self.connections, "pending": self.pending,
                "requests": self.requests, "retries": self.retries, "open": self.is_open,
                "overflows": self.overflows, "retries_refused": self.retries_refused,
                "max_connections": self.max_connections, "max_pending": self.max_pending,
                "max_requests": self.max_requests}
