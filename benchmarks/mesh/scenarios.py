"""The rows of the mesh benchmark: what runs in the two pods, and how the harness proves
that the row is what its title says before measuring it.

A row is a small `Scenario`: the proxy in both pods (none, the bpf-sidecar, nginx or
HAProxy), whether the harness installs iptables REDIRECT rules (only for nginx and
HAProxy, which have no interception of their own: the bpf-sidecar installs its own, in
the mode its config names, and the harness never adds rules of its own next to them), a
config overlay for the bpf-sidecar (merged into both pods' configs by
proxies.sidecar_config) and a proof.
Rows whose feature is still being built are `optional`: where `sidecar check` refuses
their config, the sidecar does not start with it, or the proof fails (the feature is
accepted by the config but does nothing yet), the row is reported "not available" with
that reason and the run goes on. When the feature lands the same definition lights up
without a change here.

Proofs send a short probe from the client pod's app (loadgen, as the app's uid and in
its cgroup) and check evidence of the row's claim: the REDIRECT rules' packet counters,
the sidecars' own interception (mode and state in /stats, the nat table holding only
their chains or, in eBPF mode, no rule at all, sidecar_kernel_redirects_total rising),
both sidecars' request counts (admin /stats), a 401 without a token, TLS bytes on the
pod link, accelerated sockets. Their evidence is kept with the results.
"""
import json
import subprocess
import threading
import time
from dataclasses import dataclass, field

from prometheus_client.parser import text_string_to_metric_families

from .. import peers
from . import credentials, loadgen
from .topology import APP_PORT, SERVER_IP, TCP_PORT, http_get
from .wire import PortCapture, looks_like_http, looks_like_tls

__all__ = ["SCENARIOS", "Scenario", "Unavailable", "sidecar_check"]

PROBE_REQUESTS = 20


class Unavailable(Exception):
    """The row cannot be measured as defined (the reason is its message)."""


@dataclass(frozen=True)
class Scenario:
    name: str
    title: str
    proxy: str = None              # None (direct) | "sidecar" | "nginx" | "haproxy"
    harness_iptables: bool = False # the harness installs REDIRECT rules in both pods
                                   # (nginx, HAProxy); never for the bpf-sidecar
    overlay: object = None         # (pod, context) -> dict merged into the sidecar config
    proof: object = None           # (row, context) -> evidence dict; raises Unavailable
    optional: bool = False         # waits for a feature: "not available" instead of an error
    waits_for: str = ""            # the feature, said with "not available"
    loads: tuple = field(default=None)   # load kinds it runs (None: all)
    note: str = ""

    def __post_init__(self):
        if self.proxy == "sidecar" and self.harness_iptables:
            raise ValueError(f"{self.name}: the bpf-sidecar installs its own interception; "
                             "harness rules would redirect its connections twice")

    def runs(self, load):
        return self.loads is None or load.kind in self.loads


# -- probes and evidence ----------------------------------------------------------------------

def probe(row, context, headers=None, linger_s=0.0):
    """PROBE_REQUESTS GETs of /0 from the client pod's app over one connection; the report."""
    cmd = loadgen.http_command(
        context.binary, SERVER_IP, APP_PORT, path="/0", rate=200, connections=1,
        duration_s=PROBE_REQUESTS / 200, headers=context.headers if headers is None else headers,
        linger_s=linger_s)
    report, _ = loadgen.run(row.mesh.client.app_command(cmd), 30)
    return report


def _codes(statuses):
    """{"2xx": 20, "4xx": 0, ...} -> "20 x 2xx"."""
    return ", ".join(f"{n} x {cls}" for cls, n in statuses.items() if n) or "no answer"


def _all_ok(report, what="the probe"):
    if report["statuses"]["2xx"] != PROBE_REQUESTS:
        errors = {k: v for k, v in report["errors"].items() if v}
        raise Unavailable(f"{what} of {PROBE_REQUESTS} requests got {_codes(report['statuses'])}"
                          + (f", errors {errors}" if errors else ""))


