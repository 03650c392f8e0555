"""The demo's two-pod mesh: what it builds, how the sidecars are started, how it is removed.

    pod A  netns sc-demo-<tag>-a-<random>          pod B  netns sc-demo-<tag>-b-<random>
           10.240.0.1                                     10.240.0.2
      cgroup sc-demo-<tag>-a-<random>/               cgroup sc-demo-<tag>-b-<random>/
        app/      the client app (as nobody)           app/      nginx :8080
        sidecar/  `sidecar run` (outbound)             sidecar/  `sidecar run` (inbound)
                        <------------- veth ------------->

The namespaces, cgroups and veth pair are `sidecar.netns_topology.Pod`s (shared with the
tests and the mesh benchmark). Each sidecar installs its own interception in its pod: in
eBPF mode connect/sockops programs on its pod's app cgroup, the SO_ORIGINAL_DST program on
its own cgroup and TC steering on its pod's veth end; in iptables mode REDIRECT chains in
its pod's namespace. Both run with `interception.fail: open`, so a sidecar that cannot
intercept still starts, and its /stats says why (`interception.state` "fail_open" and
`interception.reason`): the demo then starts both again in iptables mode. Their BPF state
and chains are named by `interception.instance`, demo-<tag>-a and demo-<tag>-b.

`close()` removes everything, in an order that lets each part clean up after itself:
the client, then the sidecars (SIGTERM: they drain, detach their programs and delete
their rules), any BPF instance a killed sidecar left pinned, nginx, the namespaces (with
whatever still runs in them) and the cgroups. `leftovers()` then looks for each of those
again, with the system's own view (ip netns, the cgroup tree, bpffs, /proc).
"""
import contextlib
import http.client
import json
import os
import secrets
import shutil
import signal
import subprocess
import sys
import time

import yaml

from sidecar.bpf import BPFFS_ROOT
from sidecar.bpf.cleanup import InstanceInUse, cleanup_instance
from sidecar.netns_topology import Pod, as_app, kill_process_group, link_pods

__all__ = ["APP_PORT", "DemoMesh", "SERVER_IP", "StartError"]

CLIENT_IP, SERVER_IP = "10.240.0.1", "10.240.0.2"
APP_PORT = 8080
APP_UID = 65534                    # nobody: the client app's user
ADMIN, METRICS = ("127.0.0.1", 15000), ("127.0.0.1", 15090)
READY_TIMEOUT_S = 45.0             # two loaders compiling at once on a busy 2-core machine
STOP_TIMEOUT_S = 10.0
SOURCE_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

NGINX_CONF = """\
worker_processes 1;
daemon off;
pid {dir}/nginx.pid;
error_log {dir}/nginx-error.log warn;
events {{ worker_connections 1024; }}
http {{
    access_log off;
    keepalive_requests 1000000;
    client_body_temp_path {dir}/nginx-client-body;
    proxy_temp_path {dir}/nginx-proxy;
    fastcgi_temp_path {dir}/nginx-fastcgi;
    uwsgi_temp_path {dir}/nginx-uwsgi;
    scgi_temp_path {dir}/nginx-scgi;
    server {{
        listen 0.0.0.0:{port};
        location / {{ default_type text/plain; return 200 "hello from pod B\\n"; }}
    }}
}}
"""


class StartError(RuntimeError):
    """Something of the mesh did not come up (the message says what, with its log)."""


def _http_get(address, path, timeout=3.0):
    """(status, body bytes) of a GET to address (host, port): run inside a pod (Pod.call)."""
    conn = http.client.HTTPConnection(*address, timeout=timeout)
    try:
        conn.request("GET", path)
        resp = conn.getresponse()
        return resp.status, resp.read()
    finally:
        conn.close()


def _tail(path, lines=15):
    try:
        with open(path, errors="replace") as f:
            return "".join(f.readlines()[-lines:]).rstrip()
    except OSError:
        return "(no log)"


