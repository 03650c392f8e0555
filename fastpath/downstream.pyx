# cython: language_level=3
"""The downstream (client) side of the HTTP/1.1 proxy: one `HttpDownstream` protocol per
accepted connection, running its requests one exchange at a time.

An exchange: parse the request head (strict; a bad one is answered 4xx and the connection
closed before a byte reaches the app), match a route and run its policy (route_policy.pyx:
a refusal is answered here and nothing of the request goes upstream), pick the upstream
pool, queue the rewritten head and stream the body behind it (a chunked body is decoded
and re-framed, and counted against the route's max_request_body). The queue is written
once per read, so a small request leaves in one write. The response comes back through the
`ResponseSink` methods and is written as it arrives.

Pipelined requests wait, unparsed, until the response before them is complete, so answers
go out in order; too many waiting bytes pause reading. Backpressure both ways: a full
upstream write buffer pauses reading from the client; a full client write buffer pauses
reading from the upstream.

Timeouts cost nothing per request: each connection keeps one deadline (the earliest of its
exchange's request, try and backoff deadlines, or its header-read or idle one), compared
by a sweep a few times a second (`sweep_timeouts`); a deadline due before the next sweep
brings one sweep forward (a timer per listener, not per request), so short timeouts are
kept to a few milliseconds.

Requests to a configured service go through its ServiceCluster: its circuit breaker admits
them (503 UO past max_requests or max_pending), its load balancer picks the endpoint of
each try (503 UH when none is available), and its retry policy decides about failed tries
(see "resilience" below): a retry goes to another endpoint when there is one, after an
exponential backoff with jitter, within the service's request timeout and retry budget,
and only while nothing of the response has reached the client.
"""
import http
import logging

from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_GET_SIZE
from cpython.ref cimport PyObject
from libc.string cimport memcpy, memset
from posix.time cimport clock_gettime, timespec, CLOCK_MONOTONIC

from fastpath.parser cimport (
    MessageHead, HeadParser, ChunkedDecoder, Limits, Field, M_CONNECT, M_HEAD,
    M_GET, M_PUT, M_DELETE, M_OPTIONS, M_TRACE,
    BODY_NONE, BODY_LENGTH, BODY_CHUNKED, reframe_chunked,
)
from fastpath.head_rewrite cimport (
    RequestId, build_request_head, build_response_head, host_for,
    FRAME_NONE, FRAME_LENGTH, FRAME_CHUNKED, FRAME_CLOSE,
)
from fastpath.upstream cimport (
    ResponseSink, UpstreamConnection, EndpointPool, U_IDLE, U_TUNNEL,
)
from fastpath.exchange cimport (
    RF_UF, RF_UO, RF_UT, RF_DC, RF_UC, RF_UH, RF_URX, TRACE_ON, TRACE_SAMPLED,
    CACHE_HIT, CACHE_MISS, CACHE_REVALIDATED, CACHE_BYPASS,
)
from fastpath.trace_context cimport Tracer
from fastpath.route_table cimport RouteTable
from fastpath.route_policy cimport RoutePolicy, RequestFacts, Verdict
from fastpath.header_edits cimport EditValues, HeaderEdits
from fastpath.cache_entry cimport (
    CacheEntry, entry_matches, conditional_matches, answer, mark_x_cache,
)
from fastpath.response_cache cimport (
    ResponseCache, CacheExchange, CacheFill,
    LOOKUP_HIT, LOOKUP_BYPASS, LOOKUP_ONLY_IF_CACHED, COALESCE_WAIT,
    FILL_STORING, FILL_STORED, FILL_VALIDATED, FILL_UNCACHEABLE, RQ_UNSAFE,
)
from fastpath.response_cache import COALESCE_TIMEOUT
from fastpath.service_cluster cimport ServiceCluster, OUTCOME_NONE, OUTCOME_SUCCESS, OUTCOME_FAILURE
from fastpath.circuit_breaker cimport CircuitBreaker
from fastpath.retry_policy cimport (
    RetryPolicy, RETRY_ON_CONNECT_FAILURE, RETRY_ON_RESET, RETRY_ON_TIMEOUT,
)
from fastpath.stats cimport (
    WorkerStats, DIR_INBOUND, DIR_OUTBOUND, PROTO_HTTP, M_RETRIES,
    RETRY_CONNECT_FAILURE, RETRY_RESET, RETRY_TIMEOUT, RETRY_STATUS,
)
from fastpath.tunnel import join_tunnel
from fastpath.original_destination import original_destination

log = logging.getLogger("sidecar.proxy")

DEF PIPELINE_LIMIT = 65536        # unparsed bytes behind the request in flight
DEF QUEUE_LIMIT = 262144          # request bytes waiting for an upstream connection

cdef enum DownstreamState:
    D_HEAD = 0          # waiting for (the rest of) a request head
    D_BODY              # request head forwarded, body streaming
    D_RESPONSE          # request complete, response streaming
    D_TUNNEL            # upgraded: the tunnel protocol owns the connection
    D_CLOSED

# Why reading from the client is paused (a bit each; reading resumes when none is left).
cdef enum PauseReason:
    P_UPSTREAM_FULL = 1
    P_PIPELINE = 2
    P_QUEUE = 4

cdef enum Deadline:
    DL_NONE = 0
    DL_HEADER           # a request head must be complete by then
    DL_IDLE             # keep-alive connection with no request
    DL_REQUEST          # the response must be complete by then
    DL_TRY              # the try's response must have started by then (per-try timeout)
    DL_BACKOFF          # the next try starts then
    DL_CACHE_WAIT       # waiting for the same response in flight (response cache): go upstream

DEF SWEEP_SLACK = 0.001         # a deadline this close is due now
DEF EARLY_SWEEP_GAP = 0.005     # early sweeps are at least this far apart

# What the response cache stage did with a request (HttpDownstream._cache_stage).
cdef enum CacheStage:
    STAGE_FORWARD = 0   # go on upstream
    STAGE_ANSWERED      # answered (from the store, or 504 for only-if-cached)
    STAGE_WAITING       # waits for the same response, already on its way

X_CACHE_MISS = b"x-cache: MISS\r\n"

STATUS_TEXT = {status.value: status.phrase for status in http.HTTPStatus}
STATUS_TEXT[413] = "Content Too Large"      # RFC 9110's name


cdef inline double monotonic_now():
    cdef timespec ts
    clock_gettime(CLOCK_MONOTONIC, &ts)
    return ts.tv_sec + ts.tv_nsec * 1e-9


