# cython: language_level=3
"""Trace context propagation: W3C Trace Context and B3, read from and written to the
parsed heads' byte spans, kept in a few C fields of the exchange (exchange.pxd
TraceContext). No Python object per header or per request.

Reading (`Tracer.start_exchange`, once per request head):

- The configured formats (`telemetry.tracing.propagate`) are tried in their configured
  order; the first that yields a valid context is continued: its trace id is kept, its
  span id becomes the parent of the sidecar's span, its sampled flag is the decision.
- W3C (https://www.w3.org/TR/trace-context/): exactly one `traceparent`,
  `version-traceid-parentid-flags`, lowercase hex only; version `ff` is invalid; version
  00 is exactly 55 characters; a later version is at least 55, with `-` after them when
  longer (its extra fields are ignored); an all-zero trace id or parent id is invalid.
  `tracestate` is read only along with a valid traceparent: all its fields combined,
  members `key=value` checked against the spec's grammar (an invalid one, or more than 32,
  discards it whole); over 512 bytes it is truncated as the spec recommends (members
  over 128 bytes go first, then members from the end).
- B3 (https://github.com/openzipkin/b3-propagation): the single `b3` header first
  (`{trace}-{span}[-{sampling}[-{parent}]]`, or a lone sampling state `0`, `1`, `d`),
  else `x-b3-traceid` (16 or 32 lowercase hex), `x-b3-spanid` (16), `x-b3-parentspanid`,
  `x-b3-sampled` (`1`/`0`, or `true`/`false`) and `x-b3-flags: 1` (debug: sampled). A
  sampling state without ids is a decision for a new trace; ids without a sampling state
  leave the decision to the sidecar.
- No (valid) context: a new trace with random ids. No incoming decision: sampled when
  the trace id's low bits fall under `telemetry.tracing.sample` (so every sidecar that
  sees the trace id decides the same way).

Writing (`trace_headers_size`/`put_trace_headers`, from head_rewrite): for each
configured format the incoming fields of that format are dropped and ours written, with
the sidecar's span id as the parent the upstream sees: `traceparent` (+ `tracestate`),
and `x-b3-traceid/spanid/parentspanid/sampled` (`x-b3-flags: 1` for debug) plus the
single `b3` when the caller used it. Formats not configured pass through untouched.

Sampled exchanges become one OTLP span each (`Tracer.export_exchange`, see otlp.pyx),
the only Python object tracing makes per request, and only for those.
"""
import os

from cpython.bytes cimport PyBytes_AS_STRING
from libc.string cimport memcpy

from fastpath.exchange cimport (
    TraceContext, ExchangeRecord,
    TRACE_ON, TRACE_SAMPLED, TRACE_DEBUG, TRACE_RANDOM, TRACE_STATE, TRACE_STATE_BOUNDED,
    TRACE_EMIT_W3C, TRACE_EMIT_B3, TRACE_EMIT_B3_SINGLE, TRACE_FROM_W3C, TRACE_FROM_B3,
)
from fastpath.parser cimport (
    MessageHead, Field, HDR_TRACEPARENT, HDR_TRACESTATE, HDR_B3, HDR_X_B3_TRACEID,
    HDR_X_B3_SPANID, HDR_X_B3_PARENTSPANID, HDR_X_B3_SAMPLED, HDR_X_B3_FLAGS,
)
from fastpath.otlp cimport encode_exchange_span

DEF TRACESTATE_MAX_MEMBERS = 32
DEF TRACESTATE_MAX_BYTES = 512
DEF TRACESTATE_LONG_MEMBER = 128

cdef int W3C_FIELDS = (1 << (HDR_TRACEPARENT - HDR_TRACEPARENT)) | (1 << (HDR_TRACESTATE - HDR_TRACEPARENT))
cdef int B3_FIELDS = ((1 << (HDR_B3 - HDR_TRACEPARENT)) | (1 << (HDR_X_B3_TRACEID - HDR_TRACEPARENT))
                      | (1 << (HDR_X_B3_SPANID - HDR_TRACEPARENT))
                      | (1 << (HDR_X_B3_PARENTSPANID - HDR_TRACEPARENT))
                      | (1 << (HDR_X_B3_SAMPLED - HDR_TRACEPARENT))
                      | (1 << (HDR_X_B3_FLAGS - HDR_TRACEPARENT)))

