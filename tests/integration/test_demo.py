"""`sidecar demo` builds a two-pod mesh, sends the client app's traffic through both sidecars
with eBPF interception, shows both sidecars' counts, and leaves nothing behind: no network
namespace, cgroup, pinned BPF state, process or file, also when stopped by SIGTERM or
Ctrl-C. Where eBPF is refused (a real verifier refusal), it says why in one line and runs
on the sidecars' iptables mode.

Each run takes 7-10 s: two pods, nginx, two sidecars whose loaders compile the programs
(about 1.5 s each, at once on 2 cores), 2-3 s of traffic, and the clean-up. Evidence is
read from the system while the demo runs (the pinned links under /sys/fs/bpf/sidecar, the
pods' nat tables), not only from what the demo prints.
"""
import os
import re
import signal
import subprocess
import sys

import pytest

from sidecar.bpf import BPFFS_ROOT
from tests.conftest import ROOT, require_privileges

pytestmark = [pytest.mark.privileged, pytest.mark.timeout(120)]

EBPF_LINKS = {"sc_connect4", "sc_connect6", "sc_sockops", "sc_getsockopt", "sc_inbound"}
# What each demo sidecar loads: the interception programs above, local-hop acceleration's
# three (the demo sets accelerate_local), the splice verdict (interception.splice: auto) and
# the pod interface's kernel policy and two traffic counters.
EBPF_PROGRAMS = len(EBPF_LINKS) + 3 + 1 + 3


def _start(*args, env=None):
    require_privileges(root=True, netns=True, tools=("ip", "nsenter", "setpriv", "nginx", "iptables"))
    return subprocess.Popen([sys.executable, "-m", "sidecar.cli", "demo"] + list(args), cwd=ROOT,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            env=dict(os.environ, **(env or {})))


def _read_until(proc, pattern, lines):
    """Reads the demo's output into `lines` until a line matches; that match."""
    for line in proc.stdout:
        lines.append(line)
        m = re.search(pattern, line)
        if m:
            return m
    raise AssertionError("the demo ended before printing %r:\n%s" % (pattern, "".join(lines)))


def _finish(proc, lines, timeout=90):
    try:
        rest, _ = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.send_signal(signal.SIGTERM)        # the demo removes its pods on the way out
        rest, _ = proc.communicate(timeout=60)
        pytest.fail("the demo did not finish:\n" + "".join(lines) + rest)
    lines.append(rest)
    return "".join(lines)


def _pods(lines):
    """(tag, [netns], [cgroup paths]) from the demo's first line."""
    m = re.search(r"demo: pods (sc-demo-(\w+)-a-\w+) \(pod A, [\d.]+\) and (sc-demo-\w+-b-\w+) \(pod B, "
                  r"[\d.]+\), cgroups (\S+) and (\S+)", "".join(lines))
    assert m, "".join(lines)
    return m.group(2), [m.group(1), m.group(3)], [m.group(4), m.group(5)]


def _nat_rules(netns):
    out = subprocess.run(["nsenter", "--net=/var/run/netns/" + netns, "iptables-save", "-t", "nat"],
                         capture_output=True, text=True).stdout
    return [line for line in out.splitlines() if line.startswith("-A ")]


def _summary(output):
    """{"requests", "errors", "A": (requests, interception), "B": (...)} from the summary."""
    m = re.search(r"^summary: ([\d,]+) requests in [\d.]+ s .* ([\d,]+) errors$", output, re.M)
    assert m, output
    out = {"requests": int(m.group(1).replace(",", "")), "errors": int(m.group(2).replace(",", ""))}
    tail = output[m.end():]
    for pod in ("A", "B"):
        row = re.search(r"^  pod %s (?:out|in) +([\d,]+) +([\d,]+) +(\w+(?:, \d+ progs)?) +" % pod, tail, re.M)
        assert row, output
        out[pod] = (int(row.group(1).replace(",", "")), row.group(3))
    return out


