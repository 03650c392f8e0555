# cython: language_level=3
"""Strict HTTP/1.1 message parser (RFC 9112), with no I/O in it.

Rules, all enforced before a single byte of a request is forwarded:

- Lines end in CRLF. A bare LF anywhere in a head, or a CR not followed by LF, is an error.
- Request line: ``token SP request-target SP HTTP/1.x`` with exactly one SP between parts,
  the target made of visible ASCII only. ``HTTP/d.d`` other than 1.0/1.1 gives 505.
  Up to four empty lines before a request line are skipped (RFC 9112 section 2.2).
- Field lines: a token name directly followed by ":" (whitespace before the colon is an
  error), a value of visible characters, SP, HTAB and obs-text. A line starting with
  whitespace (obs-fold) is an error. Control bytes (NUL, CR, DEL...) in values are errors.
- Framing: Content-Length is digits only; duplicates must agree ("42, 42" is 42).
  Transfer-Encoding with Content-Length, in HTTP/1.0, with a final coding other than
  chunked, or with chunked twice is an error (400); codings besides chunked give 501.
  Each list element must be a transfer-coding (a token, parameters only after ";"):
  "chunked x" or "chunked/1" is an error, not chunked. Empty elements are ignored.
  HTTP/1.1 requests carry exactly one Host.
- Connection: the fields it names are hop-by-hop (dropped), except Host.
- Limits: a request line longer than ``max_request_line`` gives 414; a head (start line
  to final empty line, leading empty lines not counted) longer than ``max_header_bytes``
  or with more than ``max_headers`` fields gives 431.
- Responses are parsed the same way; any error there is the caller's 502, and so is an
  HTTP/1.0 response with Transfer-Encoding (RFC 9112 6.1: faulty framing). Their body
  length follows RFC 9112 section 6.3 (no body for HEAD, 1xx, 204, 304).
- Chunked bodies (`ChunkedDecoder`): hex sizes, then only whitespace and ";" extensions
  up to the CRLF; trailer lines are field lines (name, ":", value).

The verdict on a message never depends on how it is split into reads.

A parsed head keeps offsets into one bytes object (``MessageHead.raw``): no Python object
is created per field. Errors are reported as a status plus a static reason string, without
raising, so a flood of bad requests costs no exception objects.
"""
from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_GET_SIZE, PyBytes_FromStringAndSize
from cpython.bytearray cimport PyByteArray_AS_STRING, PyByteArray_GET_SIZE
from libc.stdlib cimport malloc, realloc, free
from libc.string cimport memchr, memcpy


cdef extern from "strings.h":
    int strncasecmp(const char* a, const char* b, size_t n)


# Byte classes, built once at import.
cdef bint IS_TCHAR[256]
cdef bint IS_VALUE_CHAR[256]
cdef bint IS_TARGET_CHAR[256]
cdef signed char HEX_VALUE[256]


cdef void _init_tables():
    cdef int c
    cdef bytes specials = b"!#$%&'*+-.^_`|~"
    for c in range(256):
        IS_TCHAR[c] = (48 <= c <= 57) or (65 <= c <= 90) or (97 <= c <= 122) or (c in specials)
        IS_VALUE_CHAR[c] = (0x21 <= c <= 0x7E) or c >= 0x80 or c == 0x20 or c == 0x09
        IS_TARGET_CHAR[c] = 0x21 <= c <= 0x7E
        if 48 <= c <= 57:
            HEX_VALUE[c] = c - 48
        elif 97 <= c <= 102:
            HEX_VALUE[c] = c - 87
        elif 65 <= c <= 70:
            HEX_VALUE[c] = c - 55
        else:
            HEX_VALUE[c] = -1


_init_tables()

DEF MAX_LEADING_EMPTY_LINES = 4
DEF MAX_CHUNK_LINE = 4096
DEF MAX_TRAILER_BYTES = 8192
DEF MAX_CONTENT_LENGTH_DIGITS = 18


cdef class Limits:
    def __init__(self, Py_ssize_t max_request_line=8192, Py_ssize_t max_header_bytes=65536,
                 int max_headers=100):
        self.max_request_line = max_request_line
        self.max_header_bytes = max_header_bytes
        self.max_headers = max_headers


cdef inline bint _is_name(const char* p, Py_ssize_t n, const char* lower, Py_ssize_t ln):
    return n == ln and strncasecmp(p, lower, <size_t>ln) == 0


