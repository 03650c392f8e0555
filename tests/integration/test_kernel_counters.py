"""The kernel's traffic counters (bpf/traffic_counters.c) as a scrape of a real ebpf-mode
sidecar shows them: bytes and packets equal to what was actually sent, and the peer and
port labels right for inbound and outbound connections.

Two pods (network namespaces) joined by a veth pair; the sidecar runs in the pod under test
with its programs on the pod's end. Exact byte accounting: sidecar_kernel_bytes_total is IP
bytes (headers included) per wire packet, so
  - a UDP datagram of n payload bytes is n + 28 bytes over IPv4, n + 48 over IPv6;
  - a TCP connection's bytes in one direction are its payload plus one IP + TCP header per
    packet: with timestamps on that is 52 bytes (IPv4: 20 + 20 + 12) or 72 (IPv6), and 8
    more on the SYN or SYN-ACK (MSS and window scale). So payload == bytes - 52 x packets
    - 8, exactly, whatever the segmentation (GSO super-packets count their segments).
    The pods run with SACK off, so that no ACK grows a (D)SACK block when a loaded
    machine makes TCP retransmit, and the payload is what the sender sent including what
    it retransmitted (its TCP_INFO's bytes_retrans).
"""
import os
import socket
import sys

import pytest

from tests.conftest import require_privileges
from tests.support.cgroups import Cgroup
from tests.support.kernel_metrics import scrape_text, traffic, wait_for
from tests.support.netns import (
    ROOT, Netns, NetnsSidecar, TcpServer, echo_headers_handler, run_app_python, veth_pair)

pytestmark = [pytest.mark.privileged, pytest.mark.timeout(90)]

POD_V4, PEER_V4 = "10.205.0.1", "10.205.0.2"
POD_V6, PEER_V6 = "fd00:205::1", "fd00:205::2"
APP_PORT = 8080            # the pod's app, reached through the sidecar (inbound steering)
PEER_HTTP = 9080           # the peer's HTTP server, reached through the sidecar (outbound)
DIRECT_TCP = 7100          # pod server on an excluded port: exact bytes, no proxy in between
LEARNED_TCP = 45000        # pod server inside the ephemeral range (excluded too)
POD_UDP, PEER_UDP = 5300, 5353
REPLY = os.urandom(30000)
HEADER = {4: 52, 6: 72}    # IP + TCP header with timestamps, per packet
SYN_OPTIONS = 8            # what a SYN / SYN-ACK carries beyond that
UDP_HEADER = {4: 28, 6: 48}


TCP_INFO_BYTES_RETRANS = 208      # offset of tcpi_bytes_retrans in struct tcp_info (5.5+)


def bytes_retransmitted(sock):
    """Payload bytes this socket's TCP sent a second time (TCP_INFO)."""
    import struct
    info = sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, 232)
    return struct.unpack_from("=Q", info, TCP_INFO_BYTES_RETRANS)[0]


def sink_then_reply(conn, server):
    """Reads until EOF, sends REPLY, half-closes (a clean FIN both ways, no RST), and once
    the client has closed records what it resent: {"peer", "received", "retrans"}."""
    peer = conn.getpeername()[0]
    total = 0
    while True:
        chunk = conn.recv(262144)
        if not chunk:
            break
        total += len(chunk)
    conn.sendall(REPLY)
    conn.shutdown(socket.SHUT_WR)
    conn.settimeout(5)
    while conn.recv(65536):
        pass
    server.records.append({"peer": peer, "received": total,
                           "retrans": bytes_retransmitted(conn)})


class UdpEcho:
    """A UDP echo server in a namespace (dual-stack on ::), in a thread."""

    def __init__(self, ns, port):
        import threading
        self.sock = ns.call(socket.socket, socket.AF_INET6, socket.SOCK_DGRAM)
        self.sock.bind(("::", port))
        self.sock.settimeout(0.2)
        self.closed = False
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self):
        while not self.closed:
            try:
                data, peer = self.sock.recvfrom(65536)
            except socket.timeout:
                continue
            except OSError:
                return
            self.sock.sendto(data, peer)

    def close(self):
        self.closed = True
        self.thread.join(2)
        self.sock.close()


