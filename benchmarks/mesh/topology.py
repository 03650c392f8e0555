"""Two pods on one machine, the way a node runs them: a client pod and a server pod, each a
network namespace with a child cgroup, joined by a veth pair.

    client pod  bm-<tag>-c (10.231.0.1)            server pod  bm-<tag>-s (10.231.0.2)
      cgroup bench-mesh-<random>-client/             cgroup bench-mesh-<random>-server/
        app/      load generator (wrk, loadgen)        app/      nginx :8080, TCP sink :5432
        sidecar/  the row's proxy                      sidecar/  the row's proxy
                         <------------- veth ------------->

Every scenario row gets its own pair of pods, built once and measured in interleaved
rounds, so rows never share a proxy, a rule or a kernel program; the same addresses are
used in every pair (namespaces keep them apart), so every row's configs are identical
but for what the row is about.

The app's processes run as APP_UID inside the app cgroup; the proxies run as root in the
sidecar cgroup. The bpf-sidecar installs its own interception (iptables or eBPF, on the
app cgroup and the pod interface). For nginx and HAProxy, which have none, the harness
installs iptables rules here (`Mesh.intercept`, the same for both) that capture the app's
outbound TCP by uid and all inbound TCP on the pod interface, as Istio's init container
does.

Everything is removed by `Mesh.close()`: processes, rules (with the namespaces), veth,
namespaces and cgroups; `close()` is safe after a partial build.
"""
import http.client
import secrets
import socket
from pathlib import Path

from sidecar import netns_topology
from sidecar.netns_topology import CommandError, link_pods, redirect_inbound, redirect_outbound

from .. import peers

__all__ = [
    "APP_PORT", "APP_UID", "CLIENT_IP", "INBOUND_PORT", "OUTBOUND_PORT", "SERVER_IP",
    "TCP_INBOUND_PORT", "TCP_OUTBOUND_PORT", "TCP_PORT", "Mesh", "Pod",
]

CLIENT_IP, SERVER_IP, PREFIX_LEN = "10.231.0.1", "10.231.0.2", 24
APP_PORT = 8080             # the server app (nginx)
TCP_PORT = 5432             # the server's opaque-TCP sink (inbound.tcp_passthrough_ports)
OUTBOUND_PORT, INBOUND_PORT = 15001, 15006
# nginx and HAProxy cannot read a connection's original destination, so each TCP port
# they carry needs its own listener and its own REDIRECT rule (see Mesh.intercept).
TCP_OUTBOUND_PORT, TCP_INBOUND_PORT = 15002, 15007
# Not `nobody`: nginx workers run as nobody, and the client pod's nginx sidecar must not
# have its own upstream connections captured.
APP_UID = 1500
OUTBOUND_CHAIN, INBOUND_CHAIN = "BENCH_OUTBOUND", "BENCH_INBOUND"


def http_status(host, port, path="/", timeout=2.0, headers=None):
    """Status of one GET (run inside a namespace through Netns.call)."""
    conn = http.client.HTTPConnection(host, port, timeout=timeout)
    try:
        conn.request("GET", path, headers=headers or {})
        resp = conn.getresponse()
        resp.read()
        return resp.status
    finally:
        conn.close()


def http_get(host, port, path, timeout=2.0):
    """(status, body bytes) of one GET (run inside a namespace through Netns.call)."""
    conn = http.client.HTTPConnection(host, port, timeout=timeout)
    try:
        conn.request("GET", path)
        resp = conn.getresponse()
        return resp.status, resp.read()
    finally:
        conn.close()


def tcp_accepts(host, port, timeout=1.0):
    """200 when host:port accepts a TCP connection (a ready probe for non-HTTP servers)."""
    socket.create_connection((host, port), timeout).close()
    return 200


class Pod(netns_topology.Pod):
    """One pod of a row (sidecar.netns_topology.Pod): the client's or the server's, with
    its app running as APP_UID."""

    def __init__(self, role, tag):
        super().__init__(f"bm-{tag}-{role[0]}-", f"bench-mesh-{tag}-{role}-",
                         ip=CLIENT_IP if role == "client" else SERVER_IP)
        self.role = role
        # interception.instance of the pod's bpf-sidecar: names its BPF state and chains.
        self.sidecar_instance = f"bench-mesh-{tag}-{role}"

    def app_command(self, cmd, uid=None):
        """cmd as the pod's app: in the app cgroup, in the namespace, as APP_UID."""
        return super().app_command(cmd, APP_UID if uid is None else uid)


