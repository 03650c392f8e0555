# Declarations of the downstream (client) side; see downstream.pyx.
from fastpath.parser cimport MessageHead, HeadParser, ChunkedDecoder, Limits
from fastpath.head_rewrite cimport RequestId
from fastpath.upstream cimport ResponseSink, UpstreamConnection, EndpointPool
from fastpath.exchange cimport ExchangeRecord
from fastpath.stats cimport WorkerStats
from fastpath.trace_context cimport Tracer
from fastpath.route_table cimport RouteTable
from fastpath.route_policy cimport RoutePolicy, RequestFacts
from fastpath.header_edits cimport EditValues
from fastpath.cache_entry cimport CacheEntry
from fastpath.response_cache cimport ResponseCache, CacheExchange, CacheFill

cdef class HttpDownstream


cdef class ListenerContext:
    """What every connection of one listener shares: limits, timeouts, where requests go,
    the request-id generator, the connection set the timeout sweep walks, counters."""
    cdef object loop
    cdef readonly str direction
    cdef Limits limits
    cdef RequestId request_id
    cdef bint add_xff
    cdef double header_read_timeout
    cdef double idle_timeout
    cdef double request_timeout
    cdef public double now              # coarse clock, advanced by the sweep
    cdef set connections
    cdef EndpointPool app_pool          # inbound: the app
    cdef object router                  # outbound: the services and original destinations
    cdef RouteTable routes              # this direction's routes and their policy, or None
    cdef public bint draining
    cdef readonly unsigned long long requests
    cdef readonly unsigned long long responses[6]   # by status class: 1xx..5xx at [1..5]
    cdef readonly unsigned long long rejected       # malformed requests answered 4xx
    cdef readonly unsigned long long upstream_errors
    cdef WorkerStats worker_stats       # the worker's shared-memory counters, or None
    cdef object access_log              # telemetry's queue of finished exchanges, or None
    cdef Tracer tracer                  # trace context and sampled spans, or None
    cdef int direction_index            # DIR_INBOUND / DIR_OUTBOUND (stats.pxd)

    cdef void exchange_done(self, HttpDownstream conn)


cdef class HttpDownstream(ResponseSink):
    cdef ListenerContext ctx
    cdef object transport
    cdef HeadParser parser
    cdef MessageHead req
    cdef ChunkedDecoder chunks
    cdef bytes client_ip
    cdef public object original_dst     # (host, port) the client connected to, or None
    cdef int state
    cdef long long body_remaining
    cdef EndpointPool pool
    cdef UpstreamConnection upstream
    cdef bint upstream_reused
    cdef list to_upstream
    cdef Py_ssize_t to_upstream_bytes
    cdef bytes retry_head               # a bodiless request's head, for one retry on a stale connection
    cdef bint retried
    cdef bytes pipelined
    cdef int pause_reasons
    cdef bint processing
    cdef bint response_started
    cdef bint request_done
    cdef bint close_after
    cdef bint writing_paused
    cdef double deadline
    cdef int deadline_kind
    cdef ExchangeRecord rec             # the exchange in flight (see exchange.pxd)
    cdef bint in_exchange
    cdef bint client_eof                # the client half-closed: answer what it sent, then close
    cdef RequestFacts facts             # what route policy reads beyond the head (per connection)
    cdef RoutePolicy route_policy       # the exchange's route, or None
    cdef long long body_limit           # max_request_body of the route; -1: none
    cdef long long body_seen            # request body bytes so far (chunked bodies)
    cdef object delay_handle            # fault delay timer of the exchange, or None
    cdef int delay_abort                # fault abort status once the delay is over
    cdef double delay_until             # CLOCK_MONOTONIC time the fault delay ends
    cdef char request_id[36]            # the x-request-id generated for this exchange
    cdef bint generated_id
    cdef CacheExchange cache_x          # the response cache's part (made on a cache route), or None

    cdef void _process(self, bytes data, Py_ssize_t offset)
    cdef bint _start_request(self)
    cdef bint _forward(self, bytes authority, double delay, int abort_after_delay)
    cdef bytes _destination_authority(self)
    cdef Py_ssize_t _request_body(self, bytes data, Py_ssize_t offset) except -2
    cdef void _queue(self, bytes chunk)
    cdef void _flush_upstream(self)
    cdef void _begin_record(self, int method)
    cdef void _finish_record(self, unsigned int flags)
    cdef void _end_exchange(self)
    cdef void _close_if_client_done(self)
    cdef void _local_response(self, int status, str text, bint close)
    cdef void _local_response_with(self, int status, str text, bint close, bytes extra)
    cdef void _edit_values(self, EditValues* v)
    cdef bint _body_over_limit(self, long long more)
    cdef void _reject(self, int status, const char* reason)
    cdef void _pause(self, int reason)
    cdef void _resume(self, int reason)
    cdef void _close(self)
    cdef void check_deadline(self, double now)
    # the route's response cache stage
    cdef int _cache_stage(self, ResponseCache cache, bytes authority) except -1
    cdef void _serve_from_cache(self, CacheEntry entry, bint end)
    cdef bint _cache_response_head(self, MessageHead resp, int framing, const char* tail,
                                   Py_ssize_t tail_len)
    cdef void _cache_body(self, bytes chunk)
    cdef void _cache_exchange_done(self)
    cdef void _cache_release(self, CacheFill fill)
    cdef void _cache_wake(self, CacheFill fill)
    cdef void _cache_go_upstream(self)
