# cython: language_level=3
"""Worker counters in shared memory: what a request costs the metrics is a few C stores.

Each worker process owns one segment (a memfd the manager creates, maps, and passes to the
worker at spawn). The worker is the only writer; the manager's collectors read every
segment at scrape time (`read_segment`) and add them up. Nothing here takes a lock or
calls Python on the request path.

Layout of a segment:

    StatsHeader            capacities, overflow counts, connection gauges, generation
    ExchangeSlot[E]        one per label set (direction, route, service, method, status,
                           response flags): requests, bytes, a duration histogram
    CounterSlot[C]         (metric, a, b) -> int64: decisions, cache, retries, breakers...

Both tables are open-addressed hash tables (E and C powers of two, linear probing, at most
MAX_PROBES slots looked at). A slot's key is written once and never removed, so a reader
sees a key with zeroes or with counts, never a torn key. A label set that finds no slot
is counted under the "_other" route and service of its direction (inserted first, so it
always has a slot): counts are never lost, only their labels when the table is full.

Route and service labels are stable small ids (1..4094) that the manager assigns to names
and never reuses, so counters keep their meaning across reloads; the worker translates a
record's config indices to ids with the tables of the snapshot the exchange began under.
Id 0 is "no route" / "no configured service"; OTHER_ID is "_other".
"""
from cpython.buffer cimport PyObject_GetBuffer, PyBuffer_Release, PyBUF_WRITABLE, PyBUF_SIMPLE
from libc.stdlib cimport malloc, free
from libc.string cimport memset
from libc.stdint cimport uint64_t, int64_t, uint32_t

from fastpath.exchange cimport ExchangeRecord

DEF MAX_PROBES = 32

# Upper bounds of the duration histogram, in seconds (Prometheus `le`), then +Inf.
DURATION_BOUNDS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5,
                   1.0, 2.5, 5.0, 10.0)
cdef double C_BOUNDS[14]
for _i, _b in enumerate(DURATION_BOUNDS):
    C_BOUNDS[_i] = _b

DEFAULT_EXCHANGE_CAPACITY = 4096
DEFAULT_COUNTER_CAPACITY = 1024
OTHER = OTHER_ID
LABEL_ID_LIMIT = MAX_LABEL_ID


cdef inline uint64_t mix64(uint64_t x) noexcept:
    # splitmix64's finalizer: spreads the packed label bits over the table.
    x ^= x >> 30
    x *= <uint64_t>0xbf58476d1ce4e5b9
    x ^= x >> 27
    x *= <uint64_t>0x94d049bb133111eb
    x ^= x >> 31
    return x


cdef inline uint64_t pack_exchange_key(int direction, int method, int status, unsigned int flags,
                                       int route_id, int service_id) noexcept:
    return ((<uint64_t>1) << 63 | <uint64_t>(direction & 1)
            | (<uint64_t>(method & 0xF)) << 1
            | (<uint64_t>(status & 0x3FF)) << 5
            | (<uint64_t>(flags & 0xFFFF)) << 15
            | (<uint64_t>(route_id & 0xFFF)) << 31
            | (<uint64_t>(service_id & 0xFFF)) << 43)


cdef inline uint64_t pack_counter_key(int metric, int a, int b) noexcept:
    return (<uint64_t>1) << 63 | (<uint64_t>(metric & 0xFF)) << 32 | (<uint64_t>(a & 0xFFFF)) << 16 | <uint64_t>(b & 0xFFFF)


cdef inline size_t header_size() noexcept:
    return (sizeof(StatsHeader) + 63) & ~(<size_t>63)


def segment_size(int exchange_capacity=DEFAULT_EXCHANGE_CAPACITY,
                 int counter_capacity=DEFAULT_COUNTER_CAPACITY):
    """Bytes of a segment with these capacities (powers of two)."""
    return header_size() + exchange_capacity * sizeof(ExchangeSlot) + counter_capacity * sizeof(CounterSlot)


