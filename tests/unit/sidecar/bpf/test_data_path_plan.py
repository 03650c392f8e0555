"""The data-path families (local-hop acceleration, splice) as the loader and the workers
see them: which configs load them, their -D flags, and the C layouts mirrored in
sidecar/bpf/layout.py (checked against the headers themselves)."""
import os
import re

import pytest

from sidecar.bpf.layout import (
    HOP_COUNTERS, HOP_KEY, MAPS, SPLICE_END, SPLICE_FRESH, SPLICE_KERNEL, SPLICE_USER,
    pack_endpoint, pack_hop_key)
from sidecar.bpf.programs import (
    BPF_DIR, Plan, accelerates_local_hops, cflags_for, needs_loader, plan_from_config,
    splices_tunnels, wanted_families)
from sidecar.config import load_config_text

LIB = os.path.join(BPF_DIR, "lib")


def _header(name):
    with open(os.path.join(LIB, name)) as f:
        return f.read()


def _enum(text, prefix):
    return [(m.group(1), int(m.group(2))) for m in re.finditer(r"\b(%s\w+) = (\d+)," % prefix, text)]


def _define(text, name):
    return re.search(r"#define %s (\S+)" % name, text).group(1)


def test_hop_counters_mirror_the_c_enum_in_order():
    *counters, (last, count) = _enum(_header("sidecar_hops.h"), "SC_HOP_CNT_")
    assert last == "SC_HOP_CNT_MAX" and count == len(HOP_COUNTERS) == MAPS["sc_hop_counters"].max_entries
    assert [n for _, n in counters] == list(range(len(HOP_COUNTERS)))
    assert [c for c, _ in counters] == [
        "SC_HOP_CNT_SOCKETS_ADDED", "SC_HOP_CNT_SOCKETS_REMOVED", "SC_HOP_CNT_OUTBOUND_HOPS",
        "SC_HOP_CNT_INBOUND_HOPS", "SC_HOP_CNT_MISMATCH", "SC_HOP_CNT_INSERT_FAILED",
        "SC_HOP_CNT_MSGS_REDIRECTED", "SC_HOP_CNT_BYTES_REDIRECTED", "SC_HOP_CNT_STAYED_ON_STACK",
        "SC_HOP_CNT_OVER_BUDGET"]      # HOP_COUNTERS names them, in this order


def test_hop_and_splice_structs_and_map_sizes_match_the_headers():
    hops, splice = _header("sidecar_hops.h"), _header("sidecar_splice.h")
    assert HOP_KEY.size == 40 == MAPS["sc_hop_socks"].key_size == MAPS["sc_hop_pairs"].key_size
    assert MAPS["sc_hop_socks"].max_entries == int(_define(hops, "SC_HOP_SOCKS_MAX"))
    assert MAPS["sc_hop_pairs"].max_entries == int(_define(hops, "SC_HOP_PAIRS_MAX"))
    assert MAPS["sc_hop_pairs"].value_size == 32          # struct sc_hop_pair
    assert SPLICE_END.size == 24 == MAPS["sc_splice_ends"].value_size
    assert MAPS["sc_splice_socks"].max_entries == MAPS["sc_splice_ends"].max_entries == \
        int(_define(splice, "SC_SPLICE_MAX"))
    assert (SPLICE_FRESH, SPLICE_KERNEL, SPLICE_USER) == tuple(
        int(_define(splice, n)) for n in ("SC_SPLICE_FRESH", "SC_SPLICE_KERNEL", "SC_SPLICE_USER"))


def test_a_hop_key_is_the_two_endpoints_and_v4_mapped_is_v4():
    key = pack_hop_key(("127.0.0.1", 40000), ("127.0.0.1", 15001))
    assert key == pack_endpoint("127.0.0.1", 40000) + pack_endpoint("127.0.0.1", 15001)
    assert pack_hop_key(("::ffff:127.0.0.1", 40000), ("::ffff:127.0.0.1", 15001)) == key


def _plan(**kw):
    base = dict(instance="i", app_cgroup="/sys/fs/cgroup/unified/pod", interface="eth0",
                outbound=("127.0.0.1", 15001), inbound_port=15006, fail_open=True)
    base.update(kw)
    return Plan(**base)


@pytest.mark.parametrize("app,flags", [
    (("127.0.0.1", 8080), ["-DSC_APP_PORT=8080", "-DSC_APP_FAMILY=2", "-DSC_APP_IP6_0=0x00000000",
                           "-DSC_APP_IP6_1=0x00000000", "-DSC_APP_IP6_2=0x0000ffff", "-DSC_APP_IP6_3=0x7f000001"]),
    (("::1", 9000), ["-DSC_APP_PORT=9000", "-DSC_APP_FAMILY=10", "-DSC_APP_IP6_0=0x00000000",
                     "-DSC_APP_IP6_1=0x00000000", "-DSC_APP_IP6_2=0x00000000", "-DSC_APP_IP6_3=0x00000001"]),
])
def test_inbound_app_reaches_the_programs_as_an_endpoint(app, flags):
    got = [f for f in cflags_for(_plan(app=app), "/m") if f.startswith("-DSC_APP_")]
    assert got == flags


