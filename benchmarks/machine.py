"""Describes the machine a benchmark ran on: cores, kernel, CPU model, memory, tools.

Figures from one machine only mean something next to the peers measured in the same
run; this description is stored with them so two result files can be told apart.
"""

import os
import platform
import socket
import subprocess

from . import peers, wrk

__all__ = ["describe_machine"]


def _cpu_model():
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def _mem_total_kb():
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemTotal:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return None


def _nproc():
    try:
        out = subprocess.run(["nproc"], capture_output=True, text=True, timeout=5)
        return int(out.stdout.strip())
    except (OSError, ValueError, subprocess.TimeoutExpired):
        return len(os.sched_getaffinity(0))


def loadavg():
    """The 1, 5 and 15 minute load averages, or None where /proc/loadavg cannot be read:
    recorded at a run's start and end to show how busy a shared machine was."""
    try:
        with open("/proc/loadavg") as f:
            return [float(v) for v in f.read().split()[:3]]
    except OSError:
        return None


def describe_machine():
    """A JSON-ready description of this machine and the tools used."""
    mem_kb = _mem_total_kb()
    versions = peers.tool_versions()
    versions["wrk"] = wrk.wrk_version()
    versions["python"] = platform.python_version()
    return {
        "hostname": socket.gethostname(),
        "cores": _nproc(),
        "kernel": os.uname().release,
        "cpu_model": _cpu_model(),
        "memory_total_kb": mem_kb,
        "memory_total_gib": round(mem_kb / 1024 / 1024, 1) if mem_kb else None,
        "os": _os_name(),
        "tools": versions,
    }


def _os_name():
    try:
        return platform.freedesktop_os_release().get("PRETTY_NAME", "unknown")
    except OSError:
        return "unknown"
