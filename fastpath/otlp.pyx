# cython: language_level=3
"""OTLP protobuf encoding of the sidecar's spans (opentelemetry-proto, trace v1).

Why protobuf, encoded here: binary protobuf is OTLP/HTTP's default encoding and the one
every collector and backend accepts (JSON is optional, and some refuse it); writing the
few messages a span needs by hand keeps the protobuf runtime and its generated classes
out of every worker, and costs about a microsecond per span on the event loop thread,
where the span is encoded as the exchange ends (a sampled exchange's one Python object
is these bytes). The exporter thread only frames batches of them into an
ExportTraceServiceRequest (`export_request`) and posts it.

One span per exchange, kind SERVER on the inbound side and CLIENT on the outbound side
(as Envoy does for ingress and egress), named `METHOD` or `METHOD route`; attributes in
OpenTelemetry's HTTP semantic conventions where they have a name, Envoy's tag names
where they do not:

    http.request.method, url.path, url.query, server.address (Host),
    http.response.status_code, network.protocol.version, network.peer.address,
    http.request.body.size, http.response.body.size, sidecar.direction, sidecar.route,
    upstream_cluster (the service), upstream_address, response_flags,
    guid:x-request-id, component=proxy

Status ERROR for a 5xx, no response at all, or a response cut short (UC, UT).

Wire format reminders: a field is a varint key (number << 3 | wire type: 0 varint,
1 fixed64, 2 length-delimited, 5 fixed32) and its value; ids are raw big-endian bytes.
"""
from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_GET_SIZE, PyBytes_FromStringAndSize
from cpython.unicode cimport PyUnicode_AsUTF8AndSize
from libc.stdlib cimport realloc
from libc.string cimport memcpy, memchr, memset
from posix.time cimport clock_gettime, timespec, CLOCK_REALTIME

from fastpath.exchange cimport (
    ExchangeRecord, TRACE_SAMPLED, TRACE_RANDOM, RF_UC, RF_UT,
)
from fastpath.parser cimport MessageHead

# Span.SpanKind, Status.StatusCode
SPAN_KIND_SERVER = 2
SPAN_KIND_CLIENT = 3
STATUS_ERROR = 2
# Span.flags: W3C trace flags in bits 0-7; whether the parent is remote (8: known, 9: yes)
DEF FLAGS_HAS_IS_REMOTE = 0x100
DEF FLAGS_IS_REMOTE = 0x200
DEF PREFIX_ROOM = 11        # a ScopeSpans.spans key and length varint, written last


cdef struct Buf:
    char* p
    Py_ssize_t len
    Py_ssize_t cap


cdef Buf SPAN_BUF           # reused for every span (only the event loop thread encodes)


cdef int _reserve(Buf* b, Py_ssize_t n) except -1:
    cdef Py_ssize_t cap = b.cap if b.cap else 4096
    cdef char* grown
    while cap < b.len + n:
        cap *= 2
    if cap != b.cap:
        grown = <char*>realloc(b.p, cap)
        if grown == NULL:
            raise MemoryError()
        b.p = grown
        b.cap = cap
    return 0


cdef inline int _varint_len(unsigned long long v) noexcept:
    cdef int n = 1
    while v >= 0x80:
        v >>= 7
        n += 1
    return n


cdef inline void _varint(Buf* b, unsigned long long v) noexcept:
    while v >= 0x80:
        b.p[b.len] = <char>((v & 0x7f) | 0x80)
        b.len += 1
        v >>= 7
    b.p[b.len] = <char>v
    b.len += 1


cdef inline void _raw(Buf* b, const char* s, Py_ssize_t n) noexcept:
    memcpy(b.p + b.len, s, n)
    b.len += n


cdef inline void _len_field(Buf* b, int number, const char* s, Py_ssize_t n) noexcept:
    _varint(b, (number << 3) | 2)
    _varint(b, n)
    _raw(b, s, n)


cdef inline void _fixed64(Buf* b, int number, unsigned long long v) noexcept:
    cdef int k
    _varint(b, (number << 3) | 1)
    for k in range(8):
        b.p[b.len + k] = <char>((v >> (8 * k)) & 0xff)      # little-endian
    b.len += 8


cdef inline void _id_bytes(Buf* b, unsigned long long v) noexcept:
    cdef int k
    for k in range(8):
        b.p[b.len + k] = <char>((v >> (56 - 8 * k)) & 0xff)  # big-endian, as the hex reads
    b.len += 8


