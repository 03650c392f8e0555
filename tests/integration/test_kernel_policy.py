"""L3/L4 policy in the kernel (bpf/kernel_policy.c) under a real ebpf-mode sidecar: each
drop rule with its reason counter, the ports that are never locked out, replies to the
pod's own connections, the SYN rate limit per source, the policy running before inbound
steering, and policy changes on reload by map writes alone (same programs, same links).

The peer pod has several addresses: an ordinary client, two more sources for the SYN
limit, and one inside each denied range (IPv4 and IPv6); a client binds to the address it
speaks from. A dropped SYN shows as a connect that does not complete within a short
timeout (the kernel would retransmit it after a second).
"""
import errno
import json
import select
import socket
import time

import pytest

from sidecar.bpf import syscall
from sidecar.bpf.layout import AttachType
from tests.conftest import require_privileges
from tests.support.cgroups import Cgroup
from tests.support.kernel_metrics import drops, traffic, wait_for
from tests.support.netns import (
    Netns, NetnsSidecar, TcpServer, echo_handler, echo_headers_handler, run_app_python, veth_pair)
from tests.integration.test_kernel_counters import UdpEcho

pytestmark = [pytest.mark.privileged, pytest.mark.timeout(90)]

POD_V4, PEER_V4, SRC_A, SRC_B = "10.206.0.1", "10.206.0.2", "10.206.0.3", "10.206.0.4"
DENIED_V4, DENY_V4 = "10.206.0.200", "10.206.0.192/26"
POD_V6, PEER_V6 = "fd00:206::1", "fd00:206::2"
DENIED_V6, DENY_V6 = "fd00:206::bad:1", "fd00:206::bad:0/112"
APP_PORT = 8080             # steered to the sidecar, allowed
ALLOWED_TCP = 7200          # the app's own listener on an excluded port, allowed
BLOCKED_TCP = 7300          # the same, but not in allow_inbound_ports
ALLOWED_UDP, BLOCKED_UDP = 5300, 5400
PEER_HTTP, PEER_UDP = 9080, 5353
SHORT = 0.5                 # a dropped SYN is retransmitted after 1 s: this tells them apart


@pytest.fixture(scope="module")
def pods():
    require_privileges(root=True, netns=True, tools=("ip", "nsenter", "setpriv"))
    with Netns() as pod, Netns() as peer, Cgroup() as app_cg, Cgroup() as sidecar_cg:
        dev, _ = veth_pair(pod, peer, ["%s/24" % POD_V4, "%s/64" % POD_V6],
                           ["%s/24" % a for a in (PEER_V4, SRC_A, SRC_B, DENIED_V4)]
                           + ["%s/64" % a for a in (PEER_V6, DENIED_V6)])
        for ns in (pod, peer):      # no (D)SACK blocks: packet sizes stay what the test counts
            ns.run(["sysctl", "-q", "-w", "net.ipv4.tcp_sack=0", "net.ipv4.tcp_dsack=0"])
        servers = [TcpServer(pod, ("127.0.0.1", APP_PORT), echo_headers_handler),
                   TcpServer(pod, ("::", ALLOWED_TCP), echo_handler),
                   TcpServer(pod, ("::", BLOCKED_TCP), echo_handler),
                   TcpServer(peer, (PEER_V4, PEER_HTTP), echo_headers_handler)]
        udp = []
        try:
            for srv in servers:
                srv.__enter__()
            udp = [UdpEcho(pod, ALLOWED_UDP), UdpEcho(pod, BLOCKED_UDP), UdpEcho(peer, PEER_UDP)]
            sidecar = NetnsSidecar(
                pod, mode="ebpf", app_cgroup=app_cg, cgroup=sidecar_cg, interface=dev,
                app=("127.0.0.1", APP_PORT),
                extra={"interception": {"exclude_inbound_ports": [ALLOWED_TCP, BLOCKED_TCP]},
                       "telemetry": {"health": {"listen": "0.0.0.0:15021"}},
                       "kernel": {"deny_cidrs": [DENY_V4, DENY_V6],
                                  "allow_inbound_ports": [APP_PORT, ALLOWED_TCP, ALLOWED_UDP]}})
            with sidecar:
                yield {"pod": pod, "peer": peer, "app_cg": app_cg, "sidecar": sidecar, "dev": dev}
        finally:
            for u in udp:
                u.close()
            for srv in servers:
                srv.close()


