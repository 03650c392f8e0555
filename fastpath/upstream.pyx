# cython: language_level=3
"""The upstream side of a proxied HTTP/1.1 exchange: connection pools and the protocol
that reads responses.

An `UpstreamConnection` is an asyncio protocol on a connection to one endpoint. The
exchange using it (a `ResponseSink`, in practice the downstream connection) writes the
request through it and is told, in order: interim (1xx) heads, the final head with the
first body bytes already framed for the client, further body bytes, the end. Bodies are
streamed: chunked bodies are decoded and re-framed, Content-Length bodies passed through
as the bytes objects that arrived, a body delimited by close re-framed as chunks.

A response that is malformed, or ends before its head is complete, is a 502 for the sink
to answer (`on_upstream_error`); one that ends mid-body can only be cut off.

`EndpointPool` keeps idle connections (LIFO, so the warmest one is reused), closes those
idle longer than the idle timeout or beyond `max_idle`, caps all connections at
`max_connections` and queues exchanges that wait for one. A service's pools share its
CircuitBreaker: the connections of all of them count against max_connections, the
queued exchanges against max_pending (past it `acquire` refuses).

An exchange that retries on a status (`ResponseSink.retry_response`) leaves the response
to the connection, which reads and drops it: the connection is reused when the whole
response was in hand, closed otherwise.
"""
import asyncio
import collections
import logging

from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_GET_SIZE

from fastpath.parser cimport (
    MessageHead, HeadParser, ChunkedDecoder, Limits, M_HEAD,
    BODY_NONE, BODY_LENGTH, BODY_CHUNKED, BODY_UNTIL_CLOSE,
    reframe_chunked, encode_chunk, join_spans,
)
from fastpath.head_rewrite cimport FRAME_NONE, FRAME_LENGTH, FRAME_CHUNKED, FRAME_CLOSE

log = logging.getLogger("sidecar.upstream")

cdef class ResponseSink:
    cdef void on_upstream_ready(self, UpstreamConnection up):
        pass

    cdef void on_upstream_connect_failed(self, str reason):
        pass

    cdef void on_interim_response(self, MessageHead resp):
        pass

    cdef bint retry_response(self, MessageHead resp):
        """Asked with each final response head before anything of it is forwarded: True
        when the exchange tries again instead (a retriable status), leaving the response
        to the connection, which drops it."""
        return False

    cdef int response_framing(self, MessageHead resp):
        return FRAME_NONE

    cdef void on_response_head(self, MessageHead resp, int framing, const char* tail,
                               Py_ssize_t tail_len, bint complete):
        pass

    cdef void on_response_body(self, bytes chunk):
        pass

    cdef void on_response_end(self):
        pass

    cdef void on_upstream_error(self, str reason, bint nothing_received):
        pass

    cdef void on_tunnel_data(self, bytes data):
        pass

    cdef void on_tunnel_eof(self):
        pass

    cdef void on_upstream_pause_writing(self):
        pass

    cdef void on_upstream_resume_writing(self):
        pass


# The sink of a response an exchange retried: its bytes go nowhere.
cdef ResponseSink _DISCARD = ResponseSink()


