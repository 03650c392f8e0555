"""The policy and counter programs on exact, hand-built packets (BPF_PROG_TEST_RUN on the
programs the loader loaded for a throwaway pod): the cases real traffic rarely shows:
IPv6 extension-header chains short and too long, fragments, Ethernet padding, non-IP
frames, GSO-free byte accounting. The verdict is the program's return value (TC_ACT_SHOT
or tcx "next"); the drop counters and traffic map are read as the collectors read them."""
import dataclasses
import os
import sys

import pytest

from sidecar.bpf import BPFFS_ROOT, config_maps, syscall
from sidecar.bpf.cleanup import cleanup_instance
from sidecar.bpf.programs import Plan
from sidecar.bpf.state import instance_dir, maps_dir, read_links
from sidecar.bpf.traffic import read_drops, read_traffic
from tests.conftest import require_privileges
from tests.support import packets as pk
from tests.support.cgroups import Cgroup
from tests.support.netns import ROOT, Netns, veth_pair

pytestmark = [pytest.mark.privileged, pytest.mark.timeout(90)]

SHOT, NEXT = 2, -1
POD6, PEER6 = "fd00:207::1", "fd00:207::2"
POD4, PEER4 = "10.207.0.1", "10.207.0.2"


@pytest.fixture(scope="module")
def programs():
    """{function: prog fd} of a loaded instance with an allow list of 8080 and a deny list."""
    require_privileges(root=True, netns=True, tools=("ip", "nsenter"))
    with Netns() as ns, Netns() as peer, Cgroup() as app_cg, Cgroup() as sidecar_cg:
        dev, _ = veth_pair(ns, peer, "%s/24" % POD4, "%s/24" % PEER4)
        plan = Plan(instance="t-packets-%s" % app_cg.name[5:], app_cgroup=app_cg.path, interface=dev,
                    outbound=("127.0.0.1", 15001), inbound_port=15006, fail_open=True,
                    deny_cidrs=["203.0.113.0/24"], allow_inbound_ports=[8080],
                    sidecar_ports=[15000, 15021, 15090])
        r = ns.run([sys.executable, "-m", "sidecar.bpf.loader", "--plan", plan.to_json()],
                   cgroup=sidecar_cg, cwd=ROOT, check=False, timeout=60)
        assert r.returncode == 0, r.stderr
        path = instance_dir(plan.instance)
        fds = {}
        try:
            for link in read_links(path):
                fds[link["function"]] = syscall.prog_get_fd_by_id(link["prog_id"])
            yield {"fds": fds, "ns": ns, "maps": maps_dir(path), "plan": plan, "path": path}
        finally:
            for fd in fds.values():
                os.close(fd)
            cleanup_instance(plan.instance, owner_pid=os.getpid(), force=True)
        assert not os.path.exists(path)


def _run(programs, function, frame):
    return programs["ns"].call(syscall.prog_test_run, programs["fds"][function], frame)[0]


def _dropped(programs, reason, function, frame):
    before = read_drops(programs["maps"])[reason]
    verdict = _run(programs, function, frame)
    return verdict == SHOT and read_drops(programs["maps"])[reason] == before + 1


def _syn6(dport, ext=0):
    return pk.ipv6(PEER6, POD6, pk.TCP, pk.tcp_header(40000, dport, pk.SYN), extension_headers=ext)


def test_the_port_behind_an_extension_header_chain_is_judged(programs):
    assert _run(programs, "sc_policy", _syn6(8080, ext=3)) == NEXT
    assert _dropped(programs, "port_not_allowed", "sc_policy", _syn6(9999, ext=3))


def test_a_chain_too_long_to_walk_is_dropped_while_ports_are_enforced(programs):
    """Past SC_IPV6_EXT_MAX (6) headers the port is unknown: not let through unchecked."""
    assert _run(programs, "sc_policy", _syn6(8080, ext=6)) == NEXT
    assert _dropped(programs, "l4_unparsed", "sc_policy", _syn6(8080, ext=7))


def test_fragments_without_a_transport_header_pass_and_denied_sources_never(programs):
    later_fragment = pk.ipv4(PEER4, POD4, pk.UDP, b"x" * 64, frag_off=100)
    assert _run(programs, "sc_policy", later_fragment) == NEXT
    denied_fragment = pk.ipv4("203.0.113.9", POD4, pk.UDP, b"x" * 64, frag_off=100)
    assert _dropped(programs, "deny_cidr", "sc_policy", denied_fragment)


def test_established_tcp_and_non_ip_frames_pass(programs):
    ack = pk.ipv4(PEER4, POD4, pk.TCP, pk.tcp_header(40000, 9999, pk.ACK) + b"data")
    assert _run(programs, "sc_policy", ack) == NEXT          # only SYNs open connections
    assert _run(programs, "sc_policy", pk.arp()) == NEXT


def _traffic(programs):
    return {r.key: (r.bytes, r.packets) for r in read_traffic(programs["maps"])}


def test_counted_bytes_are_the_ip_packets_without_ethernet_padding(programs):
    """A 40-byte IPv4 ACK padded to Ethernet's 60-byte minimum counts 40 bytes."""
    frame = pk.ipv4("10.207.9.1", POD4, pk.TCP, pk.tcp_header(40001, 8080, pk.ACK, options=b""))
    assert len(frame) == 54
    assert _run(programs, "sc_count_in", frame + b"\0" * 6) == NEXT
    assert _traffic(programs)[("inbound", "10.207.9.1", 8080, "tcp")] == (40, 1)


def test_ipv6_extension_headers_are_counted_and_their_port_found(programs):
    body = pk.udp_header(5300, 40002, 100) + b"u" * 100
    frame = pk.ipv6(POD6, "fd00:207::9", pk.UDP, body, extension_headers=2)
    assert _run(programs, "sc_count_out", frame) == NEXT
    assert _traffic(programs)[("outbound", "fd00:207::9", 5300, "udp")] == (len(frame) - 14, 1)


def test_protocols_without_ports_count_with_port_zero(programs):
    icmp = pk.ipv4("10.207.9.2", POD4, 1, b"\x08\0\0\0\0\0\0\0" + b"p" * 56)
    assert _run(programs, "sc_count_in", icmp) == NEXT
    assert _traffic(programs)[("inbound", "10.207.9.2", 0, "icmp")] == (84, 1)
    assert _run(programs, "sc_count_in", pk.arp()) == NEXT
    assert not any(k[1] == "0.0.0.0" for k in _traffic(programs))


def test_clearing_the_allow_list_opens_every_port(programs):
    try:
        config_maps.sync(programs["path"], dataclasses.replace(programs["plan"], allow_inbound_ports=[]))
        assert _run(programs, "sc_policy", _syn6(9999)) == NEXT
    finally:
        config_maps.sync(programs["path"], programs["plan"])
    assert _run(programs, "sc_policy", _syn6(9999)) == SHOT