cdef int _header_kind(const char* p, Py_ssize_t n):
    if n == 4 and _is_name(p, n, b"host", 4):
        return HDR_HOST
    if n == 14 and _is_name(p, n, b"content-length", 14):
        return HDR_CONTENT_LENGTH
    if n == 10:
        if _is_name(p, n, b"connection", 10):
            return HDR_CONNECTION
        if _is_name(p, n, b"keep-alive", 10):
            return HDR_KEEP_ALIVE
    if n == 17 and _is_name(p, n, b"transfer-encoding", 17):
        return HDR_TRANSFER_ENCODING
    if n == 12 and _is_name(p, n, b"x-request-id", 12):
        return HDR_X_REQUEST_ID
    if n >= 10 and (p[0] == b'x' or p[0] == b'X') and _is_name(p, 5, b"x-b3-", 5):
        return _b3_header_kind(p + 5, n - 5)
    if n == 11 and _is_name(p, n, b"traceparent", 11):
        return HDR_TRACEPARENT
    if n == 10 and _is_name(p, n, b"tracestate", 10):
        return HDR_TRACESTATE
    if n == 2 and _is_name(p, n, b"b3", 2):
        return HDR_B3
    if n == 15 and _is_name(p, n, b"x-forwarded-for", 15):
        return HDR_X_FORWARDED_FOR
    if n == 7:
        if _is_name(p, n, b"upgrade", 7):
            return HDR_UPGRADE
        if _is_name(p, n, b"trailer", 7):
            return HDR_TRAILER
    if n == 6 and _is_name(p, n, b"expect", 6):
        return HDR_EXPECT
    if n == 2 and _is_name(p, n, b"te", 2):
        return HDR_TE
    if n == 16 and _is_name(p, n, b"proxy-connection", 16):
        return HDR_PROXY_CONNECTION
    return HDR_OTHER


cdef int _b3_header_kind(const char* p, Py_ssize_t n):
    """The kind of an `x-b3-` field from the rest of its name."""
    if n == 7 and _is_name(p, n, b"traceid", 7):
        return HDR_X_B3_TRACEID
    if n == 6 and _is_name(p, n, b"spanid", 6):
        return HDR_X_B3_SPANID
    if n == 12 and _is_name(p, n, b"parentspanid", 12):
        return HDR_X_B3_PARENTSPANID
    if n == 7 and _is_name(p, n, b"sampled", 7):
        return HDR_X_B3_SAMPLED
    if n == 5 and _is_name(p, n, b"flags", 5):
        return HDR_X_B3_FLAGS
    return HDR_OTHER


cdef int _method_code(const char* p, Py_ssize_t n):
    if n == 3:
        if p[0] == b'G' and p[1] == b'E' and p[2] == b'T':
            return M_GET
        if p[0] == b'P' and p[1] == b'U' and p[2] == b'T':
            return M_PUT
    elif n == 4:
        if p[0] == b'P' and p[1] == b'O' and p[2] == b'S' and p[3] == b'T':
            return M_POST
        if p[0] == b'H' and p[1] == b'E' and p[2] == b'A' and p[3] == b'D':
            return M_HEAD
    elif n == 6 and p[0] == b'D' and _is_name(p, n, b"DELETE", 6):
        return M_DELETE
    elif n == 7:
        if p[0] == b'O' and _is_name(p, n, b"OPTIONS", 7):
            return M_OPTIONS
        if p[0] == b'C' and _is_name(p, n, b"CONNECT", 7):
            return M_CONNECT
    elif n == 5:
        if p[0] == b'P' and _is_name(p, n, b"PATCH", 5):
            return M_PATCH
        if p[0] == b'T' and _is_name(p, n, b"TRACE", 5):
            return M_TRACE
    return M_OTHER


cdef class MessageHead:
    def __cinit__(self, int capacity=100):
        self.capacity = capacity if capacity > 0 else 1
        self.fields = <Field*>malloc(sizeof(Field) * self.capacity)
        if self.fields == NULL:
            raise MemoryError()
        self.reset()

    def __dealloc__(self):
        free(self.fields)

    cdef void reset(self):
        self.raw = None
        self.buf = NULL
        self.nfields = 0
        self.method = M_OTHER
        self.version = 11
        self.status = 0
        self.body_kind = BODY_NONE
        self.content_length = -1
        self.keep_alive = True
        self.upgrade = False
        self.expect_continue = False
        self.host_index = -1
        self.request_id_index = -1
        self.trace_fields = 0
        self.error_status = 0
        self.error_reason = NULL

    cdef int find_field(self, int kind):
        cdef int i
        for i in range(self.nfields):
            if self.fields[i].kind == kind:
                return i
        return -1

    cdef bytes field_value(self, int index):
        cdef Field* f = &self.fields[index]
        return self.buf[f.value_start:f.value_end]

    # Python-level views, for policy, logs and tests (not used per request on the hot path).
    @property
    def method_bytes(self):
        return self.buf[self.start:self.method_end] if self.buf != NULL else None

    @property
    def target(self):
        return self.buf[self.target_start:self.target_end] if self.buf != NULL else None

    @property
    def reason_line(self):
        return self.buf[self.reason_start:self.line_end] if self.buf != NULL else None

    @property
    def error_reason_text(self):
        return (<bytes>self.error_reason).decode() if self.error_reason != NULL else None

    @property
    def head_length(self):
        return self.end - self.start

    def headers(self):
        """All fields as (name, value) bytes pairs, in order (for tests and tools)."""
        cdef int i
        cdef Field* f
        out = []
        for i in range(self.nfields):
            f = &self.fields[i]
            out.append((self.buf[f.line_start:f.name_end], self.buf[f.value_start:f.value_end]))
        return out

    def get(self, name):
        """The first value of field `name` (bytes, case-insensitive), or None."""
        cdef int i
        cdef Field* f
        cdef bytes n = name.lower() if isinstance(name, bytes) else name.lower().encode()
        for i in range(self.nfields):
            f = &self.fields[i]
            if _is_name(self.buf + f.line_start, f.name_end - f.line_start, n, len(n)):
                return self.buf[f.value_start:f.value_end]
        return None


