"""The kernel state's lifecycle, in both modes: stop removes everything the instance
attached, pinned or inserted; a start after `kill -9` of the manager finds the stale state
and replaces it; `sidecar bpf cleanup --stale` removes only instances whose owner is gone;
a live owner's instance refuses a second sidecar and is never cleaned up from under it.

What is left is checked with bpftool (links, programs, cgroup attachments), tc on the pod
interface, iptables-save in the pod, and the bpffs directory. Both modes run with
`accelerate_local`, so every program family is loaded (in iptables mode the loader runs
for the data-path families: local hops and splice) and must be gone after a stop. The ebpf cases take a few
seconds each: every sidecar start runs the loader (bcc compiles the programs, ~1.5 s),
and these tests need two starts.
"""
import json
import os
import signal
import subprocess
import sys

import pytest

from tests.conftest import require_privileges
from tests.support.cgroups import Cgroup
from tests.support.kernel_state import bpf_ids, bpf_objects_left, ebpf_leftovers, iptables_leftovers
from tests.support.netns import (
    ROOT, Netns, NetnsSidecar, TcpServer, echo_headers_handler, run_app_python, veth_pair)

pytestmark = [pytest.mark.privileged, pytest.mark.timeout(120)]

POD_V4, PEER_V4 = "10.202.0.1", "10.202.0.2"
HTTP_PORT = 9080

HTTP_GET = r"""
import http.client, json, sys
c = http.client.HTTPConnection(sys.argv[1], int(sys.argv[2]), timeout=5)
c.request("GET", "/")
r = c.getresponse()
print(json.dumps({"headers": dict(json.loads(r.read())["headers"])}))
"""

OTHER_PORTS = {"admin": {"listen": "127.0.0.1:15100"},
               "telemetry": {"metrics": {"listen": "127.0.0.1:15190"},
                             "health": {"listen": "127.0.0.1:15121"}}}


class Pod:
    """A pod (netns + app and sidecar cgroups) joined to a peer running an HTTP server."""

    def __init__(self, stack, mode):
        self.mode = mode
        self.ns = stack.enter_context(Netns())
        self.peer = stack.enter_context(Netns())
        self.app_cg = stack.enter_context(Cgroup())
        self.sidecar_cg = stack.enter_context(Cgroup())
        self.dev, _ = veth_pair(self.ns, self.peer, "%s/24" % POD_V4, "%s/24" % PEER_V4)
        self.server = stack.enter_context(TcpServer(self.peer, (PEER_V4, HTTP_PORT), echo_headers_handler))

    def sidecar(self, extra=None, **kw):
        extra = dict(extra or {}, interception={"accelerate_local": True})
        return NetnsSidecar(self.ns, mode=self.mode, app_cgroup=self.app_cg, cgroup=self.sidecar_cg,
                            interface=self.dev, extra=extra, **kw)

    def intercepted(self):
        """True when the app's request went through a sidecar."""
        r = run_app_python(self.ns, HTTP_GET, PEER_V4, HTTP_PORT, cgroup=self.app_cg)
        return "x-request-id" in r["headers"]

    def leftovers(self, ids=None, instance=None):
        left = ebpf_leftovers(self.ns, instance or ids["instance"], ids,
                              cgroups=(self.app_cg.path, self.sidecar_cg.path), interface=self.dev)
        if self.mode == "iptables":
            left += iptables_leftovers(self.ns)
        return left

    def bpf(self, *args):
        """`sidecar bpf ...` run inside the pod; (exit code, stdout, stderr)."""
        r = self.ns.run([sys.executable, "-m", "sidecar.cli", "bpf"] + list(args), check=False, cwd=ROOT)
        return r.returncode, r.stdout, r.stderr


@pytest.fixture(params=["ebpf", "iptables"])
def pod(request):
    require_privileges(root=True, netns=True, tools=("ip", "nsenter", "setpriv", "iptables", "bpftool", "tc"))
    import contextlib
    with contextlib.ExitStack() as stack:
        yield Pod(stack, request.param)


def _instance(sc):
    return sc.stats()["interception"]["instance"]


def _ids(pod, sc):
    return bpf_ids(sc)


