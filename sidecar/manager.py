"""The manager process (`sidecar run`): starts the workers, keeps them running, reloads the
config, serves the admin API, /metrics and the health probe.

It runs one asyncio loop; the three HTTP servers run on their own threads and hand state
changes to the loop (`call`). Each worker is spawned with a control channel
(sidecar.control) and a shared-memory stats segment (sidecar.metrics.segments).

Supervision: a worker that exits unexpectedly is restarted after a backoff that doubles
with each crash in the last minute (0.5 s up to 30 s). Five or more crashes within a
minute is a crash loop: it is logged as an error on every restart, never hidden, and
`crash_loop` is set for the status surfaces.

Signals: SIGTERM/SIGINT (and POST /quitquitquit) drain the workers (they stop accepting
and finish in-flight requests for `drain_timeout`), then exit 0; /readyz answers 503 from
the first moment. SIGHUP (and POST /reload, and a change of the config file, including
Kubernetes' ConfigMap `..data` symlink swap) reloads: see sidecar.reload.
"""
import asyncio
import logging
import os
import signal
import subprocess
import sys
import threading
import time
from collections import deque

from sidecar import control
from sidecar.config import ConfigError, load_config
from sidecar.config.model import Config
from sidecar.metrics.labels import LabelIds
from sidecar.metrics.segments import RetiredTotals, Segment
from sidecar.metrics.worker_stats import GAUGE_METRICS, WorkerStatsSource
from sidecar.reload import plan

log = logging.getLogger("sidecar.manager")

VERSION = "0.1.0"
CRASH_WINDOW = 60.0
CRASH_LOOP_THRESHOLD = 5
MAX_BACKOFF = 30.0
SUPERVISE_INTERVAL = 0.1
APPLY_TIMEOUT = 10.0        # a running worker answers an "apply" within this
READY_TIMEOUT = 60.0        # a new worker reports ready within this, or the reload is refused
CONFIG_POLL_INTERVAL = 1.0  # the config file watch (mtime, inode, and the ..data link target)
CONFIG_SETTLE = 0.2         # a changed file must be unchanged this long before it is read


class WorkerProcess:
    """One worker process (one slot of `workers: N`, or one of a set being replaced)."""

    def __init__(self, manager, index: int):
        self.manager = manager
        self.index = index
        self.proc = None
        self.channel = None
        self.segment = None
        self.ready = False
        self.ready_future = None
        self.generation = 0
        self.pending = {}               # generation -> Future of the worker's "applied"
        self.crashes = deque()          # times of recent unexpected exits
        self.restart_at = 0.0
        self.expected_exit = False      # SIGTERMed by us: an exit is not a crash

    def start(self, cfg: Config, generation: int, labels: dict):
        """Spawns the process; its config goes first on the control channel."""
        loop = asyncio.get_running_loop()
        manager_end, worker_end = control.socketpair()
        segment = Segment()
        try:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "sidecar.worker", "--index", str(self.index),
                 "--control-fd", str(worker_end.fileno()), "--stats-fd", str(segment.fd),
                 "--manager-pid", str(os.getpid())],
                pass_fds=(worker_end.fileno(), segment.fd))
        finally:
            worker_end.close()
            segment.close_fd()
        self.segment = segment
        self.ready = False
        self.expected_exit = False
        self.ready_future = loop.create_future()
        self.generation = generation
        self.channel = control.Channel(loop, manager_end, self._on_message, self.manager.poke)
        first = self.channel.send({"op": "apply", "generation": generation, "config": cfg,
                                   "labels": labels})
        loop.create_task(_quietly(first))
        log.info("worker %d started (pid %d)", self.index, self.proc.pid)

    def apply(self, cfg: Config, generation: int, labels: dict):
        """Sends a config; returns a Future of the worker's "applied" answer."""
        fut = asyncio.get_running_loop().create_future()
        self.pending[generation] = fut

        async def send():
            try:
                await self.channel.send({"op": "apply", "generation": generation, "config": cfg,
                                         "labels": labels})
            except (ConnectionError, OSError) as e:
                if not fut.done():
                    fut.set_exception(ConnectionError("worker %d: %s" % (self.index, e)))
        asyncio.get_running_loop().create_task(send())
        return fut

    def _on_message(self, message):
        op = message.get("op")
        if op == "ready":
            self.ready = True
            self.generation = message["generation"]
            if not self.ready_future.done():
                self.ready_future.set_result(True)
            self.manager.on_worker_ready(self)
        elif op == "applied":
            fut = self.pending.pop(message["generation"], None)
            if message.get("ok"):
                self.generation = message["generation"]
            if fut is not None and not fut.done():
                fut.set_result(message)

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def terminate(self):
        """SIGTERM: the worker drains and exits; not a crash."""
        self.expected_exit = True
        if self.alive():
            self.proc.send_signal(signal.SIGTERM)

    def exited(self):
        """Cleans up after the process ended; returns its exit code."""
        code = self.proc.returncode
        if self.channel is not None:
            self.channel.close()
        for fut in self.pending.values():
            if not fut.done():
                fut.set_exception(ConnectionError("worker %d exited" % self.index))
        self.pending.clear()
        if self.ready_future is not None and not self.ready_future.done():
            self.ready_future.set_exception(ConnectionError("worker %d exited with %s" % (self.index, code)))
            self.ready_future.exception()      # retrieved: nobody may be waiting for it
        self.manager.retire_segment(self)
        self.proc = None
        self.ready = False
        return code

    def backoff(self, now: float) -> float:
        while self.crashes and now - self.crashes[0] > CRASH_WINDOW:
            self.crashes.popleft()
        return min(MAX_BACKOFF, 0.5 * 2 ** max(0, len(self.crashes) - 1))