def test_iptables_plans_load_only_the_data_path_families():
    names = lambda plan: [f.name for f in wanted_families(plan)]
    # an interface in the config changes nothing there: its counters and policy are ebpf mode's
    assert names(_plan(interception="iptables", accelerate_local=True, splice=True)) == [
        "local_hops", "tunnel_splice"]
    assert names(_plan(interception="iptables")) == []
    assert names(_plan(accelerate_local=True, splice=True)) == [
        "redirect_connect", "original_dst_getsockopt", "inbound_steer", "local_hops", "tunnel_splice",
        "kernel_policy", "traffic_counters"]
    assert names(_plan(accelerate_local=True, splice=True, interface=None)) == [
        "redirect_connect", "original_dst_getsockopt", "local_hops", "tunnel_splice"]


def test_an_iptables_plan_on_maps_only_resolves_no_interface():
    from sidecar.bpf.preflight import resolve_targets
    targets = resolve_targets(_plan(interception="iptables", splice=True, interface="no-such-dev"))
    assert (targets.app_cgroup, targets.sidecar_cgroup, targets.interface, targets.ifindex) == (
        None, None, None, None)


def _cfg(mode, cgroup=True, **ic):
    lines = ["interception:", "  mode: %s" % mode]
    if cgroup == "pod":
        lines.append("  cgroup: pod")
    elif cgroup:
        lines.append("  cgroup: /sys/fs/cgroup/unified/pod")
    lines += ["  %s: %s" % (k, v) for k, v in ic.items()]
    return load_config_text("\n".join(lines) + "\n")


@pytest.mark.parametrize("mode,cgroup,ic,accel,splice,loader", [
    ("ebpf", True, {}, False, True, True),                                     # splice: auto
    ("ebpf", True, {"accelerate_local": "true"}, True, True, True),
    ("ebpf", True, {"splice": "false"}, False, False, True),
    ("iptables", True, {}, False, False, False),                               # pure iptables
    ("iptables", True, {"accelerate_local": "true"}, True, True, True),        # auto follows
    ("iptables", True, {"accelerate_local": "true", "splice": "false"}, True, False, True),
    ("iptables", False, {"splice": "true"}, False, True, True),
    ("iptables", False, {"accelerate_local": "true"}, False, False, False),    # no app cgroup
    ("ebpf", "pod", {"accelerate_local": "true"}, False, True, True),          # pod: one cgroup
    ("off", False, {"accelerate_local": "true", "splice": "true"}, False, False, False),
])
def test_which_configs_load_the_data_path_programs(mode, cgroup, ic, accel, splice, loader):
    cfg = _cfg(mode, cgroup, **ic)
    assert (accelerates_local_hops(cfg), splices_tunnels(cfg), needs_loader(cfg)) == (accel, splice, loader)
    if loader:
        plan = plan_from_config(cfg, "i")
        assert (plan.interception, plan.accelerate_local, plan.splice) == (mode, accel, splice)


def test_accelerate_local_without_what_it_needs_is_a_warning_not_an_error():
    assert _cfg("iptables", False, accelerate_local="true").warnings == [
        "interception.accelerate_local (line 3): needs interception.cgroup (the app's side of each "
        "hop is found there): local hops are not accelerated"]
    assert _cfg("off", False, accelerate_local="true").warnings == [
        "interception.accelerate_local (line 3): no effect with interception.mode off (nothing is "
        "intercepted)"]
    pod = [w for w in _cfg("ebpf", "pod", accelerate_local="true").warnings if "accelerate_local" in w]
    assert len(pod) == 1 and "not with interception.cgroup: pod" in pod[0]


def test_a_kernel_policy_in_iptables_mode_is_a_warning():
    policy = "kernel: {deny_cidrs: [203.0.113.0/24]}\n"
    text = "interception: {mode: iptables, cgroup: /sys/fs/cgroup/unified/pod, interface: eth0, " \
           "accelerate_local: true}\n" + policy
    assert load_config_text(text).warnings == [
        "kernel.deny_cidrs (line 2): not enforced with interception.mode iptables: the kernel "
        "policy runs at the pod interface in ebpf mode"]
    assert load_config_text("interception: {mode: ebpf, cgroup: pod, interface: eth0}\n"
                            + policy).warnings == []


def test_splice_takes_auto_true_or_false():
    from sidecar.config import ConfigError
    with pytest.raises(ConfigError) as e:
        _cfg("ebpf", splice="sometimes")
    assert "interception.splice (line 4): 'sometimes' is not one of: auto, true, false" in str(e.value)
