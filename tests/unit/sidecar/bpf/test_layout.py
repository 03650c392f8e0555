"""sidecar.bpf.layout: the C structs mirrored in Python, and the loader's -D flags."""
import pytest

import os
import re

from sidecar.bpf.layout import (
    COUNTERS, DROP_REASONS, ENDPOINT, LPM4_KEY, LPM6_KEY, MAPS, POLICY_CONFIG, TRAFFIC_KEY,
    TRAFFIC_VALUE, lpm_key, pack_endpoint, pack_traffic_key, port_key, protocol_name, unpack_endpoint,
    unpack_lpm_key, unpack_traffic_key)
from sidecar.bpf.programs import BPF_DIR
from sidecar.bpf.programs import FAMILIES, TARGETS, Plan, cflags_for, wanted_families


def test_endpoint_is_20_bytes_with_ipv4_stored_v4_mapped():
    assert ENDPOINT.size == 20
    raw = pack_endpoint("10.0.1.5", 9080)
    assert raw[:16] == b"\0" * 10 + b"\xff\xff" + bytes([10, 0, 1, 5])
    assert raw[16:18] == (9080).to_bytes(2, "big")
    assert int.from_bytes(raw[18:], "little") == 2          # AF_INET
    # The same connection seen from a dual-stack socket is the same key.
    assert pack_endpoint("::ffff:10.0.1.5", 9080) == raw


@pytest.mark.parametrize("host,port", [("10.0.1.5", 9080), ("fd00::5", 443), ("::1", 15001)])
def test_endpoint_round_trips(host, port):
    assert unpack_endpoint(pack_endpoint(host, port)) == (host, port)


def test_port_keys_are_host_order_u16():
    assert port_key(53) == (53).to_bytes(2, "little")
    assert MAPS["sc_excl_out"].key_size == 2


def _plan(**kw):
    base = dict(instance="i", app_cgroup="/sys/fs/cgroup/unified/pod", interface="eth0",
                outbound=("127.0.0.1", 15001), inbound_port=15006, fail_open=True)
    base.update(kw)
    return Plan(**base)


def test_cflags_carry_every_parameter_from_one_place():
    flags = cflags_for(_plan(outbound=("127.0.0.2", 16001), fail_open=False), "/sys/fs/bpf/sidecar/i/maps")
    assert '-DSC_MAP_DIR="/sys/fs/bpf/sidecar/i/maps"' in flags
    assert "-DSC_OUT_IP4=0x7f000002" in flags and "-DSC_OUT_PORT=16001" in flags
    assert ["-DSC_OUT_IP6_%d=0x%08x" % (i, w) for i, w in enumerate((0, 0, 0, 1))] == \
        [f for f in flags if f.startswith("-DSC_OUT_IP6_")]
    assert "-DSC_FAIL_OPEN=0" in flags and "-DSC_IN_PORT=15006" in flags


def test_a_wildcard_outbound_listener_is_reached_on_loopback():
    flags = cflags_for(_plan(outbound=("0.0.0.0", 15001)), "/m")
    assert "-DSC_OUT_IP4=0x7f000001" in flags


def test_families_name_known_targets_and_inbound_needs_an_interface():
    assert all(p.target in TARGETS for f in FAMILIES for p in f.programs)
    assert [f.name for f in wanted_families(_plan(interface=None))] == [
        "redirect_connect", "original_dst_getsockopt"]
    assert [f.name for f in wanted_families(_plan())] == [
        "redirect_connect", "original_dst_getsockopt", "inbound_steer", "kernel_policy",
        "traffic_counters"]
    assert [f.name for f in wanted_families(_plan(skip_families=["traffic_counters"]))][-1] == "kernel_policy"


def test_policy_runs_first_on_tcx_ingress():
    """The loader attaches a `first` program before the others on its hook: the policy
    drops before inbound steering and the counters see a packet."""
    firsts = [p.function for f in FAMILIES for p in f.programs if p.first]
    assert firsts == ["sc_policy"]


def test_plan_round_trips_as_json():
    plan = _plan(exclude_outbound=[53], exclude_inbound=[15021])
    assert Plan.from_json(plan.to_json()) == plan


def test_ephemeral_low_is_a_flag():
    assert "-DSC_EPHEMERAL_LOW=40000" in cflags_for(_plan(ephemeral_low=40000), "/m")


# -- the C headers and their mirrors agree -----------------------------------------------------

def _header(name):
    with open(os.path.join(BPF_DIR, "lib", name)) as f:
        return f.read()


def _enum(text, enum):
    body = re.search(r"enum %s \{(.*?)\};" % enum, text, re.S).group(1)
    return [(name, int(value)) for name, value in re.findall(r"(SC_\w+) = (\d+)", body)]


