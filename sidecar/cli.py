"""The `sidecar` command line (see SPEC.md, "Commands")."""
import argparse
import json
import logging
import sys

from sidecar.logs import setup_logging


def cmd_run(args) -> int:
    from sidecar.config import ConfigError, load_config
    from sidecar.manager import Manager
    try:
        cfg = load_config(args.config)
    except ConfigError as e:
        print(e, file=sys.stderr)
        return 1
    setup_logging(cfg.log_level)
    for warning in cfg.warnings:
        logging.getLogger("sidecar.config").warning("%s", warning)
    return Manager(cfg, args.config).run()


def cmd_check(args) -> int:
    from sidecar.config import ConfigError, load_config
    try:
        cfg = load_config(args.config)
    except ConfigError as e:
        print(e, file=sys.stderr)
        return 1
    for warning in cfg.warnings:
        print("warning: %s" % warning, file=sys.stderr)
    print("%s: ok" % args.config)
    return 0


def cmd_config(args) -> int:
    from sidecar.config import config_json_schema, effective_defaults
    if args.what == "schema":
        print(json.dumps(config_json_schema(), indent=2))
    else:
        import yaml
        print(yaml.safe_dump(effective_defaults(), sort_keys=False), end="")
    return 0


def cmd_demo(args) -> int:
    from sidecar.demo import run_demo
    setup_logging("warning")
    return run_demo(duration=args.duration, connections=args.connections, mode=args.mode,
                    accelerate=not args.no_accelerate)


def _admin_address(args, kind):
    """host:port of the local sidecar's admin API or health listener: from -c FILE, or
    SPEC's defaults."""
    if getattr(args, "config", None):
        from sidecar.config import load_config
        cfg = load_config(args.config)
        host, port = cfg.admin.listen if kind == "admin" else cfg.telemetry.health_listen
    else:
        host, port = ("127.0.0.1", 15000) if kind == "admin" else ("127.0.0.1", 15021)
    if host in ("0.0.0.0", "::"):
        host = "127.0.0.1"
    return "[%s]:%d" % (host, port) if ":" in host else "%s:%d" % (host, port)


def cmd_wait_ready(args) -> int:
    """Exits 0 once the local sidecar answers ready (Istio's holdApplicationUntilProxyStarts,
    Linkerd's proxy-await); 1 at the timeout."""
    import time
    import urllib.error
    import urllib.request
    url = args.url or "http://%s/healthz/ready" % _admin_address(args, "health")
    deadline = time.monotonic() + args.timeout
    last = "no answer"
    while True:
        try:
            with urllib.request.urlopen(url, timeout=1.0) as r:
                if r.status == 200:
                    print("sidecar ready")
                    return 0
        except urllib.error.HTTPError as e:
            last = "%d %s" % (e.code, e.read().decode(errors="replace").strip())
        except (urllib.error.URLError, OSError) as e:
            last = str(getattr(e, "reason", e))
        if time.monotonic() >= deadline:
            print("sidecar not ready after %gs (%s): %s" % (args.timeout, url, last), file=sys.stderr)
            return 1
        time.sleep(0.2)


def cmd_stats(args) -> int:
    from sidecar.stats_view import run_stats
    url = args.url or "http://%s/stats" % _admin_address(args, "admin")
    return run_stats(url, args.watch, args.interval)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="sidecar", description="bpf-sidecar: an eBPF-assisted traffic sidecar")
    sub = p.add_subparsers(dest="command", required=True)

    run = sub.add_parser("run", help="run the sidecar in the foreground")
    run.add_argument("-c", "--config", required=True)
    run.set_defaults(func=cmd_run)

    check = sub.add_parser("check", help="validate a config file")
    check.add_argument("-c", "--config", required=True)
    check.set_defaults(func=cmd_check)

    config = sub.add_parser("config", help="print the config's JSON Schema or its defaults")
    config.add_argument("what", choices=["schema", "defaults"])
    config.set_defaults(func=cmd_config)

    wait = sub.add_parser("wait-ready", help="exit 0 once the local sidecar is ready")
    wait.add_argument("--timeout", type=float, default=60.0)
    wait.add_argument("-c", "--config", help="read the health listener from this config")
    wait.add_argument("--url", help="readiness URL (default: http://127.0.0.1:15021/healthz/ready)")
    wait.set_defaults(func=cmd_wait_ready)

    stats = sub.add_parser("stats", help="the running sidecar's counters as tables")
    stats.add_argument("--watch", action="store_true", help="refresh until interrupted")
    stats.add_argument("--interval", type=float, default=1.0)
    stats.add_argument("-c", "--config", help="read the admin listener from this config")
    stats.add_argument("--url", help="stats URL (default: http://127.0.0.1:15000/stats)")
    stats.set_defaults(func=cmd_stats)

    from sidecar.bpf.status import add_commands as add_bpf_commands
    add_bpf_commands(sub)

    demo = sub.add_parser("demo", help="a throwaway two-pod mesh, traffic through both sidecars, "
                                       "a live summary, nothing left behind (root)")
    demo.add_argument("--duration", type=float, default=10.0, help="seconds of traffic (default 10)")
    demo.add_argument("--connections", type=int, default=8, help="client keep-alive connections (default 8)")
    demo.add_argument("--mode", choices=("ebpf", "iptables"), default="ebpf",
                      help="the sidecars' interception (default ebpf; iptables when eBPF cannot be used)")
    demo.add_argument("--no-accelerate", action="store_true",
                      help="eBPF without accelerate_local (the app <-> sidecar hops through TCP/IP)")
    demo.set_defaults(func=cmd_demo)
    return p


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
