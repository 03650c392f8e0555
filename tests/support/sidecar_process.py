"""Runs the real sidecar (`python -m sidecar.cli run -c FILE`) for a test."""
import os
import signal
import subprocess
import sys
import tempfile
import time

import yaml

from tests.support.ports import free_ports, wait_for_port

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


class SidecarProcess:
    """A sidecar with its own free ports. Use as a context manager; `.inbound` and
    `.outbound` are (host, port) of its listeners, `.log()` its output so far.

        with SidecarProcess(app=("127.0.0.1", app_port)) as sc:
            ...requests to sc.inbound...
    """

    def __init__(self, app=("127.0.0.1", 8080), workers=1, extra=None, listen_host="127.0.0.1"):
        # Five distinct port numbers, none the app's (a test may want the app's port
        # closed, so it is free too): the config refuses one port for two listeners, or
        # for a listener and the app, whatever their addresses.
        ports = free_ports(5) if listen_host == "127.0.0.1" else []
        while len(set(ports)) < 5 or app[1] in ports:
            ports = free_ports(2, listen_host) + free_ports(3)
        self.inbound = (listen_host, ports[0])
        self.outbound = (listen_host, ports[1])
        self.config = {
            "workers": workers,
            "drain_timeout": "2s",
            "interception": {"mode": "off"},
            "inbound": {"listen": "%s:%d" % self.inbound, "app": "%s:%d" % tuple(app)},
            "outbound": {"listen": "%s:%d" % self.outbound},
            "admin": {"listen": "127.0.0.1:%d" % ports[2]},
            "telemetry": {
                "metrics": {"listen": "127.0.0.1:%d" % ports[3]},
                "health": {"listen": "127.0.0.1:%d" % ports[4]},
                "access_log": {"path": None},
            },
        }
        for key, value in (extra or {}).items():
            if isinstance(value, dict) and isinstance(self.config.get(key), dict):
                self.config[key].update(value)
            else:
                self.config[key] = value
        self.dir = tempfile.mkdtemp(prefix="sidecar-test-")
        self.config_path = os.path.join(self.dir, "sidecar.yaml")
        self.log_path = os.path.join(self.dir, "sidecar.log")
        self.proc = None

    def write_config(self):
        """Writes the config atomically (a new file renamed over the old), as a config
        management tool would: the sidecar's file watch never sees half a file."""
        tmp = self.config_path + ".tmp"
        with open(tmp, "w") as f:
            yaml.safe_dump(self.config, f)
        os.replace(tmp, self.config_path)

    def start(self, timeout=15.0):
        self.write_config()
        self._log = open(self.log_path, "wb")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "sidecar.cli", "run", "-c", self.config_path],
            cwd=ROOT, stdout=self._log, stderr=subprocess.STDOUT, start_new_session=True)
        try:
            wait_for_port(*self.inbound, timeout=timeout, proc=self.proc)
            wait_for_port(*self.outbound, timeout=timeout, proc=self.proc)
        except Exception:
            self.stop()
            raise RuntimeError("sidecar did not start:\n" + self.log())
        self.wait_ready(timeout)
        return self

    def wait_ready(self, timeout=15.0):
        """Waits (at most `timeout`) for /healthz/ready: every worker listening. The first
        worker to bind opens the ports; the others may still be starting. Returns whether
        it became ready (a test of a sidecar that cannot be ready goes on regardless)."""
        import urllib.request
        url = "http://%s/healthz/ready" % self.config["telemetry"]["health"]["listen"]
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and self.proc.poll() is None:
            try:
                with urllib.request.urlopen(url, timeout=1) as r:
                    if r.status == 200:
                        return True
            except OSError:
                pass
            time.sleep(0.05)
        return False

    def worker_pids(self):
        """Pids of the worker processes (children of the manager)."""
        out = subprocess.run(["pgrep", "-P", str(self.proc.pid)], capture_output=True, text=True)
        return [int(p) for p in out.stdout.split()]

    def signal(self, sig):
        self.proc.send_signal(sig)

    def stop(self, timeout=10.0):
        """SIGTERM, wait; SIGKILL the whole process group if it hangs. Returns the exit code."""
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
        # Workers die with the manager; make sure of it.
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        self._log.close()
        return self.proc.returncode

    def log(self):
        try:
            with open(self.log_path, "rb") as f:
                return f.read().decode(errors="replace")
        except OSError:
            return ""

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()
        time.sleep(0)
