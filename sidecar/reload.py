"""How a new config reaches the running sidecar, as one snapshot or not at all.

    1. The file is read and validated (sidecar.config): a bad file is refused whole, with
       every `path (line N): reason`, before anything is touched.
    2. The change is classified (`plan`): most changes are applied IN PLACE, pushed over
       each running worker's control channel (sidecar.control); the worker compiles it and
       swaps it in for new exchanges (Worker.apply_config) and acks. Connections and
       exchanges in flight finish with the config they began with; nothing is restarted,
       so nothing is refused or reset.
    3. Only what a running worker cannot change needs new worker processes: the listen
       addresses (a new set is started, and the old one drained only once every new
       worker reports ready) and the worker count (workers are added, and only count as
       applied once ready, or the surplus ones are drained).
    4. If any worker refuses the config (or does not answer in time), the workers that
       took it get the running config back: the reload is refused whole.

Other parts of the sidecar that hold config state (the kernel policy maps) register a
`ConfigHook` with the manager: `check(cfg)` may refuse a config before any worker sees it,
`apply(cfg)` runs after the workers took it (raising rolls the workers back).
"""
from dataclasses import dataclass, field, replace


@dataclass
class ReloadPlan:
    replace_workers: bool = False      # listen addresses changed: a whole new set
    add_workers: int = 0
    remove_workers: int = 0
    notes: list = field(default_factory=list)   # changes that only take effect on restart


def plan(old, new) -> ReloadPlan:
    """What applying `new` over the running `old` config takes."""
    p = ReloadPlan()
    if (old.inbound.listen, old.outbound.listen) != (new.inbound.listen, new.outbound.listen):
        p.replace_workers = True
    elif new.workers > old.workers:
        p.add_workers = new.workers - old.workers
    elif new.workers < old.workers:
        p.remove_workers = old.workers - new.workers
    for what, a, b in (("admin.listen", old.admin.listen, new.admin.listen),
                       ("telemetry.metrics.listen", old.telemetry.metrics_listen, new.telemetry.metrics_listen),
                       ("telemetry.health.listen", old.telemetry.health_listen, new.telemetry.health_listen),
                       ("interception", _restart_part(old.interception), _restart_part(new.interception))):
        if a != b:
            p.notes.append("%s changed: takes effect when the sidecar restarts" % what)
    return p


def _restart_part(interception):
    """What of `interception` needs a restart: everything but the exclusions, which the
    interception's ConfigHook applies in place (map writes, or the instance's chains)."""
    return replace(interception, exclude_outbound_ports=[], exclude_inbound_ports=[])


class ConfigHook:
    """A part of the sidecar outside the workers that takes config snapshots."""

    name = "hook"

    def check(self, cfg):
        """Raise ValueError to refuse `cfg` before any worker sees it."""

    def apply(self, cfg):
        """Make `cfg` effective; raise to refuse it (the workers are rolled back)."""