class Mesh:
    """A client pod and a server pod joined by veth, the app and TCP sink running in the
    server pod. `processes` holds every PeerProcess started for it (stopped by close())."""

    def __init__(self, workdir, tag=None):
        self.tag = tag or secrets.token_hex(3)
        self.workdir = Path(workdir)
        self.client = Pod("client", self.tag)
        self.server = Pod("server", self.tag)
        self.processes = []
        self.intercepted = False
        self.tcp_ports_by_listener = False

    # -- building ----------------------------------------------------------------------------

    def build(self):
        """Namespaces, cgroups and the veth pair."""
        self.client.create()
        self.server.create()
        link_pods(self.client, self.server, PREFIX_LEN)
        return self

    def start(self, peer):
        """Starts a PeerProcess (recorded first, so close() stops it whatever happens)."""
        self.processes.append(peer)
        peer.start()
        return peer

    def peer(self, name, cmd, port, probe, stop_signal=None):
        """A PeerProcess for this mesh with its files under workdir/<name>."""
        kw = {"ready_probe": probe}
        if stop_signal is not None:
            kw["stop_signal"] = stop_signal
        return peers.PeerProcess(name, cmd, self.workdir / name, port, **kw)

    def intercept(self, tcp_by_listener=False):
        """The iptables REDIRECT rules for a proxy without interception of its own (nginx,
        HAProxy), in both pods: the app's outbound TCP (by uid) to OUTBOUND_PORT, TCP arriving
        on the pod interface to INBOUND_PORT. With tcp_by_listener, TCP_PORT goes to its own
        listeners instead, ahead of the catch-all rules, because those proxies cannot tell
        which port a redirected connection was for. Never for the bpf-sidecar: it installs
        its own, and two sets would redirect the same connections twice."""
        for pod in (self.client, self.server):
            redirect_outbound(pod.ns, OUTBOUND_PORT, APP_UID, chain=OUTBOUND_CHAIN)
            redirect_inbound(pod.ns, pod.dev, INBOUND_PORT, chain=INBOUND_CHAIN)
            if tcp_by_listener:
                for chain, to_port in ((OUTBOUND_CHAIN, TCP_OUTBOUND_PORT), (INBOUND_CHAIN, TCP_INBOUND_PORT)):
                    pod.ns.run(["iptables", "-w", "-t", "nat", "-I", chain, "1", "-p", "tcp",
                                "--dport", str(TCP_PORT), "-j", "REDIRECT", "--to-ports", str(to_port)])
        self.intercepted = True
        self.tcp_ports_by_listener = tcp_by_listener

    def redirected_packets(self):
        """{"client_outbound": n, "server_inbound": n}: packets that hit the REDIRECT rules
        (the first packet of each redirected connection), or {} without interception."""
        if not self.intercepted:
            return {}
        return {
            "client_outbound": _chain_packets(self.client.ns, OUTBOUND_CHAIN),
            "server_inbound": _chain_packets(self.server.ns, INBOUND_CHAIN),
        }

    # -- tearing down ------------------------------------------------------------------------

    def stop_processes(self):
        for peer in reversed(self.processes):
            peer.stop()

    def close(self):
        """Stops every process, then removes namespaces (rules and veth go with them) and
        cgroups. Safe to call twice and after a partial build."""
        try:
            self.stop_processes()
        finally:
            for pod in (self.client, self.server):
                try:
                    pod.close()
                except (OSError, CommandError):
                    pass

    def resources(self):
        """Names of what this mesh made in the kernel, for the results (leak checks)."""
        return {
            "netns": [self.client.ns.name, self.server.ns.name],
            "cgroups": [self.client.cgroup.path, self.server.cgroup.path],
            "sidecar_instances": [self.client.sidecar_instance, self.server.sidecar_instance],
        }


def _chain_packets(ns, chain):
    out = ns.run(["iptables", "-w", "-t", "nat", "-L", chain, "-v", "-n", "-x"]).stdout
    total = 0
    for line in out.splitlines()[2:]:
        fields = line.split()
        if len(fields) > 2 and fields[2] == "REDIRECT":
            total += int(fields[0])
    return total
