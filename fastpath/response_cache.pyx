# cython: language_level=3
"""A route's response cache: a shared HTTP cache (a subset of RFC 9111) in front of the
route's upstream, one per route and per worker. The freshness and cacheability rules are
in cache_control.pyx; this module keeps the store and decides per request.

Lookup (`lookup`), per request on a route with `cache`:

- Only GET and HEAD without a body use the cache. Upgrades, `Range`, `If-Range`,
  `If-Match`, `If-Unmodified-Since` and a request's `Cache-Control: no-store` bypass
  it; an unsafe method (POST, PUT, DELETE...) bypasses it and, when its response is not
  an error, removes the stored responses of its URL (RFC 9111 4.4).
- The key is the Host value (case-insensitive) and the request target as sent, hashed
  with a per-store random seed from the request's spans; a candidate is compared whole,
  and so are the request fields its Vary names (values joined by ","; exact bytes).
- A stored response answers when fresh (age below its lifetime) and not `no-cache`, and
  the request's `no-cache` (or `Pragma: no-cache`), `max-age` and `min-fresh` allow it.
  HEAD is answered from a stored GET response, without the body. A request's own
  If-None-Match (weak comparison), or else If-Modified-Since, gets a 304 from it.
- A response that may not answer but has validators (ETag, Last-Modified) is revalidated:
  the request goes upstream with If-None-Match / If-Modified-Since, and a 304 refreshes the
  stored head (its fields replace the stored ones of the same names) and answers from the
  stored body; any other response replaces it. Stale and without validators: removed.
- `only-if-cached` and nothing usable: 504.

Coalescing (`coalesce`): the first GET that misses a key fetches it (the leader); misses of
the same key that come while it is on its way wait for it. A response stored (or
validated) serves every waiter whose Vary fields match it; one that may not be stored
sends the waiters upstream, each on its own, as if there were no cache; a leader that
fails before its response head (or whose client leaves) makes the waiters look up again,
so one of them fetches. A waiter waits at most COALESCE_TIMEOUT, then fetches itself and
takes the lead for its key, so a fetch that hangs delays later misses by that much at
most once (nginx's proxy_cache_lock_timeout and _age, in one). HEAD requests and
requests with their own conditionals wait for a fetch in flight but never lead one.

Storing (`CacheFill`, `_new_entry`): only a response the rules allow (status, no
`no-store`, never `private`: this cache is shared, no `Set-Cookie`, no `Vary: *`, a
response to a request with Authorization only when `public`, `s-maxage` or
`must-revalidate`), with a known length: one delimited by closing the connection is never
stored, since a cut could not be told from its end. The body is captured as it streams
to the client, up to `max_entry` bytes: a larger one (declared or streamed) is passed
through and nothing of it kept. The stored head drops hop-by-hop and framing fields,
`Age`, `x-cache`, `x-request-id` and trace context fields.

Answers from the store (`response`) are one bytes object written at once: the stored
head with the route's response header edits, `content-length`, `age` (whole seconds,
RFC 9111 4.2.3), `x-cache: HIT`, the connection field, then the body. An answer from a
stored response the upstream has just validated (304) says `x-cache: MISS`: a hit, here,
is an answer without an upstream request.

Bounds: `max_total` bytes per store (an entry counts its head, body, parsed fields and a
fixed overhead), least recently used entries evicted first; at most MAX_VARIANTS variants
per URL. The store is per worker: workers do not share entries, and each fills its own.
"""
import email.utils
import os

from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_GET_SIZE, PyBytes_FromStringAndSize
from cpython.dict cimport PyDict_GetItem
from cpython.ref cimport PyObject
from cpython.tuple cimport PyTuple_GET_SIZE, PyTuple_GET_ITEM
from libc.math cimport floor
from libc.stdint cimport uint64_t
from libc.stdio cimport snprintf
from libc.string cimport memcpy, memcmp, memset
from posix.time cimport clock_gettime, timespec, CLOCK_REALTIME, CLOCK_MONOTONIC

from fastpath.parser cimport (
    MessageHead, HeadParser, ChunkedDecoder, Limits, Field, join_spans,
    M_GET, M_HEAD, M_OPTIONS, M_TRACE, M_CONNECT, BODY_NONE, BODY_LENGTH, BODY_UNTIL_CLOSE,
    HDR_CONTENT_LENGTH, HDR_X_REQUEST_ID, HDR_TRACEPARENT,
)
from fastpath.head_rewrite cimport FRAME_CHUNKED
from fastpath.header_edits cimport HeaderEdits
from fastpath.lru_table cimport hash_span
from fastpath.cache_control cimport (
    CacheControl, parse_cache_control, has_token, parse_http_date, etag_list_matches,
    storable_status, freshness_lifetime, corrected_initial_age, NO_FRESHNESS,
    CC_PRESENT, CC_NO_STORE, CC_NO_CACHE, CC_PRIVATE, CC_PUBLIC, CC_MUST_REVALIDATE,
    CC_MAX_AGE, CC_S_MAXAGE, CC_MIN_FRESH, CC_ONLY_IF_CACHED,
)


