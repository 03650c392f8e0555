# Declarations of one stored response of the response cache; see cache_entry.pyx.
from libc.stdint cimport uint64_t
from fastpath.parser cimport MessageHead
from fastpath.header_edits cimport HeaderEdits

# What the cache knows of the request a response answers, for the entry it makes.
cdef struct EntryOrigin:
    uint64_t key                     # the store's key of the URL
    bint authorized                  # the request had Authorization (RFC 9111 3.5)
    double request_time              # monotonic: when the request head was complete
    int service                      # config index of the service answering; -1: none
    double ttl                       # the route's ttl


cdef class CacheEntry:
    """One stored response: its key, the head as stored (parsed), the body, freshness."""
    cdef uint64_t key
    cdef bytes host                  # lower-cased Host value of the request
    cdef bytes target                # request target, as sent
    cdef tuple vary_names            # lower-case field names of Vary, or None
    cdef tuple vary_values           # the request's value of each (bytes), None when absent
    cdef readonly int status
    cdef readonly int service        # config index of the service that answered; -1: none
    cdef MessageHead head            # status line and the end-to-end fields, as stored
    cdef readonly bytes body
    cdef bint no_body                # 204: no body and no Content-Length
    cdef double age_base             # current age = age_base + monotonic now
    cdef double fresh_until          # monotonic time it turns stale
    cdef readonly double lifetime    # freshness lifetime, seconds
    cdef bint must_validate          # no-cache: never used without validation
    cdef bytes etag
    cdef bytes last_modified
    cdef double modified_time        # Last-Modified (else Date), epoch seconds; -1 unknown
    cdef bint storable               # may be stored (a revalidated one may not, yet is served)
    # kept by the store (response_cache.pyx)
    cdef Py_ssize_t size             # what it counts against max_total
    cdef bint stored
    cdef CacheEntry older            # LRU neighbours
    cdef CacheEntry newer
    cdef CacheEntry next_variant     # another variant (Vary) of the same URL


cdef CacheEntry entry_for(MessageHead resp, MessageHead req, CacheEntry stored,
                          const EntryOrigin* origin, double now)
cdef void set_body(CacheEntry e, bytes body)
cdef bint entry_matches(CacheEntry e, MessageHead req)
cdef bint conditional_matches(CacheEntry e, MessageHead req, int if_none_match,
                              int if_modified_since) noexcept
cdef bytes answer(CacheEntry e, bint hit, bint head_only, bint not_modified, bint close,
                  bint keep_alive_header, HeaderEdits edits, bytes extra, double now)
cdef void mark_x_cache(MessageHead resp) noexcept