# What reading one format found.
cdef enum Found:
    FOUND_NOTHING = 0
    FOUND_DECISION = 1      # a sampling decision, no ids (B3 only)
    FOUND_CONTEXT = 2       # ids (and maybe a decision)

cdef enum Decision:
    DECIDE_DEFER = 0        # no decision came in: the sample rate decides
    DECIDE_DROP = 1
    DECIDE_SAMPLE = 2
    DECIDE_DEBUG = 3

cdef const char* HEX_DIGITS = b"0123456789abcdef"


# -- hex ----------------------------------------------------------------------------------

cdef inline int _hex(unsigned char c) noexcept:
    """The value of a lowercase hex digit, or -1 (uppercase is invalid in both formats)."""
    if 48 <= c <= 57:
        return c - 48
    if 97 <= c <= 102:
        return c - 87
    return -1


cdef bint _parse_hex64(const char* p, Py_ssize_t n, unsigned long long* out) noexcept:
    """`n` (<= 16) lowercase hex digits into *out; False when any is not one."""
    cdef unsigned long long v = 0
    cdef Py_ssize_t i
    cdef int d
    for i in range(n):
        d = _hex(<unsigned char>p[i])
        if d < 0:
            return False
        v = (v << 4) | <unsigned long long>d
    out[0] = v
    return True


cdef bint _parse_trace_id(const char* p, Py_ssize_t n, unsigned long long* hi,
                          unsigned long long* lo) noexcept:
    """A 32 or (B3 only: callers check) 16 hex digit trace id, not all zero."""
    if n == 32:
        if not _parse_hex64(p, 16, hi) or not _parse_hex64(p + 16, 16, lo):
            return False
    elif n == 16:
        hi[0] = 0
        if not _parse_hex64(p, 16, lo):
            return False
    else:
        return False
    return hi[0] != 0 or lo[0] != 0


cdef bint _parse_span_id(const char* p, Py_ssize_t n, unsigned long long* out) noexcept:
    return n == 16 and _parse_hex64(p, 16, out) and out[0] != 0


cdef inline char* _put_hex64(char* w, unsigned long long v) noexcept:
    cdef int k
    for k in range(15, -1, -1):
        w[k] = HEX_DIGITS[v & 15]
        v >>= 4
    return w + 16


cdef inline char* _put(char* w, const char* s, Py_ssize_t n) noexcept:
    memcpy(w, s, n)
    return w + n


# -- reading W3C --------------------------------------------------------------------------

cdef int _read_w3c(TraceContext* t, MessageHead h, int* decision) noexcept:
    cdef int i, index = -1
    cdef Field* f
    cdef const char* v
    cdef Py_ssize_t n
    cdef unsigned long long version, flags, hi, lo, parent
    cdef Py_ssize_t ts
    for i in range(h.nfields):
        if h.fields[i].kind == HDR_TRACEPARENT:
            if index >= 0:
                return FOUND_NOTHING          # more than one traceparent: invalid
            index = i
    if index < 0:
        return FOUND_NOTHING
    f = &h.fields[index]
    v = h.buf + f.value_start
    n = f.value_end - f.value_start
    if n < 55 or not _parse_hex64(v, 2, &version) or version == 0xff:
        return FOUND_NOTHING
    if (version == 0 and n != 55) or (n > 55 and v[55] != b'-'):
        return FOUND_NOTHING
    if v[2] != b'-' or v[35] != b'-' or v[52] != b'-':
        return FOUND_NOTHING
    if not _parse_trace_id(v + 3, 32, &hi, &lo) or not _parse_span_id(v + 36, 16, &parent):
        return FOUND_NOTHING
    if not _parse_hex64(v + 53, 2, &flags):
        return FOUND_NOTHING
    t.trace_hi = hi
    t.trace_lo = lo
    t.parent_id = parent
    t.flags |= TRACE_FROM_W3C
    if flags & 2:
        t.flags |= TRACE_RANDOM
    decision[0] = DECIDE_SAMPLE if flags & 1 else DECIDE_DROP
    if h.trace_fields & (1 << (HDR_TRACESTATE - HDR_TRACEPARENT)):
        ts = tracestate_text(h, NULL, False)
        if ts > TRACESTATE_MAX_BYTES:
            t.flags |= TRACE_STATE | TRACE_STATE_BOUNDED
        elif ts > 0:
            t.flags |= TRACE_STATE
    return FOUND_CONTEXT


