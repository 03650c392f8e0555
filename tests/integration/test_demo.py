"""`sidecar demo` runs a real app behind the sidecar, drives traffic, and leaves nothing."""
import re
import shutil
import subprocess
import sys

import pytest

from tests.conftest import ROOT


def _demo_processes():
    out = subprocess.run(["pgrep", "-fa", "sidecar-demo-"], capture_output=True, text=True).stdout
    return [line for line in out.splitlines() if "pgrep" not in line]


@pytest.mark.skipif(shutil.which("nginx") is None, reason="needs nginx (installed by make set-up)")
def test_demo_serves_traffic_through_the_sidecar_and_cleans_up():
    r = subprocess.run([sys.executable, "-m", "sidecar.cli", "demo", "--duration", "2"],
                       cwd=ROOT, capture_output=True, text=True, timeout=90)
    assert r.returncode == 0, r.stdout + r.stderr
    m = re.search(r"summary: (\d+) requests through the sidecar .* (\d+) errors", r.stdout)
    assert m, r.stdout
    assert int(m.group(1)) > 100
    assert int(m.group(2)) == 0
    workdir = re.search(r"removed (\S+)", r.stdout).group(1)
    assert not _demo_processes()
    assert not __import__("os").path.exists(workdir)
