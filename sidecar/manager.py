"""The manager process (`sidecar run`): starts the workers and keeps them running.

Supervision: a worker that exits unexpectedly is restarted after a backoff that doubles
with each crash in the last minute (0.5 s up to 30 s). Five or more crashes within a
minute is a crash loop: it is logged as an error on every restart, never hidden, and
`crash_loop` is set for the status surfaces.

Signals: SIGTERM/SIGINT drain the workers (they stop accepting and finish in-flight
requests for `drain_timeout`) and exit 0. SIGHUP reloads: the file is validated first; a
bad config is refused whole and the running workers keep serving; a good one starts a new
set of workers (SO_REUSEPORT lets both sets listen at once), then drains the old set, so no
connection is refused and none in flight is dropped.
"""
import logging
import os
import pickle
import signal
import subprocess
import sys
import time
from collections import deque

from sidecar.config import ConfigError, load_config
from sidecar.config.model import Config

log = logging.getLogger("sidecar.manager")

CRASH_WINDOW = 60.0
CRASH_LOOP_THRESHOLD = 5
MAX_BACKOFF = 30.0


class WorkerProcess:
    """One supervised worker slot."""

    def __init__(self, index: int):
        self.index = index
        self.proc = None
        self.crashes = deque()          # times of recent unexpected exits
        self.restart_at = 0.0

    def start(self, cfg: Config):
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "sidecar.worker", "--index", str(self.index)],
            stdin=subprocess.PIPE)
        self.proc.stdin.write(pickle.dumps(cfg))
        self.proc.stdin.close()
        log.info("worker %d started (pid %d)", self.index, self.proc.pid)

    def backoff(self, now: float) -> float:
        while self.crashes and now - self.crashes[0] > CRASH_WINDOW:
            self.crashes.popleft()
        return min(MAX_BACKOFF, 0.5 * 2 ** max(0, len(self.crashes) - 1))


class Manager:
    def __init__(self, cfg: Config, config_path: str = None):
        self.cfg = cfg
        self.config_path = config_path
        self.workers = [WorkerProcess(i) for i in range(cfg.workers)]
        self.stop_requested = False
        self.reload_requested = False
        self.crash_loop = False

    def run(self) -> int:
        signal.signal(signal.SIGTERM, self._on_stop)
        signal.signal(signal.SIGINT, self._on_stop)
        signal.signal(signal.SIGHUP, self._on_reload)
        for w in self.workers:
            w.start(self.cfg)
        log.info("sidecar %s/%s running with %d worker(s)", self.cfg.workload.namespace,
                 self.cfg.workload.name, len(self.workers))
        while not self.stop_requested:
            if self.reload_requested:
                self.reload_requested = False
                self.reload()
            self._supervise(time.monotonic())
            time.sleep(0.1)
        self._stop_all(self.workers)
        log.info("sidecar stopped")
        return 0

    def _on_stop(self, signum, frame):
        self.stop_requested = True

    def _on_reload(self, signum, frame):
        self.reload_requested = True

    def _supervise(self, now: float):
        for w in self.workers:
            if w.proc is not None:
                code = w.proc.poll()
                if code is None:
                    continue
                w.proc = None
                w.crashes.append(now)
                delay = w.backoff(now)
                w.restart_at = now + delay
                self.crash_loop = len(w.crashes) >= CRASH_LOOP_THRESHOLD
                level = logging.ERROR if self.crash_loop else logging.WARNING
                log.log(level, "worker %d exited with %s; restarting in %.1fs%s", w.index,
                        code, delay,
                        " (crash loop: %d exits in %ds)" % (len(w.crashes), CRASH_WINDOW)
                        if self.crash_loop else "")
            elif now >= w.restart_at:
                w.start(self.cfg)

    def reload(self):
        """Validates the config file and, if good, replaces the workers without a gap."""
        try:
            cfg = load_config(self.config_path)
        except (ConfigError, OSError) as e:
            log.error("reload refused, keeping the running config:\n%s", e)
            return False
        if cfg.workers != len(self.workers) or cfg.inbound.listen != self.cfg.inbound.listen \
                or cfg.outbound.listen != self.cfg.outbound.listen:
            log.info("reload: listeners or worker count changed")
        old = self.workers
        self.cfg = cfg
        self.workers = [WorkerProcess(i) for i in range(cfg.workers)]
        for w in self.workers:
            w.start(cfg)
        time.sleep(0.2)        # let the new set bind before the old one stops accepting
        self._stop_all(old)
        log.info("reload applied")
        return True

    def _stop_all(self, workers):
        running = [w.proc for w in workers if w.proc is not None]
        for p in running:
            p.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + self.cfg.drain_timeout + 2.0
        for p in running:
            try:
                p.wait(max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                log.warning("worker pid %d did not drain in time; killing it", p.pid)
                p.kill()
                p.wait()


def run(config_path: str) -> int:
    cfg = load_config(config_path)
    return Manager(cfg, config_path).run()
