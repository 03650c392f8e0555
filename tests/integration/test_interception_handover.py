"""The loader as an init container, and the sidecar adopting what it handed over.

A pod as Kubernetes runs one: a network namespace joined to a peer, a pod cgroup P with a
child per container, `interception.cgroup: pod`. The "init container" is
`sidecar bpf load -c FILE` run in P/init in a pid namespace of its own; like a container's,
its cgroup is removed once it has exited. The sidecar then starts in P/sidecar with the
same config file.

Every load compiles with bcc (about 1.5 s here, more when the machine is busy): the tests
that load twice take several seconds for that reason alone.

Proof that the sidecar adopted rather than loaded: it runs with bcc hidden (an empty tmpfs
over the bcc package, in a mount namespace of its own: what the sidecar image without LLVM
is) and `interception.fail: closed`, so a loader run would have refused its start; it
reports the adoption, and its programs and links are the very ones the init container
attached (same ids). What is left is checked with bpftool, tc and the bpffs directory.
"""
import contextlib
import json
import os
import signal
import sys

import pytest

from sidecar.bpf.cleanup import remove_instance
from sidecar.bpf.state import instance_dir, list_instances
from tests.conftest import require_privileges
from tests.support.cgroups import Cgroup
from tests.support.kernel_state import bpf_objects_left, cgroup_programs, ebpf_leftovers
from tests.support.netns import (
    HTTP_GET, ROOT, Netns, NetnsSidecar, TcpServer, echo_headers_handler, run_app_python, veth_pair)

pytestmark = [pytest.mark.privileged, pytest.mark.timeout(120)]

POD_V4, PEER_V4 = "10.206.0.1", "10.206.0.2"
HTTP_PORT, EXCLUDED_PORT = 9080, 9081
BCC_DIR = "/usr/lib/python3/dist-packages/bcc"
# A container of its own: pid namespace (the process is pid 1, /proc remounted) ...
OWN_PID_NAMESPACE = ["unshare", "--pid", "--fork", "--mount-proc", "--propagation", "private", "--"]
# ... and the sidecar image: no bcc.
WITHOUT_BCC = ["unshare", "--mount", "--propagation", "private", "--", "sh", "-c",
               'mount -t tmpfs none "%s" && exec "$@"' % BCC_DIR, "without-bcc"]

# The capabilities deploy/kubernetes lists: the loader's (bcc opens pinned maps by id, which
# needs CAP_SYS_ADMIN) and the adopting sidecar's.
LOADER_CAPS = ("sys_admin",)
SIDECAR_CAPS = ("bpf", "net_admin")


def only(caps):
    """The command after this runs with only `caps` (as root: the bounding set is what it gets)."""
    return ["setpriv", "--inh-caps=-all", "--ambient-caps=-all",
            "--bounding-set=-all" + "".join(",+" + c for c in caps), "--"]




class Pod:
    def __init__(self, stack):
        self.ns = stack.enter_context(Netns())
        self.peer = stack.enter_context(Netns())
        self.cgroup = stack.enter_context(Cgroup())
        self.app_cg = self.cgroup.child("app")
        self.dev, _ = veth_pair(self.ns, self.peer, "%s/24" % POD_V4, "%s/24" % PEER_V4)
        for port in (HTTP_PORT, EXCLUDED_PORT):
            stack.enter_context(TcpServer(self.peer, (PEER_V4, port), echo_headers_handler))
        stack.enter_context(TcpServer(self.ns, ("127.0.0.1", 8080), echo_headers_handler))
        # Also when a test fails half way: an instance handed over and never adopted, or
        # whose owner was killed, is this pod's (named after its cgroup) and goes with it.
        self.suffix = "-pod%d" % os.stat(self.cgroup.path).st_ino
        stack.callback(self._remove_instances)

    def instances(self):
        """This pod's instances (`interception.cgroup: pod` names them after its cgroup)."""
        return [name for name in list_instances() if name.endswith(self.suffix)]

    def _remove_instances(self):
        for name in self.instances():
            remove_instance(instance_dir(name))

    def sidecar(self, container="sidecar", fail="closed", exclude=(), prefix=()):
        """The sidecar of this pod in its container's cgroup P/<container>."""
        cgroup = next((c for c in self.cgroup.children if c.name == container), None) \
            or self.cgroup.child(container)
        return NetnsSidecar(self.ns, mode="ebpf", app_cgroup="pod", cgroup=cgroup, interface=self.dev,
                            prefix=prefix,
                            extra={"interception": {"fail": fail, "exclude_outbound_ports": list(exclude)}})

    def init_container(self, sidecar, prefix=()):
        """`sidecar bpf load -c` of `sidecar`'s config, as an init container; its cgroup is
        gone afterwards. (exit code, the loader's JSON report, stderr)."""
        sidecar.write_config()
        init = self.cgroup.child("init")
        try:
            r = self.ns.run(OWN_PID_NAMESPACE + list(prefix) + [
                                sys.executable, "-m", "sidecar.cli", "bpf", "load", "-c", sidecar.config_path],
                            cgroup=init, cwd=ROOT, check=False, timeout=60)
        finally:
            init.close()
            self.cgroup.children.remove(init)
        lines = r.stdout.strip().splitlines()
        return r.returncode, json.loads(lines[-1]) if lines else None, r.stderr

    def status(self, instance, human=False):
        cmd = [sys.executable, "-m", "sidecar.cli", "bpf", "status", "--instance", instance]
        r = self.ns.run(cmd + ([] if human else ["--json"]), cwd=ROOT)
        return r.stdout if human else json.loads(r.stdout)["instances"][0]

    def through_sidecar(self, cgroup=None, port=HTTP_PORT):
        r = run_app_python(self.ns, HTTP_GET, PEER_V4, port, cgroup=cgroup or self.app_cg)
        return "x-request-id" in r["headers"]

    def inbound_through_sidecar(self):
        import http.client

        def call():
            c = http.client.HTTPConnection(POD_V4, 8080, timeout=5)
            c.request("GET", "/")
            return dict(json.loads(c.getresponse().read())["headers"])
        return "x-request-id" in self.peer.call(call)

    def leftovers(self, instance, ids):
        return ebpf_leftovers(self.ns, instance, ids, interface=self.dev,
                              cgroups=[self.cgroup.path] + [c.path for c in self.cgroup.children])


