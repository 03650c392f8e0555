"""`python -m benchmarks.policy`: what L7 policy costs per request (issue 4's target).

Two sidecars in front of the same nginx app, one worker each, loaded in turn with wrk
(2 threads, 32 keep-alive connections), interleaved over rounds:

    plain    no routes: the proxy alone
    policy   one inbound route with JWT authn (RS256, the same token on every request, so
             verified once and then served from the token cache), authz (a claim rule, a
             principal rule and a deny rule on a path), a rate limit keyed by the JWT
             subject (set high enough never to refuse), and header rules (request set
             with %{principal}, add with %{request_id}, remove; response remove and add)

Both get the same Authorization header. Reported: CPU (user+system) per request of each
sidecar's process tree, the ratio policy/plain (target: at most 1.15), and a check that
the policy really ran (every request allowed by authz and the rate limit, none refused).
Results: benchmarks/results/policy.json.
"""
import argparse
import base64
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import yaml
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import padding, rsa

from benchmarks import proc_stats
from benchmarks.peers import app_server, free_ports, sidecar_command
from benchmarks.wrk import run_wrk

RESULTS = Path(__file__).resolve().parent / "results" / "policy.json"
TARGET_RATIO = 1.15
ISSUER = "https://issuer.bench"


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def make_jwks_and_token(workdir: Path):
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    pub = key.public_key().public_numbers()
    jwks = {"keys": [{"kty": "RSA", "kid": "bench", "alg": "RS256", "use": "sig",
                      "n": _b64(pub.n.to_bytes(256, "big")), "e": _b64(pub.e.to_bytes(3, "big"))}]}
    path = workdir / "jwks.json"
    path.write_text(json.dumps(jwks))
    head = _b64(json.dumps({"alg": "RS256", "typ": "JWT", "kid": "bench"}).encode())
    body = _b64(json.dumps({"iss": ISSUER, "aud": "bench", "sub": "bench-user", "scope": "read write",
                            "exp": int(time.time()) + 6 * 3600}).encode())
    signature = key.sign(f"{head}.{body}".encode(), padding.PKCS1v15(), hashes.SHA256())
    return path, f"{head}.{body}.{_b64(signature)}"


def policy_routes(jwks_path):
    return [{
        "name": "api",
        "match": {"path_prefix": "/"},
        "authn": {"jwt": {"issuer": ISSUER, "audiences": ["bench"], "jwks_file": str(jwks_path)}},
        "authz": {"allow": [{"claims": {"scope": "read"}, "methods": ["GET", "HEAD"]},
                            {"principals": ["ops"]}],
                  "deny": [{"paths": ["/admin*"]}]},
        "rate_limit": {"rate": "1000000/s", "burst": 1000000, "key": "jwt:sub"},
        "headers": {"request": {"set": {"x-user": "%{principal}"}, "add": {"x-req": "%{request_id}"},
                                "remove": ["x-internal"]},
                    "response": {"remove": ["server"], "add": {"x-policy": "on"}}},
    }]


class Sidecar:
    def __init__(self, workdir: Path, app_port: int, routes):
        self.ports = free_ports(5)
        inbound, outbound, admin, metrics, health = self.ports
        workdir.mkdir(parents=True, exist_ok=True)
        cfg = {
            "workers": 1, "drain_timeout": "1s", "interception": {"mode": "off"},
            "inbound": {"listen": "127.0.0.1:%d" % inbound, "app": "127.0.0.1:%d" % app_port},
            "outbound": {"listen": "127.0.0.1:%d" % outbound},
            "admin": {"listen": "127.0.0.1:%d" % admin},
            "telemetry": {"metrics": {"listen": "127.0.0.1:%d" % metrics},
                          "health": {"listen": "127.0.0.1:%d" % health}, "access_log": {"path": None}},
            "routes": routes,
        }
        path = workdir / "sidecar.yaml"
        path.write_text(yaml.safe_dump(cfg))
        self.log = open(workdir / "sidecar.log", "wb")
        self.proc = subprocess.Popen(sidecar_command() + ["run", "-c", str(path)], stdout=self.log,
                                     stderr=subprocess.STDOUT, start_new_session=True)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                with urllib.request.urlopen("http://127.0.0.1:%d/healthz/ready" % health, timeout=1) as r:
                    if r.status == 200:
                        return
            except OSError:
                time.sleep(0.1)
        self.stop()
        raise RuntimeError("sidecar not ready")

    @property
    def url(self):
        return "http://127.0.0.1:%d/" % self.ports[0]

    def metrics(self):
        with urllib.request.urlopen("http://127.0.0.1:%d/metrics" % self.ports[3], timeout=5) as r:
            return r.read().decode()

    def stop(self):
        self.proc.terminate()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self.log.close()


