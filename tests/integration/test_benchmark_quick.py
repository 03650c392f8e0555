"""`python -m benchmarks.run --quick` measures direct, nginx, HAProxy and the sidecar end to
end, writes its JSON and Markdown where told, and leaves no process or temp dir behind."""

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from benchmarks.proc_stats import read_stat

REPO_ROOT = Path(__file__).resolve().parents[2]
TARGETS = ("direct", "nginx", "haproxy", "sidecar")
TIMEOUT_S = 180


def _run_quick_benchmark(out_dir):
    proc = subprocess.Popen(
        [sys.executable, "-m", "benchmarks.run", "--quick", "--out", str(out_dir)],
        cwd=REPO_ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        output, _ = proc.communicate(timeout=TIMEOUT_S)
    except subprocess.TimeoutExpired:
        # SIGTERM, not SIGKILL: the harness stops its peers on the way out.
        proc.send_signal(signal.SIGTERM)
        output, _ = proc.communicate(timeout=30)
        pytest.fail(f"benchmark did not finish in {TIMEOUT_S} s:\n{output}")
    return proc.returncode, output


def _cmdline(pid):
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return f.read().replace(b"\0", b" ").decode(errors="replace")
    except (FileNotFoundError, ProcessLookupError):
        return None


@pytest.fixture(scope="module")
def quick_result(tmp_path_factory):
    out_dir = tmp_path_factory.mktemp("bench")
    returncode, output = _run_quick_benchmark(out_dir)
    assert returncode == 0, output
    files = sorted(out_dir.glob("*.json"))
    assert len(files) == 1, f"expected one JSON result in {out_dir}, found {files}\n{output}"
    return out_dir, json.loads(files[0].read_text()), output


def test_quick_run_writes_json_and_markdown(quick_result):
    out_dir, document, _ = quick_result
    stem = document["json_file"].removesuffix(".json")
    assert (out_dir / f"{stem}.md").is_file()
    assert (out_dir / "latest.md").read_text() == (out_dir / f"{stem}.md").read_text()
    assert document["machine"]["cores"] >= 1
    assert document["settings"]["rounds"] == 1


@pytest.mark.parametrize("target", TARGETS)
@pytest.mark.parametrize("scenario", ["throughput", "latency"])
def test_every_target_has_positive_throughput_and_cpu(quick_result, scenario, target):
    _, document, output = quick_result
    row = document["summary"][scenario][target]
    assert row["error"] is None, f"{target}: {row['error']}\n{output}"
    assert row["rounds"] >= 1
    assert row["requests_per_s"]["median"] > 0
    assert row["cpu_us_per_req"]["median"] > 0
    assert row["rss_total_kb"]["median"] > 0
    assert row["errors"]["max"] == 0, output
    if target != "direct" and scenario == "latency":
        assert row["added_p50_us"] is not None


def test_nothing_is_left_running(quick_result):
    _, document, _ = quick_result
    temp_dir = document["temp_dir"]
    assert not os.path.exists(temp_dir)
    recorded = [identity for identities in document["processes"].values() for identity in identities]
    assert len(document["processes"]["app"]) >= 2, "nginx master and worker of the app were not recorded"
    for pid, starttime in recorded:
        st = read_stat(pid)
        assert st is None or st.starttime != starttime, f"pid {pid} still running: {_cmdline(pid)}"
    leftovers = []
    for name in os.listdir("/proc"):
        if name.isdigit():
            cmdline = _cmdline(name)
            if cmdline and temp_dir in cmdline:
                leftovers.append(f"{name}: {cmdline}")
    assert not leftovers, leftovers
