"""What the loader loads: the program families of bpf/, where each program attaches, and the
one place that turns a load plan into the -D flags of the C code.

A family is one bpf/*.c file. Adding one (counters, kernel policy, local-hop acceleration,
splice) is: the C file (its maps in bpf/lib/sidecar_maps.h or a header of its own in
bpf/lib/, mirrored in layout.MAPS), one
`Family(...)` entry in FAMILIES naming its programs and their attach points, and, when its
maps take values from config, the Plan fields it needs (`plan_from_config`) and an entry in
sidecar.bpf.config_maps. The loader, `sidecar bpf status` and `sidecar bpf cleanup` need no
change: they walk FAMILIES and the instance directory. Programs sharing a tcx hook run in
FAMILIES order (the loader appends each link), except a `Program(first=True)`, attached
before whatever is already there: on tcx ingress that is kernel_policy's sc_policy, then
inbound_steer's sc_inbound, then traffic_counters' sc_count_in (a dropped packet is neither
steered nor counted as traffic). A program attached to a map (sk_msg, sk_skb on a
sockhash) needs one more target kind: an entry in TARGETS and its resolver in the loader.

Attach points (`Program.target`), resolved by the loader:
    app_cgroup      interception.cgroup: the app's cgroup v2 directory; with `pod` the
                    parent of the loader's own cgroup (sidecar.bpf.pod_cgroup)
    sidecar_cgroup  the cgroup the sidecar runs in (/proc/self/cgroup of the loader, which
                    the manager starts in its own cgroup); with `pod` the pod's cgroup too
                    (an init container loads before the sidecar's cgroup exists)
    interface       interception.interface, in the sidecar's network namespace (tcx)
    map             a pinned map of the instance (`Program.target_map`): sk_msg and sk_skb
                    programs run on the sockets in a sockhash
Never the root cgroup, never a host interface: the loader refuses both (see preflight).

Which families a plan loads: in ebpf mode the interception families, the interface's
counters and policy (with interception.interface) and the data-path ones its config asks
for; in iptables mode (the rules do the interception) only the data-path ones (local-hop
acceleration, splice), when asked for.

This module imports no bcc: the manager and the CLI read it too.
"""
from __future__ import annotations

import json
import os
import socket
import struct
import sys
from dataclasses import asdict, dataclass, field
from typing import Callable, Optional

from sidecar.bpf.layout import AttachType, ProgType

def _bpf_dir() -> str:
    """bpf/ of the source tree this runs from, else the installed copy
    (<prefix>/share/bpf-sidecar/bpf); SIDECAR_BPF_DIR overrides both."""
    if os.environ.get("SIDECAR_BPF_DIR"):
        return os.environ["SIDECAR_BPF_DIR"]
    source_tree = os.path.join(
        os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))), "bpf")
    if os.path.isdir(source_tree):
        return source_tree
    return os.path.join(sys.prefix, "share", "bpf-sidecar", "bpf")


BPF_DIR = _bpf_dir()

TARGETS = ("app_cgroup", "sidecar_cgroup", "interface", "map")


@dataclass(frozen=True)
class Program:
    function: str            # the C function; its pinned link is links/<function>
    prog_type: int           # layout.ProgType
    attach_type: int         # layout.AttachType, for BPF_LINK_CREATE
    target: str              # one of TARGETS
    expected_attach_type: bool = False   # the kernel wants attach_type at load time too
                                         # (CGROUP_SOCK_ADDR, CGROUP_SOCKOPT)
    target_map: Optional[str] = None     # target "map": the pinned map's name (maps/<name>)
    first: bool = False      # tcx: attach before the programs already on the hook
                             # (BPF_F_BEFORE), whatever FAMILIES order says


@dataclass(frozen=True)
class Family:
    name: str                # what status and the logs call it
    source: str              # file name in bpf/
    programs: tuple
    wanted: Callable         # wanted(plan) -> bool: whether this plan loads it
    kernel: str              # what the kernel must offer, for the reason when it does not


