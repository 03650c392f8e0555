"""The sidecar's process lifecycle, driven with real signals against `sidecar run`:
SIGTERM drains (finish in-flight, refuse new, exit 0, bounded by drain_timeout), SIGHUP
reloads (a good config is applied in the running workers, or by new workers that take over
only once ready, without a failed request; a bad one is refused whole, with
`path (line N): reason`, while the running config keeps serving), and the workers never
outlive a manager killed with SIGKILL.
"""
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time

import pytest
import yaml

from tests.support.http_client import RawClient
from tests.support.servers import HttpApp
from tests.support.ports import free_port
from tests.support.sidecar_process import SidecarProcess

_SESSIONS = set()


def _state(pid):
    try:
        with open("/proc/%d/stat" % pid) as f:
            return f.read().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError):
        return None


def _alive(pid):
    """True while `pid` exists and is not a zombie waiting to be reaped."""
    return _state(pid) not in (None, "Z")


def _live_pids_in_sessions(sessions):
    if not sessions:
        return []
    out = subprocess.run(["pgrep", "-s", ",".join(map(str, sessions))],
                         capture_output=True, text=True)
    return [int(p) for p in out.stdout.split() if _alive(int(p))]


@pytest.fixture(scope="module", autouse=True)
def no_stray_processes():
    """After the module: no sidecar process of ours is left (`pgrep -f sidecar.worker`,
    restricted to this module's sessions so concurrent runs elsewhere do not count)."""
    yield
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline and _live_pids_in_sessions(_SESSIONS):
        time.sleep(0.1)
    workers = subprocess.run(["pgrep", "-f", "sidecar.worker"], capture_output=True, text=True)
    ours = [int(p) for p in workers.stdout.split()
            if _alive(int(p)) and _sid(int(p)) in _SESSIONS]
    stray = sorted(set(_live_pids_in_sessions(_SESSIONS)) | set(ours))
    for pid in stray:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    assert not stray, "sidecar processes left behind: %s" % stray


def _sid(pid):
    try:
        return os.getsid(pid)
    except ProcessLookupError:
        return None


def _start(app, workers=1, **extra):
    sc = SidecarProcess(app=app.address, workers=workers, extra=extra)
    try:
        sc.start()
    finally:
        if sc.proc is not None:
            _SESSIONS.add(sc.proc.pid)
    return sc


def _wait_for(predicate, timeout, what):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.02)
    raise AssertionError("timed out after %.1fs waiting for %s" % (timeout, what))


def _listening(port):
    """True when some socket of this netns listens on TCP `port`."""
    for name in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            with open(name) as f:
                for line in f.readlines()[1:]:
                    cols = line.split()
                    if int(cols[1].rsplit(":", 1)[1], 16) == port and cols[3] == "0A":
                        return True
        except FileNotFoundError:
            pass
    return False


def _all_listening(sc, pids):
    """Every worker in `pids` has its own listener on the inbound port."""
    inodes = set()
    for name in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            with open(name) as f:
                for line in f.readlines()[1:]:
                    cols = line.split()
                    if int(cols[1].rsplit(":", 1)[1], 16) == sc.inbound[1] and cols[3] == "0A":
                        inodes.add("socket:[%s]" % cols[9])
        except FileNotFoundError:
            pass
    for pid in pids:
        try:
            fds = [os.readlink("/proc/%d/fd/%s" % (pid, fd)) for fd in os.listdir("/proc/%d/fd" % pid)]
        except OSError:
            return False
        if not inodes & set(fds):
            return False
    return True


def _started_workers(sc, n):
    pids = _wait_for(lambda: len(sc.worker_pids()) == n and sc.worker_pids(), 10, "%d workers" % n)
    _wait_for(lambda: _all_listening(sc, pids), 10, "every worker to listen")
    return sorted(pids)


def _get(address, path, timeout=5):
    with RawClient(address, timeout=timeout) as c:
        c.send(b"GET %s HTTP/1.1\r\nHost: lifecycle.test\r\nConnection: close\r\n\r\n" % path.encode())
        return c.read_response()


class InFlight(threading.Thread):
    """One request through the sidecar in a thread; `.outcome` is (status, body) or the
    exception, `.ended` when it ended (monotonic)."""

    def __init__(self, address, path):
        super().__init__(daemon=True)
        self.address, self.path = address, path
        self.outcome = self.ended = None
        self.start()

    def run(self):
        try:
            status, _, body = _get(self.address, self.path, timeout=20)
            self.outcome = (status, body)
        except Exception as e:
            self.outcome = e
        self.ended = time.monotonic()


