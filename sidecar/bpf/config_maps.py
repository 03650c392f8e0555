"""Maps whose contents come from config: written by the loader when it loads, and again by
the manager on every reload (ConfigHook), by map writes alone: programs are never reloaded
for a config change.

Each entry names a pinned map and how a load plan fills it. A new family whose maps take
config (kernel policy tables) adds its entry here; `sync` does the rest. A map that the
programs also write (sc_svc_ports: a bitmap of server ports, learned ones among them)
merges config into what is there (`merge`) and owns nothing to delete.

Order matters where one map switches another on: a sync writes every map's new entries
first (in CONFIG_MAPS order, so the policy's settings come after the tables they refer
to), then deletes stale entries, so a change never opens a moment where the policy is on
and its table empty (allow list being cleared) or the reverse.
"""
from __future__ import annotations

import math
import os
import struct
from dataclasses import dataclass
from typing import Callable, Optional

from sidecar.bpf import syscall
from sidecar.bpf.layout import MAPS, POLICY_CONFIG, PORT_ALLOWED, PORT_SIDECAR, port_bitmap, port_key
from sidecar.bpf.state import maps_dir

PRESENT = b"\x01"


@dataclass(frozen=True)
class ConfigMap:
    name: str
    entries: Callable        # entries(plan) -> {key bytes: value bytes}
    owns: Optional[Callable] = None     # owns(value bytes) -> bool; None: every entry
    merge: Optional[Callable] = None    # merge(current value bytes, wanted) -> value to write
    what: Optional[str] = None          # the config it holds, for the refusal's reason


CONFIG_MAPS = (
    ConfigMap("sc_excl_out", lambda plan: {port_key(p): PRESENT for p in plan.exclude_outbound}),
    ConfigMap("sc_excl_in", lambda plan: {port_key(p): PRESENT for p in plan.exclude_inbound}),
)


def check(plan):
    """Raises ValueError if `plan` does not fit the maps (before anything is written)."""
    for cm in CONFIG_MAPS:
        spec = MAPS[cm.name]
        n = len(cm.entries(plan))
        if n > spec.max_entries:
            raise ValueError("%s: %d entries, the kernel map %s holds at most %d"
                             % (cm.what or cm.name, n, cm.name, spec.max_entries))


def _owned_keys(fd, cm) -> set:
    keys = syscall.map_keys(fd, MAPS[cm.name].key_size)
    if cm.owns is None:
        return set(keys)
    return {k for k in keys if cm.owns(syscall.map_lookup(fd, k) or b"")}


def sync(instance_path: str, plan) -> dict:
    """Makes every config map of the instance hold what `plan` says; returns {name:
    (added, removed)}. New entries (of every map) are written before stale ones are
    deleted, so a port that stays excluded is never briefly not excluded. Maps a plan's
    families did not pin are skipped."""
    check(plan)
    changes = {}
    opened = []
    try:
        for cm in CONFIG_MAPS:
            pin = os.path.join(maps_dir(instance_path), cm.name)
            if not os.path.exists(pin):
                continue
            fd = syscall.obj_get(pin)
            opened.append(fd)
            want = cm.entries(plan)
            have = _owned_keys(fd, cm)
            for key, value in want.items():
                if cm.merge is not None:
                    value = cm.merge(syscall.map_lookup(fd, key) or bytes(len(value)), value)
                syscall.map_update(fd, key, value)
            changes[cm.name] = (fd, len(set(want) - have), have - set(want))
        for name, (fd, added, stale) in changes.items():
            for key in stale:
                syscall.map_delete(fd, key)
            changes[name] = (added, len(stale))
    finally:
        for fd in opened:
            os.close(fd)
    return changes


# -- kernel policy (bpf/kernel_policy.c) and the counters' server ports ---------------------

def _deny_entries(plan, trie: str) -> dict:
    from sidecar.bpf.layout import lpm_key
    out = {}
    for cidr in plan.deny_cidrs:
        name, key = lpm_key(cidr)
        if name == trie:
            out[key] = PRESENT
    return out


def _allowed_port_entries(plan) -> dict:
    """The sidecar's own ports always (tagged: exempt from every port rule), the allow
    list's when it is set."""
    out = {port_key(p): bytes([PORT_ALLOWED]) for p in plan.allow_inbound_ports}
    out.update({port_key(p): bytes([PORT_SIDECAR]) for p in plan.sidecar_ports})
    return out


def _server_port_words(plan) -> dict:
    """Configured server ports inside the ephemeral range (below it every local port is
    taken for a server's anyway: bpf/lib/sidecar_packet.h, sc_service_port), as bitmap
    words. ORed into what the counters have learned; a port once a server port stays
    one for the instance's life (it only names labels and which UDP the allow list
    judges)."""
    return port_bitmap(p for p in plan.server_ports if p >= plan.ephemeral_low)


def _or_words(current: bytes, wanted: bytes) -> bytes:
    return struct.pack("=Q", struct.unpack("=Q", current[:8])[0] | struct.unpack("=Q", wanted[:8])[0])


def syn_limit(plan) -> tuple:
    """(interval ns, tolerance ns) of kernel.syn_rate_limit: the GCRA form of a token
    bucket of `burst` SYNs (default: one second's worth, at least 1) refilled at the rate;
    (0, 0) for no limit."""
    if not plan.syn_rate:
        return 0, 0
    interval = max(1, round(1e9 / plan.syn_rate))
    burst = plan.syn_burst or max(1, math.ceil(plan.syn_rate))
    return interval, (burst - 1) * interval


def _policy_settings(plan) -> dict:
    interval, tolerance = syn_limit(plan)
    value = POLICY_CONFIG.pack(interval, tolerance, 1 if plan.allow_inbound_ports else 0,
                               len(_deny_entries(plan, "sc_deny4")), len(_deny_entries(plan, "sc_deny6")), 0)
    return {(0).to_bytes(4, "little"): value}


CONFIG_MAPS += (
    ConfigMap("sc_deny4", lambda plan: _deny_entries(plan, "sc_deny4"), what="kernel.deny_cidrs (IPv4)"),
    ConfigMap("sc_deny6", lambda plan: _deny_entries(plan, "sc_deny6"), what="kernel.deny_cidrs (IPv6)"),
    ConfigMap("sc_allow_in", _allowed_port_entries,
              what="kernel.allow_inbound_ports with the sidecar's own ports"),
    ConfigMap("sc_svc_ports", _server_port_words, owns=lambda value: False, merge=_or_words),
    # Last: the settings that switch the rules on refer to the tables above.
    ConfigMap("sc_policy_cfg", _policy_settings),
)
