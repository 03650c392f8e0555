"""The loader as an init container: `sidecar bpf load -c FILE` loads, attaches and pins the
instance, hands it over and exits; the sidecar that starts next with the same config adopts
it instead of running the loader. The sidecar's container then needs neither bcc nor LLVM,
and its kernel side is ready in milliseconds.

    init container   sidecar bpf load -c FILE
                     /sys/fs/bpf/sidecar/<instance>/, owner record
                     {"handed_over": true, "fingerprint": F, "pid": <the loader>, ...}
    sidecar          sidecar run -c FILE: its plan's fingerprint is F, it is in the same
                     network namespace, its attach points resolve to the recorded ones, and
                     every link is pinned and attached -> adopt: the owner record names the
                     manager, the sidecar's cgroup goes into sc_sidecar_cg, the config maps
                     are written from its config (before any worker starts);
                     otherwise the handed-over instance is removed and the loader runs, as
                     without an init container

The fingerprint covers what is compiled in and where it is attached: the -D flags of
`cflags_for` (listener addresses and ports, fail open, and whatever flag a family adds),
the families and each program's attach point, `interception.cgroup` and `.interface` as
configured, and the BPF sources (the families' bpf/*.c and bpf/lib/*.h), so init and
sidecar images of different versions never share programs. Config maps (exclusions, kernel
policy tables) are not in it: the adopting sidecar writes them from its own config, as a
reload does.

A stale instance (its owner gone: a sidecar killed, its container restarted) is replaced by
running the loader, as ever. Only where this process cannot run the loader (no bcc: the
sidecar's image) is a stale instance with a matching fingerprint adopted instead: replacing
it is impossible here, and it was loaded for this very config. That is how a sidecar
container restarted by the kubelet (whose init containers do not run again) gets its
interception back.

No bcc here: the manager uses this module.
"""
from __future__ import annotations

import dataclasses
import glob
import hashlib
import json
import os
import time

from sidecar.bpf.programs import BPF_DIR, cflags_for, wanted_families
from sidecar.bpf.state import (
    instance_dir, maps_dir, ns_inode, owner_liveness, owner_record, read_links, read_owner,
    update_owner)

FORMAT = 1          # bump when the fingerprint's inputs change meaning


def fingerprint(plan) -> str:
    """The plan's identity as far as loaded programs are concerned (see the module doc)."""
    families = wanted_families(plan)
    # -I is where the sources are, not what they say: their contents are hashed below.
    flags = [f for f in cflags_for(plan, maps_dir(instance_dir(plan.instance))) if not f.startswith("-I")]
    described = {
        "format": FORMAT, "cflags": flags, "app_cgroup": plan.app_cgroup, "interface": plan.interface,
        "families": [[f.name, f.source, [dataclasses.asdict(p) for p in f.programs]] for f in families],
    }
    digest = hashlib.sha256(json.dumps(described, sort_keys=True).encode())
    sources = [os.path.join(BPF_DIR, f.source) for f in families]
    sources += sorted(glob.glob(os.path.join(BPF_DIR, "lib", "*.h")))
    for source in sources:
        with open(source, "rb") as f:
            digest.update(os.path.basename(source).encode() + b"\0" + f.read() + b"\0")
    return digest.hexdigest()


def handed_over_record(record: dict, plan) -> dict:
    """The owner record of an instance the loader has just loaded for a sidecar to come."""
    out = dict(record)
    out.update({"handed_over": True, "fingerprint": fingerprint(plan), "created": time.time()})
    return out


def mismatch(path: str, owner: dict, plan, targets) -> str:
    """Why the instance at `path` (record `owner`) is not the one `plan` would load with
    `targets` (sidecar.bpf.preflight.Targets); "" when it is."""
    if owner.get("fingerprint") != fingerprint(plan):
        return "its plan differs (fingerprint %s, this config's %s)" % (
            (owner.get("fingerprint") or "none")[:12], fingerprint(plan)[:12])
    if owner.get("netns") != ns_inode("net"):
        return "it was loaded in another network namespace"
    for key in ("app_cgroup", "sidecar_cgroup", "interface", "ifindex"):
        if owner.get(key) != getattr(targets, key):
            return "its %s is %s, here %s" % (key, owner.get(key), getattr(targets, key))
    links = {l["function"]: l for l in read_links(path, owner)}
    for family in wanted_families(plan):
        for prog in family.programs:
            link = links.get(prog.function)
            if link is None or "error" in link:
                return "%s is not pinned" % prog.function
            if not link.get("attached", True):
                return "%s is not attached any more" % prog.function
    return ""


