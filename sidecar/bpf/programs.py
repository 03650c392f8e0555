"""What the loader loads: the program families of bpf/, where each program attaches, and the
one place that turns a load plan into the -D flags of the C code.

A family is one bpf/*.c file. Adding one (counters, kernel policy, local-hop acceleration,
splice) is: the C file (its maps in bpf/lib/sidecar_maps.h, mirrored in layout.MAPS), one
`Family(...)` entry in FAMILIES naming its programs and their attach points, and, when its
maps take values from config, the Plan fields it needs (`plan_from_config`) and an entry in
sidecar.bpf.config_maps. The loader, `sidecar bpf status` and `sidecar bpf cleanup` need no
change: they walk FAMILIES and the instance directory. Programs sharing a tcx hook run in
FAMILIES order (the loader appends each link), so a policy family that must drop before
inbound steering goes before it. A program attached to a map (sk_msg, sk_skb on a
sockhash) needs one more target kind: an entry in TARGETS and its resolver in the loader.

Attach points (`Program.target`), resolved by the loader:
    app_cgroup      interception.cgroup: the app's cgroup v2 directory; with `pod` the
                    parent of the loader's own cgroup (sidecar.bpf.pod_cgroup)
    sidecar_cgroup  the cgroup the sidecar runs in (/proc/self/cgroup of the loader, which
                    the manager starts in its own cgroup); with `pod` the pod's cgroup too
                    (an init container loads before the sidecar's cgroup exists)
    interface       interception.interface, in the sidecar's network namespace (tcx)
Never the root cgroup, never a host interface: the loader refuses both (see preflight).

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

TARGETS = ("app_cgroup", "sidecar_cgroup", "interface")


@dataclass(frozen=True)
class Program:
    function: str            # the C function; its pinned link is links/<function>
    prog_type: int           # layout.ProgType
    attach_type: int         # layout.AttachType, for BPF_LINK_CREATE
    target: str              # one of TARGETS
    expected_attach_type: bool = False   # the kernel wants attach_type at load time too
                                         # (CGROUP_SOCK_ADDR, CGROUP_SOCKOPT)


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

    def to_json(self) -> str:
        return json.dumps(asdict(self))

    @classmethod
    def from_json(cls, text: str) -> "Plan":
        data = json.loads(text)
        data["outbound"] = tuple(data["outbound"])
        return cls(**data)


FAMILIES = (
    Family("redirect_connect", "redirect_connect.c", (
        Program("sc_connect4", ProgType.CGROUP_SOCK_ADDR, AttachType.CGROUP_INET4_CONNECT,
                "app_cgroup", expected_attach_type=True),
        Program("sc_connect6", ProgType.CGROUP_SOCK_ADDR, AttachType.CGROUP_INET6_CONNECT,
                "app_cgroup", expected_attach_type=True),
        Program("sc_sockops", ProgType.SOCK_OPS, AttachType.CGROUP_SOCK_OPS, "app_cgroup"),
    ), wanted=lambda plan: True, kernel="cgroup sock_addr and sockops programs (5.2+)"),
    Family("original_dst_getsockopt", "original_dst_getsockopt.c", (
        Program("sc_getsockopt", ProgType.CGROUP_SOCKOPT, AttachType.CGROUP_GETSOCKOPT,
                "sidecar_cgroup", expected_attach_type=True),
    ), wanted=lambda plan: True, kernel="cgroup sockopt programs (5.3+)"),
    Family("inbound_steer", "inbound_steer.c", (
        Program("sc_inbound", ProgType.SCHED_CLS, AttachType.TCX_INGRESS, "interface"),
    ), wanted=lambda plan: plan.interface is not None,
       kernel="bpf_sk_assign at TC ingress (5.7+) and tcx links (6.6+)"),
)


def wanted_families(plan: Plan) -> list:
    return [f for f in FAMILIES if f.wanted(plan)]


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
    ]


def plan_from_config(cfg, instance: str) -> Plan:
    """The load plan of config `cfg` for `instance`."""
    from sidecar.interception.ports import excluded_inbound_ports, excluded_outbound_ports
    ic = cfg.interception
    return Plan(instance=instance, app_cgroup=ic.cgroup, interface=ic.interface,
                outbound=tuple(cfg.outbound.listen), inbound_port=cfg.inbound.listen[1],
                fail_open=ic.fail == "open", exclude_outbound=excluded_outbound_ports(cfg),
                exclude_inbound=excluded_inbound_ports(cfg))