cdef class ListenerContext:
    def __cinit__(self, loop, str direction, Limits limits, EndpointPool app_pool=None,
                  router=None, bint add_xff=True, double header_read_timeout=10.0,
                  double idle_timeout=300.0, double request_timeout=0.0, RouteTable routes=None):
        self.loop = loop
        self.direction = direction
        self.limits = limits
        self.request_id = RequestId()
        self.add_xff = add_xff
        self.header_read_timeout = header_read_timeout
        self.idle_timeout = idle_timeout
        self.request_timeout = request_timeout
        self.now = monotonic_now()
        self.sweep_interval = 0.25
        self.wake_at = 0                # no sweep yet: nothing known to come
        self.connections = set()
        self.app_pool = app_pool
        self.router = router
        self.routes = routes
        self.draining = False
        self.direction_index = DIR_OUTBOUND if direction == "outbound" else DIR_INBOUND

    def attach_telemetry(self, WorkerStats stats, access_log=None, Tracer tracer=None):
        """Where finished exchanges are counted (shared memory) and logged (a queue with
        a `push(facts)` method, or None for no access log), and the tracer that gives
        them a trace context and exports the sampled ones (None: no tracing)."""
        self.worker_stats = stats
        self.access_log = access_log
        self.tracer = tracer

    def configure(self, Limits limits, EndpointPool app_pool=None, router=None,
                  double header_read_timeout=10.0, double idle_timeout=300.0,
                  double request_timeout=0.0, RouteTable routes=None):
        """Takes a new config's values for the connections and exchanges that start from
        now on (Worker.apply_config); those in flight keep what they began with."""
        self.limits = limits
        self.app_pool = app_pool
        self.router = router
        self.routes = routes if routes is not None and routes.n_routes else None
        self.header_read_timeout = header_read_timeout
        self.idle_timeout = idle_timeout
        self.request_timeout = request_timeout

    def sweep_timeouts(self):
        """Advances the coarse clock and acts on what is past its deadline. Called every
        `sweep_interval` by the worker, and earlier when a deadline is due before that."""
        cdef HttpDownstream conn
        cdef double now = monotonic_now()
        cdef double earliest = 0
        self.now = now
        self.last_sweep = now
        for conn in list(self.connections):
            if conn.deadline and conn.deadline <= now + SWEEP_SLACK:
                conn.check_deadline(now)
            if conn.deadline and (earliest == 0 or conn.deadline < earliest):
                earliest = conn.deadline
        self.wake_at = now + self.sweep_interval
        if earliest and earliest < self.wake_at:
            self.wake_early(earliest)

    cdef void wake_early(self, double when):
        """Brings a sweep forward to `when` (a deadline due before the next one)."""
        if self.early_sweep is not None:
            if self.early_at <= when:
                return
            self.early_sweep.cancel()
        if when < self.last_sweep + EARLY_SWEEP_GAP:
            when = self.last_sweep + EARLY_SWEEP_GAP
        self.early_at = when
        self.wake_at = when
        self.early_sweep = self.loop.call_at(when, self._early_sweep)

    def _early_sweep(self):
        self.early_sweep = None
        self.sweep_timeouts()

    def drain(self):
        """Stops keep-alive: idle connections close now, busy ones after their response."""
        cdef HttpDownstream conn
        self.draining = True
        for conn in list(self.connections):
            if conn.state == D_HEAD and not conn.parser.pending:
                conn._close()

    cdef void exchange_done(self, HttpDownstream conn):
        """Called once at the end of every exchange, with `conn.rec` complete: counts it
        into shared memory (C stores only) and queues its access-log line when enabled."""
        cdef int status = conn.rec.status
        cdef double now = monotonic_now()
        cdef WorkerStats stats = self.worker_stats
        if 100 <= status < 600:
            self.responses[status // 100] += 1
        if stats is not None:
            stats.record_exchange(self.direction_index, &conn.rec, now)
        if self.access_log is not None:
            self.access_log.push(conn.exchange_facts(now))
        if conn.rec.trace.flags & TRACE_SAMPLED and self.tracer is not None:
            _export_span(self, conn, now)

    @property
    def active_connections(self):
        return len(self.connections)

    def stats(self):
        return {
            "requests": self.requests,
            "responses": {"%dxx" % k: self.responses[k] for k in range(1, 6)},
            "rejected": self.rejected,
            "upstream_errors": self.upstream_errors,
            "connections_active": len(self.connections),
        }


cdef class HttpDownstream(ResponseSink):
    def __cinit__(self, ListenerContext ctx):
        self.ctx = ctx
        self.parser = HeadParser(ctx.limits, True)
        self.req = MessageHead(ctx.limits.max_headers)
        self.chunks = ChunkedDecoder()
        self.to_upstream = []
        self.retry_body = []
        self.state = D_HEAD
        self.original_dst = None
        self.facts = RequestFacts()
        self.body_limit = -1
        self.endpoint = -1
        self.last_endpoint = -1

    # -- asyncio protocol -------------------------------------------------------------

    def connection_made(self, transport):
        self.transport = transport
        peer = transport.get_extra_info("peername")
        self.client_ip = peer[0].encode() if peer else None
        self.facts.set_client(self.client_ip)
        self.ctx.connections.add(self)
        if self.ctx.worker_stats is not None:
            self.ctx.worker_stats.connection_opened(self.ctx.direction_index, PROTO_HTTP)
        self.deadline = self.ctx.now + self.ctx.header_read_timeout
        self.deadline_kind = DL_HEADER

    def data_received(self, bytes data):
        if self.state == D_HEAD or self.state == D_BODY:
            self._process(data, 0)
        elif self.state == D_RESPONSE:
            # The next pipelined request: parsed once this response is complete.
            self.pipelined = data if self.pipelined is None else self.pipelined + data
            if PyBytes_GET_SIZE(self.pipelined) > PIPELINE_LIMIT:
                self._pause(P_PIPELINE)

    def eof_received(self):
        self.client_eof = True
        if self.state == D_RESPONSE:
            # Half-closed after its requests: answer each one received, then close.
            return True
        if self.state == D_BODY and self.response_started:
            # The upstream answered before the body was complete: finish that answer.
            self.close_after = True
            return True
        if self.state == D_BODY:
            # The request body ends early: the request can never be complete.
            log.info("%s %s: client closed mid-request body", self.ctx.direction, self.req.target)
            self._finish_record(RF_DC)
        return False

    def connection_lost(self, exc):
        cdef UpstreamConnection up = self.upstream
        if self.delay_handle is not None:
            self.delay_handle.cancel()
            self.delay_handle = None
        if self.in_exchange:
            self._finish_record(RF_DC)
        if self.state != D_TUNNEL and self.ctx.worker_stats is not None:
            self.ctx.worker_stats.connection_closed(self.ctx.direction_index, PROTO_HTTP)
        self.state = D_CLOSED
        self.ctx.connections.discard(self)
        self._leave_pool()
        self.upstream = None
        if up is not None:
            up.detach()

    def pause_writing(self):
        self.writing_paused = True
        if self.upstream is not None:
            self.upstream.pause_reading()

    def resume_writing(self):
        self.writing_paused = False
        if self.upstream is not None:
            self.upstream.resume_reading()
        if self.cache_x is not None and self.cache_x.end_on_resume:
            self.cache_x.end_on_resume = False
            self._end_exchange()        # an answer from the store has drained

    # -- requests ---------------------------------------------------------------------

    cdef void _process(self, bytes data, Py_ssize_t offset):
        cdef Py_ssize_t n = PyBytes_GET_SIZE(data)
        cdef Py_ssize_t r
        self.processing = True
        while True:
            if self.state == D_HEAD:
                if self.deadline_kind != DL_HEADER:
                    self.deadline = self.ctx.now + self.ctx.header_read_timeout
                    self.deadline_kind = DL_HEADER
                r = self.parser.feed(self.req, data, offset, 0)
                if r == 0:
                    break
                if r < 0:
                    self.processing = False
                    self._reject(self.req.error_status, self.req.error_reason)
                    return
                offset = r
                if not self._start_request():
                    # Answered locally; a kept-alive connection goes on to the next request.
                    if self.state == D_HEAD and offset < n:
                        continue
                    break
            if self.state == D_BODY:
                offset = self._request_body(data, offset)
                if offset < 0:
                    self.processing = False
                    return
            if self.state == D_RESPONSE:
                if offset < n:
                    self.pipelined = data[offset:] if self.pipelined is None else self.pipelined + data[offset:]
                    if PyBytes_GET_SIZE(self.pipelined) > PIPELINE_LIMIT:
                        self._pause(P_PIPELINE)
                break
            if offset >= n or self.state != D_HEAD:
                break
        self.processing = False
        self._flush_upstream()
        self._close_if_client_done()

    cdef bint _start_request(self):
        """Starts the exchange for the parsed head; False when answered locally.

        The request's way, top to bottom: route (route_table.pyx) -> the route's policy
        (route_policy.pyx: authn, authz, rate limit, body limit, fault) -> the route's
        response cache (response_cache.pyx; a hit is answered here) -> destination
        (the route's weighted services, the app, or the outbound router; each service a
        ServiceCluster) -> request header edits -> forward, after a fault delay if any."""
        cdef MessageHead req = self.req
        cdef RoutePolicy policy = None
        cdef Verdict v
        cdef bytes authority = None
        cdef int stage
        self._begin_record(req.method)
        if self.ctx.tracer is not None:
            self.ctx.tracer.start_exchange(&self.rec.trace, req)
        self.response_started = False
        self.request_done = False
        self.retried = False
        self.replayable = False
        self.sent_upstream = False
        self.request_deadline = self.try_deadline = self.backoff_until = 0
        self.close_after = not req.keep_alive or self.ctx.draining
        self.route_policy = None
        self.facts.principal = None
        self.body_limit = -1
        self.body_seen = 0
        self.delay_abort = 0
        self.generated_id = False
        if req.method == M_CONNECT:
            self._local_response(405, "CONNECT is not supported", True)
            return False
        if req.host_index < 0:
            # An HTTP/1.0 request without Host (the parser requires it in HTTP/1.1): an
            # absolute-form target names its authority (and routes by it).
            authority = host_for(req, None)
        v.delay = 0
        v.abort_after_delay = 0
        if self.ctx.routes is not None:
            self.facts.path.load(req)
            policy = self.ctx.routes.match(req, self.facts.path)
        if policy is not None:
            self.route_policy = policy
            self.rec.route = policy.index
            self.facts.now = self.rec.start
            policy.decide(req, self.facts, &v)
            self.rec.flags |= v.flags
            self.rec.ratelimit = v.ratelimit
            self.rec.authz = v.authz
            if v.status:
                self._local_response_with(v.status, self.facts.reason, req.body_kind != BODY_NONE,
                                          self.facts.local_headers)
                return False
            self.body_limit = policy.max_request_body

        if policy is not None and policy.cache is not None and v.delay == 0:
            # The response cache answers here, before a destination is chosen (a request
            # a fault delays goes upstream as drawn, without it).
            stage = self._cache_stage(policy.cache, authority)
            if stage != STAGE_FORWARD:
                return stage == STAGE_WAITING
        return self._forward(authority, v.delay, v.abort_after_delay)

    cdef bint _forward(self, bytes authority, double delay, int abort_after_delay):
        """The rest of `_start_request`, from the destination on; False when answered
        locally. Also where a request that waited for the response cache goes upstream."""
        cdef MessageHead req = self.req
        cdef RoutePolicy policy = self.route_policy
        cdef ServiceCluster cluster
        cdef EndpointPool pool
        cdef EditValues ev
        cdef bytes head
        cdef bytes extra = None
        cdef double timeout
        pool = self.ctx.app_pool
        cluster = None
        if policy is not None and policy.clusters:
            cluster = policy.pick_cluster()
        elif pool is None:
            cluster = self.ctx.router.cluster_for(
                self.original_dst, req.get(b"host") if authority is None else authority)
            if cluster is None and self.original_dst is not None:
                pool = self.ctx.router.pool(self.original_dst[0], self.original_dst[1])
            if cluster is None and pool is None:
                self._local_response(404, "no route to this destination", req.body_kind != BODY_NONE)
                return False
        if cluster is not None:
            pool = self._enter_cluster(cluster)
            if pool is None:
                return False
        if req.host_index < 0 and authority is None:
            # It is forwarded as HTTP/1.1, which needs a Host (see head_rewrite's docstring).
            authority = self._destination_authority()
            if authority is None:
                self._reject(400, b"missing Host header, and no authority known for it")
                return False
        self.pool = pool
        timeout = cluster.request_timeout if cluster is not None else self.ctx.request_timeout
        if timeout > 0:
            self.request_deadline = self.rec.start + timeout
        self._arm_deadline()
        if req.request_id_index < 0:
            self.ctx.request_id.next()
            memcpy(self.request_id, self.ctx.request_id.text, 36)
            self.generated_id = True
        if policy is not None and policy.request_edits is not None:
            policy.request_edits.mark_drops(req)
            self._edit_values(&ev)
            extra = policy.request_edits.added_lines(&ev)
        if self.cache_x is not None and self.cache_x.fill is not None:
            extra = self.cache_x.fill.request_lines(extra)     # a revalidation's validators
        head = build_request_head(req, self.client_ip if self.ctx.add_xff else None,
                                  self.ctx.request_id, authority, &self.rec.trace, extra)
        self.retry_head = head
        if cluster is not None and cluster.retry is not None:
            self._keep_for_retries(cluster.retry, head)
        self.to_upstream.append(head)
        self.to_upstream_bytes = PyBytes_GET_SIZE(head)
        if req.body_kind == BODY_LENGTH:
            self.body_remaining = req.content_length
            self.state = D_BODY
        elif req.body_kind == BODY_CHUNKED:
            self.chunks.reset()
            self.state = D_BODY
        else:
            self.state = D_RESPONSE
            self.request_done = True
        if delay > 0:
            # Fault delay: the request (and its body, queued) waits before going upstream.
            self.delay_abort = abort_after_delay
            self.delay_until = self.rec.start + delay
            self.delay_handle = self.ctx.loop.call_later(delay, self._delay_done)
            return True
        self._start_try(pool)
        return True

    cdef bytes _destination_authority(self):
        """The address the client connected to, as a Host value ("10.1.2.3:8080",
        "[fd00::1]:80"), or None when unknown: what RFC 9112 3.3 makes the authority of
        a request without Host. Outbound, only a redirected connection has one (a client
        that dialled the listener itself named no destination); inbound, the accepted
        socket's own address is the destination when nothing redirected it."""
        dst = self.original_dst
        if dst is None and self.ctx.direction_index == DIR_INBOUND:
            dst = (original_destination(self.transport.get_extra_info("socket"))
                   or self.transport.get_extra_info("sockname"))
        if dst is None:
            return None
        host = dst[0]
        if ":" in host:
            return ("[%s]:%d" % (host, dst[1])).encode()
        return ("%s:%d" % (host, dst[1])).encode()

    def _delay_done(self):
        """The fault delay is over: abort as drawn, or go upstream now."""
        cdef int status = self.delay_abort
        cdef double early = self.delay_until - monotonic_now()
        self.delay_handle = None
        if self.state == D_CLOSED or not self.in_exchange:
            return
        if early > 0:
            # The loop's timers have millisecond resolution: never shorter than configured.
            self.delay_handle = self.ctx.loop.call_later(early, self._delay_done)
            return
        if status:
            self.delay_abort = 0
            self._local_response(status, "fault filter abort", False)
            return
        self._start_try(self.pool)

    cdef void _edit_values(self, EditValues* v):
        """The values of %{...} in header edits, for the exchange in flight."""
        cdef Field* f
        cdef MessageHead req = self.req
        memset(v, 0, sizeof(EditValues))
        if self.generated_id:
            v.request_id = self.request_id
            v.request_id_len = 36
        elif req.request_id_index >= 0:
            f = &req.fields[req.request_id_index]
            v.request_id = req.buf + f.value_start
            v.request_id_len = f.value_end - f.value_start
        if self.facts.principal is not None:
            v.principal = PyBytes_AS_STRING(self.facts.principal.name)
            v.principal_len = PyBytes_GET_SIZE(self.facts.principal.name)
            v.claims = <PyObject*>self.facts.principal.header_claims
        if self.client_ip is not None:
            v.client_ip = PyBytes_AS_STRING(self.client_ip)
            v.client_ip_len = PyBytes_GET_SIZE(self.client_ip)
        if self.route_policy is not None:
            v.route = PyBytes_AS_STRING(self.route_policy.name_bytes)
            v.route_len = PyBytes_GET_SIZE(self.route_policy.name_bytes)

    cdef bint _body_over_limit(self, long long more):
        """Counts `more` body bytes; past max_request_body, answers 413 (or cuts a started
        response) and closes, and the upstream connection is aborted so that the app never
        sees a complete request. True when the limit was passed."""
        self.body_seen += more
        if self.body_seen <= self.body_limit:
            return False
        log.info("%s %s: request body over max_request_body (%d bytes)", self.ctx.direction,
                 self.req.target, self.body_limit)
        if self.response_started:
            up = self.upstream
            self.upstream = None
            if up is not None:
                up.detach()
            self._finish_record(0)
            self._close()
        else:
            self._local_response(413, "request body too large", True)
        return True

    cdef Py_ssize_t _request_body(self, bytes data, Py_ssize_t offset) except -2:
        cdef Py_ssize_t n = PyBytes_GET_SIZE(data)
        cdef Py_ssize_t take, pos
        cdef long long more
        cdef int k
        cdef const char* d = PyBytes_AS_STRING(data)
        cdef bytes out
        if self.req.body_kind == BODY_LENGTH:
            take = n - offset
            if take > self.body_remaining:
                take = <Py_ssize_t>self.body_remaining
            self.rec.request_bytes += take
            if take:
                self._queue(data if offset == 0 and take == n else data[offset:offset + take])
                self.body_remaining -= take
            if self.body_remaining == 0:
                self.request_done = True
                self.state = D_RESPONSE
            return offset + take
        pos = self.chunks.feed(d, offset, n)
        if pos < 0:
            self._reject(self.chunks.error_status, self.chunks.error_reason)
            return -1
        if self.body_limit >= 0:
            more = 0
            for k in range(self.chunks.nspans):
                more += self.chunks.spans[2 * k + 1] - self.chunks.spans[2 * k]
            if self._body_over_limit(more):
                return -1
        self.rec.request_bytes += pos - offset
        out = reframe_chunked(d, self.chunks, self.chunks.done)
        if PyBytes_GET_SIZE(out):
            self._queue(out)
        if self.chunks.done:
            self.request_done = True
            self.state = D_RESPONSE
        return pos

    cdef void _queue(self, bytes chunk):
        self.to_upstream.append(chunk)
        self.to_upstream_bytes += PyBytes_GET_SIZE(chunk)
        if self.replayable:
            self._keep_body(chunk)
        if self.upstream is None and self.to_upstream_bytes > QUEUE_LIMIT:
            self._pause(P_QUEUE)

    cdef void _flush_upstream(self):
        if self.upstream is None or self.processing:
            return
        if self.to_upstream:
            if len(self.to_upstream) == 1:
                self.upstream.write(self.to_upstream[0])
            else:
                self.upstream.write(b"".join(self.to_upstream))
            self.sent_upstream = True
            self.to_upstream = []
            self.to_upstream_bytes = 0
            if self.pause_reasons & P_QUEUE:
                self._resume(P_QUEUE)
        if self.request_done:
            self.upstream.request_complete = True

    # -- ResponseSink: what the upstream reports ---------------------------------------

    cdef void on_upstream_ready(self, UpstreamConnection up):
        if self.state == D_CLOSED:
            up.state = U_IDLE
            up.pool.release(up)
            return
        self.upstream = up
        self.upstream_reused = up.reused
        up.begin(self, self.req.method)
        if self.writing_paused:
            up.pause_reading()
        self._flush_upstream()

    cdef void on_upstream_connect_failed(self, str reason):
        self.ctx.upstream_errors += 1
        if self._try_again(RETRY_CONNECT_FAILURE, 0, reason):
            return
        log.warning("%s %s: %s", self.ctx.direction, self.req.target, reason)
        self.rec.flags |= RF_UF
        self._local_response(503, "upstream connect error", False)

    cdef void on_interim_response(self, MessageHead resp):
        self.replayable = False         # bytes of the response reach the client: no retry
        if self.req.version == 11:
            self.transport.write(build_response_head(resp, FRAME_NONE, False, False, None, NULL, 0))

    cdef bint retry_response(self, MessageHead resp):
        cdef ServiceCluster cluster = self.cluster
        cdef RetryPolicy policy
        cdef UpstreamConnection up
        if cluster is None:
            return False
        policy = cluster.retry
        if policy is not None and policy.on_status(resp.status):
            up = self.upstream
            self.upstream = None            # the connection drops the response
            if self._try_again(RETRY_STATUS, resp.status, None):
                return True
            self.upstream = up              # not retried: the response goes to the client
        else:
            cluster.report(self.endpoint, OUTCOME_FAILURE if resp.status >= 500 else OUTCOME_SUCCESS,
                           monotonic_now())
        if self.try_deadline:
            self.try_deadline = 0           # the response starts: the try was answered in time
            self._arm_deadline()
        return False

    cdef int response_framing(self, MessageHead resp):
        if resp.body_kind == BODY_NONE:
            return FRAME_LENGTH if resp.content_length >= 0 else FRAME_NONE
        if resp.body_kind == BODY_LENGTH:
            return FRAME_LENGTH
        return FRAME_CHUNKED if self.req.version == 11 else FRAME_CLOSE

    cdef void on_response_head(self, MessageHead resp, int framing, const char* tail,
                               Py_ssize_t tail_len, bint complete):
        cdef UpstreamConnection up
        cdef EditValues ev
        cdef bytes extra = None
        self.response_started = True
        self.rec.status = resp.status
        self.rec.response_bytes += tail_len
        if resp.status == 101:
            up = self.upstream
            if not self.req.upgrade or up is None:
                self.response_started = False
                self.upstream = None
                if up is not None:
                    up.detach()
                self.on_upstream_error("upstream switched protocols without an upgrade request", False)
                return
            self._upgrade(resp, up)
            return
        if framing == FRAME_CLOSE or self.state == D_BODY:
            # Close-delimited for an HTTP/1.0 client, or the response came before the
            # whole request did: this connection ends with this response.
            self.close_after = True
        if self.cache_x is not None and self.cache_x.on_route and self._cache_response_head(
                resp, framing, tail, tail_len):
            return          # a 304 validated the stored response, which answered
        if self.route_policy is not None and self.route_policy.response_edits is not None:
            self.route_policy.response_edits.mark_drops(resp)
            self._edit_values(&ev)
            extra = self.route_policy.response_edits.added_lines(&ev)
        if self.cache_x is not None and self.cache_x.on_route:
            extra = X_CACHE_MISS if extra is None else extra + X_CACHE_MISS
        self.transport.write(build_response_head(
            resp, framing, self.close_after, self.req.version == 10 and not self.close_after,
            extra, tail, tail_len))

    def _upgrade(self, MessageHead resp, UpstreamConnection up):
        """101 Switching Protocols: the connection pair becomes a byte tunnel."""
        cdef bytes waiting = self.pipelined
        self.transport.write(build_response_head(resp, FRAME_NONE, False, False, None, NULL, 0))
        self._finish_record(0)         # the HTTP exchange ends here; the tunnel is bytes
        self.state = D_TUNNEL
        if self.ctx.worker_stats is not None:
            # From here the connection is a tunnel's, not an HTTP connection.
            self.ctx.worker_stats.connection_closed(self.ctx.direction_index, PROTO_HTTP)
        self.deadline = 0
        self.deadline_kind = DL_NONE
        self.ctx.connections.discard(self)
        self.upstream = None
        self.pipelined = None
        up.sink = None
        up.state = U_TUNNEL       # the pool no longer owns it
        up.pool.discard(up)
        self._resume(P_PIPELINE | P_UPSTREAM_FULL | P_QUEUE)
        join_tunnel(self.transport, up.transport, waiting, None, self.ctx.worker_stats,
                    self.ctx.direction_index)

    cdef void on_tunnel_data(self, bytes data):
        if self.state == D_TUNNEL:
            self.transport.write(data)

    cdef void on_response_body(self, bytes chunk):
        self.rec.response_bytes += PyBytes_GET_SIZE(chunk)
        self.transport.write(chunk)
        if self.cache_x is not None and self.cache_x.fill is not None:
            self._cache_body(chunk)

    cdef void on_response_end(self):
        self.upstream = None
        if self.cache_x is not None and self.cache_x.fill is not None:
            self.cache_x.fill.finish()          # a storable response is stored now
        if self.state == D_BODY:
            self.close_after = True
        self._end_exchange()

    cdef void on_upstream_error(self, str reason, bint nothing_received):
        self.upstream = None
        if (nothing_received and self.upstream_reused and self.req.body_kind == BODY_NONE
                and not self.retried and not self.response_started and self.state != D_CLOSED):
            # A kept-alive connection the app had closed: retry once on a fresh one.
            self.retried = True
            self.to_upstream = [self.retry_head]
            self.to_upstream_bytes = PyBytes_GET_SIZE(self.retry_head)
            if not self.pool.acquire(self):
                self._overflow()
            return
        self.ctx.upstream_errors += 1
        if not self.response_started and self.state != D_CLOSED and self._try_again(RETRY_RESET, 0, reason):
            return
        log.warning("%s %s: %s", self.ctx.direction, self.req.target, reason)
        self.rec.flags |= RF_UC
        if self.state == D_CLOSED:
            return
        if self.response_started:
            # Part of the response is out: the client can only learn of it by the cut.
            self._finish_record(0)
            self.transport.abort()
            return
        self._local_response(502, "bad upstream response", False)

    cdef void on_upstream_pause_writing(self):
        self._pause(P_UPSTREAM_FULL)

    cdef void on_upstream_resume_writing(self):
        self._resume(P_UPSTREAM_FULL)

    # -- resilience: the tries of an exchange to a service ----------------------------
    #
    # A request to a configured service is admitted by the service's circuit breaker
    # (`_enter_cluster`) and counted there until `_finish_record` (`_leave_cluster`). Each
    # try goes to an endpoint the load balancer picks (`_start_try`). A failed try -- a
    # connect failure, a reset or bad response before the response started, a retriable
    # status, a per-try timeout -- goes through `_try_again`, which tells the endpoint
    # (outlier detection) and retries when the policy lists the condition, attempts and the
    # retry budget are left, the request timeout has not passed, and the request may be
    # sent again: nothing of it was sent, or it is idempotent and its head and body so far
    # fit the replay buffer (`retry_body`). The retry waits its backoff (a deadline, like
    # the timeouts), then `_next_try` picks another endpoint when there is one.

    cdef EndpointPool _enter_cluster(self, ServiceCluster cluster):
        """Admits the request to its service and picks the endpoint of its first try; None
        after answering 503: UO past max_requests, UH when no endpoint takes requests."""
        cdef EndpointPool pool
        cdef bint body = self.req.body_kind != BODY_NONE
        self.rec.service = cluster.index
        if not cluster.breaker.admit_request():
            self.rec.flags |= RF_UO
            self._local_response(503, "upstream overflow (circuit breaker)", body)
            return None
        self.cluster = cluster
        pool = cluster.pick(self.original_dst, self.rec.start, -1, &self.endpoint)
        if pool is None:
            self.rec.flags |= RF_UH
            self._local_response(503, "no healthy upstream for service " + cluster.name, body)
        return pool

    cdef void _keep_for_retries(self, RetryPolicy policy, bytes head):
        """Decides whether the request may be sent again once bytes of it went upstream:
        an idempotent method whose head (and body, as it arrives) fit the replay buffer."""
        cdef int m = self.req.method
        if self.retry_body:
            del self.retry_body[:]
        self.replay_bytes = PyBytes_GET_SIZE(head)
        self.replayable = (policy.attempts > 0 and self.replay_bytes <= policy.replay_limit
                           and (m == M_GET or m == M_HEAD or m == M_PUT or m == M_DELETE
                                or m == M_OPTIONS or m == M_TRACE))

    cdef void _keep_body(self, bytes chunk):
        self.replay_bytes += PyBytes_GET_SIZE(chunk)
        if self.replay_bytes > self.cluster.retry.replay_limit:
            self.replayable = False         # too long to keep: retried only if nothing was sent
            del self.retry_body[:]
        else:
            self.retry_body.append(chunk)

    cdef void _start_try(self, EndpointPool pool):
        """Sends what is queued of the request to `pool`, as one try."""
        cdef RetryPolicy policy
        self.pool = pool
        self.sent_upstream = False
        if self.cluster is not None:
            policy = self.cluster.retry
            if policy is not None and policy.per_try_timeout > 0:
                self.try_deadline = monotonic_now() + policy.per_try_timeout
                self._arm_deadline()
        if not pool.acquire(self):
            self._overflow()

    cdef void _overflow(self):
        """The service's pending queue is full: 503 at once, flag UO."""
        self.rec.flags |= RF_UO
        self._local_response(503, "upstream overflow (circuit breaker)", False)

    cdef bint _try_again(self, int reason, int status, str why):
        """The try in flight failed (`reason`: RetryReason; `status` of a RETRY_STATUS):
        its endpoint hears of it, and a retry is set up when allowed (see above). True
        then; False when this failure is the answer."""
        cdef ServiceCluster cluster = self.cluster
        cdef int outcome = OUTCOME_SUCCESS if reason == RETRY_STATUS and status < 500 else OUTCOME_FAILURE
        cdef double now, wait
        if cluster is None:
            return False
        now = monotonic_now()
        if not self._may_retry(cluster, reason, status, now):
            cluster.report(self.endpoint, outcome, now)
            return False
        self.rec.retries += 1
        if self.ctx.worker_stats is not None:
            self.ctx.worker_stats.counter_add(M_RETRIES, cluster.service_id, reason, 1)
        cluster.try_ended(self.endpoint, outcome, now)
        self.last_endpoint = self.endpoint
        self.endpoint = -1
        if self.sent_upstream:
            self.to_upstream = [self.retry_head]
            self.to_upstream.extend(self.retry_body)
            self.to_upstream_bytes = self.replay_bytes
            self.sent_upstream = False
        wait = cluster.retry.backoff(self.rec.retries)
        log.info("%s %s: %s; retry %d in %.0f ms", self.ctx.direction, self.req.target,
                 why if why is not None else "status %d" % status, self.rec.retries, wait * 1000)
        self.try_deadline = 0
        self.backoff_until = now + wait
        self._arm_deadline()
        return True

    cdef bint _may_retry(self, ServiceCluster cluster, int reason, int status, double now):
        """Whether the failed try may be retried; takes a retry budget slot when so. Sets
        URX when the failure was retriable but attempts or the budget are used up."""
        cdef RetryPolicy policy = cluster.retry
        cdef CircuitBreaker breaker = cluster.breaker
        cdef unsigned int condition
        if policy is None or policy.attempts == 0 or self.state == D_CLOSED or self.response_started:
            return False
        if reason == RETRY_STATUS:
            if not policy.on_status(status):
                return False
        else:
            condition = (RETRY_ON_CONNECT_FAILURE if reason == RETRY_CONNECT_FAILURE else
                         RETRY_ON_RESET if reason == RETRY_RESET else RETRY_ON_TIMEOUT)
            if not policy.conditions & condition:
                return False
        if self.sent_upstream and not self.replayable:
            return False        # bytes of a request that cannot be sent again went out
        if self.request_deadline and now >= self.request_deadline:
            return False
        if self.rec.retries >= policy.attempts:
            self.rec.flags |= RF_URX
            return False
        if self.retry_slot:
            self.retry_slot = False
            breaker.retry_done()
        if not breaker.admit_retry():
            self.rec.flags |= RF_URX
            return False
        self.retry_slot = True
        return True

    cdef void _next_try(self, double now):
        """The backoff is over: the next try, on another endpoint when there is one."""
        cdef ServiceCluster cluster = self.cluster
        cdef EndpointPool pool = cluster.pick(self.original_dst, now, self.last_endpoint, &self.endpoint)
        if pool is None:
            self.rec.flags |= RF_UH
            self._local_response(503, "no healthy upstream for service " + cluster.name, False)
            return
        self._start_try(pool)

    cdef void _try_timed_out(self):
        """The per-try timeout passed before the try's response started."""
        cdef UpstreamConnection up = self.upstream
        if up is not None:
            self.upstream = None
            up.detach()
        self._leave_pool()
        if self._try_again(RETRY_TIMEOUT, 0, "upstream per-try timeout"):
            return
        log.warning("%s %s: upstream per-try timeout", self.ctx.direction, self.req.target)
        self.rec.flags |= RF_UT
        self._local_response(504, "upstream request timeout", True)

    cdef void _report(self, int outcome):
        """What the try in flight says of its endpoint (outlier detection)."""
        if self.cluster is not None:
            self.cluster.report(self.endpoint, outcome, monotonic_now())

    cdef void _leave_pool(self):
        """Stops waiting for an upstream connection (one still opening stays in the pool)."""
        if self.waiting_in is not None:
            self.waiting_in.cancel_wait(self)

    cdef void _leave_cluster(self):
        """The exchange is over: its service no longer counts it."""
        cdef ServiceCluster cluster = self.cluster
        self.cluster = None
        cluster.try_ended(self.endpoint, OUTCOME_NONE, 0)
        self.endpoint = -1
        if self.retry_slot:
            self.retry_slot = False
            cluster.breaker.retry_done()
        cluster.breaker.request_done()
        self.replayable = False
        self.try_deadline = self.backoff_until = 0

    cdef void _arm_deadline(self):
        """The exchange's deadline: the earliest of the request's, the try's and the
        backoff's; a sweep is brought forward when it is due before the next one."""
        cdef double d = self.request_deadline
        cdef int kind = DL_REQUEST
        if self.try_deadline and (d == 0 or self.try_deadline < d):
            d = self.try_deadline
            kind = DL_TRY
        if self.backoff_until and (d == 0 or self.backoff_until < d):
            d = self.backoff_until
            kind = DL_BACKOFF
        self.deadline = d
        self.deadline_kind = kind if d else DL_NONE
        if d and (d < self.ctx.wake_at or self.ctx.wake_at == 0):
            self.ctx.wake_early(d)

    # -- exchange end, errors, timeouts -----------------------------------------------

    cdef void _begin_record(self, int method):
        self.ctx.requests += 1
        memset(&self.rec, 0, sizeof(self.rec))
        self.rec.start = monotonic_now()
        self.rec.method = method
        self.rec.route = -1
        self.rec.service = -1
        self.in_exchange = True
        self.pool = None

    cdef void _finish_record(self, unsigned int flags):
        """Ends the exchange in flight (once) and hands its record to telemetry."""
        if not self.in_exchange:
            return
        self.in_exchange = False
        if self.cluster is not None:
            self._leave_cluster()
        self.rec.flags |= flags
        if self.cache_x is not None:
            self._cache_exchange_done()
        self.ctx.exchange_done(self)

    cdef void _end_exchange(self):
        cdef bytes waiting
        self._finish_record(0)
        if self.close_after or self.ctx.draining or self.state == D_CLOSED:
            self._close()
            return
        self.state = D_HEAD
        self.deadline = self.ctx.now + self.ctx.idle_timeout
        self.deadline_kind = DL_IDLE
        if self.pipelined is not None:
            waiting = self.pipelined
            self.pipelined = None
            self._resume(P_PIPELINE)
            self._process(waiting, 0)
        else:
            self._close_if_client_done()

    cdef void _close_if_client_done(self):
        """After a half-close, the connection ends once every request it carried is answered."""
        if self.client_eof and self.state == D_HEAD and not self.processing:
            self._close()

    cdef void _local_response(self, int status, str text, bint close):
        self._local_response_with(status, text, close, None)

    cdef void _local_response_with(self, int status, str text, bint close, bytes extra):
        """Answers the current request from the proxy itself (never after a response
        started), with the field lines `extra` (WWW-Authenticate, Retry-After...). The
        connection stays open unless `close` or the request body is still arriving."""
        cdef UpstreamConnection up = self.upstream
        if self.state == D_CLOSED:
            return
        self.response_started = True
        self.rec.status = status
        if up is not None:
            self.upstream = None
            up.detach()
        self._leave_pool()
        self.try_deadline = self.backoff_until = 0
        if self.delay_handle is not None:
            self.delay_handle.cancel()
            self.delay_handle = None
        self.to_upstream = []
        self.to_upstream_bytes = 0
        if self.state == D_BODY:
            close = True       # the rest of the body would be taken for the next request
        close = close or self.close_after or self.ctx.draining
        body = text + "\n"
        if status == 204 or status == 304:
            # no body, and no length fields (RFC 9110 8.6: a 204 has no Content-Length)
            self.transport.write(("HTTP/1.1 %d %s\r\n%s%s\r\n" % (
                status, STATUS_TEXT.get(status, "Error"),
                extra.decode("latin-1") if extra is not None else "",
                "connection: close\r\n" if close else "")).encode())
        else:
            self.transport.write((
                "HTTP/1.1 %d %s\r\ncontent-type: text/plain\r\ncontent-length: %d\r\n%s%s\r\n%s" % (
                    status, STATUS_TEXT.get(status, "Error"), len(body),
                    extra.decode("latin-1") if extra is not None else "",
                    "connection: close\r\n" if close else "",
                    "" if self.rec.method == M_HEAD else body)).encode())
        self.close_after = close
        if self.processing:
            # Called while parsing this read: the caller stops; end here.
            self.state = D_RESPONSE
        self._end_exchange()

    cdef void _reject(self, int status, const char* reason):
        """A malformed request: 4xx/5xx, close, and nothing more of it goes upstream."""
        self.ctx.rejected += 1
        if not self.in_exchange:
            self._begin_record(0)
        log.info("%s: rejected request from %s: %d %s", self.ctx.direction,
                 self.client_ip.decode() if self.client_ip else "?", status,
                 (<bytes>reason).decode())
        self.state = D_HEAD
        self._local_response(status, (<bytes>reason).decode(), True)

    def exchange_facts(self, double now):
        """What the access log says of the exchange that just ended: a tuple in the order of
        sidecar.telemetry.access_log.FACTS. Built only when the access log is on."""
        cdef MessageHead req = self.req
        cdef EndpointPool pool = self.pool
        cdef bint parsed = req.buf != NULL and req.end > req.start
        request_id = None
        if parsed and req.request_id_index >= 0:
            request_id = req.field_value(req.request_id_index)
        elif self.generated_id:
            request_id = self.request_id[:36]
        trace = self.rec.trace.flags & TRACE_ON
        return (self.ctx.direction, self.rec.start, now,
                req.method_bytes if parsed else None, req.target if parsed else None,
                req.get(b"host") if parsed else None, request_id,
                self.rec.route, self.rec.service,
                (pool.host, pool.port) if pool is not None else None,
                self.rec.status, self.rec.flags, self.rec.request_bytes,
                self.rec.response_bytes, self.rec.retries, self.client_ip,
                self.facts.principal.name if self.facts.principal is not None else None,
                (self.rec.trace.trace_hi, self.rec.trace.trace_lo) if trace else None,
                self.rec.trace.span_id if trace else None, self.rec.cache)

    def refuse_not_http(self):
        """The connection's first bytes are not an HTTP/1 request and cannot go anywhere else."""
        self._reject(400, b"not an HTTP/1 request")

    cdef void _pause(self, int reason):
        if self.pause_reasons == 0 and self.state != D_CLOSED:
            self.transport.pause_reading()
        self.pause_reasons |= reason

    cdef void _resume(self, int reason):
        cdef int before = self.pause_reasons
        self.pause_reasons &= ~reason
        if before and not self.pause_reasons and self.state != D_CLOSED:
            self.transport.resume_reading()

    cdef void _close(self):
        cdef UpstreamConnection up = self.upstream
        if self.state == D_CLOSED:
            return
        self.state = D_CLOSED
        self.ctx.connections.discard(self)
        self._leave_pool()
        if up is not None:
            self.upstream = None
            up.detach()
        self.transport.close()       # after the buffered response is written

    cdef void check_deadline(self, double now):
        cdef int kind = self.deadline_kind
        self.deadline = 0
        self.deadline_kind = DL_NONE
        if kind == DL_HEADER:
            if self.parser.pending or self.state == D_BODY:
                if not self.in_exchange:
                    self._begin_record(0)
                log.info("%s: request head from %s not complete in time", self.ctx.direction,
                         self.client_ip.decode() if self.client_ip else "?")
                self._local_response(408, "request header read timeout", True)
            else:
                self._close()
        elif kind == DL_IDLE:
            self._close()
        elif self.state == D_CLOSED or not self.in_exchange:
            return
        elif kind == DL_REQUEST:
            log.warning("%s %s: upstream request timeout", self.ctx.direction, self.req.target)
            self.rec.flags |= RF_UT
            if self.response_started:
                self._finish_record(0)
                self.transport.abort()
            else:
                if self.upstream is not None or self.waiting_in is not None:
                    self._report(OUTCOME_FAILURE)     # the endpoint did not answer in time
                self._local_response(504, "upstream request timeout", True)
        elif kind == DL_TRY:
            self._try_timed_out()
        elif kind == DL_BACKOFF:
            self.backoff_until = 0
            self._next_try(now)
        elif kind == DL_CACHE_WAIT and self.state != D_CLOSED:
            # The response this one waited for is slow: fetch it now, and later misses
            # wait for this fetch instead (the slow one may never end).
            self.cache_x.waiting_on = None
            self.cache_x.cache.lead(self.req, self.cache_x, monotonic_now())
            self._cache_go_upstream()


    # -- the route's response cache (the store and its rules: response_cache.pyx) ---------

    cdef int _cache_stage(self, ResponseCache cache, bytes authority) except -1:
        """Looks the request up in the route's cache (a CacheStage): answered from the
        store, waiting for the same response already on its way, or forward (with
        cache_x.fill set when the response may be stored)."""
        cdef CacheExchange x = self.cache_x
        cdef int outcome
        cdef double now = monotonic_now()
        if x is None:
            x = self.cache_x = CacheExchange()
        x.authority = authority
        x.on_route = True
        outcome = cache.lookup(self.req, x, now)
        if outcome == LOOKUP_HIT:
            self.rec.cache = CACHE_HIT
            self._serve_from_cache(x.entry, True)
            return STAGE_WAITING if self.state == D_RESPONSE else STAGE_ANSWERED
        if outcome == LOOKUP_BYPASS:
            self.rec.cache = CACHE_BYPASS
            return STAGE_FORWARD
        self.rec.cache = CACHE_MISS
        if outcome == LOOKUP_ONLY_IF_CACHED:
            x.on_route = False
            self._local_response(504, "not in the cache (only-if-cached)", False)
            return STAGE_ANSWERED
        if cache.coalesce(self.req, x, self, now) == COALESCE_WAIT:
            self.state = D_RESPONSE
            self.request_done = True
            self.deadline = self.ctx.now + COALESCE_TIMEOUT
            self.deadline_kind = DL_CACHE_WAIT
            return STAGE_WAITING
        return STAGE_FORWARD

    cdef void _serve_from_cache(self, CacheEntry entry, bint end):
        """Writes the answer from a stored response (one write), with the route's
        response edits; ends the exchange when `end` (a 304 that validated the entry
        ends it when the upstream's response does). A client that does not read gets
        no more answers meanwhile: once the write buffer is full, the exchange ends
        (and the next pipelined request starts) when it drains, as a proxied response
        would wait for it."""
        cdef CacheExchange x = self.cache_x
        cdef MessageHead req = self.req
        cdef RoutePolicy policy = self.route_policy
        cdef HeaderEdits edits = policy.response_edits if policy is not None else None
        cdef EditValues ev
        cdef bytes extra = None
        cdef bint head_only = req.method == M_HEAD
        cdef bint not_modified = x.flags != 0 and conditional_matches(
            entry, req, x.if_none_match, x.if_modified_since)
        if req.request_id_index < 0 and not self.generated_id:
            self.ctx.request_id.next()
            memcpy(self.request_id, self.ctx.request_id.text, 36)
            self.generated_id = True
        if edits is not None:
            self._edit_values(&ev)
            extra = edits.added_lines(&ev)
        self.response_started = True
        self.rec.status = 304 if not_modified else entry.status
        if self.rec.service < 0:
            self.rec.service = entry.service    # the service whose response it is
        if not (head_only or not_modified):
            self.rec.response_bytes += PyBytes_GET_SIZE(entry.body)
        self.transport.write(answer(
            entry, self.rec.cache == CACHE_HIT, head_only, not_modified, self.close_after,
            req.version == 10 and not self.close_after, edits, extra, monotonic_now()))
        if not end:
            return
        if self.writing_paused:
            self.state = D_RESPONSE
            x.end_on_resume = True
            return
        if self.processing:
            self.state = D_RESPONSE
        self._end_exchange()

    cdef bint _cache_response_head(self, MessageHead resp, int framing, const char* tail,
                                   Py_ssize_t tail_len):
        """The upstream's response head on a cache route: True when a 304 validated the
        stored response and the client was answered from it. Otherwise the response is
        forwarded; its fill captures it or lets it pass (and its waiters go upstream)."""
        cdef CacheExchange x = self.cache_x
        cdef CacheFill fill = x.fill
        mark_x_cache(resp)
        if x.flags & RQ_UNSAFE and resp.status < 400:
            x.cache.invalidate(x.key)
        if fill is None:
            return False
        fill.origin.service = self.rec.service
        if fill.response_head(resp, self.req, framing, tail, tail_len, monotonic_now()):
            self.rec.cache = CACHE_REVALIDATED
            self._serve_from_cache(fill.entry, False)
            return True
        if fill.state != FILL_STORING:
            x.fill = None
            self._cache_release(fill)
        return False

    cdef void _cache_body(self, bytes chunk):
        cdef CacheFill fill = self.cache_x.fill
        if not fill.add_body(chunk):
            # Over max_entry (or not kept): the rest passes through, the waiters go upstream.
            self.cache_x.fill = None
            self._cache_release(fill)

    cdef void _cache_exchange_done(self):
        """The exchange ended: a fill it led is released (stored, or not)."""
        cdef CacheExchange x = self.cache_x
        cdef CacheFill fill = x.fill
        x.on_route = False
        x.waiting_on = None
        x.entry = None
        x.end_on_resume = False
        if fill is not None:
            x.fill = None
            self._cache_release(fill)

    cdef void _cache_release(self, CacheFill fill):
        """Wakes the exchanges that waited for `fill` (see response_cache.pyx)."""
        cdef HttpDownstream conn
        for waiter in fill.release():
            conn = <HttpDownstream>waiter
            if conn.cache_x is not None and conn.cache_x.waiting_on is fill and conn.state != D_CLOSED:
                conn.cache_x.waiting_on = None
                conn._cache_wake(fill)

    cdef void _cache_wake(self, CacheFill fill):
        """The response this exchange waited for is in (or will not come)."""
        cdef CacheExchange x = self.cache_x
        cdef int state = fill.state
        self.deadline = 0
        self.deadline_kind = DL_NONE
        if (state == FILL_STORED or state == FILL_VALIDATED) and entry_matches(fill.entry, self.req):
            self.rec.cache = CACHE_HIT
            self._serve_from_cache(fill.entry, True)
        elif state == FILL_UNCACHEABLE:
            self._cache_go_upstream()       # each on its own, as without a cache
        elif self._cache_stage(x.cache, x.authority) == STAGE_FORWARD:
            # The fetch failed, or stored another variant: looked up again, and this
            # one fetches (the others that waited now wait for it).
            self._cache_go_upstream()

    cdef void _cache_go_upstream(self):
        self.deadline = 0
        self.deadline_kind = DL_NONE
        self._forward(self.cache_x.authority, 0.0, 0)


# -- tracing ------------------------------------------------------------------------------

cdef void _export_span(ListenerContext ctx, HttpDownstream conn, double now):
    """Hands the span of the sampled exchange that just ended to the tracer's exporter."""
    cdef Tracer tracer = ctx.tracer
    cdef MessageHead req = conn.req
    cdef EndpointPool pool = conn.pool
    cdef const char* request_id = NULL
    cdef Py_ssize_t request_id_len = 0
    if tracer.exporter is None or req.buf == NULL:
        return
    if req.request_id_index >= 0:
        request_id = req.buf + req.fields[req.request_id_index].value_start
        request_id_len = (req.fields[req.request_id_index].value_end
                          - req.fields[req.request_id_index].value_start)
    elif conn.generated_id:
        request_id = conn.request_id
        request_id_len = 36
    tracer.export_exchange(ctx.direction_index, &conn.rec, req,
                           pool.host if pool is not None else None,
                           pool.port if pool is not None else 0,
                           conn.client_ip, request_id, request_id_len, now)