cdef extern from "strings.h":
    int strncasecmp(const char* a, const char* b, size_t n)

cdef extern from "ctype.h":
    int tolower(int c)


DEF MAX_HOST = 320                 # longer Host values bypass the cache
DEF MAX_VARY_NAMES = 16            # a response varying on more fields is not stored
DEF MAX_VARIANTS = 16              # stored variants per URL; the oldest goes first
DEF ENTRY_OVERHEAD = 512           # bytes an entry counts beyond its head, body and fields

COALESCE_TIMEOUT = 5.0             # seconds a miss waits for the same response in flight

# Stored heads are parsed back with limits of their own: they came from an upstream's
# response under the pool's limits, plus at most the fields of a 304.
cdef Limits STORED_LIMITS = Limits(1 << 16, 1 << 20, 1024)


cdef inline double wall_now() noexcept:
    cdef timespec ts
    clock_gettime(CLOCK_REALTIME, &ts)
    return ts.tv_sec + ts.tv_nsec * 1e-9


cdef inline bint _named(MessageHead h, Field* f, const char* name, Py_ssize_t n) noexcept:
    return f.name_end - f.line_start == n and strncasecmp(h.buf + f.line_start, name, <size_t>n) == 0


cdef inline bint _stored_field(MessageHead h, Field* f) noexcept:
    """Whether a field of an upstream response goes into a stored head: end-to-end, not
    framing, not an exchange's own (Age, x-cache, request id, trace context)."""
    if f.drop or f.kind == HDR_CONTENT_LENGTH or f.kind == HDR_X_REQUEST_ID or f.kind >= HDR_TRACEPARENT:
        return False
    return not (_named(h, f, b"age", 3) or _named(h, f, b"x-cache", 7))


cdef void mark_x_cache(MessageHead resp) noexcept:
    """Drops the upstream's own x-cache from a forwarded response: ours says MISS."""
    cdef int i
    for i in range(resp.nfields):
        if _named(resp, &resp.fields[i], b"x-cache", 7):
            resp.fields[i].drop = True


cdef bint _values_equal(MessageHead req, const char* name, Py_ssize_t n, object stored) noexcept:
    """Whether the values of field `name` in `req`, joined by ",", are `stored` (bytes),
    or the field is absent and `stored` is None."""
    cdef const char* s = NULL
    cdef Py_ssize_t slen = 0, pos = 0, vlen
    cdef bint found = False
    cdef int i
    cdef Field* f
    if stored is not None:
        s = PyBytes_AS_STRING(stored)
        slen = PyBytes_GET_SIZE(stored)
    for i in range(req.nfields):
        f = &req.fields[i]
        if not _named(req, f, name, n):
            continue
        if s == NULL:
            return False
        if found:
            if pos >= slen or s[pos] != b',':
                return False
            pos += 1
        vlen = f.value_end - f.value_start
        if pos + vlen > slen or memcmp(s + pos, req.buf + f.value_start, vlen) != 0:
            return False
        pos += vlen
        found = True
    if s == NULL:
        return True
    return found and pos == slen


cdef object _joined_values(MessageHead req, bytes name):
    """The values of field `name` in `req` joined by ",", or None when absent."""
    cdef int i
    cdef Field* f
    values = []
    for i in range(req.nfields):
        f = &req.fields[i]
        if _named(req, f, name, len(name)):
            values.append(req.buf[f.value_start:f.value_end])
    return b",".join(values) if values else None


cdef class CacheEntry:
    pass


cdef class CacheExchange:
    def __cinit__(self):
        self.if_none_match = -1
        self.if_modified_since = -1