cdef class _Segment:
    """A segment's tables, seen through a writable buffer (an mmap)."""
    cdef Py_buffer view
    cdef bint held
    cdef StatsHeader* header
    cdef ExchangeSlot* exchanges
    cdef CounterSlot* counters

    def __cinit__(self, mapping):
        PyObject_GetBuffer(mapping, &self.view, PyBUF_WRITABLE | PyBUF_SIMPLE)
        self.held = True
        if <size_t>self.view.len < header_size():
            raise ValueError("stats segment too small")
        self.header = <StatsHeader*>self.view.buf
        self._locate()

    cdef _locate(self):
        cdef char* base = <char*>self.view.buf
        self.exchanges = <ExchangeSlot*>(base + header_size())
        self.counters = <CounterSlot*>(base + header_size()
                                       + self.header.exchange_capacity * sizeof(ExchangeSlot))

    def release(self):
        if self.held:
            PyBuffer_Release(&self.view)
            self.held = False

    def __dealloc__(self):
        if self.held:
            PyBuffer_Release(&self.view)


cdef ExchangeSlot* find_exchange(StatsHeader* h, ExchangeSlot* table, uint64_t key) noexcept:
    cdef uint32_t mask = h.exchange_capacity - 1
    cdef uint32_t i = <uint32_t>mix64(key) & mask
    cdef int probes
    for probes in range(MAX_PROBES):
        if table[i].key == key:
            return &table[i]
        if table[i].key == 0:
            table[i].key = key
            return &table[i]
        i = (i + 1) & mask
    return NULL


cdef CounterSlot* find_counter(StatsHeader* h, CounterSlot* table, uint64_t key) noexcept:
    cdef uint32_t mask = h.counter_capacity - 1
    cdef uint32_t i = <uint32_t>mix64(key) & mask
    cdef int probes
    for probes in range(MAX_PROBES):
        if table[i].key == key:
            return &table[i]
        if table[i].key == 0:
            table[i].key = key
            return &table[i]
        i = (i + 1) & mask
    return NULL


def init_segment(mapping, int exchange_capacity=DEFAULT_EXCHANGE_CAPACITY,
                 int counter_capacity=DEFAULT_COUNTER_CAPACITY):
    """Formats a zero-filled segment (the manager does this before the worker starts)."""
    if exchange_capacity & (exchange_capacity - 1) or counter_capacity & (counter_capacity - 1):
        raise ValueError("capacities must be powers of two")
    if len(mapping) < segment_size(exchange_capacity, counter_capacity):
        raise ValueError("stats segment too small for these capacities")
    cdef _Segment seg = _Segment(mapping)
    cdef int d
    try:
        seg.header.magic = STATS_MAGIC
        seg.header.version = STATS_VERSION
        seg.header.exchange_capacity = exchange_capacity
        seg.header.counter_capacity = counter_capacity
        seg._locate()
        for d in range(2):
            find_exchange(seg.header, seg.exchanges, pack_exchange_key(d, 0, 0, 0, OTHER_ID, OTHER_ID))
    finally:
        seg.release()


