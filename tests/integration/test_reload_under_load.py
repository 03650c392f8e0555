"""Reload under load loses no request: wrk drives keep-alive traffic through the sidecar
while the config is reloaded again and again (POST /reload, alternating two apps and a
200-route table), and wrk counts zero errors of any kind."""
import json
import shutil
import threading
import time

import pytest

from benchmarks.wrk import run_wrk
from tests.conftest import require_privileges
from tests.support.admin import call
from tests.support.servers import HttpApp
from tests.support.sidecar_process import SidecarProcess


def routes(n, tag):
    return [{"name": "r%d-%s" % (i, tag), "direction": "inbound",
             "match": {"path_prefix": "/p%d/" % i}} for i in range(n)]


def test_repeated_reloads_during_wrk_load_fail_no_request():
    require_privileges(root=False, tools=("wrk",))
    with HttpApp() as app_a, HttpApp() as app_b, SidecarProcess(app=app_a.address, workers=2) as sc:
        apps = [app_a, app_b]
        results = []
        stop = threading.Event()

        def reloader():
            i = 0
            while not stop.is_set():
                i += 1
                sc.config["inbound"]["app"] = "%s:%d" % apps[i % 2].address
                sc.config["routes"] = routes(200, i % 3)
                sc.write_config()
                status, _, body = call(sc, "admin", "/reload", "POST", timeout=30)
                results.append((status, json.loads(body)))
                time.sleep(0.1)

        thread = threading.Thread(target=reloader, daemon=True)
        thread.start()
        try:
            wrk, _ = run_wrk("http://%s:%d/headers" % sc.inbound, threads=2, connections=8, duration_s=4)
        finally:
            stop.set()
            thread.join(30)

        assert len(results) >= 5, "too few reloads during the load: %d" % len(results)
        assert all(status == 200 and r["ok"] for status, r in results), results
        assert wrk.requests >= 100, wrk.to_dict()
        assert wrk.errors == 0, (wrk.to_dict(), sc.log()[-3000:])
        # Both apps served: the reloads took effect while the load ran.
        assert app_a.requests and app_b.requests
        assert "reload refused" not in sc.log()