def _admin_stats(pod):
    status, body = pod.call(http_get, "127.0.0.1", 15000, "/stats")
    if status != 200:
        raise Unavailable(f"{pod.role} sidecar /stats answered {status}")
    return json.loads(body)


def sidecar_requests(pod):
    """Requests the pod's bpf-sidecar has counted (admin /stats totals)."""
    return _admin_stats(pod)["totals"]["requests"]


def sidecar_metric(pod, name, **labels):
    """Sum of the samples called `name` (with those label values) on the pod's bpf-sidecar
    /metrics; None when it exports none."""
    status, body = pod.call(http_get, "127.0.0.1", 15090, "/metrics")
    if status != 200:
        raise Unavailable(f"{pod.role} sidecar /metrics answered {status}")
    total = None
    for family in text_string_to_metric_families(body.decode(errors="replace")):
        for sample in family.samples:
            if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items()):
                total = (total or 0) + sample.value
    return total


def kernel_redirects(pod, direction):
    """Connections the pod's sidecar says its interception redirected in `direction`."""
    return int(sidecar_metric(pod, "sidecar_kernel_redirects_total", direction=direction) or 0)


def sidecar_interception(pod, mode):
    """The pod's sidecar's own interception (/stats); Unavailable unless it is `mode`, active."""
    info = _admin_stats(pod).get("interception") or {}
    if info.get("mode") != mode or info.get("state") != "active":
        why = f": {info['reason']}" if info.get("reason") else ""
        raise Unavailable(f"the {pod.role} sidecar's interception is {info.get('mode')} "
                          f"({info.get('state')}){why}, not {mode} (active)")
    return info


def nat_rules(pod):
    """Every rule of the pod's nat tables: [(tool, "-A CHAIN ...")], IPv4 and IPv6."""
    rules = []
    for tool in ("iptables-save", "ip6tables-save"):
        out = pod.ns.run([tool, "-t", "nat"], check=False).stdout
        rules += [(tool, line) for line in out.splitlines() if line.startswith("-A ")]
    return rules


def _only_the_sidecars_rules(pod, chains):
    """The pod's nat table holds the sidecar instance's chains and one jump to each per
    table, nothing else: no harness rule redirects the same connections a second time."""
    rules = nat_rules(pod)
    foreign = [line for _, line in rules if not set(chains) & set(line.split())]
    if foreign:
        raise Unavailable(f"the {pod.role} pod's nat table holds rules that are not its sidecar's: {foreign[:3]}")
    jumps = {}
    for tool, line in rules:
        chain = line.split()[1]
        if chain not in chains:
            jumps[(tool, chain)] = jumps.get((tool, chain), 0) + 1
    if not jumps or any(n != 1 for n in jumps.values()):
        raise Unavailable(f"the {pod.role} pod's nat table jumps to the sidecar's chains {jumps} times, not once each")
    return len(rules)


def proof_direct(row, context):
    report = probe(row, context)
    _all_ok(report)
    return {"probe_2xx": report["statuses"]["2xx"]}


def proof_redirected(row, context):
    """The probe's connection was redirected in the client pod, and connections into the
    server pod have been (a proxy's pooled upstream connection, opened by its ready probe,
    may carry the probe itself)."""
    before = row.mesh.redirected_packets()
    report = probe(row, context)
    after = row.mesh.redirected_packets()
    _all_ok(report)
    if after["client_outbound"] - before["client_outbound"] < 1:
        raise Unavailable("the probe's connection did not hit the client pod's REDIRECT rule")
    if after["server_inbound"] < 1:
        raise Unavailable("no connection has hit the server pod's REDIRECT rule")
    return {"probe_2xx": report["statuses"]["2xx"], "redirected_connections": after}