def measure(sc: Sidecar, duration, headers, url=None):
    """One wrk run through `sc` (to `url`, default its /): requests, rate, errors, CPU per
    request of the sidecar's process tree, p50 and p99."""
    before = proc_stats.sample_cpu([sc.proc.pid])
    result, _ = run_wrk(url or sc.url, threads=2, connections=32, duration_s=duration, headers=headers)
    user, system = proc_stats.cpu_delta(before, proc_stats.sample_cpu([sc.proc.pid]))
    n = result.requests
    return {"requests": n, "requests_per_s": result.requests_per_s, "errors": result.errors,
            "non_2xx": getattr(result, "non_2xx_3xx", 0) or 0,
            "cpu_us_per_req": (user + system) * 1e6 / n if n else None,
            "p50_us": result.percentiles_us[50], "p99_us": result.percentiles_us[99]}


def counter(text, name, **labels):
    total = 0.0
    for line in text.splitlines():
        if line.startswith(name + "{") and all('%s="%s"' % kv in line for kv in labels.items()):
            total += float(line.rsplit(" ", 1)[1])
    return total


def main(argv=None):
    p = argparse.ArgumentParser(prog="benchmarks.policy")
    p.add_argument("--quick", action="store_true", help="2 rounds of 3 s")
    p.add_argument("--rounds", type=int)
    p.add_argument("--duration", type=int)
    args = p.parse_args(argv)
    rounds = args.rounds or (2 if args.quick else 5)
    duration = args.duration or (3 if args.quick else 8)
    with tempfile.TemporaryDirectory(prefix="sidecar-policy-bench-") as tmp:
        workdir = Path(tmp)
        os.chmod(workdir, 0o755)
        jwks, token = make_jwks_and_token(workdir)
        headers = ["Authorization: Bearer " + token, "X-Internal: drop-me"]
        app_port, = free_ports(1)
        app = app_server(workdir / "app", app_port)
        app.start()
        app.wait_ready()
        sidecars = {}
        try:
            sidecars["plain"] = Sidecar(workdir / "plain", app_port, [])
            sidecars["policy"] = Sidecar(workdir / "policy", app_port, policy_routes(jwks))
            for sc in sidecars.values():
                run_wrk(sc.url, threads=2, connections=32, duration_s=2, headers=headers)   # warm-up
            runs = {"plain": [], "policy": []}
            for r in range(rounds):
                for name in (("plain", "policy") if r % 2 == 0 else ("policy", "plain")):
                    record = measure(sidecars[name], duration, headers)
                    runs[name].append(record)
                    print("[round %d/%d] %-6s %8.0f req/s  CPU %5.1f us/req  p50 %5.0f us  errors %d non-2xx %d"
                          % (r + 1, rounds, name, record["requests_per_s"], record["cpu_us_per_req"],
                             record["p50_us"], record["errors"], record["non_2xx"]), flush=True)
            text = sidecars["policy"].metrics()
            policy_requests = sum(x["requests"] for x in runs["policy"])
            check = {
                "authz_allowed": counter(text, "sidecar_authz_decisions_total", route="api", decision="allow"),
                "authz_denied": counter(text, "sidecar_authz_decisions_total", route="api", decision="deny"),
                "ratelimit_allowed": counter(text, "sidecar_ratelimit_decisions_total", route="api",
                                             decision="allow"),
                "ratelimit_denied": counter(text, "sidecar_ratelimit_decisions_total", route="api",
                                            decision="deny"),
                "measured_requests": policy_requests,
            }
        finally:
            for sc in sidecars.values():
                sc.stop()
            app.stop()
    plain = statistics.median(x["cpu_us_per_req"] for x in runs["plain"])
    policy = statistics.median(x["cpu_us_per_req"] for x in runs["policy"])
    ratio = policy / plain
    results = {
        "scenario": "inbound, 1 worker, wrk -t2 -c32, nginx app; policy = JWT (RS256, cached) + authz "
                    "+ rate limit (jwt:sub) + request/response header rules",
        "cpu_us_per_req": {"plain": round(plain, 2), "policy": round(policy, 2)},
        "ratio": round(ratio, 3), "target_ratio": TARGET_RATIO, "meets_target": ratio <= TARGET_RATIO,
        "requests_per_s": {k: round(statistics.median(x["requests_per_s"] for x in v)) for k, v in runs.items()},
        "policy_check": check, "rounds": runs,
    }
    RESULTS.parent.mkdir(exist_ok=True)
    RESULTS.write_text(json.dumps(results, indent=2) + "\n")
    print(json.dumps({k: v for k, v in results.items() if k != "rounds"}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