cdef inline Py_ssize_t _fail(MessageHead head, int status, const char* reason):
    head.error_status = status
    head.error_reason = reason
    return -1


cdef Py_ssize_t _parse_request_line(MessageHead h, const char* b, Py_ssize_t s, Py_ssize_t e):
    cdef Py_ssize_t i = s
    while i < e and IS_TCHAR[<unsigned char>b[i]]:
        i += 1
    if i == s or i >= e or b[i] != b' ':
        return _fail(h, 400, "malformed request line (method)")
    h.method_end = i
    h.method = _method_code(b + s, i - s)
    i += 1
    h.target_start = i
    while i < e and IS_TARGET_CHAR[<unsigned char>b[i]]:
        i += 1
    if i == h.target_start or i >= e or b[i] != b' ':
        return _fail(h, 400, "malformed request line (target)")
    h.target_end = i
    i += 1
    if (e - i != 8 or b[i] != b'H' or b[i + 1] != b'T' or b[i + 2] != b'T' or b[i + 3] != b'P'
            or b[i + 4] != b'/' or not (b'0' <= b[i + 5] <= b'9') or b[i + 6] != b'.'
            or not (b'0' <= b[i + 7] <= b'9')):
        return _fail(h, 400, "malformed request line (version)")
    if b[i + 5] != b'1' or (b[i + 7] != b'0' and b[i + 7] != b'1'):
        return _fail(h, 505, "HTTP version not supported")
    h.version = 10 if b[i + 7] == b'0' else 11
    return 0


cdef Py_ssize_t _parse_status_line(MessageHead h, const char* b, Py_ssize_t s, Py_ssize_t e):
    cdef Py_ssize_t i = s
    if (e - s < 12 or b[i] != b'H' or b[i + 1] != b'T' or b[i + 2] != b'T' or b[i + 3] != b'P'
            or b[i + 4] != b'/' or b[i + 5] != b'1' or b[i + 6] != b'.'
            or (b[i + 7] != b'0' and b[i + 7] != b'1') or b[i + 8] != b' '):
        return _fail(h, 502, "malformed status line")
    h.version = 10 if b[i + 7] == b'0' else 11
    i += 9
    h.reason_start = i
    if not (b'1' <= b[i] <= b'5' and b'0' <= b[i + 1] <= b'9' and b'0' <= b[i + 2] <= b'9'):
        return _fail(h, 502, "malformed status code")
    h.status = (b[i] - 48) * 100 + (b[i + 1] - 48) * 10 + (b[i + 2] - 48)
    i += 3
    if i < e:
        if b[i] != b' ':
            return _fail(h, 502, "malformed status line")
        while i < e:
            if not IS_VALUE_CHAR[<unsigned char>b[i]]:
                return _fail(h, 502, "control character in reason phrase")
            i += 1
    return 0


cdef Py_ssize_t _parse_field_line(MessageHead h, const char* b, Py_ssize_t s, Py_ssize_t e):
    """Parses one field line [s, e) (CRLF excluded) into the next Field slot."""
    cdef Py_ssize_t i = s
    cdef Field* f
    if h.nfields >= h.capacity:
        return _fail(h, 431, "too many header fields")
    if b[s] == b' ' or b[s] == b'\t':
        return _fail(h, 400, "obsolete line folding in header")
    while i < e and IS_TCHAR[<unsigned char>b[i]]:
        i += 1
    if i >= e or b[i] != b':':
        return _fail(h, 400, "invalid character in header name")
    if i == s:
        return _fail(h, 400, "empty header name")
    f = &h.fields[h.nfields]
    f.line_start = s
    f.line_end = e + 2
    f.name_end = i
    f.kind = _header_kind(b + s, i - s)
    f.drop = False
    i += 1
    while i < e and (b[i] == b' ' or b[i] == b'\t'):
        i += 1
    f.value_start = i
    while i < e:
        if not IS_VALUE_CHAR[<unsigned char>b[i]]:
            return _fail(h, 400, "invalid character in header value")
        i += 1
    while i > f.value_start and (b[i - 1] == b' ' or b[i - 1] == b'\t'):
        i -= 1
    f.value_end = i
    h.nfields += 1
    return 0


cdef inline bint _token_eq(const char* b, Py_ssize_t s, Py_ssize_t e, const char* lower, Py_ssize_t n):
    return e - s == n and strncasecmp(b + s, lower, <size_t>n) == 0


