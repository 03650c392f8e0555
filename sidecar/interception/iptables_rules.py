"""iptables mode: REDIRECT rules in the sidecar's own network namespace (the pod's), as
istio-init installs them, for kernels without the eBPF hooks and as the benchmark baseline.

Per instance, in the nat table of iptables and ip6tables:

    OUTPUT      -p tcp <the app> -m comment "sidecar instance=... pid=... start=..." -j SC-OUT-<id>
    SC-OUT-<id> -d 127.0.0.0/8 (::1) RETURN; excluded ports RETURN; REDIRECT --to-ports 15001
    PREROUTING  -i <interface> (or ! -i lo) -p tcp -m comment "..." -j SC-IN-<id>
    SC-IN-<id>  excluded ports (and the sidecar's own listeners) RETURN; REDIRECT --to-ports 15006

"The app" is `-m cgroup --path <interception.cgroup>` when the app's cgroup is configured
(the sidecar's own connections come from another cgroup), else every user but the
sidecar's own (`-m owner ! --uid-owner <uid>`: the sidecar runs as its own user, like
Istio's 1337). With `interception.cgroup: pod` it is the pod's cgroup (the parent of the
sidecar's, sidecar.bpf.pod_cgroup), and SC-OUT-<id> starts with
`-m cgroup --path <the sidecar's cgroup> -j RETURN`: xt_cgroup matches a cgroup and
everything below it, so the sidecar's connections are the pod's too. REDIRECT under ip6tables sends IPv6 to [::1] and the interface's address:
the workers listen there too (sidecar.worker.listen_addresses).

The comment on the jump rules is the owner record: at start, rules of this instance whose
owner is gone (kill -9) are replaced; rules of a live owner refuse the start. A reload
rewrites only the two chains' contents, in one iptables-restore transaction each.
"""
from __future__ import annotations

import hashlib
import logging
import os
import re
import shlex
import shutil
import subprocess
from dataclasses import dataclass, field
from typing import Optional

from sidecar.bpf.state import ns_inode, owner_liveness, proc_start_time

log = logging.getLogger("sidecar.interception.iptables_rules")

TOOLS = {4: ("iptables", "iptables-save", "iptables-restore"),
         6: ("ip6tables", "ip6tables-save", "ip6tables-restore")}
LOOPBACK = {4: "127.0.0.0/8", 6: "::1/128"}
_COMMENT = re.compile(r'--comment "?sidecar instance=(\S+) pid=(\d+) start=(\d+) pidns=(\d+)"?')
TIMEOUT = 10.0


class IptablesError(Exception):
    """iptables refused or is missing: `unavailable` says whether it is the machine's lack
    (fail open/closed applies) rather than a conflict (refuse to start)."""

    def __init__(self, reason: str, unavailable: bool = True):
        super().__init__(reason)
        self.reason = reason
        self.unavailable = unavailable


@dataclass
class RulePlan:
    instance: str
    outbound_port: int
    inbound_port: int
    app_cgroup: Optional[str] = None     # path relative to the cgroup v2 root ("/pod-x")
    sidecar_cgroup: Optional[str] = None  # pod mode: the sidecar's, relative to the root, not redirected
    sidecar_uid: int = 0
    interface: Optional[str] = None
    exclude_outbound: list = field(default_factory=list)
    exclude_inbound: list = field(default_factory=list)


def chain_names(instance: str):
    """(outbound chain, inbound chain): per instance, within iptables' 28 characters."""
    tag = hashlib.sha256(instance.encode()).hexdigest()[:10].upper()
    return "SC-OUT-" + tag, "SC-IN-" + tag


def _app_cgroup_path(cgroup: str) -> str:
    """interception.cgroup as xt_cgroup's --path (from the hierarchy's root), refused when
    it would also match the sidecar (the root cgroup, or one holding the sidecar's)."""
    from sidecar.bpf.preflight import cgroup2_mount, own_cgroup
    mount = cgroup2_mount()
    if mount is None:
        raise IptablesError("no cgroup v2 hierarchy mounted for interception.cgroup")
    app = os.path.normpath(cgroup)
    if not os.path.isdir(app):
        raise IptablesError("interception.cgroup %s does not exist" % app, unavailable=False)
    rel = os.path.relpath(app, mount)
    if rel.startswith(".."):
        raise IptablesError("interception.cgroup %s is not under the cgroup v2 mount %s"
                            % (app, mount), unavailable=False)
    mine = own_cgroup(mount) or mount
    if rel == "." or mine == app or mine.startswith(app.rstrip("/") + "/"):
        raise IptablesError("interception.cgroup %s holds the sidecar's own cgroup %s: its own "
                            "connections would be redirected" % (app, mine), unavailable=False)
    return "/" + rel


