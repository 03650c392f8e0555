"""Where the kernel refuses interception, `interception.fail` decides, and really does:
`open` runs the proxy without interception (the app's traffic flows direct, the listeners
serve, /readyz and /stats say why), `closed` refuses to start with the reason. Nothing is
left in the kernel either way. Unsafe configuration is refused whatever `fail` says.

Refusals are real, not simulated in the sidecar's code: the sidecar run without any
capability (`setpriv --inh-caps=-all --bounding-set=-all`: bpf(2) and iptables are both
denied), and a copy of bpf/ whose inbound program the verifier rejects (SIDECAR_BPF_DIR, the
`unloadable_bpf_dir` fixture of tests/conftest.py).
"""
import contextlib
import json
import os
import re
import sys

import pytest

from sidecar.bpf import EXIT_CONFIG, EXIT_UNAVAILABLE
from tests.conftest import require_privileges
from tests.support.cgroups import Cgroup
from tests.support.kernel_state import ebpf_leftovers, iptables_leftovers
from tests.support.netns import (
    HTTP_GET, ROOT, Netns, NetnsSidecar, TcpServer, echo_headers_handler, run_app_python, veth_pair)

pytestmark = [pytest.mark.privileged, pytest.mark.timeout(90)]

POD_V4, PEER_V4 = "10.203.0.1", "10.203.0.2"
HTTP_PORT = 9080
NO_CAPS = ["setpriv", "--inh-caps=-all", "--ambient-caps=-all", "--bounding-set=-all", "--"]



@pytest.fixture
def pod():
    require_privileges(root=True, netns=True, tools=("ip", "nsenter", "setpriv", "iptables", "bpftool"))
    with contextlib.ExitStack() as stack:
        ns = stack.enter_context(Netns())
        peer = stack.enter_context(Netns())
        app_cg = stack.enter_context(Cgroup())
        sidecar_cg = stack.enter_context(Cgroup())
        dev, _ = veth_pair(ns, peer, "%s/24" % POD_V4, "%s/24" % PEER_V4)
        stack.enter_context(TcpServer(peer, (PEER_V4, HTTP_PORT), echo_headers_handler))
        # The pod's app, reachable on the inbound listener when the sidecar runs
        stack.enter_context(TcpServer(ns, ("127.0.0.1", 8080), echo_headers_handler))
        yield {"ns": ns, "peer": peer, "app_cg": app_cg, "sidecar_cg": sidecar_cg, "dev": dev}


def _sidecar(pod, mode, fail, **kw):
    return NetnsSidecar(pod["ns"], mode=mode, app_cgroup=pod["app_cg"], cgroup=pod["sidecar_cg"],
                        interface=pod["dev"], extra={"interception": {"fail": fail}}, **kw)


def _leftovers(pod, mode, instance):
    if mode == "ebpf":
        return ebpf_leftovers(pod["ns"], instance, cgroups=(pod["app_cg"].path, pod["sidecar_cg"].path),
                              interface=pod["dev"])
    return iptables_leftovers(pod["ns"])


def _check_runs_without_interception(pod, sc, mode, reason_pattern):
    status, body = sc.admin("/readyz")
    assert status == 200, body
    assert re.search(r"kernel: ok \(not intercepting \(interception\.fail: open\): %s" % reason_pattern,
                     body), body
    info = sc.stats()["interception"]
    assert info["mode"] == mode and info["state"] == "fail_open"
    assert re.search(reason_pattern, info["reason"]), info
    assert re.search("%s interception unavailable: %s.*running without interception"
                     % (mode, reason_pattern), sc.log())
    # The app's traffic flows direct: no sidecar on its path.
    result = run_app_python(pod["ns"], HTTP_GET, PEER_V4, HTTP_PORT, cgroup=pod["app_cg"])
    assert "x-request-id" not in result["headers"]
    assert result["peer"] == [POD_V4, result["local"][1]]
    # The proxy itself serves: the inbound listener answers a direct connection.
    import http.client

    def inbound():
        c = http.client.HTTPConnection(POD_V4, 15006, timeout=5)
        c.request("GET", "/")
        r = c.getresponse()
        return r.status, dict(json.loads(r.read())["headers"])
    status, headers = pod["peer"].call(inbound)
    assert status == 200 and "x-request-id" in headers
    return info


BPF_REASON = r"BPF not permitted: the sidecar has neither CAP_SYS_ADMIN nor CAP_BPF with CAP_NET_ADMIN"
IPTABLES_REASON = r"iptables-save: .*Permission denied"


