"""A worker process: the uvloop event loop running the fastpath listeners.

Started by the manager as `python -m sidecar.worker --index I --control-fd C --stats-fd S`.
Its config arrives on the control channel (sidecar.control): the first "apply" is read
before the loop starts; later ones are applied in place (`Worker.apply_config`), for the
exchanges that start from then on, while the connections in flight finish as they began.
Each worker binds its own listening sockets with SO_REUSEPORT, so the kernel spreads new
connections over the workers, and counts every exchange into its shared-memory segment
(fastpath.stats). SIGTERM drains: stop accepting, let in-flight exchanges finish
(kept-alive connections close after their current response) for at most `drain_timeout`,
exit 0. Never imports bcc: its memory is the pod's for the pod's lifetime.
"""
import argparse
import asyncio
import ctypes
import logging
import mmap
import os
import signal
import socket
import struct
import sys
import time
import pickle

import uvloop

from fastpath.downstream import ListenerContext
from fastpath.inbound import inbound_protocol_factory
from fastpath.outbound import OutboundRouter, outbound_protocol_factory
from fastpath.parser import Limits
from fastpath.policy import compile_policy
from fastpath.stats import WorkerStats
from fastpath.trace_context import Tracer
from fastpath.upstream import EndpointPool
from sidecar.config.model import Config
from sidecar.control import Channel
from sidecar.logs import setup_logging
from sidecar.telemetry import response_flags

log = logging.getLogger("sidecar.worker")

SWEEP_INTERVAL = 0.25       # seconds between timeout sweeps (the coarse clock's resolution)
DRAIN_FLUSH_MARGIN = 1.5    # seconds past drain_timeout a draining worker may spend sending spans
KEY_FILE_CHECK_INTERVAL = 1.0   # seconds between checks of JWKS / API key files for changes
PR_SET_PDEATHSIG = 1
# fastpath/stats.pxd StatsMetric
M_ACCESS_LOG_DROPPED, M_SPANS_DROPPED, M_SPANS_EXPORTED, M_SPANS_FAILED = 6, 7, 8, 9


# The other address family's counterpart of a listen address: where interception sends
# that family's connections (eBPF connect6 and ip6tables REDIRECT to [::1] for outbound;
# inbound IPv6 arrives on [::]).
COMPANION = {"127.0.0.1": "::1", "::1": "127.0.0.1", "0.0.0.0": "::", "::": "0.0.0.0"}


def listen_addresses(cfg: Config, address) -> list:
    """The addresses one configured listener binds: the address itself and, when traffic
    is intercepted, its other-family counterpart (so IPv6 is intercepted too)."""
    out = [tuple(address)]
    if cfg.interception.mode != "off" and address[0] in COMPANION:
        out.append((COMPANION[address[0]], address[1]))
    return out


# Connections waiting to be accepted, per listener (Envoy's default too). A burst of new
# connections (a client pool filling up, every pod of a deployment reconnecting) beyond it
# overflows the accept queue: the SYN is dropped and retransmitted a second later.
LISTEN_BACKLOG = 1024


def listening_socket(address, backlog=LISTEN_BACKLOG, v6only=False):
    """A non-blocking TCP listener on `address` shared with the other workers."""
    host, port = address
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    if family == socket.AF_INET6 and v6only:
        # [::] next to a 0.0.0.0 listener: a dual-stack [::] would take the IPv4 port
        sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    sock.bind((host, port))
    sock.listen(backlog)
    sock.setblocking(False)
    return sock


def route_names(cfg: Config, direction: str) -> list:
    """Names of the routes of one direction, in the order their indices count
    (ExchangeRecord.route: the index among the routes of its direction, config order)."""
    return [r.name for r in cfg.routes if r.direction == direction]


