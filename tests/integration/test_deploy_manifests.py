"""deploy/: the Dockerfile and the Kubernetes manifests agree with the sidecar they ship.

No image is built and no cluster runs here, so this checks what can be checked without
them: every manifest parses and is well formed; the ConfigMap's config passes the real
`sidecar check` and uses `interception.cgroup: pod`; the ports, probes and paths in the
manifests are SPEC.md's ("Ports") and the config's; the commands the images and containers
run are commands of the real CLI (`sidecar --help`); every file the Dockerfile copies exists
in the repository; every Debian package it installs exists (`apt-cache show`); and the
long-running sidecar image installs no bcc (no LLVM).
"""
import functools
import json
import os
import re
import shutil
import subprocess
import sys

import pytest
import yaml

from sidecar.bpf import BPFFS_ROOT
from tests.support.netns import ROOT

DEPLOY = os.path.join(ROOT, "deploy")
K8S = os.path.join(DEPLOY, "kubernetes")
DOCKERFILE = os.path.join(DEPLOY, "Dockerfile")

# SPEC.md, "Ports": port -> (what, bound to)
SPEC_PORTS = {15001: ("outbound capture listener", "127.0.0.1"),
              15006: ("inbound capture listener", "0.0.0.0"),
              15000: ("admin API", "127.0.0.1"),
              15090: ("Prometheus /metrics", "0.0.0.0"),
              15021: ("/healthz/ready for kubelet probes", "0.0.0.0")}


def _manifests():
    out = {}
    for name in sorted(os.listdir(K8S)):
        if name.endswith((".yaml", ".yml")):
            with open(os.path.join(K8S, name)) as f:
                out[name] = [d for d in yaml.safe_load_all(f) if d is not None]
    return out


def _one(kind):
    found = [d for docs in _manifests().values() for d in docs if d["kind"] == kind]
    assert len(found) == 1, (kind, found)
    return found[0]


def _sidecar_config():
    return _one("ConfigMap")["data"]["sidecar.yaml"]


def _pod():
    return _one("Deployment")["spec"]["template"]


def _containers():
    spec = _pod()["spec"]
    return {c["name"]: c for c in spec.get("initContainers", []) + spec["containers"]}


def _cli(*args):
    r = subprocess.run([sys.executable, "-m", "sidecar.cli"] + list(args), cwd=ROOT,
                       capture_output=True, text=True, timeout=60,
                       env=dict(os.environ, POD_NAMESPACE="default"))
    return r


@functools.lru_cache(maxsize=None)
def _subcommands(*path):
    """The subcommands `sidecar <path> --help` lists (argparse's {a,b,c})."""
    return set(re.search(r"\{([a-z,-]+)\}", _help(*path)).group(1).split(","))


def _check_command(args):
    """`args` (after the `sidecar` entrypoint) is a command the CLI has."""
    assert args[0] in _subcommands(), args
    if args[0] == "bpf":
        assert args[1] in _subcommands("bpf"), args
    assert "-c CONFIG, --config CONFIG" in _help(*args[:2 if args[0] == "bpf" else 1]), args


@functools.lru_cache(maxsize=None)
def _help(*path):
    r = _cli(*path, "--help")
    assert r.returncode == 0, r.stderr
    return r.stdout


# -- the manifests ------------------------------------------------------------------------------

def test_every_manifest_parses_and_names_its_kind():
    manifests = _manifests()
    assert set(manifests) == {"configmap.yaml", "deployment.yaml", "service.yaml", "kustomization.yaml"}
    for name, docs in manifests.items():
        assert docs, name
        for doc in docs:
            assert doc["apiVersion"] and doc["kind"], name
            if doc["kind"] != "Kustomization":
                assert doc["metadata"]["name"], name
    assert sorted(_one("Kustomization")["resources"]) == sorted(
        n for n in manifests if n != "kustomization.yaml")


def test_the_configmaps_config_passes_sidecar_check_in_pod_mode(tmp_path):
    path = tmp_path / "sidecar.yaml"
    path.write_text(_sidecar_config())
    r = _cli("check", "-c", str(path))
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "%s: ok" % path and r.stderr == ""     # no warning either
    cfg = yaml.safe_load(_sidecar_config())
    assert cfg["interception"]["mode"] == "ebpf" and cfg["interception"]["cgroup"] == "pod"


