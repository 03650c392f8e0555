"""Worker processes: `workers: N` children of the manager sharing the inbound port with
SO_REUSEPORT, each serving connections; supervision restarts a killed worker while the
others keep serving; repeated crashes back off exponentially and are reported as a crash
loop at ERROR level.

Which worker served a connection is read from the kernel: a kept-alive downstream
connection is an ESTABLISHED socket in exactly one worker's file table (/proc/<pid>/fd
matched against /proc/net/tcp), so no app cooperation is needed.
"""
import ctypes
import errno
import os
import re
import signal
import socket
import subprocess
import threading
import time
from collections import Counter
from datetime import datetime

import pytest

from tests.support.http_client import RawClient
from tests.support.servers import HttpApp
from tests.support.sidecar_process import SidecarProcess

# Sessions of the sidecars started by this module (SidecarProcess starts a new session,
# so every manager and worker of one sidecar has sid == the manager's pid).
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


def _sid(pid):
    try:
        return os.getsid(pid)
    except ProcessLookupError:
        return None


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
    while time.monotonic() < deadline:
        stray = _live_pids_in_sessions(_SESSIONS)
        if not stray:
            break
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


def _start(app, workers):
    sc = SidecarProcess(app=app.address, workers=workers)
    try:
        sc.start()
    finally:
        if sc.proc is not None:
            _SESSIONS.add(sc.proc.pid)
    return sc


# --- sockets of a process, from /proc -----------------------------------------------------

def _tcp_table():
    """inode -> (local port, remote port, state hex) for every TCP socket of this netns."""
    table = {}
    for name in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            with open(name) as f:
                lines = f.readlines()[1:]
        except FileNotFoundError:
            continue
        for line in lines:
            cols = line.split()
            local, remote, state, inode = cols[1], cols[2], cols[3], int(cols[9])
            table[inode] = (int(local.rsplit(":", 1)[1], 16), int(remote.rsplit(":", 1)[1], 16),
                            state)
    return table


def _sockets(pid, table=None):
    """[(fd, inode, local port, remote port, state)] of the TCP sockets `pid` holds."""
    table = _tcp_table() if table is None else table
    out = []
    try:
        fds = os.listdir("/proc/%d/fd" % pid)
    except (FileNotFoundError, ProcessLookupError):
        return out
    for fd in fds:
        try:
            target = os.readlink("/proc/%d/fd/%s" % (pid, fd))
        except OSError:
            continue
        m = re.match(r"socket:\[(\d+)\]", target)
        if m and int(m.group(1)) in table:
            inode = int(m.group(1))
            out.append((int(fd), inode) + table[inode])
    return out


LISTEN, ESTABLISHED = "0A", "01"


def _listeners(pid, port):
    return [s for s in _sockets(pid) if s[2] == port and s[4] == LISTEN]


def _wait_listening(pids, port, timeout=10.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if all(_listeners(pid, port) for pid in pids):
            return
        time.sleep(0.05)
    raise AssertionError("not every worker of %s listens on port %d" % (pids, port))


def _reuseport_of(pid, fd):
    """SO_REUSEPORT of `pid`'s socket `fd`, read from a duplicate (pidfd_getfd), or None
    where this process may not take the duplicate (no ptrace right, kernel < 5.6)."""
    libc = ctypes.CDLL(None, use_errno=True)
    pidfd = os.pidfd_open(pid)
    try:
        dup = libc.syscall(438, pidfd, fd, 0)        # SYS_pidfd_getfd (same on all arches)
        if dup < 0:
            if ctypes.get_errno() in (errno.EPERM, errno.ENOSYS):
                return None
            raise OSError(ctypes.get_errno(), os.strerror(ctypes.get_errno()))
    finally:
        os.close(pidfd)
    with socket.socket(fileno=dup) as s:
        return s.getsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT)


def _serving_workers(sc, pids, connections):
    """Opens `connections` kept-alive connections, each answered 200, and returns
    Counter(worker pid -> connections it holds)."""
    clients = []
    try:
        for _ in range(connections):
            c = RawClient(sc.inbound, timeout=5)
            clients.append(c)
            c.send(b"GET /headers HTTP/1.1\r\nHost: workers.test\r\n\r\n")
            status, _, _ = c.read_response()
            assert status == 200
        ports = {c.sock.getsockname()[1] for c in clients}
        table = _tcp_table()
        owner = {}
        for pid in pids:
            for fd, inode, local, remote, state in _sockets(pid, table):
                if local == sc.inbound[1] and state == ESTABLISHED and remote in ports:
                    assert remote not in owner, "connection held by two processes"
                    owner[remote] = pid
        assert set(owner) == ports, "some connections are not held by any worker %s" % pids
        return Counter(owner.values())
    finally:
        for c in clients:
            c.close()


# --- the manager's log --------------------------------------------------------------------

_LINE = re.compile(r"^(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3}) (\w+) (\S+)\[(\d+)\]: (.*)$")


def _log_events(sc):
    """[(time in s, level, logger, message)] of the manager's log lines."""
    out = []
    for line in sc.log().splitlines():
        m = _LINE.match(line)
        if m:
            t = datetime.strptime(m.group(1), "%Y-%m-%d %H:%M:%S,%f").timestamp()
            out.append((t, m.group(2), m.group(3), m.group(5)))
    return out