# tracestate keys: lcalpha, digits, "_", "-", "*", "/", and one "@" (tenant@system).
cdef inline bint _key_char(unsigned char c) noexcept:
    return (97 <= c <= 122) or (48 <= c <= 57) or c == b'_' or c == b'-' or c == b'*' or c == b'/'


cdef bint _valid_member(const char* p, Py_ssize_t n) noexcept:
    """One tracestate list-member `key=value` (already OWS-trimmed)."""
    cdef Py_ssize_t i = 0, at = -1, eq = -1
    cdef unsigned char c
    while i < n:
        c = <unsigned char>p[i]
        if c == b'=':
            eq = i
            break
        if c == b'@':
            if at >= 0:
                return False
            at = i
        elif not _key_char(c):
            return False
        i += 1
    if eq <= 0 or eq > 256:
        return False
    c = <unsigned char>p[0]
    if not ((97 <= c <= 122) or (at > 0 and 48 <= c <= 57)):
        return False
    if at >= 0:
        # tenant-id@system-id: at most 241 and 14 characters, the system id starts lcalpha
        if at == 0 or at > 241 or eq - at - 1 < 1 or eq - at - 1 > 14:
            return False
        if not (97 <= <unsigned char>p[at + 1] <= 122):
            return False
    if n - eq - 1 < 1 or n - eq - 1 > 256:
        return False
    for i in range(eq + 1, n):
        c = <unsigned char>p[i]
        if c < 0x20 or c > 0x7e or c == b',' or c == b'=':
            return False
    return p[n - 1] != b' '


cdef Py_ssize_t tracestate_text(MessageHead h, char* w, bint bounded) noexcept:
    """The tracestate to forward: every `tracestate` field's members, in order, joined by
    commas. Written to `w` unless NULL; returns its length, or -1 when the tracestate is
    invalid (a bad member, more than 32). `bounded`: keep it within 512 bytes, dropping
    members over 128 bytes, then the members that no longer fit."""
    cdef int i, members = 0
    cdef Field* f
    cdef const char* b = h.buf
    cdef Py_ssize_t s, e, ms, me, total = 0
    cdef Py_ssize_t extra
    for i in range(h.nfields):
        f = &h.fields[i]
        if f.kind != HDR_TRACESTATE:
            continue
        s = f.value_start
        while s <= f.value_end:
            e = s
            while e < f.value_end and b[e] != b',':
                e += 1
            ms = s
            me = e
            while ms < me and (b[ms] == b' ' or b[ms] == b'\t'):
                ms += 1
            while me > ms and (b[me - 1] == b' ' or b[me - 1] == b'\t'):
                me -= 1
            s = e + 1
            if me == ms:
                continue                        # empty members are allowed, and dropped
            members += 1
            if members > TRACESTATE_MAX_MEMBERS or not _valid_member(b + ms, me - ms):
                return -1
            if bounded:
                if me - ms > TRACESTATE_LONG_MEMBER:
                    continue
                extra = me - ms + (1 if total else 0)
                if total + extra > TRACESTATE_MAX_BYTES:
                    return total                 # this one and all after it are dropped
            if w != NULL:
                if total:
                    w[total] = b','
                    total += 1
                memcpy(w + total, b + ms, me - ms)
                total += me - ms
            else:
                total += me - ms + (1 if total else 0)
    return total


# -- reading B3 ---------------------------------------------------------------------------

cdef int _sampling_state(const char* p, Py_ssize_t n) noexcept:
    if n == 1:
        if p[0] == b'1':
            return DECIDE_SAMPLE
        if p[0] == b'0':
            return DECIDE_DROP
        if p[0] == b'd':
            return DECIDE_DEBUG
    return -1