class Sidecar:
    """One pod's `sidecar run`: its config, process and log."""

    def __init__(self, pod, role, workdir, instance):
        self.pod = pod
        self.role = role                    # "outbound" (pod A) or "inbound" (pod B)
        self.instance = instance            # interception.instance: its BPF state, its chains
        self.config_path = os.path.join(workdir, "sidecar-%s.yaml" % instance)
        self.log_path = os.path.join(workdir, "sidecar-%s.log" % instance)
        self.proc = None
        self.config = None

    def write_config(self, mode, accelerate):
        interception = {"mode": mode, "cgroup": self.pod.app_cgroup.path, "interface": self.pod.dev,
                        "instance": self.instance, "fail": "open"}
        if mode == "ebpf":
            interception["accelerate_local"] = accelerate
        self.config = {
            "workload": {"name": "demo-" + self.instance, "namespace": "demo"},
            "workers": 1,
            "drain_timeout": "1s",
            "interception": interception,
            "inbound": {"listen": "0.0.0.0:15006", "app": "127.0.0.1:%d" % APP_PORT},
            "outbound": {"listen": "127.0.0.1:15001"},
            "admin": {"listen": "%s:%d" % ADMIN},
            "telemetry": {"metrics": {"listen": "%s:%d" % METRICS},
                          "health": {"listen": "127.0.0.1:15021"},
                          "access_log": {"path": None}},
        }
        with open(self.config_path, "w") as f:
            yaml.safe_dump(self.config, f)

    def start(self):
        cmd = [sys.executable, "-m", "sidecar.cli", "run", "-c", self.config_path]
        with open(self.log_path, "ab") as log:
            self.proc = self.pod.ns.popen(cmd, cgroup=self.pod.sidecar_cgroup, cwd=SOURCE_ROOT,
                                          stdout=log, stderr=subprocess.STDOUT)

    def admin(self, path):
        """(status, body) of an admin API GET, made inside the pod."""
        return self.pod.call(_http_get, ADMIN, path)

    def stats(self):
        status, body = self.admin("/stats")
        if status != 200:
            raise StartError("the %s sidecar's /stats answered %d" % (self.role, status))
        return json.loads(body)

    def metrics_text(self):
        status, body = self.pod.call(_http_get, METRICS, "/metrics")
        return body.decode(errors="replace") if status == 200 else ""

    def wait_ready(self, deadline):
        last = None
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise StartError("the %s sidecar exited with %s:\n%s" % (
                    self.role, self.proc.returncode, _tail(self.log_path)))
            try:
                status, body = self.admin("/readyz")
                if status == 200:
                    return
                last = body.decode(errors="replace").strip()
            except OSError as e:
                last = str(e)
            time.sleep(0.1)
        raise StartError("the %s sidecar was not ready after %.0f s (%s):\n%s" % (
            self.role, READY_TIMEOUT_S, last, _tail(self.log_path)))

    def stop(self):
        """SIGTERM (drain; the sidecar removes its interception), then the whole group."""
        if self.proc is None:
            return
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                pass
        kill_process_group(self.proc)
        with contextlib.suppress(ValueError):
            self.pod.ns.procs.remove(self.proc)
        self.proc = None


