"""The kernel policy's pinned tables (bpf/kernel_policy.c), read back without bcc: what is
enforced right now, for `/stats`, `sidecar bpf status` and the tests. They are written by
sidecar.bpf.config_maps (at load and on every reload)."""
from __future__ import annotations

import os

from sidecar.bpf import syscall
from sidecar.bpf.layout import (
    MAPS, POLICY_CONFIG, PORT_SIDECAR, bitmap_ports, unpack_lpm_key)

__all__ = ["read_policy"]


def _open(map_dir, name):
    try:
        return syscall.obj_get(os.path.join(map_dir, name))
    except OSError:
        return None


def read_policy(map_dir: str) -> dict:
    """{"deny_cidrs", "allow_inbound_ports" (None: all allowed), "always_allowed_ports",
    "syn_rate_limit" ({"per_second", "burst"} or None), "server_ports" (those in the
    ephemeral range the pod serves on, learned or configured), "syn_sources" (buckets in
    use)}; {} when the policy is not loaded."""
    fd = _open(map_dir, "sc_policy_cfg")
    if fd is None:
        return {}
    try:
        raw = syscall.map_lookup(fd, b"\0\0\0\0")
    finally:
        os.close(fd)
    interval, tolerance, allow_ports, _, _, _ = POLICY_CONFIG.unpack(raw[:POLICY_CONFIG.size])
    out = {"deny_cidrs": [], "allow_inbound_ports": None, "always_allowed_ports": [],
           "syn_rate_limit": None, "server_ports": [], "syn_sources": 0}
    if interval:
        out["syn_rate_limit"] = {"per_second": round(1e9 / interval, 3),
                                 "burst": tolerance // interval + 1}
    for name in ("sc_deny4", "sc_deny6"):
        fd = _open(map_dir, name)
        if fd is not None:
            try:
                out["deny_cidrs"] += sorted(unpack_lpm_key(k) for k in syscall.map_keys(fd, MAPS[name].key_size))
            finally:
                os.close(fd)
    fd = _open(map_dir, "sc_allow_in")
    if fd is not None:
        try:
            own, allowed = [], []
            for key, value in syscall.map_items(fd, 2):
                (own if value[0] == PORT_SIDECAR else allowed).append(int.from_bytes(key, "little"))
        finally:
            os.close(fd)
        out["always_allowed_ports"] = sorted(own)
        if allow_ports:
            out["allow_inbound_ports"] = sorted(allowed)
    fd = _open(map_dir, "sc_svc_ports")
    if fd is not None:
        try:
            words = syscall.map_items(fd, 4)
        finally:
            os.close(fd)
        out["server_ports"] = bitmap_ports((k, v) for k, v in words if v and any(v))
    fd = _open(map_dir, "sc_syn_bucket")
    if fd is not None:
        try:
            out["syn_sources"] = len(syscall.map_keys(fd, MAPS["sc_syn_bucket"].key_size))
        finally:
            os.close(fd)
    return out
