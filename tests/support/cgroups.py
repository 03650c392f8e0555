"""Child cgroups for the integration tests, under the cgroup v2 mount (never the root).

    with Cgroup() as app, Cgroup() as sidecar:
        ns.popen(["python3", ...], cgroup=app)     # the process starts inside `app`

`sidecar.netns_topology.Cgroup` does the work (shared with the mesh benchmark): a process
joins a cgroup by writing its own pid to `cgroup.procs` before it execs (its children
inherit it), and enters a pod's network namespace with nsenter afterwards, so it keeps the
host's /sys (DESIGN.md). Leaving the block kills whatever is still in the cgroup and
removes it, also when the test failed.
"""
from sidecar import netns_topology as _topology

CGROUP_ROOT = _topology.CGROUP2_ROOT


class Cgroup(_topology.Cgroup):
    """A cgroup `sc-t-<random>` directly under the cgroup v2 mount."""

    def __init__(self, prefix="sc-t-"):
        super().__init__(prefix)