def _counted_by_both(row, context, **probe_kw):
    before = {pod.role: sidecar_requests(pod) for pod in (row.mesh.client, row.mesh.server)}
    report = probe(row, context, **probe_kw)
    _all_ok(report)
    counted = {pod.role: sidecar_requests(pod) - before[pod.role] for pod in (row.mesh.client, row.mesh.server)}
    for role, n in counted.items():
        if n < PROBE_REQUESTS:
            raise Unavailable(f"the {role} sidecar saw {n} of {PROBE_REQUESTS} probe requests: "
                              "traffic was not intercepted")
    return {"probe_2xx": report["statuses"]["2xx"], "sidecar_requests": counted}


def _intercepted_by_the_sidecars(row, context, mode):
    """Both sidecars run their own `mode` interception, nothing else redirects in the pods,
    the probe's connection was redirected by the client sidecar's interception, connections
    into the server pod by the server sidecar's, and both sidecars counted every request."""
    client, server = row.mesh.client, row.mesh.server
    evidence = {"interception": {}}
    for pod in (client, server):
        info = sidecar_interception(pod, mode)
        if mode == "iptables":
            n = _only_the_sidecars_rules(pod, info["chains"])
            evidence["interception"][pod.role] = f"iptables, chains {'/'.join(info['chains'])} ({n} nat rules)"
        else:
            left = nat_rules(pod)
            if left:
                raise Unavailable(f"eBPF row, but the {pod.role} pod's nat table has rules: {left[:3]}")
            evidence["interception"][pod.role] = f"ebpf, {len(info.get('links', []))} programs attached, no nat rules"
    outbound_before = kernel_redirects(client, "outbound")
    evidence.update(_counted_by_both(row, context))
    redirected = {"client_outbound": kernel_redirects(client, "outbound") - outbound_before,
                  "server_inbound": kernel_redirects(server, "inbound")}
    if redirected["client_outbound"] < 1:
        raise Unavailable(f"the client sidecar's {mode} interception did not count the probe's connection")
    if redirected["server_inbound"] < 1:
        raise Unavailable(f"the server sidecar's {mode} interception has redirected no connection")
    evidence["kernel_redirects"] = redirected
    return evidence


def proof_sidecar_iptables(row, context):
    return _intercepted_by_the_sidecars(row, context, "iptables")


def proof_ebpf(row, context):
    return _intercepted_by_the_sidecars(row, context, "ebpf")


def proof_ebpf_accelerated(row, context):
    """eBPF interception, and both pods' sidecars report accelerated sockets while the
    probe's connections are open (the app <-> sidecar hop exists in each pod)."""
    evidence = proof_ebpf(row, context)
    seen = {}

    def sample():
        time.sleep(0.3)
        for pod in (row.mesh.client, row.mesh.server):
            seen[pod.role] = sidecar_metric(pod, "sidecar_kernel_accelerated_sockets")

    sampler = threading.Thread(target=sample)
    sampler.start()
    probe(row, context, linger_s=0.8)   # connections stay open while the gauge is read
    sampler.join()
    for role in ("client", "server"):
        if not seen.get(role):
            raise Unavailable(f"the {role} sidecar's sidecar_kernel_accelerated_sockets is {seen.get(role)} "
                              "with app connections open: local hops are not accelerated")
    evidence["accelerated_sockets"] = seen
    return evidence


def proof_policy(row, context):
    unauthenticated = probe(row, context, headers=())
    if unauthenticated["statuses"]["4xx"] != PROBE_REQUESTS:
        raise Unavailable(f"requests without a token were answered {_codes(unauthenticated['statuses'])}, "
                          "not 401: the route's JWT policy is not enforced")
    evidence = _counted_by_both(row, context)
    evidence["without_token"] = unauthenticated["statuses"]
    return evidence