class ClientLoop:
    """`threads` clients making new connections back to back (one request each, no
    retries), recording every outcome with the app that answered."""

    def __init__(self, address, threads):
        self.address = address
        self.results = []          # (monotonic time, "ok" or what went wrong)
        self.stopping = threading.Event()
        self.threads = [threading.Thread(target=self._run, daemon=True) for _ in range(threads)]

    def _run(self):
        while not self.stopping.is_set():
            try:
                status, _, _ = _get(self.address, "/headers")
                outcome = "ok" if status == 200 else "status %d" % status
            except Exception as e:          # every failure counts, none is retried
                outcome = repr(e)
            self.results.append((time.monotonic(), outcome))

    def __enter__(self):
        for t in self.threads:
            t.start()
        return self

    def __exit__(self, *exc):
        self.stopping.set()
        for t in self.threads:
            t.join(10)

    def failures(self):
        return [r for r in self.results if r[1] != "ok"]


def _connect_outcome(address):
    try:
        socket.create_connection(address, timeout=1).close()
        return "accepted"
    except ConnectionRefusedError:
        return "refused"


# --- SIGTERM ------------------------------------------------------------------------------

def test_sigterm_completes_the_in_flight_request_refuses_new_connections_and_exits_0():
    drain_timeout = 2.0
    with HttpApp() as app:
        sc = _start(app, workers=2, drain_timeout="2s")
        try:
            pids = _started_workers(sc, 2)
            request = InFlight(sc.inbound, "/sleep/1.5")
            _wait_for(lambda: any(r["path"] == "/sleep/1.5" for r in app.requests), 5,
                      "the request to reach the app")
            signalled = time.monotonic()
            sc.signal(signal.SIGTERM)

            # New connections: refused shortly after the signal, and from then on.
            outcomes = []
            while sc.proc.poll() is None and time.monotonic() - signalled < drain_timeout + 3:
                outcomes.append((time.monotonic() - signalled, _connect_outcome(sc.inbound)))
                time.sleep(0.02)
            exited = time.monotonic() - signalled
            refused = [t for t, o in outcomes if o == "refused"]
            assert refused and refused[0] < 1.0, outcomes[:10]
            assert all(o == "refused" for t, o in outcomes if t >= refused[0]), outcomes

            # The manager exits 0 within drain_timeout (+ margin), after the request.
            assert sc.proc.returncode == 0, sc.log()
            assert exited < drain_timeout + 1.5, exited
            request.join(5)
            assert request.outcome == (200, b"slept\n"), request.outcome
            assert request.ended - signalled <= exited + 0.25

            # Nothing of the sidecar remains.
            assert not [p for p in pids + [sc.proc.pid] if _alive(p)]
            assert not _listening(sc.inbound[1]) and not _listening(sc.outbound[1])
            assert "sidecar stopped" in sc.log()
        finally:
            sc.stop()


def test_sigterm_when_idle_exits_0_within_2_seconds():
    with HttpApp() as app:
        sc = _start(app, workers=2)
        try:
            pids = _started_workers(sc, 2)
            assert _get(sc.inbound, "/headers")[0] == 200
            signalled = time.monotonic()
            sc.signal(signal.SIGTERM)
            code = sc.proc.wait(5)
            took = time.monotonic() - signalled
            assert code == 0, sc.log()
            assert took < 2.0, took
            assert not [p for p in pids if _alive(p)]
            assert not _listening(sc.inbound[1])
        finally:
            sc.stop()


def test_drain_timeout_bounds_the_drain_of_a_longer_request():
    with HttpApp() as app:
        sc = _start(app, workers=1, drain_timeout="1s")
        try:
            pids = _started_workers(sc, 1)
            request = InFlight(sc.inbound, "/sleep/10")
            _wait_for(lambda: any(r["path"] == "/sleep/10" for r in app.requests), 5,
                      "the request to reach the app")
            signalled = time.monotonic()
            sc.signal(signal.SIGTERM)
            code = sc.proc.wait(8)
            took = time.monotonic() - signalled
            assert code == 0, sc.log()
            # ~1 s of drain (not the 10 s the app takes), plus the process exits.
            assert 0.9 <= took < 2.5, took
            # The cut request ends with the sidecar (closed or reset, not a late answer).
            request.join(3)
            assert not request.is_alive()
            assert isinstance(request.outcome, (EOFError, ConnectionError)), request.outcome
            assert not [p for p in pids if _alive(p)]
        finally:
            sc.stop()