def test_the_configs_listeners_are_specs_ports():
    cfg = yaml.safe_load(_sidecar_config())
    listeners = {"outbound": cfg["outbound"]["listen"], "inbound": cfg["inbound"]["listen"],
                 "admin": cfg["admin"]["listen"], "metrics": cfg["telemetry"]["metrics"]["listen"],
                 "health": cfg["telemetry"]["health"]["listen"]}
    bound = {int(a.rsplit(":", 1)[1]): a.rsplit(":", 1)[0] for a in listeners.values()}
    assert bound == {port: host for port, (_, host) in SPEC_PORTS.items()}


def test_probes_scrape_annotations_and_ports_match_spec_and_the_config():
    pod, containers = _pod(), _containers()
    sidecar = containers["sidecar"]
    for probe in ("startupProbe", "readinessProbe"):
        assert sidecar[probe]["httpGet"] == {"path": "/healthz/ready", "port": 15021}, probe
    assert "livenessProbe" not in sidecar      # a restart would drop and re-adopt the kernel state
    annotations = pod["metadata"]["annotations"]
    assert annotations == {"prometheus.io/scrape": "true", "prometheus.io/port": "15090",
                           "prometheus.io/path": "/metrics"}
    # Only the listeners bound beyond loopback are declared, and the app's port is the
    # config's inbound.app.
    assert {p["containerPort"] for p in sidecar["ports"]} == {
        port for port, (_, host) in SPEC_PORTS.items() if host == "0.0.0.0" and port != 15006}
    app_port = int(yaml.safe_load(_sidecar_config())["inbound"]["app"].rsplit(":", 1)[1])
    assert [p["containerPort"] for p in containers["app"]["ports"]] == [app_port]
    service = _one("Service")
    assert [p["targetPort"] for p in service["spec"]["ports"]] == [app_port]
    assert service["spec"]["selector"] == pod["metadata"]["labels"]


def test_the_loader_runs_first_and_the_sidecar_is_a_native_sidecar():
    spec = _pod()["spec"]
    inits = [c["name"] for c in spec["initContainers"]]
    assert inits == ["bpf-loader", "sidecar"]
    loader, sidecar = spec["initContainers"]
    assert "restartPolicy" not in loader               # runs to completion, before the sidecar
    assert sidecar["restartPolicy"] == "Always"        # starts before the app, stops after it
    assert loader["args"][:2] == ["bpf", "load"] and sidecar["args"][0] == "run"
    for c in (loader, sidecar):
        _check_command(c["args"])
        assert c["securityContext"] == {"privileged": True}
        assert {"name": "POD_NAMESPACE", "valueFrom": {"fieldRef": {"fieldPath": "metadata.namespace"}}} in c["env"]


def test_config_and_kernel_paths_are_mounted_where_the_commands_look():
    spec = _pod()["spec"]
    volumes = {v["name"]: v for v in spec["volumes"]}
    containers = _containers()
    for c in containers.values():
        for m in c.get("volumeMounts", []):
            assert m["name"] in volumes, (c["name"], m)
    config_volume = next(n for n, v in volumes.items() if "configMap" in v)
    assert volumes[config_volume]["configMap"]["name"] == _one("ConfigMap")["metadata"]["name"]

    def mounts(name):
        return {m["mountPath"]: m["name"] for m in containers[name].get("volumeMounts", [])}
    for name in ("bpf-loader", "sidecar"):
        args = containers[name]["args"]
        config = args[args.index("-c") + 1]
        assert mounts(name)[os.path.dirname(config)] == config_volume
        assert os.path.basename(config) in _one("ConfigMap")["data"]
        assert volumes[mounts(name)[os.path.dirname(BPFFS_ROOT)]]["hostPath"]["path"] == "/sys/fs/bpf"
        assert volumes[mounts(name)["/sys/fs/cgroup"]]["hostPath"]["path"] == "/sys/fs/cgroup"
    # Kernel headers for bcc: the loader's only.
    for path in ("/lib/modules", "/usr/src"):
        assert volumes[mounts("bpf-loader")[path]]["hostPath"]["path"] == path
        assert path not in mounts("sidecar")
    assert "volumeMounts" not in containers["app"]


# -- the Dockerfile -------------------------------------------------------------------------------

def _stages():
    """[(name, base, [instructions])] of deploy/Dockerfile, continuation lines joined."""
    with open(DOCKERFILE) as f:
        text = re.sub(r"\\\n\s*", " ", "\n".join(l for l in f.read().splitlines()
                                               if not l.lstrip().startswith("#")))
    args = dict(re.findall(r"^ARG (\w+)=(\S+)$", text, re.M))
    stages = []
    for line in text.splitlines():
        line = line.strip()
        m = re.match(r"FROM (\S+) AS (\S+)$", line)
        if m:
            base = re.sub(r"\$\{(\w+)\}", lambda g: args[g.group(1)], m.group(1))
            stages.append((m.group(2), base, []))
        elif line and stages:
            stages[-1][2].append(line)
    return stages