cdef class CacheFill:
    def __cinit__(self):
        self.expected_length = -1
        self.service = -1

    cdef int response_head(self, MessageHead resp, MessageHead req, int framing,
                           const char* tail, Py_ssize_t tail_len, double now) except -1:
        """The response head arrived. Returns 1 when the exchange is to be answered from
        `entry` (a 304 validated the stored response), else 0; `state` says whether the
        body is captured (FILL_STORING) or the response is passed through
        (FILL_UNCACHEABLE: release the waiters now)."""
        cdef ResponseCache cache = self.cache
        cdef CacheEntry old = self.validating
        cdef CacheEntry e
        if old is not None:
            if resp.status == 304:
                e = cache._new_entry(self, resp, req, old.head, old.body, now)
                if e is None:
                    e = old                 # cannot merge (never expected): answer as stored
                cache.remove(old)
                self.entry = e
                self.state = FILL_VALIDATED if e.storable and e is not old and cache.insert(e) else FILL_UNCACHEABLE
                return 1
            if resp.status < 500:
                cache.remove(old)           # a full response replaces the stored one; an
                                            # upstream error leaves it to validate later
        if not storable_status(resp.status) or resp.body_kind == BODY_UNTIL_CLOSE or (
                resp.body_kind == BODY_LENGTH and resp.content_length > cache.max_entry):
            self.state = FILL_UNCACHEABLE
            return 0
        e = cache._new_entry(self, resp, req, None, None, now)
        if e is None or not e.storable:
            self.state = FILL_UNCACHEABLE
            return 0
        self.entry = e
        self.state = FILL_STORING
        self.framing = framing
        self.parts = []
        self.body_size = 0
        self.expected_length = resp.content_length if resp.body_kind == BODY_LENGTH else (
            0 if resp.body_kind == BODY_NONE else -1)
        if framing == FRAME_CHUNKED:
            if self.chunks is None:
                self.chunks = ChunkedDecoder()
            self.chunks.reset()
        if tail_len:
            self._add(tail, tail_len, None)
        return 0

    cdef bint add_body(self, bytes chunk) except -1:
        """More of the body, as written to the client; False once it is not kept."""
        if self.state != FILL_STORING:
            return False
        return self._add(PyBytes_AS_STRING(chunk), PyBytes_GET_SIZE(chunk), chunk)

    cdef bint _add(self, const char* p, Py_ssize_t n, bytes chunk) except -1:
        cdef bytes data
        if self.framing == FRAME_CHUNKED:
            # The client gets our own chunked framing: keep the data, not the framing.
            if self.chunks.feed(p, 0, n) < 0:
                self._drop()
                return False
            data = join_spans(p, self.chunks)
        else:
            data = chunk if chunk is not None else PyBytes_FromStringAndSize(p, n)
        self.body_size += PyBytes_GET_SIZE(data)
        if self.body_size > self.cache.max_entry:
            self._drop()            # larger than max_entry: passed through, not kept
            return False
        if PyBytes_GET_SIZE(data):
            self.parts.append(data)
        return True

    cdef void _drop(self):
        self.state = FILL_UNCACHEABLE
        self.parts = None

    cdef int finish(self) except -1:
        """The whole response went through: stores it. Returns the new state."""
        cdef CacheEntry e = self.entry
        cdef bytes body
        if self.state != FILL_STORING:
            return self.state
        if self.framing == FRAME_CHUNKED and not self.chunks.done:
            self._drop()
            return self.state
        body = b"".join(self.parts) if len(self.parts) != 1 else self.parts[0]
        self.parts = None
        if self.expected_length >= 0 and PyBytes_GET_SIZE(body) != self.expected_length:
            self.state = FILL_UNCACHEABLE
            return self.state
        e.body = body
        e.size = (PyBytes_GET_SIZE(e.head.raw) + PyBytes_GET_SIZE(body) + ENTRY_OVERHEAD
                  + e.head.nfields * sizeof(Field))
        self.state = FILL_STORED if self.cache.insert(e) else FILL_UNCACHEABLE
        return self.state

    cdef list release(self):
        """Unregisters the fill; returns the exchanges waiting for it."""
        cdef list waiters = self.waiters
        cdef ResponseCache cache = self.cache
        cdef PyObject* p
        self.waiters = None
        if self.leader:
            self.leader = False
            p = PyDict_GetItem(cache.pending, self.key)
            if p != NULL and <object>p is self:
                del cache.pending[self.key]
        if self.state == FILL_PENDING or self.state == FILL_STORING:
            self.state = FILL_ABANDONED
            self.parts = None
        return waiters if waiters is not None else []

    cdef bytes request_lines(self, bytes extra):
        """`extra` with the validators of the revalidated response added (or `extra`)."""
        cdef CacheEntry old = self.validating
        if old is None:
            return extra
        lines = [extra] if extra is not None else []
        if old.etag is not None:
            lines.append(b"if-none-match: " + old.etag + b"\r\n")
        if old.last_modified is not None:
            lines.append(b"if-modified-since: " + old.last_modified + b"\r\n")
        return b"".join(lines)