cdef int _read_b3_single(TraceContext* t, MessageHead h, int index, int* decision) noexcept:
    cdef Field* f = &h.fields[index]
    cdef const char* v = h.buf + f.value_start
    cdef Py_ssize_t n = f.value_end - f.value_start
    cdef Py_ssize_t tl, pos
    cdef int state
    cdef unsigned long long hi, lo, span, parent = 0
    if n == 1:
        state = _sampling_state(v, 1)
        if state < 0:
            return FOUND_NOTHING
        decision[0] = state
        return FOUND_DECISION
    tl = 0
    while tl < n and v[tl] != b'-':
        tl += 1
    if tl != 16 and tl != 32:
        return FOUND_NOTHING
    if not _parse_trace_id(v, tl, &hi, &lo):
        return FOUND_NOTHING
    pos = tl + 1
    if n < pos + 16 or not _parse_span_id(v + pos, 16, &span):
        return FOUND_NOTHING
    pos += 16
    state = DECIDE_DEFER
    if n > pos:
        if v[pos] != b'-' or n < pos + 2:
            return FOUND_NOTHING
        state = _sampling_state(v + pos + 1, 1)
        if state < 0:
            return FOUND_NOTHING
        pos += 2
        if n > pos:
            if v[pos] != b'-' or n != pos + 17 or not _parse_span_id(v + pos + 1, 16, &parent):
                return FOUND_NOTHING
            pos += 17
    if pos != n:
        return FOUND_NOTHING
    t.trace_hi = hi
    t.trace_lo = lo
    t.parent_id = span
    t.flags |= TRACE_FROM_B3 | TRACE_EMIT_B3_SINGLE
    decision[0] = state
    return FOUND_CONTEXT


cdef int _read_b3_multi(TraceContext* t, MessageHead h, int* decision) noexcept:
    cdef int i
    cdef Field* f
    cdef const char* v
    cdef Py_ssize_t n
    cdef int k, trace_i = -1, span_i = -1, parent_i = -1, sampled_i = -1, flags_i = -1
    cdef int state = DECIDE_DEFER
    cdef unsigned long long hi, lo, span, parent
    for i in range(h.nfields):
        k = h.fields[i].kind
        if k == HDR_X_B3_TRACEID and trace_i < 0:
            trace_i = i
        elif k == HDR_X_B3_SPANID and span_i < 0:
            span_i = i
        elif k == HDR_X_B3_PARENTSPANID and parent_i < 0:
            parent_i = i
        elif k == HDR_X_B3_SAMPLED and sampled_i < 0:
            sampled_i = i
        elif k == HDR_X_B3_FLAGS and flags_i < 0:
            flags_i = i
    if sampled_i >= 0:
        f = &h.fields[sampled_i]
        v = h.buf + f.value_start
        n = f.value_end - f.value_start
        if (n == 1 and v[0] == b'1') or (n == 4 and memcmp_ci(v, b"true", 4)):
            state = DECIDE_SAMPLE
        elif (n == 1 and v[0] == b'0') or (n == 5 and memcmp_ci(v, b"false", 5)):
            state = DECIDE_DROP
    if flags_i >= 0:
        f = &h.fields[flags_i]
        if f.value_end - f.value_start == 1 and h.buf[f.value_start] == b'1':
            state = DECIDE_DEBUG
    if trace_i < 0 and span_i < 0:
        if state == DECIDE_DEFER:
            return FOUND_NOTHING
        decision[0] = state
        return FOUND_DECISION
    if trace_i < 0 or span_i < 0:
        return FOUND_NOTHING
    f = &h.fields[trace_i]
    if not _parse_trace_id(h.buf + f.value_start, f.value_end - f.value_start, &hi, &lo):
        return FOUND_NOTHING
    f = &h.fields[span_i]
    if not _parse_span_id(h.buf + f.value_start, f.value_end - f.value_start, &span):
        return FOUND_NOTHING
    if parent_i >= 0:
        f = &h.fields[parent_i]
        if not _parse_span_id(h.buf + f.value_start, f.value_end - f.value_start, &parent):
            return FOUND_NOTHING
    t.trace_hi = hi
    t.trace_lo = lo
    t.parent_id = span
    t.flags |= TRACE_FROM_B3
    decision[0] = state
    return FOUND_CONTEXT


cdef inline bint memcmp_ci(const char* p, const char* lower, Py_ssize_t n) noexcept:
    cdef Py_ssize_t i
    for i in range(n):
        if (<unsigned char>p[i] | 0x20) != <unsigned char>lower[i]:
            return False
    return True


cdef int _read_b3(TraceContext* t, MessageHead h, int* decision) noexcept:
    cdef int i
    cdef int found
    if h.trace_fields & (1 << (HDR_B3 - HDR_TRACEPARENT)):
        for i in range(h.nfields):
            if h.fields[i].kind == HDR_B3:
                found = _read_b3_single(t, h, i, decision)
                if found != FOUND_NOTHING:
                    return found
                break
    return _read_b3_multi(t, h, decision)


