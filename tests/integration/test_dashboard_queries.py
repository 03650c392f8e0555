"""The Grafana dashboard (deploy/grafana/sidecar-dashboard.json) asks only for metrics the
sidecar really exports: every metric name in its queries is in a live sidecar's /metrics
(or, for the kernel panels, one of SPEC's kernel metrics, which the kernel collectors
export when interception is on)."""
import json
import os
import re

from sidecar.metrics import KERNEL_METRIC_NAMES
from tests.support.admin import scrape
from tests.support.servers import HttpApp
from tests.support.sidecar_process import ROOT, SidecarProcess

DASHBOARD = os.path.join(ROOT, "deploy", "grafana", "sidecar-dashboard.json")


def exported_names(text):
    names = set()
    for line in text.splitlines():
        m = re.match(r"# TYPE (\S+) (\S+)", line)
        if m:
            name, kind = m.groups()
            names.add(name)
            if kind == "counter":
                names.add(name if name.endswith("_total") else name + "_total")
            elif kind == "histogram":
                names.update((name + "_bucket", name + "_count", name + "_sum"))
            elif kind == "info":
                names.add(name if name.endswith("_info") else name + "_info")
        elif line and not line.startswith("#"):
            names.add(re.match(r"[a-zA-Z_:][a-zA-Z0-9_:]*", line).group(0))
    return names


def dashboard_queries():
    with open(DASHBOARD) as f:
        dash = json.load(f)
    exprs = [t["expr"] for p in dash["panels"] for t in p.get("targets", [])]
    exprs += [v["definition"] for v in dash["templating"]["list"] if v.get("definition")]
    return dash, exprs


def test_every_metric_the_dashboard_queries_is_exported():
    dash, exprs = dashboard_queries()
    assert len(exprs) >= 20
    used = set()
    for expr in exprs:
        used.update(re.findall(r"\b((?:sidecar|istio)_[a-z0-9_]+)\b", expr))
    with HttpApp() as app, SidecarProcess(app=app.address) as sc:
        _, text = scrape(sc)
    exported = exported_names(text)
    missing = sorted(n for n in used if n not in exported and n not in KERNEL_METRIC_NAMES)
    assert not missing, missing
    # The golden signals, kernel traffic and acceleration all have panels.
    for needed in ("sidecar_requests_total", "sidecar_request_duration_seconds_bucket",
                   "sidecar_connections_active", "sidecar_kernel_bytes_total",
                   "sidecar_kernel_drops_total", "sidecar_kernel_accelerated_sockets"):
        assert needed in used, needed
    titles = [p["title"] for p in dash["panels"]]
    assert len(set(titles)) == len(titles)