class Snapshot:
    """Everything a config turns into in a worker, built before anything is swapped."""

    def __init__(self, worker, cfg: Config, labels: dict):
        lim = cfg.limits
        self.cfg = cfg
        self.limits = Limits(lim.max_request_line, lim.max_header_bytes, lim.max_headers)
        old = worker.snapshot
        app_key = (cfg.inbound.app, lim.max_request_line, lim.max_header_bytes, lim.max_headers,
                   lim.upstream_idle_timeout, lim.connect_timeout)
        if old is not None and old.app_key == app_key:
            self.app_pool = old.app_pool      # same app, same limits: keep its warm connections
        else:
            app_host, app_port = cfg.inbound.app
            self.app_pool = EndpointPool(worker.loop, app_host, app_port, self.limits,
                                         1024, 1024, lim.upstream_idle_timeout, lim.connect_timeout)
        self.app_key = app_key
        seed = os.environ.get("SIDECAR_POLICY_SEED")     # fixed random draws, for tests
        seed = int(seed) + worker.index if seed else None
        routes = labels.get("routes", {})
        services = labels.get("services", {})
        self.route_ids = [[routes.get(n, 0) for n in route_names(cfg, d)] for d in ("inbound", "outbound")]
        self.service_ids = [services.get(s.name, 0) for s in cfg.services]
        # Each service's endpoint state and circuit breaker carry over from the running
        # config's router; its limits and health checks move here in `activate`.
        self.router = OutboundRouter(worker.loop, self.limits, cfg.services,
                                     lim.connect_timeout, lim.upstream_idle_timeout,
                                     previous=old.router if old is not None else None,
                                     workers=cfg.workers, stats=worker.stats,
                                     service_ids=self.service_ids, seed=seed)
        self.policy = compile_policy(cfg, self.router, old.policy if old is not None else None, seed)
        self.names = (route_names(cfg, "inbound"), route_names(cfg, "outbound"),
                      [s.name for s in cfg.services])
        log_cfg = cfg.telemetry.access_log
        self.access_log_key = (log_cfg.path, log_cfg.format)
        if old is not None and old.access_log_key == self.access_log_key:
            self.access_log = old.access_log
        elif log_cfg.path:
            from sidecar.telemetry.access_log import AccessLog
            self.access_log = AccessLog(log_cfg.path, log_cfg.format, on_drop=worker.count_dropped_line)
        else:
            self.access_log = None
        self.span_exporter_key, self.span_exporter = _span_exporter(worker, cfg, old)


def _span_exporter(worker, cfg: Config, old):
    """(key, exporter) of the snapshot: the old one's exporter when the endpoint and the
    resource are the same, a new one for a new endpoint, None without one."""
    tracing = cfg.telemetry.tracing
    key = (tracing.otlp_endpoint, cfg.workload.name, cfg.workload.namespace)
    if old is not None and old.span_exporter_key == key:
        return key, old.span_exporter
    if not tracing.otlp_endpoint:
        return key, None
    from sidecar.telemetry.span_exporter import SpanExporter
    return key, SpanExporter(tracing.otlp_endpoint, resource_attributes(cfg, worker.index),
                             on_dropped=worker.count_spans_dropped,
                             on_exported=worker.count_spans_exported,
                             on_failed=worker.count_spans_failed)


def resource_attributes(cfg: Config, worker_index: int) -> list:
    """The OTLP resource of this worker's spans: the workload, as a service."""
    return [
        ("service.name", cfg.workload.name),
        ("service.namespace", cfg.workload.namespace),
        ("service.instance.id", "%s/%d" % (socket.gethostname(), worker_index)),
        ("host.name", socket.gethostname()),
        ("telemetry.sdk.name", "bpf-sidecar"),
        ("telemetry.sdk.language", "python"),
    ]