cdef class WorkerStats:
    def __cinit__(self, mapping):
        cdef _Segment seg = _Segment(mapping)
        if seg.header.magic != STATS_MAGIC or seg.header.version != STATS_VERSION:
            seg.release()
            raise ValueError("not a stats segment (or another version)")
        # The worker keeps the buffer for its lifetime: the pointers stay valid.
        self.mapping = seg
        self.header = seg.header
        self.exchanges = seg.exchanges
        self.counters = seg.counters
        self.exchange_mask = self.header.exchange_capacity - 1
        self.counter_mask = self.header.counter_capacity - 1

    def __dealloc__(self):
        cdef int g, d
        for g in range(2):
            for d in range(2):
                free(self.route_ids[g][d])
            free(self.service_ids[g])

    def set_labels(self, route_ids_inbound, route_ids_outbound, service_ids,
                   double applied_at, unsigned long long generation=0):
        """Installs the snapshot's config index -> stable id tables (the previous ones stay
        for exchanges that began under them). Called by the worker as it applies a config."""
        cdef int g, d, i
        cdef int* arr
        free(self.route_ids[1][0])
        free(self.route_ids[1][1])
        free(self.service_ids[1])
        for d in range(2):
            self.route_ids[1][d] = self.route_ids[0][d]
            self.n_routes[1][d] = self.n_routes[0][d]
        self.service_ids[1] = self.service_ids[0]
        self.n_services[1] = self.n_services[0]
        for d, ids in enumerate((route_ids_inbound, route_ids_outbound)):
            self.route_ids[0][d] = _int_array(ids)
            self.n_routes[0][d] = len(ids)
        self.service_ids[0] = _int_array(service_ids)
        self.n_services[0] = len(service_ids)
        self.applied_at = applied_at
        self.header.config_generation = generation

    cdef int route_id(self, int direction, int route_index) noexcept:
        if route_index < 0:
            return 0
        if route_index >= self.n_routes[0][direction & 1]:
            return OTHER_ID
        return self.route_ids[0][direction & 1][route_index]

    cdef int service_id(self, int service_index) noexcept:
        if service_index < 0:
            return 0
        if service_index >= self.n_services[0]:
            return OTHER_ID
        return self.service_ids[0][service_index]

    cdef void record_exchange(self, int direction, ExchangeRecord* rec, double now) noexcept:
        """Counts one finished exchange (ListenerContext.exchange_done)."""
        cdef int g = 1 if rec.start < self.applied_at and self.route_ids[1][0] != NULL else 0
        cdef int d = direction & 1
        cdef int route = 0
        cdef int service = 0
        cdef int b = 0
        cdef double took = now - rec.start
        cdef ExchangeSlot* slot
        if rec.route >= 0:
            route = self.route_ids[g][d][rec.route] if rec.route < self.n_routes[g][d] else OTHER_ID
        if rec.service >= 0:
            service = self.service_ids[g][rec.service] if rec.service < self.n_services[g] else OTHER_ID
        slot = find_exchange(self.header, self.exchanges, pack_exchange_key(
            d, rec.method, rec.status if 0 <= rec.status < 1000 else 0, rec.flags, route, service))
        if slot == NULL:
            self.header.exchange_overflow += 1
            slot = find_exchange(self.header, self.exchanges,
                                 pack_exchange_key(d, 0, 0, 0, OTHER_ID, OTHER_ID))
            if slot == NULL:
                return
        if took < 0:
            took = 0
        while b < 14 and took > C_BOUNDS[b]:
            b += 1
        slot.requests += 1
        slot.request_bytes += rec.request_bytes
        slot.response_bytes += rec.response_bytes
        slot.duration_sum_ns += <uint64_t>(took * 1e9)
        slot.duration_buckets[b] += 1
        if rec.ratelimit:
            self.counter_add(M_RATELIMIT, route, rec.ratelimit, 1)
        if rec.authz:
            self.counter_add(M_AUTHZ, route, rec.authz, 1)
        if rec.cache:
            self.counter_add(M_CACHE, route, rec.cache, 1)

    cdef void connection_opened(self, int direction, int protocol) noexcept:
        self.header.connections_active[direction & 1][protocol & 1] += 1
        self.header.connections_total[direction & 1][protocol & 1] += 1

    cdef void connection_closed(self, int direction, int protocol) noexcept:
        self.header.connections_active[direction & 1][protocol & 1] -= 1

    cdef void counter_add(self, int metric, int a, int b, int64_t value) noexcept:
        """Adds `value` to counter (metric, a, b): the API for counts that no
        ExchangeRecord carries (see StatsMetric in stats.pxd for a and b)."""
        cdef CounterSlot* slot = find_counter(self.header, self.counters, pack_counter_key(metric, a, b))
        if slot == NULL:
            self.header.counter_overflow += 1
            return
        slot.value += value

    cdef void gauge_set(self, int metric, int a, int b, int64_t value) noexcept:
        cdef CounterSlot* slot = find_counter(self.header, self.counters, pack_counter_key(metric, a, b))
        if slot == NULL:
            self.header.counter_overflow += 1
            return
        slot.value = value

    cdef void count_retry(self, int service_index, int reason) noexcept:
        """sidecar_upstream_retries_total{service, reason}: one retry of an exchange to the
        service at config index `service_index` (reason: RetryReason)."""
        self.counter_add(M_RETRIES, self.service_id(service_index), reason, 1)

    cdef void set_circuit_breaker_open(self, int service_index, bint is_open) noexcept:
        """sidecar_circuit_breaker_open{service}: 1 while the service's breaker refuses."""
        self.gauge_set(M_CIRCUIT_BREAKER_OPEN, self.service_id(service_index), 0, 1 if is_open else 0)

    # -- Python-callable forms, for the worker's Python side and for tests ---------------

    def add(self, int metric, int a, int b, long long value=1):
        self.counter_add(metric, a, b, value)

    def count_exchange(self, int direction, int route=-1, int service=-1, int method=0,
                       int status=200, unsigned int flags=0, long long request_bytes=0,
                       long long response_bytes=0, double duration=0.0, double start=1.0,
                       int cache=0):
        """Counts an exchange described by these values, as exchange_done would
        (`cache`: its CacheResult)."""
        cdef ExchangeRecord rec
        memset(&rec, 0, sizeof(rec))
        rec.start = start
        rec.route = route
        rec.service = service
        rec.method = method
        rec.status = status
        rec.flags = flags
        rec.request_bytes = request_bytes
        rec.response_bytes = response_bytes
        rec.cache = cache
        self.record_exchange(direction, &rec, start + duration)

    def open_connection(self, int direction, int protocol):
        self.connection_opened(direction, protocol)

    def close_connection(self, int direction, int protocol):
        self.connection_closed(direction, protocol)