def _connects(pods, source, host, port, timeout=SHORT):
    """Whether a TCP connection from `source` in the peer completes within `timeout`."""
    def call():
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        with socket.socket(family, socket.SOCK_STREAM) as s:
            s.settimeout(timeout)
            s.bind((source, 0))
            try:
                s.connect((host, port))
            except (socket.timeout, TimeoutError):
                return False
            return True
    return pods["peer"].call(call)


def _udp_echoed(pods, source, host, port, timeout=SHORT):
    def call():
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        with socket.socket(family, socket.SOCK_DGRAM) as s:
            s.settimeout(timeout)
            s.bind((source, 0))
            s.sendto(b"ping", (host, port))
            try:
                return s.recv(100) == b"ping"
            except (socket.timeout, TimeoutError):
                return False
    return pods["peer"].call(call)


def _http_status(pods, source, host, port, path="/"):
    import http.client

    def call():
        c = http.client.HTTPConnection(host, port, timeout=5, source_address=(source, 0))
        c.request("GET", path)
        r = c.getresponse()
        r.read()
        return r.status
    return pods["peer"].call(call)


def _reload(sc, kernel):
    sc.config["kernel"] = kernel
    sc.write_config()
    status, body = sc.admin("/reload", "POST")
    assert status == 200 and json.loads(body)["ok"], body


BASE_POLICY = {"deny_cidrs": [DENY_V4, DENY_V6], "allow_inbound_ports": [APP_PORT, ALLOWED_TCP, ALLOWED_UDP]}


def _program_ids(sc):
    return {l["function"]: (l["link_id"], l["prog_id"]) for l in sc.stats()["interception"]["links"]}


# -- each drop, with its reason -----------------------------------------------------------------

@pytest.mark.parametrize("denied,allowed,pod_ip", [(DENIED_V4, PEER_V4, POD_V4), (DENIED_V6, PEER_V6, POD_V6)],
                         ids=["ipv4", "ipv6"])
def test_a_denied_source_is_dropped_and_counted(pods, denied, allowed, pod_ip):
    sc = pods["sidecar"]
    before = drops(sc)["deny_cidr"]
    assert not _connects(pods, denied, pod_ip, APP_PORT)
    assert not _udp_echoed(pods, denied, pod_ip, ALLOWED_UDP)
    assert wait_for(lambda: drops(sc)["deny_cidr"] >= before + 2), drops(sc)
    assert _http_status(pods, allowed, pod_ip, APP_PORT) == 200
    # Explicit denial beats everything, the sidecar's own health port included.
    assert not _connects(pods, denied, pod_ip, 15021)
    # Nothing of it was counted as traffic of that peer.
    assert traffic(sc, denied) == {}


def test_a_port_not_allowed_is_dropped_and_counted(pods):
    sc = pods["sidecar"]
    before = drops(sc)["port_not_allowed"]
    assert not _connects(pods, PEER_V4, POD_V4, BLOCKED_TCP)
    assert not _connects(pods, PEER_V6, POD_V6, BLOCKED_TCP)
    assert wait_for(lambda: drops(sc)["port_not_allowed"] >= before + 2), drops(sc)
    assert _connects(pods, PEER_V4, POD_V4, ALLOWED_TCP)
    assert _connects(pods, PEER_V6, POD_V6, ALLOWED_TCP)


IPV6_DSTOPTS = 59          # linux/in6.h: a sticky destination-options header on every packet
PADN_OPTIONS = bytes([0, 0, 1, 4, 0, 0, 0, 0])    # next header and length (the kernel's), PadN


def _connects_with_dstopts(pods, host, port):
    """Connects, then half-closes and waits for the server's FIN before closing: so every
    packet, the last ACK too, comes from the socket with the sticky option (a closed
    socket's TIME_WAIT remnant would send that ACK without it)."""
    def call():
        with socket.socket(socket.AF_INET6, socket.SOCK_STREAM) as s:
            s.settimeout(SHORT)
            s.setsockopt(socket.IPPROTO_IPV6, IPV6_DSTOPTS, PADN_OPTIONS)
            s.bind((PEER_V6, 0))
            try:
                s.connect((host, port))
            except (socket.timeout, TimeoutError):
                return False
            s.settimeout(5)
            s.shutdown(socket.SHUT_WR)
            while s.recv(100):
                pass
            return True
    return pods["peer"].call(call)