cdef class ResponseCache:
    def __cinit__(self, double ttl, long long max_entry, long long max_total, seed=None):
        cdef bytes b
        self.ttl = ttl
        self.max_entry = max_entry
        self.max_total = max_total
        self.entries = {}
        self.pending = {}
        if seed is None:
            b = os.urandom(8)
            memcpy(&self.seed, PyBytes_AS_STRING(b), 8)
        else:
            self.seed = <uint64_t>seed

    # -- lookup -------------------------------------------------------------------------

    cdef uint64_t _key(self, MessageHead req) noexcept:
        """Seeded hash of the lower-cased Host and the target; 0 when the Host is too long."""
        cdef char host[MAX_HOST]
        cdef Py_ssize_t n = 0, i
        cdef Field* f
        cdef uint64_t h
        if req.host_index >= 0:
            f = &req.fields[req.host_index]
            n = f.value_end - f.value_start
            if n > MAX_HOST:
                return 0
            for i in range(n):
                host[i] = <char>tolower(<unsigned char>req.buf[f.value_start + i])
        h = hash_span(host, n, self.seed)
        h = hash_span(req.buf + req.target_start, req.target_end - req.target_start, h)
        return h if h else 1

    cdef CacheEntry _find(self, MessageHead req, uint64_t key):
        cdef PyObject* p = PyDict_GetItem(self.entries, key)
        cdef CacheEntry e
        if p == NULL:
            return None
        e = <CacheEntry>p
        while e is not None:
            if self.entry_matches(e, req):
                return e
            e = e.next_variant
        return None

    cdef bint entry_matches(self, CacheEntry e, MessageHead req):
        """Whether `e` is a stored response for `req`: same Host and target, and the
        fields its Vary names have the same values."""
        cdef Py_ssize_t n = 0
        cdef Field* f
        cdef Py_ssize_t k
        cdef object name
        if req.host_index >= 0:
            f = &req.fields[req.host_index]
            n = f.value_end - f.value_start
            if n != PyBytes_GET_SIZE(e.host) or strncasecmp(
                    req.buf + f.value_start, PyBytes_AS_STRING(e.host), n) != 0:
                return False
        elif PyBytes_GET_SIZE(e.host):
            return False
        n = req.target_end - req.target_start
        if n != PyBytes_GET_SIZE(e.target) or memcmp(
                req.buf + req.target_start, PyBytes_AS_STRING(e.target), n) != 0:
            return False
        if e.vary_names is None:
            return True
        for k in range(PyTuple_GET_SIZE(e.vary_names)):
            name = <object>PyTuple_GET_ITEM(e.vary_names, k)
            if not _values_equal(req, PyBytes_AS_STRING(name), PyBytes_GET_SIZE(name),
                                 <object>PyTuple_GET_ITEM(e.vary_values, k)):
                return False
        return True

    cdef bint _usable(self, CacheEntry e, CacheExchange x, double now) noexcept:
        """Whether `e` may answer without validation (RFC 9111 4.2, 5.2.1)."""
        cdef double age
        if e.must_validate or x.cc.flags & CC_NO_CACHE or now >= e.fresh_until:
            return False
        age = e.age_base + now
        if x.cc.flags & CC_MAX_AGE and age > x.cc.max_age:
            return False
        if x.cc.flags & CC_MIN_FRESH and e.fresh_until - now < x.cc.min_fresh:
            return False
        return True

    cdef int lookup(self, MessageHead req, CacheExchange x, double now) except -1:
        """Reads what the cache needs of `req` into `x` and looks it up: a CacheLookup."""
        cdef int i
        cdef Field* f
        cdef Py_ssize_t n
        cdef const char* name
        cdef bint pragma_no_cache = False
        cdef CacheEntry e
        x.cache = self
        x.entry = None
        x.fill = None
        x.waiting_on = None
        x.flags = 0
        x.if_none_match = -1
        x.if_modified_since = -1
        memset(&x.cc, 0, sizeof(CacheControl))
        if req.method != M_GET and req.method != M_HEAD:
            if req.method != M_OPTIONS and req.method != M_TRACE and req.method != M_CONNECT:
                x.key = self._key(req)
                if x.key:
                    x.flags |= RQ_UNSAFE
            return LOOKUP_BYPASS
        if req.body_kind != BODY_NONE or req.upgrade:
            return LOOKUP_BYPASS
        for i in range(req.nfields):
            f = &req.fields[i]
            n = f.name_end - f.line_start
            name = req.buf + f.line_start
            if n == 13:
                if strncasecmp(name, b"cache-control", 13) == 0:
                    parse_cache_control(req.buf, f.value_start, f.value_end, &x.cc)
                elif strncasecmp(name, b"authorization", 13) == 0:
                    x.flags |= RQ_AUTHORIZATION
                elif strncasecmp(name, b"if-none-match", 13) == 0:
                    x.flags |= RQ_IF_NONE_MATCH
                    x.if_none_match = i
            elif n == 17 and strncasecmp(name, b"if-modified-since", 17) == 0:
                x.flags |= RQ_IF_MODIFIED_SINCE
                x.if_modified_since = i
            elif n == 6 and strncasecmp(name, b"pragma", 6) == 0:
                if has_token(req.buf, f.value_start, f.value_end, b"no-cache", 8):
                    pragma_no_cache = True
            elif (n == 5 and strncasecmp(name, b"range", 5) == 0) or (
                    n == 8 and (strncasecmp(name, b"if-range", 8) == 0
                                or strncasecmp(name, b"if-match", 8) == 0)) or (
                    n == 19 and strncasecmp(name, b"if-unmodified-since", 19) == 0):
                return LOOKUP_BYPASS
        if pragma_no_cache and not (x.cc.flags & CC_PRESENT):
            x.cc.flags |= CC_NO_CACHE       # RFC 9111 5.4: Pragma only without Cache-Control
        if x.cc.flags & CC_NO_STORE:
            return LOOKUP_BYPASS
        x.key = self._key(req)
        if x.key == 0:
            return LOOKUP_BYPASS
        e = self._find(req, x.key)
        if e is not None:
            if self._usable(e, x, now):
                self._touch(e)
                x.entry = e
                return LOOKUP_HIT
            if e.etag is not None or e.last_modified is not None:
                if req.method == M_GET and not (x.flags & (RQ_IF_NONE_MATCH | RQ_IF_MODIFIED_SINCE)):
                    x.entry = e
                    return LOOKUP_REVALIDATE
            elif now >= e.fresh_until:
                self.remove(e)              # stale, and nothing to validate it with
        if x.cc.flags & CC_ONLY_IF_CACHED:
            return LOOKUP_ONLY_IF_CACHED
        return LOOKUP_MISS

    cdef int coalesce(self, MessageHead req, CacheExchange x, object waiter, double now) except -1:
        """What a request that missed does: waits for the same key's fill in flight, leads
        a new one (x.fill), or passes (a CoalesceAction)."""
        cdef PyObject* p = PyDict_GetItem(self.pending, x.key)
        cdef CacheFill fill
        if p != NULL:
            fill = <CacheFill>p
            if fill.waiters is None:
                fill.waiters = []
            fill.waiters.append(waiter)
            x.waiting_on = fill
            self.coalesced += 1
            return COALESCE_WAIT
        return self.lead(req, x, now)

    cdef int lead(self, MessageHead req, CacheExchange x, double now) except -1:
        """Makes `x` fetch its key for the store (COALESCE_LEAD), in place of any fetch
        registered for it (one that takes longer than COALESCE_TIMEOUT is taken over by
        a request that waited for it that long); COALESCE_PASS for a HEAD or conditional
        request, which goes upstream without storing."""
        cdef CacheFill fill
        if req.method != M_GET or x.flags & (RQ_IF_NONE_MATCH | RQ_IF_MODIFIED_SINCE):
            return COALESCE_PASS
        fill = CacheFill()
        fill.cache = self
        fill.key = x.key
        fill.request_flags = x.flags
        fill.request_time = now
        fill.validating = x.entry
        fill.leader = True
        self.pending[x.key] = fill
        x.fill = fill
        return COALESCE_LEAD

    cdef bint not_modified(self, CacheEntry e, MessageHead req, CacheExchange x) noexcept:
        """Whether the request's own conditional matches the stored 2xx response `e`:
        If-None-Match (weak comparison), else If-Modified-Since."""
        cdef Field* f
        cdef double since
        if e.status < 200 or e.status >= 300:
            return False
        if x.flags & RQ_IF_NONE_MATCH:
            f = &req.fields[x.if_none_match]
            if e.etag is None:
                return etag_list_matches(req.buf + f.value_start, f.value_end - f.value_start, b"", 0)
            return etag_list_matches(req.buf + f.value_start, f.value_end - f.value_start,
                                     PyBytes_AS_STRING(e.etag), PyBytes_GET_SIZE(e.etag))
        if x.flags & RQ_IF_MODIFIED_SINCE:
            f = &req.fields[x.if_modified_since]
            since = parse_http_date(req.buf + f.value_start, f.value_end - f.value_start)
            return since >= 0 and 0 <= e.modified_time <= since
        return False

    # -- answers from the store -----------------------------------------------------------

    cdef bytes response(self, CacheEntry e, bint hit, bint head_only, bint not_modified,
                        bint close, bint keep_alive_header, HeaderEdits edits, bytes extra,
                        double now):
        """The bytes answering a request from `e`: its head with the route's response
        edits (`edits` drops, `extra` the lines they add), content-length, age, x-cache
        (HIT, or MISS for an answer the upstream just validated: it was asked), the
        connection field, and the body unless `head_only` or `not_modified` (304)."""
        cdef MessageHead h = e.head
        cdef char age_text[40]
        cdef char length_text[40]
        cdef int age_len, length_len = 0
        cdef double age = e.age_base + now
        cdef Py_ssize_t status_len, total, body_len = 0
        cdef Py_ssize_t extra_len = PyBytes_GET_SIZE(extra) if extra is not None else 0
        cdef const char* status_text
        cdef int i
        cdef Field* f
        cdef bytes out
        cdef char* w
        for i in range(h.nfields):
            h.fields[i].drop = False
        if edits is not None:
            edits.mark_drops(h)
        if not_modified:
            # RFC 9110 15.4.5: what a 304 carries of the stored response.
            for i in range(h.nfields):
                f = &h.fields[i]
                if not (_named(h, f, b"cache-control", 13) or _named(h, f, b"content-location", 16)
                        or _named(h, f, b"date", 4) or _named(h, f, b"etag", 4)
                        or _named(h, f, b"expires", 7) or _named(h, f, b"vary", 4)):
                    f.drop = True
            status_text = b"304 Not Modified"
            status_len = 16
        else:
            status_text = h.buf + h.reason_start
            status_len = h.line_end - h.reason_start
            if not e.no_body:
                length_len = snprintf(length_text, 40, b"content-length: %zd\r\n",
                                      PyBytes_GET_SIZE(e.body))
                if not head_only:
                    body_len = PyBytes_GET_SIZE(e.body)
        age_len = snprintf(age_text, 40, b"age: %lld\r\n", <long long>(age if age > 0 else 0))
        total = 9 + status_len + 2 + length_len + age_len + (14 if hit else 15) + extra_len + 2 + body_len
        for i in range(h.nfields):
            if not h.fields[i].drop:
                total += h.fields[i].line_end - h.fields[i].line_start
        if close:
            total += 19
        elif keep_alive_header:
            total += 24
        out = PyBytes_FromStringAndSize(NULL, total)
        w = PyBytes_AS_STRING(out)
        memcpy(w, b"HTTP/1.1 ", 9)
        w += 9
        memcpy(w, status_text, status_len)
        w += status_len
        memcpy(w, b"\r\n", 2)
        w += 2
        for i in range(h.nfields):
            f = &h.fields[i]
            if not f.drop:
                memcpy(w, h.buf + f.line_start, f.line_end - f.line_start)
                w += f.line_end - f.line_start
        memcpy(w, length_text, length_len)
        w += length_len
        memcpy(w, age_text, age_len)
        w += age_len
        memcpy(w, b"x-cache: HIT\r\n" if hit else b"x-cache: MISS\r\n", 14 if hit else 15)
        w += 14 if hit else 15
        if close:
            memcpy(w, b"connection: close\r\n", 19)
            w += 19
        elif keep_alive_header:
            memcpy(w, b"connection: keep-alive\r\n", 24)
            w += 24
        if extra_len:
            memcpy(w, PyBytes_AS_STRING(extra), extra_len)
            w += extra_len
        memcpy(w, b"\r\n", 2)
        w += 2
        if body_len:
            memcpy(w, PyBytes_AS_STRING(e.body), body_len)
        return out

    # -- storing ---------------------------------------------------------------------------

    cdef CacheEntry _new_entry(self, CacheFill fill, MessageHead resp, MessageHead req,
                               MessageHead base, bytes body, double now):
        """The entry `resp` makes, with `storable` set by the rules; None when a plain
        response may not be stored, or a head cannot be kept. With `base`, `resp` is a 304
        updating that stored head (and `body` its body): the entry is built even when it
        may not be stored, since it answers the request that revalidated it."""
        cdef CacheEntry e
        cdef MessageHead h
        if base is None:
            # Judged on the upstream's head first: most refusals cost no stored copy.
            e = self._judge(fill, resp, req, _age_value(resp), now)
            if e is None:
                return None
            e.head = _stored_head(resp, None)
            if e.head is None:
                return None
            return e
        h = _stored_head(resp, base)
        if h is None:
            return None
        e = self._judge(fill, h, req, _age_value(resp), now)
        e.head = h
        e.body = body
        e.size = PyBytes_GET_SIZE(h.raw) + PyBytes_GET_SIZE(body) + ENTRY_OVERHEAD + h.nfields * sizeof(Field)
        return e

    cdef CacheEntry _judge(self, CacheFill fill, MessageHead h, MessageHead req, double age_value,
                           double now):
        """What the fields of `h` (as they would be stored) say: an entry with its
        validators, Vary, freshness and whether the rules let it be stored; None when they
        do not and `h` is an upstream's plain response (nothing is allocated for it)."""
        cdef CacheEntry e
        cdef CacheControl cc
        cdef Field* f
        cdef int i, etag = -1, modified = -1
        cdef bint vary_star = False, set_cookie = False, has_expires = False, storable
        cdef double date = -1, expires = -1, lifetime, wall, initial
        cdef Py_ssize_t k
        memset(&cc, 0, sizeof(CacheControl))
        names = None
        for i in range(h.nfields):
            f = &h.fields[i]
            if not _stored_field(h, f):
                continue
            if _named(h, f, b"cache-control", 13):
                parse_cache_control(h.buf, f.value_start, f.value_end, &cc)
            elif _named(h, f, b"set-cookie", 10):
                set_cookie = True
            elif _named(h, f, b"vary", 4):
                for name in h.buf[f.value_start:f.value_end].split(b","):
                    name = name.strip(b" \t").lower()
                    if name == b"*":
                        vary_star = True
                    elif name:
                        if names is None:
                            names = []
                        if name not in names:
                            names.append(name)
            elif _named(h, f, b"date", 4):
                if date < 0:
                    date = parse_http_date(h.buf + f.value_start, f.value_end - f.value_start)
            elif _named(h, f, b"expires", 7):
                if not has_expires:
                    has_expires = True
                    expires = parse_http_date(h.buf + f.value_start, f.value_end - f.value_start)
            elif _named(h, f, b"etag", 4):
                if etag < 0 and f.value_end > f.value_start:
                    etag = i
            elif _named(h, f, b"last-modified", 13):
                if modified < 0 and f.value_end > f.value_start:
                    modified = i
        wall = wall_now()
        lifetime = freshness_lifetime(&cc, h.status, date if date >= 0 else floor(wall),
                                      has_expires, expires, self.ttl)
        storable = not (
            lifetime == NO_FRESHNESS or cc.flags & (CC_NO_STORE | CC_PRIVATE) or set_cookie
            or vary_star or (names is not None and len(names) > MAX_VARY_NAMES)
            or (fill.request_flags & RQ_AUTHORIZATION
                and not cc.flags & (CC_PUBLIC | CC_S_MAXAGE | CC_MUST_REVALIDATE))
            or ((cc.flags & CC_NO_CACHE or lifetime <= 0) and etag < 0 and modified < 0))
        if not storable and fill.validating is None:
            return None
        e = CacheEntry()
        e.storable = storable
        e.key = fill.key
        if fill.validating is not None:
            e.host = fill.validating.host
            e.target = fill.validating.target
        else:
            e.host = b""
            if req.host_index >= 0:
                f = &req.fields[req.host_index]
                e.host = req.buf[f.value_start:f.value_end].lower()
            e.target = req.buf[req.target_start:req.target_end]
        e.status = h.status
        e.service = fill.service
        e.no_body = h.status == 204
        e.must_validate = (cc.flags & CC_NO_CACHE) != 0
        e.modified_time = -1
        if etag >= 0:
            e.etag = h.field_value(etag)
        if modified >= 0:
            e.last_modified = h.field_value(modified)
            f = &h.fields[modified]
            e.modified_time = parse_http_date(h.buf + f.value_start, f.value_end - f.value_start)
        if e.modified_time < 0 and date >= 0:
            e.modified_time = date
        initial = corrected_initial_age(age_value, date, wall, fill.request_time, now)
        e.lifetime = lifetime if lifetime > 0 else 0.0
        e.age_base = initial - now
        e.fresh_until = now + e.lifetime - initial
        if storable and names is not None:
            e.vary_names = tuple(names)
            e.vary_values = tuple([_joined_values(req, name) for name in names])
        return e

    cdef bint insert(self, CacheEntry e) except -1:
        """Stores `e` (replacing the same variant), evicting the least recently used
        entries to stay within max_total. False when it cannot fit at all."""
        cdef PyObject* p
        cdef CacheEntry v, nxt
        cdef int n
        if e.size > self.max_total or e.body is None:
            return False
        p = PyDict_GetItem(self.entries, e.key)
        v = <CacheEntry>p if p != NULL else None
        while v is not None:
            nxt = v.next_variant
            if v.host == e.host and v.target == e.target and v.vary_names == e.vary_names \
                    and v.vary_values == e.vary_values:
                self.remove(v)
            v = nxt
        while self.total + e.size > self.max_total and self.oldest is not None:
            self.evictions += 1
            self.remove(self.oldest)
        p = PyDict_GetItem(self.entries, e.key)
        e.next_variant = <CacheEntry>p if p != NULL else None
        self.entries[e.key] = e
        n = 1
        v = e
        while v.next_variant is not None:
            n += 1
            if n > MAX_VARIANTS:
                self.evictions += 1
                self.remove(v.next_variant)
                break
            v = v.next_variant
        e.stored = True
        e.older = self.newest
        e.newer = None
        if self.newest is not None:
            self.newest.newer = e
        self.newest = e
        if self.oldest is None:
            self.oldest = e
        self.total += e.size
        self.count += 1
        self.stores += 1
        return True

    cdef void remove(self, CacheEntry e):
        cdef PyObject* p
        cdef CacheEntry v
        if not e.stored:
            return
        e.stored = False
        p = PyDict_GetItem(self.entries, e.key)
        if p != NULL:
            v = <CacheEntry>p
            if v is e:
                if e.next_variant is None:
                    del self.entries[e.key]
                else:
                    self.entries[e.key] = e.next_variant
            else:
                while v.next_variant is not None and v.next_variant is not e:
                    v = v.next_variant
                if v.next_variant is e:
                    v.next_variant = e.next_variant
        e.next_variant = None
        if e.older is not None:
            e.older.newer = e.newer
        else:
            self.oldest = e.newer
        if e.newer is not None:
            e.newer.older = e.older
        else:
            self.newest = e.older
        e.older = None
        e.newer = None
        self.total -= e.size
        self.count -= 1

    cdef void invalidate(self, uint64_t key):
        """Removes every stored variant of the URL with this key."""
        cdef PyObject* p = PyDict_GetItem(self.entries, key)
        while p != NULL:
            self.remove(<CacheEntry>p)
            p = PyDict_GetItem(self.entries, key)

    cdef void _touch(self, CacheEntry e) noexcept:
        """Makes `e` the most recently used."""
        if self.newest is e:
            return
        if e.older is not None:
            e.older.newer = e.newer
        else:
            self.oldest = e.newer
        e.newer.older = e.older
        e.older = self.newest
        e.newer = None
        self.newest.newer = e
        self.newest = e

    # -- Python-level forms, for tests and tools -------------------------------------------

    def clear(self):
        while self.oldest is not None:
            self.remove(self.oldest)

    def exchange(self, MessageHead req, double now):
        """Looks `req` up as the downstream does: (CacheLookup, CacheExchange)."""
        cdef CacheExchange x = CacheExchange()
        return self.lookup(req, x, now), x

    def fill_for(self, MessageHead req, CacheExchange x, double now):
        """coalesce() for `x`'s miss, with a placeholder waiter: (action, fill or None)."""
        action = self.coalesce(req, x, object(), now)
        return action, (x.fill if action == COALESCE_LEAD else x.waiting_on)

    def answer(self, CacheExchange x, MessageHead req, double now, bint close=False):
        """The bytes that answer `req` from `x.entry`, as a hit would."""
        return self.response(x.entry, True, req.method == M_HEAD,
                             self.not_modified(x.entry, req, x), close, False, None, None, now)

    def urls(self):
        """(host, target) of the stored entries, most recently used first."""
        cdef CacheEntry e = self.newest
        out = []
        while e is not None:
            out.append((e.host, e.target))
            e = e.older
        return out