@dataclass
class Plan:
    """Everything the loader needs, decided by the manager (or from a config file by the
    loader's `-c`): passed to the loader as JSON, so both read one decision."""
    instance: str
    app_cgroup: str
    interface: Optional[str]
    outbound: tuple          # the outbound listener (host, port); IPv6 side: [::1]:port
    inbound_port: int
    fail_open: bool
    exclude_outbound: list = field(default_factory=list)
    exclude_inbound: list = field(default_factory=list)
    interception: str = "ebpf"       # ebpf: the programs intercept; iptables: the rules do
    accelerate_local: bool = False   # interception.accelerate_local (needs app_cgroup)
    app: tuple = ("127.0.0.1", 8080)  # inbound.app, the inbound hop's server end
    splice: bool = False             # tunnels spliced in the kernel (interception.splice)
    # kernel policy (kernel_policy.c) and traffic counters (traffic_counters.c)
    deny_cidrs: list = field(default_factory=list)        # normalised CIDR strings
    allow_inbound_ports: list = field(default_factory=list)   # empty: every port allowed
    sidecar_ports: list = field(default_factory=list)     # always allowed, never SYN-limited
    server_ports: list = field(default_factory=list)      # ports the pod serves on (config)
    syn_rate: Optional[float] = None                      # SYNs per second per source
    syn_burst: Optional[int] = None
    ephemeral_low: int = 32768                            # the pod's ip_local_port_range start
    skip_families: list = field(default_factory=list)     # not loaded (benchmarks: what one costs)

    def to_json(self) -> str:
        return json.dumps(asdict(self))

    @classmethod
    def from_json(cls, text: str) -> "Plan":
        data = json.loads(text)
        data["outbound"] = tuple(data["outbound"])
        if "app" in data:
            data["app"] = tuple(data["app"])
        return cls(**data)


FAMILIES = (
    Family("redirect_connect", "redirect_connect.c", (
        Program("sc_connect4", ProgType.CGROUP_SOCK_ADDR, AttachType.CGROUP_INET4_CONNECT,
                "app_cgroup", expected_attach_type=True),
        Program("sc_connect6", ProgType.CGROUP_SOCK_ADDR, AttachType.CGROUP_INET6_CONNECT,
                "app_cgroup", expected_attach_type=True),
        Program("sc_sockops", ProgType.SOCK_OPS, AttachType.CGROUP_SOCK_OPS, "app_cgroup"),
    ), wanted=lambda plan: plan.interception == "ebpf",
       kernel="cgroup sock_addr and sockops programs (5.2+)"),
    Family("original_dst_getsockopt", "original_dst_getsockopt.c", (
        Program("sc_getsockopt", ProgType.CGROUP_SOCKOPT, AttachType.CGROUP_GETSOCKOPT,
                "sidecar_cgroup", expected_attach_type=True),
    ), wanted=lambda plan: plan.interception == "ebpf", kernel="cgroup sockopt programs (5.3+)"),
    Family("inbound_steer", "inbound_steer.c", (
        Program("sc_inbound", ProgType.SCHED_CLS, AttachType.TCX_INGRESS, "interface"),
    ), wanted=lambda plan: plan.interception == "ebpf" and plan.interface is not None,
       kernel="bpf_sk_assign at TC ingress (5.7+) and tcx links (6.6+)"),
)