def test_drop_reasons_mirror_the_numbered_table():
    """bpf/lib/sidecar_drop_reasons.h is the one table: same order, same names as labels."""
    entries = _enum(_header("sidecar_drop_reasons.h"), "sc_drop_reason")
    *reasons, (last, count) = entries
    assert last == "SC_DROP_MAX" and count == len(DROP_REASONS)
    assert [v for _, v in reasons] == list(range(len(reasons)))
    assert [n[len("SC_DROP_"):].lower() for n, _ in reasons] == list(DROP_REASONS)
    # every label is quoted in the header's comment of its entry
    for reason in DROP_REASONS:
        assert '"%s"' % reason in _header("sidecar_drop_reasons.h")


def test_interception_counters_mirror_their_table():
    *entries, (last, count) = _enum(_header("sidecar_counters.h"), "sc_counter")
    assert last == "SC_CNT_MAX" and count == len(COUNTERS) == len(entries)


def test_map_sizes_mirror_the_header():
    text = _header("sidecar_maps.h")
    defines = {n: int(v) for n, v in re.findall(r"#define (SC_\w+_(?:MAX|WORDS)) (\d+)", text)}
    for name, define in (("sc_traffic", "SC_TRAFFIC_MAX"), ("sc_svc_ports", "SC_SVC_PORT_WORDS"),
                         ("sc_deny4", "SC_DENY_CIDRS_MAX"), ("sc_deny6", "SC_DENY_CIDRS_MAX"),
                         ("sc_syn_bucket", "SC_SYN_SOURCES_MAX"), ("sc_allow_in", "SC_PORT_SET_MAX"),
                         ("sc_orig_tuple", "SC_ORIG_TUPLE_MAX"), ("sc_orig_cookie", "SC_ORIG_COOKIE_MAX")):
        assert MAPS[name].max_entries == defines[define], name
    # every mirrored map is defined in C: the shared ones in sidecar_maps.h, the data-path
    # families' in their own headers
    defined = text + _header("sidecar_hops.h") + _header("sidecar_splice.h")
    for name in MAPS:
        assert re.search(r"\b%s,\s" % name, defined), "%s is not defined in bpf/lib/" % name


def test_struct_sizes_have_no_padding():
    assert TRAFFIC_KEY.size == 20 and TRAFFIC_VALUE.size == 16
    assert POLICY_CONFIG.size == 32
    assert LPM4_KEY.size == 8 and LPM6_KEY.size == 20


@pytest.mark.parametrize("direction,peer,port,proto", [
    ("inbound", "10.0.0.2", 8080, 6), ("outbound", "fd00::2", 53, 17), ("inbound", "10.1.2.3", 0, 1)])
def test_traffic_keys_round_trip(direction, peer, port, proto):
    key = pack_traffic_key(direction, peer, port, proto)
    assert len(key) == 20
    assert unpack_traffic_key(key) == (direction, peer, port, proto)


def test_traffic_key_layout_matches_the_c_struct():
    key = pack_traffic_key("outbound", "10.0.0.2", 9080, 6)
    assert key[:16] == b"\0" * 10 + b"\xff\xff" + bytes([10, 0, 0, 2])
    assert key[16:18] == (9080).to_bytes(2, "big") and key[18] == 1 and key[19] == 6


@pytest.mark.parametrize("cidr,trie", [("203.0.113.0/24", "sc_deny4"), ("10.0.0.5/32", "sc_deny4"),
                                       ("2001:db8::/32", "sc_deny6"), ("::/0", "sc_deny6")])
def test_lpm_keys_round_trip(cidr, trie):
    name, key = lpm_key(cidr)
    assert name == trie and unpack_lpm_key(key) == cidr
    assert int.from_bytes(key[:4], "little") == int(cidr.split("/")[1])


def test_protocol_labels_are_bounded_names_or_numbers():
    assert [protocol_name(n) for n in (6, 17, 1, 58, 47)] == ["tcp", "udp", "icmp", "icmpv6", "47"]


def test_server_ports_are_a_bitmap_of_every_port():
    from sidecar.bpf.layout import bitmap_ports, port_bitmap
    words = port_bitmap([0, 63, 64, 45000, 65535])
    assert MAPS["sc_svc_ports"].max_entries * 64 == 65536
    assert list(words)[0] == (0).to_bytes(4, "little")
    assert words[(0).to_bytes(4, "little")] == ((1 << 0) | (1 << 63)).to_bytes(8, "little")
    assert bitmap_ports(words.items()) == [0, 63, 64, 45000, 65535]