cdef int _transfer_coding(const char* b, Py_ssize_t s, Py_ssize_t e) noexcept:
    """One element [s, e) of Transfer-Encoding, OWS trimmed: 1 for "chunked", 0 for another
    coding, -1 when it is not a transfer-coding (RFC 9112 section 7: a token, then only
    parameters after OWS ";"). Chunked takes no parameters, so "chunked;x=1" is another
    coding, which is never decoded."""
    cdef Py_ssize_t t = s
    while t < e and IS_TCHAR[<unsigned char>b[t]]:
        t += 1
    if t == s:
        return -1
    if t == e:
        return _token_eq(b, s, t, b"chunked", 7)
    while t < e and (b[t] == b' ' or b[t] == b'\t'):
        t += 1
    if b[t] != b';':
        return -1
    return 0


cdef void _drop_nominated(MessageHead h, const char* name, Py_ssize_t n) noexcept:
    """Marks the fields called `name` hop-by-hop: a field named in Connection is not
    forwarded (RFC 9110 7.6.1). Host is kept (every HTTP/1.1 request needs it, so it
    cannot be one hop's option), and a nominated X-Forwarded-For or X-Request-Id stops
    being one: its values are not merged into ours, nor taken as the request's id."""
    cdef int j
    cdef Field* g
    for j in range(h.nfields):
        g = &h.fields[j]
        if g.kind != HDR_HOST and _token_eq(h.buf, g.line_start, g.name_end, name, n):
            g.drop = True
            if g.kind == HDR_X_FORWARDED_FOR or g.kind == HDR_X_REQUEST_ID:
                g.kind = HDR_OTHER


cdef Py_ssize_t _parse_content_length(MessageHead h, const char* b, Field* f, bint is_request):
    """Parses "N" or "N, N, ..." (all equal) into h.content_length; -1 on error."""
    cdef Py_ssize_t i = f.value_start
    cdef Py_ssize_t e = f.value_end
    cdef long long value
    cdef int digits
    cdef int status = 400 if is_request else 502
    while True:
        value = 0
        digits = 0
        while i < e and b'0' <= b[i] <= b'9':
            value = value * 10 + (b[i] - 48)
            digits += 1
            if digits > MAX_CONTENT_LENGTH_DIGITS:
                return _fail(h, status, "Content-Length too large")
            i += 1
        if digits == 0:
            return _fail(h, status, "malformed Content-Length")
        if h.content_length >= 0 and h.content_length != value:
            return _fail(h, status, "conflicting Content-Length values")
        h.content_length = value
        while i < e and (b[i] == b' ' or b[i] == b'\t'):
            i += 1
        if i >= e:
            return 0
        if b[i] != b',':
            return _fail(h, status, "malformed Content-Length")
        i += 1
        while i < e and (b[i] == b' ' or b[i] == b'\t'):
            i += 1


