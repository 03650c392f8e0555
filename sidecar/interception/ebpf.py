"""ebpf mode, the manager's side: runs the loader child (or adopts the instance an init
container handed over), then reads and updates what it pinned.

The manager never imports bcc. Before any worker starts it adopts the instance that
`sidecar bpf load` (the loader as an init container) handed over, when that matches this
config (sidecar.bpf.handover): no loader runs at all. Otherwise it runs
`python -m sidecar.bpf.loader --plan JSON` (the plan from
sidecar.bpf.programs.plan_from_config), which compiles, attaches, pins under
/sys/fs/bpf/sidecar/<instance>/ and exits with a code (sidecar.bpf): 0 attached;
EXIT_CONFIG refused (the manager refuses to start); EXIT_UNAVAILABLE BPF impossible here
(interception.fail decides). From then on the manager only touches pinned objects through
the bpf(2) wrapper: exclusion maps on reload, counters for /stats and /metrics, and on stop
the whole instance (sidecar.bpf.cleanup).
"""
from __future__ import annotations

import asyncio
import json
import logging
import os
import sys
import time

from sidecar.bpf import EXIT_CONFIG, EXIT_OK, EXIT_UNAVAILABLE, config_maps
from sidecar.bpf.cleanup import InstanceInUse, cleanup_instance
from sidecar.bpf.handover import adopt_instance
from sidecar.bpf.pod_cgroup import read_sidecar_cgroup
from sidecar.bpf.preflight import cgroup2_mount, own_cgroup
from sidecar.bpf.programs import plan_from_config, wanted_families
from sidecar.bpf.state import (
    default_instance, instance_dir, kernel_tables, links_dir, maps_dir, read_counters,
    read_hop_counters, read_links, read_owner, read_port_set)
from sidecar.interception import Interception, InterceptionHook

log = logging.getLogger("sidecar.interception.ebpf")

LOADER_TIMEOUT = 60.0


