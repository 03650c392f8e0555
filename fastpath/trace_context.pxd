# Declarations of trace context propagation; see trace_context.pyx for the rules.
from fastpath.parser cimport MessageHead
from fastpath.exchange cimport TraceContext, ExchangeRecord

cdef enum TraceFormat:
    FORMAT_NONE = 0
    FORMAT_W3C = 1          # traceparent / tracestate
    FORMAT_B3 = 2           # x-b3-* (and the single `b3` header)


cdef class Tracer:
    """One per worker: the propagation formats, the sampling rate, the id generator, and
    where sampled spans go (the exporter's queue)."""
    cdef int formats[2]                     # configured formats, in order of precedence
    cdef int nformats
    cdef unsigned int emit_flags            # TRACE_EMIT_* for every exchange
    cdef unsigned long long sample_threshold    # a new trace is sampled when (lo >> 1) < this
    cdef unsigned long long rng_state       # splitmix64
    cdef public object exporter             # an object with push(bytes), or None
    cdef public object flags_text           # callable: ResponseFlag bits -> "UF,URX" / "-"
    cdef tuple names                        # (inbound routes, outbound routes, services) as
    cdef tuple previous_names               # bytes: the current snapshot's, the one before
    cdef double names_applied_at
    cdef readonly unsigned long long spans_built

    cdef unsigned long long next_id(self) noexcept
    cdef void start_exchange(self, TraceContext* t, MessageHead h) noexcept
    cdef void export_exchange(self, int direction, ExchangeRecord* rec, MessageHead req,
                              object upstream_host, int upstream_port, bytes client_ip,
                              const char* request_id, Py_ssize_t request_id_len, double now)


cdef Py_ssize_t trace_headers_size(const TraceContext* t, MessageHead h) noexcept
cdef char* put_trace_headers(char* w, const TraceContext* t, MessageHead h) noexcept
cdef Py_ssize_t tracestate_text(MessageHead h, char* w, bint bounded) noexcept