# Data-path families: they speed up what interception sends through the sidecar, in either
# interception mode.
FAMILIES += (
    Family("local_hops", "local_hops.c", (
        Program("sc_hop_app_ops", ProgType.SOCK_OPS, AttachType.CGROUP_SOCK_OPS, "app_cgroup"),
        Program("sc_hop_sidecar_ops", ProgType.SOCK_OPS, AttachType.CGROUP_SOCK_OPS,
                "sidecar_cgroup"),
        Program("sc_hop_msg", ProgType.SK_MSG, AttachType.SK_MSG_VERDICT, "map",
                target_map="sc_hop_socks"),
    ), wanted=lambda plan: plan.accelerate_local,
       kernel="sk_msg with socket storage (5.8+) and sockmap links (6.10+)"),
    Family("tunnel_splice", "tunnel_splice.c", (
        Program("sc_splice_verdict", ProgType.SK_SKB, AttachType.SK_SKB_STREAM_VERDICT, "map",
                target_map="sc_splice_socks"),
    ), wanted=lambda plan: plan.splice,
       kernel="sk_skb stream verdict without a parser (5.13+) and sockmap links (6.10+)"),
)


# The pod interface's counters and L3/L4 policy: ebpf mode's, like inbound steering (in
# iptables mode the loader runs only for the data-path families above, and the traffic
# collectors are not registered: sidecar.interception.ebpf).
FAMILIES += (
    # First on tcx ingress (Program.first): drops before steering and counting see a packet.
    Family("kernel_policy", "kernel_policy.c", (
        Program("sc_policy", ProgType.SCHED_CLS, AttachType.TCX_INGRESS, "interface", first=True),
    ), wanted=lambda plan: plan.interception == "ebpf" and plan.interface is not None,
       kernel="tcx links (6.6+)"),
    # Last on tcx ingress: counts what policy and steering let through.
    Family("traffic_counters", "traffic_counters.c", (
        Program("sc_count_in", ProgType.SCHED_CLS, AttachType.TCX_INGRESS, "interface"),
        Program("sc_count_out", ProgType.SCHED_CLS, AttachType.TCX_EGRESS, "interface"),
    ), wanted=lambda plan: plan.interception == "ebpf" and plan.interface is not None,
       kernel="tcx links (6.6+)"),
)


def wanted_families(plan: Plan) -> list:
    return [f for f in FAMILIES if f.wanted(plan) and f.name not in plan.skip_families]


def program_names() -> dict:
    """function -> (family, Program) for every program of every family."""
    return {p.function: (f, p) for f in FAMILIES for p in f.programs}


# -- -D flags: the only runtime specialisation of the C code -------------------------------

def _ip4_host_order(host: str) -> int:
    return struct.unpack("!I", socket.inet_aton(host))[0]


def _outbound_ip4(host: str) -> str:
    """Where IPv4 connects are sent: the listener's address, loopback for a wildcard."""
    return "127.0.0.1" if host in ("0.0.0.0", "", "::") or ":" in host else host


def cflags_for(plan: Plan, map_dir: str) -> list:
    """The compiler flags of every file of `plan`: include path and -D parameters
    (bpf/lib/sidecar_common.h documents each)."""
    host, port = plan.outbound
    ip6 = "::1" if (":" not in host or host == "::") else host
    words = struct.unpack("!4I", socket.inet_pton(socket.AF_INET6, ip6))
    return [
        "-I" + os.path.join(BPF_DIR, "lib"),
        '-DSC_MAP_DIR="%s"' % map_dir,
        "-DSC_OUT_PORT=%d" % port,
        "-DSC_OUT_IP4=0x%08x" % _ip4_host_order(_outbound_ip4(host)),
        "-DSC_OUT_IP6_0=0x%08x" % words[0],
        "-DSC_OUT_IP6_1=0x%08x" % words[1],
        "-DSC_OUT_IP6_2=0x%08x" % words[2],
        "-DSC_OUT_IP6_3=0x%08x" % words[3],
        "-DSC_IN_PORT=%d" % plan.inbound_port,
        "-DSC_FAIL_OPEN=%d" % (1 if plan.fail_open else 0),
        "-DSC_EPHEMERAL_LOW=%d" % plan.ephemeral_low,
    ] + _app_flags(plan.app)


