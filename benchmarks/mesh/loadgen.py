"""The open-loop load generator (loadgen.c): compiled with gcc at harness run time, run
inside the client pod, its one-line JSON report parsed here.

`build(dir)` compiles once per harness run into a private directory; `http_command` and
`tcp_send_command` give the command lines; `parse_report` reads the JSON and raises
LoadgenError on anything else. The C file's header says what it measures and how.
"""
import json
import os
import signal
import subprocess
import time
from pathlib import Path

__all__ = ["LoadgenError", "build", "http_command", "parse_report", "run", "tcp_send_command"]

SOURCE = Path(__file__).resolve().parent / "loadgen.c"
CFLAGS = ["-O2", "-Wall", "-Wextra", "-Werror"]


class LoadgenError(Exception):
    """loadgen did not build, did not run, or printed something other than its report."""


def build(directory):
    """Compiles loadgen.c into directory/loadgen; returns the binary's path."""
    binary = Path(directory) / "loadgen"
    cmd = ["gcc", *CFLAGS, "-o", str(binary), str(SOURCE)]
    try:
        r = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    except (OSError, subprocess.TimeoutExpired) as e:
        raise LoadgenError(f"cannot compile {SOURCE.name}: {e}") from e
    if r.returncode != 0:
        raise LoadgenError(f"gcc failed on {SOURCE.name}:\n{r.stderr}")
    os.chmod(binary, 0o755)   # the app user runs it
    return binary


def http_command(binary, host, port, *, path, rate, connections, duration_s, headers=(),
                 drain_s=2.0, linger_s=0.0):
    cmd = [str(binary), "http", "--host", host, "--port", str(port), "--path", path,
           "--rate", f"{rate:g}", "--connections", str(connections),
           "--duration", f"{duration_s:g}", "--drain", f"{drain_s:g}"]
    for header in headers:
        cmd += ["--header", header]
    if linger_s:
        cmd += ["--linger", f"{linger_s:g}"]
    return cmd


def tcp_send_command(binary, host, port, *, connections, duration_s):
    return [str(binary), "tcp-send", "--host", host, "--port", str(port),
            "--connections", str(connections), "--duration", f"{duration_s:g}"]


def parse_report(text):
    """The JSON object loadgen printed (its last non-empty stdout line)."""
    lines = [line for line in text.splitlines() if line.strip()]
    if not lines:
        raise LoadgenError("loadgen printed nothing")
    try:
        report = json.loads(lines[-1])
    except ValueError as e:
        raise LoadgenError(f"loadgen printed no JSON report: {lines[-1][:300]!r}") from e
    if not isinstance(report, dict) or "mode" not in report:
        raise LoadgenError(f"not a loadgen report: {lines[-1][:300]!r}")
    return report


def run(cmd, timeout_s, near_end=None, near_end_after_s=None):
    """Runs a loadgen command line (already prefixed for its pod) to completion; returns
    (report, near_end_value). near_end, when given, is called near_end_after_s seconds
    after the start (while the load runs): where the caller samples memory. loadgen runs
    in its own process group and is killed with it if anything goes wrong here."""
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)
    try:
        sampled = None
        if near_end is not None:
            time.sleep(max(0.0, near_end_after_s or 0.0))
            sampled = near_end()
        out, err = proc.communicate(timeout=timeout_s)
    except subprocess.TimeoutExpired as e:
        raise LoadgenError(f"loadgen did not finish in {timeout_s:.0f} s") from e
    finally:
        if proc.poll() is None:
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            proc.wait()
    # Exit 1 is tcp-send reporting errors in its JSON; anything else is a failure to run.
    if proc.returncode not in (0, 1) or not out.strip():
        raise LoadgenError(f"loadgen exited {proc.returncode}: {(err or out).strip()[:500]}")
    return parse_report(out), sampled
