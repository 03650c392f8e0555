"""sidecar.bpf.layout: the C structs mirrored in Python, and the loader's -D flags."""
import pytest

from sidecar.bpf.layout import ENDPOINT, MAPS, pack_endpoint, port_key, unpack_endpoint
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
    assert len(wanted_families(_plan())) == 3


def test_plan_round_trips_as_json():
    plan = _plan(exclude_outbound=[53], exclude_inbound=[15021])
    assert Plan.from_json(plan.to_json()) == plan
