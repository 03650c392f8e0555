"""Shared pytest set-up: the privileged-test policy and common fixtures.

Tests that need root, network namespaces, cgroups or BPF call `require_privileges(...)`.
Where the machine cannot run them they are skipped with the reason; with
SIDECAR_REQUIRE_PRIVILEGED=1 (as `.ci/run` sets) the same condition is a failure, so CI
cannot pass with those tests silently not running.
"""
import os
import shutil
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

REQUIRE_PRIVILEGED = os.environ.get("SIDECAR_REQUIRE_PRIVILEGED") == "1"


def require_privileges(*, root=True, netns=False, tools=()):
    """Skips (or, on CI, fails) the calling test unless the machine can run it."""
    reason = None
    if root and os.geteuid() != 0:
        reason = "needs root"
    for tool in tools:
        if reason is None and shutil.which(tool) is None:
            reason = "needs %s" % tool
    if reason is None and netns:
        probe = "sc-probe-%d" % os.getpid()
        r = subprocess.run(["ip", "netns", "add", probe], capture_output=True, text=True)
        if r.returncode != 0:
            reason = "cannot create network namespaces: %s" % r.stderr.strip()
        else:
            subprocess.run(["ip", "netns", "del", probe], capture_output=True)
    if reason is not None:
        if REQUIRE_PRIVILEGED:
            pytest.fail("%s (SIDECAR_REQUIRE_PRIVILEGED=1 forbids skipping)" % reason)
        pytest.skip(reason)


@pytest.fixture
def privileged_netns():
    require_privileges(root=True, netns=True, tools=("ip", "nsenter"))


@pytest.fixture
def unloadable_bpf_dir(tmp_path):
    """A copy of bpf/ whose inbound program reads the packet without a bounds check: the
    kernel's verifier refuses it (a real refusal, for SIDECAR_BPF_DIR)."""
    target = tmp_path / "bpf"
    shutil.copytree(os.path.join(ROOT, "bpf"), target)
    source = target / "inbound_steer.c"
    text = source.read_text()
    check = "    if ((void *)(eth + 1) > data_end)\n        return SC_TCX_NEXT;\n    if (eth->h_proto"
    assert check in text
    source.write_text(text.replace(check, "    if (eth->h_proto"))
    return str(target)