def _pod_cgroup_paths():
    """`interception.cgroup: pod`: (the pod's cgroup, the sidecar's), as --path values."""
    from sidecar.bpf.pod_cgroup import pod_of
    from sidecar.bpf.preflight import cgroup2_mount, own_cgroup
    mount = cgroup2_mount()
    if mount is None:
        raise IptablesError("no cgroup v2 hierarchy mounted for interception.cgroup")
    mine = own_cgroup(mount) or mount
    pod = pod_of(mine, mount)
    if pod is None:
        raise IptablesError("interception.cgroup: pod: the parent of the sidecar's cgroup %s is the "
                            "root cgroup (%s): refusing to intercept every process of the machine"
                            % (mine, mount), unavailable=False)
    return "/" + os.path.relpath(pod, mount), "/" + os.path.relpath(mine, mount)


def rule_plan(cfg, instance: str) -> RulePlan:
    from sidecar.bpf.pod_cgroup import is_pod
    from sidecar.interception.ports import excluded_inbound_ports, excluded_outbound_ports
    ic = cfg.interception
    sidecar_cg = None
    if is_pod(ic.cgroup):
        app, sidecar_cg = _pod_cgroup_paths()
    else:
        app = _app_cgroup_path(ic.cgroup) if ic.cgroup else None
    return RulePlan(instance=instance, outbound_port=cfg.outbound.listen[1],
                    inbound_port=cfg.inbound.listen[1], app_cgroup=app, sidecar_cgroup=sidecar_cg,
                    sidecar_uid=os.getuid(),
                    interface=ic.interface, exclude_outbound=excluded_outbound_ports(cfg),
                    exclude_inbound=excluded_inbound_ports(cfg))


# -- the rules, as iptables-restore lines (pure: unit-tested) ----------------------------------

def owner_comment(instance: str, pid: int) -> str:
    return "sidecar instance=%s pid=%d start=%d pidns=%d" % (
        instance, pid, proc_start_time(pid) or 0, ns_inode("pid", pid))


def chain_rules(plan: RulePlan, version: int) -> list:
    out_chain, in_chain = chain_names(plan.instance)
    rules = []
    if plan.sidecar_cgroup:
        rules.append("-A %s -m cgroup --path %s -j RETURN" % (out_chain, shlex.quote(plan.sidecar_cgroup)))
    rules.append("-A %s -d %s -j RETURN" % (out_chain, LOOPBACK[version]))
    rules += ["-A %s -p tcp --dport %d -j RETURN" % (out_chain, p) for p in plan.exclude_outbound]
    rules.append("-A %s -p tcp -j REDIRECT --to-ports %d" % (out_chain, plan.outbound_port))
    rules += ["-A %s -p tcp --dport %d -j RETURN" % (in_chain, p)
              for p in sorted(set(plan.exclude_inbound) | {plan.inbound_port})]
    rules.append("-A %s -p tcp -j REDIRECT --to-ports %d" % (in_chain, plan.inbound_port))
    return rules


def jump_rules(plan: RulePlan, comment: str) -> list:
    out_chain, in_chain = chain_names(plan.instance)
    app = ("-m cgroup --path %s" % shlex.quote(plan.app_cgroup) if plan.app_cgroup
           else "-m owner ! --uid-owner %d" % plan.sidecar_uid)
    iface = "-i %s" % plan.interface if plan.interface else "! -i lo"
    tag = '-m comment --comment "%s"' % comment
    return ["-A OUTPUT -p tcp %s %s -j %s" % (app, tag, out_chain),
            "-A PREROUTING %s -p tcp %s -j %s" % (iface, tag, in_chain)]


def restore_text(lines: list, declare: tuple = ()) -> str:
    """An iptables-restore --noflush transaction on the nat table. A declared chain is
    created, or emptied if it exists."""
    return "*nat\n" + "".join(":%s - [0:0]\n" % c for c in declare) + \
        "".join(l + "\n" for l in lines) + "COMMIT\n"


def parse_jumps(save_text: str) -> list:
    """Jump rules of sidecar instances in `iptables-save -t nat` output:
    [{"instance", "pid", "start_time", "pidns", "rule"}] (rule: the -A line)."""
    out = []
    for line in save_text.splitlines():
        if not line.startswith(("-A OUTPUT ", "-A PREROUTING ")):
            continue
        m = _COMMENT.search(line)
        if m:
            out.append({"instance": m.group(1), "pid": int(m.group(2)),
                        "start_time": int(m.group(3)), "pidns": int(m.group(4)), "rule": line})
    return out


# -- running the tools -------------------------------------------------------------------------

def _run(cmd, input_text=None) -> str:
    try:
        r = subprocess.run(cmd, input=input_text, capture_output=True, text=True, timeout=TIMEOUT)
    except FileNotFoundError:
        raise IptablesError("%s is not installed" % cmd[0])
    except subprocess.TimeoutExpired:
        raise IptablesError("%s did not answer in %gs" % (cmd[0], TIMEOUT))
    if r.returncode != 0:
        err = (r.stderr or r.stdout).strip().splitlines()
        raise IptablesError("%s: %s" % (cmd[0], err[-1] if err else "exit %d" % r.returncode))
    return r.stdout


