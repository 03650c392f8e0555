"""The admin API (SPEC.md, "Admin") and the health listener, against a real `sidecar run`:
readiness, config dump with secrets redacted, stats, log level, reload, drain,
quitquitquit, `sidecar wait-ready`; mutations refuse GET."""
import json
import os
import subprocess
import sys
import threading
import time

import pytest

from tests.support.admin import admin_json, call
from tests.support.http_client import RawClient
from tests.support.servers import HttpApp
from tests.support.sidecar_process import ROOT, SidecarProcess


def _get(address, path="/headers"):
    with RawClient(address, timeout=5) as c:
        c.send(b"GET %s HTTP/1.1\r\nHost: admin.test\r\nConnection: close\r\n\r\n" % path.encode())
        return c.read_response()[0]


def _wait_for(predicate, timeout, what):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError("timed out waiting for %s" % what)


@pytest.fixture
def app():
    with HttpApp() as a:
        yield a


def test_readyz_healthz_and_the_probe_listener_answer_ready(app):
    with SidecarProcess(app=app.address, workers=2) as sc:
        _wait_for(lambda: call(sc, "admin", "/readyz")[0] == 200, 10, "ready")
        status, _, body = call(sc, "admin", "/readyz")
        assert body.decode().startswith("ready") and "listeners: ok" in body.decode()
        assert call(sc, "admin", "/healthz")[0] == 200
        assert call(sc, "health", "/healthz/ready")[0] == 200


def test_mutations_answer_405_to_get_and_unknown_paths_404(app):
    with SidecarProcess(app=app.address) as sc:
        for path in ("/reload", "/drain", "/quitquitquit"):
            status, headers, _ = call(sc, "admin", path)
            assert status == 405 and "POST" in headers["Allow"], (path, status)
        assert call(sc, "admin", "/nothing")[0] == 404
        assert sc.proc.poll() is None
        assert _get(sc.inbound) == 200


def test_config_dump_is_the_running_config_with_secrets_redacted(app):
    extra = {
        "tls": {"cert": "/etc/sidecar/cert.pem", "key": "/etc/sidecar/key.pem", "ca": "/etc/sidecar/ca.pem"},
        "routes": [{"name": "api", "direction": "inbound", "match": {"path_prefix": "/api/"},
                    "headers": {"request": {"set": {"authorization": "Bearer s3cret", "x-env": "prod"}}}}],
    }
    with SidecarProcess(app=app.address, extra=extra) as sc:
        dump = admin_json(sc, "/config_dump")
        assert dump["generation"] >= 1 and dump["source"] == sc.config_path
        cfg = dump["config"]
        assert cfg["inbound"]["app"] == "%s:%d" % app.address
        assert cfg["tls"]["key"] == "[redacted]" and cfg["tls"]["cert"] == "/etc/sidecar/cert.pem"
        edits = cfg["routes"][0]["headers"]["request"]["set"]
        assert edits == {"authorization": "[redacted]", "x-env": "prod"}
        assert "s3cret" not in json.dumps(dump)


def test_stats_counts_requests_and_workers(app):
    with SidecarProcess(app=app.address, workers=2) as sc:
        for _ in range(6):
            assert _get(sc.inbound) == 200
        stats = admin_json(sc, "/stats")
        assert [w["ready"] for w in stats["workers"]] == [True, True]
        rows = [r for r in stats["requests"] if r["direction"] == "inbound"]
        assert sum(r["requests"] for r in rows) == 6
        assert sum(r["codes"].get("2xx", 0) for r in rows) == 6
        assert stats["connections"]["inbound"]["http"]["total"] >= 6


def test_logging_get_and_put_change_the_level_of_manager_and_workers(app):
    with SidecarProcess(app=app.address) as sc:
        assert admin_json(sc, "/logging") == {"level": "info"}
        assert call(sc, "admin", "/logging?level=loud", "PUT")[0] == 400
        status, _, body = call(sc, "admin", "/logging?level=debug", "PUT")
        assert status == 200 and json.loads(body) == {"level": "debug"}
        assert admin_json(sc, "/logging") == {"level": "debug"}
        # The manager now logs at debug: each admin request is a debug line.
        call(sc, "admin", "/healthz")
        _wait_for(lambda: " DEBUG sidecar.httpd" in sc.log(), 5, "a debug line")


def test_post_reload_applies_a_good_config_and_refuses_a_bad_one_with_its_errors(app):
    with HttpApp() as new_app, SidecarProcess(app=app.address, workers=2) as sc:
        sc.config["inbound"]["app"] = "%s:%d" % new_app.address
        sc.write_config()
        status, _, body = call(sc, "admin", "/reload", "POST")
        result = json.loads(body)
        assert status == 200 and result["ok"] and result["generation"] >= 2, result
        assert _get(sc.inbound) == 200 and len(new_app.requests) == 1

        with open(sc.config_path, "a") as f:
            f.write("workerz: 3\n")
        status, _, body = call(sc, "admin", "/reload", "POST")
        result = json.loads(body)
        assert status == 400 and not result["ok"]
        assert "workerz (line" in result["error"] and "did you mean 'workers'" in result["error"]
        assert _get(sc.inbound) == 200 and len(new_app.requests) == 2