cdef class UpstreamConnection:
    def __cinit__(self, EndpointPool pool):
        self.pool = pool
        self.parser = HeadParser(pool.limits, False)
        self.resp = MessageHead(pool.limits.max_headers)
        self.chunks = ChunkedDecoder()
        self.state = U_CONNECTING
        self.sink = None
        self.transport = None

    # -- asyncio protocol -------------------------------------------------------------

    def connection_made(self, transport):
        self.transport = transport

    def data_received(self, bytes data):
        if self.state == U_TUNNEL:
            self.sink.on_tunnel_data(data)
        elif self.sink is None:
            # Bytes on an idle connection: the server broke the protocol; never reuse it.
            self.abort()
        else:
            self.received_any = True
            self._consume(data, 0)

    def eof_received(self):
        if self.state == U_TUNNEL:
            self.sink.on_tunnel_eof()
            return True
        return False

    def connection_lost(self, exc):
        cdef int state = self.state
        cdef ResponseSink sink = self.sink
        self.state = U_CLOSED
        self.sink = None
        if self.pool is not None:
            self.pool.discard(self)
        if sink is None:
            return
        if state == U_BODY and self.resp.body_kind == BODY_UNTIL_CLOSE:
            # The close is the end of this body.
            if self.framing == FRAME_CHUNKED:
                sink.on_response_body(b"0\r\n\r\n")
            sink.on_response_end()
        elif state == U_TUNNEL:
            sink.on_tunnel_eof()
            sink.on_upstream_error("upstream closed the tunnel", False)
        elif state == U_WAIT_HEAD:
            sink.on_upstream_error("upstream closed the connection before a complete response"
                                   if self.received_any else
                                   "upstream closed the connection without a response",
                                   not self.received_any)
        elif state == U_BODY:
            sink.on_upstream_error("upstream closed the connection mid-body", False)

    def pause_writing(self):
        self.paused_writing = True
        if self.sink is not None:
            self.sink.on_upstream_pause_writing()

    def resume_writing(self):
        self.paused_writing = False
        if self.sink is not None:
            self.sink.on_upstream_resume_writing()

    # -- used by the exchange ---------------------------------------------------------

    cdef void begin(self, ResponseSink sink, int request_method):
        self.sink = sink
        self.request_method = request_method
        self.state = U_WAIT_HEAD
        self.request_complete = False
        self.received_any = False
        self.parser.reset()
        if self.reading_paused:
            # Left paused by the previous exchange's slow client.
            self.resume_reading()

    cdef void write(self, bytes data):
        self.transport.write(data)

    cdef void pause_reading(self):
        if self.transport is not None and self.state != U_CLOSED and not self.reading_paused:
            self.reading_paused = True
            self.transport.pause_reading()

    cdef void resume_reading(self):
        if self.transport is not None and self.state != U_CLOSED and self.reading_paused:
            self.reading_paused = False
            self.transport.resume_reading()

    cdef void abort(self):
        self.sink = None
        if self.transport is not None and self.state != U_CLOSED:
            self.state = U_CLOSED
            self.transport.abort()

    cdef void detach(self):
        """The exchange gives up on this connection mid-way: it cannot be reused."""
        self.abort()

    # -- response parsing -------------------------------------------------------------

    cdef void _consume(self, bytes data, Py_ssize_t offset):
        cdef Py_ssize_t n = PyBytes_GET_SIZE(data)
        cdef Py_ssize_t r
        cdef MessageHead resp = self.resp
        cdef ResponseSink sink
        while offset < n and self.sink is not None:
            if self.state == U_WAIT_HEAD:
                r = self.parser.feed(resp, data, offset, self.request_method)
                if r == 0:
                    return
                if r < 0:
                    self._fail("malformed response from upstream: " + resp.error_reason_text)
                    return
                offset = r
                if resp.status < 200 and resp.status != 101:
                    self.sink.on_interim_response(resp)
                    continue
                if resp.status == 101:
                    # The sink turns both connections into a tunnel (and detaches from
                    # this object); bytes after the 101 head are already tunnel bytes:
                    # the tunnel's upstream end (the transport's protocol now) takes them,
                    # before anything else the upstream sends.
                    sink = self.sink
                    self.state = U_TUNNEL
                    sink.on_response_head(resp, FRAME_NONE, NULL, 0, False)
                    if offset < n:
                        tunnel_end = self.transport.get_protocol()
                        if tunnel_end is not self:
                            tunnel_end.data_received(data[offset:])
                        else:
                            sink.on_tunnel_data(data[offset:])
                    return
                if self.sink.retry_response(resp):
                    # The exchange tries again: this response is read and dropped. The
                    # connection stays only if all of it is already here.
                    self.sink = _DISCARD
                self.framing = self.sink.response_framing(resp)
                if resp.body_kind == BODY_LENGTH:
                    self.remaining = resp.content_length
                elif resp.body_kind == BODY_CHUNKED:
                    self.chunks.reset()
                self.state = U_BODY
                offset = self._body(data, offset, True)
                if self.sink is _DISCARD:
                    self.abort()
                    return
                if offset < 0:
                    return
            elif self.state == U_BODY:
                offset = self._body(data, offset, False)
                if offset < 0:
                    return
            else:
                return

    cdef Py_ssize_t _body(self, bytes data, Py_ssize_t offset, bint first) except -2:
        """Forwards the body bytes in data[offset:]; returns where the response ended
        (the connection is then released), len(data), or -1 after a failure."""
        cdef MessageHead resp = self.resp
        cdef Py_ssize_t n = PyBytes_GET_SIZE(data)
        cdef const char* d = PyBytes_AS_STRING(data)
        cdef Py_ssize_t take, pos
        cdef bint complete
        cdef bytes out
        cdef ResponseSink sink = self.sink
        if resp.body_kind == BODY_NONE:
            sink.on_response_head(resp, self.framing, NULL, 0, True)
            # Bytes after the end of a response: the connection cannot be trusted again.
            self._finish(resp.keep_alive and offset == n)
            return n
        if resp.body_kind == BODY_LENGTH:
            take = n - offset
            if take > self.remaining:
                take = <Py_ssize_t>self.remaining
            self.remaining -= take
            complete = self.remaining == 0
            if first:
                sink.on_response_head(resp, self.framing, d + offset, take, complete)
            elif take:
                sink.on_response_body(data if offset == 0 and take == n else data[offset:offset + take])
            if complete:
                self._finish(resp.keep_alive and offset + take == n)
                return n
            return offset + take
        if resp.body_kind == BODY_CHUNKED:
            pos = self.chunks.feed(d, offset, n)
            if pos < 0:
                self._fail("malformed chunked body from upstream: " + self.chunks.error_reason_text)
                return -1
            complete = self.chunks.done
            if self.framing == FRAME_CHUNKED:
                out = reframe_chunked(d, self.chunks, complete)
            else:
                out = join_spans(d, self.chunks)
            if first:
                sink.on_response_head(resp, self.framing, PyBytes_AS_STRING(out),
                                      PyBytes_GET_SIZE(out), complete)
            elif PyBytes_GET_SIZE(out):
                sink.on_response_body(out)
            if complete:
                self._finish(resp.keep_alive and pos == n)
                return n
            return pos
        # BODY_UNTIL_CLOSE: everything until the upstream closes.
        if self.framing == FRAME_CHUNKED:
            out = encode_chunk(d, offset, n) if n > offset else b""
        else:
            out = data[offset:] if offset else data
        if first:
            sink.on_response_head(resp, self.framing, PyBytes_AS_STRING(out), PyBytes_GET_SIZE(out), False)
        elif PyBytes_GET_SIZE(out):
            sink.on_response_body(out)
        return n

    cdef void _finish(self, bint reusable):
        cdef ResponseSink sink = self.sink
        self.sink = None
        # The connection can carry another request only if this one was fully written.
        if reusable and self.request_complete and not self.paused_writing:
            self.state = U_IDLE
            self.reused = True
            self.pool.release(self)
        else:
            self.abort()
        sink.on_response_end()

    cdef void _fail(self, str reason):
        cdef ResponseSink sink = self.sink
        self.abort()
        if sink is not None:
            sink.on_upstream_error(reason, False)