cdef Py_ssize_t _finish_head(MessageHead h, bint is_request, int request_method):
    """Applies the connection and framing rules once all fields are parsed."""
    cdef const char* b = h.buf
    cdef int i
    cdef Field* f
    cdef Py_ssize_t s, e, t
    cdef bint conn_close = False, conn_keep_alive = False, conn_upgrade = False
    cdef bint has_upgrade_field = False, has_te = False, has_cl = False
    cdef int codings = 0, chunked_codings = 0, hosts = 0
    cdef int last_chunked = 0
    cdef int bad = 400 if is_request else 502

    for i in range(h.nfields):
        f = &h.fields[i]
        if f.kind == HDR_OTHER:
            continue
        if f.kind >= HDR_TRACEPARENT:
            # End-to-end: kept; the tracer reads (and may replace) them.
            h.trace_fields |= 1 << (f.kind - HDR_TRACEPARENT)
            continue
        if f.kind == HDR_CONTENT_LENGTH:
            has_cl = True
            if _parse_content_length(h, b, f, is_request) < 0:
                return -1
        elif f.kind == HDR_TRANSFER_ENCODING:
            has_te = True
            s = f.value_start
            while s < f.value_end:
                e = s
                while e < f.value_end and b[e] != b',':
                    e += 1
                # One list element [s, e): OWS transfer-coding OWS, or empty (ignored).
                t = e
                while s < t and (b[s] == b' ' or b[s] == b'\t'):
                    s += 1
                while t > s and (b[t - 1] == b' ' or b[t - 1] == b'\t'):
                    t -= 1
                if t > s:
                    codings += 1
                    last_chunked = _transfer_coding(b, s, t)
                    if last_chunked < 0:
                        return _fail(h, bad, "malformed Transfer-Encoding")
                    if last_chunked:
                        chunked_codings += 1
                s = e + 1
        elif f.kind == HDR_CONNECTION:
            s = f.value_start
            while s < f.value_end:
                e = s
                while e < f.value_end and b[e] != b',':
                    e += 1
                t = e
                while s < t and (b[s] == b' ' or b[s] == b'\t'):
                    s += 1
                while t > s and (b[t - 1] == b' ' or b[t - 1] == b'\t'):
                    t -= 1
                if _token_eq(b, s, t, b"close", 5):
                    conn_close = True
                elif _token_eq(b, s, t, b"keep-alive", 10):
                    conn_keep_alive = True
                elif _token_eq(b, s, t, b"upgrade", 7):
                    conn_upgrade = True
                elif t > s:
                    _drop_nominated(h, b + s, t - s)
                s = e + 1
        elif f.kind == HDR_HOST:
            hosts += 1
            h.host_index = i
        elif f.kind == HDR_UPGRADE:
            has_upgrade_field = True
        elif f.kind == HDR_EXPECT:
            if _token_eq(b, f.value_start, f.value_end, b"100-continue", 12):
                h.expect_continue = True
        elif f.kind == HDR_X_REQUEST_ID:
            if h.request_id_index < 0:
                h.request_id_index = i
            elif is_request:
                f.drop = True              # one request id is forwarded: the first
        # Hop-by-hop fields are never forwarded; framing fields are written anew.
        if f.kind != HDR_HOST and f.kind != HDR_EXPECT and f.kind != HDR_X_REQUEST_ID:
            if f.kind != HDR_X_FORWARDED_FOR or is_request:
                f.drop = True

    if h.request_id_index >= 0 and h.fields[h.request_id_index].kind != HDR_X_REQUEST_ID:
        h.request_id_index = -1            # named in Connection: hop-by-hop, not an id
    if h.version == 11:
        h.keep_alive = not conn_close
    else:
        h.keep_alive = conn_keep_alive and not conn_close
    h.upgrade = conn_upgrade and has_upgrade_field and h.version == 11

    if is_request:
        if h.version == 11 and hosts != 1:
            return _fail(h, 400, "missing Host header" if hosts == 0 else "multiple Host headers")
        if hosts > 1:
            return _fail(h, 400, "multiple Host headers")
        if has_te:
            if h.version == 10:
                return _fail(h, 400, "Transfer-Encoding in an HTTP/1.0 request")
            if has_cl:
                return _fail(h, 400, "both Content-Length and Transfer-Encoding")
            if not last_chunked:
                return _fail(h, 400, "final transfer coding is not chunked")
            if chunked_codings > 1:
                return _fail(h, 400, "chunked applied more than once")
            if codings > 1:
                return _fail(h, 501, "unsupported transfer coding")
            h.body_kind = BODY_CHUNKED
        elif h.content_length > 0:
            h.body_kind = BODY_LENGTH
        return 0

    # Responses (RFC 9112 section 6.3).
    if has_te and h.version == 10:
        # RFC 9112 6.1: the framing of an HTTP/1.0 message with Transfer-Encoding is faulty.
        return _fail(h, 502, "Transfer-Encoding in an HTTP/1.0 response")
    if h.status < 200 or h.status == 204 or h.status == 304 or request_method == M_HEAD:
        h.body_kind = BODY_NONE
        # The length a HEAD or 304 announces is forwarded as it came.
        for i in range(h.nfields):
            if h.fields[i].kind == HDR_CONTENT_LENGTH:
                h.fields[i].drop = False
        h.content_length = -1
        if h.status == 101:
            h.upgrade = True
        return 0
    if has_te:
        if has_cl:
            return _fail(h, 502, "both Content-Length and Transfer-Encoding")
        # Only chunked is decoded. A body in another coding (RFC 9112 6.3 would read it
        # until close) could only be forwarded without the Transfer-Encoding that says
        # how to read it, since that field is hop-by-hop: refused, as Envoy does.
        if not last_chunked or codings > 1 or chunked_codings > 1:
            return _fail(h, 502, "unsupported transfer coding")
        h.body_kind = BODY_CHUNKED
    elif has_cl:
        h.body_kind = BODY_LENGTH if h.content_length > 0 else BODY_NONE
    else:
        h.body_kind = BODY_UNTIL_CLOSE
        h.keep_alive = False
    return 0


cdef Py_ssize_t _parse_head(MessageHead h, bint is_request, int request_method):
    """Parses the complete head h.buf[h.start:h.end]; 0, or -1 with h.error_* set."""
    cdef const char* b = h.buf
    cdef Py_ssize_t s = h.start
    cdef Py_ssize_t e
    cdef const char* lf
    cdef Py_ssize_t last = h.end - 2      # the blank line's CRLF
    lf = <const char*>memchr(b + s, b'\n', last - s + 1)
    e = lf - b - 1                        # CR of the start line
    h.line_end = e
    if is_request:
        if _parse_request_line(h, b, s, e) < 0:
            return -1
    elif _parse_status_line(h, b, s, e) < 0:
        return -1
    # Bare CR inside the start line is caught by the byte classes above.
    s = e + 2
    while s < last:
        lf = <const char*>memchr(b + s, b'\n', last - s + 1)
        e = lf - b - 1
        if _parse_field_line(h, b, s, e) < 0:
            if not is_request:
                h.error_status = 502
            return -1
        s = e + 2
    return _finish_head(h, is_request, request_method)


