"""`interception.cgroup: pod`, what only that mode promises (the behavioural suite in
test_interception.py runs it as the modes ebpf-pod and iptables-pod).

A pod as Kubernetes makes one: a cgroup P under the cgroup v2 mount with one child per
container, `sidecar/` (the sidecar runs there) and `app/`, and a network namespace joined
to a peer. The programs go on P, the parent of the sidecar's cgroup: containers that start
after the sidecar (their cgroups made later) are intercepted, the sidecar and whatever it
runs below its own cgroup are not, nothing is attached to the root cgroup or to the
containers' own cgroups, and a stop leaves nothing on any of them.
"""
import contextlib
import os
import json
import sys

import pytest

from tests.conftest import require_privileges
from tests.support.cgroups import CGROUP_ROOT, Cgroup
from tests.support.kernel_state import bpf_ids, cgroup_programs, ebpf_leftovers
from tests.support.netns import (
    HTTP_GET, ROOT, Netns, NetnsSidecar, TcpServer, echo_headers_handler, run_app_python, veth_pair)

pytestmark = [pytest.mark.privileged, pytest.mark.timeout(90)]

POD_V4, PEER_V4 = "10.205.0.1", "10.205.0.2"
HTTP_PORT = 9080
PROGRAMS_ON_THE_POD = {("cgroup_inet4_connect", "sc_connect4"), ("cgroup_inet6_connect", "sc_connect6"),
                       ("cgroup_sock_ops", "sc_sockops"), ("cgroup_getsockopt", "sc_getsockopt")}



class Pod:
    def __init__(self, stack):
        self.ns = stack.enter_context(Netns())
        self.peer = stack.enter_context(Netns())
        self.cgroup = stack.enter_context(Cgroup())
        self.app_cg = self.cgroup.child("app")
        self.sidecar_cg = self.cgroup.child("sidecar")
        self.dev, _ = veth_pair(self.ns, self.peer, "%s/24" % POD_V4, "%s/24" % PEER_V4)
        stack.enter_context(TcpServer(self.peer, (PEER_V4, HTTP_PORT), echo_headers_handler))
        stack.enter_context(TcpServer(self.ns, ("127.0.0.1", 8080), echo_headers_handler))

    def sidecar(self):
        return NetnsSidecar(self.ns, mode="ebpf", app_cgroup="pod", cgroup=self.sidecar_cg,
                            interface=self.dev)

    def get(self, cgroup, uid=65534):
        """The peer's view of an HTTP request made from `cgroup`: (through the sidecar?, result)."""
        r = run_app_python(self.ns, HTTP_GET, PEER_V4, HTTP_PORT, cgroup=cgroup, uid=uid)
        through = "x-request-id" in r["headers"]
        # Through the sidecar, the peer sees the sidecar's own upstream connection.
        assert through == (r["peer"][1] != r["local"][1]), r
        return through


@pytest.fixture
def pod():
    require_privileges(root=True, netns=True, tools=("ip", "nsenter", "setpriv", "bpftool", "tc"))
    with contextlib.ExitStack() as stack:
        yield Pod(stack)


def test_a_container_started_after_the_sidecar_is_intercepted(pod):
    with pod.sidecar():
        late = pod.cgroup.child("late-container")     # made after the programs were attached
        assert pod.get(late)
        assert pod.get(pod.app_cg)


def test_the_sidecar_and_what_it_runs_below_its_cgroup_are_not_redirected(pod):
    with pod.sidecar():
        helper = pod.sidecar_cg.child("helper")
        assert not pod.get(pod.sidecar_cg, uid=0)
        assert not pod.get(helper, uid=0)
        assert pod.get(pod.app_cg, uid=0)      # root in the app is intercepted all the same


def test_programs_are_on_the_pod_cgroup_only_and_stop_removes_them(pod):
    sc = pod.sidecar().start()
    try:
        ids, instance = bpf_ids(sc), sc.stats()["interception"]["instance"]
        assert set(cgroup_programs(pod.cgroup.path)) == PROGRAMS_ON_THE_POD
        assert cgroup_programs(pod.app_cg.path) == []
        assert cgroup_programs(pod.sidecar_cg.path) == []
        assert not [p for p in cgroup_programs(CGROUP_ROOT) if p[1].startswith("sc_")]
        # One instance per attach point: named after the pod's cgroup, not the namespace.
        assert instance.endswith("-pod%d" % os.stat(pod.cgroup.path).st_ino)
        r = pod.ns.run([sys.executable, "-m", "sidecar.cli", "bpf", "status", "--json",
                        "--instance", instance], cwd=ROOT)
        shown = json.loads(r.stdout)["instances"][0]
        assert shown["owner"]["app_cgroup"] == shown["owner"]["sidecar_cgroup"] == pod.cgroup.path
        assert shown["owner"]["cgroup"] == pod.sidecar_cg.path
        assert shown["sidecar_cgroup_excluded"]["id"] == os.stat(pod.sidecar_cg.path).st_ino
    finally:
        assert sc.stop() == 0, sc.log()
    assert ebpf_leftovers(pod.ns, instance, ids, interface=pod.dev,
                          cgroups=(pod.cgroup.path, pod.app_cg.path, pod.sidecar_cg.path)) == []
    assert not [p for p in cgroup_programs(CGROUP_ROOT) if p[1].startswith("sc_")]
    assert not pod.get(pod.app_cg)
