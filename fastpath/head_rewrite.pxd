# Declarations of the head rewriter; see head_rewrite.pyx.
from fastpath.parser cimport MessageHead
from fastpath.exchange cimport TraceContext

# How the body of a forwarded response is framed towards the client.
cdef enum Framing:
    FRAME_NONE = 0        # no body, or the upstream's own length fields kept (HEAD, 304)
    FRAME_LENGTH          # content-length: N
    FRAME_CHUNKED         # transfer-encoding: chunked (our own framing)
    FRAME_CLOSE           # delimited by closing the connection (HTTP/1.0 clients)

cdef class RequestId:
    cdef unsigned long long hi
    cdef unsigned long long lo
    cdef char text[36]
    cdef void next(self)
    cdef void format(self, unsigned long long lo, char* out) noexcept

cdef bytes host_for(MessageHead h, bytes destination)
cdef bytes build_request_head(MessageHead h, bytes client_ip, RequestId request_id,
                              bytes authority, const TraceContext* trace, bytes extra)
cdef bytes build_response_head(MessageHead h, int framing, bint close, bint keep_alive_header,
                               bytes extra, const char* tail, Py_ssize_t tail_len)