def adoptable(path: str, plan, targets, can_load: bool):
    """(record, why) of the instance at `path` when this process may adopt it: handed over
    and matching, or stale and matching where `can_load` is False. (None, reason) when it
    may not; reason is "" when there is nothing to adopt (no instance, or a live owner)."""
    owner = read_owner(path)
    if owner is None:
        return None, ""
    alive, why = owner_liveness(owner, path)
    if owner.get("handed_over") and alive is None:
        wrong = mismatch(path, owner, plan, targets)
        if wrong:
            return None, "the instance handed over by the loader does not match: %s" % wrong
        return owner, why
    if alive is False and not can_load:
        wrong = mismatch(path, owner, plan, targets)
        if wrong:
            return None, "the stale instance (%s) does not match: %s" % (why, wrong)
        return owner, why
    return None, ""


def adopt(path: str, owner: dict, pid: int) -> dict:
    """Makes process `pid` the owner of the instance at `path` (record `owner`); returns the
    new record. The caller then writes the sidecar's cgroup and the config maps."""
    record = dict(owner)
    record.update(owner_record(pid))
    record["handed_over"] = False
    record["adopted"] = {"from_pid": owner.get("pid"), "loaded_at": owner.get("created"),
                         "was": "handed over" if owner.get("handed_over") else "stale",
                         "at": time.time()}
    update_owner(path, record)
    now = read_owner(path) or {}
    if now.get("pid") != pid or now.get("start_time") != record["start_time"]:
        raise OSError("instance %s was taken by pid %s at the same moment" % (path, now.get("pid")))
    return record


def adopt_instance(path: str, plan, pid: int):
    """What the manager does before it would run the loader: (report, note).

    `report` describes the adoption (None when nothing was adopted); `note` says what was
    found and not adopted ("" when there was nothing). A handed-over instance that does not
    match is removed, and so is a stale one that this process can neither adopt nor replace
    (no loader here), so no program of another plan stays attached while the sidecar runs.
    Preflight refusals adopt nothing and say nothing: the loader gives the reason."""
    from sidecar.bpf import config_maps
    from sidecar.bpf.cleanup import remove_instance
    from sidecar.bpf.pod_cgroup import write_sidecar_cgroup
    from sidecar.bpf.preflight import (
        Refusal, cgroup2_mount, check_bpffs, check_build_tools, check_privileges, resolve_targets)
    if not os.path.isdir(path):
        return None, ""
    started = time.monotonic()
    try:
        check_privileges()
        check_bpffs()
        targets = resolve_targets(plan)
    except Refusal:
        return None, ""
    try:
        check_build_tools()
        can_load = True
    except Refusal:
        can_load = False
    owner, why = adoptable(path, plan, targets, can_load)
    if owner is None:
        found = read_owner(path) or {}
        alive, _ = owner_liveness(found, path)
        if why and (found.get("handed_over") or (alive is False and not can_load)):
            removed = remove_instance(path)
            return None, "%s: removed it (%d links, %d maps)%s" % (
                why, len(removed["links"]), len(removed["maps"]),
                "; running the loader" if can_load else "")
        return None, why
    record = adopt(path, owner, pid)
    excluded = write_sidecar_cgroup(path, targets.own_cgroup, cgroup2_mount())
    changes = config_maps.sync(path, plan)
    return {"adopted": True, "was": record["adopted"]["was"], "owner_status": why,
            "from_pid": owner.get("pid"), "loaded_at": owner.get("created"),
            "fingerprint": owner.get("fingerprint"), "sidecar_cgroup_excluded": excluded,
            "config_maps": changes,
            "links": [l["function"] for l in read_links(path, record)],
            "seconds": round(time.monotonic() - started, 4)}, ""
