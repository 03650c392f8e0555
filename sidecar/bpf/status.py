"""`sidecar bpf status` and `sidecar bpf cleanup`: the kernel state of sidecar instances.

    sidecar bpf status [--json] [--instance NAME | -c FILE]
        every instance pinned under /sys/fs/bpf/sidecar (or the one named): owner and
        liveness, programs and where they are attached, map fill, counters; and the
        iptables interception rules of the current network namespace
    sidecar bpf cleanup [--instance NAME | -c FILE] [--force]
        removes this instance's state (the one named, or those of this network namespace)
        when its owner is gone; a live owner's is left alone unless --force
    sidecar bpf cleanup --stale
        removes every instance whose owner is gone, bpffs and this namespace's iptables
        rules; never a live one (other sidecars on the machine keep theirs)
    sidecar bpf load -c FILE [--instance NAME]
        the loader as an init container: compiles, attaches and pins the instance of
        FILE and exits, handing it over to the sidecar that starts next with the same
        config (sidecar.bpf.handover); exit codes as the loader's (sidecar.bpf), except
        that BPF being unavailable with `interception.fail: open` exits 0

Exit status: 0 done; 1 something was refused (an instance in use) or failed.
"""
from __future__ import annotations

import json
import os
import sys

from sidecar.bpf import BPFFS_ROOT
from sidecar.bpf.cleanup import InstanceInUse, cleanup_instance, cleanup_stale
from sidecar.bpf.state import describe_instance, list_instances, ns_inode, read_owner, instance_dir


def _iptables_here() -> dict:
    try:
        from sidecar.interception.iptables_rules import instances_here
        return instances_here()
    except Exception as e:           # no iptables, no permission: status still answers
        return {"error": str(e)}


def _selected(args) -> list:
    """The instances a command is about: named, from a config, or all (status) / this
    network namespace's (cleanup)."""
    if getattr(args, "instance", None):
        return [args.instance]
    if getattr(args, "config", None):
        from sidecar.config import load_config
        from sidecar.bpf.state import default_instance
        return [default_instance(load_config(args.config))]
    return None


def collect_status(names=None, root: str = BPFFS_ROOT) -> dict:
    names = list_instances(root) if names is None else names
    instances = []
    from sidecar.bpf.pod_cgroup import read_sidecar_cgroup
    for name in names:
        if os.path.isdir(instance_dir(name, root)):
            inst = describe_instance(name, root)
            inst["sidecar_cgroup_excluded"] = read_sidecar_cgroup(inst["path"])
            instances.append(inst)
    return {"bpffs": root, "instances": instances, "iptables": _iptables_here()}


def _print_human(status: dict, out=sys.stdout):
    w = out.write
    if not status["instances"]:
        w("no sidecar instance pinned under %s\n" % status["bpffs"])
    for inst in status["instances"]:
        owner = inst["owner"] or {}
        w("instance %s: %s (%s)\n" % (inst["instance"], inst["state"], inst["owner_status"]))
        w("  path %s\n" % inst["path"])
        if owner:
            w("  app cgroup %s, sidecar cgroup %s, interface %s\n" % (
                owner.get("app_cgroup"), owner.get("sidecar_cgroup"), owner.get("interface") or "-"))
            w("  plan %s%s\n" % ((owner.get("fingerprint") or "-")[:12], _adoption(owner)))
        excluded = inst.get("sidecar_cgroup_excluded")
        if excluded and excluded["id"]:
            w("  connects never redirected from cgroup id %d (level %d)%s\n" % (
                excluded["id"], excluded["level"],
                ", the owner's: %s" % owner["cgroup"] if owner.get("cgroup") and
                _same_cgroup(owner["cgroup"], excluded["id"]) else ""))
        w("  programs:\n")
        for link in inst["links"]:
            where = link.get("cgroup") or link.get("interface") or (
                "cgroup id %s" % link["cgroup_id"] if "cgroup_id" in link else
                "map %s (id %s)" % (link.get("map"), link["map_id"]) if "map_id" in link else
                "ifindex %s" % link.get("ifindex"))
            prog = link.get("program") or {}
            w("    %-14s %-22s %-40s prog %s, link %s%s\n" % (
                link["function"], link.get("attach_type"), where, prog.get("id"), link.get("link_id"),
                "" if link.get("attached", True) else "  (detached: target gone)"))
        w("  maps:\n")
        for m in inst["maps"]:
            w("    %-14s %7s / %-7s %9s  %s\n" % (
                m["name"], m.get("entries", "?"), m.get("max_entries", "?"),
                _kib(m.get("memory_bytes")), m.get("holds") or ""))
        if inst["counters"]:
            w("  counters:\n")
            for name, value in inst["counters"].items():
                w("    %-22s %d\n" % (name, value))
        if inst.get("local_hops"):
            w("  local-hop acceleration: %d sockets accelerated now\n"
              % inst["local_hops"]["accelerated_sockets"])
            for name, value in inst["local_hops"].items():
                if name != "accelerated_sockets":
                    w("    %-22s %d\n" % (name, value))
        _print_kernel_tables(inst, w)
    ipt = status["iptables"]
    if "error" in ipt:
        w("iptables: %s\n" % ipt["error"])
    elif ipt:
        w("iptables interception in this network namespace:\n")
        for name, entry in sorted(ipt.items()):
            state = "live" if entry["alive"] else "unknown" if entry["alive"] is None else "stale"
            w("  instance %s: %s (%s), IPv%s, %d jump rules\n" % (
                name, state, entry["why"], "+".join(map(str, entry["versions"])), len(entry["rules"])))