# --- SIGHUP -------------------------------------------------------------------------------

def _children(pid):
    """Pids whose parent is `pid` (read from /proc/*/stat; /proc/PID/task/TID/children is
    documented as unreliable while the process runs)."""
    out = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open("/proc/%s/stat" % entry) as f:
                    if int(f.read().rsplit(")", 1)[1].split()[1]) == pid:
                        out.append(int(entry))
            except (OSError, IndexError, ValueError):
                pass
    return out


def _is_worker(pid):
    try:
        with open("/proc/%d/cmdline" % pid, "rb") as f:
            return b"sidecar.worker" in f.read()
    except OSError:
        return False


class SlowWorkerStart:
    """Freezes the workers the manager starts next (SIGSTOP as soon as they appear, SIGCONT
    `hold` seconds later): what a new worker looks like to the manager on a loaded node or
    in a CPU-throttled pod, where starting Python, uvloop and fastpath takes longer than on
    an idle machine. The contract does not depend on how fast a worker starts."""

    def __init__(self, manager_pid, known, count, hold=0.6):
        self.manager_pid, self.known, self.count, self.hold = manager_pid, set(known), count, hold
        self.frozen = []

    def freeze_new_workers(self, timeout=5.0, hold=None):
        deadline = time.monotonic() + timeout
        while len(self.frozen) < self.count and time.monotonic() < deadline:
            for pid in _children(self.manager_pid):
                # Only once it runs the worker: stopped between fork and exec, it would
                # hold the manager in Popen (which waits for the exec).
                if pid not in self.known and pid not in self.frozen and _is_worker(pid):
                    os.kill(pid, signal.SIGSTOP)
                    self.frozen.append(pid)
            time.sleep(0.002)
        assert len(self.frozen) == self.count, "new workers not seen: %s" % self.frozen
        time.sleep(self.hold if hold is None else hold)
        if hold is None:
            self.thaw()

    def thaw(self):
        for pid in self.frozen:
            try:
                os.kill(pid, signal.SIGCONT)
            except ProcessLookupError:
                pass

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.thaw()


def test_sighup_reload_applies_a_new_app_in_the_running_workers():
    with HttpApp() as app, HttpApp() as new_app:
        sc = _start(app, workers=2)
        try:
            pids = _started_workers(sc, 2)
            assert _get(sc.inbound, "/headers")[0] == 200 and len(app.requests) == 1
            sc.config["inbound"]["app"] = "%s:%d" % new_app.address
            sc.write_config()
            sc.signal(signal.SIGHUP)
            _wait_for(lambda: "reload applied" in sc.log(), 15, "the reload")

            # Applied in place: the same workers, under the same manager, took the config.
            assert sorted(sc.worker_pids()) == pids
            assert sc.proc.poll() is None
            # Requests now reach the new app, and only it.
            for _ in range(10):
                assert _get(sc.inbound, "/headers")[0] == 200
            assert len(new_app.requests) == 10
            assert len(app.requests) == 1
            assert sc.stop() == 0
        finally:
            sc.stop()


def test_sighup_reload_fails_no_request_of_a_steady_client_loop_even_with_slow_new_workers():
    """A reload that adds a worker (and changes the app): the running workers take the new
    config at once; the added one, slow to start, serves only once it is ready."""
    with HttpApp() as app, HttpApp() as new_app:
        sc = _start(app, workers=2)
        try:
            old_pids = _started_workers(sc, 2)
            sc.config["inbound"]["app"] = "%s:%d" % new_app.address
            sc.config["workers"] = 3
            sc.write_config()
            with ClientLoop(sc.inbound, threads=3) as loop:
                time.sleep(0.3)
                with SlowWorkerStart(sc.proc.pid, old_pids, count=1) as slow:
                    sc.signal(signal.SIGHUP)
                    slow.freeze_new_workers()
                _wait_for(lambda: "reload applied" in sc.log(), 15, "the reload")
                new_pids = _started_workers(sc, 3)
                time.sleep(0.3)

            assert set(old_pids) < set(new_pids)
            assert len(loop.results) >= 20, "no steady traffic"
            assert new_app.requests, "the loop never reached the new app"
            failures = loop.failures()
            assert not failures, "%d of %d requests failed during the reload: %s" % (
                len(failures), len(loop.results), sorted(set(f[1] for f in failures)))
        finally:
            sc.stop()


