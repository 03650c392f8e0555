# Declarations of the strict HTTP/1.1 parser (RFC 9112); see parser.pyx for the rules.

# Header kinds the proxy acts on; everything else is HDR_OTHER and only copied.
cdef enum HeaderKind:
    HDR_OTHER = 0
    HDR_CONTENT_LENGTH
    HDR_TRANSFER_ENCODING
    HDR_CONNECTION
    HDR_KEEP_ALIVE
    HDR_PROXY_CONNECTION
    HDR_TE
    HDR_TRAILER
    HDR_UPGRADE
    HDR_HOST
    HDR_EXPECT
    HDR_X_REQUEST_ID
    HDR_X_FORWARDED_FOR
    # Trace context fields (trace_context.pyx), end-to-end: forwarded unless the tracer
    # replaces them. Keep them last: MessageHead.trace_fields has a bit for each.
    HDR_TRACEPARENT
    HDR_TRACESTATE
    HDR_B3
    HDR_X_B3_TRACEID
    HDR_X_B3_SPANID
    HDR_X_B3_PARENTSPANID
    HDR_X_B3_SAMPLED
    HDR_X_B3_FLAGS

cdef enum Method:
    M_OTHER = 0
    M_GET
    M_HEAD
    M_POST
    M_PUT
    M_DELETE
    M_OPTIONS
    M_PATCH
    M_CONNECT
    M_TRACE

# How the body of a message is delimited (RFC 9112 section 6.3).
cdef enum BodyKind:
    BODY_NONE = 0
    BODY_LENGTH
    BODY_CHUNKED
    BODY_UNTIL_CLOSE     # responses only

cdef struct Field:
    Py_ssize_t line_start     # first byte of the field line
    Py_ssize_t line_end       # one past its CRLF
    Py_ssize_t name_end
    Py_ssize_t value_start
    Py_ssize_t value_end      # trailing whitespace excluded
    int kind
    bint drop                 # hop-by-hop: not forwarded


cdef class Limits:
    cdef public Py_ssize_t max_request_line
    cdef public Py_ssize_t max_header_bytes
    cdef public int max_headers


cdef class MessageHead:
    """One parsed request or response head, reused from message to message."""
    cdef readonly bytes raw          # holds `buf` alive
    cdef const char* buf
    cdef Py_ssize_t start            # offset of the start line in raw
    cdef Py_ssize_t end              # one past the blank line ending the head
    cdef Field* fields
    cdef int nfields
    cdef int capacity
    # start line
    cdef Py_ssize_t line_end         # end of the start line, CRLF excluded
    cdef Py_ssize_t method_end
    cdef Py_ssize_t target_start
    cdef Py_ssize_t target_end
    cdef Py_ssize_t reason_start     # responses: status code onwards ("200 OK")
    cdef readonly int method
    cdef readonly int version        # 10 or 11
    cdef readonly int status
    # semantics
    cdef readonly int body_kind
    cdef readonly long long content_length
    cdef readonly bint keep_alive
    cdef readonly bint upgrade       # Connection: upgrade with an Upgrade field
    cdef readonly bint expect_continue
    cdef int host_index
    cdef int request_id_index
    cdef int trace_fields            # bit (1 << (kind - HDR_TRACEPARENT)) per trace field kind present
    # error (parse returned -1)
    cdef readonly int error_status
    cdef const char* error_reason

    cdef void reset(self)
    cdef int find_field(self, int kind)
    cdef bytes field_value(self, int index)


cdef class HeadParser:
    """Finds and parses heads from a byte stream, strictly."""
    cdef Limits limits
    cdef bint is_request
    cdef Py_ssize_t scan_pos         # resume point of the end-of-head search
    cdef Py_ssize_t line_start_pos
    cdef Py_ssize_t head_start       # where the start line begins (after empty lines)
    cdef int lines                   # complete lines of the head so far
    cdef int skipped_empty           # empty lines skipped before the request line
    cdef bytearray pending           # partial head carried between feeds

    cdef Py_ssize_t feed(self, MessageHead head, bytes data, Py_ssize_t offset, int request_method) except -2
    cdef void reset(self)


cdef class ChunkedDecoder:
    """Incremental chunked-body decoder; collects data spans of the current input."""
    cdef int state
    cdef unsigned long long remaining
    cdef int size_digits
    cdef Py_ssize_t line_bytes
    cdef Py_ssize_t trailer_bytes
    cdef Py_ssize_t* spans           # pairs of (start, end) offsets into the input
    cdef int nspans
    cdef int span_capacity
    cdef readonly bint done
    cdef readonly int error_status
    cdef const char* error_reason

    cdef void reset(self)
    cdef int _error(self, const char* reason)
    cdef int _add_span(self, Py_ssize_t s, Py_ssize_t e) except -1
    cdef Py_ssize_t feed(self, const char* data, Py_ssize_t start, Py_ssize_t end) except -2


cdef bytes reframe_chunked(const char* data, ChunkedDecoder dec, bint last_chunk)
cdef bytes encode_chunk(const char* data, Py_ssize_t start, Py_ssize_t end)
cdef bytes join_spans(const char* data, ChunkedDecoder dec)
