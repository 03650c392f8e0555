"""The processes under test: the app server and the three reverse proxies in front of it.

- app: an nginx serving `ok\\n` from memory (1 worker, keep-alive, no access log);
- nginx: proxy_pass to the app, 1 worker, upstream keepalive 64, HTTP/1.1 upstream;
- haproxy: mode http, nbthread 1, http-reuse always, http-keep-alive, no logging;
- sidecar: `sidecar run -c FILE`, 1 worker, interception off, inbound listener -> app.

Each one runs from config files written into a private directory, on free loopback
ports, in its own process group (so Ctrl-C on the harness does not reach it and one
killpg stops it whole). Nothing writes outside that directory: nginx gets `-p` and `-e`
and its temp paths there. `stop()` is safe to call twice and on a peer that never
started. The Debian system services are never touched.

Keep-alive request limits are raised on nginx (default 1000 per connection) so that
no peer pays for reconnects the others do not make; HAProxy and the sidecar have none.
"""

import http.client
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from string import Template

from . import proc_stats

__all__ = [
    "PeerError",
    "PeerProcess",
    "free_ports",
    "app_server",
    "haproxy_proxy",
    "nginx_proxy",
    "sidecar_proxy",
    "merge_config",
    "otlp_sink",
    "tool_versions",
]

REPO_ROOT = Path(__file__).resolve().parent.parent
READY_TIMEOUT_S = 10.0
STOP_GRACE_S = 5.0

APP_NGINX_CONF = Template("""\
# The app server every proxy forwards to (and the "direct" baseline).
worker_processes 1;
pid $dir/nginx.pid;
error_log $dir/error.log warn;
events { worker_connections 4096; }
http {
    access_log off;
    default_type text/plain;
    keepalive_timeout 65;
    keepalive_requests 1000000;
    client_body_temp_path $dir/client_body;
    proxy_temp_path $dir/proxy;
    fastcgi_temp_path $dir/fastcgi;
    uwsgi_temp_path $dir/uwsgi;
    scgi_temp_path $dir/scgi;
    server {
        listen 127.0.0.1:$port;
        location / { return 200 "ok\\n"; }
    }
}
""")

CACHE_APP_NGINX_CONF = Template("""\
# The app behind the response cache benchmark: `/` says nothing of caching (the route's
# ttl applies), `/uncacheable` says no-store. Requests for `/` are logged, so the
# benchmark can count what reached the app through a cache.
worker_processes 1;
pid $dir/nginx.pid;
error_log $dir/error.log warn;
events { worker_connections 4096; }
http {
    default_type text/plain;
    keepalive_timeout 65;
    keepalive_requests 1000000;
    client_body_temp_path $dir/client_body;
    proxy_temp_path $dir/proxy;
    fastcgi_temp_path $dir/fastcgi;
    uwsgi_temp_path $dir/uwsgi;
    scgi_temp_path $dir/scgi;
    server {
        listen 127.0.0.1:$port;
        location = / { access_log $dir/access.log; return 200 "ok\\n"; }
        location / { access_log off; add_header Cache-Control no-store; return 200 "ok\\n"; }
    }
}
""")

PROXY_NGINX_CONF = Template("""\
# nginx as a plain HTTP/1.1 reverse proxy in front of the app.
worker_processes 1;
pid $dir/nginx.pid;
error_log $dir/error.log warn;
events { worker_connections 4096; }
http {
    access_log off;
    keepalive_timeout 65;
    keepalive_requests 1000000;
    client_body_temp_path $dir/client_body;
    proxy_temp_path $dir/proxy;
    fastcgi_temp_path $dir/fastcgi;
    uwsgi_temp_path $dir/uwsgi;
    scgi_temp_path $dir/scgi;
    upstream app {
        server 127.0.0.1:$app_port;
        keepalive 64;
        keepalive_requests 1000000;
    }
    server {
        listen 127.0.0.1:$port;
        location / {
            proxy_pass http://app;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
        }
    }
}
""")

HAPROXY_CONF = Template("""\
# HAProxy as a plain HTTP/1.1 reverse proxy in front of the app. No `log` lines: no logging.
global
    nbthread 1
    maxconn 4096
    pidfile $dir/haproxy.pid

defaults
    mode http
    option http-keep-alive
    http-reuse always
    timeout connect 5s
    timeout client 60s
    timeout server 60s
    timeout http-keep-alive 60s

frontend bench
    bind 127.0.0.1:$port
    default_backend app

backend app
    server app1 127.0.0.1:$app_port
""")