def _apt_packages(instructions):
    out = []
    for line in instructions:
        for m in re.finditer(r"apt-get install ([^&]*)", line):
            out += [w for w in m.group(1).split() if not w.startswith("-")]
    return out


def _lineage(stages, name):
    """The stage `name` and the stages it is built on, by name."""
    by_name = {s[0]: s for s in stages}
    chain = []
    while name in by_name:
        chain.append(by_name[name])
        name = by_name[name][1]
    return chain


def test_two_targets_on_debian_12_and_only_the_loader_carries_bcc():
    stages = _stages()
    names = [s[0] for s in stages]
    assert names[-1] == "sidecar" and "loader" in names          # the default target is the sidecar
    for name, base, _ in stages:
        assert base.startswith("debian:12") or base in names, (name, base)
    in_sidecar = [p for s in _lineage(stages, "sidecar") for p in _apt_packages(s[2])]
    in_loader = [p for s in _lineage(stages, "loader") for p in _apt_packages(s[2])]
    assert "python3-bpfcc" in in_loader and "python3-bpfcc" not in in_sidecar
    assert not [p for p in in_sidecar if "llvm" in p or "clang" in p]
    for target in ("sidecar", "loader"):
        steps = [i for s in _lineage(stages, target) for i in s[2]]
        assert {"python3", "iptables", "iproute2"} <= set(p for s in _lineage(stages, target)
                                                           for p in _apt_packages(s[2]))
        assert any("python3 -m venv --system-site-packages /opt/sidecar" in i for i in steps)
        assert 'ENTRYPOINT ["sidecar"]' in steps
    build = next(s for s in stages if s[0] == "build")
    assert any("cython" in i and "pip install" in i for i in build[2])    # fastpath/*.pyx compiled
    assert any("pip wheel" in i for i in build[2])


def test_the_images_run_commands_of_the_cli_with_the_manifests_config_path():
    stages = {s[0]: s[2] for s in _stages()}
    containers = _containers()
    for target, container in (("loader", "bpf-loader"), ("sidecar", "sidecar")):
        cmd = next(i for i in stages[target] if i.startswith("CMD "))
        args = json.loads(cmd[4:])
        _check_command(args)
        assert args == containers[container]["args"], (target, args)
    with open(os.path.join(ROOT, "pyproject.toml")) as f:
        version = re.search(r'^version = "([^"]+)"', f.read(), re.M).group(1)
    assert containers["bpf-loader"]["image"] == "bpf-sidecar-loader:%s" % version
    assert containers["sidecar"]["image"] == "bpf-sidecar:%s" % version
    with open(DOCKERFILE) as f:
        header = f.read()
    for image, target in (("bpf-sidecar-loader", "loader"), ("bpf-sidecar", "sidecar")):
        assert "--target %s -t %s:%s ." % (target, image, version) in re.sub(r" +", " ", header)


def test_every_file_the_dockerfile_copies_is_in_the_repository():
    stages = _stages()
    names = {s[0] for s in stages}
    copies = [i for s in stages for i in s[2] if i.startswith("COPY ")]
    assert copies
    for line in copies:
        words = line.split()[1:]
        origin = next((w.split("=", 1)[1] for w in words if w.startswith("--from=")), None)
        paths = [w for w in words if not w.startswith("--")][:-1]
        if origin is not None:
            assert origin in names, line
            continue
        for path in paths:
            assert os.path.exists(os.path.join(ROOT, path)), line
    # What the wheel needs to build is among what is copied.
    copied = {p.rstrip("/") for line in copies for p in line.split()[1:-1] if not p.startswith("--")}
    assert {"pyproject.toml", "setup.py", "README.md", "bpf", "fastpath", "sidecar"} <= copied
    with open(DOCKERFILE + ".dockerignore") as f:
        ignored = f.read().split()
    assert {"fastpath/*.so", "fastpath/*.c", ".venv"} <= set(ignored)   # this machine's build output


def test_every_debian_package_the_dockerfile_installs_exists():
    if shutil.which("apt-cache") is None:
        pytest.skip("no apt-cache here")
    packages = sorted({p for s in _stages() for p in _apt_packages(s[2])})
    assert packages
    r = subprocess.run(["apt-cache", "show", "--no-all-versions"] + packages,
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    shown = set(re.findall(r"^Package: (\S+)$", r.stdout, re.M))
    assert shown == set(packages), set(packages) - shown
