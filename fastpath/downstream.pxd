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
from fastpath.service_cluster cimport ServiceCluster
from fastpath.retry_policy cimport RetryPolicy

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
    cdef double request_timeout         # requests to no service (outbound); 0: none
    cdef public double now              # coarse clock, advanced by the sweep
    cdef public double sweep_interval   # seconds between the worker's sweeps
    cdef double wake_at                 # a sweep runs by then (0: none is known to)
    cdef double last_sweep
    cdef double early_at                # when the early sweep runs (with early_sweep)
    cdef object early_sweep             # timer of a sweep brought forward, or None
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
    cdef void wake_early(self, double when)


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
    cdef bytes retry_head               # the request's head: to send again (retries, a stale connection)
    cdef bint retried                   # the one transparent retry on a stale connection was made
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
    # resilience (the tries of a request to a service; see downstream.pyx)
    cdef ServiceCluster cluster         # the exchange's service, admitted by its breaker; or None
    cdef int endpoint                   # the endpoint of the try in flight; -1: none
    cdef int last_endpoint              # the endpoint of the try before (a retry avoids it)
    cdef bint retry_slot                # the try in flight is a retry (holds a budget slot)
    cdef bint replayable                # sent bytes may be sent again: idempotent, fits the buffer
    cdef bint sent_upstream             # bytes of this try were written upstream
    cdef list retry_body                # the body so far, to send again (while replayable)
    cdef Py_ssize_t replay_bytes        # head and body bytes of the request so far
    cdef double request_deadline        # the response's last byte is due; 0: none
    cdef double try_deadline            # the try's response is due to start; 0: none
    cdef double backoff_until           # the next try starts then; 0: none waits

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
    cdef EndpointPool _enter_cluster(self, ServiceCluster cluster)
    cdef void _keep_for_retries(self, RetryPolicy policy, bytes head)
    cdef void _keep_body(self, bytes chunk)
    cdef void _start_try(self, EndpointPool pool)
    cdef void _overflow(self)
    cdef bint _try_again(self, int reason, int status, str why)
    cdef bint _may_retry(self, ServiceCluster cluster, int reason, int status, double now)
    cdef void _next_try(self, double now)
    cdef void _try_timed_out(self)
    cdef void _report(self, int outcome)
    cdef void _leave_pool(self)
    cdef void _leave_cluster(self)
    cdef void _arm_deadline(self)