cdef class HeadParser:
    def __cinit__(self, Limits limits, bint is_request):
        self.limits = limits
        self.is_request = is_request
        self.pending = bytearray()
        self.reset()

    cdef void reset(self):
        self.scan_pos = 0
        self.line_start_pos = 0
        self.head_start = 0
        self.lines = 0
        self.skipped_empty = 0
        if PyByteArray_GET_SIZE(self.pending):
            del self.pending[:]

    cdef Py_ssize_t feed(self, MessageHead head, bytes data, Py_ssize_t offset,
                         int request_method) except -2:
        """Looks for a complete head in `data[offset:]` (after any bytes kept from before).

        Returns the offset in `data` one past the head when one is complete and parsed
        into `head`; 0 when more bytes are needed (they are kept); -1 on a protocol error
        (`head.error_status`, `head.error_reason`).

        Positions (scan_pos, line_start_pos, head_start) count from the first byte kept,
        so they stay valid from one feed to the next. The verdict does not depend on how
        the head is split into reads: the limits are measured on the head alone (leading
        empty lines excluded), a request line's CR is not counted while its LF is still
        to come, and the empty lines skipped are counted across reads.
        """
        cdef const char* base
        cdef Py_ssize_t n, p, i, line_len, kept
        cdef const char* lf
        cdef bint from_pending = PyByteArray_GET_SIZE(self.pending) > 0
        cdef Limits lim = self.limits
        cdef int too_long = 414 if self.is_request else 502
        cdef int too_large = 431 if self.is_request else 502

        kept = PyByteArray_GET_SIZE(self.pending)
        if from_pending:
            self.pending += data[offset:] if offset else data
            base = PyByteArray_AS_STRING(self.pending)
            n = PyByteArray_GET_SIZE(self.pending)
        else:
            base = PyBytes_AS_STRING(data) + offset
            n = PyBytes_GET_SIZE(data) - offset
        p = self.scan_pos
        while True:
            lf = <const char*>memchr(base + p, b'\n', n - p)
            if lf == NULL:
                if self.lines == 0:
                    # The start line so far; a CR at the end may be its own, whose LF
                    # is still to come.
                    line_len = n - self.line_start_pos
                    if line_len > 0 and base[n - 1] == b'\r':
                        line_len -= 1
                    if line_len > lim.max_request_line:
                        head.reset()
                        return _fail(head, too_long, "request line too long")
                if n - self.head_start > lim.max_header_bytes:
                    head.reset()
                    return _fail(head, too_large, "request header too large")
                self.scan_pos = n
                if not from_pending:
                    self.pending += data[offset:] if offset else data
                return 0
            i = lf - base
            if i == self.line_start_pos or base[i - 1] != b'\r':
                head.reset()
                return _fail(head, 400 if self.is_request else 502, "bare LF in message head")
            line_len = i - 1 - self.line_start_pos
            if self.lines == 0:
                if line_len == 0 and self.is_request:
                    # Empty lines before a request line are tolerated (RFC 9112 2.2).
                    self.skipped_empty += 1
                    if self.skipped_empty > MAX_LEADING_EMPTY_LINES:
                        head.reset()
                        return _fail(head, 400, "empty lines before request line")
                    self.line_start_pos = i + 1
                    self.head_start = i + 1
                    p = i + 1
                    continue
                if line_len > lim.max_request_line:
                    head.reset()
                    return _fail(head, too_long, "request line too long")
            elif line_len == 0:
                break
            self.lines += 1
            self.line_start_pos = i + 1
            p = i + 1
            if i + 1 - self.head_start > lim.max_header_bytes:
                head.reset()
                return _fail(head, too_large, "request header too large")
            if self.lines > lim.max_headers + 1:
                head.reset()
                return _fail(head, too_large, "too many header fields")

        # A complete head: [head_start, i + 1) of base, the final empty line included.
        if i + 1 - self.head_start > lim.max_header_bytes:
            head.reset()
            return _fail(head, too_large, "request header too large")
        head.reset()
        if from_pending:
            head.raw = PyBytes_FromStringAndSize(base + self.head_start, i + 1 - self.head_start)
            head.start = 0
            head.end = i + 1 - self.head_start
        else:
            head.raw = data
            head.start = offset + self.head_start
            head.end = offset + i + 1
        head.buf = PyBytes_AS_STRING(head.raw)
        self.reset()
        if _parse_head(head, self.is_request, request_method) < 0:
            return -1
        # The position in `data` one past the head.
        return offset + (i + 1 - kept)

    def feed_bytes(self, MessageHead head, bytes data, int request_method=M_OTHER):
        """Python entry for tests and tools: same contract as `feed` from offset 0."""
        return self.feed(head, data, 0, request_method)


# -- chunked bodies -----------------------------------------------------------------------

