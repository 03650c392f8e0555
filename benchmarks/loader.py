"""The cost of ebpf mode's loader and what the sidecar keeps afterwards
(`python -m benchmarks.loader`, also run by `make bench`):

    loader   `python -m sidecar.bpf.loader` run N times in a throwaway pod (a network
             namespace with a veth pair, app and sidecar cgroups) for each of three plans,
             interleaved: ebpf mode on an interface with `splice: false` (5 program
             files), the default (+ splice: 6) and + `accelerate_local` (7); wall time,
             its own timings (bcc import, compile per file, load, attach) and its peak
             RSS; each load is removed again before the next. The summary's loader
             figures are the default plan's.
    resident a whole sidecar in ebpf mode: the manager's and the worker's RSS once it is
             ready, with the loader gone (the manager never imports bcc), and the PSS
             and private memory of all its processes (RSS counts the shared interpreter
             and libraries once per process)

Targets (issue 3): compile + attach under 3 s; steady-state RSS of all sidecar processes
under 40 MB. Results go to benchmarks/results/loader.json and are printed. Needs root.
"""
import argparse
import json
import os
import secrets
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

from benchmarks.proc_stats import descendants, read_pss_kb, read_rss_kb, sample_rss
from sidecar.bpf.cleanup import cleanup_instance
from sidecar.bpf.preflight import cgroup2_mount
from sidecar.bpf.programs import Plan

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results" / "loader.json"


class Pod:
    """A network namespace with a veth pair and two child cgroups; removed on exit."""

    def __init__(self):
        tag = secrets.token_hex(4)
        self.netns = "sc-bench-" + tag
        self.dev = "vscb%s" % tag[:6]
        mount = cgroup2_mount()
        self.app_cg = os.path.join(mount, "sc-bench-app-" + tag)
        self.sidecar_cg = os.path.join(mount, "sc-bench-sc-" + tag)

    def __enter__(self):
        subprocess.run(["ip", "netns", "add", self.netns], check=True)
        ip = ["ip", "-n", self.netns]
        subprocess.run(ip + ["link", "add", self.dev, "type", "veth", "peer", "name", self.dev + "p"], check=True)
        subprocess.run(ip + ["addr", "add", "10.209.0.1/24", "dev", self.dev], check=True)
        for dev in ("lo", self.dev, self.dev + "p"):
            subprocess.run(ip + ["link", "set", dev, "up"], check=True)
        os.mkdir(self.app_cg)
        os.mkdir(self.sidecar_cg)
        return self

    def command(self, cmd):
        """`cmd` in the sidecar's cgroup and the pod's network namespace."""
        return ["sh", "-c", 'echo $$ > "$0/cgroup.procs" && exec "$@"', self.sidecar_cg,
                "nsenter", "--net=/var/run/netns/" + self.netns, "--"] + list(cmd)

    def __exit__(self, *exc):
        for cg in (self.app_cg, self.sidecar_cg):
            for _ in range(100):
                try:
                    os.rmdir(cg)
                    break
                except FileNotFoundError:
                    break
                except OSError:
                    with open(os.path.join(cg, "cgroup.procs")) as f:
                        for pid in f.read().split():
                            os.kill(int(pid), signal.SIGKILL)
                    time.sleep(0.02)
        subprocess.run(["ip", "netns", "del", self.netns], capture_output=True)


# The plans measured: what ebpf mode loads on an interface, by what the config adds.
PLANS = {
    "no_splice": {},                                         # interception.splice: false
    "default": {"splice": True},                             # splice: auto
    "accelerate_local": {"splice": True, "accelerate_local": True},
}


def measure_loader(pod, rounds):
    """{plan name: [one load's figures]}, the plans interleaved round by round."""
    out = {name: [] for name in PLANS}
    for i in range(rounds):
        for name, fields in PLANS.items():
            out[name].append(_load_once(pod, "bench-%s-%s-%d" % (pod.netns[-8:], name[:4], i), fields))
    return out