class Worker:
    """The listeners of one worker process and their shared state."""

    def __init__(self, cfg: Config, index: int, stats: WorkerStats = None, labels=None,
                 generation: int = 0):
        self.index = index
        self.loop = asyncio.get_running_loop()
        self.stats = stats
        self.snapshot = None
        self.generation = 0
        self.retired_pools = []       # pools of replaced snapshots, closed once idle
        self.next_file_check = 0.0
        self.inbound = ListenerContext(self.loop, "inbound", Limits(8192, 65536, 100))
        self.outbound = ListenerContext(self.loop, "outbound", Limits(8192, 65536, 100))
        self.inbound.sweep_interval = self.outbound.sweep_interval = SWEEP_INTERVAL
        self.tracer = Tracer()
        self.tracer.flags_text = response_flags
        self.servers = []
        self.listen = None
        self.splicer = None           # fastpath.splice.Splicer when tunnels are spliced
        self.stopping = asyncio.Event()
        self.apply_config(cfg, labels or {}, generation)

    @property
    def cfg(self) -> Config:
        return self.snapshot.cfg

    def apply_config(self, cfg: Config, labels: dict = None, generation: int = 0) -> float:
        """The one place a new config takes effect in a running worker.

        Everything is built first (an error raises and leaves the running config as it
        was), then swapped in at once, between two events of the loop: exchanges that
        start afterwards see only the new config, those in flight finish with the old.
        Returns the seconds it took."""
        started = time.monotonic()
        listen = (cfg.inbound.listen, cfg.outbound.listen)
        if self.listen is not None and listen != self.listen:
            raise ValueError("listen addresses changed: needs new workers")
        snapshot = Snapshot(self, cfg, labels or {})
        # -- swap (nothing below may fail) --
        old, self.snapshot = self.snapshot, snapshot
        lim = cfg.limits
        self.inbound.configure(snapshot.limits, app_pool=snapshot.app_pool,
                               header_read_timeout=lim.header_read_timeout,
                               idle_timeout=lim.idle_timeout,
                               routes=snapshot.policy.inbound)
        self.outbound.configure(snapshot.limits, router=snapshot.router,
                                header_read_timeout=lim.header_read_timeout,
                                idle_timeout=lim.idle_timeout,
                                request_timeout=lim.request_timeout,
                                routes=snapshot.policy.outbound)
        applied_at = time.monotonic()
        if self.stats is not None:
            self.stats.set_labels(snapshot.route_ids[0], snapshot.route_ids[1],
                                  snapshot.service_ids, applied_at, generation)
        snapshot.router.activate(old.router if old is not None else None, applied_at)
        if snapshot.access_log is not None:
            snapshot.access_log.formatter.set_names(*snapshot.names, applied_at)
        tracing = cfg.telemetry.tracing
        self.tracer.configure(tracing.propagate, tracing.sample)
        self.tracer.set_names(*snapshot.names, applied_at)
        self.tracer.exporter = snapshot.span_exporter
        self.inbound.attach_telemetry(self.stats, snapshot.access_log, self.tracer)
        self.outbound.attach_telemetry(self.stats, snapshot.access_log, self.tracer)
        logging.getLogger().setLevel(getattr(logging, cfg.log_level.upper(), logging.INFO))
        self.generation = generation
        if old is not None:
            if old.app_pool is not snapshot.app_pool:
                self.retired_pools.append(old.app_pool)
            self.retired_pools.extend(old.router.pools.values())
            if old.access_log is not None and old.access_log is not snapshot.access_log:
                old.access_log.close()
            if old.span_exporter is not None and old.span_exporter is not snapshot.span_exporter:
                old.span_exporter.close(wait=False)     # sends what it has, on its own thread
        return time.monotonic() - started

    def count_dropped_line(self):
        if self.stats is not None:
            self.stats.add(M_ACCESS_LOG_DROPPED, 0, 0, 1)

    # Called by the span exporter (its thread, or the loop for drops), holding the GIL like
    # every writer of the segment.
    def count_spans_dropped(self, n):
        if self.stats is not None:
            self.stats.add(M_SPANS_DROPPED, 0, 0, n)

    def count_spans_exported(self, n):
        if self.stats is not None:
            self.stats.add(M_SPANS_EXPORTED, 0, 0, n)

    def count_spans_failed(self, n):
        if self.stats is not None:
            self.stats.add(M_SPANS_FAILED, 0, 0, n)

    def _inbound_factory(self):
        cfg = self.snapshot.cfg
        return inbound_protocol_factory(self.inbound, cfg.inbound.tcp_passthrough_ports,
                                        cfg.inbound.app[0])()

    def _outbound_factory(self):
        return outbound_protocol_factory(self.outbound,
                                         self.snapshot.cfg.outbound.protocol_detect_timeout)()

    async def start(self):
        cfg = self.snapshot.cfg
        self.listen = (cfg.inbound.listen, cfg.outbound.listen)
        for configured, factory in ((cfg.inbound.listen, self._inbound_factory),
                                    (cfg.outbound.listen, self._outbound_factory)):
            addresses = listen_addresses(cfg, configured)
            for address in addresses:
                try:
                    sock = listening_socket(address, v6only=len(addresses) > 1)
                except OSError as e:
                    if address == tuple(configured):
                        raise
                    # e.g. IPv6 disabled in the pod: that family is not intercepted
                    log.warning("worker %d: cannot listen on %s port %d (%s): its address "
                                "family is not intercepted", self.index, address[0], address[1],
                                e.strerror or e)
                    continue
                # create_server listens again, with its own default backlog (100) unless told
                server = await self.loop.create_server(factory, sock=sock, backlog=LISTEN_BACKLOG)
                self.servers.append(server)
        self.loop.call_later(SWEEP_INTERVAL, self._sweep)
        self._start_splicer(cfg)
        log.info("worker %d: inbound %s:%d -> %s:%d, outbound %s:%d", self.index,
                 *cfg.inbound.listen, *cfg.inbound.app, *cfg.outbound.listen)

    def _start_splicer(self, cfg: Config):
        """Tunnels are spliced in the kernel where this config loads the splice programs
        (fastpath.splice; the maps appear once the manager's loader has run)."""
        from sidecar.bpf.programs import splices_tunnels
        if not splices_tunnels(cfg):
            return
        from fastpath.splice import Splicer
        from fastpath.tunnel import set_splicer
        from sidecar.bpf.state import default_instance, instance_dir, maps_dir
        self.splicer = Splicer(self.loop, maps_dir(instance_dir(default_instance(cfg))))
        set_splicer(self.splicer)

    def _sweep(self):
        self.inbound.sweep_timeouts()
        self.outbound.sweep_timeouts()
        now = self.loop.time()
        if now >= self.next_file_check:
            self.next_file_check = now + KEY_FILE_CHECK_INTERVAL
            self.snapshot.policy.check_files()
        self.snapshot.app_pool.close_idle(now)
        self.snapshot.router.close_idle(now)
        self.snapshot.router.tick(time.monotonic())
        if self.retired_pools:
            for pool in self.retired_pools:
                pool.close_idle(now, True)
            self.retired_pools = [p for p in self.retired_pools if p.open_connections]
        if not self.stopping.is_set():
            self.loop.call_later(SWEEP_INTERVAL, self._sweep)

    async def drain(self):
        """Stops accepting, then waits for in-flight connections for `drain_timeout`."""
        for server in self.servers:
            server.close()
        self.inbound.drain()
        self.outbound.drain()
        started = self.loop.time()
        deadline = started + self.cfg.drain_timeout
        while self.loop.time() < deadline:
            if not self.inbound.active_connections and not self.outbound.active_connections:
                break
            self.inbound.sweep_timeouts()
            self.outbound.sweep_timeouts()
            await asyncio.sleep(0.05)
        self.snapshot.router.stop_health_checks()
        left = self.inbound.active_connections + self.outbound.active_connections
        if left:
            log.warning("worker %d: drain timeout, closing %d connections", self.index, left)
        if self.snapshot.access_log is not None:
            self.snapshot.access_log.close()
        if self.snapshot.span_exporter is not None:
            # The manager kills a worker drain_timeout + 2 s after SIGTERM: flush before then.
            budget = started + self.cfg.drain_timeout + DRAIN_FLUSH_MARGIN - self.loop.time()
            await self.loop.run_in_executor(
                None, self.snapshot.span_exporter.close, min(5.0, max(0.2, budget)))
        self.stopping.set()


