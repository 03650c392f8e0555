"""The C side's shapes, mirrored once for Python: structs, maps, the counter table, and the
kernel's numbers (program types, attach types) the loader and the status code speak.

Each mirror names the C header it follows; change both together.
"""
import ipaddress
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


# -- traffic counters and kernel policy (bpf/lib/sidecar_maps.h, second part) ----------------

TRAFFIC_KEY = struct.Struct("=16s2sBB")   # peer (network order), port (network order), direction, protocol
TRAFFIC_VALUE = struct.Struct("=QQ")      # bytes, packets (one per CPU in the map)
POLICY_CONFIG = struct.Struct("=QQIIII")  # syn_interval_ns, syn_tolerance_ns, allow_ports, deny4, deny6, pad
LPM4_KEY = struct.Struct("=I4s")          # prefixlen, address (network order)
LPM6_KEY = struct.Struct("=I16s")
SYN_BUCKET_VALUE = struct.Struct("=Q")    # the source's GCRA theoretical arrival time (ns)

DIRECTIONS = ("inbound", "outbound")      # SC_DIR_INBOUND (received), SC_DIR_OUTBOUND (sent)
PORT_ALLOWED, PORT_SIDECAR = 1, 2         # sc_allow_in values

MAPS.update({m.name: m for m in (
    MapSpec("sc_traffic", "bytes and packets by direction, peer, port, protocol (per CPU)",
            TRAFFIC_KEY.size, TRAFFIC_VALUE.size, 4096),
    MapSpec("sc_drops", "dropped packets by reason (per CPU)", 4, 8, 5),
    MapSpec("sc_svc_ports", "server ports of the pod (a bitmap, 64 ports a word)", 4, 8, 1024),
    MapSpec("sc_deny4", "kernel.deny_cidrs (IPv4)", LPM4_KEY.size, 1, 1024),
    MapSpec("sc_deny6", "kernel.deny_cidrs (IPv6)", LPM6_KEY.size, 1, 1024),
    MapSpec("sc_allow_in", "kernel.allow_inbound_ports and the sidecar's ports", 2, 1, 256),
    MapSpec("sc_syn_bucket", "SYN rate limit: one bucket per source", ENDPOINT.size,
            SYN_BUCKET_VALUE.size, 16384),
    MapSpec("sc_policy_cfg", "kernel policy settings", 4, POLICY_CONFIG.size, 1),
)})

# enum sc_drop_reason (bpf/lib/sidecar_drop_reasons.h): index -> the `reason` label value
DROP_REASONS = (
    "deny_cidr",
    "port_not_allowed",
    "syn_rate_limit",
    "l4_unparsed",
    "no_inbound_listener",
)
assert len(DROP_REASONS) == MAPS["sc_drops"].max_entries    # SC_DROP_MAX

PROTOCOL_NAMES = {1: "icmp", 6: "tcp", 17: "udp", 58: "icmpv6", 132: "sctp"}


def port_bitmap(ports) -> dict:
    """{word key bytes: word value bytes} of sc_svc_ports with `ports` set."""
    words = {}
    for port in ports:
        words[port >> 6] = words.get(port >> 6, 0) | (1 << (port & 63))
    return {struct.pack("=I", w): struct.pack("=Q", v) for w, v in sorted(words.items())}


def bitmap_ports(items) -> list:
    """The ports set in [(word key bytes, word value bytes)] of sc_svc_ports."""
    out = []
    for key, value in items:
        word, bits = struct.unpack("=I", key[:4])[0], struct.unpack("=Q", value[:8])[0]
        out += [word * 64 + b for b in range(64) if bits >> b & 1]
    return sorted(out)


def protocol_name(number: int) -> str:
    """The `protocol` label value: a name for the common ones, else the IP protocol number."""
    return PROTOCOL_NAMES.get(number, str(number))


def unpack_traffic_key(data: bytes):
    """(direction, peer address, port, protocol number) of a struct sc_traffic_key."""
    raw, port, direction, protocol = TRAFFIC_KEY.unpack(data[:TRAFFIC_KEY.size])
    if raw.startswith(V4_MAPPED_PREFIX):
        peer = socket.inet_ntoa(raw[12:])
    else:
        peer = socket.inet_ntop(socket.AF_INET6, raw)
    return (DIRECTIONS[direction] if direction < len(DIRECTIONS) else str(direction),
            peer, struct.unpack("!H", port)[0], protocol)


def pack_traffic_key(direction: str, peer: str, port: int, protocol: int) -> bytes:
    """A struct sc_traffic_key (for fixtures and tests)."""
    raw = pack_endpoint(peer, 0)[:16]
    return TRAFFIC_KEY.pack(raw, struct.pack("!H", port), DIRECTIONS.index(direction), protocol)


def lpm_key(cidr: str) -> tuple:
    """(map name, key bytes) of a normalised CIDR in the deny tries."""
    net = ipaddress.ip_network(cidr)
    if net.version == 4:
        return "sc_deny4", LPM4_KEY.pack(net.prefixlen, net.network_address.packed)
    return "sc_deny6", LPM6_KEY.pack(net.prefixlen, net.network_address.packed)


def unpack_lpm_key(data: bytes) -> str:
    """The CIDR text of a deny-trie key."""
    if len(data) == LPM4_KEY.size:
        plen, raw = LPM4_KEY.unpack(data)
    else:
        plen, raw = LPM6_KEY.unpack(data[:LPM6_KEY.size])
    return str(ipaddress.ip_network((raw, plen)))
