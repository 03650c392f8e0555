"""`sidecar demo`: a sample app behind the sidecar, traffic through it, a live summary.

The app is a real nginx serving a small page on a free loopback port; the sidecar runs as
`sidecar run` with a throwaway config whose inbound listener fronts that app; a closed-loop
client keeps `connections` keep-alive connections busy for `duration` seconds and prints a
line a second (requests, rate, latency percentiles, errors). Everything started is stopped
and its temporary directory removed at the end, also on failure or Ctrl-C.
"""
import asyncio
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time

NGINX_CONF = """
worker_processes 1;
daemon off;
pid {dir}/nginx.pid;
error_log {dir}/nginx-error.log;
events {{ worker_connections 1024; }}
http {{
    access_log off;
    keepalive_requests 1000000;
    server {{
        listen 127.0.0.1:{port};
        location / {{ default_type text/plain; return 200 "hello from the demo app\\n"; }}
    }}
}}
"""


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_for_port(port, proc, timeout=10.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError("process exited with %s" % proc.returncode)
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.05)
    raise TimeoutError("port %d not listening" % port)


def _percentile(sorted_values, q):
    if not sorted_values:
        return 0.0
    return sorted_values[min(len(sorted_values) - 1, int(q * len(sorted_values)))]


class Traffic:
    """A closed-loop HTTP/1.1 keep-alive client, recording latencies."""

    def __init__(self, port):
        self.port = port
        self.latencies = []          # seconds, this interval
        self.all_latencies = []
        self.requests = 0
        self.errors = 0

    async def connection(self, stop_at):
        request = b"GET / HTTP/1.1\r\nHost: demo\r\n\r\n"
        reader = writer = None
        while time.monotonic() < stop_at:
            try:
                if writer is None:
                    reader, writer = await asyncio.open_connection("127.0.0.1", self.port)
                start = time.perf_counter()
                writer.write(request)
                head = await reader.readuntil(b"\r\n\r\n")
                length = 0
                for line in head.split(b"\r\n"):
                    if line.lower().startswith(b"content-length:"):
                        length = int(line.split(b":")[1])
                await reader.readexactly(length)
                elapsed = time.perf_counter() - start
                if not head.startswith(b"HTTP/1.1 200"):
                    self.errors += 1
                self.requests += 1
                self.latencies.append(elapsed)
            except (OSError, asyncio.IncompleteReadError, asyncio.LimitOverrunError):
                self.errors += 1
                writer = None
                await asyncio.sleep(0.05)
        if writer is not None:
            writer.close()

    async def run(self, duration, connections, report):
        stop_at = time.monotonic() + duration
        tasks = [asyncio.ensure_future(self.connection(stop_at)) for _ in range(connections)]
        last_requests, last_time = 0, time.monotonic()
        while not all(t.done() for t in tasks):
            await asyncio.sleep(1.0)
            now = time.monotonic()
            lat = sorted(self.latencies)
            self.all_latencies.extend(self.latencies)
            self.latencies = []
            report(self.requests, (self.requests - last_requests) / (now - last_time), lat, self.errors)
            last_requests, last_time = self.requests, now
        await asyncio.gather(*tasks)


def _line(requests, rate, lat, errors):
    return ("requests %8d   rate %8.0f/s   p50 %7.0f us   p99 %7.0f us   errors %d" % (
        requests, rate, _percentile(lat, 0.50) * 1e6, _percentile(lat, 0.99) * 1e6, errors))


def run_demo(duration=5.0, connections=8) -> int:
    if shutil.which("nginx") is None:
        print("demo: nginx is not installed (make demo installs it)", file=sys.stderr)
        return 1
    workdir = tempfile.mkdtemp(prefix="sidecar-demo-")
    procs = []
    try:
        app_port, inbound_port = _free_port(), _free_port()
        with open(os.path.join(workdir, "nginx.conf"), "w") as f:
            f.write(NGINX_CONF.format(dir=workdir, port=app_port))
        nginx = subprocess.Popen(["nginx", "-c", os.path.join(workdir, "nginx.conf"), "-p", workdir,
                                  "-e", os.path.join(workdir, "nginx-error.log")],
                                 stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                 start_new_session=True)
        procs.append(nginx)
        _wait_for_port(app_port, nginx)
        config = os.path.join(workdir, "sidecar.yaml")
        with open(config, "w") as f:
            f.write(
                "workload: {name: demo, namespace: default}\n"
                "workers: 1\n"
                "interception: {mode: off}\n"
                "inbound: {listen: '127.0.0.1:%d', app: '127.0.0.1:%d'}\n"
                "outbound: {listen: '127.0.0.1:%d'}\n"
                "admin: {listen: '127.0.0.1:%d'}\n"
                "telemetry: {metrics: {listen: '127.0.0.1:%d'}, health: {listen: '127.0.0.1:%d'},"
                " access_log: {path: null}}\n" % (
                    inbound_port, app_port, _free_port(), _free_port(), _free_port(), _free_port()))
        sidecar = subprocess.Popen([sys.executable, "-m", "sidecar.cli", "run", "-c", config],
                                   stdout=subprocess.DEVNULL,
                                   stderr=open(os.path.join(workdir, "sidecar.log"), "wb"),
                                   start_new_session=True)
        procs.append(sidecar)
        _wait_for_port(inbound_port, sidecar)
        print("demo: nginx app on 127.0.0.1:%d, sidecar inbound on 127.0.0.1:%d; "
              "%d connections for %.0f s" % (app_port, inbound_port, connections, duration))
        traffic = Traffic(inbound_port)
        asyncio.run(traffic.run(duration, connections, lambda *a: print("  " + _line(*a), flush=True)))
        lat = sorted(traffic.all_latencies)
        print("summary: %d requests through the sidecar in %.0f s (%.0f/s), p50 %.0f us, "
              "p99 %.0f us, %d errors" % (
                  traffic.requests, duration, traffic.requests / duration,
                  _percentile(lat, 0.5) * 1e6, _percentile(lat, 0.99) * 1e6, traffic.errors))
        return 0 if traffic.requests > 0 and traffic.errors == 0 else 1
    except KeyboardInterrupt:
        return 130
    finally:
        for p in reversed(procs):
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
                try:
                    p.wait(10)
                except subprocess.TimeoutExpired:
                    pass
            try:
                os.killpg(p.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            p.wait()
        shutil.rmtree(workdir, ignore_errors=True)
        print("demo: stopped the app and the sidecar, removed %s" % workdir)
