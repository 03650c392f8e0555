# Declarations of the upstream side; see upstream.pyx.
from fastpath.parser cimport MessageHead, HeadParser, ChunkedDecoder, Limits
from fastpath.circuit_breaker cimport CircuitBreaker

cdef enum UpstreamState:
    U_CONNECTING = 0
    U_IDLE               # in the pool
    U_WAIT_HEAD          # request written, waiting for the response head
    U_BODY               # streaming the response body
    U_TUNNEL             # after 101: bytes both ways
    U_CLOSED


cdef class EndpointPool
cdef class UpstreamConnection


cdef class ResponseSink:
    """What an upstream connection reports to the exchange that uses it (the downstream)."""
    cdef EndpointPool waiting_in        # the pool it waits in for a connection, or None
    cdef bint queued                    # ... queued for one (not connecting its own)
    cdef void on_upstream_ready(self, UpstreamConnection up)
    cdef void on_upstream_connect_failed(self, str reason)
    cdef void on_interim_response(self, MessageHead resp)
    cdef bint retry_response(self, MessageHead resp)
    cdef int response_framing(self, MessageHead resp)
    cdef void on_response_head(self, MessageHead resp, int framing, const char* tail,
                               Py_ssize_t tail_len, bint complete)
    cdef void on_response_body(self, bytes chunk)
    cdef void on_response_end(self)
    cdef void on_upstream_error(self, str reason, bint nothing_received)
    cdef void on_tunnel_data(self, bytes data)
    cdef void on_tunnel_eof(self)
    cdef void on_upstream_pause_writing(self)
    cdef void on_upstream_resume_writing(self)


cdef class UpstreamConnection:
    cdef object transport
    cdef EndpointPool pool
    cdef ResponseSink sink
    cdef HeadParser parser
    cdef MessageHead resp
    cdef ChunkedDecoder chunks
    cdef int state
    cdef int request_method
    cdef int framing
    cdef long long remaining
    cdef bint request_complete       # the whole request (head and body) was written
    cdef bint received_any           # bytes of a response arrived for this request
    cdef bint reused                 # served a request before this one
    cdef bint paused_writing
    cdef bint reading_paused
    cdef double idle_since

    cdef void begin(self, ResponseSink sink, int request_method)
    cdef void write(self, bytes data)
    cdef void pause_reading(self)
    cdef void resume_reading(self)
    cdef void abort(self)
    cdef void detach(self)
    cdef void _consume(self, bytes data, Py_ssize_t offset)
    cdef Py_ssize_t _body(self, bytes data, Py_ssize_t offset, bint first) except -2
    cdef void _finish(self, bint reusable)
    cdef void _fail(self, str reason)


cdef class EndpointPool:
    """Connections to one endpoint: idle ones reused (LIFO), a cap on all of them, a queue
    of exchanges waiting for one when the cap is reached."""
    cdef object loop
    cdef readonly str host
    cdef readonly int port
    cdef Limits limits
    cdef list idle
    cdef object waiters
    cdef readonly int live_waiters      # entries of `waiters` still waiting
    cdef readonly int open_connections
    cdef int max_connections
    cdef int max_idle
    cdef double idle_timeout
    cdef double connect_timeout
    cdef readonly CircuitBreaker breaker    # the service's, or None (the app, original destinations)
    cdef readonly unsigned long long connects
    cdef readonly unsigned long long reuses

    cdef bint acquire(self, ResponseSink sink)
    cdef void cancel_wait(self, ResponseSink sink)
    cdef void release(self, UpstreamConnection up)
    cdef void discard(self, UpstreamConnection up)
    cdef void _connect(self, ResponseSink sink)
    cdef ResponseSink _next_waiter(self)
    cdef void _serve_waiter(self)
    cdef bint _room(self)
    cdef void _forget(self, UpstreamConnection up)
    cdef void _wake_service(self)
