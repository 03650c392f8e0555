"""Maps whose contents come from config: written by the loader when it loads, and again by
the manager on every reload (ConfigHook), by map writes alone: programs are never reloaded
for a config change.

Each entry names a pinned map and how a load plan fills it. A new family whose maps take
config (kernel policy tables) adds its entry here; `sync` does the rest.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Callable

from sidecar.bpf import syscall
from sidecar.bpf.layout import MAPS, port_key
from sidecar.bpf.state import maps_dir

PRESENT = b"\x01"


@dataclass(frozen=True)
class ConfigMap:
    name: str
    entries: Callable        # entries(plan) -> {key bytes: value bytes}


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
            raise ValueError("%s: %d entries, the kernel map holds at most %d"
                             % (cm.name, n, spec.max_entries))


def sync(instance_path: str, plan) -> dict:
    """Makes every config map of the instance hold what `plan` says; returns {name:
    (added, removed)}. New entries are written before stale ones are deleted, so a port
    that stays excluded is never briefly not excluded. Maps a plan's families did not
    pin are skipped."""
    check(plan)
    changes = {}
    for cm in CONFIG_MAPS:
        pin = os.path.join(maps_dir(instance_path), cm.name)
        if not os.path.exists(pin):
            continue
        fd = syscall.obj_get(pin)
        try:
            want = cm.entries(plan)
            have = set(syscall.map_keys(fd, MAPS[cm.name].key_size))
            for key, value in want.items():
                syscall.map_update(fd, key, value)
            stale = have - set(want)
            for key in stale:
                syscall.map_delete(fd, key)
            changes[cm.name] = (len(set(want) - have), len(stale))
        finally:
            os.close(fd)
    return changes
