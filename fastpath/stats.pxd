# Worker counters in shared memory; see stats.pyx for the layout and the rules.
#
# The metric numbers and the sub-label values below are ABI with the manager's
# collectors (sidecar/metrics/worker_stats.py names them): change them together.
from libc.stdint cimport uint64_t, int64_t, uint32_t
from fastpath.exchange cimport ExchangeRecord

cdef enum:
    STATS_MAGIC = 0x53435354          # "SCST"
    STATS_VERSION = 1
    DURATION_BUCKETS = 15             # 14 finite bounds (see DURATION_BOUNDS) + Inf
    MAX_LABEL_ID = 4095               # 12-bit stable ids of route and service names
    OTHER_ID = 4095                   # a name past the table: label "_other"

# Directions and protocols: the indices of the connection gauges.
cdef enum:
    DIR_INBOUND = 0
    DIR_OUTBOUND = 1
    PROTO_HTTP = 0
    PROTO_TCP = 1

# Counters not derivable from an ExchangeRecord: keyed (metric, a, b) -> int64.
# `a` is a stable route or service id (see WorkerStats.route_id/service_id), `b` the
# sub-label value listed with each metric.
cdef enum StatsMetric:
    M_RATELIMIT = 1             # a=route, b=Decision (exchange.pxd)
    M_AUTHZ = 2                 # a=route, b=Decision
    M_CACHE = 3                 # a=route, b=CacheResult
    M_RETRIES = 4               # a=service, b=RetryReason
    M_CIRCUIT_BREAKER_OPEN = 5  # gauge: a=service, value 0/1
    M_ACCESS_LOG_DROPPED = 6    # a=b=0: lines dropped because the queue was full
    M_SPANS_DROPPED = 7         # a=b=0: spans dropped (queue full, or unsent at shutdown)
    M_SPANS_EXPORTED = 8        # a=b=0: spans the collector accepted
    M_SPANS_FAILED = 9          # a=b=0: spans lost to export errors (or rejected)
    M_OUTLIER_EJECTIONS = 10    # a=service, b=0: endpoints ejected by outlier detection
    M_HEALTH_CHECKS = 11        # a=service, b=0 passed / 1 failed: active health check probes
    M_ENDPOINTS = 12            # gauge: a=service, b=EndpointState: endpoints in that state
    M_TCP_BYTES = 13            # a=direction, b=0: bytes from the downstream client through a
                                # byte tunnel, b=1: bytes to it (spliced ones included)
    M_TCP_TUNNELS = 14          # a=direction, b=TunnelPath (fastpath/tunnel.pyx): tunnels by
                                # how their bytes are forwarded

cdef enum EndpointState:
    ENDPOINT_AVAILABLE = 0      # takes requests
    ENDPOINT_EJECTED = 1        # ejected by outlier detection
    ENDPOINT_UNHEALTHY = 2      # failed its active health check

cdef enum RetryReason:
    RETRY_CONNECT_FAILURE = 0
    RETRY_RESET = 1
    RETRY_TIMEOUT = 2
    RETRY_STATUS = 3            # a retriable status (retries.on lists 4xx/5xx codes)

cdef struct StatsHeader:
    uint32_t magic
    uint32_t version
    uint32_t exchange_capacity
    uint32_t counter_capacity
    uint64_t exchange_overflow          # exchanges counted under the "_other" labels
    uint64_t counter_overflow           # counter updates that found no free slot (lost)
    int64_t connections_active[2][2]    # [direction][protocol]
    uint64_t connections_total[2][2]
    uint64_t config_generation          # the snapshot the worker runs
    uint64_t reserved[4]

cdef struct ExchangeSlot:
    uint64_t key                        # 0: free; else packed labels (see pack_exchange_key)
    uint64_t requests
    uint64_t request_bytes
    uint64_t response_bytes
    uint64_t duration_sum_ns
    uint64_t duration_buckets[DURATION_BUCKETS]   # per bucket, not cumulative

cdef struct CounterSlot:
    uint64_t key                        # 0: free; else 1<<63 | metric<<32 | a<<16 | b
    int64_t value


cdef class WorkerStats:
    """One worker's writer of its shared-memory segment (single writer, C calls only)."""
    cdef object mapping                 # the mmap holding the segment alive
    cdef StatsHeader* header
    cdef ExchangeSlot* exchanges
    cdef CounterSlot* counters
    cdef uint32_t exchange_mask
    cdef uint32_t counter_mask
    # config index -> stable id, for the running snapshot and the one before it (an
    # exchange that started before the last reload is counted with the labels it began with)
    cdef int* route_ids[2][2]           # [current/previous][direction]
    cdef int n_routes[2][2]
    cdef int* service_ids[2]
    cdef int n_services[2]
    cdef double applied_at              # monotonic time the current snapshot took effect

    cdef void record_exchange(self, int direction, ExchangeRecord* rec, double now) noexcept
    cdef void connection_opened(self, int direction, int protocol) noexcept
    cdef void connection_closed(self, int direction, int protocol) noexcept
    cdef void counter_add(self, int metric, int a, int b, int64_t value) noexcept
    cdef void gauge_set(self, int metric, int a, int b, int64_t value) noexcept
    cdef int route_id(self, int direction, int route_index) noexcept
    cdef int service_id(self, int service_index) noexcept
    cdef void count_retry(self, int service_index, int reason) noexcept
    cdef void set_circuit_breaker_open(self, int service_index, bint is_open) noexcept