cdef void _drop_fields_of(MessageHead h, int first_kind, int last_kind) noexcept:
    """Marks the fields of kinds [first_kind, last_kind] as not forwarded (replaced)."""
    cdef int i
    for i in range(h.nfields):
        if first_kind <= h.fields[i].kind <= last_kind:
            h.fields[i].drop = True


# -- writing ------------------------------------------------------------------------------

cdef inline Py_ssize_t _trace_id_len(const TraceContext* t) noexcept:
    return 32 if t.trace_hi else 16


cdef inline char* _put_trace_id(char* w, const TraceContext* t, bint full) noexcept:
    if full or t.trace_hi:
        w = _put_hex64(w, t.trace_hi)
    return _put_hex64(w, t.trace_lo)


cdef Py_ssize_t trace_headers_size(const TraceContext* t, MessageHead h) noexcept:
    """Bytes `put_trace_headers` writes for this context."""
    cdef Py_ssize_t n = 0
    cdef Py_ssize_t ts
    cdef unsigned int fl = t.flags
    if not (fl & TRACE_ON):
        return 0
    if fl & TRACE_EMIT_W3C:
        n += 13 + 55 + 2                               # traceparent: ...\r\n
        if fl & TRACE_STATE:
            ts = tracestate_text(h, NULL, (fl & TRACE_STATE_BOUNDED) != 0)
            if ts > 0:
                n += 12 + ts + 2                       # tracestate: ...\r\n
    if fl & TRACE_EMIT_B3:
        n += 14 + _trace_id_len(t) + 2 + 13 + 16 + 2   # x-b3-traceid, x-b3-spanid
        if t.parent_id:
            n += 19 + 16 + 2                           # x-b3-parentspanid
        n += 15 if fl & TRACE_DEBUG else 17            # x-b3-flags: 1 / x-b3-sampled: N
        if fl & TRACE_EMIT_B3_SINGLE:
            n += 4 + _trace_id_len(t) + 1 + 16 + 2 + 2  # b3: trace-span-s\r\n
            if t.parent_id:
                n += 17
    return n


cdef char* put_trace_headers(char* w, const TraceContext* t, MessageHead h) noexcept:
    """Writes the outgoing trace fields (see the module rules); returns the end."""
    cdef unsigned int fl = t.flags
    cdef Py_ssize_t ts
    cdef char state
    if not (fl & TRACE_ON):
        return w
    if fl & TRACE_EMIT_W3C:
        w = _put(w, b"traceparent: 00-", 16)
        w = _put_trace_id(w, t, True)
        w[0] = b'-'
        w = _put_hex64(w + 1, t.span_id)
        w = _put(w, b"-0", 2)
        w[0] = HEX_DIGITS[(2 if fl & TRACE_RANDOM else 0) | (1 if fl & TRACE_SAMPLED else 0)]
        w = _put(w + 1, b"\r\n", 2)
        if fl & TRACE_STATE:
            ts = tracestate_text(h, w + 12, (fl & TRACE_STATE_BOUNDED) != 0)
            if ts > 0:
                _put(w, b"tracestate: ", 12)
                w = _put(w + 12 + ts, b"\r\n", 2)
    if fl & TRACE_EMIT_B3:
        w = _put(w, b"x-b3-traceid: ", 14)
        w = _put_trace_id(w, t, False)
        w = _put(w, b"\r\nx-b3-spanid: ", 15)
        w = _put_hex64(w, t.span_id)
        w = _put(w, b"\r\n", 2)
        if t.parent_id:
            w = _put(w, b"x-b3-parentspanid: ", 19)
            w = _put_hex64(w, t.parent_id)
            w = _put(w, b"\r\n", 2)
        if fl & TRACE_DEBUG:
            w = _put(w, b"x-b3-flags: 1\r\n", 15)
        elif fl & TRACE_SAMPLED:
            w = _put(w, b"x-b3-sampled: 1\r\n", 17)
        else:
            w = _put(w, b"x-b3-sampled: 0\r\n", 17)
        if fl & TRACE_EMIT_B3_SINGLE:
            state = b'd' if fl & TRACE_DEBUG else (b'1' if fl & TRACE_SAMPLED else b'0')
            w = _put(w, b"b3: ", 4)
            w = _put_trace_id(w, t, False)
            w[0] = b'-'
            w = _put_hex64(w + 1, t.span_id)
            w[0] = b'-'
            w[1] = state
            w += 2
            if t.parent_id:
                w[0] = b'-'
                w = _put_hex64(w + 1, t.parent_id)
            w = _put(w, b"\r\n", 2)
    return w