def _slot_pids(sc, index):
    """Pids the manager reported for worker slot `index`, in start order."""
    return [int(p) for p in re.findall(r"worker %d started \(pid (\d+)\)" % index, sc.log())]


def _wait_for(predicate, timeout, what):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.02)
    raise AssertionError("timed out after %.1fs waiting for %s" % (timeout, what))


class ClientLoop:
    """`threads` clients, each making new connections back to back (one request each,
    no retries), recording every outcome."""

    def __init__(self, address, threads=2):
        self.address = address
        self.results = []          # (monotonic time, "ok" or what went wrong)
        self.stopping = threading.Event()
        self.threads = [threading.Thread(target=self._run, daemon=True) for _ in range(threads)]

    def _run(self):
        while not self.stopping.is_set():
            try:
                with RawClient(self.address, timeout=5) as c:
                    c.send(b"GET /headers HTTP/1.1\r\nHost: loop.test\r\nConnection: close\r\n\r\n")
                    status, _, _ = c.read_response()
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


# --- tests --------------------------------------------------------------------------------

def test_three_workers_are_manager_children_listening_with_reuseport_and_all_serve():
    with HttpApp() as app:
        sc = _start(app, workers=3)
        try:
            pids = _wait_for(lambda: len(sc.worker_pids()) == 3 and sc.worker_pids(), 10,
                             "three children of the manager")
            assert sorted(pids) == sorted(_slot_pids(sc, 0) + _slot_pids(sc, 1) + _slot_pids(sc, 2))
            for pid in pids:
                with open("/proc/%d/cmdline" % pid, "rb") as f:
                    assert b"sidecar.worker" in f.read()
            _wait_listening(pids, sc.inbound[1])

            # Each worker has its own listening socket (not one inherited socket), and
            # each has SO_REUSEPORT set: that is how three sockets share one port.
            inodes = set()
            for pid in pids:
                listeners = _listeners(pid, sc.inbound[1])
                assert len(listeners) == 1, (pid, listeners)
                fd, inode = listeners[0][:2]
                inodes.add(inode)
                # (Where the option cannot be read, three separate sockets listening on
                # one port are proof enough: Linux refuses that bind without it.)
                assert _reuseport_of(pid, fd) in (1, None)
            assert len(inodes) == 3
            # The manager itself does not listen on the data port.
            assert not _listeners(sc.proc.pid, sc.inbound[1])

            # The kernel spreads connections over all three (P(a worker gets none of 45)
            # is 3 * (2/3)**45 ~ 4e-8).
            served = _serving_workers(sc, pids, 45)
            assert set(served) == set(pids), served
            assert sc.stop() == 0
        finally:
            sc.stop()


def test_a_burst_of_connections_to_a_busy_worker_waits_in_its_accept_queue():
    """300 clients connect at once while the only worker cannot accept (stopped): the
    kernel completes every handshake into the listener's accept queue (backlog 1024), so
    none waits for a SYN retransmit, and each is served once the worker runs again."""
    with HttpApp() as app:
        sc = _start(app, workers=1)
        clients = []
        try:
            (pid,) = _wait_for(lambda: len(sc.worker_pids()) == 1 and sc.worker_pids(), 10, "a worker")
            _wait_listening([pid], sc.inbound[1])
            os.kill(pid, signal.SIGSTOP)
            try:
                for _ in range(300):
                    c = socket.socket()
                    c.setblocking(False)
                    assert c.connect_ex(sc.inbound) in (0, errno.EINPROGRESS)
                    clients.append(c)
                # A handshake the accept queue has no room for is not answered (its SYN is
                # dropped until the retransmission a second later): all are done well before.
                deadline = time.monotonic() + 0.8
                pending = list(clients)
                while pending and time.monotonic() < deadline:
                    pending = [c for c in pending if c.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR) != 0
                               or not _connected(c)]
                    time.sleep(0.02)
                assert not pending, "%d of 300 handshakes not completed" % len(pending)
            finally:
                os.kill(pid, signal.SIGCONT)
            # One after the other, so the app (a small test server) sees one connection.
            for c in clients:
                c.setblocking(True)
                c.settimeout(10)
                c.sendall(b"GET /burst HTTP/1.1\r\nHost: app\r\nConnection: close\r\n\r\n")
                assert _read_all(c).startswith(b"HTTP/1.1 200 ")
            assert sc.stop() == 0
        finally:
            for c in clients:
                c.close()
            sc.stop()


def _connected(sock):
    try:
        sock.getpeername()
        return True
    except OSError:
        return False


def _read_all(sock):
    data = b""
    while True:
        chunk = sock.recv(65536)
        if not chunk:
            return data
        data += chunk


