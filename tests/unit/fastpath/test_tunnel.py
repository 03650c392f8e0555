"""fastpath.tunnel backpressure: a tunnel whose upstream does not keep up stops reading its
client, also after the bytes it kept while the upstream connection was being opened have
been flushed (they fill the upstream's write buffer, and that pause must hold).

Real loopback sockets and a uvloop loop in a thread; the upstream accepts and never reads.
"""
import asyncio
import socket
import threading
import time

import uvloop

from fastpath.tunnel import start_tunnel

MB = 1024 * 1024


class _Downstream(asyncio.Protocol):
    """Protocol of the client's accepted connection until start_tunnel takes it over."""

    def connection_made(self, transport):
        self.transport = transport


def _sent_before_blocking(first_bytes, budget, stall_s=0.5):
    upstream = socket.socket()
    upstream.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    upstream.bind(("127.0.0.1", 0))
    upstream.listen(1)
    client, accepted = socket.socketpair()
    loop = uvloop.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    try:
        def open_tunnel():
            async def go():
                transport, _ = await loop.connect_accepted_socket(_Downstream, sock=accepted)
                start_tunnel(loop, transport, "127.0.0.1", upstream.getsockname()[1], first_bytes)
            return loop.create_task(go())
        loop.call_soon_threadsafe(open_tunnel)
        # The client writes until a send stalls (the tunnel stopped reading it) or the budget is spent.
        client.settimeout(stall_s)
        chunk = b"y" * 65536
        sent = 0
        while sent < budget:
            try:
                sent += client.send(chunk)
            except socket.timeout:
                break
        return sent
    finally:
        loop.call_soon_threadsafe(loop.stop)
        thread.join(5)
        client.close()
        upstream.close()
        loop.close()


def test_a_slow_upstream_stops_reading_the_client_after_the_early_bytes_are_flushed():
    # 8 MiB kept before the upstream connects: more than the kernel takes, so flushing them
    # leaves the upstream's write buffer over its high-water mark.
    sent = _sent_before_blocking(b"x" * (8 * MB), budget=64 * MB)
    # Without backpressure the tunnel reads all 64 MiB into memory; with it, the client is
    # stopped once the socket pair's buffers are full.
    assert sent < 8 * MB, "the client sent %d MiB into a tunnel whose upstream reads nothing" % (sent // MB)