def _load_once(pod, instance, fields):
    """One loader run of the plan with `fields`, removed again; its figures."""
    plan = Plan(instance=instance, app_cgroup=pod.app_cg, interface=pod.dev,
                outbound=("127.0.0.1", 15001), inbound_port=15006, fail_open=True,
                exclude_inbound=[15000, 15021, 15090], **fields)
    started = time.monotonic()
    proc = subprocess.Popen(pod.command([sys.executable, "-m", "sidecar.bpf.loader", "--plan",
                                         plan.to_json(), "--owner-pid", str(os.getpid())]),
                            cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    stdout, stderr = proc.communicate(120)
    wall = time.monotonic() - started
    try:
        if proc.returncode != 0:
            raise SystemExit("loader failed (%s): %s" % (proc.returncode, stderr.decode()))
        report = json.loads(stdout.decode().strip().splitlines()[-1])
    finally:
        cleanup_instance(plan.instance, owner_pid=os.getpid())
    t = report["timings"]
    return {"wall_seconds": round(wall, 3), "total_seconds": t["total"],
            "import_bcc_seconds": t["import_bcc"], "compile_seconds": t["compile"],
            "compile_total_seconds": round(sum(t["compile"].values()), 3),
            "load_seconds": t["load"], "attach_seconds": t["attach"],
            "peak_rss_kb": report["peak_rss_kb"]}


def _medians(loads) -> dict:
    return {
        "program_files": len(loads[0]["compile_seconds"]),
        "loader_wall_seconds_median": statistics.median(l["wall_seconds"] for l in loads),
        "compile_plus_attach_seconds_median": round(statistics.median(
            l["compile_total_seconds"] + l["load_seconds"] + l["attach_seconds"] for l in loads), 3),
        "loader_peak_rss_mb_median": round(statistics.median(l["peak_rss_kb"] for l in loads) / 1024, 1),
    }


def measure_resident(pod, workdir):
    """RSS of a running ebpf-mode sidecar (manager + 1 worker), a few seconds after ready."""
    cfg = {"workers": 1, "drain_timeout": "1s",
           "interception": {"mode": "ebpf", "cgroup": pod.app_cg, "interface": pod.dev,
                            "instance": "bench-rss-%s" % pod.netns[-8:]},
           "telemetry": {"access_log": {"path": None}}}
    path = Path(workdir) / "sidecar.yaml"
    path.write_text(yaml.safe_dump(cfg))
    log_path = Path(workdir) / "sidecar.log"
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(pod.command([sys.executable, "-m", "sidecar.cli", "run", "-c", str(path)]),
                                cwd=ROOT, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline = time.monotonic() + 60
        while b"running with" not in log_path.read_bytes():
            if proc.poll() is not None or time.monotonic() > deadline:
                raise SystemExit("sidecar did not start:\n" + log_path.read_text())
            time.sleep(0.1)
        time.sleep(2.0)                  # settled: the loader has exited, workers are idle
        rss = sample_rss(proc.pid)
        pss = [m for m in (read_pss_kb(st.pid) for st in descendants(proc.pid)) if m is not None]
        return {"manager_kb": read_rss_kb(proc.pid), "worker_max_kb": rss.worker_max_kb,
                "total_kb": rss.total_kb, "processes": rss.processes,
                "total_pss_kb": sum(m[0] for m in pss), "total_private_kb": sum(m[1] for m in pss),
                "log": [l for l in log_path.read_text().splitlines() if "interception active" in l]}
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        cleanup_instance(cfg["interception"]["instance"], force=True)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--rounds", type=int, default=5)
    args = p.parse_args(argv)
    if os.geteuid() != 0:
        raise SystemExit("benchmarks.loader needs root (network namespaces, cgroups, BPF)")
    with Pod() as pod, tempfile.TemporaryDirectory(prefix="sidecar-bench-loader-") as workdir:
        loads = measure_loader(pod, args.rounds)
        resident = measure_resident(pod, workdir)
    by_plan = {name: _medians(runs) for name, runs in loads.items()}
    summary = dict({"rounds": args.rounds}, **by_plan["default"])
    summary.update({
        "manager_rss_mb": round(resident["manager_kb"] / 1024, 1),
        "worker_rss_mb": round(resident["worker_max_kb"] / 1024, 1),
        "sidecar_total_rss_mb": round(resident["total_kb"] / 1024, 1),
        "sidecar_total_pss_mb": round(resident["total_pss_kb"] / 1024, 1),
        "sidecar_total_private_mb": round(resident["total_private_kb"] / 1024, 1),
    })
    result = {"time": time.time(), "summary": summary, "by_plan": by_plan, "loads": loads,
              "resident": resident}
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(result, indent=2) + "\n")
    for key, value in summary.items():
        print("%-36s %s" % (key, value))
    for name, figures in by_plan.items():
        print("%-18s %d files: loader %.2f s (compile + load + attach %.2f s), peak RSS %.0f MB" % (
            name, figures["program_files"], figures["loader_wall_seconds_median"],
            figures["compile_plus_attach_seconds_median"], figures["loader_peak_rss_mb_median"]))
    print("results: %s" % RESULTS)


if __name__ == "__main__":
    main()
