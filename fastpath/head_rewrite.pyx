# cython: language_level=3
"""Writes the heads a proxy forwards, from parsed heads (RFC 9110 section 7.6).

Requests: the request line is re-sent as HTTP/1.1; hop-by-hop fields (Connection and the
fields it names, Keep-Alive, Proxy-Connection, TE, Trailer, Upgrade) are removed; the
framing is written anew from what the parser decided (one `content-length`, or
`transfer-encoding: chunked` for a body we re-frame), never copied, so no ambiguity the
client sent can reach the app; `x-forwarded-for` gets the client address appended;
`x-request-id` is kept, or generated (the caller advances the RequestId first, so it
knows the id too); the trace context fields are written by
trace_context.pyx (those it replaces are marked dropped). An upgrade keeps `upgrade` and
says `connection: upgrade`. A field the client names in Connection is hop-by-hop whatever
its name: a nominated `x-forwarded-for` is not merged into ours, a nominated `x-request-id`
is replaced by a generated one (the upstream always gets exactly one); only Host stays.
Route policy's header edits come as fields already flagged `drop` and as `extra`, field
lines written after the rest.

An HTTP/1.0 request may come without Host; HTTP/1.1 requires one (RFC 9112 3.2), so the
forwarded request gets `host:` with the authority of an absolute-form target, or else the
authority the caller knows (see `host_for`). Like Envoy, which answers 400 to a Host-less
HTTP/1.0 request unless `default_host_for_http_10` is set, the downstream refuses such a
request with 400 when it knows no authority; where Envoy takes a configured name, it takes
the address the client connected to (RFC 9112 3.3's choice when no name is configured).

Responses: the same removal, the framing the proxy chose, and `connection: close` when the
proxy closes the client connection after this response.

Each head is one bytes object, written by memcpy from the parsed head's ranges: the only
Python object per request.
"""
import os

from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_GET_SIZE, PyBytes_FromStringAndSize
from libc.stdio cimport snprintf
from libc.string cimport memcpy

from fastpath.parser cimport (
    MessageHead, Field, BODY_CHUNKED, HDR_UPGRADE, HDR_X_FORWARDED_FOR,
)
from fastpath.exchange cimport TraceContext
from fastpath.trace_context cimport Tracer, trace_headers_size, put_trace_headers


cdef class RequestId:
    """Request ids in UUID v4 text form: a random per-process prefix and a counter, so a
    new id costs a snprintf, not a call to os.urandom."""

    def __cinit__(self):
        cdef bytes seed = os.urandom(16)
        cdef const unsigned char* p = <const unsigned char*>PyBytes_AS_STRING(seed)
        cdef int k
        self.hi = 0
        self.lo = 0
        for k in range(8):
            self.hi = (self.hi << 8) | p[k]
            self.lo = (self.lo << 8) | p[8 + k]

    cdef void next(self):
        self.lo += 1
        self.format(self.lo, self.text)

    cdef void format(self, unsigned long long lo, char* out) noexcept:
        """Writes the 36 characters of the id with counter `lo` (self.lo after its next())."""
        cdef char tmp[40]
        snprintf(tmp, 40, b"%08x-%04x-4%03x-%04x-%012llx",
                 <unsigned int>(self.hi >> 32), <unsigned int>((self.hi >> 16) & 0xffff),
                 <unsigned int>(self.hi & 0xfff),
                 <unsigned int>(0x8000 | ((lo >> 48) & 0x3fff)),
                 <unsigned long long>(lo & 0xffffffffffffULL))
        memcpy(out, tmp, 36)

    @property
    def current(self):
        return self.text[:36]

    def new(self):
        self.next()
        return self.text[:36]


cdef inline char* _put(char* w, const char* s, Py_ssize_t n):
    memcpy(w, s, n)
    return w + n


cdef inline Py_ssize_t _kept_fields_size(MessageHead h):
    cdef Py_ssize_t total = 0
    cdef int i
    for i in range(h.nfields):
        if not h.fields[i].drop:
            total += h.fields[i].line_end - h.fields[i].line_start
    return total


cdef inline char* _put_kept_fields(char* w, MessageHead h):
    cdef int i
    cdef Field* f
    for i in range(h.nfields):
        f = &h.fields[i]
        if not f.drop:
            w = _put(w, h.buf + f.line_start, f.line_end - f.line_start)
    return w


cdef inline Py_ssize_t _fields_of_kind_size(MessageHead h, int kind):
    cdef Py_ssize_t total = 0
    cdef int i
    for i in range(h.nfields):
        if h.fields[i].kind == kind:
            total += h.fields[i].line_end - h.fields[i].line_start
    return total