cdef inline void _str_attr(Buf* b, const char* key, Py_ssize_t klen, const char* s,
                           Py_ssize_t n) noexcept:
    """Span.attributes (9) += KeyValue{key, AnyValue{string_value}}."""
    cdef Py_ssize_t any_len = 1 + _varint_len(n) + n
    cdef Py_ssize_t kv_len = 1 + _varint_len(klen) + klen + 1 + _varint_len(any_len) + any_len
    _varint(b, (9 << 3) | 2)
    _varint(b, kv_len)
    _len_field(b, 1, key, klen)
    _varint(b, (2 << 3) | 2)
    _varint(b, any_len)
    _len_field(b, 1, s, n)


cdef inline void _int_attr(Buf* b, const char* key, Py_ssize_t klen, long long v) noexcept:
    """Span.attributes (9) += KeyValue{key, AnyValue{int_value}}."""
    cdef unsigned long long u = <unsigned long long>v
    cdef Py_ssize_t any_len = 1 + _varint_len(u)
    cdef Py_ssize_t kv_len = 1 + _varint_len(klen) + klen + 1 + _varint_len(any_len) + any_len
    _varint(b, (9 << 3) | 2)
    _varint(b, kv_len)
    _len_field(b, 1, key, klen)
    _varint(b, (2 << 3) | 2)
    _varint(b, any_len)
    _varint(b, (3 << 3) | 0)
    _varint(b, u)


cdef inline Py_ssize_t _blen(bytes s) noexcept:
    return PyBytes_GET_SIZE(s) if s is not None else 0