def _app_flags(app) -> list:
    """inbound.app as bpf/lib/sidecar_hops.h wants it: struct sc_endpoint's words."""
    from sidecar.bpf.layout import ENDPOINT, pack_endpoint
    raw, _, family = ENDPOINT.unpack(pack_endpoint(*app))
    words = struct.unpack("!4I", raw)
    return ["-DSC_APP_PORT=%d" % app[1], "-DSC_APP_FAMILY=%d" % family] + [
        "-DSC_APP_IP6_%d=0x%08x" % (i, w) for i, w in enumerate(words)]


EPHEMERAL_RANGE = "/proc/sys/net/ipv4/ip_local_port_range"


def ephemeral_port_low(path: str = EPHEMERAL_RANGE) -> int:
    """The first port of this network namespace's ephemeral range (where client sockets
    take their local port), 32768 when it cannot be read."""
    try:
        with open(path) as f:
            return int(f.read().split()[0])
    except (OSError, ValueError, IndexError):
        return 32768


def plan_from_config(cfg, instance: str) -> Plan:
    """The load plan of config `cfg` for `instance`."""
    from sidecar.interception.ports import (
        excluded_inbound_ports, excluded_outbound_ports, sidecar_ports)
    ic = cfg.interception
    k = cfg.kernel
    own = sorted(sidecar_ports(cfg))
    return Plan(instance=instance, app_cgroup=ic.cgroup, interface=ic.interface,
                outbound=tuple(cfg.outbound.listen), inbound_port=cfg.inbound.listen[1],
                fail_open=ic.fail == "open", exclude_outbound=excluded_outbound_ports(cfg),
                exclude_inbound=excluded_inbound_ports(cfg), interception=ic.mode,
                accelerate_local=accelerates_local_hops(cfg), app=app_endpoint(cfg),
                splice=splices_tunnels(cfg),
                deny_cidrs=list(k.deny_cidrs), allow_inbound_ports=sorted(set(k.allow_inbound_ports)),
                sidecar_ports=own,
                server_ports=sorted(set(k.allow_inbound_ports) | set(cfg.inbound.tcp_passthrough_ports)
                                    | set(own)),
                syn_rate=k.syn_rate_limit, syn_burst=k.syn_burst,
                ephemeral_low=ephemeral_port_low())


def accelerates_local_hops(cfg) -> bool:
    """interception.accelerate_local, where it can work: it needs the app's own cgroup
    (the app's side of each hop is found by a program on it, the sidecar's side by one on
    the sidecar's cgroup). Not with `cgroup: pod`, where one cgroup holds both: those
    programs could not tell the app's loopback traffic from the sidecar's."""
    ic = cfg.interception
    return (ic.mode in ("ebpf", "iptables") and ic.accelerate_local
            and ic.cgroup not in (None, "pod"))


def splices_tunnels(cfg) -> bool:
    """interception.splice: "auto" splices wherever BPF programs are loaded anyway (ebpf
    mode, or iptables mode with local-hop acceleration); true also makes iptables mode
    run the loader for it; false never splices."""
    ic = cfg.interception
    if ic.mode not in ("ebpf", "iptables") or ic.splice == "false":
        return False
    if ic.splice == "true" or ic.mode == "ebpf":
        return True
    return accelerates_local_hops(cfg)


def needs_loader(cfg) -> bool:
    """Whether this config loads any BPF program (ebpf mode always does)."""
    mode = cfg.interception.mode
    return mode == "ebpf" or (mode == "iptables" and (accelerates_local_hops(cfg) or splices_tunnels(cfg)))


def app_endpoint(cfg) -> tuple:
    """inbound.app as an address literal ("localhost" is loopback)."""
    host, port = cfg.inbound.app
    if host == "localhost":
        host = "127.0.0.1"
    try:
        socket.inet_pton(socket.AF_INET6 if ":" in host else socket.AF_INET, host)
    except OSError:
        host = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0][4][0]
    return (host, port)