def test_file_watch_reloads_a_configmap_style_data_symlink_swap(app):
    """Kubernetes mounts a ConfigMap as `sidecar.yaml -> ..data/sidecar.yaml`, with `..data`
    a symlink to a timestamped directory that the kubelet swaps atomically."""
    with HttpApp() as new_app:
        sc = SidecarProcess(app=app.address)
        import yaml
        base = sc.dir

        def publish(name, config):
            os.mkdir(os.path.join(base, name))
            with open(os.path.join(base, name, "sidecar.yaml"), "w") as f:
                yaml.safe_dump(config, f)
            tmp = os.path.join(base, "..data_tmp")
            os.symlink(name, tmp)
            os.rename(tmp, os.path.join(base, "..data"))     # the atomic swap

        publish("..2024_01_01_v1", sc.config)
        os.symlink("..data/sidecar.yaml", sc.config_path)
        sc.write_config = lambda: None
        with sc:
            assert _get(sc.inbound) == 200 and len(app.requests) == 1
            publish("..2024_01_01_v2", dict(sc.config, inbound=dict(sc.config["inbound"],
                                                                    app="%s:%d" % new_app.address)))
            _wait_for(lambda: "reload applied" in sc.log(), 10, "the watched file to reload")
            assert _get(sc.inbound) == 200 and len(new_app.requests) == 1


def test_drain_turns_readyz_503_and_closes_listeners_but_the_manager_stays_up(app):
    with SidecarProcess(app=app.address, workers=2) as sc:
        _wait_for(lambda: call(sc, "admin", "/readyz")[0] == 200, 10, "ready")
        assert call(sc, "admin", "/drain", "POST")[0] == 200
        status, _, body = call(sc, "admin", "/readyz")
        assert status == 503 and b"draining" in body
        assert call(sc, "health", "/healthz/ready")[0] == 503

        def refused():
            try:
                _get(sc.inbound)
                return False
            except ConnectionRefusedError:
                return True
        _wait_for(refused, 10, "the listeners to close")
        assert sc.proc.poll() is None and call(sc, "admin", "/healthz")[0] == 200


def test_quitquitquit_drains_and_exits_0(app):
    sc = SidecarProcess(app=app.address, workers=2).start()
    try:
        assert call(sc, "admin", "/quitquitquit", "POST")[0] == 200
        assert sc.proc.wait(10) == 0
        assert "sidecar stopped" in sc.log()
    finally:
        sc.stop()


def test_wait_ready_exits_0_once_the_sidecar_is_ready_and_1_on_timeout(app):
    sc = SidecarProcess(app=app.address, workers=2)
    sc.write_config()
    cmd = [sys.executable, "-m", "sidecar.cli", "wait-ready", "-c", sc.config_path, "--timeout", "30"]
    waiter = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        time.sleep(0.5)
        assert waiter.poll() is None          # nothing listens yet: it waits
        sc.start()
        out, err = waiter.communicate(timeout=30)
        assert waiter.returncode == 0, err
        assert call(sc, "health", "/healthz/ready")[0] == 200
    finally:
        waiter.kill()
        sc.stop()
    r = subprocess.run(cmd[:-1] + ["0.5"], cwd=ROOT, capture_output=True, text=True, timeout=30)
    assert r.returncode == 1 and "not ready" in r.stderr


def test_sidecar_stats_prints_tables_of_the_running_sidecar(app):
    with SidecarProcess(app=app.address) as sc:
        for _ in range(3):
            assert _get(sc.inbound) == 200
        r = subprocess.run([sys.executable, "-m", "sidecar.cli", "stats", "-c", sc.config_path],
                           cwd=ROOT, capture_output=True, text=True, timeout=30,
                           env=dict(os.environ, COLUMNS="200"))
        assert r.returncode == 0, r.stderr
        assert "Requests by route and service" in r.stdout
        row = [l for l in r.stdout.splitlines() if "inbound" in l and "_app" in l]
        assert row and " 3 " in row[0], r.stdout


def test_reload_right_after_start_reaches_workers_still_starting():
    """A reload that comes while some workers are still starting (they got the config of
    the moment they were spawned) is applied to them too before it is reported applied:
    every request after the answer reaches the new app, whichever worker takes it."""
    with HttpApp() as old_app, HttpApp() as new_app:
        sc = SidecarProcess(app=old_app.address, workers=4)
        with sc:
            sc.config["inbound"]["app"] = "%s:%d" % new_app.address
            sc.write_config()
            status, _, body = call(sc, "admin", "/reload", "POST", timeout=30)
            assert status == 200 and json.loads(body)["ok"], body
            deadline = time.monotonic() + 3.0
            while time.monotonic() < deadline:      # while the other workers come up
                assert _get(sc.inbound) == 200
            assert old_app.requests == [] and len(new_app.requests) > 10
