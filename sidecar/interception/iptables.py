"""iptables mode, the manager's side: installs the instance's REDIRECT rules in its own
network namespace at start, rewrites their exclusions on reload, removes them at stop.
The rules themselves: sidecar.interception.iptables_rules.
"""
from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import replace

from sidecar.bpf import EXIT_CONFIG
from sidecar.bpf.programs import needs_loader
from sidecar.bpf.state import default_instance
from sidecar.interception import Interception, InterceptionHook
from sidecar.interception.iptables_rules import IptablesError, IptablesRules, chain_names, rule_plan
from sidecar.interception.ports import excluded_inbound_ports, excluded_outbound_ports

log = logging.getLogger("sidecar.interception.iptables")


class IptablesInterception(Interception):
    mode = "iptables"

    def __init__(self, cfg):
        super().__init__(cfg)
        self.instance = default_instance(cfg)
        self.rules = None
        self.hook = InterceptionHook(self)
        self.seconds = None
        self.datapath = None          # DataPathPrograms when the config asks for them

    def programs_path(self):
        if self.datapath is not None:
            return self.datapath.programs_path()
        return None

    async def start(self):
        self.state = "starting"
        started = time.monotonic()
        try:
            plan = rule_plan(self.cfg, self.instance)
            rules = IptablesRules(plan)
            await asyncio.get_running_loop().run_in_executor(None, rules.install)
        except IptablesError as e:
            if e.unavailable:
                return self._unavailable(e.reason)
            self.state, self.reason = "failed", e.reason
            log.error("iptables interception refused: %s", e.reason)
            return EXIT_CONFIG
        self.rules = rules
        if needs_loader(self.cfg):
            from sidecar.interception.datapath import DataPathPrograms
            self.datapath = DataPathPrograms(self.cfg)
            refused = await self.datapath.start()
            if refused is not None:
                self.state, self.reason = "failed", self.datapath.reason
                rules.remove()
                return refused
        self.state = "active"
        self.seconds = time.monotonic() - started
        log.info("iptables interception active (instance %s, chains %s, IPv%s, %s): %.0f ms",
                 self.instance, "/".join(chain_names(self.instance)),
                 "+".join(str(v) for v in rules.versions),
                 ("app cgroup %s" % plan.app_cgroup if not plan.sidecar_cgroup else
                  "pod cgroup %s but the sidecar's %s" % (plan.app_cgroup, plan.sidecar_cgroup))
                 if plan.app_cgroup else "every user but uid %d" % plan.sidecar_uid,
                 self.seconds * 1000)
        return None

    def stop(self):
        if self.datapath is not None:
            self.datapath.stop()
        if self.state != "active":
            return
        try:
            self.rules.remove()
        except IptablesError as e:
            log.error("could not remove the iptables rules of instance %s: %s", self.instance, e.reason)
            return
        self.state = "stopped"
        log.info("iptables interception removed (instance %s)", self.instance)

    def check_config(self, cfg):
        """Nothing to refuse: the ports are valid, and what else changes waits for a restart."""

    def apply_config(self, cfg):
        """Only the exclusions change in place (the rest of interception needs a restart)."""
        old = self.cfg
        self.cfg = cfg
        if self.state != "active":
            return
        plan = replace(self.rules.plan, exclude_outbound=excluded_outbound_ports(cfg),
                       exclude_inbound=excluded_inbound_ports(cfg))
        if (plan.exclude_outbound, plan.exclude_inbound) != (self.rules.plan.exclude_outbound,
                                                             self.rules.plan.exclude_inbound):
            try:
                self.rules.update(plan)
            except IptablesError as e:
                self.cfg = old
                raise RuntimeError(e.reason)
            log.info("interception exclusions updated: outbound %s, inbound %s",
                     plan.exclude_outbound, plan.exclude_inbound)

    def snapshot(self) -> dict:
        out = super().snapshot()
        out["instance"] = self.instance
        out["chains"] = list(chain_names(self.instance))
        if self.state == "active":
            plan = self.rules.plan
            out.update({"ip_versions": self.rules.versions, "install_seconds": round(self.seconds, 4),
                        "app": ({"cgroup": plan.app_cgroup} if plan.app_cgroup
                                else {"not_uid": plan.sidecar_uid}),
                        "sidecar_cgroup": plan.sidecar_cgroup,
                        "interface": plan.interface,
                        "exclusions": {"outbound": plan.exclude_outbound, "inbound": plan.exclude_inbound}})
            try:
                out["redirected"] = self.rules.counters()
            except IptablesError as e:
                out["error"] = e.reason
        if self.datapath is not None:
            out["programs"] = self.datapath.snapshot()
        return out

    def redirects(self) -> dict:
        if self.state != "active":
            return {}
        try:
            return self.rules.counters()
        except IptablesError:
            return {}
