"""Detach and unpin an instance's kernel state, or every stale instance's.

Links first: each pinned link is detached explicitly (BPF_LINK_DETACH, so it is detached
even while some other process still holds a descriptor of it) and unpinned; then the maps
and the owner record are unpinned and the directories removed. Programs and maps go away
with their last reference. Only paths under /sys/fs/bpf/sidecar/<instance>/ are touched,
and an instance whose owner is alive (or cannot be told dead) is never removed unless the
caller owns it or insists (`force`).
"""
from __future__ import annotations

import errno
import logging
import os

from sidecar.bpf import BPFFS_ROOT, syscall
from sidecar.bpf.state import (
    instance_dir, links_dir, list_instances, maps_dir, owner_liveness, read_owner)

log = logging.getLogger("sidecar.bpf.cleanup")

__all__ = ["remove_instance", "cleanup_instance", "cleanup_stale", "InstanceInUse"]


class InstanceInUse(Exception):
    """The instance belongs to a process that is (or may be) alive."""


def _entries(path):
    try:
        return sorted(os.listdir(path))
    except FileNotFoundError:
        return []


def _detach(pin):
    try:
        fd = syscall.obj_get(pin)
    except OSError:
        return
    try:
        syscall.link_detach(fd)
    except OSError as e:
        # Already detached (its cgroup or interface is gone), or a link kind without
        # detach: unpinning below drops the last reference all the same.
        if e.errno not in (errno.ENOLINK, errno.EINVAL, errno.EOPNOTSUPP, errno.ENOENT):
            raise
    finally:
        os.close(fd)


def remove_instance(path: str) -> dict:
    """Detaches and unpins everything under `path` (an instance directory), whoever owns
    it: the caller decides that. Returns what was removed."""
    removed = {"links": [], "maps": [], "other": []}
    for name in _entries(links_dir(path)):
        pin = os.path.join(links_dir(path), name)
        _detach(pin)
        os.unlink(pin)
        removed["links"].append(name)
    for name in _entries(maps_dir(path)):
        os.unlink(os.path.join(maps_dir(path), name))
        removed["maps"].append(name)
    for sub in (links_dir(path), maps_dir(path)):
        if os.path.isdir(sub):
            os.rmdir(sub)
    for name in _entries(path):
        # the owner record, and anything a newer version pinned that this one does not know
        full = os.path.join(path, name)
        if os.path.isdir(full):
            removed["other"].extend(remove_instance(full)["other"] + [name])
            os.rmdir(full)
        else:
            os.unlink(full)
            removed["other"].append(name)
    if os.path.isdir(path):
        os.rmdir(path)
    return removed


def cleanup_instance(name: str, root: str = BPFFS_ROOT, owner_pid: int = None,
                     force: bool = False) -> dict:
    """Removes instance `name` if its owner is gone, is `owner_pid` (the caller's own), or
    `force`; raises InstanceInUse otherwise. Returns what was removed ({} if nothing)."""
    path = instance_dir(name, root)
    if not os.path.isdir(path):
        return {}
    owner = read_owner(path)
    alive, why = owner_liveness(owner, path)
    mine = owner is not None and owner_pid is not None and owner.get("pid") == owner_pid \
        and alive is True
    if alive is not False and not mine and not force:
        raise InstanceInUse("instance %s is in use: %s" % (name, why))
    removed = remove_instance(path)
    log.info("removed instance %s (%s): %d link(s), %d map(s)", name, why,
             len(removed["links"]), len(removed["maps"]))
    return removed


def cleanup_stale(root: str = BPFFS_ROOT) -> dict:
    """Removes every instance whose owner is gone; {name: removed} of those removed. An
    instance directory without an owner record is left alone for a while (a loader may be
    filling it: see state.owner_liveness)."""
    out = {}
    for name in list_instances(root):
        path = instance_dir(name, root)
        alive, why = owner_liveness(read_owner(path), path)
        if alive is False:
            out[name] = remove_instance(path)
            log.info("removed stale instance %s (%s)", name, why)
    return out

