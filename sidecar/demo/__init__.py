"""`sidecar demo`: a throwaway two-pod mesh, traffic through both sidecars, a live summary,
nothing left behind.

The flow, top to bottom in run_demo():

1. check_host: root, the tools, a cgroup v2 mount (each missing one is one line).
2. DemoMesh.build (mesh.py): pods A and B as network namespaces with child cgroups,
   joined by veth (10.240.0.1 and 10.240.0.2); nginx serving in pod B's app cgroup.
3. start_sidecars: `sidecar run` in each pod's sidecar cgroup with `interception.mode:
   ebpf` (and accelerate_local) on the pod's app cgroup and interface. If eBPF cannot be
   used here, one line says why and both start again in the sidecars' iptables mode.
4. The client app (client_app.py) runs in pod A's app cgroup as nobody and calls
   http://10.240.0.2:8080/, pod B's address: pod A's sidecar intercepts it outbound, pod
   B's inbound. Once a second the live view (view.py) shows the client's rate, latency
   and errors next to what each sidecar reports of itself (/stats, /metrics).
5. After --duration: the summary, then DemoMesh.close removes everything and the demo
   looks for leftovers (namespaces, cgroups, pinned BPF state, processes, files) and
   names any it finds. Also on a failure, Ctrl-C or SIGTERM.

Exit status: 0 when every request succeeded and both sidecars handled all of them; 1 when
not (or the demo could not run); 130 / 143 after Ctrl-C / SIGTERM.
"""
import json
import os
import select
import shutil
import signal
import sys
import tempfile
import time

__all__ = ["run_demo"]

TOOLS = ("ip", "nsenter", "setpriv", "nginx")
CLIENT_REPORT_TIMEOUT_S = 5.0


def say(text=""):
    print(text, flush=True)


def check_host():
    """None when the demo can run here, else why not (one line)."""
    if os.geteuid() != 0:
        return "needs root (network namespaces, cgroups, BPF): run it as root (`sudo make demo`)"
    missing = [t for t in TOOLS if shutil.which(t) is None]
    if missing:
        return "missing %s (`make demo` installs them)" % ", ".join(missing)
    from sidecar.netns_topology import CGROUP2_ROOT
    if not os.path.isfile(os.path.join(CGROUP2_ROOT, "cgroup.procs")):
        return "no cgroup v2 hierarchy mounted (looked at %s)" % CGROUP2_ROOT
    return None


def start_sidecars(mesh, mode, accelerate):
    """Starts both sidecars with `mode` ("ebpf" falls back to "iptables"); returns
    (mode in use, reason eBPF could not be used or None)."""
    if mode == "ebpf":
        say("starting the sidecars with eBPF interception (the loader compiles the programs: a few seconds)")
        reason = mesh.start_sidecars("ebpf", accelerate)
        if reason is None:
            return "ebpf", None
        say("eBPF interception cannot be used here: %s" % reason)
        say("falling back to the sidecars' iptables mode")
        mesh.stop_sidecars()
    else:
        say("starting the sidecars with iptables interception")
    reason2 = mesh.start_sidecars("iptables", accelerate)
    if reason2 is not None:
        raise RuntimeError("iptables interception cannot be used here either: %s" % reason2)
    return "iptables", (reason if mode == "ebpf" else None)


def read_client_report(client):
    """The client's next JSON line, or None once it has exited."""
    ready, _, _ = select.select([client.stdout], [], [], CLIENT_REPORT_TIMEOUT_S)
    if not ready:
        raise RuntimeError("the client app printed nothing for %.0f s" % CLIENT_REPORT_TIMEOUT_S)
    line = client.stdout.readline()
    return json.loads(line) if line else None


def final_figures(mesh, requests):
    """Both sidecars' figures once they have counted the client's last requests (they
    count a request when its response has left, a moment after the client read it)."""
    from sidecar.demo.view import read_sidecar
    deadline = time.monotonic() + 2.0
    while True:
        figures = [read_sidecar(sc) for sc in mesh.sidecars]
        if all(f.requests >= requests for f in figures) or time.monotonic() > deadline:
            return figures
        time.sleep(0.1)