class ControlHandler:
    """Answers the manager's messages on the control channel."""

    def __init__(self, worker: Worker, sock: socket.socket):
        self.worker = worker
        self.channel = Channel(worker.loop, sock, self.on_message, self.on_closed)

    def on_message(self, message):
        op = message.get("op")
        if op == "apply":
            generation = message["generation"]
            try:
                took = self.worker.apply_config(message["config"], message.get("labels"), generation)
                reply = {"op": "applied", "generation": generation, "ok": True, "seconds": took}
            except Exception as e:          # any failure refuses this config, whole
                log.error("worker %d: config generation %d refused: %s", self.worker.index,
                          generation, e)
                reply = {"op": "applied", "generation": generation, "ok": False,
                         "error": "%s: %s" % (type(e).__name__, e)}
            self.worker.loop.create_task(self.channel.send(reply))
        elif op == "log_level":
            logging.getLogger().setLevel(getattr(logging, message["level"].upper(), logging.INFO))

    def on_closed(self):
        # The manager is gone (PDEATHSIG covers a kill; this covers a closed channel).
        os.kill(os.getpid(), signal.SIGTERM)


def read_first_message(sock: socket.socket) -> dict:
    """The manager's first "apply", read before the event loop exists."""
    def read_exactly(n):
        data = b""
        while len(data) < n:
            chunk = sock.recv(n - len(data))
            if not chunk:
                raise EOFError("control channel closed before the config arrived")
            data += chunk
        return data
    (size,) = struct.unpack(">I", read_exactly(4))
    return pickle.loads(read_exactly(size))