cdef bytes encode_exchange_span(int direction, const ExchangeRecord* rec, MessageHead req,
                                object upstream_host, int upstream_port, bytes client_ip,
                                const char* request_id, Py_ssize_t request_id_len,
                                const char* trace_state, Py_ssize_t trace_state_len,
                                bytes route, bytes service, bytes flags_text, double now):
    """The span of one finished exchange, framed as a ScopeSpans.spans entry (key, length,
    Span), ready to be concatenated into a batch."""
    cdef Buf* b = &SPAN_BUF
    cdef timespec ts
    cdef unsigned long long end_ns, start_ns, took_ns
    cdef const char* method = req.buf + req.start
    cdef Py_ssize_t method_len = req.method_end - req.start
    cdef const char* target = req.buf + req.target_start
    cdef Py_ssize_t target_len = req.target_end - req.target_start
    cdef const char* q = <const char*>memchr(target, b'?', target_len)
    cdef Py_ssize_t path_len = (q - target) if q != NULL else target_len
    cdef const char* up = NULL
    cdef Py_ssize_t up_len = 0
    cdef char up_text[320]
    cdef int up_text_len = 0
    cdef Py_ssize_t host_len = 0
    cdef const char* host = NULL
    cdef Py_ssize_t span_start, span_len, prefix, k
    cdef Py_ssize_t bound, status_len
    cdef unsigned int span_flags
    cdef bint error
    cdef char* w
    cdef int kind = SPAN_KIND_SERVER if direction == 0 else SPAN_KIND_CLIENT

    if req.host_index >= 0:
        host = req.buf + req.fields[req.host_index].value_start
        host_len = req.fields[req.host_index].value_end - req.fields[req.host_index].value_start
    if upstream_host is not None:
        up = PyUnicode_AsUTF8AndSize(upstream_host, &up_len)
        if up_len > 256:
            up_len = 256
        memcpy(up_text, up, up_len)
        up_text_len = <int>up_len
        up_text_len += _put_port(up_text + up_text_len, upstream_port)

    clock_gettime(CLOCK_REALTIME, &ts)
    end_ns = <unsigned long long>ts.tv_sec * 1000000000ULL + <unsigned long long>ts.tv_nsec
    took_ns = <unsigned long long>((now - rec.start) * 1e9) if now > rec.start else 0
    start_ns = end_ns - took_ns if took_ns < end_ns else end_ns

    # Every variable part is counted, with generous room for keys and framing.
    bound = (PREFIX_ROOM + 1024 + 2 * method_len + 2 * target_len + host_len + up_text_len
             + 2 * _blen(route) + _blen(service) + 2 * _blen(flags_text) + _blen(client_ip)
             + request_id_len + trace_state_len)
    b.len = 0
    _reserve(b, bound)
    b.len = PREFIX_ROOM
    span_start = b.len

    _varint(b, (1 << 3) | 2)             # trace_id
    _varint(b, 16)
    _id_bytes(b, rec.trace.trace_hi)
    _id_bytes(b, rec.trace.trace_lo)
    _varint(b, (2 << 3) | 2)             # span_id
    _varint(b, 8)
    _id_bytes(b, rec.trace.span_id)
    if trace_state_len > 0:
        _len_field(b, 3, trace_state, trace_state_len)
    if rec.trace.parent_id:
        _varint(b, (4 << 3) | 2)         # parent_span_id
        _varint(b, 8)
        _id_bytes(b, rec.trace.parent_id)
    # name (5): "METHOD" or "METHOD route"
    _varint(b, (5 << 3) | 2)
    if route is not None:
        _varint(b, method_len + 1 + PyBytes_GET_SIZE(route))
        _raw(b, method, method_len)
        _raw(b, b" ", 1)
        _raw(b, PyBytes_AS_STRING(route), PyBytes_GET_SIZE(route))
    else:
        _varint(b, method_len)
        _raw(b, method, method_len)
    _varint(b, (6 << 3) | 0)             # kind
    _varint(b, kind)
    _fixed64(b, 7, start_ns)
    _fixed64(b, 8, end_ns)

    _str_attr(b, b"http.request.method", 19, method, method_len)
    _str_attr(b, b"url.path", 8, target, path_len)
    if q != NULL and target_len - path_len > 1:
        _str_attr(b, b"url.query", 9, q + 1, target_len - path_len - 1)
    if host_len:
        _str_attr(b, b"server.address", 14, host, host_len)
    if rec.status:
        _int_attr(b, b"http.response.status_code", 25, rec.status)
    _str_attr(b, b"network.protocol.version", 24, b"1.0" if req.version == 10 else b"1.1", 3)
    if client_ip is not None:
        _str_attr(b, b"network.peer.address", 20, PyBytes_AS_STRING(client_ip),
                  PyBytes_GET_SIZE(client_ip))
    _int_attr(b, b"http.request.body.size", 22, rec.request_bytes)
    _int_attr(b, b"http.response.body.size", 23, rec.response_bytes)
    _str_attr(b, b"sidecar.direction", 17, b"inbound" if direction == 0 else b"outbound",
              7 if direction == 0 else 8)
    if route is not None:
        _str_attr(b, b"sidecar.route", 13, PyBytes_AS_STRING(route), PyBytes_GET_SIZE(route))
    if service is not None:
        _str_attr(b, b"upstream_cluster", 16, PyBytes_AS_STRING(service), PyBytes_GET_SIZE(service))
    if up_text_len:
        _str_attr(b, b"upstream_address", 16, up_text, up_text_len)
    if flags_text is not None:
        _str_attr(b, b"response_flags", 14, PyBytes_AS_STRING(flags_text), PyBytes_GET_SIZE(flags_text))
    else:
        _str_attr(b, b"response_flags", 14, b"-", 1)
    if request_id_len:
        _str_attr(b, b"guid:x-request-id", 17, request_id, request_id_len)
    _str_attr(b, b"component", 9, b"proxy", 5)

    error = rec.status >= 500 or rec.status == 0 or (rec.flags & (RF_UC | RF_UT)) != 0
    if error:
        # status (15): Status{message (2), code (3) = ERROR}
        status_len = 2
        if flags_text is not None:
            status_len += 1 + _varint_len(PyBytes_GET_SIZE(flags_text)) + PyBytes_GET_SIZE(flags_text)
        _varint(b, (15 << 3) | 2)
        _varint(b, status_len)
        if flags_text is not None:
            _len_field(b, 2, PyBytes_AS_STRING(flags_text), PyBytes_GET_SIZE(flags_text))
        _varint(b, (3 << 3) | 0)
        _varint(b, STATUS_ERROR)
    # flags (16, fixed32)
    span_flags = FLAGS_HAS_IS_REMOTE
    if rec.trace.flags & TRACE_SAMPLED:
        span_flags |= 0x01
    if rec.trace.flags & TRACE_RANDOM:
        span_flags |= 0x02
    if rec.trace.parent_id:
        span_flags |= FLAGS_IS_REMOTE
    _varint(b, (16 << 3) | 5)
    for k in range(4):
        b.p[b.len + k] = <char>((span_flags >> (8 * k)) & 0xff)
    b.len += 4

    # The ScopeSpans.spans (2) key and length, right before the span.
    span_len = b.len - span_start
    prefix = 1 + _varint_len(span_len)
    w = b.p + span_start - prefix
    b.len = span_start - prefix
    _varint(b, (2 << 3) | 2)
    _varint(b, span_len)
    return PyBytes_FromStringAndSize(w, prefix + span_len)


cdef int _put_port(char* w, int port) noexcept:
    """Writes ":port"; returns its length."""
    cdef char digits[8]
    cdef int n = 0, k
    w[0] = b':'
    if port <= 0:
        w[1] = b'0'
        return 2
    while port and n < 8:
        digits[n] = <char>(48 + port % 10)
        port //= 10
        n += 1
    for k in range(n):
        w[1 + k] = digits[n - 1 - k]
    return 1 + n


# -- batches (the exporter thread) --------------------------------------------------------

