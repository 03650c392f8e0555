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
    return run_demo(duration=args.duration, connections=args.connections)


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

    demo = sub.add_parser("demo", help="a sample app behind the sidecar, traffic, a summary")
    demo.add_argument("--duration", type=float, default=5.0)
    demo.add_argument("--connections", type=int, default=8)
    demo.set_defaults(func=cmd_demo)
    return p


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
