"""A real Prometheus (Debian's `prometheus`) scrapes the sidecar: the target is up and
sidecar_requests_total has SPEC's labels and the count of the requests sent, read back
through Prometheus' HTTP query API. Prometheus runs on a free port with a temp dir and is
stopped (and its dir removed) by the test."""
import json
import os
import shutil
import subprocess
import tempfile
import time
import urllib.parse
import urllib.request

from tests.conftest import require_privileges
from tests.support.http_client import RawClient
from tests.support.ports import free_port, wait_for_port
from tests.support.servers import HttpApp
from tests.support.sidecar_process import SidecarProcess

REQUESTS = 12


class Prometheus:
    def __init__(self, target):
        self.dir = tempfile.mkdtemp(prefix="sidecar-prometheus-")
        self.port = free_port()
        with open(os.path.join(self.dir, "prometheus.yml"), "w") as f:
            f.write("global: {scrape_interval: 1s, evaluation_interval: 1s}\n"
                    "scrape_configs:\n"
                    "  - job_name: sidecar\n"
                    "    static_configs: [{targets: ['%s']}]\n" % target)
        self.proc = None

    def __enter__(self):
        self.log = open(os.path.join(self.dir, "prometheus.log"), "wb")
        self.proc = subprocess.Popen(
            ["prometheus", "--config.file", os.path.join(self.dir, "prometheus.yml"),
             "--storage.tsdb.path", os.path.join(self.dir, "data"),
             "--web.listen-address", "127.0.0.1:%d" % self.port],
            stdout=self.log, stderr=subprocess.STDOUT, start_new_session=True)
        wait_for_port("127.0.0.1", self.port, timeout=30, proc=self.proc)
        # The port opens before the storage is ready; /-/ready says when queries work.
        deadline = time.monotonic() + 30
        while True:
            try:
                with urllib.request.urlopen("http://127.0.0.1:%d/-/ready" % self.port, timeout=2) as r:
                    if r.status == 200:
                        return self
            except OSError:         # URLError and HTTPError (503 while starting) included
                pass
            assert time.monotonic() < deadline, "prometheus not ready"
            time.sleep(0.2)

    def __exit__(self, *exc):
        self.proc.terminate()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self.log.close()
        shutil.rmtree(self.dir, ignore_errors=True)

    def query(self, expr):
        url = "http://127.0.0.1:%d/api/v1/query?%s" % (self.port, urllib.parse.urlencode({"query": expr}))
        with urllib.request.urlopen(url, timeout=5) as r:
            body = json.loads(r.read())
        assert body["status"] == "success", body
        return body["data"]["result"]

    def wait_for(self, expr, predicate, timeout=30):
        deadline = time.monotonic() + timeout
        result = None
        while time.monotonic() < deadline:
            result = self.query(expr)
            if predicate(result):
                return result
            time.sleep(0.5)
        raise AssertionError("%s never matched: %s" % (expr, result))


def test_prometheus_scrapes_the_sidecar_and_sees_the_requests_with_spec_labels():
    require_privileges(root=False, tools=("prometheus",))
    with HttpApp() as app, SidecarProcess(app=app.address, workers=2) as sc:
        for _ in range(REQUESTS):
            with RawClient(sc.inbound, timeout=5) as c:
                c.send(b"GET /headers HTTP/1.1\r\nHost: prom.test\r\nConnection: close\r\n\r\n")
                assert c.read_response()[0] == 200
        with Prometheus(sc.config["telemetry"]["metrics"]["listen"]) as prom:
            up = prom.wait_for('up{job="sidecar"}', lambda r: r and r[0]["value"][1] == "1")
            assert len(up) == 1
            series = prom.wait_for('sidecar_requests_total{job="sidecar",code="200"}',
                                   lambda r: r and float(r[0]["value"][1]) == REQUESTS)
            assert len(series) == 1
            labels = series[0]["metric"]
            assert {k: labels[k] for k in ("direction", "route", "service", "method", "code",
                                           "response_flags")} == {
                "direction": "inbound", "route": "_none", "service": "_app", "method": "GET",
                "code": "200", "response_flags": "-"}
            count = prom.query('sum(sidecar_request_duration_seconds_count{job="sidecar"})')
            assert float(count[0]["value"][1]) == REQUESTS