async def serve(first: dict, index: int, control: socket.socket, stats: WorkerStats):
    worker = Worker(first["config"], index, stats, first.get("labels"), first["generation"])
    handler = ControlHandler(worker, control)
    await worker.start()
    await handler.channel.send({"op": "ready", "generation": worker.generation, "pid": os.getpid()})
    drained = asyncio.Event()

    async def on_term():
        await worker.drain()
        drained.set()

    for sig in (signal.SIGTERM, signal.SIGINT):
        worker.loop.add_signal_handler(sig, lambda: worker.loop.create_task(on_term()))
    await drained.wait()


def main():
    parser = argparse.ArgumentParser(prog="sidecar.worker")
    parser.add_argument("--index", type=int, default=0)
    parser.add_argument("--control-fd", type=int, required=True)
    parser.add_argument("--stats-fd", type=int)
    parser.add_argument("--manager-pid", type=int, help="the manager that started this worker")
    args = parser.parse_args()
    # Die with the manager, even after a kill -9 of it.
    try:
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
    except OSError:
        pass
    # The manager died before PDEATHSIG was set: this process was reparented. Compared with
    # the manager's pid rather than with 1, since in a container the manager is pid 1.
    reparented = os.getppid() != args.manager_pid if args.manager_pid else os.getppid() == 1
    if reparented:
        sys.exit(0)
    control = socket.socket(fileno=args.control_fd)
    first = read_first_message(control)
    setup_logging(first["config"].log_level)
    stats = None
    # SIDECAR_STATS=off: no shared-memory counting, only to measure what it costs.
    if args.stats_fd is not None and os.environ.get("SIDECAR_STATS") != "off":
        size = os.fstat(args.stats_fd).st_size
        stats = WorkerStats(mmap.mmap(args.stats_fd, size))
        os.close(args.stats_fd)
    uvloop.run(serve(first, args.index, control, stats))


if __name__ == "__main__":
    main()
