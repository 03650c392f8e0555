"""The upstream connection pool, seen from a real upstream through the real sidecar:
connections are reused across client connections, closed after being idle too long,
capped per service, and a kept-alive connection the upstream dropped costs the client
nothing for a request that can be retried.
"""
import threading
import time

from tests.support.http_client import RawClient
from tests.support.servers import ScriptedServer
from tests.support.sidecar_process import SidecarProcess


def ok(body=b"ok\n"):
    return b"HTTP/1.1 200 OK\r\ncontent-length: %d\r\n\r\n%s" % (len(body), body)


class KeepAliveUpstream(ScriptedServer):
    """A keep-alive HTTP/1.1 upstream on real sockets. For each request head,
    `respond(self, path, number, nth, conn)` sends the answer (number: the connection's
    1-based number; nth: the request's 1-based position on it) and returns False to close
    the connection. Records `.paths` [(number, path)], `.closed_at` {number: time the
    sidecar closed it}, `.active` / `.max_active` concurrent connections."""

    def __init__(self, respond=None):
        super().__init__(self._serve)
        self.respond = respond or (lambda srv, path, number, nth, conn: conn.sendall(ok()))
        self.lock = threading.Lock()
        self.count = 0
        self.paths = []
        self.answered_at = {}
        self.closed_at = {}
        self.active = 0
        self.max_active = 0

    def _serve(self, conn, _server):
        with self.lock:
            self.count += 1
            number = self.count
            self.active += 1
            self.max_active = max(self.max_active, self.active)
        try:
            rest, nth = b"", 0
            while True:
                head, rest = self.read_head(conn, rest)
                if not head.endswith(b"\r\n\r\n"):
                    with self.lock:
                        self.closed_at[number] = time.monotonic()    # the sidecar closed it
                    return
                nth += 1
                path = head.split(b" ", 2)[1].decode()
                with self.lock:
                    self.paths.append((number, path))
                if self.respond(self, path, number, nth, conn) is False:
                    return
                with self.lock:
                    self.answered_at[number] = time.monotonic()
        finally:
            with self.lock:
                self.active -= 1


def get(address, path, host="app.local"):
    with RawClient(address) as c:
        c.send(b"GET %s HTTP/1.1\r\nHost: %s\r\n\r\n" % (path.encode(), host.encode()))
        return c.read_response()


# --- reuse ------------------------------------------------------------------------------------

def test_one_upstream_connection_serves_sequential_requests_from_many_client_connections():
    with KeepAliveUpstream() as app, SidecarProcess(app=app.address) as sc:
        for i in range(20):
            status, _, body = get(sc.inbound, "/reuse-%d" % i)
            assert (status, body) == (200, b"ok\n")
        assert app.connections == 1
        assert app.paths == [(1, "/reuse-%d" % i) for i in range(20)]


def test_connection_used_more_often_than_idle_timeout_is_kept():
    extra = {"limits": {"upstream_idle_timeout": "1s"}}
    with KeepAliveUpstream() as app, SidecarProcess(app=app.address, extra=extra) as sc:
        for i in range(6):
            assert get(sc.inbound, "/busy-%d" % i)[0] == 200
            time.sleep(0.4)
        assert app.connections == 1 and app.closed_at == {}


