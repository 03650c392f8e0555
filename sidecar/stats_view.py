"""`sidecar stats`: the admin API's /stats as tables in the terminal (rich), once or
refreshing with --watch."""
import json
import time
import urllib.error
import urllib.request

from rich.console import Console, Group
from rich.live import Live
from rich.table import Table
from rich.text import Text


def fetch(url: str, timeout: float = 2.0) -> dict:
    with urllib.request.urlopen(url, timeout=timeout) as r:
        return json.loads(r.read())


def _ms(seconds):
    return "-" if seconds is None else "%.1f" % (seconds * 1000)


def render(stats: dict):
    """The tables for one /stats document."""
    w = stats["workload"]
    cfg = stats["config"]
    state = Text("ready", style="green") if stats["ready"] else Text("NOT READY", style="bold red")
    head = Text.assemble("%s/%s  " % (w["namespace"], w["name"]), state,
                         "  config generation %d (%d applied, %d refused reloads)  restarts %d" % (
                             cfg["generation"], cfg["reloads"].get("applied", 0),
                             cfg["reloads"].get("refused", 0), stats["restarts"]))
    checks = [Text("%s: %s" % (name, c["reason"]), style="red")
              for name, c in stats["checks"].items() if not c["ok"]]
    ic = stats.get("interception") or {"mode": "off"}
    if ic["mode"] != "off":
        line = "interception: %s %s" % (ic["mode"], ic["state"])
        if ic.get("reason"):
            line += ": %s" % ic["reason"]
        counters = ic.get("counters") or ic.get("redirected") or {}
        redirected = counters.get("outbound_redirected", counters.get("outbound"))
        if redirected is not None:
            line += "  (%s outbound, %s inbound redirected)" % (
                redirected, counters.get("inbound_steered", counters.get("inbound")))
        checks.insert(0, Text(line, style="green" if ic["state"] == "active" else "yellow"))

    requests = Table(title="Requests by route and service", expand=True)
    for col, justify in (("direction", "left"), ("route", "left"), ("service", "left"),
                         ("requests", "right"), ("2xx", "right"), ("4xx", "right"), ("5xx", "right"),
                         ("errors", "right"), ("mean ms", "right"), ("p50 ms", "right"),
                         ("p99 ms", "right"), ("bytes in", "right"), ("bytes out", "right")):
        requests.add_column(col, justify=justify)
    for r in stats["requests"]:
        lat = r["latency_seconds"]
        requests.add_row(r["direction"], r["route"], r["service"], str(r["requests"]),
                         str(r["codes"].get("2xx", 0)), str(r["codes"].get("4xx", 0)),
                         str(r["codes"].get("5xx", 0)), "%.1f%%" % (r["error_ratio"] * 100),
                         _ms(lat["mean"]), _ms(lat["p50"]), _ms(lat["p99"]),
                         str(r["request_bytes"]), str(r["response_bytes"]))

    conns = Table(title="Connections")
    for col in ("direction", "protocol", "active", "total"):
        conns.add_column(col, justify="left" if col in ("direction", "protocol") else "right")
    for direction, protocols in stats["connections"].items():
        for protocol, c in protocols.items():
            conns.add_row(direction, protocol, str(c["active"]), str(c["total"]))

    tables = [requests]
    if stats.get("services"):
        services = Table(title="Upstream services (summed over workers)")
        for col in ("service", "retries", "breaker open", "ejections", "health checks failed",
                    "available", "ejected", "unhealthy"):
            services.add_column(col, justify="left" if col == "service" else "right")
        for sv in stats["services"]:
            ep = sv["endpoints"]
            services.add_row(sv["service"], str(sum(sv["retries"].values())),
                             str(sv["circuit_breaker_open"]), str(sv["ejections"]),
                             str(sv["health_checks"].get("failed", 0)), str(ep.get("available", "-")),
                             str(ep.get("ejected", "-")), str(ep.get("unhealthy", "-")))
        tables.append(services)

    workers = Table(title="Workers")
    for col in ("index", "pid", "ready", "generation"):
        workers.add_column(col)
    for wk in stats["workers"]:
        workers.add_row(str(wk["index"]), str(wk["pid"]), "yes" if wk["ready"] else "no",
                        str(wk["generation"]))
    return Group(head, *checks, *tables, conns, workers, *_kernel_tables(ic))


def _kernel_tables(ic):
    """The kernel's traffic (top label sets by bytes) and drops, in ebpf mode."""
    out = []
    traffic = ic.get("traffic")
    if traffic:
        table = Table(title="Kernel traffic (%d of %d label sets; top by bytes)" % (
            traffic["entries"], traffic["max_entries"]))
        for col in ("direction", "peer", "port", "protocol", "bytes", "packets"):
            table.add_column(col, justify="right" if col in ("bytes", "packets", "port") else "left")
        for r in traffic["top"]:
            table.add_row(r["direction"], r["peer"], str(r["port"]), r["protocol"], str(r["bytes"]),
                          str(r["packets"]))
        out.append(table)
    drops = ic.get("drops")
    if drops:
        out.append(Text("kernel drops: " + ", ".join("%s %d" % kv for kv in drops.items()),
                        style="yellow" if any(drops.values()) else ""))
    return out


def run_stats(url: str, watch: bool, interval: float) -> int:
    console = Console()
    try:
        if not watch:
            console.print(render(fetch(url)))
            return 0
        with Live(render(fetch(url)), console=console, refresh_per_second=4) as live:
            while True:
                time.sleep(interval)
                live.update(render(fetch(url)))
    except (urllib.error.URLError, OSError) as e:
        console.print("cannot read %s: %s" % (url, getattr(e, "reason", e)), style="red")
        return 1
    except KeyboardInterrupt:
        return 0