def test_stop_removes_everything_it_attached(pod):
    sc = pod.sidecar().start()
    try:
        assert pod.intercepted()
        ids, instance = _ids(pod, sc), _instance(sc)
        assert pod.leftovers(ids, instance), "nothing attached while running?"
        if pod.mode == "ebpf":
            # every family is in what is checked: the interface's policy and counters too
            functions = {l["function"] for l in sc.stats()["interception"]["links"]}
            assert {"sc_inbound", "sc_policy", "sc_count_in", "sc_count_out"} <= functions
            assert len(ids["links"]) == len(functions)
        else:
            # the data-path families only: the interface's counters and policy are ebpf
            # mode's, and so are their metric families
            functions = {l["function"] for l in sc.stats()["interception"]["programs"]["links"]}
            assert functions == {"sc_hop_app_ops", "sc_hop_sidecar_ops", "sc_hop_msg",
                                 "sc_splice_verdict"}
            assert len(ids["links"]) == len(functions)
            assert "sidecar_kernel_bytes_total" not in sc.metrics()
            assert "sidecar_kernel_drops_total" not in sc.metrics()
    finally:
        code = sc.stop()
    assert code == 0, sc.log()
    assert pod.leftovers(ids, instance) == []
    assert not pod.intercepted()
    assert "interception removed" in sc.log()


def test_start_after_kill_9_replaces_the_stale_state(pod):
    first = pod.sidecar().start()
    ids, instance = _ids(pod, first), _instance(first)
    os.kill(first.proc.pid, signal.SIGKILL)
    first.proc.wait(10)
    first.stop()
    # The kernel state outlived its owner ...
    assert pod.leftovers(ids, instance)
    code, out, _ = pod.bpf("status", "--json")
    status = json.loads(out)
    if pod.mode == "ebpf":
        mine = [i for i in status["instances"] if i["instance"] == instance]
        assert mine and mine[0]["state"] == "stale", status
        assert "has exited" in mine[0]["owner_status"]
    else:
        assert status["iptables"][instance]["alive"] is False
    # ... and the next start replaces it.
    second = pod.sidecar().start()
    try:
        assert "replaced stale" in second.log(), second.log()
        assert pod.intercepted()
        new_ids = _ids(pod, second)
        if ids:
            assert bpf_objects_left(ids) == []       # the old links and programs are gone
            assert set(new_ids["links"]).isdisjoint(ids["links"])
    finally:
        assert second.stop() == 0
    assert pod.leftovers(new_ids, instance) == []


def test_a_live_instance_refuses_a_second_sidecar(pod):
    sc = pod.sidecar().start()
    try:
        instance = _instance(sc)
        other = pod.sidecar(extra=OTHER_PORTS)
        proc = other.spawn()
        try:
            code = proc.wait(30)
        finally:
            other.stop()
        assert code == 2, other.log()
        assert "instance %s is in use: owner pid %d is running" % (instance, sc.proc.pid) in other.log()
        # The first one is untouched.
        assert pod.intercepted()
        assert sc.admin("/readyz")[0] == 200
    finally:
        assert sc.stop() == 0
    assert pod.leftovers(None, instance) == []


def test_cleanup_refuses_a_live_instance(pod):
    sc = pod.sidecar().start()
    try:
        instance = _instance(sc)
        code, out, err = pod.bpf("cleanup", "--instance", instance)
        assert code == 1 and "in use" in err, (out, err)
        code, out, err = pod.bpf("cleanup", "--stale")
        assert code == 0
        assert pod.intercepted()
        assert sc.admin("/readyz")[0] == 200
    finally:
        assert sc.stop() == 0


def test_cleanup_stale_removes_a_dead_instance_and_spares_a_live_one(pod):
    """Two sidecars on the machine: the killed one's state goes, the live one keeps its own."""
    import contextlib
    with contextlib.ExitStack() as stack:
        live_pod = Pod(stack, pod.mode)
        live = live_pod.sidecar().start()
        try:
            dead = pod.sidecar().start()
            ids, instance = _ids(pod, dead), _instance(dead)
            os.kill(dead.proc.pid, signal.SIGKILL)
            dead.proc.wait(10)
            dead.stop()
            assert pod.leftovers(ids, instance)
            code, out, err = pod.bpf("cleanup", "--stale")
            assert code == 0, err
            assert instance in out
            assert pod.leftovers(ids, instance) == []
            assert live_pod.intercepted()
            assert live.admin("/readyz")[0] == 200
            assert _instance(live) not in out
        finally:
            assert live.stop() == 0
