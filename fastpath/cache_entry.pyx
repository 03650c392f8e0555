# cython: language_level=3
"""One stored response of the response cache (response_cache.pyx keeps the store): what
a response is made into, whether it matches a request, and the answer it gives.

Made (`entry_for`) from an upstream's response head, judged by the rules of
cache_control.pyx and RFC 9111 3: not stored with `no-store`, `private` (the cache is
shared), `Set-Cookie`, `Vary: *` or more than MAX_VARY_NAMES Vary fields, without
freshness for its status, as a response to a request with Authorization unless `public`,
`s-maxage` or `must-revalidate` says it may be shared (3.5), or when it must be
validated before any use (no-cache, or stale at once) and has no validator. The stored
head keeps the end-to-end fields only: no hop-by-hop or framing fields, and none of an
exchange's own (`Age`, `x-cache`, `x-request-id`, trace context); a response without
Date gets one (RFC 9110 6.6.1). A 304 that validates a stored response updates it: its
fields replace those of the same names (RFC 9111 4.3.4), the body stays.

Matched (`entry_matches`) on the Host (case-insensitive) and target, and on the request
fields its Vary names: all lines of a field joined by ",", compared as sent; an absent
field is a value of its own.

Answers (`answer`) are one bytes object: the stored head with the route's response edits,
`content-length`, `age` (whole seconds, RFC 9111 4.2.3), `x-cache`, the connection field,
then the body (none for HEAD or a 304). `x-cache` is HIT, or MISS for an answer from a
response the upstream has just validated: a hit, here, is an answer without an upstream
request. A request's own If-None-Match (weak comparison), else If-Modified-Since, is
evaluated against a 2xx entry (`conditional_matches`): a match gets a 304 carrying the
fields RFC 9110 15.4.5 lists.
"""
import email.utils

from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_GET_SIZE, PyBytes_FromStringAndSize
from cpython.tuple cimport PyTuple_GET_SIZE, PyTuple_GET_ITEM
from libc.math cimport floor
from libc.stdio cimport snprintf
from libc.string cimport memcpy, memcmp, memset
from posix.time cimport clock_gettime, timespec, CLOCK_REALTIME

from fastpath.parser cimport (
    MessageHead, HeadParser, Limits, Field, M_GET, HDR_CONTENT_LENGTH, HDR_X_REQUEST_ID,
    HDR_TRACEPARENT,
)
from fastpath.header_edits cimport HeaderEdits
from fastpath.cache_control cimport (
    CacheControl, parse_cache_control, parse_http_date, etag_list_matches,
    freshness_lifetime, corrected_initial_age, NO_FRESHNESS,
    CC_NO_STORE, CC_NO_CACHE, CC_PRIVATE, CC_PUBLIC, CC_MUST_REVALIDATE, CC_S_MAXAGE,
)


cdef extern from "strings.h":
    int strncasecmp(const char* a, const char* b, size_t n)


DEF MAX_VARY_NAMES = 16            # a response varying on more fields is not stored
DEF ENTRY_OVERHEAD = 512           # bytes an entry counts beyond its head, body and fields

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


cdef CacheEntry entry_for(MessageHead resp, MessageHead req, CacheEntry stored,
                          const EntryOrigin* origin, double now):
    """The entry the upstream's response `resp` to `req` makes. With `stored` (the stored
    response a conditional request revalidated) and a 304, the updated `stored`, made
    even when it may no longer be stored (`storable` says), since it answers the request
    that revalidated it. Otherwise an entry without its body (`set_body` once it is in),
    or None when the rules do not let `resp` be stored: judged on the upstream's head
    first, so a refusal allocates nothing."""
    cdef CacheEntry e
    cdef MessageHead h
    cdef Field* f
    if stored is not None and resp.status == 304:
        h = _stored_head(resp, stored.head)
        if h is None:
            return None
        e = _judge(h, req, origin, _age_value(resp), True, now)
        e.host = stored.host
        e.target = stored.target
        e.head = h
        set_body(e, stored.body)
        return e
    e = _judge(resp, req, origin, _age_value(resp), False, now)
    if e is None:
        return None
    e.head = _stored_head(resp, None)
    if e.head is None:
        return None
    e.host = b""
    if req.host_index >= 0:
        f = &req.fields[req.host_index]
        e.host = req.buf[f.value_start:f.value_end].lower()
    e.target = req.buf[req.target_start:req.target_end]
    return e


cdef void set_body(CacheEntry e, bytes body):
    """The body is in: the entry is complete, and counts this much against max_total."""
    e.body = body
    e.size = (PyBytes_GET_SIZE(e.head.raw) + PyBytes_GET_SIZE(body) + ENTRY_OVERHEAD
              + e.head.nfields * sizeof(Field))


cdef CacheEntry _judge(MessageHead h, MessageHead req, const EntryOrigin* origin, double age_value,
                       bint always, double now):
    """What the fields of `h` (as they would be stored) say: an entry with its
    validators, Vary, freshness and whether the rules let it be stored; None when they
    do not, unless `always`."""
    cdef CacheEntry e
    cdef CacheControl cc
    cdef Field* f
    cdef int i, etag = -1, modified = -1
    cdef bint vary_star = False, set_cookie = False, has_expires = False, storable
    cdef double date = -1, expires = -1, lifetime, wall, initial
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
                                  has_expires, expires, origin.ttl)
    storable = not (
        lifetime == NO_FRESHNESS or cc.flags & (CC_NO_STORE | CC_PRIVATE) or set_cookie
        or vary_star or (names is not None and len(names) > MAX_VARY_NAMES)
        or (origin.authorized and not cc.flags & (CC_PUBLIC | CC_S_MAXAGE | CC_MUST_REVALIDATE))
        or ((cc.flags & CC_NO_CACHE or lifetime <= 0) and etag < 0 and modified < 0))
    if not storable and not always:
        return None
    e = CacheEntry()
    e.storable = storable
    e.key = origin.key
    e.status = h.status
    e.service = origin.service
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
    initial = corrected_initial_age(age_value, date, wall, origin.request_time, now)
    e.lifetime = lifetime if lifetime > 0 else 0.0
    e.age_base = initial - now
    e.fresh_until = now + e.lifetime - initial
    if storable and names is not None:
        e.vary_names = tuple(names)
        e.vary_values = tuple([_joined_values(req, name) for name in names])
    return e


cdef bint entry_matches(CacheEntry e, MessageHead req):
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


cdef bint conditional_matches(CacheEntry e, MessageHead req, int if_none_match,
                              int if_modified_since) noexcept:
    """Whether the request's own conditional matches the stored 2xx response `e`:
    If-None-Match (weak comparison), else If-Modified-Since (the indices of those fields
    in `req`; -1: absent)."""
    cdef Field* f
    cdef double since
    if e.status < 200 or e.status >= 300:
        return False
    if if_none_match >= 0:
        f = &req.fields[if_none_match]
        if e.etag is None:
            return etag_list_matches(req.buf + f.value_start, f.value_end - f.value_start, b"", 0)
        return etag_list_matches(req.buf + f.value_start, f.value_end - f.value_start,
                                 PyBytes_AS_STRING(e.etag), PyBytes_GET_SIZE(e.etag))
    if if_modified_since >= 0:
        f = &req.fields[if_modified_since]
        since = parse_http_date(req.buf + f.value_start, f.value_end - f.value_start)
        return since >= 0 and 0 <= e.modified_time <= since
    return False


cdef bytes answer(CacheEntry e, bint hit, bint head_only, bint not_modified, bint close,
                  bint keep_alive_header, HeaderEdits edits, bytes extra, double now):
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
