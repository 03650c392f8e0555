"""sidecar.bpf.config_maps for the kernel policy: what a plan writes into each table, the
rule for the sidecar's own ports, the SYN bucket's numbers; then a sync over fixture maps
(real pinned maps): entries added and removed, learned server ports left alone."""
import os
import tempfile

import pytest

from sidecar.bpf import config_maps, syscall
from sidecar.bpf.layout import (
    LPM4_KEY, POLICY_CONFIG, PORT_ALLOWED, PORT_SIDECAR, bitmap_ports, lpm_key, port_bitmap, port_key)
from sidecar.bpf.policy import read_policy
from sidecar.bpf.programs import Plan, plan_from_config
from sidecar.config import load_config
from tests.conftest import require_privileges


def _plan(**kw):
    base = dict(instance="i", app_cgroup="/sys/fs/cgroup/unified/pod", interface="eth0",
                outbound=("127.0.0.1", 15001), inbound_port=15006, fail_open=True,
                sidecar_ports=[15000, 15021, 15090])
    base.update(kw)
    return Plan(**base)


def _entries(name, plan):
    return next(cm for cm in config_maps.CONFIG_MAPS if cm.name == name).entries(plan)


def test_sidecar_ports_are_always_in_the_allow_table_tagged_as_the_sidecars():
    """Without an allow list (every port allowed) the sidecar's ports are still written:
    they are what exempts kubelet probes and scrapes from the SYN limit."""
    assert _entries("sc_allow_in", _plan()) == {port_key(p): bytes([PORT_SIDECAR]) for p in (15000, 15021, 15090)}
    both = _entries("sc_allow_in", _plan(allow_inbound_ports=[8080, 15021]))
    assert both[port_key(8080)] == bytes([PORT_ALLOWED])
    assert both[port_key(15021)] == bytes([PORT_SIDECAR])      # listed too: still the sidecar's


def test_policy_settings_switch_rules_on_only_when_configured():
    (value,) = _entries("sc_policy_cfg", _plan()).values()
    assert POLICY_CONFIG.unpack(value) == (0, 0, 0, 0, 0, 0)
    (value,) = _entries("sc_policy_cfg", _plan(allow_inbound_ports=[8080], syn_rate=200.0,
                                               deny_cidrs=["203.0.113.0/24", "10.0.0.0/8", "2001:db8::/32"])).values()
    interval, tolerance, allow, deny4, deny6, _ = POLICY_CONFIG.unpack(value)
    assert (interval, allow, deny4, deny6) == (5_000_000, 1, 2, 1)
    assert tolerance == 199 * interval            # burst defaults to one second's worth


@pytest.mark.parametrize("rate,burst,expected", [
    (200.0, None, (5_000_000, 199 * 5_000_000)),
    (10.0, 3, (100_000_000, 200_000_000)),
    (0.5, None, (2_000_000_000, 0)),              # 30/m: one SYN, then one per 2 s
    (None, None, (0, 0)),
])
def test_syn_limit_is_gcra_interval_and_tolerance(rate, burst, expected):
    assert config_maps.syn_limit(_plan(syn_rate=rate, syn_burst=burst)) == expected


def test_deny_cidrs_go_to_the_trie_of_their_family():
    plan = _plan(deny_cidrs=["203.0.113.0/24", "2001:db8::/32"])
    assert list(_entries("sc_deny4", plan)) == [lpm_key("203.0.113.0/24")[1]]
    assert list(_entries("sc_deny6", plan)) == [lpm_key("2001:db8::/32")[1]]
    assert LPM4_KEY.unpack(lpm_key("203.0.113.0/24")[1]) == (24, bytes([203, 0, 113, 0]))


def test_configured_server_ports_are_only_those_in_the_ephemeral_range():
    plan = _plan(server_ports=[5432, 8080, 40000, 50051], ephemeral_low=32768)
    assert bitmap_ports(_entries("sc_svc_ports", plan).items()) == [40000, 50051]


def test_a_plan_too_large_for_a_table_is_refused_before_anything_is_written():
    with pytest.raises(ValueError, match=r"kernel.deny_cidrs \(IPv4\): 1025 entries, the kernel map "
                                         r"sc_deny4 holds at most 1024"):
        config_maps.check(_plan(deny_cidrs=["10.%d.%d.0/24" % (i // 256, i % 256) for i in range(1025)]))


def test_plan_from_config_carries_the_kernel_section():
    with tempfile.NamedTemporaryFile("w", suffix=".yaml") as f:
        f.write("interception: {mode: ebpf, cgroup: /sys/fs/cgroup/unified/pod, interface: eth0}\n"
                "inbound: {tcp_passthrough_ports: [5432]}\n"
                "kernel:\n  deny_cidrs: [203.0.113.0/24, 'fd00:bad::/48']\n"
                "  allow_inbound_ports: [8080, 5432]\n  syn_rate_limit: {per_source: 100/s, burst: 20}\n")
        f.flush()
        plan = plan_from_config(load_config(f.name), "i")
    assert plan.deny_cidrs == ["203.0.113.0/24", "fd00:bad::/48"]
    assert plan.allow_inbound_ports == [5432, 8080]
    assert plan.sidecar_ports == [15000, 15021, 15090]
    assert plan.syn_rate == 100.0 and plan.syn_burst == 20
    assert {5432, 8080, 15021, 15090} <= set(plan.server_ports)
    assert 1024 <= plan.ephemeral_low <= 65535
    assert Plan.from_json(plan.to_json()) == plan


# -- sync over fixture maps ---------------------------------------------------------------------

POLICY_MAPS = ("sc_deny4", "sc_deny6", "sc_allow_in", "sc_svc_ports", "sc_policy_cfg")


@pytest.fixture
def maps():
    require_privileges(root=True)
    from tests.support.bpf_fixtures import FixtureMaps
    with FixtureMaps(*POLICY_MAPS) as fx:
        yield fx


def test_sync_writes_the_policy_and_reads_back_the_same(maps):
    plan = _plan(deny_cidrs=["203.0.113.0/24", "2001:db8::/32"], allow_inbound_ports=[8080],
                 syn_rate=10.0, syn_burst=5, server_ports=[40000])
    changes = config_maps.sync(os.path.dirname(maps.dir), plan)
    assert changes["sc_deny4"] == (1, 0) and changes["sc_allow_in"] == (4, 0)
    policy = read_policy(maps.dir)
    assert policy["deny_cidrs"] == ["203.0.113.0/24", "2001:db8::/32"]
    assert policy["allow_inbound_ports"] == [8080]
    assert policy["always_allowed_ports"] == [15000, 15021, 15090]
    assert policy["syn_rate_limit"] == {"per_second": 10.0, "burst": 5}
    assert policy["server_ports"] == [40000]


def test_sync_removes_what_config_dropped_and_leaves_learned_ports_alone(maps):
    path = os.path.dirname(maps.dir)
    config_maps.sync(path, _plan(deny_cidrs=["203.0.113.0/24"], allow_inbound_ports=[8080],
                                 server_ports=[40000]))
    # the counters program learned a server port in the same bitmap word
    (key, value), = port_bitmap([40000, 40001]).items()
    syscall.map_update(maps.fds["sc_svc_ports"], key, value)
    changes = config_maps.sync(path, _plan(server_ports=[40005]))
    assert changes["sc_deny4"] == (0, 1)
    policy = read_policy(maps.dir)
    assert policy["deny_cidrs"] == [] and policy["allow_inbound_ports"] is None
    assert policy["syn_rate_limit"] is None
    # merged, never cleared: learned ports and ports once configured stay server ports
    assert policy["server_ports"] == [40000, 40001, 40005]
