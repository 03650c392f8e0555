"""The loader (`python -m sidecar.bpf.loader`) on its own: what it refuses before touching
the kernel, each with one clear line and the exit code the manager acts on (EXIT_CONFIG:
unsafe or wrong, refuse to start; EXIT_UNAVAILABLE: BPF impossible here, apply
interception.fail), its report when it succeeds, and its print flags.

Every refusal is checked to leave nothing pinned and nothing attached. The one test that
runs the loader in the host's network namespace names an interface that does not exist
there, and the loader refuses it before any lookup: it cannot attach to a host interface.
"""
import json
import os
import subprocess
import sys

import pytest

from sidecar.bpf import BPFFS_ROOT, EXIT_CONFIG, EXIT_OK, EXIT_UNAVAILABLE
from sidecar.bpf.cleanup import cleanup_instance
from sidecar.bpf.programs import Plan
from tests.conftest import require_privileges
from tests.support.cgroups import CGROUP_ROOT, Cgroup
from tests.support.kernel_state import cgroup_programs
from tests.support.netns import ROOT, Netns, veth_pair

pytestmark = [pytest.mark.privileged, pytest.mark.timeout(90)]


@pytest.fixture
def pod():
    require_privileges(root=True, netns=True, tools=("ip", "nsenter", "bpftool", "unshare"))
    with Netns() as ns, Netns() as peer, Cgroup() as app_cg, Cgroup() as sidecar_cg:
        dev, _ = veth_pair(ns, peer, "10.204.0.1/24", "10.204.0.2/24")
        yield {"ns": ns, "app_cg": app_cg, "sidecar_cg": sidecar_cg, "dev": dev}


def _plan(pod, **changes):
    plan = Plan(instance="t-loader-%s" % pod["app_cg"].name[5:], app_cgroup=pod["app_cg"].path,
                interface=pod["dev"], outbound=("127.0.0.1", 15001), inbound_port=15006,
                fail_open=True, exclude_outbound=[53], exclude_inbound=[15021, 15090])
    for key, value in changes.items():
        setattr(plan, key, value)
    return plan


def _load(pod, plan, cgroup="sidecar", netns=True, wrap=(), *extra):
    """Runs the loader; (exit code, the JSON report, stderr)."""
    cmd = list(wrap) + [sys.executable, "-m", "sidecar.bpf.loader", "--plan", plan.to_json()] + list(extra)
    cg = pod["sidecar_cg"] if cgroup == "sidecar" else cgroup
    if netns:
        r = pod["ns"].run(cmd, cgroup=cg, cwd=ROOT, check=False, timeout=60)
    else:
        full = cg.command(cmd) if cg is not None else cmd
        r = subprocess.run(full, cwd=ROOT, capture_output=True, text=True, timeout=60)
    lines = r.stdout.strip().splitlines()
    report = json.loads(lines[-1]) if lines and lines[-1].startswith("{") else None
    return r.returncode, report, r.stderr


def _nothing_left(pod, plan):
    assert not os.path.exists(os.path.join(BPFFS_ROOT, plan.instance))
    assert cgroup_programs(pod["app_cg"].path) == []
    assert cgroup_programs(pod["sidecar_cg"].path) == []


def _refused(pod, plan, code, reason, **kw):
    got, report, err = _load(pod, plan, **kw)
    assert got == code, err
    assert report == {"ok": False, "code": code, "reason": report["reason"]}
    assert reason in report["reason"], report["reason"]
    assert err.strip().splitlines()[-1] == "loader: " + report["reason"]
    _nothing_left(pod, plan)
    return report["reason"]


def test_loads_attaches_pins_and_reports(pod):
    plan = _plan(pod)
    code, report, err = _load(pod, plan)
    try:
        assert code == EXIT_OK, err
        assert report["ok"] and report["instance"] == plan.instance
        assert {l["function"] for l in report["links"]} == {
            "sc_connect4", "sc_connect6", "sc_sockops", "sc_getsockopt", "sc_inbound",
            "sc_policy", "sc_count_in", "sc_count_out"}
        assert set(report["timings"]) >= {"preflight", "import_bcc", "compile", "load", "attach", "total"}
        assert set(report["timings"]["compile"]) == {
            "redirect_connect.c", "original_dst_getsockopt.c", "inbound_steer.c", "kernel_policy.c",
            "traffic_counters.c"}
        assert report["peak_rss_kb"] > 0
        path = os.path.join(BPFFS_ROOT, plan.instance)
        assert sorted(os.listdir(path)) == ["links", "maps", "owner"]
        assert sorted(os.listdir(os.path.join(path, "links"))) == sorted(l["function"] for l in report["links"])
        assert {p[1] for p in cgroup_programs(pod["app_cg"].path)} == {"sc_connect4", "sc_connect6", "sc_sockops"}
        assert cgroup_programs(pod["sidecar_cg"].path) == [("cgroup_getsockopt", "sc_getsockopt")]
    finally:
        cleanup_instance(plan.instance, owner_pid=os.getpid())
    _nothing_left(pod, plan)


def test_without_an_interface_inbound_is_not_loaded(pod):
    plan = _plan(pod, interface=None)
    code, report, err = _load(pod, plan)
    try:
        assert code == EXIT_OK, err
        assert set(report["timings"]["compile"]) == {"redirect_connect.c", "original_dst_getsockopt.c"}
    finally:
        cleanup_instance(plan.instance, owner_pid=os.getpid())