def test_an_ipv6_extension_header_does_not_hide_the_port(pods):
    """The policy walks IPv6 extension headers to the TCP header: a SYN behind a
    destination-options header is judged by its real port."""
    sc = pods["sidecar"]
    before = drops(sc)["port_not_allowed"]
    assert not _connects_with_dstopts(pods, POD_V6, BLOCKED_TCP)
    assert wait_for(lambda: drops(sc)["port_not_allowed"] >= before + 1), drops(sc)
    key = ("inbound", PEER_V6, ALLOWED_TCP, "tcp")
    counted = traffic(sc, PEER_V6).get(key, (0, 0))
    assert _connects_with_dstopts(pods, POD_V6, ALLOWED_TCP)
    # The header was really there: every packet of that connection (SYN, ACK, FIN, ACK)
    # carried 40 (IPv6) + 8 (options) + 32 (TCP with timestamps) bytes, the SYN 8 more.

    def delta():
        b, p = traffic(sc, PEER_V6).get(key, (0, 0))
        b, p = b - counted[0], p - counted[1]
        return (b, p) if p >= 3 and b == 80 * p + 8 else None
    assert wait_for(delta), (counted, traffic(sc, PEER_V6).get(key))


def test_udp_to_a_port_not_allowed_is_dropped_and_counted(pods):
    sc = pods["sidecar"]
    before = drops(sc)["port_not_allowed"]
    assert not _udp_echoed(pods, PEER_V4, POD_V4, BLOCKED_UDP)
    assert wait_for(lambda: drops(sc)["port_not_allowed"] >= before + 1), drops(sc)
    assert _udp_echoed(pods, PEER_V4, POD_V4, ALLOWED_UDP)
    assert _udp_echoed(pods, PEER_V6, POD_V6, ALLOWED_UDP)


def test_the_sidecars_own_ports_are_never_locked_out(pods):
    """15021 (kubelet probes) is not in allow_inbound_ports and still answers."""
    assert _http_status(pods, PEER_V4, POD_V4, 15021, "/healthz/ready") == 200


UDP_CLIENT = r"""
import json, socket, sys
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.settimeout(2)
s.sendto(b"query", (sys.argv[1], int(sys.argv[2])))
print(json.dumps({"echo": s.recv(100).decode()}))
"""

HTTP_GET = r"""
import http.client, json, sys
c = http.client.HTTPConnection(sys.argv[1], int(sys.argv[2]), timeout=5)
c.request("GET", "/")
print(json.dumps({"status": c.getresponse().status}))
"""


def test_replies_to_the_pods_own_connections_pass(pods):
    """The allow list is about connections to the pod: the app's outbound TCP (through the
    sidecar) and UDP (a DNS-like query from an ephemeral port) get their replies."""
    assert run_app_python(pods["pod"], HTTP_GET, PEER_V4, PEER_HTTP, cgroup=pods["app_cg"])["status"] == 200
    assert run_app_python(pods["pod"], UDP_CLIENT, PEER_V4, PEER_UDP, cgroup=pods["app_cg"])["echo"] == "query"


def test_policy_runs_before_inbound_steering_and_counting(pods):
    """On the pod interface's tcx ingress hook: sc_policy, then sc_inbound, then sc_count_in."""
    sc = pods["sidecar"]
    links = {l["function"]: l["prog_id"] for l in sc.stats()["interception"]["links"]}
    ifindex = pods["pod"].call(socket.if_nametoindex, pods["dev"])
    order = pods["pod"].call(syscall.tcx_program_ids, ifindex, AttachType.TCX_INGRESS)
    assert order == [links["sc_policy"], links["sc_inbound"], links["sc_count_in"]]
    assert pods["pod"].call(syscall.tcx_program_ids, ifindex, AttachType.TCX_EGRESS) == [links["sc_count_out"]]
    # A denied SYN to a steered port never reaches the steering program.
    steered = sc.stats()["interception"]["counters"]["inbound_steered"]
    assert not _connects(pods, DENIED_V4, POD_V4, APP_PORT)
    assert sc.stats()["interception"]["counters"]["inbound_steered"] == steered


