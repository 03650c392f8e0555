"""Runs wrk (https://github.com/wg/wrk, Debian's 4.1) and parses its text report.

Always runs with --latency so the report carries the 50/75/90/99th percentiles. Parsing
is pure (parse_wrk_output) so it is tested on captured output without running wrk.

wrk prints times as "%.2f" plus one of us/ms/s/m/h, rates with an optional k/M/G suffix
(powers of 1000), and only prints the "Socket errors" and "Non-2xx or 3xx responses"
lines when they are not zero.
"""

import os
import re
import signal
import subprocess
import time
from dataclasses import dataclass, field

__all__ = ["WrkError", "WrkResult", "parse_time_us", "parse_wrk_output", "run_wrk", "wrk_version"]

WRK = "wrk"

_TIME_UNITS_US = {"us": 1.0, "ms": 1e3, "s": 1e6, "m": 60e6, "h": 3600e6}
_METRIC_UNITS = {"": 1.0, "k": 1e3, "M": 1e6, "G": 1e9}


class WrkError(Exception):
    """wrk failed to run, or its output could not be understood."""


@dataclass
class WrkResult:
    """One wrk run. Times in microseconds."""

    requests: int
    duration_s: float
    requests_per_s: float
    latency_avg_us: float
    latency_max_us: float
    percentiles_us: dict  # {50: .., 75: .., 90: .., 99: ..}
    non_2xx_3xx: int = 0
    socket_errors: dict = field(default_factory=lambda: {"connect": 0, "read": 0, "write": 0, "timeout": 0})

    @property
    def errors(self):
        """Non-2xx/3xx responses plus socket errors of every kind."""
        return self.non_2xx_3xx + sum(self.socket_errors.values())

    def to_dict(self):
        return {
            "requests": self.requests,
            "duration_s": self.duration_s,
            "requests_per_s": self.requests_per_s,
            "latency_avg_us": self.latency_avg_us,
            "latency_max_us": self.latency_max_us,
            "percentiles_us": {str(k): v for k, v in self.percentiles_us.items()},
            "non_2xx_3xx": self.non_2xx_3xx,
            "socket_errors": dict(self.socket_errors),
            "errors": self.errors,
        }


def parse_time_us(text):
    """'139.00us' -> 139.0, '1.20ms' -> 1200.0, '2.00s' -> 2000000.0."""
    m = re.fullmatch(r"([0-9.]+)(us|ms|s|m|h)", text.strip())
    if not m:
        raise WrkError(f"not a wrk time: {text!r}")
    return round(float(m.group(1)) * _TIME_UNITS_US[m.group(2)], 3)


def _parse_metric(text):
    m = re.fullmatch(r"([0-9.]+)([kMG]?)", text.strip())
    if not m:
        raise WrkError(f"not a wrk number: {text!r}")
    return float(m.group(1)) * _METRIC_UNITS[m.group(2)]


_TIME = r"[0-9.]+(?:us|ms|s|m|h)"
_RE_LATENCY = re.compile(rf"^\s*Latency\s+({_TIME})\s+({_TIME})\s+({_TIME})\s", re.M)
_RE_PERCENTILE = re.compile(rf"^\s*(50|75|90|99)%\s+({_TIME})\s*$", re.M)
_RE_TOTAL = re.compile(rf"^\s*(\d+) requests in ({_TIME}),", re.M)
_RE_RPS = re.compile(r"^Requests/sec:\s+([0-9.]+[kMG]?)\s*$", re.M)
_RE_SOCKET = re.compile(
    r"^\s*Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)\s*$", re.M
)
_RE_NON2XX = re.compile(r"^\s*Non-2xx or 3xx responses: (\d+)\s*$", re.M)


def parse_wrk_output(text):
    """Parses wrk's report (run with --latency). Raises WrkError when a required line
    (latency summary, percentiles, totals, Requests/sec) is missing."""
    latency = _RE_LATENCY.search(text)
    total = _RE_TOTAL.search(text)
    rps = _RE_RPS.search(text)
    percentiles = {int(p): parse_time_us(v) for p, v in _RE_PERCENTILE.findall(text)}
    if not (latency and total and rps) or set(percentiles) != {50, 75, 90, 99}:
        raise WrkError("wrk output lacks the summary lines (was --latency given?):\n" + text)
    result = WrkResult(
        requests=int(total.group(1)),
        duration_s=parse_time_us(total.group(2)) / 1e6,
        requests_per_s=_parse_metric(rps.group(1)),
        latency_avg_us=parse_time_us(latency.group(1)),
        latency_max_us=parse_time_us(latency.group(3)),
        percentiles_us=percentiles,
    )
    sock = _RE_SOCKET.search(text)
    if sock:
        result.socket_errors = dict(zip(("connect", "read", "write", "timeout"), map(int, sock.groups())))
    non2xx = _RE_NON2XX.search(text)
    if non2xx:
        result.non_2xx_3xx = int(non2xx.group(1))
    return result


def run_wrk(url, *, threads, connections, duration_s, near_end=None, headers=()):
    """Runs wrk against url and returns (WrkResult, near_end_value).

    headers: extra request fields ("Name: value"). near_end, when given, is called
    about half a second before the load ends (while wrk is still sending) and its
    return value is handed back: that is where the
    caller samples memory under load. wrk runs in its own process group and is killed
    with it if anything goes wrong here, Ctrl-C included.
    """
    cmd = [WRK, f"-t{threads}", f"-c{connections}", f"-d{int(duration_s)}s", "--latency"]
    for header in headers:
        cmd += ["-H", header]
    cmd.append(url)
    proc = subprocess.Popen(
        cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True
    )
    try:
        sampled = None
        if near_end is not None:
            time.sleep(max(0.0, duration_s - 0.5))
            sampled = near_end()
        out, _ = proc.communicate(timeout=duration_s + 30)
    finally:
        if proc.poll() is None:
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            proc.wait()
    if proc.returncode != 0:
        raise WrkError(f"{' '.join(cmd)} exited {proc.returncode}:\n{out}")
    return parse_wrk_output(out), sampled


def wrk_version():
    """First line of `wrk -v` (it prints its version with the usage text)."""
    try:
        out = subprocess.run([WRK, "-v"], capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired) as e:
        return f"unavailable ({e})"
    text = (out.stdout or out.stderr).strip()
    return text.splitlines()[0].split(" Copyright")[0] if text else "unknown"