def test_many_concurrent_client_connections_keep_their_upstream_connections():
    """Closed-loop load over more keep-alive connections than a small idle cap: when all
    responses end at once, every upstream connection goes idle together, and the next
    round must find them all again instead of reconnecting (connection churn makes a
    mesh of two sidecars fail under 256-connection load)."""
    clients, rounds = 120, 3
    barrier = threading.Barrier(clients)

    def slow(srv, path, number, nth, conn):
        time.sleep(0.2)        # every client's request is in flight at the same time
        conn.sendall(ok())

    with KeepAliveUpstream(slow) as app, SidecarProcess(extra=_service(app)) as sc:
        statuses = []

        def client():
            with RawClient(sc.outbound) as c:
                for i in range(rounds):
                    barrier.wait(10)
                    c.send(b"GET /r%d HTTP/1.1\r\nHost: svc.local\r\n\r\n" % i)
                    statuses.append(c.read_response()[0])

        threads = [threading.Thread(target=client, daemon=True) for _ in range(clients)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(30)
        assert statuses == [200] * (clients * rounds)
        assert app.max_active == clients
        assert app.connections == clients, "upstream connections were closed and reopened"


# --- idle eviction --------------------------------------------------------------------------------

def test_idle_upstream_connection_is_closed_after_upstream_idle_timeout():
    extra = {"limits": {"upstream_idle_timeout": "1s"}}
    with KeepAliveUpstream() as app, SidecarProcess(app=app.address, extra=extra) as sc:
        assert get(sc.inbound, "/once")[0] == 200
        deadline = time.monotonic() + 2.0
        while 1 not in app.closed_at and time.monotonic() < deadline:
            time.sleep(0.05)
        assert 1 in app.closed_at, "the idle connection was still open after 2 s"
        idle_for = app.closed_at[1] - app.answered_at[1]
        # Deadlines use a 0.25 s coarse clock: up to a sweep early or late.
        assert 0.7 <= idle_for <= 1.75, idle_for
        # The next request simply opens a new connection.
        assert get(sc.inbound, "/after-eviction")[::2] == (200, b"ok\n")
        assert app.connections == 2 and app.paths[-1] == (2, "/after-eviction")


# --- cap per service (outbound) -------------------------------------------------------------------

def test_max_connections_caps_concurrent_upstream_connections_and_queues_the_rest():
    def slow(srv, path, number, nth, conn):
        time.sleep(0.5)
        conn.sendall(ok(path.encode()))

    with KeepAliveUpstream(slow) as app:
        services = [{"name": "svc", "match": ["svc.local"], "endpoints": ["127.0.0.1:%d" % app.address[1]],
                     "circuit_breaker": {"max_connections": 2}}]
        with SidecarProcess(extra={"services": services}) as sc:
            results = {}

            def client(i):
                try:
                    results[i] = get(sc.outbound, "/slow-%d" % i, host="svc.local")
                except Exception as e:      # reported below
                    results[i] = e

            started = time.monotonic()
            threads = [threading.Thread(target=client, args=(i,), daemon=True) for i in range(6)]
            for t in threads:
                t.start()
            for t in threads:
                t.join(15)
            elapsed = time.monotonic() - started
            assert {i: r[::2] if isinstance(r, tuple) else r for i, r in results.items()} == {
                i: (200, b"/slow-%d" % i) for i in range(6)}
            assert app.max_active == 2, app.max_active
            assert app.connections == 2
            assert sorted(p for _, p in app.paths) == sorted("/slow-%d" % i for i in range(6))
            # Three rounds of two: the other four waited for a connection.
            assert elapsed >= 1.4, elapsed


def _service(app, **settings):
    svc = {"name": "svc", "match": ["svc.local"], "endpoints": ["127.0.0.1:%d" % app.address[1]]}
    svc.update(settings)
    return {"services": [svc]}


def _concurrent_gets(address, paths, host="svc.local", stagger=0.0):
    results = {}

    def client(path):
        try:
            results[path] = get(address, path, host=host)
        except Exception as e:      # reported by the caller's assertion
            results[path] = e

    threads = []
    for path in paths:
        threads.append(threading.Thread(target=client, args=(path,), daemon=True))
        threads[-1].start()
        time.sleep(stagger)
    for t in threads:
        t.join(15)
    return results


def test_pool_keeps_at_most_pool_max_idle_idle_connections():
    def slow(srv, path, number, nth, conn):
        time.sleep(0.3)
        conn.sendall(ok(path.encode()))

    with KeepAliveUpstream(slow) as app, SidecarProcess(extra=_service(app, pool_max_idle=1)) as sc:
        results = _concurrent_gets(sc.outbound, ["/a", "/b", "/c"])
        assert {p: r[::2] for p, r in results.items()} == {p: (200, p.encode()) for p in ["/a", "/b", "/c"]}
        assert app.connections == 3
        deadline = time.monotonic() + 1.0
        while len(app.closed_at) < 2 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert len(app.closed_at) == 2, app.closed_at
        (kept,) = {1, 2, 3} - set(app.closed_at)
        assert get(sc.outbound, "/reuse", host="svc.local")[0] == 200
        assert app.paths[-1] == (kept, "/reuse") and app.connections == 3


def test_service_idle_timeout_closes_its_idle_upstream_connections():
    with KeepAliveUpstream() as app:
        extra = _service(app, timeouts={"idle": "1s"})
        extra["limits"] = {"upstream_idle_timeout": "60s"}
        with SidecarProcess(extra=extra) as sc:
            assert get(sc.outbound, "/once", host="svc.local")[0] == 200
            deadline = time.monotonic() + 2.0
            while 1 not in app.closed_at and time.monotonic() < deadline:
                time.sleep(0.05)
            assert 1 in app.closed_at, "the idle connection was still open after 2 s"
            assert 0.7 <= app.closed_at[1] - app.answered_at[1] <= 1.75


def test_requests_beyond_max_pending_are_refused_with_503_at_once():
    def slow(srv, path, number, nth, conn):
        time.sleep(0.5)
        conn.sendall(ok(path.encode()))

    cb = {"max_connections": 1, "max_pending": 1}
    with KeepAliveUpstream(slow) as app, SidecarProcess(extra=_service(app, circuit_breaker=cb)) as sc:
        waiting = threading.Thread(target=_concurrent_gets, args=(sc.outbound, ["/in-flight", "/pending"]),
                                   kwargs={"stagger": 0.1}, daemon=True)
        waiting.start()
        time.sleep(0.25)        # one request on the only connection, one pending
        started = time.monotonic()
        status, _, body = get(sc.outbound, "/overflow", host="svc.local")
        elapsed = time.monotonic() - started
        waiting.join(10)
        assert status == 503 and elapsed < 0.3, (status, body, elapsed)
        assert "/overflow" not in [p for _, p in app.paths]


# --- stale keep-alive connections ----------------------------------------------------------------

def test_connection_closed_by_upstream_while_idle_is_not_used_again():
    def close_when_idle(srv, path, number, nth, conn):
        conn.sendall(ok())
        time.sleep(0.2)
        return False        # the app's own keep-alive timeout

    with KeepAliveUpstream(close_when_idle) as app, SidecarProcess(app=app.address) as sc:
        assert get(sc.inbound, "/first")[0] == 200
        time.sleep(0.5)
        assert get(sc.inbound, "/second")[::2] == (200, b"ok\n")
        assert app.paths == [(1, "/first"), (2, "/second")]


def test_get_on_kept_alive_connection_dropped_without_answer_is_retried_on_new_connection():
    """The race every pool meets: the app closes a kept-alive connection just as a request
    is written to it. The request had no body and nothing came back: retry it once."""
    def drop_reused(srv, path, number, nth, conn):
        if nth > 1:
            return False    # reads the request, closes without a byte
        conn.sendall(ok(path.encode()))

    with KeepAliveUpstream(drop_reused) as app, SidecarProcess(app=app.address) as sc:
        with RawClient(sc.inbound) as c:
            c.send(b"GET /warm HTTP/1.1\r\nHost: app.local\r\n\r\n")
            assert c.read_response()[::2] == (200, b"/warm")
            c.send(b"GET /retried HTTP/1.1\r\nHost: app.local\r\n\r\n")
            assert c.read_response()[::2] == (200, b"/retried")
            assert not c.is_closed(timeout=0.2)
        assert app.paths == [(1, "/warm"), (1, "/retried"), (2, "/retried")]


def test_request_with_body_on_dropped_kept_alive_connection_is_not_retried():
    def drop_reused(srv, path, number, nth, conn):
        if nth > 1:
            return False
        conn.sendall(ok(path.encode()))

    with KeepAliveUpstream(drop_reused) as app, SidecarProcess(app=app.address) as sc:
        with RawClient(sc.inbound) as c:
            c.send(b"GET /warm HTTP/1.1\r\nHost: app.local\r\n\r\n")
            assert c.read_response()[0] == 200
            c.send(b"POST /not-idempotent HTTP/1.1\r\nHost: app.local\r\ncontent-length: 5\r\n\r\nhello")
            assert c.read_response()[0] == 502
        assert app.paths == [(1, "/warm"), (1, "/not-idempotent")]


def test_dropped_request_is_retried_only_once():
    def drop_always(srv, path, number, nth, conn):
        if path == "/always-dropped":
            return False
        conn.sendall(ok(path.encode()))

    with KeepAliveUpstream(drop_always) as app, SidecarProcess(app=app.address) as sc:
        with RawClient(sc.inbound) as c:
            c.send(b"GET /warm HTTP/1.1\r\nHost: app.local\r\n\r\n")
            assert c.read_response()[0] == 200
            c.send(b"GET /always-dropped HTTP/1.1\r\nHost: app.local\r\n\r\n")
            assert c.read_response()[0] == 502
        assert app.paths == [(1, "/warm"), (1, "/always-dropped"), (2, "/always-dropped")]
