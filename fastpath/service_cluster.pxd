# Declarations of a service's upstream cluster; see service_cluster.pyx.
from fastpath.upstream cimport EndpointPool
from fastpath.endpoint cimport Endpoint
from fastpath.circuit_breaker cimport CircuitBreaker
from fastpath.retry_policy cimport RetryPolicy
from fastpath.outlier_detection cimport OutlierDetector
from fastpath.stats cimport WorkerStats
from fastpath.fast_random cimport Rng

cdef enum LoadBalancing:
    LB_ROUND_ROBIN = 0
    LB_LEAST_REQUEST
    LB_RANDOM

# What a try's end says of its endpoint (ServiceCluster.try_ended).
cdef enum TryOutcome:
    OUTCOME_NONE = 0     # nothing known of the endpoint (the client went away, a local answer)
    OUTCOME_SUCCESS      # a response below 500
    OUTCOME_FAILURE      # a 5xx, a connect failure, a reset, a timeout

cdef class ServiceCluster:
    cdef readonly int index              # in config `services` (ExchangeRecord.service)
    cdef readonly str name
    cdef readonly object service         # the config's Service
    cdef list pools                      # one EndpointPool per configured endpoint (this snapshot)
    cdef readonly list endpoints         # one Endpoint per configured endpoint (kept across reloads)
    cdef int n_endpoints
    cdef int* available                  # indices of the endpoints that take requests
    cdef int n_available
    cdef double next_change              # when an ejection ends (0: none pending)
    cdef int lb                          # LoadBalancing
    cdef unsigned int next_endpoint      # round robin
    cdef Rng rng
    cdef readonly CircuitBreaker breaker
    cdef readonly RetryPolicy retry      # None: no retries
    cdef readonly OutlierDetector outlier    # None: no outlier detection
    cdef readonly double request_timeout     # to the last response byte, retries included
    cdef int healthy_after               # health check thresholds (probes in a row)
    cdef int unhealthy_after
    cdef object destination_pool         # the router's pool factory: no endpoints configured
    cdef WorkerStats stats
    cdef int service_id                  # stable label id (stats)
    cdef readonly unsigned long long ejections_total
    cdef int workers                     # worker processes: the breaker's limits are divided
    cdef bint active                     # swapped in (activate): reports its gauges

    cdef EndpointPool pick(self, object original_dst, double now, int avoid, int* index)
    cdef int _choose(self, int avoid)
    cdef void try_ended(self, int index, int outcome, double now)
    cdef void report(self, int index, int outcome, double now)
    cdef void _refresh(self, double now)
    cdef int _ejected_count(self)
