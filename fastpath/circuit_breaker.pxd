# Declarations of a service's circuit breaker; see circuit_breaker.pyx.
from fastpath.stats cimport WorkerStats

cdef class CircuitBreaker:
    cdef readonly int max_connections   # this worker's share of each limit
    cdef readonly int max_pending
    cdef readonly int max_requests
    cdef readonly int connections       # open upstream connections of the service's pools
    cdef readonly int pending           # requests queued for a connection
    cdef readonly int requests          # requests admitted and not finished (pending included)
    cdef readonly int retries           # retries in flight: the retry budget counts these
    cdef double budget                  # retries in flight, as a share of `requests`
    cdef int min_retries                # retries in flight allowed whatever the budget
    cdef readonly bint is_open          # the next request would be refused (the gauge)
    cdef readonly unsigned long long overflows          # requests refused: 503 UO
    cdef readonly unsigned long long retries_refused    # retries the budget refused
    cdef public list pools              # the service's EndpointPools (upstream.pyx uses them)
    cdef WorkerStats stats
    cdef int service_id                 # stable label id of the service (stats)

    cdef bint admit_request(self)
    cdef void request_done(self)
    cdef bint admit_retry(self)
    cdef void retry_done(self)
    cdef void pending_changed(self, int delta)
    cdef void _update_open(self)
