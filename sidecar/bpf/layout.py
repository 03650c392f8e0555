"""The C side's shapes, mirrored once for Python: structs, maps, the counter table, and the
kernel's numbers (program types, attach types) the loader and the status code speak.

Each mirror names the C header it follows; change both together.
"""
import socket
import struct
from dataclasses import dataclass

# -- struct sc_endpoint (bpf/lib/sidecar_common.h) -------------------------------------------

AF_INET = 2
AF_INET6 = 10
ENDPOINT = struct.Struct("=16s2sH")     # ip6[4] (network order), port (network order), family
V4_MAPPED_PREFIX = b"\0" * 10 + b"\xff\xff"


def pack_endpoint(host: str, port: int) -> bytes:
    """A struct sc_endpoint: IPv4 (and v4-mapped IPv6) as ::ffff:a.b.c.d with AF_INET."""
    if ":" in host:
        raw = socket.inet_pton(socket.AF_INET6, host)
        family = AF_INET if raw.startswith(V4_MAPPED_PREFIX) else AF_INET6
    else:
        raw = V4_MAPPED_PREFIX + socket.inet_aton(host)
        family = AF_INET
    return ENDPOINT.pack(raw, struct.pack("!H", port), family)


def unpack_endpoint(data: bytes):
    """(host, port) of a struct sc_endpoint."""
    raw, port, family = ENDPOINT.unpack(data[:ENDPOINT.size])
    if family == AF_INET:
        host = socket.inet_ntoa(raw[12:])
    else:
        host = socket.inet_ntop(socket.AF_INET6, raw)
    return host, struct.unpack("!H", port)[0]


# -- maps (bpf/lib/sidecar_maps.h) ---------------------------------------------------------

@dataclass(frozen=True)
class MapSpec:
    name: str
    kind: str            # what `sidecar bpf status` says it holds
    key_size: int
    value_size: int
    max_entries: int


MAPS = {m.name: m for m in (
    MapSpec("sc_orig_cookie", "connections between connect() and established", 8, ENDPOINT.size, 16384),
    MapSpec("sc_orig_tuple", "original destinations by client endpoint", ENDPOINT.size, ENDPOINT.size, 65536),
    MapSpec("sc_excl_out", "exclude_outbound_ports", 2, 1, 256),
    MapSpec("sc_excl_in", "exclude_inbound_ports", 2, 1, 256),
    MapSpec("sc_counters", "interception counters (per CPU)", 4, 8, 9),
)}
PORT_SET_MAX = MAPS["sc_excl_out"].max_entries     # SC_PORT_SET_MAX


def port_key(port: int) -> bytes:
    """Key of a port set (sc_excl_*): the host-order u16."""
    return struct.pack("=H", port)


# struct sc_own_cgroup (bpf/lib/sidecar_maps.h): id (u64), level (u32), pad (u32)
OWN_CGROUP = struct.Struct("=QII")
MAPS["sc_sidecar_cg"] = MapSpec("sc_sidecar_cg", "the sidecar's cgroup: its connects are never redirected",
                                4, OWN_CGROUP.size, 1)


# -- enum sc_counter (bpf/lib/sidecar_counters.h): index -> name ------------------------------

COUNTERS = (
    "outbound_redirected",
    "outbound_excluded",
    "outbound_no_listener",
    "outbound_tracked",
    "original_dst_answered",
    "original_dst_unknown",
    "inbound_steered",
    "inbound_excluded",
    "inbound_no_listener",
)
assert len(COUNTERS) == MAPS["sc_counters"].max_entries    # SC_CNT_MAX


# -- kernel numbers (include/uapi/linux/bpf.h) ------------------------------------------------

class ProgType:
    SCHED_CLS = 3
    SOCK_OPS = 13
    SK_SKB = 14
    SK_MSG = 16
    CGROUP_SOCK_ADDR = 18
    CGROUP_SOCKOPT = 25


class AttachType:
    CGROUP_SOCK_OPS = 3
    SK_SKB_STREAM_VERDICT = 5
    SK_MSG_VERDICT = 7
    CGROUP_INET4_CONNECT = 10
    CGROUP_INET6_CONNECT = 11
    CGROUP_GETSOCKOPT = 21
    TCX_INGRESS = 46
    TCX_EGRESS = 47


ATTACH_TYPE_NAMES = {v: k.lower() for k, v in vars(AttachType).items() if not k.startswith("_")}
PROG_TYPE_NAMES = {v: k.lower() for k, v in vars(ProgType).items() if not k.startswith("_")}


# -- local-hop acceleration (bpf/lib/sidecar_hops.h) ----------------------------------------------

HOP_KEY = struct.Struct("=%ds%ds" % (ENDPOINT.size, ENDPOINT.size))   # struct sc_hop_key: local, remote


def pack_hop_key(local, remote) -> bytes:
    """A struct sc_hop_key: a connection as the socket at `local` sees it ((host, port) each)."""
    return HOP_KEY.pack(pack_endpoint(*local), pack_endpoint(*remote))


MAPS.update({m.name: m for m in (
    MapSpec("sc_hop_socks", "accelerated app <-> sidecar sockets", HOP_KEY.size, 8, 32768),
    MapSpec("sc_hop_pairs", "local hops and their handshakes", HOP_KEY.size, 32, 16384),
    MapSpec("sc_hop_counters", "local-hop counters (per CPU)", 4, 8, 10),
)})

# enum sc_hop_counter: index -> name
HOP_COUNTERS = (
    "hop_sockets_added",
    "hop_sockets_removed",
    "outbound_hops",
    "inbound_hops",
    "hop_handshake_mismatch",
    "hop_insert_failed",
    "hop_msgs_redirected",
    "hop_bytes_redirected",
    "hop_sockets_on_stack",
    "hop_over_budget",
)
assert len(HOP_COUNTERS) == MAPS["sc_hop_counters"].max_entries    # SC_HOP_CNT_MAX


# -- in-kernel splice (bpf/lib/sidecar_splice.h) ------------------------------------------------

SPLICE_END = struct.Struct("=QQII")     # struct sc_splice_end: peer cookie, bytes, mode, pad
SPLICE_FRESH, SPLICE_KERNEL, SPLICE_USER = 0, 1, 2

MAPS.update({m.name: m for m in (
    MapSpec("sc_splice_socks", "spliced tunnel sockets", 8, 8, 65536),
    MapSpec("sc_splice_ends", "spliced tunnel ends: peer, bytes", 8, SPLICE_END.size, 65536),
)})