class EbpfInterception(Interception):
    mode = "ebpf"
    what = "ebpf interception"      # what the log lines call what this loads

    def __init__(self, cfg):
        super().__init__(cfg)
        self.instance = default_instance(cfg)
        self.path = instance_dir(self.instance)
        self.hook = InterceptionHook(self)
        self.loader = None            # the loader's report (timings, peak RSS, wall time),
                                      # or the adoption's ("adopted": True)
        self.expected_links = []

    def register(self, manager):
        """Also the collectors of the kernel's traffic and drop counters, when the plan
        loads them (ebpf mode with an interface to count on: programs.FAMILIES)."""
        super().register(manager)
        if self.mode == "ebpf" and self.cfg.interception.interface is not None:
            from sidecar.metrics.kernel_traffic import KernelDropsCollector, KernelTrafficCollector
            manager.kernel_collectors += [KernelTrafficCollector(maps_dir(self.path)),
                                          KernelDropsCollector(maps_dir(self.path))]

    # -- start and stop ---------------------------------------------------------------------

    async def prepare(self):
        """Adopts a handed-over instance matching this config (sidecar.bpf.handover); the
        sidecar's cgroup is written before any worker can connect anywhere."""
        plan = plan_from_config(self.cfg, self.instance)
        try:
            report, note = adopt_instance(self.path, plan, os.getpid())
        except (OSError, ValueError) as e:
            report, note = None, "could not adopt instance %s: %s" % (self.instance, e)
        if note:
            log.warning("%s", note)
        if report is None:
            return
        self.loader = report
        self.expected_links = report["links"]
        self.state = "active"
        log.info("ebpf interception active (instance %s, %d programs): adopted the instance %s "
                 "by pid %s %.1fs ago (plan %s) in %.3fs; no loader run", self.instance,
                 len(self.expected_links), report["was"], report["from_pid"],
                 time.time() - (report["loaded_at"] or time.time()), (report["fingerprint"] or "")[:12],
                 report["seconds"])

    async def start(self):
        """Runs the loader; None to go on, or the exit code to refuse the start with."""
        if self.state == "active":
            return None               # adopted in prepare()
        self.state = "starting"
        plan = plan_from_config(self.cfg, self.instance)
        started = time.monotonic()
        try:
            proc = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "sidecar.bpf.loader", "--plan", plan.to_json(),
                "--owner-pid", str(os.getpid()),
                stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
        except OSError as e:
            return self._unavailable("cannot run the loader: %s" % e)
        try:
            out, err = await asyncio.wait_for(proc.communicate(), LOADER_TIMEOUT)
        except asyncio.TimeoutError:
            proc.kill()
            await proc.wait()
            return self._unavailable("the loader did not finish in %.0fs" % LOADER_TIMEOUT)
        wall = time.monotonic() - started
        for line in err.decode(errors="replace").splitlines():
            if line.strip():
                log.debug("loader: %s", line)
        report = _last_json(out)
        code = proc.returncode
        if code == EXIT_OK and report.get("ok"):
            report["wall_seconds"] = round(wall, 3)
            self.loader = report
            self.expected_links = [link["function"] for link in report["links"]]
            self.state = "active"
            t = report["timings"]
            if report.get("replaced"):
                log.warning("replaced stale kernel state of instance %s (%s)", self.instance,
                            report["replaced"]["reason"])
            log.info("%s active (instance %s, %d programs): loader %.2fs "
                     "(compile %.2fs, load %.3fs, attach %.3fs), peak RSS %.0f MB",
                     self.what, self.instance, len(self.expected_links), wall, sum(t["compile"].values()),
                     t["load"], t["attach"], report["peak_rss_kb"] / 1024)
            return None
        reason = report.get("reason") or _last_line(err) or "loader exited with %s" % code
        if code == EXIT_UNAVAILABLE:
            return self._unavailable(reason)
        self.state = "failed"
        self.reason = reason
        log.error("ebpf interception refused: %s", reason)
        return EXIT_CONFIG

    def stop(self):
        """Detaches and unpins everything of this instance (after the workers are gone)."""
        if self.state != "active":
            return
        try:
            removed = cleanup_instance(self.instance, owner_pid=os.getpid())
        except (OSError, InstanceInUse) as e:
            log.error("could not remove instance %s: %s", self.instance, e)
            return
        self.state = "stopped"
        log.info("%s removed (instance %s: %d links, %d maps)", self.what, self.instance,
                 len(removed.get("links", ())), len(removed.get("maps", ())))

    # -- reload ------------------------------------------------------------------------------------

    def check_config(self, cfg):
        config_maps.check(plan_from_config(cfg, self.instance))

    def apply_config(self, cfg):
        self.cfg = cfg
        if self.state == "active":
            changes = config_maps.sync(self.path, plan_from_config(cfg, self.instance))
            if any(added or removed for added, removed in changes.values()):
                log.info("interception exclusions updated: %s", ", ".join(
                    "%s +%d -%d" % (name, a, r) for name, (a, r) in changes.items()))

    # -- status surfaces ---------------------------------------------------------------------------

    def readiness(self):
        if self.state == "active":
            missing = [f for f in self.expected_links
                       if not os.path.exists(os.path.join(links_dir(self.path), f))]
            if missing:
                return False, "ebpf: not attached any more: %s" % ", ".join(missing)
            return True, "ebpf interception active (instance %s, %d programs)" % (
                self.instance, len(self.expected_links))
        return super().readiness()

    def snapshot(self) -> dict:
        out = super().snapshot()
        out.update({"instance": self.instance, "path": self.path,
                    "families": [f.name for f in wanted_families(plan_from_config(self.cfg, self.instance))]})
        if self.state != "active":
            return out
        if self.loader.get("adopted"):
            out["adopted"] = {k: self.loader[k] for k in (
                "was", "from_pid", "loaded_at", "fingerprint", "seconds", "sidecar_cgroup_excluded")}
        else:
            out["loader"] = {"timings": self.loader["timings"], "wall_seconds": self.loader["wall_seconds"],
                             "peak_rss_kb": self.loader["peak_rss_kb"]}
        try:
            out["links"] = read_links(self.path, read_owner(self.path))
            out["counters"] = read_counters(self.path)
            if os.path.exists(os.path.join(self.path, "maps", "sc_excl_out")):
                out["exclusions"] = {"outbound": read_port_set(self.path, "sc_excl_out"),
                                     "inbound": read_port_set(self.path, "sc_excl_in")}
                out["sidecar_cgroup_excluded"] = self._sidecar_cgroup_excluded()
            out.update(kernel_tables(self.path))
            hops = read_hop_counters(self.path)
            if hops:
                out["local_hops"] = hops
        except OSError as e:
            out["error"] = str(e)
        return out

    def programs_path(self):
        """The instance directory while its programs are loaded, else None."""
        return self.path if self.state == "active" else None

    def _sidecar_cgroup_excluded(self):
        """The cgroup whose connects the programs leave alone: {"id", "level", "cgroup"}."""
        entry = read_sidecar_cgroup(self.path)
        if entry:
            mine = own_cgroup(cgroup2_mount() or "/")
            entry["cgroup"] = mine if mine and os.stat(mine).st_ino == entry["id"] else None
        return entry

    def redirects(self) -> dict:
        if self.state != "active":
            return {}
        counters = read_counters(self.path)
        return {"outbound": counters.get("outbound_redirected", 0),
                "inbound": counters.get("inbound_steered", 0)}


def _last_json(out: bytes) -> dict:
    for line in reversed(out.decode(errors="replace").splitlines()):
        try:
            value = json.loads(line)
        except ValueError:
            continue
        if isinstance(value, dict):
            return value
    return {}


def _last_line(err: bytes) -> str:
    lines = [l for l in err.decode(errors="replace").splitlines() if l.strip()]
    return lines[-1].strip() if lines else ""