SIDECAR_CONF = Template("""\
# The sidecar as a plain inbound reverse proxy: requests to inbound.listen go to inbound.app.
workers: 1
drain_timeout: 1s
interception: {mode: "off"}
inbound: {listen: "127.0.0.1:$port", app: "127.0.0.1:$app_port"}
outbound: {listen: "127.0.0.1:$outbound_port"}
admin: {listen: "127.0.0.1:$admin_port"}
telemetry:
  metrics: {listen: "127.0.0.1:$metrics_port"}
  health: {listen: "127.0.0.1:$health_port"}
  access_log: {path: null}
""")


class PeerError(Exception):
    """A peer did not start, or stopped answering."""


def free_ports(n):
    """n distinct free TCP ports on 127.0.0.1 (all bound at once, so none repeats)."""
    socks = []
    try:
        for _ in range(n):
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.bind(("127.0.0.1", 0))
            socks.append(s)
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def _http_status(port, timeout=1.0):
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        conn.request("GET", "/")
        resp = conn.getresponse()
        resp.read()
        return resp.status
    finally:
        conn.close()


class PeerProcess:
    """One started program (and everything it forks), listening on `port`."""

    def __init__(self, name, cmd, workdir, port, stop_signal=signal.SIGTERM, ready_probe=None):
        self.name = name
        # Returns the HTTP status of a GET through the peer (raises OSError when it cannot
        # connect); by default a GET / to 127.0.0.1:port from here.
        self.ready_probe = ready_probe or (lambda: _http_status(port))
        self.cmd = cmd
        self.workdir = Path(workdir)
        self.port = port
        self.stop_signal = stop_signal
        self.proc = None
        self.seen = {}  # (pid, starttime) -> pid: every process of this peer ever observed
        self.log_path = self.workdir / "output.log"

    @property
    def pid(self):
        return self.proc.pid if self.proc else None

    @property
    def url(self):
        return f"http://127.0.0.1:{self.port}/"

    def start(self):
        """Launches the program in a new session (its own process group)."""
        self.workdir.mkdir(parents=True, exist_ok=True)
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(
                self.cmd,
                cwd=REPO_ROOT,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        return self

    def alive(self):
        return self.proc is not None and self.proc.poll() is None

    def remember_processes(self):
        """Records the current process tree (so stop() can reach every member)."""
        if self.alive():
            for st in proc_stats.descendants(self.pid):
                self.seen[(st.pid, st.starttime)] = st.pid

    def wait_ready(self, timeout=READY_TIMEOUT_S):
        """Waits until the ready probe (a GET / through the port) answers 200. Raises PeerError."""
        deadline = time.monotonic() + timeout
        last = "no answer"
        while time.monotonic() < deadline:
            if not self.alive():
                raise PeerError(f"{self.name} exited with {self.proc.returncode}: {self.log_tail()}")
            try:
                status = self.ready_probe()
                if status == 200:
                    self.remember_processes()
                    return
                last = f"HTTP {status}"
            except OSError as e:
                last = str(e)
            time.sleep(0.1)
        raise PeerError(f"{self.name} not ready on port {self.port} after {timeout:.0f}s ({last}): {self.log_tail()}")

    def log_tail(self, lines=15):
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return ""
        for extra in sorted(self.workdir.glob("error.log")):
            text += extra.read_text(errors="replace")
        return " | ".join(text.strip().splitlines()[-lines:])

    def stop(self):
        """Stops the whole process group; SIGKILLs whatever is left after a grace period,
        including any member that left the group (matched by pid and start time)."""
        if self.proc is None:
            return
        self.remember_processes()
        if self.proc.poll() is None:
            _signal_group(self.proc.pid, self.stop_signal)
            try:
                self.proc.wait(timeout=STOP_GRACE_S)
            except subprocess.TimeoutExpired:
                pass
        _signal_group(self.proc.pid, signal.SIGKILL)
        if self.proc.poll() is None:
            self.proc.wait()
        for (pid, starttime) in list(self.seen):
            st = proc_stats.read_stat(pid)
            if st is not None and st.starttime == starttime:
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass

    def pids(self):
        return sorted(set(self.seen.values()))

    def identities(self):
        """[pid, starttime] of every process seen: tells ours apart from a reused pid."""
        return sorted([pid, starttime] for pid, starttime in self.seen)


def _signal_group(pgid, sig):
    try:
        os.killpg(pgid, sig)
    except (ProcessLookupError, PermissionError):
        pass


def _write(path, text):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def _nginx(name, template, workdir, **values):
    workdir = Path(workdir)
    conf = _write(workdir / "nginx.conf", template.substitute(dir=workdir, **values))
    cmd = ["nginx", "-p", f"{workdir}/", "-c", str(conf), "-e", str(workdir / "error.log"), "-g", "daemon off;"]
    # SIGQUIT would wait for keep-alive connections; SIGTERM is nginx's fast shutdown.
    return PeerProcess(name, cmd, workdir, values["port"])


def app_server(workdir, port):
    """The app server, configured; start() it, then wait_ready()."""
    return _nginx("app", APP_NGINX_CONF, workdir, port=port)


def cache_app_server(workdir, port):
    """The app of the cache benchmark (CACHE_APP_NGINX_CONF); its access.log counts `/`."""
    return _nginx("cache-app", CACHE_APP_NGINX_CONF, workdir, port=port)


def nginx_proxy(workdir, port, app_port):
    return _nginx("nginx", PROXY_NGINX_CONF, workdir, port=port, app_port=app_port)


def haproxy_proxy(workdir, port, app_port):
    workdir = Path(workdir)
    conf = _write(workdir / "haproxy.cfg", HAPROXY_CONF.substitute(dir=workdir, port=port, app_port=app_port))
    # -db: foreground, no master process; the one process is the one worker.
    return PeerProcess("haproxy", ["haproxy", "-db", "-f", str(conf)], workdir, port)


def sidecar_command():
    """The project's venv entry point when it is built; otherwise this interpreter."""
    venv_bin = REPO_ROOT / ".venv" / "bin"
    if (venv_bin / "sidecar").exists():
        return [str(venv_bin / "sidecar")]
    if (venv_bin / "python").exists():
        return [str(venv_bin / "python"), "-m", "sidecar.cli"]
    return [sys.executable, "-m", "sidecar.cli"]


# The sidecar with wrk's traffic on its outbound listener, sent by an outbound route to a
# service whose one endpoint is the app: the path of a request to a configured service
# (load balancing, circuit breaker, retry policy), instead of the inbound app pool.
SIDECAR_SERVICE_CONF = Template("""\
workers: 1
drain_timeout: 1s
interception: {mode: "off"}
inbound: {listen: "127.0.0.1:$outbound_port", app: "127.0.0.1:$app_port"}
outbound: {listen: "127.0.0.1:$port"}
services:
  - name: app
    endpoints: ["127.0.0.1:$app_port"]
    retries: {attempts: 2, on: [connect-failure, reset, 503]}
routes:
  - {name: to-app, direction: outbound, match: {path_prefix: /}, service: app}
admin: {listen: "127.0.0.1:$admin_port"}
telemetry:
  metrics: {listen: "127.0.0.1:$metrics_port"}
  health: {listen: "127.0.0.1:$health_port"}
  access_log: {path: null}
""")


def sidecar_proxy(workdir, port, app_port, command=None, extra=None, via_service=False):
    """The sidecar; `extra` (a mapping) is merged into its config, key by key. With
    `via_service`, wrk's requests take the outbound path to a configured service."""
    workdir = Path(workdir)
    outbound_port, admin_port, metrics_port, health_port = free_ports(4)
    text = (SIDECAR_SERVICE_CONF if via_service else SIDECAR_CONF).substitute(
        port=port,
        app_port=app_port,
        outbound_port=outbound_port,
        admin_port=admin_port,
        metrics_port=metrics_port,
        health_port=health_port,
    )
    if extra:
        import yaml
        text = yaml.safe_dump(merge_config(yaml.safe_load(text), extra), sort_keys=False)
    conf = _write(workdir / "sidecar.yaml", text)
    cmd = list(command or sidecar_command()) + ["run", "-c", str(conf)]
    return PeerProcess("sidecar", cmd, workdir, port)


def merge_config(base, extra):
    """`extra` merged into `base`: mappings key by key, anything else replaced."""
    out = dict(base)
    for key, value in extra.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = merge_config(out[key], value)
        else:
            out[key] = value
    return out


def otlp_sink(workdir, port):
    """An OTLP/HTTP collector stand-in (benchmarks.otlp_sink) for runs with tracing."""
    cmd = [sys.executable, "-m", "benchmarks.otlp_sink", str(port)]
    return PeerProcess("otlp-sink", cmd, workdir, port)


def _first_line(cmd):
    try:
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired) as e:
        return f"unavailable ({e})"
    text = (out.stdout + out.stderr).strip()
    return text.splitlines()[0] if text else "unknown"


def tool_versions():
    """Versions of the peers' programs, for the machine description. The sidecar is
    identified by the commit it was run from."""
    commit = _first_line(["git", "-C", str(REPO_ROOT), "describe", "--always", "--dirty"])
    return {
        "nginx": _first_line(["nginx", "-v"]).removeprefix("nginx version: "),
        "haproxy": " ".join(_first_line(["haproxy", "-v"]).split()[:3]),  # without date and URL
        "sidecar": f"git {commit}",
    }
