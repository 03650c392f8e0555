# cython: language_level=3
"""A byte tunnel between two connections: opaque TCP (`tcp_passthrough_ports`, protocols
other than HTTP/1 on outbound) and upgraded connections after a 101.

Each side is a `TunnelEnd` protocol; what one reads, the other writes. A slow reader on
one side pauses reading on the other (backpressure); a half-close (EOF) is passed on with
`write_eof`, and the tunnel closes once both directions are done or either side fails.

Where the kernel can splice (the tunnel_splice programs are loaded: fastpath/splice.py),
the worker hands the two sockets over once the bytes it already holds are written, and
stops reading them: the kernel forwards each direction, the worker passes half-closes
and closes on and counts the bytes. Elsewhere, or for a socket that is an accelerated
local hop, the worker copies the bytes itself, as described above.

Both kinds count into sidecar_tcp_received_bytes_total / sidecar_tcp_sent_bytes_total
(M_TCP_BYTES) and the tcp connection gauges.
"""
import asyncio
import logging

from fastpath.stats cimport WorkerStats, M_TCP_BYTES, M_TCP_TUNNELS, PROTO_TCP

log = logging.getLogger("sidecar.tunnel")

DEF EARLY_LIMIT = 262144
END_DOWNSTREAM = 0
END_UPSTREAM = 1
# How a tunnel's bytes are forwarded (M_TCP_TUNNELS; sidecar/metrics/worker_stats.py names them).
PATH_KERNEL = 0      # spliced
PATH_USERSPACE = 1   # copied by the worker

# The worker's fastpath.splice.Splicer, or None: set once by the worker (set_splicer).
_splicer = None


def set_splicer(splicer):
    """Tunnels started from now on are handed to `splicer` (None: userspace copying)."""
    global _splicer
    _splicer = splicer


cdef class TunnelEnd:
    def __cinit__(self):
        self.transport = None
        self.peer = None
        self.early = None
        self.early_bytes = 0
        self.tunnel = None

    cdef void link(self, TunnelEnd peer):
        """Joins two ends; bytes either end kept before the link are written now."""
        self.peer = peer
        peer.peer = self
        for end in (self, peer):
            (<TunnelEnd>end)._flush_early()

    def _flush_early(self):
        if self.early and self.peer is not None and self.peer.transport is not None:
            for chunk in self.early:
                self.peer.transport.write(chunk)
            self.early = None
            self.early_bytes = 0
            # Writing the early bytes may have filled the peer's write buffer, and its
            # pause_writing has then paused our reading: resuming now would undo that
            # backpressure for good (pause_writing comes only once per crossing).
            if not self.closed and not self.kernel and not self.peer.writing_paused:
                self.transport.resume_reading()
        if self.eof and self.peer is not None and self.peer.transport is not None:
            self._pass_eof()

    def connection_made(self, transport):
        self.transport = transport

    def data_received(self, bytes data):
        self.bytes_in += len(data)
        if self.tunnel is not None:
            self.tunnel.count(self.index, len(data))
        if self.peer is not None and self.peer.transport is not None and not self.peer.closed:
            self.peer.transport.write(data)
            return
        if self.early is None:
            self.early = []
        self.early.append(data)
        self.early_bytes += len(data)
        if self.early_bytes > EARLY_LIMIT:
            self.transport.pause_reading()

    def eof_received(self):
        self.eof = True
        if self.peer is not None and self.peer.transport is not None:
            self._pass_eof()
        return True            # keep our write side open until the peer is done too

    def finished(self):
        """This end's incoming direction is over (its EOF, all bytes passed on): the
        splice calls this once the kernel has forwarded everything before the EOF."""
        self.eof = True
        self._pass_eof()

    def _pass_eof(self):
        cdef TunnelEnd peer = self.peer
        if peer.closed:
            self.close()
            return
        if peer.eof:
            # Both directions finished: close both (after their buffers drain).
            self.close()
            peer.close()
        elif peer.transport.can_write_eof():
            peer.transport.write_eof()
        else:
            peer.close()

    def connection_lost(self, exc):
        self.closed = True
        if self.peer is not None and not self.peer.closed:
            self.peer.close()
        if self.tunnel is not None:
            self.tunnel.ended()

    def pause_writing(self):
        self.writing_paused = True
        if self.peer is not None and self.peer.transport is not None and not self.peer.closed:
            self.peer.transport.pause_reading()

    def resume_writing(self):
        self.writing_paused = False
        if (self.peer is not None and self.peer.transport is not None and not self.peer.closed
                and not self.peer.kernel):
            self.peer.transport.resume_reading()

    cdef void close(self):
        if not self.closed:
            self.closed = True
            if self.transport is not None:
                self.transport.close()
            if self.tunnel is not None:
                self.tunnel.ended()

    def abort(self):
        """Closes this end at once (its peer failed)."""
        if not self.closed:
            self.closed = True
            if self.transport is not None:
                self.transport.abort()
            if self.tunnel is not None:
                self.tunnel.ended()

    def write_early(self, bytes data):
        """Bytes that belong to this direction from before the tunnel started."""
        self.data_received(data)

    def shut(self):
        """Closes this end (after its write buffer drains)."""
        self.close()