def proof_mtls(row, context):
    with PortCapture(row.mesh.server, row.mesh.server.dev, APP_PORT) as capture:
        evidence = _counted_by_both(row, context)
        time.sleep(0.1)
    tls = sum(1 for p in capture.payloads if looks_like_tls(p))
    plain = sum(1 for p in capture.payloads if looks_like_http(p))
    if plain or not tls:
        raise Unavailable(f"the pod link carried {plain} plaintext HTTP and {tls} TLS segments: not mTLS")
    evidence["tls_segments_seen"] = tls
    return evidence


# -- config overlays ------------------------------------------------------------------------

def ebpf_overlay(accelerate):
    """eBPF interception (proxies.sidecar_config already names the pod's app cgroup and
    interface, and runs the sidecar in its own cgroup)."""
    def overlay(pod, context):
        return {"interception": {"mode": "ebpf", "accelerate_local": accelerate}}
    return overlay


def policy_overlay(pod, context):
    if pod.role != "server":
        return {}
    return {"routes": [{
        "name": "bench-policy",
        "direction": "inbound",
        "match": {"path_prefix": "/"},
        "authn": {"jwt": {"issuer": credentials.ISSUER, "audiences": [credentials.AUDIENCE],
                          "jwks_file": str(context.jwks_path)}},
        "authz": {"allow": [{"claims": {"scope": "read"}}]},
        # High enough never to refuse the benchmark's load: the check is what is measured.
        "rate_limit": {"rate": "1000000/s", "burst": 1000000, "key": "client_ip"},
    }]}


def mtls_overlay(pod, context):
    certs = context.certificates
    overlay = {"tls": {"cert": str(certs[pod.role]["cert"]), "key": str(certs[pod.role]["key"]),
                       "ca": str(certs["ca"])}}
    if pod.role == "client":
        overlay["services"] = [{"name": "bench-server", "match": [f"{SERVER_IP}/32:{APP_PORT}",
                                                                   f"{SERVER_IP}/32:{TCP_PORT}"],
                                "tls": {"mode": "mutual"}}]
    return overlay


SCENARIOS = (
    Scenario("direct", "no sidecar (direct pod to pod)", proxy=None, proof=proof_direct),
    Scenario("bpf-sidecar", "bpf-sidecar, iptables interception", proxy="sidecar", proof=proof_sidecar_iptables),
    Scenario("bpf-sidecar-ebpf", "bpf-sidecar, eBPF interception", proxy="sidecar",
             overlay=ebpf_overlay(False), proof=proof_ebpf),
    Scenario("bpf-sidecar-ebpf-accel", "bpf-sidecar, eBPF + accelerate_local", proxy="sidecar",
             overlay=ebpf_overlay(True), proof=proof_ebpf_accelerated, optional=True,
             waits_for="interception.mode: ebpf with accelerate_local"),
    Scenario("bpf-sidecar-policy", "bpf-sidecar, iptables, route with JWT + authz + rate limit",
             proxy="sidecar", overlay=policy_overlay, proof=proof_policy, optional=True,
             waits_for="L7 policy (routes: authn, authz, rate_limit)", loads=("closed", "open")),
    Scenario("bpf-sidecar-mtls", "bpf-sidecar, iptables, mTLS between the pods", proxy="sidecar",
             overlay=mtls_overlay, proof=proof_mtls, optional=True, waits_for="mTLS (services[].tls, tls)"),
    Scenario("nginx", "nginx as sidecars (fixed reverse proxies), iptables", proxy="nginx",
             harness_iptables=True, proof=proof_redirected),
    Scenario("haproxy", "HAProxy as sidecars (fixed reverse proxies), iptables", proxy="haproxy",
             harness_iptables=True, proof=proof_redirected),
)


def sidecar_check(config_path, command=None):
    """None when `sidecar check` accepts the config, else its first error line."""
    cmd = list(command or peers.sidecar_command()) + ["check", "-c", str(config_path)]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=60, cwd=peers.REPO_ROOT)
    if r.returncode == 0:
        return None
    lines = [line.strip() for line in (r.stdout + r.stderr).splitlines() if line.strip()]
    return "; ".join(lines[:3]) or f"exit {r.returncode}"
