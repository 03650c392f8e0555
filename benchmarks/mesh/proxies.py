"""What runs in the pods: the server app, the TCP sink, and each row's pair of proxies.

- app: nginx in the server pod on 0.0.0.0:8080, 1 worker, keep-alive, no access log:
  `/0` answers an empty 200, `/1k` and `/64k` serve files of 1 KiB and 64 KiB from the page
  cache (open_file_cache), `/` answers `ok\\n` (ready probes).
- sink: `loadgen tcp-sink` on 0.0.0.0:5432 in the server pod (the passthrough scenario).
- nginx and HAProxy as sidecars: one worker each, in both pods. They cannot recover a
  redirected connection's original destination, so they are what an nginx or HAProxy
  "sidecar" is in practice: fixed reverse proxies. The client pod's proxy sends
  everything it captures to the known server address (10.231.0.2:8080, keep-alive pool),
  the server pod's to the local app; opaque TCP has its own listeners (nginx `stream`,
  HAProxy `mode tcp`) on 15002/15007 with their own REDIRECT rules (topology.Mesh.intercept).
- bpf-sidecar: `sidecar run -c FILE` in both pods, 1 worker, the same config on both sides
  (inbound to the app, outbound to the original destination), access log off as for the
  peers, its own interception (`interception.mode: iptables` on the pod's app cgroup and
  interface unless the scenario says `ebpf`); a scenario may overlay keys (interception
  mode, acceleration, routes, TLS).

Each proxy gets ready-probed from inside its pod; the server side starts first, so a client
proxy's probe goes end to end.
"""
import copy
import signal

import yaml

from .. import peers
from .topology import (
    APP_PORT, INBOUND_PORT, OUTBOUND_PORT, SERVER_IP, TCP_INBOUND_PORT, TCP_OUTBOUND_PORT, TCP_PORT,
    http_status, tcp_accepts)

__all__ = ["PAYLOADS", "interception_mode", "sidecar_config", "start_app", "start_proxies", "write_sidecar_configs"]

# Response body per payload name, served by the app at /<name>.
PAYLOADS = {"0": 0, "1k": 1024, "64k": 65536}
STREAM_MODULE = "/usr/lib/nginx/modules/ngx_stream_module.so"

_NGINX_COMMON = """\
worker_processes 1;
pid {dir}/nginx.pid;
error_log {dir}/error.log warn;
events {{ worker_connections 4096; }}
"""

_NGINX_TEMP = """\
    access_log off;
    keepalive_timeout 65;
    keepalive_requests 1000000;
    client_body_temp_path {dir}/client_body;
    proxy_temp_path {dir}/proxy;
    fastcgi_temp_path {dir}/fastcgi;
    uwsgi_temp_path {dir}/uwsgi;
    scgi_temp_path {dir}/scgi;
"""

APP_CONF = _NGINX_COMMON + """\
http {{
""" + _NGINX_TEMP + """\
    default_type application/octet-stream;
    sendfile on;
    tcp_nopush on;
    open_file_cache max=16 inactive=1h;
    server {{
        listen 0.0.0.0:{port} backlog=4096;
        root {dir}/www;
        location = / {{ default_type text/plain; return 200 "ok\\n"; }}
        location = /0 {{ return 200 ""; }}
    }}
}}
"""

# nginx as a sidecar: an http proxy on the HTTP capture port, a stream proxy on the TCP one.
NGINX_SIDECAR_CONF = "load_module {stream_module};\n" + _NGINX_COMMON + """\
http {{
""" + _NGINX_TEMP + """\
    upstream app {{
        server {upstream};
        keepalive 256;
        keepalive_requests 1000000;
    }}
    server {{
        listen {listen} backlog=4096;
        location / {{
            proxy_pass http://app;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_set_header Host $http_host;
            # 64 KiB responses stay in memory (the default 8 x 4k would spill to a file).
            proxy_buffer_size 16k;
            proxy_buffers 8 16k;
        }}
    }}
}}
stream {{
    server {{
        listen {tcp_listen};
        proxy_pass {tcp_upstream};
        proxy_half_close on;
    }}
}}
"""