class DemoMesh:
    """Pod A (client app + outbound sidecar) and pod B (nginx + inbound sidecar)."""

    def __init__(self, workdir):
        self.workdir = workdir
        self.tag = secrets.token_hex(3)
        self.a = Pod("sc-demo-%s-a-" % self.tag, "sc-demo-%s-a-" % self.tag, ip=CLIENT_IP)
        self.b = Pod("sc-demo-%s-b-" % self.tag, "sc-demo-%s-b-" % self.tag, ip=SERVER_IP)
        self.sidecars = [Sidecar(self.a, "outbound", workdir, "demo-%s-a" % self.tag),
                         Sidecar(self.b, "inbound", workdir, "demo-%s-b" % self.tag)]
        self.nginx = None
        self.client = None
        self.pids = []                      # every process started, for leftovers()

    # -- building -------------------------------------------------------------------------

    def build(self):
        """Namespaces, cgroups, the veth pair, and nginx serving in pod B."""
        self.a.create()
        self.b.create()
        link_pods(self.a, self.b)
        conf = os.path.join(self.workdir, "nginx.conf")
        with open(conf, "w") as f:
            f.write(NGINX_CONF.format(dir=self.workdir, port=APP_PORT))
        self.nginx = self.b.ns.popen(
            ["nginx", "-p", self.workdir + "/", "-c", conf, "-e", os.path.join(self.workdir, "nginx-error.log")],
            cgroup=self.b.app_cgroup, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        self.pids.append(self.nginx.pid)
        deadline = time.monotonic() + 10
        while True:
            try:
                if self.b.call(_http_get, ("127.0.0.1", APP_PORT), "/")[0] == 200:
                    return
            except OSError:
                pass
            if self.nginx.poll() is not None or time.monotonic() > deadline:
                raise StartError("nginx did not start in pod B:\n%s" % _tail(
                    os.path.join(self.workdir, "nginx-error.log")))
            time.sleep(0.05)

    def start_sidecars(self, mode, accelerate):
        """Starts both sidecars with `mode` interception and waits until they are ready;
        returns None when both intercept, else the reason one of them cannot (they keep
        running without interception: the caller stops them)."""
        for sc in self.sidecars:
            sc.write_config(mode, accelerate)
            sc.start()
            self.pids.append(sc.proc.pid)
        deadline = time.monotonic() + READY_TIMEOUT_S
        for sc in self.sidecars:
            sc.wait_ready(deadline)
        for sc in self.sidecars:
            info = sc.stats().get("interception") or {}
            if info.get("state") != "active":
                return "pod %s: %s" % ("A" if sc.pod is self.a else "B",
                                       info.get("reason") or "interception is %s" % info.get("state"))
        return None

    def stop_sidecars(self):
        for sc in self.sidecars:
            sc.stop()

    def start_client(self, source_path, connections, duration):
        """The client app in pod A's app cgroup, as nobody, calling pod B's address; its
        stdout (one JSON line a second) is piped to the caller."""
        with open(source_path) as f:
            source = f.read()
        # The work directory as its last argument: every process of the demo is found by it.
        cmd = ["/usr/bin/python3", "-I", "-c", source, SERVER_IP, str(APP_PORT), str(connections),
               str(duration), self.workdir]
        self.client = self.a.ns.popen(as_app(cmd, APP_UID), cgroup=self.a.app_cgroup, cwd="/",
                                      stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        self.pids.append(self.client.pid)
        return self.client

    # -- removing -------------------------------------------------------------------------

    def close(self):
        """Removes everything built, in order; safe after a partial build and twice."""
        try:
            if self.client is not None:
                kill_process_group(self.client)
            self.stop_sidecars()
            for sc in self.sidecars:
                # A sidecar that had to be killed leaves its programs pinned: its owner is
                # gone now, so the instance is removed as `sidecar bpf cleanup` would.
                with contextlib.suppress(OSError, InstanceInUse):
                    cleanup_instance(sc.instance)
            if self.nginx is not None:
                kill_process_group(self.nginx)
        finally:
            for pod in (self.a, self.b):
                with contextlib.suppress(OSError, RuntimeError):
                    pod.close()
            shutil.rmtree(self.workdir, ignore_errors=True)

    def resources(self):
        """What the demo made, by the names the system knows it by."""
        return {
            "netns": [self.a.ns.name, self.b.ns.name],
            "cgroups": [self.a.cgroup.path, self.b.cgroup.path],
            "bpf": [os.path.join(BPFFS_ROOT, sc.instance) for sc in self.sidecars],
            "workdir": self.workdir,
        }

    def leftovers(self):
        """Anything of the demo still there after close(), as readable strings."""
        left = []
        names = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
        listed = {line.split()[0] for line in names.splitlines() if line.strip()}
        res = self.resources()
        left += ["network namespace %s" % n for n in res["netns"] if n in listed]
        left += ["cgroup %s" % c for c in res["cgroups"] if os.path.exists(c)]
        left += ["pinned BPF state %s" % p for p in res["bpf"] if os.path.exists(p)]
        if os.path.exists(self.workdir):
            left.append("directory %s" % self.workdir)
        for pid in self.pids:
            try:
                with open("/proc/%d/stat" % pid) as f:
                    state = f.read().rsplit(")", 1)[1].split()[0]
            except OSError:
                continue
            if state != "Z":
                left.append("process %d" % pid)
        return left