cdef inline char* _put_fields_of_kind(char* w, MessageHead h, int kind):
    cdef int i
    for i in range(h.nfields):
        if h.fields[i].kind == kind:
            w = _put(w, h.buf + h.fields[i].line_start, h.fields[i].line_end - h.fields[i].line_start)
    return w


cdef inline Py_ssize_t _xff_values_size(MessageHead h):
    cdef Py_ssize_t total = 0
    cdef int i
    for i in range(h.nfields):
        if h.fields[i].kind == HDR_X_FORWARDED_FOR and h.fields[i].value_end > h.fields[i].value_start:
            total += h.fields[i].value_end - h.fields[i].value_start + 2
    return total


cdef inline char* _put_xff_values(char* w, MessageHead h):
    cdef int i
    cdef Field* f
    for i in range(h.nfields):
        f = &h.fields[i]
        if f.kind == HDR_X_FORWARDED_FOR and f.value_end > f.value_start:
            w = _put(w, h.buf + f.value_start, f.value_end - f.value_start)
            w = _put(w, b", ", 2)
    return w


cdef inline bint _is_scheme_char(char c):
    return (b'a' <= c <= b'z') or (b'A' <= c <= b'Z') or (b'0' <= c <= b'9') or c == b'+' \
        or c == b'-' or c == b'.'


cdef bytes host_for(MessageHead h, bytes destination):
    """The Host value for request `h`, which has none: the authority of its absolute-form
    target ("http://user@example.com:8080/x" gives "example.com:8080", RFC 9112 3.2.2),
    else `destination` (the address the client connected to, or None when unknown).
    Called only for the rare request without Host, never on the common path."""
    cdef const char* b = h.buf
    cdef Py_ssize_t s = h.target_start
    cdef Py_ssize_t e = h.target_end
    cdef Py_ssize_t i = s
    cdef Py_ssize_t host_start, end
    # scheme = ALPHA *( ALPHA / DIGIT / "+" / "-" / "." ), then "://" and the authority
    if i < e and ((b'a' <= b[i] <= b'z') or (b'A' <= b[i] <= b'Z')):
        while i < e and _is_scheme_char(b[i]):
            i += 1
        if e - i >= 3 and b[i] == b':' and b[i + 1] == b'/' and b[i + 2] == b'/':
            host_start = i + 3
            end = host_start
            while end < e and b[end] != b'/' and b[end] != b'?' and b[end] != b'#':
                if b[end] == b'@':
                    host_start = end + 1       # userinfo is never part of Host
                end += 1
            if end > host_start:
                return b[host_start:end]
    return destination


cdef bytes build_request_head(MessageHead h, bytes client_ip, RequestId request_id,
                              bytes authority, const TraceContext* trace, bytes extra):
    """The head to send upstream for the request `h` (see the module rules), with the
    trace fields of `trace` (NULL: none) and the field lines `extra` (None: none).
    `authority` is the Host value for a request without Host (`host_for`; None writes an
    empty one, as RFC 9112 3.2 says a client with no authority does); ignored when `h` has
    Host. Without an x-request-id in `h`, `request_id`'s current id is added: call its
    next() first."""
    cdef char length_text[32]
    cdef int length_len = 0
    cdef Py_ssize_t total
    cdef Py_ssize_t ip_len = PyBytes_GET_SIZE(client_ip) if client_ip is not None else 0
    cdef bint add_id = h.request_id_index < 0
    cdef bint add_host = h.host_index < 0
    cdef Py_ssize_t host_len = 0
    cdef Py_ssize_t extra_len = PyBytes_GET_SIZE(extra) if extra is not None else 0
    cdef bytes out
    cdef char* w

    if h.body_kind != BODY_CHUNKED and h.content_length >= 0:
        length_len = snprintf(length_text, 32, b"content-length: %lld\r\n", h.content_length)
    total = (h.method_end - h.start) + 1 + (h.target_end - h.target_start) + 11
    total += _kept_fields_size(h) + 2
    if add_host:
        host_len = PyBytes_GET_SIZE(authority) if authority is not None else 0
        total += 6 + host_len + 2
    if h.upgrade:
        total += 21 + _fields_of_kind_size(h, HDR_UPGRADE)
    if h.body_kind == BODY_CHUNKED:
        total += 28
    total += length_len
    if ip_len:
        total += 17 + _xff_values_size(h) + ip_len + 2
    if add_id:
        total += 14 + 36 + 2
    if trace != NULL:
        total += trace_headers_size(trace, h)
    total += extra_len

    out = PyBytes_FromStringAndSize(NULL, total)
    w = PyBytes_AS_STRING(out)
    w = _put(w, h.buf + h.start, h.method_end - h.start + 1)
    w = _put(w, h.buf + h.target_start, h.target_end - h.target_start)
    w = _put(w, b" HTTP/1.1\r\n", 11)
    if add_host:
        w = _put(w, b"host: ", 6)
        if host_len:
            w = _put(w, PyBytes_AS_STRING(authority), host_len)
        w = _put(w, b"\r\n", 2)
    w = _put_kept_fields(w, h)
    if h.upgrade:
        w = _put(w, b"connection: upgrade\r\n", 21)
        w = _put_fields_of_kind(w, h, HDR_UPGRADE)
    if h.body_kind == BODY_CHUNKED:
        w = _put(w, b"transfer-encoding: chunked\r\n", 28)
    w = _put(w, length_text, length_len)
    if ip_len:
        w = _put(w, b"x-forwarded-for: ", 17)
        w = _put_xff_values(w, h)
        w = _put(w, PyBytes_AS_STRING(client_ip), ip_len)
        w = _put(w, b"\r\n", 2)
    if add_id:
        w = _put(w, b"x-request-id: ", 14)
        w = _put(w, request_id.text, 36)
        w = _put(w, b"\r\n", 2)
    if trace != NULL:
        w = put_trace_headers(w, trace, h)
    if extra_len:
        w = _put(w, PyBytes_AS_STRING(extra), extra_len)
    _put(w, b"\r\n", 2)
    return out


