"""The mesh benchmark's load generator (benchmarks/mesh/loadgen.c), compiled with gcc and run
against small servers on loopback: it keeps its rate, charges a stalled server for every
request the stall delayed (no coordinated omission), reads Content-Length and chunked
responses, counts statuses, and its bulk TCP mode counts what the far end received."""
import shutil
import socket
import subprocess
import threading
import time

import pytest

from benchmarks.mesh import loadgen

pytestmark = pytest.mark.timeout(60)


@pytest.fixture(scope="module")
def binary(tmp_path_factory):
    if shutil.which("gcc") is None:
        pytest.skip("needs gcc")
    return loadgen.build(tmp_path_factory.mktemp("loadgen"))


class HttpServer:
    """HTTP/1.1 keep-alive on loopback, a thread per connection. `/chunked` answers a chunked
    body, `/missing` a 404, anything else `ok`; the request numbered `stall_at` (counted over
    all connections) is answered after `stall_s`."""

    def __init__(self, stall_at=None, stall_s=0.0):
        self.stall_at, self.stall_s = stall_at, stall_s
        self.count = 0
        self.lock = threading.Lock()
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self):
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    def _serve(self, conn):
        conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        data = b""
        with conn:
            while True:
                while b"\r\n\r\n" not in data:
                    chunk = conn.recv(65536)
                    if not chunk:
                        return
                    data += chunk
                head, data = data.split(b"\r\n\r\n", 1)
                path = head.split(b" ")[1]
                with self.lock:
                    self.count += 1
                    n = self.count
                if n == self.stall_at:
                    time.sleep(self.stall_s)
                if path == b"/chunked":
                    conn.sendall(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
                                 b"5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n")
                elif path == b"/missing":
                    conn.sendall(b"HTTP/1.1 404 Not Found\r\nContent-Length: 9\r\n\r\nnot found")
                else:
                    conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")

    def close(self):
        self.sock.close()


def _http(binary, port, **kw):
    cmd = loadgen.http_command(binary, "127.0.0.1", port, **kw)
    report, _ = loadgen.run(cmd, 30)
    return report


def test_keeps_the_asked_rate_with_every_request_answered(binary):
    server = HttpServer()
    try:
        report = _http(binary, server.port, path="/", rate=2000, connections=4, duration_s=1.0)
    finally:
        server.close()
    assert report["scheduled"] == 2000
    assert report["completed"] == report["ok"] == 2000
    assert sum(report["errors"].values()) == 0
    assert 1900 <= report["achieved_rps"] <= 2100
    assert report["latency_us"]["count"] == 2000


def test_a_stall_is_charged_to_every_request_it_delayed(binary):
    # 200 req/s on one connection; request 50 is held 400 ms. A closed-loop client would
    # record one slow request; measured from the due times, the ~80 requests that came
    # due during the stall are all late, so the slowest 20% are at least 100 ms.
    server = HttpServer(stall_at=50, stall_s=0.4)
    try:
        report = _http(binary, server.port, path="/", rate=200, connections=1, duration_s=2.0)
    finally:
        server.close()
    lat = report["latency_us"]
    assert report["completed"] == 400
    assert lat["max"] >= 390_000
    assert lat["p90"] >= 100_000, lat
    assert lat["p50"] < 50_000, lat
    assert report["max_queue"] >= 50


def test_reads_chunked_bodies_and_counts_statuses(binary):
    server = HttpServer()
    try:
        chunked = _http(binary, server.port, path="/chunked", rate=500, connections=2, duration_s=0.4)
        missing = _http(binary, server.port, path="/missing", rate=500, connections=2, duration_s=0.4)
    finally:
        server.close()
    assert chunked["statuses"]["2xx"] == chunked["scheduled"] == 200
    assert chunked["errors"]["parse"] == 0 and chunked["reconnects"] == 0
    assert missing["statuses"]["4xx"] == missing["non_2xx"] == 200
    assert missing["ok"] == 0


def test_unreachable_server_is_counted_as_errors_not_hidden(binary):
    with socket.create_server(("127.0.0.1", 0)) as s:
        port = s.getsockname()[1]
    report = _http(binary, port, path="/", rate=100, connections=2, duration_s=0.3, drain_s=0.2)
    assert report["completed"] == 0
    assert report["errors"]["connect"] >= 2
    assert report["errors"]["unsent"] == report["scheduled"] == 30


def test_tcp_send_counts_bytes_the_sink_received(binary):
    with socket.create_server(("127.0.0.1", 0)) as s:
        port = s.getsockname()[1]
    sink = subprocess.Popen([str(binary), "tcp-sink", "--port", str(port)],
                                    stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 5
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), 0.2).close()
                break
            except OSError:
                assert time.monotonic() < deadline, "sink did not listen"
                time.sleep(0.02)
        report, _ = loadgen.run(loadgen.tcp_send_command(binary, "127.0.0.1", port, connections=2,
                                                         duration_s=0.5), 30)
    finally:
        sink.kill()
        sink.wait()
    assert report["errors"] == 0
    assert report["bytes"] > 10 * 1024 * 1024
    assert report["mb_per_s"] == pytest.approx(report["bytes"] / report["elapsed_s"] / 1e6, rel=0.01)
