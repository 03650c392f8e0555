"""The data-path programs for iptables mode: local-hop acceleration and splice need BPF even
where the REDIRECT rules do the interception.

When the config asks for them (`interception.accelerate_local`, `interception.splice`;
sidecar.bpf.programs.needs_loader), iptables mode runs the same loader child as ebpf mode,
with a plan whose families are only the data-path ones (the plan's `interception` is
"iptables"), pinned under the same /sys/fs/bpf/sidecar/<instance>/, removed at stop.

They speed traffic up; they never decide whether it is intercepted. So where BPF is not
possible here, the sidecar says why in one line and runs without them (whatever
`interception.fail` says, which is about interception); an unsafe configuration (the
root cgroup, the sidecar inside the app's cgroup) is refused as in ebpf mode.
"""
from __future__ import annotations

import logging

from sidecar.interception.ebpf import EbpfInterception

log = logging.getLogger("sidecar.interception.datapath")


class DataPathPrograms(EbpfInterception):
    """The loader's data-path families for an iptables-mode sidecar (see the module)."""

    mode = "iptables"
    what = "data-path programs (local-hop acceleration, splice)"

    def _unavailable(self, reason: str):
        self.reason = reason
        self.state = "unavailable"
        log.warning("local-hop acceleration and splice unavailable: %s; going on without them "
                    "(traffic is intercepted by the iptables rules all the same)", reason)
        return None

    def redirects(self) -> dict:
        return {}            # the rules count redirects in this mode