cdef bytes build_response_head(MessageHead h, int framing, bint close, bint keep_alive_header,
                               bytes extra, const char* tail, Py_ssize_t tail_len):
    """The head to send to the client for the response `h` (with the field lines `extra`
    added), followed by `tail` (the first body bytes, so a small response leaves in one
    write)."""
    cdef char length_text[32]
    cdef int length_len = 0
    cdef Py_ssize_t extra_len = PyBytes_GET_SIZE(extra) if extra is not None else 0
    cdef Py_ssize_t total
    cdef bytes out
    cdef char* w

    if framing == FRAME_LENGTH:
        length_len = snprintf(length_text, 32, b"content-length: %lld\r\n",
                              h.content_length if h.content_length > 0 else 0)
    total = 9 + (h.line_end - h.reason_start) + 2 + _kept_fields_size(h) + length_len + 2 + tail_len
    total += extra_len
    if h.upgrade:
        total += 21 + _fields_of_kind_size(h, HDR_UPGRADE)
    if framing == FRAME_CHUNKED:
        total += 28
    if close:
        total += 19
    elif keep_alive_header:
        total += 24

    out = PyBytes_FromStringAndSize(NULL, total)
    w = PyBytes_AS_STRING(out)
    w = _put(w, b"HTTP/1.1 ", 9)
    w = _put(w, h.buf + h.reason_start, h.line_end - h.reason_start)
    w = _put(w, b"\r\n", 2)
    w = _put_kept_fields(w, h)
    if h.upgrade:
        w = _put(w, b"connection: upgrade\r\n", 21)
        w = _put_fields_of_kind(w, h, HDR_UPGRADE)
    if framing == FRAME_CHUNKED:
        w = _put(w, b"transfer-encoding: chunked\r\n", 28)
    w = _put(w, length_text, length_len)
    if close:
        w = _put(w, b"connection: close\r\n", 19)
    elif keep_alive_header:
        w = _put(w, b"connection: keep-alive\r\n", 24)
    if extra_len:
        w = _put(w, PyBytes_AS_STRING(extra), extra_len)
    w = _put(w, b"\r\n", 2)
    if tail_len:
        _put(w, tail, tail_len)
    return out


def rewrite_request(MessageHead h, bytes client_ip=None, RequestId request_id=None,
                    bytes destination=None, Tracer tracer=None, bytes extra=None):
    """Python entry for tests: the forwarded head of request `h`; `destination` is the
    authority the proxy knows for a request without Host (see `host_for`); the trace
    fields are those `tracer` gives it, when one is passed; `extra` field lines last."""
    cdef TraceContext trace
    cdef bytes authority = host_for(h, destination) if h.host_index < 0 else None
    request_id = request_id or RequestId()
    if h.request_id_index < 0:
        request_id.next()
    if tracer is None:
        return build_request_head(h, client_ip, request_id, authority, NULL, extra)
    tracer.start_exchange(&trace, h)
    return build_request_head(h, client_ip, request_id, authority, &trace, extra)


def host_for_request(MessageHead h, bytes destination=None):
    """Python entry for tests: `host_for`."""
    return host_for(h, destination)


def rewrite_response(MessageHead h, int framing, bint close=False, bint keep_alive_header=False,
                     bytes extra=None):
    """Python entry for tests: the forwarded head of response `h`."""
    return build_response_head(h, framing, close, keep_alive_header, extra, NULL, 0)