cdef double _age_value(MessageHead h) noexcept:
    """The Age of a response (delta-seconds), 0 without a valid one."""
    cdef double v = 0
    cdef Py_ssize_t i
    cdef int k
    cdef Field* f
    for k in range(h.nfields):
        f = &h.fields[k]
        if not _named(h, f, b"age", 3):
            continue
        if f.value_end == f.value_start:
            return 0
        for i in range(f.value_start, f.value_end):
            if not (b'0' <= h.buf[i] <= b'9'):
                return 0
            if v < 2147483648.0:
                v = v * 10 + (h.buf[i] - 48)
        return v
    return 0


cdef MessageHead _stored_head(MessageHead resp, MessageHead base):
    """The head to store for `resp` (its end-to-end fields: see _stored_field), parsed;
    with `base`, `resp` is a 304 whose fields replace those of the same names in the
    stored head `base` (RFC 9111 4.3.4). None if it does not parse back (never expected)."""
    cdef MessageHead src = base if base is not None else resp
    cdef MessageHead h
    cdef Field* f
    cdef Field* g
    cdef int i, j
    cdef bint replaced, dated = False
    lines = [b"HTTP/1.1 ", src.buf[src.reason_start:src.line_end], b"\r\n"]
    if base is not None:
        for i in range(base.nfields):
            f = &base.fields[i]
            replaced = False
            for j in range(resp.nfields):
                g = &resp.fields[j]
                if _stored_field(resp, g) and g.name_end - g.line_start == f.name_end - f.line_start \
                        and strncasecmp(resp.buf + g.line_start, base.buf + f.line_start,
                                        f.name_end - f.line_start) == 0:
                    replaced = True
                    break
            if not replaced:
                lines.append(base.buf[f.line_start:f.line_end])
    for i in range(resp.nfields):
        f = &resp.fields[i]
        if _stored_field(resp, f):
            lines.append(resp.buf[f.line_start:f.line_end])
            dated = dated or _named(resp, f, b"date", 4)
    if base is None and not dated:
        # RFC 9110 6.6.1: a cache records when a response without Date was received.
        lines.append(b"date: " + email.utils.formatdate(wall_now(), usegmt=True).encode() + b"\r\n")
    lines.append(b"\r\n")
    raw = b"".join(lines)
    h = MessageHead(len(lines) - 3)
    if HeadParser(STORED_LIMITS, False).feed(h, raw, 0, M_GET) != len(raw):
        return None
    return h


# Python-level forms of CacheFill's steps, for tests.
def fill_response(CacheFill fill, MessageHead resp, MessageHead req, bytes body, double now,
                  int framing=0):
    """Runs a whole response through `fill` (head, body in one piece, end): the state."""
    if fill.response_head(resp, req, framing, NULL, 0, now):
        return fill.state
    if body and fill.state == FILL_STORING:
        fill.add_body(body)
    fill.finish()
    return fill.state


def release_fill(CacheFill fill):
    return fill.release()


def revalidation_lines(CacheFill fill):
    return fill.request_lines(None)


LOOKUP_NAMES = {LOOKUP_BYPASS: "bypass", LOOKUP_HIT: "hit", LOOKUP_REVALIDATE: "revalidate",
                LOOKUP_MISS: "miss", LOOKUP_ONLY_IF_CACHED: "only-if-cached"}
FILL_NAMES = {FILL_PENDING: "pending", FILL_STORING: "storing", FILL_STORED: "stored",
              FILL_VALIDATED: "validated", FILL_UNCACHEABLE: "uncacheable",
              FILL_ABANDONED: "abandoned"}
COALESCE_NAMES = {COALESCE_WAIT: "wait", COALESCE_LEAD: "lead", COALESCE_PASS: "pass"}
