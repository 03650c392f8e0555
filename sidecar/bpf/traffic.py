"""The traffic counters' and drop counters' pinned maps, read without bcc (the manager's
collectors, `/stats`, `sidecar bpf status`, the tests).

    sc_traffic  (direction, peer, service port, protocol) -> bytes, packets per CPU:
                bpf/traffic_counters.c says what each field means
    sc_drops    enum sc_drop_reason -> packets per CPU (bpf/lib/sidecar_drop_reasons.h)

Readers take the instance's map directory, so tests can point them at fixture maps.
"""
from __future__ import annotations

import os
import struct
from dataclasses import dataclass

from sidecar.bpf import syscall
from sidecar.bpf.layout import DROP_REASONS, MAPS, TRAFFIC_VALUE, protocol_name, unpack_traffic_key

__all__ = ["TrafficRow", "read_traffic", "read_drops", "traffic_summary"]


@dataclass(frozen=True)
class TrafficRow:
    direction: str      # inbound (received by the pod) | outbound (sent by the pod)
    peer: str           # the other end's address
    port: int           # the connection's service port; 0 for protocols without ports
    protocol: str       # tcp, udp, icmp, icmpv6, or the IP protocol number
    bytes: int
    packets: int

    @property
    def key(self) -> tuple:
        return (self.direction, self.peer, self.port, self.protocol)


def _sum_percpu(raw: bytes):
    """(bytes, packets) of a per-CPU struct sc_traffic_value, summed over CPUs."""
    total_bytes = total_packets = 0
    for offset in range(0, len(raw) - TRAFFIC_VALUE.size + 1, TRAFFIC_VALUE.size):
        b, p = TRAFFIC_VALUE.unpack_from(raw, offset)
        total_bytes += b
        total_packets += p
    return total_bytes, total_packets


def read_traffic(map_dir: str):
    """Every entry of sc_traffic as a TrafficRow; None when the map is not pinned."""
    try:
        fd = syscall.obj_get(os.path.join(map_dir, "sc_traffic"))
    except OSError:
        return None
    try:
        items = syscall.map_items(fd, MAPS["sc_traffic"].key_size)
    finally:
        os.close(fd)
    rows = []
    for key, value in items:
        direction, peer, port, protocol = unpack_traffic_key(key)
        b, p = _sum_percpu(value)
        rows.append(TrafficRow(direction, peer, port, protocol_name(protocol), b, p))
    return rows


def read_drops(map_dir: str) -> dict:
    """{reason: packets dropped} for every reason of the table; {} when not pinned."""
    try:
        fd = syscall.obj_get(os.path.join(map_dir, "sc_drops"))
    except OSError:
        return {}
    try:
        out = {}
        for index, reason in enumerate(DROP_REASONS):
            raw = syscall.map_lookup(fd, struct.pack("=I", index))
            out[reason] = syscall.sum_percpu_u64(raw) if raw else 0
        return out
    finally:
        os.close(fd)


def traffic_summary(rows: list, top: int = 10) -> dict:
    """What /stats and `sidecar bpf status` show: totals per direction, and the `top`
    label sets by bytes."""
    totals = {d: {"bytes": 0, "packets": 0} for d in ("inbound", "outbound")}
    for r in rows:
        t = totals.setdefault(r.direction, {"bytes": 0, "packets": 0})
        t["bytes"] += r.bytes
        t["packets"] += r.packets
    ranked = sorted(rows, key=lambda r: (-r.bytes, r.key))[:top]
    return {"entries": len(rows), "max_entries": MAPS["sc_traffic"].max_entries, "totals": totals,
            "top": [{"direction": r.direction, "peer": r.peer, "port": r.port, "protocol": r.protocol,
                     "bytes": r.bytes, "packets": r.packets} for r in ranked]}