@pytest.fixture(scope="module")
def pods():
    require_privileges(root=True, netns=True, tools=("ip", "nsenter", "setpriv"))
    with Netns() as pod, Netns() as peer, Cgroup() as app_cg, Cgroup() as sidecar_cg:
        dev, _ = veth_pair(pod, peer, ["%s/24" % POD_V4, "%s/64" % POD_V6],
                           ["%s/24" % PEER_V4, "%s/64" % PEER_V6])
        for ns in (pod, peer):          # the namespaces' own settings (see the docstring)
            ns.run(["sysctl", "-q", "-w", "net.ipv4.tcp_sack=0", "net.ipv4.tcp_dsack=0"])
        servers = [TcpServer(pod, ("127.0.0.1", APP_PORT), echo_headers_handler),
                   TcpServer(peer, (PEER_V4, PEER_HTTP), echo_headers_handler),
                   TcpServer(pod, ("::", DIRECT_TCP), sink_then_reply),
                   TcpServer(pod, ("::", LEARNED_TCP), sink_then_reply)]
        udp = []
        try:
            for srv in servers:
                srv.__enter__()
            udp = [UdpEcho(pod, POD_UDP), UdpEcho(peer, PEER_UDP)]
            sidecar = NetnsSidecar(
                pod, mode="ebpf", app_cgroup=app_cg, cgroup=sidecar_cg, interface=dev,
                app=("127.0.0.1", APP_PORT),
                extra={"interception": {"exclude_inbound_ports": [DIRECT_TCP, LEARNED_TCP]},
                       "telemetry": {"health": {"listen": "0.0.0.0:15021"}}})
            with sidecar:
                yield {"pod": pod, "peer": peer, "app_cg": app_cg, "sidecar": sidecar, "dev": dev,
                       "direct": servers[2]}
        finally:
            for u in udp:
                u.close()
            for srv in servers:
                srv.close()


def _tcp_exchange(peer_ns, source, host, port, payload):
    """From `source` in the peer: connect, send `payload`, half-close, read the reply;
    (the reply, payload bytes retransmitted)."""
    def call():
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        with socket.socket(family, socket.SOCK_STREAM) as s:
            s.settimeout(5)
            s.bind((source, 0))
            s.connect((host, port))
            s.sendall(payload)
            s.shutdown(socket.SHUT_WR)
            got = b""
            while True:
                chunk = s.recv(65536)
                if not chunk:
                    return got, bytes_retransmitted(s)
                got += chunk
    return peer_ns.call(call)


def _payload_of(counted, version):
    """The TCP payload a (bytes, packets) pair of one direction of one connection carried."""
    b, p = counted
    return b - HEADER[version] * p - SYN_OPTIONS


@pytest.mark.parametrize("version,pod_ip,peer_ip", [(4, POD_V4, PEER_V4), (6, POD_V6, PEER_V6)],
                         ids=["ipv4", "ipv6"])
def test_tcp_bytes_equal_the_bytes_sent_each_way(pods, version, pod_ip, peer_ip):
    payload = os.urandom(200_000)
    reply, resent_in = _tcp_exchange(pods["peer"], peer_ip, pod_ip, DIRECT_TCP, payload)
    assert reply == REPLY
    inbound = ("inbound", peer_ip, DIRECT_TCP, "tcp")
    outbound = ("outbound", peer_ip, DIRECT_TCP, "tcp")

    def server_resent():
        mine = [r for r in pods["direct"].records if r["peer"].endswith(peer_ip)]
        return mine[-1]["retrans"] if mine else None

    def settled():
        t = traffic(pods["sidecar"], peer_ip)
        resent_out = server_resent()
        if resent_out is not None and inbound in t and outbound in t \
                and _payload_of(t[inbound], version) == len(payload) + resent_in \
                and _payload_of(t[outbound], version) == len(REPLY) + resent_out:
            return t
    t = wait_for(settled) or traffic(pods["sidecar"], peer_ip)
    assert _payload_of(t[inbound], version) == len(payload) + resent_in, (t, resent_in)
    assert server_resent() is not None, pods["direct"].errors
    assert _payload_of(t[outbound], version) == len(REPLY) + server_resent(), (t, server_resent())
    # 200 kB needs well over a hundred MSS-sized segments, however they were batched
    assert t[inbound][1] >= len(payload) // 1500