cdef enum ChunkState:
    CS_SIZE = 0          # hex digits of the chunk size
    CS_SIZE_BWS          # whitespace after the size: only ";" or CR may follow
    CS_EXT               # a chunk extension, from its ";" up to CR
    CS_SIZE_LF           # got CR after the size line
    CS_DATA
    CS_DATA_CR
    CS_DATA_LF
    CS_TRAILER_START     # at the start of a trailer line (or the final CRLF)
    CS_TRAILER_NAME      # in a trailer field's name, up to its ":"
    CS_TRAILER           # in a trailer field's value
    CS_TRAILER_LF
    CS_END_LF            # got the final CR
    CS_DONE


cdef class ChunkedDecoder:
    def __cinit__(self):
        self.span_capacity = 16
        self.spans = <Py_ssize_t*>malloc(sizeof(Py_ssize_t) * 2 * self.span_capacity)
        if self.spans == NULL:
            raise MemoryError()
        self.reset()

    def __dealloc__(self):
        free(self.spans)

    cdef void reset(self):
        self.state = CS_SIZE
        self.remaining = 0
        self.size_digits = 0
        self.line_bytes = 0
        self.trailer_bytes = 0
        self.nspans = 0
        self.done = False
        self.error_status = 0
        self.error_reason = NULL

    cdef int _error(self, const char* reason):
        self.error_status = 400
        self.error_reason = reason
        return -1

    cdef int _add_span(self, Py_ssize_t s, Py_ssize_t e) except -1:
        cdef Py_ssize_t* grown
        if self.nspans == self.span_capacity:
            grown = <Py_ssize_t*>realloc(self.spans, sizeof(Py_ssize_t) * 4 * self.span_capacity)
            if grown == NULL:
                raise MemoryError()
            self.spans = grown
            self.span_capacity *= 2
        self.spans[2 * self.nspans] = s
        self.spans[2 * self.nspans + 1] = e
        self.nspans += 1
        return 0

    cdef Py_ssize_t feed(self, const char* d, Py_ssize_t start, Py_ssize_t end) except -2:
        """Decodes d[start:end]; data spans are in self.spans. Returns the position where
        decoding stopped (end, or one past the final CRLF), or -1 on a framing error."""
        cdef Py_ssize_t i = start
        cdef Py_ssize_t take
        cdef unsigned char c
        cdef signed char v
        self.nspans = 0
        while i < end:
            c = <unsigned char>d[i]
            if self.state == CS_DATA:
                take = end - i
                if <unsigned long long>take > self.remaining:
                    take = <Py_ssize_t>self.remaining
                self._add_span(i, i + take)
                self.remaining -= take
                i += take
                if self.remaining == 0:
                    self.state = CS_DATA_CR
                continue
            i += 1
            if self.state == CS_SIZE:
                v = HEX_VALUE[c]
                if v >= 0:
                    self.size_digits += 1
                    if self.size_digits > 15:
                        return self._error("chunk size too large")
                    self.remaining = self.remaining * 16 + v
                elif self.size_digits == 0:
                    return self._error("malformed chunk size")
                elif c == b'\r':
                    self.state = CS_SIZE_LF
                elif c == b';':
                    self.state = CS_EXT
                elif c == b' ' or c == b'\t':
                    self.state = CS_SIZE_BWS
                else:
                    return self._error("malformed chunk size")
            elif self.state == CS_SIZE_BWS:
                # RFC 9112 7.1.1: chunk-size [ BWS ";" chunk-ext ] CRLF. Whitespace before
                # the CRLF is tolerated too; anything else ("5 6") is not a chunk size.
                self.line_bytes += 1
                if self.line_bytes > MAX_CHUNK_LINE:
                    return self._error("chunk size line too long")
                if c == b'\r':
                    self.state = CS_SIZE_LF
                elif c == b';':
                    self.state = CS_EXT
                elif c != b' ' and c != b'\t':
                    return self._error("invalid character after chunk size")
            elif self.state == CS_EXT:
                self.line_bytes += 1
                if self.line_bytes > MAX_CHUNK_LINE:
                    return self._error("chunk extension too long")
                if c == b'\r':
                    self.state = CS_SIZE_LF
                elif not IS_VALUE_CHAR[c]:
                    return self._error("invalid character in chunk extension")
            elif self.state == CS_SIZE_LF:
                if c != b'\n':
                    return self._error("bad chunk size line ending")
                self.size_digits = 0
                self.line_bytes = 0
                self.state = CS_DATA if self.remaining > 0 else CS_TRAILER_START
            elif self.state == CS_DATA_CR:
                if c != b'\r':
                    return self._error("missing CRLF after chunk data")
                self.state = CS_DATA_LF
            elif self.state == CS_DATA_LF:
                if c != b'\n':
                    return self._error("missing CRLF after chunk data")
                self.state = CS_SIZE
            elif self.state == CS_TRAILER_START:
                if c == b'\r':
                    self.state = CS_END_LF
                elif c == b' ' or c == b'\t':
                    return self._error("obsolete line folding in trailer")
                elif not IS_TCHAR[c]:
                    return self._error("invalid trailer field")
                else:
                    self.state = CS_TRAILER_NAME
                    self.trailer_bytes += 1
            elif self.state == CS_TRAILER_NAME:
                # A trailer line is a field line (RFC 9112 7.1.2, section 5): a token
                # directly followed by ":".
                self.trailer_bytes += 1
                if self.trailer_bytes > MAX_TRAILER_BYTES:
                    return self._error("trailer section too large")
                if c == b':':
                    self.state = CS_TRAILER
                elif not IS_TCHAR[c]:
                    return self._error("invalid trailer field")
            elif self.state == CS_TRAILER:
                self.trailer_bytes += 1
                if self.trailer_bytes > MAX_TRAILER_BYTES:
                    return self._error("trailer section too large")
                if c == b'\r':
                    self.state = CS_TRAILER_LF
                elif not IS_VALUE_CHAR[c]:
                    return self._error("invalid character in trailer")
            elif self.state == CS_TRAILER_LF:
                if c != b'\n':
                    return self._error("bad trailer line ending")
                self.state = CS_TRAILER_START
            elif self.state == CS_END_LF:
                if c != b'\n':
                    return self._error("bad final chunk line ending")
                self.state = CS_DONE
                self.done = True
                return i
        return i

    def feed_bytes(self, bytes data):
        """Python entry for tests: (decoded bytes, position stopped or -1)."""
        cdef Py_ssize_t pos = self.feed(PyBytes_AS_STRING(data), 0, len(data))
        if pos < 0:
            return None, -1
        return join_spans(PyBytes_AS_STRING(data), self), pos

    @property
    def error_reason_text(self):
        return (<bytes>self.error_reason).decode() if self.error_reason != NULL else None


