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
  stored body; any other response replaces it, but a 5xx, which leaves it to be validated
  later. Stale and without validators: removed.
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

Storing (`CacheFill`): the response of a fetch is judged when its head arrives
(cache_entry.pyx has the rules), and one delimited by closing the connection is never
stored, since a cut could not be told from its end. The body is captured as it streams
to the client, up to `max_entry` bytes: a larger one (declared or streamed) is passed
through and nothing of it kept. Answers from the store are cache_entry.pyx's `answer`.

Bounds: `max_total` bytes per store (an entry counts its head, body, parsed fields and a
fixed overhead), least recently used entries evicted first; at most MAX_VARIANTS variants
per URL. The store is per worker: workers do not share entries, and each fills its own.
"""
import os

from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_GET_SIZE, PyBytes_FromStringAndSize
from cpython.dict cimport PyDict_GetItem
from cpython.ref cimport PyObject
from libc.stdint cimport uint64_t
from libc.string cimport memcpy, memset

from fastpath.parser cimport (
    MessageHead, ChunkedDecoder, Field, join_spans, M_GET, M_HEAD, M_OPTIONS, M_TRACE,
    M_CONNECT, BODY_NONE, BODY_LENGTH, BODY_UNTIL_CLOSE,
)
from fastpath.head_rewrite cimport FRAME_CHUNKED
from fastpath.lru_table cimport hash_span
from fastpath.cache_control cimport (
    CacheControl, parse_cache_control, has_token, storable_status,
    CC_PRESENT, CC_NO_STORE, CC_NO_CACHE, CC_MAX_AGE, CC_MIN_FRESH, CC_ONLY_IF_CACHED,
)
from fastpath.cache_entry cimport (
    CacheEntry, EntryOrigin, entry_for, set_body, entry_matches, conditional_matches, answer,
)


cdef extern from "strings.h":
    int strncasecmp(const char* a, const char* b, size_t n)

cdef extern from "ctype.h":
    int tolower(int c)


DEF MAX_HOST = 320                 # longer Host values bypass the cache
DEF MAX_VARIANTS = 16              # stored variants per URL; the oldest goes first

COALESCE_TIMEOUT = 5.0             # seconds a miss waits for the same response in flight


cdef class CacheExchange:
    def __cinit__(self):
        self.if_none_match = -1
        self.if_modified_since = -1


cdef class CacheFill:
    def __cinit__(self):
        self.expected_length = -1
        self.origin.service = -1

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
                e = entry_for(resp, req, old, &self.origin, now)
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
        e = entry_for(resp, req, None, &self.origin, now)
        if e is None:
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
        set_body(e, body)
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
            p = PyDict_GetItem(cache.pending, self.origin.key)
            if p != NULL and <object>p is self:
                del cache.pending[self.origin.key]
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
            if entry_matches(e, req):
                return e
            e = e.next_variant
        return None

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
        fill.origin.key = x.key
        fill.origin.authorized = (x.flags & RQ_AUTHORIZATION) != 0
        fill.origin.request_time = now
        fill.origin.ttl = self.ttl
        fill.validating = x.entry
        fill.leader = True
        self.pending[x.key] = fill
        x.fill = fill
        return COALESCE_LEAD

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
        return answer(x.entry, True, req.method == M_HEAD,
                      conditional_matches(x.entry, req, x.if_none_match, x.if_modified_since),
                      close, False, None, None, now)

    def urls(self):
        """(host, target) of the stored entries, most recently used first."""
        cdef CacheEntry e = self.newest
        out = []
        while e is not None:
            out.append((e.host, e.target))
            e = e.older
        return out


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