# -- the tracer ---------------------------------------------------------------------------

cdef class Tracer:
    def __cinit__(self):
        cdef bytes seed = os.urandom(8)
        cdef const unsigned char* p = <const unsigned char*>PyBytes_AS_STRING(seed)
        cdef int k
        self.rng_state = 0
        for k in range(8):
            self.rng_state = (self.rng_state << 8) | p[k]
        self.names = ((), (), ())
        self.previous_names = self.names
        self.names_applied_at = 0.0
        self.configure(("w3c", "b3"), 0.0)

    def configure(self, propagate, double sample):
        """Formats to read and write, in order of precedence ("w3c", "b3"), and the share
        of new traces sampled (0..1). Applies to exchanges that start from now on."""
        self.nformats = 0
        self.emit_flags = 0
        for name in propagate:
            if self.nformats == 2:
                break
            if name == "w3c" and not self.emit_flags & TRACE_EMIT_W3C:
                self.formats[self.nformats] = FORMAT_W3C
                self.emit_flags |= TRACE_EMIT_W3C
            elif name == "b3" and not self.emit_flags & TRACE_EMIT_B3:
                self.formats[self.nformats] = FORMAT_B3
                self.emit_flags |= TRACE_EMIT_B3
            else:
                continue
            self.nformats += 1
        if sample >= 1.0:
            self.sample_threshold = 1ULL << 63
        elif sample <= 0.0:
            self.sample_threshold = 0
        else:
            self.sample_threshold = <unsigned long long>(sample * 9223372036854775808.0)

    def set_names(self, inbound_routes, outbound_routes, services, double applied_at):
        """Route and service names of the snapshot taking effect at `applied_at` (spans of
        exchanges that began before it are named from the previous one)."""
        self.previous_names = self.names
        self.names = (tuple(n.encode() for n in inbound_routes),
                         tuple(n.encode() for n in outbound_routes),
                         tuple(n.encode() for n in services))
        self.names_applied_at = applied_at

    cdef unsigned long long next_id(self) noexcept:
        """splitmix64: random enough for ids, a few instructions each; never 0."""
        cdef unsigned long long z
        while True:
            self.rng_state += 0x9e3779b97f4a7c15ULL
            z = self.rng_state
            z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL
            z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL
            z = z ^ (z >> 31)
            if z:
                return z

    cdef void start_exchange(self, TraceContext* t, MessageHead h) noexcept:
        """Sets the exchange's trace context from the request head `h` (module rules) and
        marks the incoming fields of the configured formats as replaced."""
        cdef int i
        cdef int found = FOUND_NOTHING
        cdef int decision = DECIDE_DEFER
        t.flags = TRACE_ON | self.emit_flags
        t.parent_id = 0
        if h.trace_fields and self.nformats:
            for i in range(self.nformats):
                if self.formats[i] == FORMAT_W3C and h.trace_fields & W3C_FIELDS:
                    found = _read_w3c(t, h, &decision)
                elif self.formats[i] == FORMAT_B3 and h.trace_fields & B3_FIELDS:
                    found = _read_b3(t, h, &decision)
                if found == FOUND_CONTEXT:
                    break
                if found == FOUND_DECISION:
                    # A B3 decision without ids: a later format may still bring ids.
                    continue
            if self.emit_flags & TRACE_EMIT_W3C and h.trace_fields & W3C_FIELDS:
                _drop_fields_of(h, HDR_TRACEPARENT, HDR_TRACESTATE)
            if self.emit_flags & TRACE_EMIT_B3 and h.trace_fields & B3_FIELDS:
                _drop_fields_of(h, HDR_B3, HDR_X_B3_FLAGS)
        if found != FOUND_CONTEXT:
            t.flags &= ~(TRACE_FROM_W3C | TRACE_FROM_B3 | TRACE_STATE | TRACE_STATE_BOUNDED
                         | TRACE_EMIT_B3_SINGLE)
            t.trace_hi = self.next_id()
            t.trace_lo = self.next_id()
            t.parent_id = 0
            t.flags |= TRACE_RANDOM
        if decision == DECIDE_DEFER:
            if (t.trace_lo >> 1) < self.sample_threshold:
                t.flags |= TRACE_SAMPLED
        elif decision == DECIDE_SAMPLE:
            t.flags |= TRACE_SAMPLED
        elif decision == DECIDE_DEBUG:
            t.flags |= TRACE_SAMPLED | TRACE_DEBUG
        t.span_id = self.next_id()

    cdef void export_exchange(self, int direction, ExchangeRecord* rec, MessageHead req,
                              object upstream_host, int upstream_port, bytes client_ip,
                              const char* request_id, Py_ssize_t request_id_len, double now):
        """Queues the span of a finished sampled exchange for the exporter."""
        cdef tuple names = self.previous_names if rec.start < self.names_applied_at else self.names
        cdef tuple routes = names[direction & 1]
        cdef tuple services = names[2]
        cdef bytes route = routes[rec.route] if 0 <= rec.route < len(routes) else None
        cdef bytes service = services[rec.service] if 0 <= rec.service < len(services) else None
        cdef bytes flags = None
        cdef char state[TRACESTATE_MAX_BYTES]
        cdef Py_ssize_t state_len = 0
        if rec.flags and self.flags_text is not None:
            flags = self.flags_text(rec.flags).encode()
        if rec.trace.flags & TRACE_STATE:
            # Within 512 bytes: longer ones were marked BOUNDED, and bounded text fits.
            state_len = tracestate_text(req, state, (rec.trace.flags & TRACE_STATE_BOUNDED) != 0)
        span = encode_exchange_span(direction, rec, req, upstream_host, upstream_port,
                                    client_ip, request_id, request_id_len, state,
                                    state_len if state_len > 0 else 0, route, service,
                                    flags, now)
        self.spans_built += 1
        self.exporter.push(span)

    # -- Python entries, for tests and tools ---------------------------------------------

    def context_of(self, MessageHead h):
        """The context start_exchange gives head `h`: a dict (tests and tools)."""
        cdef TraceContext t
        self.start_exchange(&t, h)
        return _context_dict(&t, h)

    def new_ids(self, int n):
        """n ids from the generator (tests)."""
        return [self.next_id() for _ in range(n)]