def test_refuses_the_root_cgroup_as_the_apps(pod):
    _refused(pod, _plan(pod, app_cgroup=CGROUP_ROOT), EXIT_CONFIG, "interception.cgroup is the root cgroup")


def test_refuses_to_run_from_the_root_cgroup(pod):
    _refused(pod, _plan(pod), EXIT_CONFIG, "the sidecar runs in the root cgroup", cgroup=None)


def test_pod_mode_refuses_a_sidecar_whose_parent_is_the_root_cgroup(pod):
    """`interception.cgroup: pod` from a cgroup directly under the root: its parent, the
    pod's cgroup, would be the root cgroup."""
    plan = _plan(pod, app_cgroup="pod")
    reason = _refused(pod, plan, EXIT_CONFIG, "interception.cgroup: pod: the parent of the sidecar's cgroup")
    assert "is the root cgroup (%s)" % CGROUP_ROOT in reason
    assert not [p for p in cgroup_programs(CGROUP_ROOT) if p[1].startswith("sc_")]
    _refused(pod, plan, EXIT_CONFIG, "the sidecar runs in the root cgroup", cgroup=None)


def test_refuses_a_sidecar_inside_the_apps_cgroup(pod):
    inner = Cgroup()
    inner.path = os.path.join(pod["app_cg"].path, "sidecar")
    with inner:
        _refused(pod, _plan(pod), EXIT_CONFIG, "is inside the app's cgroup", cgroup=inner)


def test_refuses_an_app_inside_the_sidecars_cgroup(pod):
    inner = Cgroup()
    inner.path = os.path.join(pod["sidecar_cg"].path, "app")
    with inner:
        _refused(pod, _plan(pod, app_cgroup=inner.path), EXIT_CONFIG,
                 "is inside the sidecar's cgroup")


def test_refuses_a_missing_cgroup_or_interface(pod):
    _refused(pod, _plan(pod, app_cgroup=pod["app_cg"].path + "-missing"), EXIT_CONFIG, "does not exist")
    _refused(pod, _plan(pod, interface="sc-missing0"), EXIT_CONFIG,
             "interception.interface sc-missing0 does not exist in the sidecar's network namespace")


def test_refuses_an_interface_of_the_hosts_network_namespace(pod):
    _refused(pod, _plan(pod, interface="sc-missing0"), EXIT_CONFIG,
             "interception.interface sc-missing0 is in the host's network namespace", netns=False)


def test_a_cgroup_v1_directory_means_bpf_is_unavailable(pod):
    v1 = next((p for p in ("/sys/fs/cgroup/pids", "/sys/fs/cgroup/memory", "/sys/fs/cgroup/cpu")
               if os.path.isdir(p) and not os.path.samefile(p, CGROUP_ROOT)), None)
    if v1 is None:
        pytest.skip("no cgroup v1 hierarchy on this machine to point at")
    _refused(pod, _plan(pod, app_cgroup=v1), EXIT_UNAVAILABLE, "is not a cgroup v2 directory")


def test_missing_kernel_headers_mean_bpf_is_unavailable(pod):
    """The headers hidden in a private mount namespace (the host's mounts are untouched)."""
    import platform
    hide = ["unshare", "--mount", "--propagation", "private", "--", "sh", "-c",
            'mount -t tmpfs none "/lib/modules/%s" && exec "$@"' % platform.release(), "hide-headers"]
    _refused(pod, _plan(pod), EXIT_UNAVAILABLE, "no kernel headers at /lib/modules/", wrap=hide)


def test_without_capabilities_bpf_is_unavailable(pod):
    no_caps = ["setpriv", "--inh-caps=-all", "--ambient-caps=-all", "--bounding-set=-all", "--"]
    _refused(pod, _plan(pod), EXIT_UNAVAILABLE, "BPF not permitted", wrap=no_caps)


def test_print_cflags_shows_every_files_flags(pod):
    plan = _plan(pod, outbound=("127.0.0.1", 16001), fail_open=False)
    r = subprocess.run([sys.executable, "-m", "sidecar.bpf.loader", "--plan", plan.to_json(),
                        "--print-cflags"], cwd=ROOT, capture_output=True, text=True, timeout=30)
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    assert [l.split(":")[0].rsplit("/", 1)[1] for l in lines] == [
        "redirect_connect.c", "original_dst_getsockopt.c", "inbound_steer.c", "kernel_policy.c",
        "traffic_counters.c"]
    for flag in ('-DSC_MAP_DIR="%s/%s/maps"' % (BPFFS_ROOT, plan.instance), "-DSC_OUT_PORT=16001",
                 "-DSC_OUT_IP4=0x7f000001", "-DSC_OUT_IP6_3=0x00000001", "-DSC_IN_PORT=15006",
                 "-DSC_FAIL_OPEN=0"):
        assert all(flag in l for l in lines), (flag, lines)
    assert not os.path.exists(os.path.join(BPFFS_ROOT, plan.instance))


def test_print_c_shows_the_c_as_compiled_and_leaves_nothing(pod):
    plan = _plan(pod)
    r = subprocess.run([sys.executable, "-m", "sidecar.bpf.loader", "--plan", plan.to_json(),
                        "--print-c"], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    assert "int sc_connect4(struct bpf_sock_addr *ctx)" in r.stderr
    assert "int sc_inbound(struct __sk_buff *skb)" in r.stderr
    assert "-D SC_OUT_PORT=15001" in r.stderr           # the clang command line
    assert [n for n in os.listdir(BPFFS_ROOT) if n.startswith("print-c-")] == []