def test_killed_worker_is_restarted_with_a_new_pid_while_the_others_keep_serving():
    with HttpApp() as app:
        sc = _start(app, workers=3)
        try:
            pids = _wait_for(lambda: len(sc.worker_pids()) == 3 and sc.worker_pids(), 10,
                             "three workers")
            _wait_listening(pids, sc.inbound[1])
            victim = _slot_pids(sc, 1)[-1]
            survivors = sorted(set(pids) - {victim})

            with ClientLoop(sc.inbound, threads=2) as loop:
                time.sleep(0.5)
                killed_at = time.monotonic()
                os.kill(victim, signal.SIGKILL)
                new = _wait_for(lambda: _slot_pids(sc, 1)[-1] != victim and _slot_pids(sc, 1)[-1],
                                5, "worker 1 to be restarted")
                _wait_listening([new], sc.inbound[1], timeout=5)
                restarted_after = time.monotonic() - killed_at
                time.sleep(0.5)
            assert restarted_after < 3.0

            # The manager reported the exit (a warning: one crash is not a crash loop).
            exits = [e for e in _log_events(sc) if "worker 1 exited" in e[3]]
            assert len(exits) == 1 and exits[0][1] == "WARNING", exits
            assert "exited with -9" in exits[0][3] and "crash loop" not in exits[0][3]

            # The other workers were not touched; the new one is a child and serves.
            assert sorted(sc.worker_pids()) == sorted(survivors + [new])
            assert all(_alive(p) for p in survivors)
            served = _serving_workers(sc, survivors + [new], 45)
            assert set(served) == set(survivors + [new]), served

            # Zero failures apart from what the kill itself cut: with SO_REUSEPORT each
            # worker has its own accept queue, and a connection that was queued on (or
            # being served by) the killed worker is reset with it. That is at most one
            # connection per client thread in flight at the kill, i.e. 2; every failure
            # must fall around the kill, and none may be a refusal (the others listen).
            failures = loop.failures()
            assert len(failures) <= 2, failures
            assert all(abs(t - killed_at) < 1.0 for t, _ in failures), failures
            assert not [f for f in failures if "Refused" in f[1]], failures
            during = [r for r in loop.results if killed_at <= r[0] <= killed_at + restarted_after]
            assert len([r for r in during if r[1] == "ok"]) >= 5, "no steady traffic during the restart"
            assert sc.stop() == 0
        finally:
            sc.stop()


def test_repeated_crashes_back_off_exponentially_and_are_logged_as_a_crash_loop():
    with HttpApp() as app:
        sc = _start(app, workers=2)
        try:
            pids = _wait_for(lambda: len(sc.worker_pids()) == 2 and sc.worker_pids(), 10,
                             "two workers")
            _wait_listening(pids, sc.inbound[1])
            other = _slot_pids(sc, 0)[-1]
            kills = 5
            measured = []            # kill -> new pid reported, timed by the test
            for n in range(kills):
                victim = _slot_pids(sc, 1)[-1]
                killed_at = time.monotonic()
                os.kill(victim, signal.SIGKILL)
                if n == kills - 1:
                    break           # the 5th restart is 8 s away: not waited for
                new = _wait_for(lambda: _slot_pids(sc, 1)[-1] != victim and _slot_pids(sc, 1)[-1],
                                10, "restart %d of worker 1" % (n + 1))
                measured.append(time.monotonic() - killed_at)
                _wait_listening([new], sc.inbound[1], timeout=5)
            _wait_for(lambda: len([e for e in _log_events(sc) if "worker 1 exited" in e[3]]) == kills,
                      5, "the manager to log the 5th exit")

            events = _log_events(sc)
            exits = [e for e in events if e[2] == "sidecar.manager" and "worker 1 exited" in e[3]]
            starts = [e for e in events if e[2] == "sidecar.manager" and "worker 1 started" in e[3]]
            assert len(exits) == kills and len(starts) == kills   # initial start + 4 restarts

            # The announced backoff doubles: 0.5, 1, 2, 4, 8 s ...
            announced = [float(re.search(r"restarting in ([\d.]+)s", e[3]).group(1)) for e in exits]
            assert announced == [0.5, 1.0, 2.0, 4.0, 8.0], announced
            # ... and is what actually happens: exit logged -> next start logged, from the
            # log's timestamps, and kill -> new pid, timed here.
            logged = [start[0] - exit_[0] for exit_, start in zip(exits, starts[1:])]
            for delay, nominal in zip(logged, announced):
                assert nominal - 0.05 <= delay <= nominal + 0.6, (logged, announced)
            for delay, nominal in zip(measured, announced):
                assert nominal <= delay <= nominal + 1.0, (measured, announced)
            assert all(b > a for a, b in zip(measured, measured[1:])), measured

            # Below the threshold it is a warning; the 5th exit within a minute is a crash
            # loop, reported at ERROR.
            assert [e[1] for e in exits[:4]] == ["WARNING"] * 4, exits
            assert not any("crash loop" in e[3] for e in exits[:4])
            assert exits[4][1] == "ERROR" and "crash loop" in exits[4][3], exits[4]

            # The healthy worker was never restarted and kept serving throughout.
            assert _slot_pids(sc, 0) == [other] and _alive(other)
            with RawClient(sc.inbound, timeout=5) as c:
                c.send(b"GET /headers HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
                assert c.read_response()[0] == 200
            assert sc.stop() == 0
        finally:
            sc.stop()