cdef dict _context_dict(const TraceContext* t, MessageHead h):
    cdef bytes state = None
    cdef Py_ssize_t ts
    if t.flags & TRACE_STATE:
        ts = tracestate_text(h, NULL, (t.flags & TRACE_STATE_BOUNDED) != 0)
        state = bytes(ts)
        tracestate_text(h, <char*>PyBytes_AS_STRING(state), (t.flags & TRACE_STATE_BOUNDED) != 0)
    return {
        "trace_id": "%016x%016x" % (t.trace_hi, t.trace_lo),
        "span_id": "%016x" % t.span_id,
        "parent_id": "%016x" % t.parent_id if t.parent_id else None,
        "sampled": bool(t.flags & TRACE_SAMPLED),
        "debug": bool(t.flags & TRACE_DEBUG),
        "from": "w3c" if t.flags & TRACE_FROM_W3C else ("b3" if t.flags & TRACE_FROM_B3 else None),
        "b3_single": bool(t.flags & TRACE_EMIT_B3_SINGLE),
        "tracestate": state,
    }


def trace_headers(Tracer tracer, MessageHead h):
    """(the trace fields a request forwarded for head `h` carries, its context), for
    tests; raises AssertionError when put_trace_headers writes other than the size
    trace_headers_size announced (the head rewriter allocates by that size)."""
    cdef TraceContext t
    cdef bytes out
    cdef Py_ssize_t n, written
    cdef char* w
    tracer.start_exchange(&t, h)
    n = trace_headers_size(&t, h)
    out = bytes(n + 1024)
    w = <char*>PyBytes_AS_STRING(out)
    written = put_trace_headers(w, &t, h) - w
    if written != n:
        raise AssertionError("trace_headers_size said %d, put_trace_headers wrote %d" % (n, written))
    return out[:n], _context_dict(&t, h)