class Manager:
    def __init__(self, cfg: Config, config_path: str = None):
        self.cfg = cfg
        self.config_path = config_path
        self.version = VERSION
        self.workers = [WorkerProcess(self, i) for i in range(cfg.workers)]
        self.retiring = []              # workers draining after a replacement
        self.labels = LabelIds()
        self.generation = 0
        self._last_generation = 0
        self.applied_at = None
        self.reload_counts = {"applied": 0, "refused": 0}
        self.restarts = 0
        self.crash_loop = False
        self.draining = False
        self.started = False
        self.log_level = cfg.log_level
        self.stats_lock = threading.Lock()
        self.retired = RetiredTotals()
        # Filled by the interception of interception.mode (sidecar.interception): readiness
        # of the kernel state (a callable -> (ok, text)), its metrics collectors, its
        # ConfigHook; further kernel modules add theirs.
        self.kernel_readiness = None
        self.kernel_collectors = []
        self.config_hooks = []
        self.interception = None
        self.loop = None
        self._stop = None
        self._wake = None
        self._reload_lock = None
        self.servers = []
        self._file_seen = config_fingerprint(config_path) if config_path else None

    # -- running ------------------------------------------------------------------------

    def run(self) -> int:
        return asyncio.run(self._main())

    async def _main(self) -> int:
        self.loop = asyncio.get_running_loop()
        self._stop = asyncio.Event()
        self._wake = asyncio.Event()
        self._reload_lock = asyncio.Lock()
        for sig in (signal.SIGTERM, signal.SIGINT):
            self.loop.add_signal_handler(sig, self.request_stop)
        self.loop.add_signal_handler(signal.SIGHUP, lambda: self.loop.create_task(self.reload()))
        from sidecar.interception import for_config
        self.interception = for_config(self.cfg)
        self.interception.register(self)
        await self.interception.prepare()
        try:
            self._start_servers()
        except OSError as e:
            log.error("cannot start: %s", e)
            return 1
        self.generation = self._next_generation()
        labels = self.labels.assign(self.cfg)
        for w in self.workers:
            w.start(self.cfg, self.generation, labels)
        self.applied_at = time.time()
        self.started = True
        # The kernel side is set up while the workers start (the loader takes a second or
        # two); /readyz waits for both. A refusal stops everything again.
        refused = await self.interception.start()
        if refused is not None:
            self.draining = True
            await self._stop_all(self.workers)
            for server in self.servers:
                server.stop()
            log.error("cannot start: %s", self.interception.reason)
            return refused
        log.info("sidecar %s/%s running with %d worker(s)", self.cfg.workload.namespace,
                 self.cfg.workload.name, len(self.workers))
        watch = self.loop.create_task(self._watch_config_file())
        while not self._stop.is_set():
            self._supervise(time.monotonic())
            self._wake.clear()
            try:
                await asyncio.wait_for(self._wake.wait(), SUPERVISE_INTERVAL)
            except asyncio.TimeoutError:
                pass
        watch.cancel()
        self.draining = True
        await self._stop_all(self.workers + self.retiring)
        self.interception.stop()
        for server in self.servers:
            server.stop()
        log.info("sidecar stopped")
        return 0

    def _start_servers(self):
        from sidecar.admin import admin_routes, health_routes
        from sidecar.httpd import HttpServer
        from sidecar.metrics.registry import build_registry
        from sidecar.metrics.server import metrics_routes
        t = self.cfg.telemetry
        for name, address, routes in (("admin", self.cfg.admin.listen, admin_routes(self)),
                                      ("metrics", t.metrics_listen, metrics_routes(build_registry(self))),
                                      ("health", t.health_listen, health_routes(self))):
            try:
                self.servers.append(HttpServer(name, address, routes).start())
            except OSError as e:
                for server in self.servers:
                    server.stop()
                raise OSError("%s listener %s:%d: %s" % (name, address[0], address[1], e.strerror or e))

    def request_stop(self):
        self._stop.set()
        self._wake.set()

    def poke(self):
        """Something changed (a control channel closed): supervise now."""
        if self._wake is not None:
            self._wake.set()

    def call(self, coro, timeout=30.0):
        """Runs `coro` on the manager's loop from another thread; returns its result."""
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def call_soon(self, fn):
        self.loop.call_soon_threadsafe(fn)

    def _next_generation(self) -> int:
        self._last_generation += 1
        return self._last_generation

    # -- supervision --------------------------------------------------------------------

    def _supervise(self, now: float):
        for w in list(self.retiring):
            if w.proc is None or w.proc.poll() is not None:
                if w.proc is not None:
                    w.exited()
                self.retiring.remove(w)
        for w in self.workers:
            if w.proc is not None:
                if w.proc.poll() is None:
                    continue
                code = w.exited()
                if w.expected_exit:
                    continue
                w.crashes.append(now)
                delay = w.backoff(now)
                w.restart_at = now + delay
                self.crash_loop = len(w.crashes) >= CRASH_LOOP_THRESHOLD
                level = logging.ERROR if self.crash_loop else logging.WARNING
                log.log(level, "worker %d exited with %s; restarting in %.1fs%s", w.index,
                        code, delay,
                        " (crash loop: %d exits in %ds)" % (len(w.crashes), CRASH_WINDOW)
                        if self.crash_loop else "")
            elif not w.expected_exit and not self.draining and now >= w.restart_at:
                self.restarts += 1
                w.start(self.cfg, self.generation, self.labels.assign(self.cfg))

    def on_worker_ready(self, w: WorkerProcess):
        if w in self.workers and w.generation != self.generation and not self._reload_lock.locked():
            # Started before a reload committed: bring it to the running config.
            w.apply(self.cfg, self.generation, self.labels.assign(self.cfg))

    def retire_segment(self, w: WorkerProcess):
        """Folds an exited worker's counters into the retired totals, once."""
        if w.segment is None:
            return
        with self.stats_lock:
            self.retired.add(w.segment.read(), GAUGE_METRICS)
            w.segment.map.close()
            w.segment = None

    def worker_states(self) -> dict:
        states = {"ready": 0, "starting": 0, "down": 0, "draining": len(self.retiring)}
        for w in self.workers:
            states["ready" if w.ready else "starting" if w.alive() else "down"] += 1
        return states

    # -- reload -------------------------------------------------------------------------

    async def reload(self, only_if_changed=False) -> dict:
        """Reloads the config file; returns {"ok", "generation", "seconds", "error"}.
        `only_if_changed` (the file watch): nothing to do, and None, when the file is the
        one the last reload read (a SIGHUP or POST /reload may have read it meanwhile)."""
        async with self._reload_lock:
            started = time.monotonic()
            seen = config_fingerprint(self.config_path)
            if only_if_changed:
                if seen == self._file_seen:
                    return None
                log.info("config file changed: reloading")
            self._file_seen = seen
            try:
                cfg = load_config(self.config_path)
            except ConfigError as e:
                return self._refused(started, str(e))
            parsed = time.monotonic()
            for warning in cfg.warnings:
                log.warning("%s", warning)
            try:
                for hook in self.config_hooks:
                    hook.check(cfg)
            except Exception as e:
                return self._refused(started, "%s: %s" % (getattr(hook, "name", "hook"), e))
            error = await self._apply(cfg)
            if error:
                return self._refused(started, error)
            now = time.monotonic()
            self.reload_counts["applied"] += 1
            log.info("reload applied (generation %d, %d worker(s), %.1f ms: %.1f reading the "
                     "file, %.1f applying)", self.generation, len(self.workers),
                     (now - started) * 1000, (parsed - started) * 1000, (now - parsed) * 1000)
            return {"ok": True, "generation": self.generation, "seconds": now - started,
                    "parse_seconds": parsed - started, "apply_seconds": now - parsed, "error": None}

    def _refused(self, started, error) -> dict:
        self.reload_counts["refused"] += 1
        log.error("reload refused, keeping the running config:\n%s", error)
        return {"ok": False, "generation": self.generation,
                "seconds": time.monotonic() - started, "error": error}

    async def _apply(self, cfg: Config):
        """Applies `cfg` to every worker and hook, or to none; returns an error or None."""
        p = plan(self.cfg, cfg)
        for note in p.notes:
            log.warning("reload: %s", note)
        labels = self.labels.assign(cfg)
        generation = self._next_generation()
        if p.replace_workers:
            return await self._replace_workers(cfg, generation, labels)
        old_cfg, old_generation = self.cfg, self.generation
        keep = self.workers[:cfg.workers]
        error = await self._apply_in_place(keep, cfg, generation, labels)
        if error:
            return error
        extra = []
        if p.add_workers:
            extra = [WorkerProcess(self, i) for i in range(len(self.workers), cfg.workers)]
            error = await self._start_and_wait(extra, cfg, generation, labels)
        if not error:
            error = self._apply_hooks(cfg)
        if error:
            self._terminate(extra)
            await self._apply_in_place(keep, old_cfg, self._next_generation(), self.labels.assign(old_cfg))
            self.generation = self._last_generation
            return error
        surplus = self.workers[cfg.workers:]
        self._terminate(surplus)
        self.workers = keep + extra
        self._commit(cfg, generation)
        self._catch_up()
        return None

    async def _apply_in_place(self, workers, cfg, generation, labels):
        # Workers still starting are included: their control channel holds the config
        # until they read it, so none comes up with the one being replaced.
        targets = [w for w in workers if w.alive()]
        futures = [w.apply(cfg, generation, labels) for w in targets]
        if not futures:
            return None
        done, pending = await asyncio.wait(futures, timeout=APPLY_TIMEOUT)
        errors = []
        for w, fut in zip(targets, futures):
            if fut in pending:
                fut.cancel()
                errors.append("worker %d did not answer in %.0fs" % (w.index, APPLY_TIMEOUT))
            elif fut.exception() is not None:
                continue        # the worker died: it restarts with the running config
            elif not fut.result().get("ok"):
                errors.append("worker %d: %s" % (w.index, fut.result().get("error")))
        if errors:
            # Whole or nothing: those that took it go back to the running config.
            took = [w for w, fut in zip(targets, futures)
                    if fut in done and fut.exception() is None and fut.result().get("ok")]
            if took and cfg is not self.cfg:
                back = self._next_generation()
                await asyncio.wait([w.apply(self.cfg, back, self.labels.assign(self.cfg)) for w in took],
                                   timeout=APPLY_TIMEOUT)
                self.generation = back
            return "; ".join(errors)
        return None

    async def _start_and_wait(self, workers, cfg, generation, labels):
        """Starts `workers` and waits until each reports ready; an error or None."""
        for w in workers:
            w.start(cfg, generation, labels)
        deadline = time.monotonic() + READY_TIMEOUT
        while time.monotonic() < deadline:
            for w in workers:
                if w.proc is not None and w.proc.poll() is not None:
                    code = w.exited()
                    self._terminate(workers)
                    return "new worker %d exited with %s before it was ready" % (w.index, code)
            if all(w.ready for w in workers):
                return None
            await asyncio.sleep(0.02)
        self._terminate(workers)
        return "new workers not ready within %.0fs" % READY_TIMEOUT

    async def _replace_workers(self, cfg, generation, labels):
        new = [WorkerProcess(self, i) for i in range(cfg.workers)]
        error = await self._start_and_wait(new, cfg, generation, labels) or self._apply_hooks(cfg)
        if error:
            self._terminate(new)
            return error
        old, self.workers = self.workers, new
        self._terminate(old)
        self._commit(cfg, generation)
        return None

    def _catch_up(self):
        """Workers (re)started while the config was being applied got the one of the
        moment they were spawned: they get the committed one now."""
        labels = None
        for w in self.workers:
            if w.alive() and w.generation != self.generation:
                labels = labels or self.labels.assign(self.cfg)
                fut = w.apply(self.cfg, self.generation, labels)
                fut.add_done_callback(lambda f: f.cancelled() or f.exception())

    def _apply_hooks(self, cfg):
        for hook in self.config_hooks:
            try:
                hook.apply(cfg)
            except Exception as e:
                return "%s: %s" % (getattr(hook, "name", "hook"), e)
        return None

    def _terminate(self, workers):
        for w in workers:
            if w.proc is not None:
                w.terminate()
                self.retiring.append(w)

    def _commit(self, cfg, generation):
        self.cfg = cfg
        self.generation = generation
        self.applied_at = time.time()
        self.log_level = cfg.log_level
        logging.getLogger().setLevel(getattr(logging, cfg.log_level.upper(), logging.INFO))

    async def _watch_config_file(self):
        """Reloads when the config file changes (see config_fingerprint); a change that a
        SIGHUP or POST /reload already read is not reloaded twice."""
        if not self.config_path:
            return
        while True:
            await asyncio.sleep(CONFIG_POLL_INTERVAL)
            now = config_fingerprint(self.config_path)
            if now is not None and now != self._file_seen:
                # A file written in place (not renamed over) may still be growing: wait
                # until it has stopped changing for one short interval.
                await asyncio.sleep(CONFIG_SETTLE)
                if config_fingerprint(self.config_path) != now:
                    continue
                await self.reload(only_if_changed=True)

    # -- drain, stop, log level ---------------------------------------------------------

    async def drain(self):
        """Stops accepting and lets in-flight requests finish; the manager stays up."""
        if not self.draining:
            log.info("draining: listeners close, in-flight requests finish")
        self.draining = True
        self._terminate(self.workers)

    async def _stop_all(self, workers):
        running = [w for w in workers if w.alive()]
        for w in running:
            w.terminate()
        deadline = time.monotonic() + self.cfg.drain_timeout + 2.0
        while time.monotonic() < deadline and any(w.proc.poll() is None for w in running):
            await asyncio.sleep(0.02)
        for w in running:
            if w.proc.poll() is None:
                log.warning("worker pid %d did not drain in time; killing it", w.proc.pid)
                w.proc.kill()
                w.proc.wait()
            w.exited()

    async def set_log_level(self, level: str):
        self.log_level = level
        logging.getLogger().setLevel(getattr(logging, level.upper()))
        for w in self.workers:
            if w.alive() and w.channel is not None and not w.channel.closed:
                try:
                    await w.channel.send({"op": "log_level", "level": level})
                except (ConnectionError, OSError):
                    pass
        log.warning("log level set to %s", level)

    # -- status surfaces ----------------------------------------------------------------

    def readiness(self):
        """(ready, {check: (ok, reason)}) for /readyz and the health probe."""
        loaded = self.started and self.generation > 0
        checks = {"config": (loaded, "generation %d" % self.generation if loaded else "no config loaded yet")}
        if self.draining or (self._stop is not None and self._stop.is_set()):
            checks["listeners"] = (False, "draining")
        else:
            want = self.cfg.workers
            ready = sum(1 for w in self.workers if w.ready and w.alive())
            checks["listeners"] = (ready == want, "%d of %d workers listening" % (ready, want))
        if self.kernel_readiness is not None:
            try:
                checks["kernel"] = self.kernel_readiness()
            except Exception as e:
                checks["kernel"] = (False, str(e))
        return all(ok for ok, _ in checks.values()), checks

    def segments_data(self) -> list:
        """Every live worker's segment as read now, plus the retired totals."""
        with self.stats_lock:
            data = [w.segment.read() for w in self.workers + self.retiring if w.segment is not None]
            data.append(self.retired.as_segment())
        return data

    def worker_stats_source(self) -> WorkerStatsSource:
        return WorkerStatsSource(
            self.segments_data, self.labels.route_names, self.labels.service_names,
            workload=lambda: (self.cfg.workload.name, self.cfg.workload.namespace),
            istio_compat=lambda: self.cfg.telemetry.istio_compat)

    def stats_snapshot(self) -> dict:
        from sidecar.metrics.summary import stats_summary
        return stats_summary(self)


def config_fingerprint(path):
    """What identifies the content of the config file without reading it: its inode,
    mtime and size, and, for a Kubernetes ConfigMap volume, the target of the `..data`
    symlink that the kubelet swaps atomically (the file itself is a symlink through it)."""
    try:
        st = os.stat(path)
        data = os.path.join(os.path.dirname(path), "..data")
        link = os.readlink(data) if os.path.islink(data) else None
        return (st.st_ino, st.st_mtime_ns, st.st_size, link)
    except OSError:
        return None


async def _quietly(coro):
    """Awaits a send whose failure the supervisor sees anyway (the worker exits)."""
    try:
        await coro
    except (ConnectionError, OSError):
        pass


def run(config_path: str) -> int:
    cfg = load_config(config_path)
    return Manager(cfg, config_path).run()