def available_versions() -> list:
    """The IP versions whose tools are installed (IPv6 is optional)."""
    return [v for v in (4, 6) if shutil.which(TOOLS[v][2])]


def save(version: int) -> str:
    return _run([TOOLS[version][1], "-t", "nat"])


def restore(version: int, text: str):
    _run([TOOLS[version][2], "--noflush", "-w", "5"], text)


def removal_lines(save_text: str, instance: str) -> list:
    """The iptables-restore lines that remove `instance`'s rules and chains, if present."""
    out_chain, in_chain = chain_names(instance)
    lines = ["-D" + j["rule"][2:] for j in parse_jumps(save_text) if j["instance"] == instance]
    for chain in (out_chain, in_chain):
        if re.search(r"^:%s " % re.escape(chain), save_text, re.M):
            lines += ["-F %s" % chain, "-X %s" % chain]
    return lines


def owner_of(jump) -> dict:
    return {"pid": jump["pid"], "start_time": jump["start_time"], "pidns": jump["pidns"]}


# -- the instance's rules ------------------------------------------------------------------------

class IptablesRules:
    """The REDIRECT rules of one instance in this network namespace."""

    def __init__(self, plan: RulePlan, owner_pid: int = None):
        self.plan = plan
        self.owner_pid = owner_pid or os.getpid()
        self.versions = []
        self.replaced = None

    def install(self):
        """Replaces rules of this instance left by a dead owner and adds ours; raises
        IptablesError (unavailable=False when a live owner holds them)."""
        versions = available_versions()
        if 4 not in versions:
            raise IptablesError("iptables-restore is not installed")
        comment = owner_comment(self.plan.instance, self.owner_pid)
        saved = {}
        for version in versions:
            try:
                saved[version] = save(version)
            except IptablesError as e:
                if version == 4:
                    raise
                log.warning("IPv6 not intercepted: %s", e.reason)
                continue
            for jump in parse_jumps(saved[version]):
                if jump["instance"] != self.plan.instance or jump["pid"] == self.owner_pid:
                    continue
                alive, why = owner_liveness(owner_of(jump))
                if alive is not False:
                    raise IptablesError("instance %s is in use: %s" % (self.plan.instance, why),
                                        unavailable=False)
                self.replaced = why
        for version, text in saved.items():
            stale = removal_lines(text, self.plan.instance)
            if stale:
                restore(version, restore_text(stale))
            chains = chain_names(self.plan.instance)
            try:
                restore(version, restore_text(chain_rules(self.plan, version) + jump_rules(self.plan, comment),
                                              declare=chains))
            except IptablesError as e:
                if version == 4:
                    self.remove()
                    raise
                log.warning("IPv6 not intercepted: %s", e.reason)
                continue
            self.versions.append(version)
        if self.replaced:
            log.warning("replaced stale iptables rules of instance %s (%s)", self.plan.instance, self.replaced)

    def update(self, plan: RulePlan):
        """New exclusions: each chain's contents replaced in one transaction; the jump
        rules stay."""
        self.plan = plan
        for version in self.versions:
            restore(version, restore_text(chain_rules(plan, version), declare=chain_names(plan.instance)))

    def remove(self):
        """Removes this instance's rules and chains (whoever added them)."""
        remove_rules(self.plan.instance)
        self.versions = []

    def counters(self) -> dict:
        """Connections redirected so far, by direction ({"outbound": n, "inbound": n}):
        the packet counts of the REDIRECT rules (nat sees the first packet only)."""
        out_chain, in_chain = chain_names(self.plan.instance)
        totals = {"outbound": 0, "inbound": 0}
        for version in self.versions:
            text = _run([TOOLS[version][1], "-t", "nat", "-c"])
            for line in text.splitlines():
                m = re.match(r"^\[(\d+):\d+\] -A (\S+) .*-j REDIRECT", line)
                if m and m.group(2) in (out_chain, in_chain):
                    totals["outbound" if m.group(2) == out_chain else "inbound"] += int(m.group(1))
        return totals


def remove_rules(instance: str) -> int:
    """Removes `instance`'s rules from this network namespace; how many lines that took."""
    n = 0
    for version in available_versions():
        try:
            lines = removal_lines(save(version), instance)
        except IptablesError:
            continue
        if lines:
            restore(version, restore_text(lines))
            n += len(lines)
    return n


def instances_here() -> dict:
    """{instance: {"owner", "alive", "why", "versions", "rules"}} of the sidecar rules in this
    network namespace (for `sidecar bpf status` and `cleanup --stale`)."""
    out = {}
    for version in available_versions():
        try:
            text = save(version)
        except IptablesError:
            continue
        for jump in parse_jumps(text):
            entry = out.setdefault(jump["instance"], {"owner": owner_of(jump), "versions": [], "rules": []})
            if version not in entry["versions"]:
                entry["versions"].append(version)
            entry["rules"].append(jump["rule"])
    for entry in out.values():
        entry["alive"], entry["why"] = owner_liveness(entry["owner"])
    return out