def _assert_nothing_left(tag, namespaces, cgroups, output):
    assert re.search(r"removed: .*; nothing left behind$", output, re.M), output
    listed = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    for ns in namespaces:
        assert ns not in listed, ns
    for cgroup in cgroups:
        assert not os.path.exists(cgroup), cgroup
    for pod in ("a", "b"):
        assert not os.path.exists(os.path.join(BPFFS_ROOT, "demo-%s-%s" % (tag, pod)))
    workdir = re.search(r"(/\S*sidecar-demo-\w+); nothing left behind", output).group(1)
    assert not os.path.exists(workdir)
    # Every process the demo starts has the work directory in its command line (nginx, the
    # sidecars and their workers, the client app).
    procs = subprocess.run(["pgrep", "-fa", workdir], capture_output=True, text=True).stdout
    assert [p for p in procs.splitlines() if "pgrep" not in p] == []


def test_demo_sends_traffic_through_both_ebpf_sidecars_and_leaves_nothing():
    proc = _start("--duration", "3")
    lines = []
    try:
        _read_until(proc, r"^sidecars ready: (\w+) interception", lines)
        tag, namespaces, cgroups = _pods(lines)
        # While it runs: each pod's sidecar has its programs pinned and attached, and no
        # iptables rule steers anything.
        for pod, netns in zip(("a", "b"), namespaces):
            links = os.path.join(BPFFS_ROOT, "demo-%s-%s" % (tag, pod), "links")
            assert EBPF_LINKS <= set(os.listdir(links)), os.listdir(links)
            assert _nat_rules(netns) == []
    finally:
        output = _finish(proc, lines)
    assert proc.returncode == 0, output
    assert "sidecars ready: ebpf interception in both pods" in output
    assert len(re.findall(r"^ +\d+ s +requests", output, re.M)) >= 2, output     # the live view
    summary = _summary(output)
    assert summary["requests"] > 100 and summary["errors"] == 0, output
    for pod in ("A", "B"):
        requests, interception = summary[pod]
        assert requests >= summary["requests"], output          # every request, in both pods
        assert interception == "ebpf, %d progs" % EBPF_PROGRAMS, output
    assert "  interception: ebpf in both pods" in output
    assert "fallback" not in output
    # Figures the sidecars do not export are shown as such, never made up.
    assert re.search(r"^  acceleration, pod A: (requested; n/a \(this sidecar exports no "
                     r"sidecar_kernel_accelerated_sockets\)|on, up to \d+ sockets)", output, re.M), output
    _assert_nothing_left(tag, namespaces, cgroups, output)


def test_demo_falls_back_to_iptables_when_ebpf_is_refused(unloadable_bpf_dir):
    proc = _start("--duration", "2", env={"SIDECAR_BPF_DIR": unloadable_bpf_dir})
    lines = []
    try:
        _read_until(proc, r"^sidecars ready:", lines)
        tag, namespaces, cgroups = _pods(lines)
        # The sidecars' own chains, none of the eBPF instance.
        for pod, netns in zip(("a", "b"), namespaces):
            assert any(rule.startswith("-A SC-OUT-") for rule in _nat_rules(netns))
            assert not os.path.exists(os.path.join(BPFFS_ROOT, "demo-%s-%s" % (tag, pod)))
    finally:
        output = _finish(proc, lines)
    assert proc.returncode == 0, output
    reasons = [l for l in output.splitlines() if l.startswith("eBPF interception cannot be used here: ")]
    assert len(reasons) == 1, output
    assert "the kernel refused sc_inbound (inbound_steer.c): invalid access to packet" in reasons[0]
    assert "falling back to the sidecars' iptables mode" in output
    assert "sidecars ready: iptables interception in both pods" in output
    summary = _summary(output)
    assert summary["requests"] > 100 and summary["errors"] == 0, output
    for pod in ("A", "B"):
        assert summary[pod] == (summary[pod][0], "iptables") and summary[pod][0] >= summary["requests"]
    assert re.search(r"^  interception: iptables \(fallback: eBPF could not be used: .*the kernel refused "
                     r"sc_inbound", output, re.M), output
    _assert_nothing_left(tag, namespaces, cgroups, output)


@pytest.mark.parametrize("signum,code", [(signal.SIGTERM, 143), (signal.SIGINT, 130)], ids=["sigterm", "ctrl-c"])
def test_demo_stopped_during_traffic_removes_everything(signum, code):
    proc = _start("--duration", "60")
    lines = []
    try:
        _read_until(proc, r"^ +\d+ s +requests", lines)
        tag, namespaces, cgroups = _pods(lines)
        proc.send_signal(signum)
    finally:
        output = _finish(proc, lines)
    assert proc.returncode == code, output
    assert "summary:" not in output
    _assert_nothing_left(tag, namespaces, cgroups, output)
