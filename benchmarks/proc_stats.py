"""CPU time and resident memory of a process tree, read from /proc.

A proxy is measured as a whole: its main pid and every descendant (nginx master and
workers, the sidecar manager and its worker children, HAProxy's single process). The
tree is found by scanning /proc/*/stat for parent pids; CPU is the utime + stime of
each process in clock ticks, and RSS is VmRSS from /proc/<pid>/status.

Processes are keyed by (pid, start time) so a pid reused between two samples is not
mistaken for the same process. CPU of a process that exits between the two samples is
lost; the proxies measured here keep their processes for the whole run.

Overhead: one pass over /proc per sample, taken outside the measured load window.
"""

import os
from dataclasses import dataclass

__all__ = [
    "CLOCK_TICKS_PER_SECOND",
    "CpuSample",
    "ProcStat",
    "RssSample",
    "cpu_delta",
    "descendants",
    "read_pss_kb",
    "read_stat",
    "sample_cpu",
    "sample_machine_busy",
    "sample_machine_steal",
    "sample_rss",
]

CLOCK_TICKS_PER_SECOND = os.sysconf("SC_CLK_TCK")


@dataclass(frozen=True)
class ProcStat:
    """The fields of /proc/<pid>/stat this harness uses."""

    pid: int
    ppid: int
    utime: int  # clock ticks
    stime: int  # clock ticks
    starttime: int  # clock ticks after boot; with pid, identifies the process


def parse_stat(text):
    """Parses one /proc/<pid>/stat line. The command name is in parentheses and may
    hold spaces or parentheses itself, so fields are counted from the last ')'."""
    pid = int(text[: text.index(" ")])
    rest = text[text.rindex(")") + 2 :].split()
    # rest[0] is field 3 (state); field N is rest[N - 3].
    return ProcStat(
        pid=pid,
        ppid=int(rest[1]),
        utime=int(rest[11]),
        stime=int(rest[12]),
        starttime=int(rest[19]),
    )


def read_stat(pid):
    """The ProcStat of pid, or None when it has gone."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return parse_stat(f.read())
    except (FileNotFoundError, ProcessLookupError, ValueError, IndexError):
        return None


def _all_stats():
    stats = {}
    for name in os.listdir("/proc"):
        if name.isdigit():
            st = read_stat(int(name))
            if st is not None:
                stats[st.pid] = st
    return stats


def _tree(root_pid, stats):
    children = {}
    for st in stats.values():
        children.setdefault(st.ppid, []).append(st.pid)
    found, todo = [], [root_pid]
    while todo:
        pid = todo.pop()
        if pid in stats:
            found.append(stats[pid])
            todo.extend(children.get(pid, ()))
    return found


def descendants(root_pid):
    """ProcStats of root_pid and all its descendants that are alive now (root first)."""
    return sorted(_tree(root_pid, _all_stats()), key=lambda st: st.pid != root_pid)


@dataclass(frozen=True)
class CpuSample:
    """CPU ticks per process of one tree at one moment."""

    ticks: dict  # (pid, starttime) -> (utime, stime)


def sample_cpu(root_pids):
    """Samples the CPU ticks of every process under each of root_pids."""
    stats = _all_stats()
    ticks = {}
    for root in root_pids:
        for st in _tree(root, stats):
            ticks[(st.pid, st.starttime)] = (st.utime, st.stime)
    return CpuSample(ticks)


def cpu_delta(before, after):
    """(user_seconds, system_seconds) spent between two samples by processes alive at
    the second; a process born in between counts from zero."""
    user = system = 0
    for key, (utime, stime) in after.ticks.items():
        u0, s0 = before.ticks.get(key, (0, 0))
        user += utime - u0
        system += stime - s0
    return user / CLOCK_TICKS_PER_SECOND, system / CLOCK_TICKS_PER_SECOND


def read_rss_kb(pid):
    """VmRSS of pid in KiB, or None when it has gone (or is a zombie)."""
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
    except (FileNotFoundError, ProcessLookupError):
        return None
    return None


def read_pss_kb(pid):
    """(Pss, Private_Clean + Private_Dirty) of pid in KiB from smaps_rollup, or None when
    it has gone. RSS counts the interpreter's and libraries' shared pages once per process;
    PSS splits them among the processes that map them, so the PSS of a process tree sums
    to what the tree really holds, and the private part is what it alone holds."""
    fields = {}
    try:
        with open(f"/proc/{pid}/smaps_rollup") as f:
            for line in f:
                parts = line.split()
                if len(parts) == 3 and parts[2] == "kB":
                    fields[parts[0].rstrip(":")] = int(parts[1])
    except (FileNotFoundError, ProcessLookupError):
        return None
    if "Pss" not in fields:
        return None
    return fields["Pss"], fields.get("Private_Clean", 0) + fields.get("Private_Dirty", 0)


@dataclass(frozen=True)
class RssSample:
    """Resident memory of one process tree."""

    total_kb: int
    worker_max_kb: int  # the largest child; the root itself when it has no children
    processes: int


def sample_rss(root_pid):
    """RSS of root_pid's tree. Workers are the root's descendants (nginx workers,
    sidecar workers); a single-process proxy (HAProxy here) is its own worker."""
    tree = descendants(root_pid)
    sizes = {st.pid: read_rss_kb(st.pid) for st in tree}
    sizes = {pid: kb for pid, kb in sizes.items() if kb is not None}
    workers = [kb for pid, kb in sizes.items() if pid != root_pid]
    if not workers:
        workers = list(sizes.values())
    return RssSample(
        total_kb=sum(sizes.values()),
        worker_max_kb=max(workers, default=0),
        processes=len(sizes),
    )


def sample_machine_steal():
    """Seconds of all CPUs since boot taken by the hypervisor for other guests (the
    "steal" column of /proc/stat): a measure of how noisy a shared VM was during a run."""
    with open("/proc/stat") as f:
        fields = [int(v) for v in f.readline().split()[1:]]
    return fields[7] / CLOCK_TICKS_PER_SECOND


def sample_machine_busy():
    """Busy seconds of all CPUs since boot (every /proc/stat "cpu" column but idle and
    iowait). Compared with a tree's CPU it shows work done outside the tree, such as
    softirq processing in ksoftirqd, and the load generator's own share."""
    with open("/proc/stat") as f:
        fields = [int(v) for v in f.readline().split()[1:]]
    # user nice system idle iowait irq softirq steal [guest guest_nice, already in user/nice]
    busy = sum(fields[:8]) - fields[3] - fields[4]
    return busy / CLOCK_TICKS_PER_SECOND