def _adoption(owner: dict) -> str:
    adopted = owner.get("adopted")
    if owner.get("handed_over"):
        return ", handed over: waiting for the sidecar that adopts it"
    if adopted:
        return ", adopted (%s) from the loader pid %s" % (adopted.get("was"), adopted.get("from_pid"))
    return ""


def _same_cgroup(path: str, cgroup_id: int) -> bool:
    try:
        return os.stat(path).st_ino == cgroup_id
    except OSError:
        return False


def _kib(n):
    return "-" if n is None else "%.0f KiB" % (n / 1024)


def _print_kernel_tables(inst, w):
    """Drops, traffic and the enforced policy (kernel_policy and traffic_counters)."""
    if "drops" in inst:
        w("  drops:\n")
        for reason, n in inst["drops"].items():
            w("    %-22s %d\n" % (reason, n))
    traffic = inst.get("traffic")
    if traffic:
        t = traffic["totals"]
        w("  traffic (%d of %d label sets): inbound %d bytes / %d packets, outbound %d bytes / %d packets\n"
          % (traffic["entries"], traffic["max_entries"], t["inbound"]["bytes"], t["inbound"]["packets"],
             t["outbound"]["bytes"], t["outbound"]["packets"]))
        for r in traffic["top"]:
            w("    %-8s %-39s %5s/%-6s %12d bytes %9d packets\n" % (
                r["direction"], r["peer"], r["port"], r["protocol"], r["bytes"], r["packets"]))
    policy = inst.get("policy")
    if policy:
        syn = policy["syn_rate_limit"]
        w("  policy: deny %s; inbound ports %s (always: %s); SYN limit %s\n" % (
            ", ".join(policy["deny_cidrs"]) or "none",
            "all" if policy["allow_inbound_ports"] is None else
            ", ".join(map(str, policy["allow_inbound_ports"])) or "none",
            ", ".join(map(str, policy["always_allowed_ports"])) or "-",
            "%g/s per source, burst %d (%d sources tracked)" % (syn["per_second"], syn["burst"],
                                                               policy["syn_sources"]) if syn else "none"))


def cmd_status(args) -> int:
    status = collect_status(_selected(args))
    if args.json:
        print(json.dumps(status, indent=2, sort_keys=True))
    else:
        _print_human(status)
    return 0


def _this_netns_instances() -> list:
    here = ns_inode("net")
    return [n for n in list_instances() if (read_owner(instance_dir(n)) or {}).get("netns") == here]


def cmd_cleanup(args) -> int:
    from sidecar.interception.iptables_rules import IptablesError, instances_here, remove_rules
    failed = False
    if args.stale:
        for name, removed in cleanup_stale().items():
            print("removed stale instance %s: %d links, %d maps" % (
                name, len(removed["links"]), len(removed["maps"])))
        try:
            for name, entry in instances_here().items():
                if entry["alive"] is False:
                    remove_rules(name)
                    print("removed stale iptables rules of instance %s (%s)" % (name, entry["why"]))
        except IptablesError as e:
            print("iptables: %s" % e.reason, file=sys.stderr)
        return 0
    names = _selected(args)
    if names is None:
        names = _this_netns_instances()
    try:
        rules_here = instances_here()
    except IptablesError:
        rules_here = {}
    if not names and not rules_here:
        print("nothing to clean up")
        return 0
    for name in names:
        try:
            removed = cleanup_instance(name, force=args.force)
        except InstanceInUse as e:
            print("%s; stop that sidecar first (or --force)" % e, file=sys.stderr)
            failed = True
            continue
        if removed:
            print("removed instance %s: %d links, %d maps" % (name, len(removed["links"]), len(removed["maps"])))
    selected = set(names) if _selected(args) is not None else set(rules_here)
    for name, entry in rules_here.items():
        if name not in selected:
            continue
        if entry["alive"] is not False and not args.force:
            print("iptables rules of instance %s are in use: %s; stop that sidecar first (or --force)"
                  % (name, entry["why"]), file=sys.stderr)
            failed = True
            continue
        remove_rules(name)
        print("removed iptables rules of instance %s" % name)
    return 1 if failed else 0


def cmd_load(args) -> int:
    # The loader, in this process: the one command of the CLI that imports bcc.
    from sidecar.bpf.loader import main as loader_main
    return loader_main(["-c", args.config] + (["--instance", args.instance] if args.instance else []))


def add_commands(sub):
    """Adds `bpf status`, `bpf cleanup` and `bpf load` to the `sidecar` command line."""
    bpf = sub.add_parser("bpf", help="the kernel state: status, cleanup, load")
    cmds = bpf.add_subparsers(dest="bpf_command", required=True)
    load = cmds.add_parser("load", help="load, attach and pin the programs of a config, then exit, "
                                        "handing them over to the sidecar (an init container's job)")
    load.add_argument("-c", "--config", required=True)
    load.add_argument("--instance", help="the instance name (default: from the config)")
    load.set_defaults(func=cmd_load)
    status = cmds.add_parser("status", help="programs, attachments, map fill and counters")
    status.add_argument("--json", action="store_true", help="as JSON")
    cleanup = cmds.add_parser("cleanup", help="remove this instance's (or every stale) kernel state")
    cleanup.add_argument("--stale", action="store_true", help="every instance whose owner is gone")
    cleanup.add_argument("--force", action="store_true", help="even if its owner may be alive")
    for p in (status, cleanup):
        which = p.add_mutually_exclusive_group()
        which.add_argument("--instance", help="the instance name")
        which.add_argument("-c", "--config", help="the instance of this config file")
    status.set_defaults(func=cmd_status)
    cleanup.set_defaults(func=cmd_cleanup)
