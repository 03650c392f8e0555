"""What a sidecar instance left in the kernel, seen with the system's own tools (bpftool,
tc, iptables-save), not with the sidecar's code: the tests' proof that stop, a restart
after kill -9 and `sidecar bpf cleanup` leave nothing behind.
"""
import json
import os
import subprocess

from sidecar.bpf import BPFFS_ROOT


def _run(cmd):
    return subprocess.run(cmd, capture_output=True, text=True, timeout=30)


def bpf_ids(sidecar):
    """{"links": [...], "progs": [...]} of a sidecar's BPF attachments, from /stats: the
    ebpf mode's, or the data-path programs an iptables-mode sidecar loaded."""
    info = sidecar.stats()["interception"]
    links = info.get("links") or (info.get("programs") or {}).get("links") or []
    return {"links": [l["link_id"] for l in links],
            "progs": [l["prog_id"] for l in links],
            "instance": info["instance"]}


def cgroup_programs(cgroup_path):
    """bpftool cgroup show: the programs attached to a cgroup, as (attach type, name)."""
    r = _run(["bpftool", "-j", "cgroup", "show", cgroup_path])
    if r.returncode != 0 or not r.stdout.strip():
        return []
    return [(p.get("attach_type"), p.get("name")) for p in json.loads(r.stdout)]


def bpf_objects_left(ids):
    """Which of the links and programs in `ids` (bpf_ids) still exist."""
    left = []
    for link_id in (ids or {}).get("links", ()):
        if _run(["bpftool", "link", "show", "id", str(link_id)]).returncode == 0:
            left.append("bpftool link: link %d still exists" % link_id)
    for prog_id in (ids or {}).get("progs", ()):
        if _run(["bpftool", "prog", "show", "id", str(prog_id)]).returncode == 0:
            left.append("bpftool prog: program %d still loaded" % prog_id)
    return left


def ebpf_leftovers(ns, instance, ids=None, cgroups=(), interface=None):
    """Everything of `instance` still in the kernel, as readable strings ([] when clean)."""
    left = []
    path = os.path.join(BPFFS_ROOT, instance)
    if os.path.exists(path):
        left.append("bpffs: %s holds %s" % (path, sorted(os.listdir(path))))
    left += bpf_objects_left(ids)
    for cgroup in cgroups:
        progs = cgroup_programs(cgroup)
        if progs:
            left.append("bpftool cgroup show %s: %s" % (cgroup, progs))
    if interface:
        for what in (["tc", "filter", "show", "dev", interface, "ingress"],
                     ["tc", "filter", "show", "dev", interface, "egress"]):
            out = ns.run(what, check=False).stdout.strip()
            if out:
                left.append("%s: %s" % (" ".join(what), out))
        qdisc = ns.run(["tc", "qdisc", "show", "dev", interface], check=False).stdout
        if "clsact" in qdisc:
            left.append("tc qdisc on %s: %s" % (interface, qdisc.strip()))
    return left


def iptables_leftovers(ns):
    """Sidecar chains or rules in the namespace's nat tables ([] when clean)."""
    left = []
    for tool in ("iptables-save", "ip6tables-save"):
        out = ns.run([tool, "-t", "nat"], check=False).stdout
        lines = [l for l in out.splitlines() if "SC-" in l or "sidecar instance=" in l]
        if lines:
            left.append("%s: %s" % (tool, lines))
    return left