cdef class EndpointPool:
    def __cinit__(self, loop, str host, int port, Limits limits, int max_connections=1024,
                  int max_idle=64, double idle_timeout=60.0, double connect_timeout=1.0,
                  CircuitBreaker breaker=None):
        self.loop = loop
        self.host = host
        self.port = port
        self.limits = limits
        self.idle = []
        self.waiters = collections.deque()
        self.open_connections = 0
        self.max_connections = max_connections
        self.max_idle = max_idle
        self.idle_timeout = idle_timeout
        self.connect_timeout = connect_timeout
        self.breaker = breaker

    cdef bint acquire(self, ResponseSink sink):
        """Gives `sink` a connection: at once when one is idle, else when one connects or
        frees up. False when it would have to wait while the service's pending queue is
        full (circuit breaker overflow): the sink gets nothing and waits for nothing."""
        cdef UpstreamConnection up
        while self.idle:
            up = self.idle.pop()
            if up.state == U_IDLE:
                self.reuses += 1
                sink.on_upstream_ready(up)
                return True
        if self._room():
            self._connect(sink)
            return True
        if self.breaker is not None:
            if self.breaker.pending >= self.breaker.max_pending:
                self.breaker.overflows += 1
                return False
            self.breaker.pending_changed(1)
        sink.waiting_in = self
        sink.queued = True
        self.live_waiters += 1
        self.waiters.append(sink)
        return True

    cdef void cancel_wait(self, ResponseSink sink):
        """`sink` no longer waits here (its exchange ended, timed out or tries elsewhere); a
        connection still being opened for it stays in the pool."""
        if sink.waiting_in is not self:
            return
        sink.waiting_in = None
        if sink.queued:
            sink.queued = False
            self.live_waiters -= 1
            if self.breaker is not None:
                self.breaker.pending_changed(-1)

    cdef ResponseSink _next_waiter(self):
        """The first sink of the queue still waiting here (taken off it), or None."""
        cdef ResponseSink sink
        while self.waiters:
            sink = self.waiters.popleft()
            if sink.waiting_in is self and sink.queued:
                self.cancel_wait(sink)
                return sink
        return None

    cdef bint _room(self):
        """Whether a new connection may open: under this pool's cap and the service's
        max_connections, for which an idle connection to another endpoint of the service
        is closed when that is what stands in the way."""
        cdef CircuitBreaker b = self.breaker
        cdef EndpointPool other
        cdef UpstreamConnection up
        if self.open_connections >= self.max_connections:
            return False
        if b is None or b.connections < b.max_connections:
            return True
        for other in b.pools:
            if other is not self and other.idle:
                up = other.idle.pop(0)          # the coldest
                other._forget(up)
                up.abort()
                return True
        return False

    cdef void _connect(self, ResponseSink sink):
        cdef UpstreamConnection up = UpstreamConnection(self)
        self.open_connections += 1
        if self.breaker is not None:
            self.breaker.connections += 1
        self.connects += 1
        sink.waiting_in = self
        sink.queued = False
        self.loop.create_task(self._open(up, sink))

    async def _open(self, UpstreamConnection up, ResponseSink sink):
        try:
            await asyncio.wait_for(
                self.loop.create_connection(lambda: up, self.host, self.port),
                self.connect_timeout)
        except asyncio.TimeoutError:
            self._connect_failed(up, sink, "connect timeout")
            return
        except OSError as e:
            self._connect_failed(up, sink, e.strerror or str(e))
            return
        if up.pool is not self:
            # Closed as soon as it opened: a failed connect for the exchange.
            self._connect_failed(up, sink, "connection closed as it opened")
            return
        if sink.waiting_in is not self:
            # The exchange went away (or tries elsewhere): keep the connection for the next.
            up.state = U_IDLE
            self.release(up)
            return
        self.cancel_wait(sink)      # it may have queued here again meanwhile
        sink.on_upstream_ready(up)

    def _connect_failed(self, UpstreamConnection up, ResponseSink sink, str reason):
        up.state = U_CLOSED
        self._forget(up)
        if sink.waiting_in is self and not sink.queued:
            sink.waiting_in = None
            sink.on_upstream_connect_failed(
                "upstream connect error to %s:%d: %s" % (self.host, self.port, reason))
        self._serve_waiter()
        self._wake_service()

    cdef void release(self, UpstreamConnection up):
        cdef ResponseSink sink = self._next_waiter()
        if sink is not None:
            self.reuses += 1
            sink.on_upstream_ready(up)
            return
        if self.breaker is not None and self.breaker.pending > 0:
            # Requests to another endpoint of the service wait for its connection limit:
            # this connection makes room for them rather than idle.
            self._forget(up)
            up.abort()
            self._wake_service()
            return
        if len(self.idle) >= self.max_idle:
            up.abort()
            return
        up.idle_since = self.loop.time()
        self.idle.append(up)

    cdef void discard(self, UpstreamConnection up):
        """A connection closed: it frees a slot under the caps."""
        if up.pool is not self:
            return
        self._forget(up)
        self._serve_waiter()
        self._wake_service()

    cdef void _forget(self, UpstreamConnection up):
        """Takes `up` out of the pool's count (it is closed or closing)."""
        if up.pool is not self:
            return
        up.pool = None
        self.open_connections -= 1
        if self.breaker is not None:
            self.breaker.connections -= 1
        try:
            self.idle.remove(up)
        except ValueError:
            pass

    cdef void _serve_waiter(self):
        cdef ResponseSink sink
        while self.live_waiters and self._room():
            sink = self._next_waiter()
            if sink is None:
                return
            self._connect(sink)

    cdef void _wake_service(self):
        """A slot under the service's max_connections may be free: the other endpoints'
        waiting requests may connect."""
        cdef CircuitBreaker b = self.breaker
        cdef EndpointPool other
        if b is None or b.pending == 0:
            return
        for other in b.pools:
            if b.connections >= b.max_connections:
                return
            if other is not self and other.live_waiters:
                other._serve_waiter()

    def connect_side(self, protocol_factory):
        """A connection to this endpoint outside the pool (health check probes): the
        pool's connect path (address; its TLS when there is one), not counted in its caps.
        Returns the awaitable of loop.create_connection."""
        return self.loop.create_connection(protocol_factory, self.host, self.port)

    def close_idle(self, double now, bint everything=False):
        """Closes connections idle past the idle timeout (all idle ones with `everything`)."""
        cdef UpstreamConnection up
        for up in list(self.idle):
            if everything or now - up.idle_since > self.idle_timeout:
                up.abort()

    @property
    def idle_count(self):
        return len(self.idle)

    @property
    def waiting_count(self):
        return len(self.waiters)