@pytest.mark.parametrize("version,pod_ip,peer_ip", [(4, POD_V4, PEER_V4), (6, POD_V6, PEER_V6)],
                         ids=["ipv4", "ipv6"])
def test_udp_bytes_equal_the_datagrams_sent(pods, version, pod_ip, peer_ip):
    sizes = [0, 1, 100, 1000, 1400]

    def call():
        family = socket.AF_INET6 if version == 6 else socket.AF_INET
        with socket.socket(family, socket.SOCK_DGRAM) as s:
            s.settimeout(2)
            s.bind((peer_ip, 0))
            echoed = []
            for n in sizes:
                s.sendto(os.urandom(n), (pod_ip, POD_UDP))
                echoed.append(len(s.recv(65536)))
            return echoed
    assert pods["peer"].call(call) == sizes
    want = (sum(sizes) + UDP_HEADER[version] * len(sizes), len(sizes))
    key_in, key_out = ("inbound", peer_ip, POD_UDP, "udp"), ("outbound", peer_ip, POD_UDP, "udp")
    t = wait_for(lambda: (lambda t: t if t.get(key_in) == want and t.get(key_out) == want else None)(
        traffic(pods["sidecar"], peer_ip))) or traffic(pods["sidecar"], peer_ip)
    assert t.get(key_in) == want and t.get(key_out) == want, t


UDP_CLIENT = r"""
import json, socket, sys
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.settimeout(2)
s.sendto(b"q" * int(sys.argv[3]), (sys.argv[1], int(sys.argv[2])))
print(json.dumps({"echo": len(s.recv(65536)), "local": s.getsockname()[1]}))
"""


def test_outbound_udp_is_labelled_with_the_remote_port(pods):
    """The app's datagram leaves from an ephemeral port: the label is the peer's service port."""
    result = run_app_python(pods["pod"], UDP_CLIENT, PEER_V4, PEER_UDP, 321, cgroup=pods["app_cg"])
    assert result["echo"] == 321 and result["local"] >= 32768
    want = (321 + 28, 1)
    key_out, key_in = ("outbound", PEER_V4, PEER_UDP, "udp"), ("inbound", PEER_V4, PEER_UDP, "udp")
    t = wait_for(lambda: (lambda t: t if t.get(key_out) == want and t.get(key_in) == want else None)(
        traffic(pods["sidecar"], PEER_V4))) or traffic(pods["sidecar"], PEER_V4)
    assert t.get(key_out) == want and t.get(key_in) == want, t
    assert not any(k[2] == result["local"] for k in t), t


HTTP_GET = r"""
import http.client, json, sys
c = http.client.HTTPConnection(sys.argv[1], int(sys.argv[2]), timeout=5)
c.request("GET", "/ratings")
r = c.getresponse()
print(json.dumps({"status": r.status, "local": c.sock.getsockname()[1], "body": len(r.read())}))
"""


def test_proxied_connections_carry_the_service_port_both_ways(pods):
    """Inbound (steered to the sidecar, keeping the app port 8080) and outbound (the
    sidecar's upstream connection to the peer's 9080): each labelled with its service port
    in both directions, never a client's ephemeral port."""
    import http.client

    def inbound_get():
        c = http.client.HTTPConnection(POD_V4, APP_PORT, timeout=5)
        c.request("GET", "/reviews")
        r = c.getresponse()
        r.read()
        return r.status
    assert pods["peer"].call(inbound_get) == 200
    out = run_app_python(pods["pod"], HTTP_GET, PEER_V4, PEER_HTTP, cgroup=pods["app_cg"])
    assert out["status"] == 200
    expected = [("inbound", PEER_V4, APP_PORT, "tcp"), ("outbound", PEER_V4, APP_PORT, "tcp"),
                ("outbound", PEER_V4, PEER_HTTP, "tcp"), ("inbound", PEER_V4, PEER_HTTP, "tcp")]
    t = wait_for(lambda: (lambda t: t if all(k in t for k in expected) else None)(
        traffic(pods["sidecar"], PEER_V4))) or traffic(pods["sidecar"], PEER_V4)
    for key in expected:
        assert key in t and t[key][0] > 0 and t[key][1] >= 3, (key, t)
    # Both directions of the inbound exchange: SYN, request, ACKs, FIN in; SYN-ACK, response out.
    assert t[("outbound", PEER_V4, APP_PORT, "tcp")][0] > 0
    ephemeral = [k for k in t if k[3] == "tcp" and k[2] >= 32768 and k[2] != LEARNED_TCP]
    assert ephemeral == [], t