cdef inline Py_ssize_t _hex_len(Py_ssize_t n):
    cdef Py_ssize_t digits = 1
    while n >= 16:
        n >>= 4
        digits += 1
    return digits


cdef inline char* _write_chunk(char* out, const char* data, Py_ssize_t s, Py_ssize_t e):
    cdef Py_ssize_t n = e - s
    cdef Py_ssize_t digits = _hex_len(n)
    cdef Py_ssize_t k
    for k in range(digits - 1, -1, -1):
        out[k] = b"0123456789abcdef"[n & 15]
        n >>= 4
    out += digits
    out[0] = b'\r'
    out[1] = b'\n'
    out += 2
    memcpy(out, data + s, e - s)
    out += e - s
    out[0] = b'\r'
    out[1] = b'\n'
    return out + 2


cdef bytes reframe_chunked(const char* data, ChunkedDecoder dec, bint last_chunk):
    """The spans of `dec` as chunked framing of our own (extensions and trailers dropped),
    plus the last-chunk when `last_chunk`."""
    cdef Py_ssize_t total = 0
    cdef int k
    cdef Py_ssize_t s, e
    cdef bytes out
    cdef char* w
    for k in range(dec.nspans):
        s = dec.spans[2 * k]
        e = dec.spans[2 * k + 1]
        total += _hex_len(e - s) + 4 + (e - s)
    if last_chunk:
        total += 5
    out = PyBytes_FromStringAndSize(NULL, total)
    w = PyBytes_AS_STRING(out)
    for k in range(dec.nspans):
        w = _write_chunk(w, data, dec.spans[2 * k], dec.spans[2 * k + 1])
    if last_chunk:
        memcpy(w, b"0\r\n\r\n", 5)
    return out


cdef bytes encode_chunk(const char* data, Py_ssize_t start, Py_ssize_t end):
    """One chunk holding data[start:end]."""
    cdef bytes out = PyBytes_FromStringAndSize(NULL, _hex_len(end - start) + 4 + (end - start))
    _write_chunk(PyBytes_AS_STRING(out), data, start, end)
    return out


cdef bytes join_spans(const char* data, ChunkedDecoder dec):
    """The decoded bytes of `dec`'s spans, concatenated."""
    cdef Py_ssize_t total = 0
    cdef int k
    cdef bytes out
    cdef char* w
    for k in range(dec.nspans):
        total += dec.spans[2 * k + 1] - dec.spans[2 * k]
    out = PyBytes_FromStringAndSize(NULL, total)
    w = PyBytes_AS_STRING(out)
    for k in range(dec.nspans):
        memcpy(w, data + dec.spans[2 * k], dec.spans[2 * k + 1] - dec.spans[2 * k])
        w += dec.spans[2 * k + 1] - dec.spans[2 * k]
    return out


# Re-exported for Python-level tests and tools.
HEAD = M_HEAD
GET = M_GET
NO_BODY, LENGTH, CHUNKED, UNTIL_CLOSE = BODY_NONE, BODY_LENGTH, BODY_CHUNKED, BODY_UNTIL_CLOSE


def new_request_parser(Limits limits=None):
    return HeadParser(limits or Limits(), True)


def new_response_parser(Limits limits=None):
    return HeadParser(limits or Limits(), False)