def _key_value(str key, value):
    """A KeyValue for a str, bool or int value."""
    if isinstance(value, bool):
        any_value = _varint_bytes((2 << 3) | 0) + _varint_bytes(1 if value else 0)
    elif isinstance(value, int):
        any_value = _varint_bytes((3 << 3) | 0) + _varint_bytes(value & 0xffffffffffffffff)
    else:
        any_value = _field(1, str(value).encode())
    return _field(1, key.encode()) + _field(2, any_value)


def _field(int number, bytes payload):
    """A length-delimited field: key, length, payload."""
    return _varint_bytes((number << 3) | 2) + _varint_bytes(len(payload)) + payload


def _varint_bytes(unsigned long long v):
    cdef char tmp[10]
    cdef Buf b
    b.p = tmp
    b.len = 0
    b.cap = 10
    _varint(&b, v)
    return PyBytes_FromStringAndSize(tmp, b.len)


def export_request(list resource_attributes, str scope_name, str scope_version, list spans):
    """An ExportTraceServiceRequest (the body of POST /v1/traces) holding one resource,
    one instrumentation scope and `spans` (entries from encode_exchange_span)."""
    resource = b"".join([_field(1, _key_value(k, v)) for k, v in resource_attributes])
    scope = _field(1, scope_name.encode()) + _field(2, scope_version.encode())
    scope_spans = _field(1, scope) + b"".join(spans)
    resource_spans = _field(1, resource) + _field(2, scope_spans)
    return _field(1, resource_spans)


def decode_partial_success(bytes body):
    """(rejected spans, error message) from an ExportTraceServiceResponse body; (0, "")
    when it has no partial_success (1: {rejected_spans (1), error_message (2)})."""
    cdef Py_ssize_t pos = 0, end
    cdef unsigned long long key, value
    rejected, message = 0, ""
    try:
        while pos < len(body):
            key, pos = _read_varint(body, pos)
            if key == ((1 << 3) | 2):
                value, pos = _read_varint(body, pos)
                end = pos + value
                while pos < end:
                    key, pos = _read_varint(body, pos)
                    if key == ((1 << 3) | 0):
                        rejected, pos = _read_varint(body, pos)
                    elif key & 7 == 2:
                        value, pos = _read_varint(body, pos)
                        if key >> 3 == 2:
                            message = body[pos:pos + value].decode("utf-8", "replace")
                        pos += value
                    elif key & 7 == 0:
                        _, pos = _read_varint(body, pos)
                    else:
                        return rejected, message
            elif key & 7 == 2:
                value, pos = _read_varint(body, pos)
                pos += value
            elif key & 7 == 0:
                _, pos = _read_varint(body, pos)
            else:
                break
    except IndexError:
        pass
    return rejected, message


def _read_varint(bytes data, Py_ssize_t pos):
    cdef unsigned long long v = 0
    cdef int shift = 0
    cdef unsigned char c
    while True:
        c = data[pos]
        pos += 1
        v |= <unsigned long long>(c & 0x7f) << shift
        if not c & 0x80:
            return v, pos
        shift += 7
        if shift > 63:
            raise IndexError("varint too long")


def exchange_span(MessageHead req, int direction=0, unsigned long long trace_hi=1,
                  unsigned long long trace_lo=2, unsigned long long span_id=3,
                  unsigned long long parent_id=0, unsigned int trace_flags=TRACE_SAMPLED,
                  int status=200, unsigned int flags=0, long long request_bytes=0,
                  long long response_bytes=0, double start=100.0, double now=100.25,
                  upstream_host=None, int upstream_port=0, bytes client_ip=None,
                  bytes request_id=None, bytes trace_state=None, bytes route=None,
                  bytes service=None, bytes flags_text=None):
    """Python entry for tests: the span entry encode_exchange_span makes of an exchange
    with these values and request head `req`."""
    cdef ExchangeRecord rec
    memset(&rec, 0, sizeof(rec))
    rec.start = start
    rec.status = status
    rec.flags = flags
    rec.request_bytes = request_bytes
    rec.response_bytes = response_bytes
    rec.trace.trace_hi = trace_hi
    rec.trace.trace_lo = trace_lo
    rec.trace.span_id = span_id
    rec.trace.parent_id = parent_id
    rec.trace.flags = trace_flags
    return encode_exchange_span(
        direction, &rec, req, upstream_host, upstream_port, client_ip,
        PyBytes_AS_STRING(request_id) if request_id is not None else NULL,
        PyBytes_GET_SIZE(request_id) if request_id is not None else 0,
        PyBytes_AS_STRING(trace_state) if trace_state is not None else NULL,
        PyBytes_GET_SIZE(trace_state) if trace_state is not None else 0,
        route, service, flags_text, now)