def _ids(instance_status):
    return {"links": sorted(l["link_id"] for l in instance_status["links"]),
            "progs": sorted(l["prog_id"] for l in instance_status["links"])}


@pytest.fixture
def pod():
    require_privileges(root=True, netns=True, tools=("ip", "nsenter", "setpriv", "unshare", "bpftool", "tc"))
    if not os.path.isdir(BCC_DIR):
        pytest.skip("bcc is not where Debian puts it (%s)" % BCC_DIR)
    with contextlib.ExitStack() as stack:
        yield Pod(stack)


def test_the_sidecar_adopts_what_the_init_container_loaded(pod):
    """Each with the capabilities the manifests give it, no more."""
    # The init container loads with the pod's config; the sidecar's config adds an
    # exclusion: a config map, written on adoption, not a reason to reload.
    loaded_by = pod.sidecar(exclude=())
    code, report, err = pod.init_container(loaded_by, prefix=only(LOADER_CAPS))
    assert code == 0, err
    assert report["handed_over"] and "handed over to the sidecar" in err
    instance = report["instance"]
    shown = pod.status(instance)
    assert shown["state"] == "handed_over", shown
    assert shown["owner"]["handed_over"] and shown["owner"]["fingerprint"] == report["fingerprint"]
    assert "waiting for its sidecar" in shown["owner_status"]
    assert "handed over: waiting for the sidecar" in pod.status(instance, human=True)
    loaded = _ids(shown)
    # interception (5), the splice (splice: auto), kernel policy, two counters
    assert len(loaded["links"]) == 9

    sc = pod.sidecar(exclude=[EXCLUDED_PORT], prefix=WITHOUT_BCC + only(SIDECAR_CAPS))
    sc.start()
    try:
        log = sc.log()
        assert "adopted the instance handed over by pid" in log and "no loader run" in log, log
        info = sc.stats()["interception"]
        assert info["state"] == "active" and "loader" not in info
        assert info["adopted"]["was"] == "handed over"
        assert info["adopted"]["fingerprint"] == report["fingerprint"]
        assert info["sidecar_cgroup_excluded"]["cgroup"] == sc.cgroup.path
        assert info["exclusions"]["outbound"] == [EXCLUDED_PORT]
        now = pod.status(instance)
        assert _ids(now) == loaded, "the programs were loaded again"
        assert now["state"] == "live" and now["owner"]["pid"] == sc.proc.pid
        assert now["owner"]["adopted"]["was"] == "handed over"
        # The interception works: the app's connects and inbound connections go through
        # the sidecar, the sidecar's own and the excluded port's do not.
        assert pod.through_sidecar()
        assert not pod.through_sidecar(port=EXCLUDED_PORT)
        assert not pod.through_sidecar(cgroup=sc.cgroup)
        assert pod.inbound_through_sidecar()
    finally:
        assert sc.stop() == 0, sc.log()
    assert pod.leftovers(instance, loaded) == []
    assert not pod.through_sidecar()