def test_sighup_reload_of_the_listen_address_starts_new_workers_before_the_old_ones_stop():
    with HttpApp() as app:
        sc = _start(app, workers=2)
        try:
            old_pids = _started_workers(sc, 2)
            new_listen = ("127.0.0.1", free_port())
            sc.config["inbound"]["listen"] = "%s:%d" % new_listen
            sc.write_config()
            with SlowWorkerStart(sc.proc.pid, old_pids, count=2) as slow:
                sc.signal(signal.SIGHUP)
                slow.freeze_new_workers(hold=0)
                # Frozen new workers: the old ones still serve on the old address.
                assert _get(sc.inbound, "/headers")[0] == 200
                assert "reload applied" not in sc.log()
            _wait_for(lambda: "reload applied" in sc.log(), 15, "the reload")
            assert _get(new_listen, "/headers")[0] == 200
            _wait_for(lambda: not [p for p in old_pids if _alive(p)], 10, "the old workers to exit")
            _wait_for(lambda: len(sc.worker_pids()) == 2, 5, "the old workers to be reaped")
            assert sc.stop() == 0
        finally:
            sc.stop()


def test_sighup_with_an_invalid_config_is_refused_and_the_running_config_keeps_serving():
    with HttpApp() as app, HttpApp() as new_app:
        sc = _start(app, workers=2)
        try:
            pids = _started_workers(sc, 2)
            bad = dict(sc.config)
            bad["inbound"] = dict(sc.config["inbound"], app="%s:%d" % new_app.address)
            bad["interception"] = {"mode": "offf"}
            bad["drain_timeout"] = "soon"
            bad["workerz"] = 3
            text = yaml.safe_dump(bad)
            lines = text.splitlines()

            def line_of(prefix):
                return next(i + 1 for i, l in enumerate(lines) if l.startswith(prefix))

            expected = [
                "drain_timeout (line %d): invalid duration 'soon'" % line_of("drain_timeout: soon"),
                "interception.mode (line %d): 'offf' is not one of" % line_of("  mode: offf"),
                "workerz (line %d): unknown key; did you mean 'workers'?" % line_of("workerz: 3"),
            ]
            with open(sc.config_path, "w") as f:
                f.write(text)

            with ClientLoop(sc.inbound, threads=2) as loop:
                time.sleep(0.2)
                sc.signal(signal.SIGHUP)
                _wait_for(lambda: "reload refused" in sc.log(), 10, "the reload to be refused")
                time.sleep(0.5)

            log = sc.log()
            refused = [l for l in log.splitlines() if "reload refused" in l]
            assert len(refused) == 1 and " ERROR " in refused[0], refused
            for message in expected:
                assert message in log, (message, log)
            assert "reload applied" not in log

            # The running config keeps serving: same workers, the old app, no failures.
            assert sorted(sc.worker_pids()) == pids
            assert len(re.findall(r"worker \d started", log)) == 2
            assert not loop.failures(), loop.failures()
            assert len(loop.results) >= 10
            before = len(app.requests)
            for _ in range(5):
                assert _get(sc.inbound, "/headers")[0] == 200
            assert len(app.requests) - before == 5
            assert new_app.requests == []
            assert sc.proc.poll() is None
            assert sc.stop() == 0
        finally:
            sc.stop()


# --- the manager killed -------------------------------------------------------------------

def test_workers_exit_by_themselves_when_the_manager_is_killed():
    with HttpApp() as app:
        sc = _start(app, workers=3)
        try:
            pids = _started_workers(sc, 3)
            assert _get(sc.inbound, "/headers")[0] == 200
            killed_at = time.monotonic()
            sc.proc.kill()          # SIGKILL to the manager only, not its process group
            sc.proc.wait()
            _wait_for(lambda: not [p for p in pids if _alive(p)], 5,
                      "the orphaned workers %s to exit" % pids)
            assert time.monotonic() - killed_at < 5
            assert not _listening(sc.inbound[1]) and not _listening(sc.outbound[1])
            with pytest.raises(ConnectionRefusedError):
                socket.create_connection(sc.inbound, timeout=1)
        finally:
            sc.stop()