cdef int* _int_array(values) except? NULL:
    cdef int n = len(values)
    cdef int* arr = <int*>malloc(sizeof(int) * (n if n else 1))
    cdef int i
    if arr == NULL:
        raise MemoryError()
    for i in range(n):
        arr[i] = values[i]
    return arr


def read_segment(mapping):
    """A segment's contents as plain values (the manager's collectors call this):

        {"generation", "exchange_overflow", "counter_overflow",
         "connections_active": [[in_http, in_tcp], [out_http, out_tcp]], "connections_total",
         "exchanges": [(direction, route_id, service_id, method, status, flags, requests,
                        request_bytes, response_bytes, duration_sum_seconds, buckets)],
         "counters": [(metric, a, b, value)]}
    """
    cdef _Segment seg = _Segment(mapping)
    cdef StatsHeader* h = seg.header
    cdef uint32_t i
    cdef uint64_t key
    cdef ExchangeSlot* s
    cdef CounterSlot* c
    try:
        if h.magic != STATS_MAGIC:
            return None
        exchanges = []
        for i in range(h.exchange_capacity):
            s = &seg.exchanges[i]
            key = s.key
            if key == 0 or s.requests == 0:
                continue
            exchanges.append((
                <int>(key & 1), <int>((key >> 31) & 0xFFF), <int>((key >> 43) & 0xFFF),
                <int>((key >> 1) & 0xF), <int>((key >> 5) & 0x3FF), <int>((key >> 15) & 0xFFFF),
                s.requests, s.request_bytes, s.response_bytes, s.duration_sum_ns * 1e-9,
                tuple([s.duration_buckets[j] for j in range(DURATION_BUCKETS)])))
        counters = []
        for i in range(h.counter_capacity):
            c = &seg.counters[i]
            key = c.key
            if key == 0:
                continue
            counters.append((<int>((key >> 32) & 0xFF), <int>((key >> 16) & 0xFFFF),
                             <int>(key & 0xFFFF), c.value))
        return {
            "generation": h.config_generation,
            "exchange_overflow": h.exchange_overflow,
            "counter_overflow": h.counter_overflow,
            "connections_active": [[h.connections_active[d][p] for p in range(2)] for d in range(2)],
            "connections_total": [[h.connections_total[d][p] for p in range(2)] for d in range(2)],
            "exchanges": exchanges,
            "counters": counters,
        }
    finally:
        seg.release()