HAPROXY_SIDECAR_CONF = """\
# HAProxy as a sidecar. No `log` lines: no logging.
global
    nbthread 1
    maxconn 8192
    pidfile {dir}/haproxy.pid

defaults
    option http-keep-alive
    timeout connect 5s
    timeout client 60s
    timeout server 60s
    timeout http-keep-alive 60s

frontend http_capture
    mode http
    bind {listen}
    default_backend app

backend app
    mode http
    http-reuse always
    server app1 {upstream}

frontend tcp_capture
    mode tcp
    bind {tcp_listen}
    default_backend tcp_app

backend tcp_app
    mode tcp
    server tcp1 {tcp_upstream}
"""


def _write(path, text):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def start_app(mesh, loadgen_binary):
    """Starts nginx (the app) and the TCP sink in the server pod and waits for both."""
    pod = mesh.server
    app_dir = mesh.workdir / "app"
    for name, size in PAYLOADS.items():
        if size:
            _write(app_dir / "www" / name, "x" * (size - 1) + "\n")
    conf = _write(app_dir / "nginx.conf", APP_CONF.format(dir=app_dir, port=APP_PORT))
    app = mesh.peer("app", pod.server_command(_nginx_cmd(app_dir, conf)), APP_PORT,
                    lambda: pod.call(http_status, "127.0.0.1", APP_PORT))
    sink = mesh.peer("sink", pod.app_command([str(loadgen_binary), "tcp-sink", "--port", str(TCP_PORT)]),
                     TCP_PORT, lambda: pod.call(tcp_accepts, "127.0.0.1", TCP_PORT))
    for p in (app, sink):
        mesh.start(p)
    for p in (app, sink):
        p.wait_ready()
    return app, sink


def _nginx_cmd(workdir, conf):
    return ["nginx", "-p", f"{workdir}/", "-c", str(conf), "-e", str(workdir / "error.log"), "-g", "daemon off;"]


def _sides(mesh):
    """(pod, listen, upstream, tcp_listen, tcp_upstream) of the server side, then the client."""
    return [
        (mesh.server, f"0.0.0.0:{INBOUND_PORT}", f"127.0.0.1:{APP_PORT}",
         f"0.0.0.0:{TCP_INBOUND_PORT}", f"127.0.0.1:{TCP_PORT}"),
        (mesh.client, f"127.0.0.1:{OUTBOUND_PORT}", f"{SERVER_IP}:{APP_PORT}",
         f"127.0.0.1:{TCP_OUTBOUND_PORT}", f"{SERVER_IP}:{TCP_PORT}"),
    ]


def _probe_through(pod, port):
    return lambda: pod.call(http_status, "127.0.0.1", port)


def _nginx_pair(mesh):
    made = []
    for pod, listen, upstream, tcp_listen, tcp_upstream in _sides(mesh):
        d = mesh.workdir / f"nginx-{pod.role}"
        conf = _write(d / "nginx.conf", NGINX_SIDECAR_CONF.format(
            stream_module=STREAM_MODULE, dir=d, listen=listen, upstream=upstream,
            tcp_listen=tcp_listen, tcp_upstream=tcp_upstream))
        port = int(listen.rsplit(":", 1)[1])
        made.append(mesh.peer(f"nginx-{pod.role}", pod.sidecar_command(_nginx_cmd(d, conf)), port,
                              _probe_through(pod, port)))
    return made


