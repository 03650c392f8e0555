# cython: language_level=3
"""A byte tunnel between two connections: opaque TCP (`tcp_passthrough_ports`, protocols
other than HTTP/1 on outbound) and upgraded connections after a 101.

Each side is a `TunnelEnd` protocol; what one reads, the other writes. A slow reader on
one side pauses reading on the other (backpressure); a half-close (EOF) is passed on with
`write_eof`, and the tunnel closes once both directions are done or either side fails.
"""
import asyncio
import logging

log = logging.getLogger("sidecar.tunnel")

DEF EARLY_LIMIT = 262144


cdef class TunnelEnd:
    def __cinit__(self):
        self.transport = None
        self.peer = None
        self.early = None
        self.early_bytes = 0

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
            if not self.closed and not self.peer.writing_paused:
                self.transport.resume_reading()
        if self.eof and self.peer is not None and self.peer.transport is not None:
            self._pass_eof()

    def connection_made(self, transport):
        self.transport = transport

    def data_received(self, bytes data):
        self.bytes_in += len(data)
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

    def pause_writing(self):
        self.writing_paused = True
        if self.peer is not None and self.peer.transport is not None and not self.peer.closed:
            self.peer.transport.pause_reading()

    def resume_writing(self):
        self.writing_paused = False
        if self.peer is not None and self.peer.transport is not None and not self.peer.closed:
            self.peer.transport.resume_reading()

    cdef void close(self):
        if not self.closed:
            self.closed = True
            if self.transport is not None:
                self.transport.close()

    def write_early(self, bytes data):
        """Bytes that belong to this direction from before the tunnel started."""
        self.data_received(data)


def start_tunnel(loop, downstream_transport, host, int port, bytes first_bytes=None,
                 double connect_timeout=5.0):
    """Turns `downstream_transport` into a tunnel to host:port; returns the downstream end.
    The upstream connection is opened in the background; `first_bytes` (already read
    from the client) go first."""
    cdef TunnelEnd down = TunnelEnd()
    down.transport = downstream_transport
    downstream_transport.set_protocol(down)
    if first_bytes:
        down.data_received(first_bytes)
    loop.create_task(_connect(loop, down, host, port, connect_timeout))
    return down


async def _connect(loop, TunnelEnd down, host, int port, double connect_timeout):
    cdef TunnelEnd up = TunnelEnd()
    try:
        await asyncio.wait_for(loop.create_connection(lambda: up, host, port), connect_timeout)
    except (OSError, asyncio.TimeoutError) as e:
        log.warning("tcp tunnel: upstream connect error to %s:%d: %s", host, port, e or "timeout")
        down.close()
        return
    if down.closed:
        up.close()
        return
    up.link(down)


def join_tunnel(downstream_transport, upstream_transport, bytes to_upstream=None,
                bytes to_downstream=None):
    """Turns two connected transports into a tunnel (after a 101 Switching Protocols)."""
    cdef TunnelEnd down = TunnelEnd()
    cdef TunnelEnd up = TunnelEnd()
    down.transport = downstream_transport
    up.transport = upstream_transport
    downstream_transport.set_protocol(down)
    upstream_transport.set_protocol(up)
    down.link(up)
    if to_upstream:
        upstream_transport.write(to_upstream)
    if to_downstream:
        downstream_transport.write(to_downstream)
    downstream_transport.resume_reading()
    upstream_transport.resume_reading()
    return down, up
