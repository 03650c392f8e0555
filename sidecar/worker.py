"""A worker process: the uvloop event loop running the fastpath listeners.

Started by the manager as `python -m sidecar.worker`, with the validated config pickled on
stdin. Each worker binds its own listening sockets with SO_REUSEPORT, so the kernel spreads
new connections over the workers. SIGTERM drains: stop accepting, let in-flight exchanges
finish (kept-alive connections close after their current response) for at most
`drain_timeout`, exit 0. Never imports bcc: its memory is the pod's for the pod's lifetime.
"""
import asyncio
import ctypes
import logging
import os
import pickle
import signal
import socket
import sys

import uvloop

from fastpath.downstream import ListenerContext
from fastpath.inbound import inbound_protocol_factory
from fastpath.outbound import OutboundRouter, outbound_protocol_factory
from fastpath.parser import Limits
from fastpath.upstream import EndpointPool
from sidecar.config.model import Config
from sidecar.logs import setup_logging

log = logging.getLogger("sidecar.worker")

SWEEP_INTERVAL = 0.25       # seconds between timeout sweeps (the coarse clock's resolution)
PR_SET_PDEATHSIG = 1


def listening_socket(address, backlog=1024):
    """A non-blocking TCP listener on `address` shared with the other workers."""
    host, port = address
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    sock.bind((host, port))
    sock.listen(backlog)
    sock.setblocking(False)
    return sock


class Worker:
    """The listeners of one worker process and their shared state."""

    def __init__(self, cfg: Config, index: int):
        self.cfg = cfg
        self.index = index
        self.loop = asyncio.get_running_loop()
        lim = cfg.limits
        self.limits = Limits(lim.max_request_line, lim.max_header_bytes, lim.max_headers)
        app_host, app_port = cfg.inbound.app
        self.app_pool = EndpointPool(self.loop, app_host, app_port, self.limits,
                                     1024, 256, lim.upstream_idle_timeout, lim.connect_timeout)
        self.inbound = ListenerContext(
            self.loop, "inbound", self.limits, app_pool=self.app_pool,
            header_read_timeout=lim.header_read_timeout, idle_timeout=lim.idle_timeout)
        self.router = OutboundRouter(self.loop, self.limits, cfg.services,
                                     lim.connect_timeout, lim.upstream_idle_timeout)
        self.outbound = ListenerContext(
            self.loop, "outbound", self.limits, router=self.router,
            header_read_timeout=lim.header_read_timeout, idle_timeout=lim.idle_timeout,
            request_timeout=max((s.timeouts.request for s in cfg.services), default=15.0))
        self.servers = []
        self.stopping = asyncio.Event()

    async def start(self):
        inbound_factory = inbound_protocol_factory(
            self.inbound, self.cfg.inbound.tcp_passthrough_ports, self.cfg.inbound.app[0])
        outbound_factory = outbound_protocol_factory(
            self.outbound, self.cfg.outbound.protocol_detect_timeout)
        for address, factory in ((self.cfg.inbound.listen, inbound_factory),
                                 (self.cfg.outbound.listen, outbound_factory)):
            server = await self.loop.create_server(factory, sock=listening_socket(address))
            self.servers.append(server)
        self.loop.call_later(SWEEP_INTERVAL, self._sweep)
        log.info("worker %d: inbound %s:%d -> %s:%d, outbound %s:%d", self.index,
                 *self.cfg.inbound.listen, *self.cfg.inbound.app, *self.cfg.outbound.listen)

    def _sweep(self):
        self.inbound.sweep_timeouts()
        self.outbound.sweep_timeouts()
        now = self.loop.time()
        self.app_pool.close_idle(now)
        self.router.close_idle(now)
        if not self.stopping.is_set():
            self.loop.call_later(SWEEP_INTERVAL, self._sweep)

    async def drain(self):
        """Stops accepting, then waits for in-flight connections for `drain_timeout`."""
        for server in self.servers:
            server.close()
        self.inbound.drain()
        self.outbound.drain()
        deadline = self.loop.time() + self.cfg.drain_timeout
        while self.loop.time() < deadline:
            if not self.inbound.active_connections and not self.outbound.active_connections:
                break
            self.inbound.sweep_timeouts()
            self.outbound.sweep_timeouts()
            await asyncio.sleep(0.05)
        left = self.inbound.active_connections + self.outbound.active_connections
        if left:
            log.warning("worker %d: drain timeout, closing %d connections", self.index, left)
        self.stopping.set()


async def serve(cfg: Config, index: int):
    worker = Worker(cfg, index)
    await worker.start()
    drained = asyncio.Event()

    async def on_term():
        await worker.drain()
        drained.set()

    for sig in (signal.SIGTERM, signal.SIGINT):
        worker.loop.add_signal_handler(sig, lambda: worker.loop.create_task(on_term()))
    await drained.wait()


def main():
    cfg = pickle.loads(sys.stdin.buffer.read())
    index = int(sys.argv[sys.argv.index("--index") + 1]) if "--index" in sys.argv else 0
    setup_logging(cfg.log_level)
    # Die with the manager, even after a kill -9 of it.
    try:
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
    except OSError:
        pass
    if os.getppid() == 1:
        sys.exit(0)
    uvloop.run(serve(cfg, index))


if __name__ == "__main__":
    main()