def _haproxy_pair(mesh):
    made = []
    for pod, listen, upstream, tcp_listen, tcp_upstream in _sides(mesh):
        d = mesh.workdir / f"haproxy-{pod.role}"
        conf = _write(d / "haproxy.cfg", HAPROXY_SIDECAR_CONF.format(
            dir=d, listen=listen, upstream=upstream, tcp_listen=tcp_listen, tcp_upstream=tcp_upstream))
        port = int(listen.rsplit(":", 1)[1])
        # -db: foreground, no master process; the one process is the one worker.
        made.append(mesh.peer(f"haproxy-{pod.role}", pod.sidecar_command(["haproxy", "-db", "-f", str(conf)]),
                              port, _probe_through(pod, port)))
    return made


def _merge(base, extra):
    for key, value in (extra or {}).items():
        if isinstance(value, dict) and isinstance(base.get(key), dict):
            _merge(base[key], value)
        else:
            base[key] = value
    return base


def sidecar_config(pod, overlay=None):
    """The bpf-sidecar config of a pod (a dict), with the scenario's overlay merged in."""
    base = {
        "workload": {"name": f"bench-{pod.role}", "namespace": "bench"},
        "workers": 1,
        "drain_timeout": "1s",
        # The sidecar installs its own interception in its pod (the harness adds no rules
        # for it): iptables REDIRECT by default, eBPF where a row's overlay says so; the
        # app is what runs in the pod's app cgroup, inbound is what arrives on the pod's
        # interface. The sidecar itself runs in the pod's sidecar cgroup.
        "interception": {"mode": "iptables", "cgroup": pod.app_cgroup.path, "interface": pod.dev,
                         "instance": pod.sidecar_instance},
        "inbound": {"listen": f"0.0.0.0:{INBOUND_PORT}", "app": f"127.0.0.1:{APP_PORT}",
                    "tcp_passthrough_ports": [TCP_PORT]},
        "outbound": {"listen": f"127.0.0.1:{OUTBOUND_PORT}"},
        "admin": {"listen": "127.0.0.1:15000"},
        "telemetry": {
            "metrics": {"listen": "127.0.0.1:15090"},
            "health": {"listen": "127.0.0.1:15021"},
            "access_log": {"path": None},
        },
    }
    return _merge(base, copy.deepcopy(overlay or {}))


def write_sidecar_configs(mesh, overlay_for):
    """Writes each pod's sidecar config; returns {role: path}. overlay_for(pod) -> dict."""
    paths = {}
    for pod in (mesh.server, mesh.client):
        d = mesh.workdir / f"sidecar-{pod.role}"
        paths[pod.role] = _write(d / "sidecar.yaml", yaml.safe_dump(sidecar_config(pod, overlay_for(pod))))
    return paths


def interception_mode(config_path):
    """"ebpf", "ebpf + accelerate_local" or "iptables": the interception a written config asks for."""
    interception = yaml.safe_load(config_path.read_text())["interception"]
    return interception["mode"] + (" + accelerate_local" if interception.get("accelerate_local") else "")


def _sidecar_pair(mesh, config_paths, command):
    made = []
    for pod in (mesh.server, mesh.client):
        cmd = list(command or peers.sidecar_command()) + ["run", "-c", str(config_paths[pod.role])]
        # Ready once its admin API says so (its listeners are bound by then).
        made.append(mesh.peer(f"sidecar-{pod.role}", pod.sidecar_command(cmd), 15000,
                              lambda pod=pod: pod.call(http_status, "127.0.0.1", 15000, "/readyz"),
                              stop_signal=signal.SIGTERM))
    return made


def start_proxies(mesh, proxy, sidecar_paths=None, sidecar_cmd=None):
    """Starts the row's proxy in both pods (server side first) and waits for each; returns
    [server_peer, client_peer]. Raises peers.PeerError when one does not come up."""
    if proxy == "nginx":
        pair = _nginx_pair(mesh)
    elif proxy == "haproxy":
        pair = _haproxy_pair(mesh)
    elif proxy == "sidecar":
        pair = _sidecar_pair(mesh, sidecar_paths, sidecar_cmd)
    else:
        raise ValueError(f"unknown proxy {proxy!r}")
    for peer in pair:
        mesh.start(peer)
        peer.wait_ready()
    return pair