def drive_traffic(mesh, duration, connections):
    """Runs the client app with the live view; returns (final report, sidecar figures)."""
    from sidecar.demo import client_app
    from sidecar.demo.view import LiveView, read_sidecar
    client = mesh.start_client(client_app.__file__, connections, duration)
    final = None
    peaks = {}                       # the most accelerated sockets each sidecar had at once
    with LiveView(duration) as view:
        while True:
            report = read_client_report(client)
            if report is None:
                break
            if report.get("final"):
                final = report
                continue
            figures = [read_sidecar(sc) for sc in mesh.sidecars]
            for f in figures:
                if f.accelerated_sockets is not None:
                    peaks[f.pod] = max(peaks.get(f.pod, 0), f.accelerated_sockets)
            view.update(report, figures)
    code = client.wait(10)
    if final is None:
        raise RuntimeError("the client app exited with %s before its summary: %s" % (
            code, client.stderr.read().strip()[-500:]))
    figures = final_figures(mesh, final["requests"])
    for f in figures:
        f.accelerated_peak = peaks.get(f.pod)
    return final, figures


def _raise_system_exit(signum, _frame):
    raise SystemExit(128 + signum)


def run_demo(duration=10.0, connections=8, mode="ebpf", accelerate=True) -> int:
    from sidecar.demo.mesh import APP_PORT, SERVER_IP, DemoMesh, StartError
    from sidecar.demo.view import summary_lines
    refused = check_host()
    if refused:
        print("demo: %s" % refused, file=sys.stderr)
        return 1
    previous_term = signal.signal(signal.SIGTERM, _raise_system_exit)
    workdir = tempfile.mkdtemp(prefix="sidecar-demo-")
    os.chmod(workdir, 0o755)            # nginx's workers (nobody) read under here
    mesh = DemoMesh(workdir)
    code = 1
    try:
        res = mesh.resources()
        say("demo: pods %s (pod A, %s) and %s (pod B, %s), cgroups %s and %s" % (
            res["netns"][0], mesh.a.ip, res["netns"][1], mesh.b.ip, res["cgroups"][0], res["cgroups"][1]))
        mesh.build()
        say("pod B: nginx on %s:%d; pod A: the client app calls http://%s:%d/" % (
            SERVER_IP, APP_PORT, SERVER_IP, APP_PORT))
        in_use, fallback = start_sidecars(mesh, mode, accelerate)
        say("sidecars ready: %s interception in both pods; %d connections for %.0f s" % (
            in_use, connections, duration))
        final, figures = drive_traffic(mesh, duration, connections)
        for line in summary_lines(final, figures, in_use, fallback):
            say(line)
        through_both = all(f.requests >= final["requests"] > 0 and f.state == "active" for f in figures)
        code = 0 if through_both and final["errors"] == 0 else 1
        if not through_both:
            say("demo: not every request went through both sidecars")
    except KeyboardInterrupt:
        say("\ninterrupted")
        code = 130
    except SystemExit as e:
        say("\nstopped (signal %d)" % (e.code - 128) if isinstance(e.code, int) else "\nstopped")
        code = e.code if isinstance(e.code, int) else 1
    except (StartError, RuntimeError, OSError) as e:
        print("demo: %s" % e, file=sys.stderr)
        code = 1
    finally:
        # Nothing stops the clean-up half way: a second Ctrl-C or SIGTERM waits for it.
        previous_int = signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        try:
            mesh.close()
            left = mesh.leftovers()
        finally:
            signal.signal(signal.SIGINT, previous_int)
            signal.signal(signal.SIGTERM, previous_term)
        res = mesh.resources()
        if left:
            say("demo: left behind: %s" % "; ".join(left))
            code = code or 1
        else:
            say("removed: pods %s, cgroups %s, sidecar instances %s, %d processes, %s; nothing left behind" % (
                " ".join(res["netns"]), " ".join(res["cgroups"]),
                " ".join(os.path.basename(p) for p in res["bpf"]), len(mesh.pids), res["workdir"]))
    return code
