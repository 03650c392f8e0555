"""Child cgroups for the integration tests, under the cgroup v2 mount (never the root).

    with Cgroup() as app, Cgroup() as sidecar:
        ns.popen(app.command(["python3", ...]))     # the process starts inside `app`

A process joins a cgroup by writing its own pid to `cgroup.procs` before it execs (its
children inherit it), and enters a pod's network namespace with nsenter afterwards, so it
keeps the host's /sys (DESIGN.md). Leaving the block kills whatever is still in the cgroup
and removes it, also when the test failed.
"""
import contextlib
import os
import secrets
import signal
import time

from sidecar.bpf.preflight import cgroup2_mount

CGROUP_ROOT = cgroup2_mount() or "/sys/fs/cgroup/unified"


class Cgroup:
    """A cgroup `sc-t-<random>` directly under the cgroup v2 mount."""

    def __init__(self, prefix="sc-t-"):
        self.name = prefix + secrets.token_hex(4)
        self.path = os.path.join(CGROUP_ROOT, self.name)
        self.created = False

    def __enter__(self):
        os.mkdir(self.path)
        self.created = True
        return self

    def __exit__(self, *exc):
        self.close()

    @property
    def relative(self):
        """The path as xt_cgroup's --path wants it: from the hierarchy's root."""
        return "/" + self.name

    def pids(self):
        try:
            with open(os.path.join(self.path, "cgroup.procs")) as f:
                return [int(p) for p in f.read().split()]
        except FileNotFoundError:
            return []

    def command(self, cmd):
        """`cmd` started inside this cgroup: a shell joins it, then execs `cmd`."""
        return ["sh", "-c", 'echo $$ > "$0/cgroup.procs" && exec "$@"', self.path] + list(cmd)

    def close(self):
        if not self.created:
            return
        for _ in range(100):
            pids = self.pids()
            if not pids:
                break
            for pid in pids:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
            time.sleep(0.02)
        for _ in range(100):
            try:
                os.rmdir(self.path)
                break
            except FileNotFoundError:
                break
            except OSError:          # EBUSY while the last processes are being reaped
                time.sleep(0.02)
        self.created = False