def test_a_mismatching_plan_is_loaded_again(pod):
    code, report, err = pod.init_container(pod.sidecar(fail="open"))
    assert code == 0, err
    handed = _ids(pod.status(report["instance"]))
    sc = pod.sidecar(fail="closed").start()         # SC_FAIL_OPEN differs: other programs
    try:
        log = sc.log()
        assert "the instance handed over by the loader does not match: its plan differs" in log, log
        assert "removed it" in log and "no loader run" not in log
        info = sc.stats()["interception"]
        assert "adopted" not in info and info["loader"]["timings"]["compile"]
        assert bpf_objects_left(handed) == []
        assert set(_ids(pod.status(report["instance"]))["links"]).isdisjoint(handed["links"])
        assert pod.through_sidecar()
    finally:
        assert sc.stop() == 0, sc.log()
    assert pod.leftovers(report["instance"], handed) == []


def test_without_a_loader_a_mismatching_instance_is_removed_and_fail_open_applies(pod):
    code, report, err = pod.init_container(pod.sidecar(fail="closed"))
    assert code == 0, err
    handed = _ids(pod.status(report["instance"]))
    sc = pod.sidecar(fail="open", prefix=WITHOUT_BCC).start()
    try:
        info = sc.stats()["interception"]
        assert info["state"] == "fail_open" and "bcc is not installed" in info["reason"], info
        assert "does not match" in sc.log() and "removed it" in sc.log()
        assert bpf_objects_left(handed) == []           # no program of another plan stays
        assert not pod.through_sidecar()
    finally:
        assert sc.stop() == 0, sc.log()


def test_the_init_container_lets_the_pod_start_without_bpf_only_when_fail_is_open(pod):
    """Where BPF cannot work (here: no bcc), `open` lets the init container succeed, so the
    pod starts and its sidecar runs without interception; `closed` fails it (exit 3)."""
    for fail, want in (("open", 0), ("closed", 3)):
        code, report, err = pod.init_container(pod.sidecar(fail=fail), prefix=WITHOUT_BCC)
        assert code == want, err
        assert report["ok"] is False and "bcc is not installed" in report["reason"]
        assert ("interception.fail is open: nothing loaded" in err) == (fail == "open"), err
        assert pod.instances() == []
        assert [p for c in [pod.cgroup] + pod.cgroup.children for p in cgroup_programs(c.path)] == []


def test_a_restarted_sidecar_container_takes_its_instance_back(pod):
    """The kubelet restarts a crashed sidecar container in a new cgroup and pid namespace,
    and runs no init container again: the new sidecar (no bcc) adopts the dead one's
    instance, whose owner it can tell gone only by its cgroup."""
    code, report, err = pod.init_container(pod.sidecar())
    assert code == 0, err
    instance = report["instance"]
    first = pod.sidecar(container="sidecar-1", prefix=OWN_PID_NAMESPACE + WITHOUT_BCC).start()
    loaded = _ids(pod.status(instance))
    os.killpg(first.proc.pid, signal.SIGKILL)           # the container's processes, all of them
    first.proc.wait(10)
    first.stop()
    gone = next(c for c in pod.cgroup.children if c.name == "sidecar-1")
    gone.close()                                        # the runtime removes its cgroup
    shown = pod.status(instance)
    assert shown["state"] == "stale", shown
    assert "another pid namespace" in shown["owner_status"] and "gone" in shown["owner_status"]
    second = pod.sidecar(container="sidecar-2", prefix=WITHOUT_BCC).start()
    try:
        info = second.stats()["interception"]
        assert info["adopted"]["was"] == "stale", info
        assert _ids(pod.status(instance)) == loaded
        assert info["sidecar_cgroup_excluded"]["cgroup"] == second.cgroup.path
        assert pod.through_sidecar()
        assert not pod.through_sidecar(cgroup=second.cgroup)
    finally:
        assert second.stop() == 0, second.log()
    assert pod.leftovers(instance, loaded) == []


def test_a_stale_instance_is_replaced_where_the_loader_can_run(pod):
    """With bcc at hand a dead owner's instance is loaded afresh, as without an init container."""
    code, report, err = pod.init_container(pod.sidecar())
    assert code == 0, err
    first = pod.sidecar(prefix=WITHOUT_BCC).start()
    loaded = _ids(pod.status(report["instance"]))
    os.kill(first.proc.pid, signal.SIGKILL)
    first.proc.wait(10)
    first.stop()
    second = pod.sidecar().start()
    try:
        assert "replaced stale kernel state" in second.log(), second.log()
        assert "loader" in second.stats()["interception"]
        assert bpf_objects_left(loaded) == []
        assert pod.through_sidecar()
    finally:
        assert second.stop() == 0, second.log()
    assert pod.leftovers(report["instance"], loaded) == []
