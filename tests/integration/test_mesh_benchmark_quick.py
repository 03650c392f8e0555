"""`python -m benchmarks.mesh --quick` builds two pods per row in network namespaces, measures
direct, the bpf-sidecar (its own iptables and eBPF interception), nginx and HAProxy end to
end, reports rows waiting for a feature as not available with a reason, writes JSON,
Markdown and PNGs, and leaves no process, namespace, cgroup, BPF instance or temp dir
behind, also when stopped with SIGTERM while its pods are up.

It takes about a minute and a half on 2 cores (one round of three 2 s loads over five
rows, and the pods of every row built and proven): the harness's smoke test, run once so
it cannot rot."""
import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from benchmarks.proc_stats import read_stat
from sidecar.bpf import BPFFS_ROOT
from sidecar.netns_topology import CGROUP2_ROOT
from tests.conftest import require_privileges

REPO_ROOT = Path(__file__).resolve().parents[2]
MEASURED = ("direct", "bpf-sidecar", "bpf-sidecar-ebpf", "nginx", "haproxy")
TIMEOUT_S = 240

pytestmark = [pytest.mark.privileged, pytest.mark.timeout(TIMEOUT_S + 60)]


def _run_quick_mesh(out_dir):
    proc = subprocess.Popen(
        [sys.executable, "-m", "benchmarks.mesh", "--quick", "--out", str(out_dir)],
        cwd=REPO_ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        output, _ = proc.communicate(timeout=TIMEOUT_S)
    except subprocess.TimeoutExpired:
        # SIGTERM, not SIGKILL: the harness removes its pods on the way out.
        proc.send_signal(signal.SIGTERM)
        output, _ = proc.communicate(timeout=60)
        pytest.fail(f"mesh benchmark did not finish in {TIMEOUT_S} s:\n{output}")
    return proc.returncode, output


@pytest.fixture(scope="module")
def quick_mesh(tmp_path_factory):
    require_privileges(root=True, netns=True,
                       tools=("ip", "nsenter", "setpriv", "iptables", "nginx", "haproxy", "wrk", "gcc", "openssl"))
    out_dir = tmp_path_factory.mktemp("mesh")
    returncode, output = _run_quick_mesh(out_dir)
    assert returncode == 0, output
    files = sorted(out_dir.glob("*-mesh.json"))
    assert len(files) == 1, f"expected one JSON result in {out_dir}, found {files}\n{output}"
    return out_dir, json.loads(files[0].read_text()), output


def test_writes_json_markdown_and_plots(quick_mesh):
    out_dir, document, _ = quick_mesh
    stem = document["json_file"].removesuffix(".json")
    assert (out_dir / f"{stem}.md").read_text() == (out_dir / "mesh-latest.md").read_text()
    for png in (f"{stem}-latency.png", f"{stem}-cpu.png"):
        assert (out_dir / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        assert png in document["plots"]
    assert document["machine"]["cores"] >= 1 and document["machine"]["kernel"]
    assert document["settings"]["rounds"] == 1


@pytest.mark.parametrize("row", MEASURED)
def test_measured_rows_have_throughput_cpu_latency_and_no_errors(quick_mesh, row):
    _, document, output = quick_mesh
    assert document["scenarios"][row]["status"] == "ok", document["scenarios"][row]["reason"]
    closed = document["summary"]["closed-c32-0"][row]
    opened = document["summary"]["open-2000"][row]
    tcp = document["summary"]["tcp"][row]
    for figures in (closed, opened, tcp):
        assert figures["error"] is None, f"{row}: {figures['error']}\n{output}"
        assert figures["errors"]["max"] == 0, output
    assert closed["requests_per_s"]["median"] > 0
    assert opened["requests_per_s"]["median"] > 1500          # asked for 2000/s
    assert opened["p999_us"]["median"] >= opened["p50_us"]["median"] > 0
    assert tcp["mb_per_s"]["median"] > 0
    if row == "direct":
        return
    assert closed["cpu_us_per_req"]["median"] > 0
    assert closed["cpu_client_us_per_req"]["median"] > 0 and closed["cpu_server_us_per_req"]["median"] > 0
    assert closed["rss_total_kb"]["median"] > 0
    assert opened["added_p50_us"] is not None
    assert tcp["cpu_ms_per_gb"]["median"] > 0


def test_rows_prove_their_interception(quick_mesh):
    _, document, _ = quick_mesh
    for row, mode in (("bpf-sidecar", "iptables"), ("bpf-sidecar-ebpf", "ebpf")):
        info = document["scenarios"][row]
        assert info["interception"] == f"the sidecar's own, {mode}"
        evidence = info["evidence"]
        assert evidence["sidecar_requests"]["client"] >= 20 and evidence["sidecar_requests"]["server"] >= 20
        assert evidence["kernel_redirects"]["client_outbound"] >= 1
        assert evidence["kernel_redirects"]["server_inbound"] >= 1
        for role in ("client", "server"):
            assert evidence["interception"][role].startswith(mode)
    # The eBPF row steers without a single nat rule; the iptables row with the sidecar's own.
    assert document["scenarios"]["bpf-sidecar-ebpf"]["evidence"]["interception"]["client"].endswith("no nat rules")
    for row in ("nginx", "haproxy"):
        assert document["scenarios"][row]["interception"] == "iptables REDIRECT installed by the harness"
        assert document["scenarios"][row]["evidence"]["redirected_connections"]["client_outbound"] >= 1


def test_rows_waiting_for_a_feature_are_not_available_with_a_reason(quick_mesh):
    _, document, _ = quick_mesh
    optional = {name: info for name, info in document["scenarios"].items() if info["waits_for"]}
    assert {"bpf-sidecar-ebpf-accel", "bpf-sidecar-policy", "bpf-sidecar-mtls"} <= set(optional)
    for name, info in optional.items():
        assert info["status"] in ("ok", "n.a."), f"{name}: {info['reason']}"
        if info["status"] == "n.a.":
            assert info["reason"]
    verdicts = {t["target"]: t["verdict"] for t in document["targets"]}
    assert set(verdicts) == {"cpu-vs-nginx", "cpu-vs-haproxy", "latency-vs-nginx", "passthrough-vs-direct",
                             "accel-vs-ebpf", "spliced-passthrough-vs-direct"}
    assert set(verdicts.values()) <= {"PASS", "FAIL", "n.a."}
    assert verdicts["passthrough-vs-direct"] in ("PASS", "FAIL")


def test_nothing_is_left_behind(quick_mesh):
    _, document, _ = quick_mesh
    assert not os.path.exists(document["temp_dir"])
    namespaces = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    recorded = 0
    for info in document["scenarios"].values():
        for ns in info["resources"].get("netns", []):
            assert ns not in namespaces
        for cgroup in info["resources"].get("cgroups", []):
            assert not os.path.exists(cgroup)
        for instance in info["resources"].get("sidecar_instances", []):
            assert not os.path.exists(os.path.join(BPFFS_ROOT, instance)), instance
        for identities in info["processes"].values():
            for pid, starttime in identities:
                recorded += 1
                st = read_stat(pid)
                assert st is None or st.starttime != starttime, f"pid {pid} still running"
    assert recorded >= 10


def _bench_namespaces():
    out = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    return {line.split()[0] for line in out.splitlines() if line.startswith("bm-")}


def _bench_cgroups():
    return {name for name in os.listdir(CGROUP2_ROOT) if name.startswith("bench-mesh-")}


def _descendants(pid):
    """pid and every process below it, from /proc's parent links."""
    parents = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open("/proc/%s/stat" % entry) as f:
                    parents[int(entry)] = int(f.read().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                pass
    out, todo = set(), [pid]
    while todo:
        p = todo.pop()
        out.add(p)
        todo.extend(c for c, parent in parents.items() if parent == p and c not in out)
    return out


def _namespaces_of(pids, names):
    """The namespaces among `names` that hold one of `pids` (other runs of the harness on
    this machine may be building their own bm-* pods at the same time)."""
    mine = set()
    for name in names:
        out = subprocess.run(["ip", "netns", "pids", name], capture_output=True, text=True).stdout
        if pids & {int(p) for p in out.split()}:
            mine.add(name)
    return mine


def test_sigterm_while_pods_are_up_removes_everything(quick_mesh, tmp_path):
    # Runs after the quick run (it needs the same tools); stops a second run once its
    # first pods are built, in the middle of building the next row.
    before, cgroups_before = _bench_namespaces(), _bench_cgroups()
    proc = subprocess.Popen(
        [sys.executable, "-m", "benchmarks.mesh", "--quick", "--only", "nginx", "--out", str(tmp_path)],
        cwd=REPO_ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    lines = []
    try:
        for line in proc.stdout:
            lines.append(line)
            if line.strip().startswith("direct"):
                break
        time.sleep(0.5)
        made = _namespaces_of(_descendants(proc.pid), _bench_namespaces() - before)
        assert made, "".join(lines)
        proc.send_signal(signal.SIGTERM)
        rest, _ = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    output = "".join(lines) + rest
    assert proc.returncode == 128 + signal.SIGTERM, output
    assert "removing pods" in output
    assert not (made & _bench_namespaces()), output
    tags = {name.split("-")[1] for name in made}
    assert not {c for c in _bench_cgroups() - cgroups_before if c.split("-")[2] in tags}, output
    workdir = re.search(r"building pods in (\S+)", output).group(1)
    assert not os.path.exists(workdir)
    assert not list(tmp_path.glob("*.json")), "an interrupted run must not write results"