cdef class Tunnel:
    def __cinit__(self, WorkerStats stats=None, int direction=0):
        self.down = TunnelEnd()
        self.up = TunnelEnd()
        self.down.index = END_DOWNSTREAM
        self.up.index = END_UPSTREAM
        self.down.tunnel = self
        self.up.tunnel = self
        self.stats = stats
        self.direction = direction
        self.splice = None
        if stats is not None:
            stats.connection_opened(direction, PROTO_TCP)

    cdef void count(self, int index, long long n) noexcept:
        if self.stats is not None and n:
            self.stats.counter_add(M_TCP_BYTES, self.direction, index, n)

    cpdef record_path(self, int path):
        """Counts this tunnel under `path` (PATH_*) when its forwarding is decided; once
        (a tunnel that ends before that counts as userspace)."""
        if self.path_recorded:
            return
        self.path_recorded = True
        if self.stats is not None:
            self.stats.counter_add(M_TCP_TUNNELS, self.direction, path, 1)

    def add_bytes(self, int index, long long n):
        """Bytes of one direction forwarded by the kernel (index: the receiving end)."""
        self.count(index, n)

    cdef void ended(self):
        """Called as each end closes; the second one ends the tunnel."""
        if not (self.down.closed and (self.up.closed or self.up.transport is None)):
            return
        if self.counted_closed:
            return
        self.counted_closed = True
        self.record_path(PATH_USERSPACE)
        if self.splice is not None:
            splice, self.splice = self.splice, None
            try:
                splice.ended()
            except Exception:
                log.exception("tcp tunnel: splice teardown")
        if self.stats is not None:
            self.stats.connection_closed(self.direction, PROTO_TCP)

    def start_splice(self):
        """Hands the two sockets to the kernel if the worker can splice (else nothing),
        once the bytes written in this turn of the loop (the rest of a 101 response's
        first read) are out."""
        if _splicer is not None:
            _splicer.loop.call_soon(self._hand_off)
        else:
            self.record_path(PATH_USERSPACE)

    def _hand_off(self):
        if _splicer is not None and not self.down.closed and not self.up.closed:
            _splicer.hand_off(self)

    def start_splice_now(self):
        """Another try (fastpath.splice retries a tunnel too busy to hand off)."""
        self._hand_off()


def start_tunnel(loop, downstream_transport, host, int port, bytes first_bytes=None,
                 double connect_timeout=5.0, WorkerStats stats=None, int direction=0):
    """Turns `downstream_transport` into a tunnel to host:port; returns the downstream end.
    The upstream connection is opened in the background; `first_bytes` (already read
    from the client) go first."""
    cdef Tunnel tunnel = Tunnel(stats, direction)
    cdef TunnelEnd down = tunnel.down
    down.transport = downstream_transport
    downstream_transport.set_protocol(down)
    if first_bytes:
        down.data_received(first_bytes)
    loop.create_task(_connect(loop, tunnel, host, port, connect_timeout))
    return down


async def _connect(loop, Tunnel tunnel, host, int port, double connect_timeout):
    cdef TunnelEnd down = tunnel.down
    cdef TunnelEnd up = tunnel.up
    try:
        await asyncio.wait_for(loop.create_connection(lambda: up, host, port), connect_timeout)
    except (OSError, asyncio.TimeoutError) as e:
        log.warning("tcp tunnel: upstream connect error to %s:%d: %s", host, port, e or "timeout")
        up.closed = True
        down.close()
        return
    if down.closed:
        up.close()
        return
    up.link(down)
    tunnel.start_splice()


def join_tunnel(downstream_transport, upstream_transport, bytes to_upstream=None,
                bytes to_downstream=None, WorkerStats stats=None, int direction=0):
    """Turns two connected transports into a tunnel (after a 101 Switching Protocols)."""
    cdef Tunnel tunnel = Tunnel(stats, direction)
    cdef TunnelEnd down = tunnel.down
    cdef TunnelEnd up = tunnel.up
    down.transport = downstream_transport
    up.transport = upstream_transport
    downstream_transport.set_protocol(down)
    upstream_transport.set_protocol(up)
    down.link(up)
    if to_upstream:
        tunnel.count(END_DOWNSTREAM, len(to_upstream))
        upstream_transport.write(to_upstream)
    if to_downstream:
        tunnel.count(END_UPSTREAM, len(to_downstream))
        downstream_transport.write(to_downstream)
    downstream_transport.resume_reading()
    upstream_transport.resume_reading()
    tunnel.start_splice()
    return down, up
