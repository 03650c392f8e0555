# Declarations of the per-route response cache; see response_cache.pyx.
from libc.stdint cimport uint64_t
from fastpath.parser cimport MessageHead, ChunkedDecoder
from fastpath.cache_control cimport CacheControl
from fastpath.cache_entry cimport CacheEntry, EntryOrigin

# What a lookup found for a request (ResponseCache.lookup).
cdef enum CacheLookup:
    LOOKUP_BYPASS = 0          # the request neither uses nor fills the cache
    LOOKUP_HIT                 # a fresh stored response answers it (CacheExchange.entry)
    LOOKUP_REVALIDATE          # a stored response must be validated upstream first (entry)
    LOOKUP_MISS                # nothing usable is stored
    LOOKUP_ONLY_IF_CACHED      # a miss, and the client takes only a stored response (504)

# What a request that missed does (ResponseCache.coalesce).
cdef enum CoalesceAction:
    COALESCE_WAIT = 0          # the same response is on its way: wait for it (waiting_on)
    COALESCE_LEAD              # fetch it (CacheExchange.fill); later misses wait for this one
    COALESCE_PASS              # go upstream without storing (HEAD, the client's own conditional)

# Where a CacheFill stands; what its waiters do when it is released.
cdef enum FillState:
    FILL_PENDING = 0           # no response head yet
    FILL_STORING               # capturing a storable response's body
    FILL_STORED                # in the store (entry): waiters are served from it
    FILL_VALIDATED             # a 304 refreshed the stored response (entry): waiters too
    FILL_UNCACHEABLE           # may not be stored: waiters go upstream, each on its own
    FILL_ABANDONED             # released before a verdict (upstream failed, client left):
                               # waiters look up again, and one of them fetches

# Facts of the request the cache keeps for the exchange (CacheExchange.flags).
cdef enum CacheRequestFlag:
    RQ_AUTHORIZATION = 0x01
    RQ_IF_NONE_MATCH = 0x02
    RQ_IF_MODIFIED_SINCE = 0x04
    RQ_UNSAFE = 0x08           # POST, PUT, DELETE...: a success invalidates the stored URL


cdef class CacheExchange:
    """The cache's part of one connection's exchange in flight (reused per exchange)."""
    cdef ResponseCache cache         # the route's store
    cdef bint on_route               # this exchange is on a route with a cache
    cdef uint64_t key
    cdef unsigned int flags          # CacheRequestFlag
    cdef CacheControl cc             # the request's Cache-Control (and Pragma)
    cdef int if_none_match           # field indices in the request head; -1: none
    cdef int if_modified_since
    cdef CacheEntry entry            # LOOKUP_HIT / LOOKUP_REVALIDATE: the stored response
    cdef CacheFill fill              # the response being captured for the store, or None
    cdef CacheFill waiting_on        # the fill this exchange waits for, or None
    cdef bytes authority             # kept for the destination when a waiter goes upstream
    cdef bint end_on_resume          # answered from the store into a full write buffer: the
                                     # exchange ends (and the next one starts) once it drains


cdef class CacheFill:
    """One upstream response on its way into the store, and the exchanges waiting for it."""
    cdef ResponseCache cache
    cdef EntryOrigin origin          # its key, and what the entry it makes records of the request
    cdef CacheEntry validating       # the stored response a conditional request revalidates
    cdef readonly int state          # FillState
    cdef bint leader                 # registered for its key: later misses wait for it
    cdef list waiters                # made with the first; None: nobody waits
    cdef CacheEntry entry            # the response as it will be (or was) stored
    cdef int framing                 # how the body reaches the client (head_rewrite Framing)
    cdef ChunkedDecoder chunks
    cdef list parts
    cdef Py_ssize_t body_size
    cdef long long expected_length   # Content-Length; -1: none

    cdef int response_head(self, MessageHead resp, MessageHead req, int framing,
                           const char* tail, Py_ssize_t tail_len, double now) except -1
    cdef bint add_body(self, bytes chunk) except -1
    cdef bint _add(self, const char* p, Py_ssize_t n, bytes chunk) except -1
    cdef void _drop(self)
    cdef int finish(self) except -1
    cdef list release(self)
    cdef bytes request_lines(self, bytes extra)


cdef class ResponseCache:
    cdef readonly double ttl
    cdef readonly long long max_entry
    cdef readonly long long max_total
    cdef readonly long long total       # bytes accounted to the stored entries
    cdef readonly int count
    cdef dict entries                   # key -> newest variant
    cdef dict pending                   # key -> the leading CacheFill
    cdef CacheEntry newest
    cdef CacheEntry oldest
    cdef uint64_t seed
    cdef readonly unsigned long long stores
    cdef readonly unsigned long long evictions
    cdef readonly unsigned long long coalesced

    cdef uint64_t _key(self, MessageHead req) noexcept
    cdef CacheEntry _find(self, MessageHead req, uint64_t key)
    cdef bint _usable(self, CacheEntry e, CacheExchange x, double now) noexcept
    cdef int lookup(self, MessageHead req, CacheExchange x, double now) except -1
    cdef int coalesce(self, MessageHead req, CacheExchange x, object waiter, double now) except -1
    cdef int lead(self, MessageHead req, CacheExchange x, double now) except -1
    cdef bint insert(self, CacheEntry e) except -1
    cdef void remove(self, CacheEntry e)
    cdef void invalidate(self, uint64_t key)
    cdef void _touch(self, CacheEntry e) noexcept