@pytest.mark.parametrize("mode,reason", [("ebpf", BPF_REASON), ("iptables", IPTABLES_REASON)],
                         ids=["ebpf", "iptables"])
def test_without_privileges_fail_open_runs_the_proxy_without_interception(pod, mode, reason):
    sc = _sidecar(pod, mode, "open", prefix=NO_CAPS)
    with sc:
        info = _check_runs_without_interception(pod, sc, mode, reason)
    assert _leftovers(pod, mode, info.get("instance", "-")) == []


@pytest.mark.parametrize("mode,reason", [("ebpf", BPF_REASON), ("iptables", IPTABLES_REASON)],
                         ids=["ebpf", "iptables"])
def test_without_privileges_fail_closed_refuses_to_start(pod, mode, reason):
    sc = _sidecar(pod, mode, "closed", prefix=NO_CAPS)
    proc = sc.spawn()
    try:
        code = proc.wait(30)
    finally:
        sc.stop()
    assert code == EXIT_UNAVAILABLE, sc.log()
    assert re.search("%s interception unavailable: %s.*refusing to start" % (mode, reason), sc.log())
    assert "cannot start:" in sc.log()
    assert _leftovers(pod, mode, "default-app-%d" % os.stat(pod["ns"].path).st_ino) == []


def test_loader_reports_a_verifier_refusal_and_leaves_nothing(pod, unloadable_bpf_dir):
    from sidecar.bpf.programs import Plan
    plan = Plan(instance="t-verifier-%s" % pod["app_cg"].name[5:], app_cgroup=pod["app_cg"].path,
                interface=pod["dev"], outbound=("127.0.0.1", 15001), inbound_port=15006, fail_open=True)
    r = pod["ns"].run([sys.executable, "-m", "sidecar.bpf.loader", "--plan", plan.to_json()],
                      cgroup=pod["sidecar_cg"], cwd=ROOT, check=False, timeout=60,
                      env=dict(os.environ, SIDECAR_BPF_DIR=unloadable_bpf_dir))
    assert r.returncode == EXIT_UNAVAILABLE, r.stderr
    report = json.loads(r.stdout.strip().splitlines()[-1])
    assert report["ok"] is False and report["code"] == EXIT_UNAVAILABLE
    assert report["reason"].startswith("the kernel refused sc_inbound (inbound_steer.c): ")
    assert "invalid access to packet" in report["reason"], report["reason"]
    assert r.stderr.strip().splitlines()[-1] == "loader: " + report["reason"]
    # The families compiled before it (their maps pinned) are gone again.
    assert _leftovers(pod, "ebpf", plan.instance) == []


def test_verifier_refusal_with_fail_open_runs_without_interception(pod, unloadable_bpf_dir):
    sc = _sidecar(pod, "ebpf", "open", env={"SIDECAR_BPF_DIR": unloadable_bpf_dir})
    with sc:
        info = _check_runs_without_interception(
            pod, sc, "ebpf", r"the kernel refused sc_inbound \(inbound_steer\.c\): invalid access to packet")
    assert _leftovers(pod, "ebpf", info["instance"]) == []


# -- unsafe configuration: refused in every mode, whatever interception.fail says ------------

def test_ebpf_mode_refuses_a_sidecar_in_the_root_cgroup(pod):
    sc = NetnsSidecar(pod["ns"], mode="ebpf", app_cgroup=pod["app_cg"], cgroup=None,
                      interface=pod["dev"], extra={"interception": {"fail": "open"}})
    proc = sc.spawn()
    try:
        code = proc.wait(30)
    finally:
        sc.stop()
    assert code == EXIT_CONFIG, sc.log()
    assert "ebpf interception refused: the sidecar runs in the root cgroup" in sc.log()
    assert _leftovers(pod, "ebpf", "default-app-%d" % os.stat(pod["ns"].path).st_ino) == []


def test_iptables_mode_refuses_an_app_cgroup_that_holds_the_sidecar(pod):
    inner = Cgroup()
    inner.path = os.path.join(pod["app_cg"].path, "sidecar")
    with inner:
        sc = NetnsSidecar(pod["ns"], mode="iptables", app_cgroup=pod["app_cg"], cgroup=inner,
                          interface=pod["dev"], extra={"interception": {"fail": "open"}})
        proc = sc.spawn()
        try:
            code = proc.wait(30)
        finally:
            sc.stop()
    assert code == EXIT_CONFIG, sc.log()
    assert re.search("iptables interception refused: interception.cgroup %s holds the sidecar's own "
                     "cgroup" % pod["app_cg"].path, sc.log()), sc.log()
    assert _leftovers(pod, "iptables", None) == []