# -- the SYN rate limit, and reload --------------------------------------------------------------

def _syn_flood(pods, source, count, wait):
    """`count` non-blocking connects from `source` to the pod's allowed direct port, all
    at once; how many completed after `wait` seconds."""
    def call():
        socks = []
        try:
            for _ in range(count):
                s = socket.socket()
                s.setblocking(False)
                s.bind((source, 0))
                err = s.connect_ex((POD_V4, ALLOWED_TCP))
                assert err in (0, errno.EINPROGRESS), err
                socks.append(s)
            deadline = time.monotonic() + wait
            done = set()
            while time.monotonic() < deadline:
                pending = [s for s in socks if s not in done]
                _, writable, _ = select.select([], pending, [], max(0.0, deadline - time.monotonic()))
                for s in writable:
                    if s.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR) == 0:
                        done.add(s)
                if len(done) == len(socks):
                    break
            return len(done)
        finally:
            for s in socks:
                s.close()
    return pods["peer"].call(call)


def test_a_syn_flood_from_one_source_is_limited_while_another_still_connects(pods):
    sc = pods["sidecar"]
    _reload(sc, dict(BASE_POLICY, syn_rate_limit={"per_source": "5/s", "burst": 5}))
    try:
        policy = sc.stats()["interception"]["policy"]
        assert policy["syn_rate_limit"] == {"per_second": 5.0, "burst": 5}
        before = drops(sc)["syn_rate_limit"]
        admitted = _syn_flood(pods, SRC_A, 40, SHORT)
        # the burst, what 0.5 s of the rate adds, and a little for racing CPUs
        assert 5 <= admitted <= 5 + 3 + 2, admitted
        assert wait_for(lambda: drops(sc)["syn_rate_limit"] >= before + 40 - admitted), drops(sc)
        # Another source is not affected, and the flooding one still reaches the probe port.
        assert _http_status(pods, SRC_B, POD_V4, APP_PORT) == 200
        assert _http_status(pods, SRC_A, POD_V4, 15021, "/healthz/ready") == 200
        # Limited, not banned: dropped SYNs cost no tokens, and the bucket refills at the rate.
        time.sleep(0.3)
        assert _connects(pods, SRC_A, POD_V4, ALLOWED_TCP)
    finally:
        _reload(sc, dict(BASE_POLICY))
    assert sc.stats()["interception"]["policy"]["syn_rate_limit"] is None
    assert _connects(pods, SRC_A, POD_V4, ALLOWED_TCP)


def test_policy_changes_on_reload_without_reloading_programs(pods):
    sc = pods["sidecar"]
    before = _program_ids(sc)
    assert not _connects(pods, PEER_V4, POD_V4, BLOCKED_TCP)
    assert not _connects(pods, DENIED_V4, POD_V4, ALLOWED_TCP)
    try:
        _reload(sc, {"deny_cidrs": [DENY_V6], "allow_inbound_ports": [APP_PORT, ALLOWED_TCP, BLOCKED_TCP]})
        policy = sc.stats()["interception"]["policy"]
        assert policy["deny_cidrs"] == [DENY_V6]
        assert policy["allow_inbound_ports"] == sorted([APP_PORT, ALLOWED_TCP, BLOCKED_TCP])
        assert _connects(pods, PEER_V4, POD_V4, BLOCKED_TCP)
        assert _connects(pods, DENIED_V4, POD_V4, ALLOWED_TCP)
        assert not _connects(pods, DENIED_V6, POD_V6, ALLOWED_TCP)
        # No allow list at all: every port is open again, UDP included.
        _reload(sc, {"deny_cidrs": [DENY_V4, DENY_V6]})
        assert sc.stats()["interception"]["policy"]["allow_inbound_ports"] is None
        assert _udp_echoed(pods, PEER_V4, POD_V4, BLOCKED_UDP)
    finally:
        _reload(sc, dict(BASE_POLICY))
    assert not _connects(pods, PEER_V4, POD_V4, BLOCKED_TCP)
    assert not _connects(pods, DENIED_V4, POD_V4, ALLOWED_TCP)
    assert _program_ids(sc) == before       # the same links and programs throughout
    assert "takes effect when the sidecar restarts" not in sc.log()