def test_a_server_port_in_the_ephemeral_range_is_learned_from_its_syn_ack(pods):
    """45000 is inside the pod's ephemeral range: the pod answering a SYN from it is what
    makes it the service port, so both directions are labelled 45000, not the peer's port."""
    payload = os.urandom(5000)

    def call():
        with socket.socket() as s:
            s.settimeout(5)
            s.connect((POD_V4, LEARNED_TCP))
            local = s.getsockname()[1]
            s.sendall(payload)
            s.shutdown(socket.SHUT_WR)
            while s.recv(65536):
                pass
            return local
    client_port = pods["peer"].call(call)
    inbound, outbound = ("inbound", PEER_V4, LEARNED_TCP, "tcp"), ("outbound", PEER_V4, LEARNED_TCP, "tcp")
    t = wait_for(lambda: (lambda t: t if inbound in t and outbound in t and t[outbound][0] > len(REPLY)
                          else None)(traffic(pods["sidecar"], PEER_V4))) or traffic(pods["sidecar"], PEER_V4)
    assert t[inbound][0] > len(payload) and t[outbound][0] > len(REPLY), t
    assert not any(k[2] == client_port for k in t), t
    assert LEARNED_TCP in pods["sidecar"].stats()["interception"]["policy"]["server_ports"]


def test_stats_and_bpf_status_show_the_counters_and_map_fill(pods):
    sc = pods["sidecar"]
    assert pods["peer"].call(lambda: _tcp_exchange_ok(POD_V4)) == REPLY
    info = sc.stats()["interception"]
    traffic_info = info["traffic"]
    assert traffic_info["max_entries"] == 4096 and 0 < traffic_info["entries"] <= 4096
    assert traffic_info["totals"]["inbound"]["bytes"] > 0 and traffic_info["totals"]["outbound"]["packets"] > 0
    assert {"direction", "peer", "port", "protocol", "bytes", "packets"} <= set(traffic_info["top"][0])
    assert set(info["drops"]) == {"deny_cidr", "port_not_allowed", "syn_rate_limit", "l4_unparsed",
                                  "no_inbound_listener"}
    r = sc.ns.run([sys.executable, "-m", "sidecar.cli", "bpf", "status"], cwd=ROOT)
    assert "traffic (" in r.stdout and "drops:" in r.stdout and "policy: deny none" in r.stdout, r.stdout
    line = [l for l in r.stdout.splitlines() if l.strip().startswith("sc_traffic")]
    assert line and "/ 4096" in line[0] and "KiB" in line[0], r.stdout
    shown = sc.ns.run([sys.executable, "-m", "sidecar.cli", "stats"], cwd=ROOT).stdout
    assert "Kernel traffic" in shown and "kernel drops:" in shown, shown


def _tcp_exchange_ok(host):
    with socket.create_connection((host, DIRECT_TCP), timeout=5) as s:
        s.sendall(b"x" * 1000)
        s.shutdown(socket.SHUT_WR)
        got = b""
        while True:
            chunk = s.recv(65536)
            if not chunk:
                return got
            got += chunk


def test_the_dashboards_kernel_panels_query_exported_metrics(pods):
    """Every kernel metric the Grafana dashboard asks for is in an ebpf sidecar's scrape
    (the acceleration gauge comes with local-hop acceleration, not loaded here)."""
    import re
    from sidecar.metrics import KERNEL_METRIC_NAMES
    from tests.integration.test_dashboard_queries import dashboard_queries, exported_names
    _, exprs = dashboard_queries()
    used = {n for e in exprs for n in re.findall(r"\b(sidecar_kernel_[a-z0-9_]+)\b", e)}
    assert used <= set(KERNEL_METRIC_NAMES)
    exported = exported_names(scrape_text(pods["sidecar"]))
    assert sorted(used - exported - {"sidecar_kernel_accelerated_sockets"}) == []
