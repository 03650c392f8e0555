"""How app traffic is steered through the sidecar (`interception.mode`), seen from the manager.

    ebpf      sidecar.interception.ebpf: the loader child attaches bpf/ programs
    iptables  sidecar.interception.iptables: REDIRECT rules (iptables_rules) in the pod's netns
    off       nothing: the app talks to the listeners itself

Every mode offers the manager the same few things: `prepare()` before any worker exists
(ebpf: adopting an instance an init container handed over), `start()` before traffic is
expected (None to go on, or an exit code to refuse the start with), `stop()` removing everything it
put in the kernel, `readiness()` for /readyz, `snapshot()` for /stats, `redirects()` for
sidecar_kernel_redirects_total, and a ConfigHook applying exclusion changes on reload.

Where interception is impossible here (no privileges, no cgroup v2, no iptables, a
verifier refusal, a kernel without the hook), `interception.fail` decides: `open` runs the
proxy without interception (state "fail_open", logged, in /readyz and /stats), `closed`
refuses to start (exit EXIT_UNAVAILABLE, the reason logged).
"""
from __future__ import annotations

import logging

from sidecar.bpf import EXIT_UNAVAILABLE
from sidecar.reload import ConfigHook

log = logging.getLogger("sidecar.interception")


class Interception:
    """The `off` mode, and what every mode shares."""

    mode = "off"

    def __init__(self, cfg):
        self.cfg = cfg
        # off | starting | active | fail_open | failed | stopped
        self.state = "off" if self.mode == "off" else "starting"
        self.reason = None
        self.hook = None

    def register(self, manager):
        """Hands the manager its seams: readiness, metrics collector, config hook."""
        if self.mode == "off":
            return
        from sidecar.metrics.kernel_acceleration import KernelAccelerationCollector
        from sidecar.metrics.kernel_redirects import KernelRedirectsCollector
        manager.kernel_readiness = self.readiness
        manager.kernel_collectors.append(KernelRedirectsCollector(self))
        manager.kernel_collectors.append(KernelAccelerationCollector(self.programs_path))
        if self.hook is not None:
            manager.config_hooks.append(self.hook)

    async def prepare(self):
        """Kernel work that must be done before any worker can open a connection."""

    async def start(self):
        return None

    def stop(self):
        pass

    def readiness(self):
        """(ok, text) for /readyz: what the kernel side does, or why it is not ready."""
        if self.state == "active":
            return True, "%s interception active" % self.mode
        if self.state == "fail_open":
            return True, "not intercepting (interception.fail: open): %s" % self.reason
        if self.state == "starting":
            return False, "installing %s interception" % self.mode
        return False, self.reason or self.state

    def snapshot(self) -> dict:
        return {"mode": self.mode, "state": self.state, "reason": self.reason}

    def redirects(self) -> dict:
        """Connections redirected so far: {"outbound": n, "inbound": n}, or {}."""
        return {}

    def programs_path(self):
        """The directory of this sidecar's loaded BPF programs and maps, or None."""
        return None

    def _unavailable(self, reason: str):
        """Interception impossible here: apply interception.fail."""
        self.reason = reason
        if self.cfg.interception.fail == "open":
            self.state = "fail_open"
            log.warning("%s interception unavailable: %s; interception.fail is open: running "
                        "without interception", self.mode, reason)
            return None
        self.state = "failed"
        log.error("%s interception unavailable: %s; interception.fail is closed: refusing to start",
                  self.mode, reason)
        return EXIT_UNAVAILABLE


class InterceptionHook(ConfigHook):
    """Reload: exclusion changes reach the kernel by map writes (ebpf) or by rewriting the
    instance's chains (iptables); nothing is reloaded or re-attached."""

    name = "interception"

    def __init__(self, interception):
        self.interception = interception

    def check(self, cfg):
        self.interception.check_config(cfg)

    def apply(self, cfg):
        self.interception.apply_config(cfg)


def for_config(cfg) -> Interception:
    """The interception of `cfg.interception.mode` (not started)."""
    mode = cfg.interception.mode
    if mode == "ebpf":
        from sidecar.interception.ebpf import EbpfInterception
        return EbpfInterception(cfg)
    if mode == "iptables":
        from sidecar.interception.iptables import IptablesInterception
        return IptablesInterception(cfg)
    return Interception(cfg)
