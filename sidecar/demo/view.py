"""What the demo shows: both sidecars' own figures next to the client app's, live and at the end.

Each sidecar is read the way an operator would read it: admin `/stats` (requests it
handled, its interception: mode, state, programs) and Prometheus `/metrics` (the kernel
families of SPEC.md: redirected connections, bytes and drops counted in the kernel,
accelerated sockets). A family a sidecar does not export is shown as "n/a", so the demo
shows more as the kernel layer grows, with no change here.

On a terminal the live view is a pair of tables (rich) redrawn in place once a second;
otherwise (a pipe, a log) it is one line a second.
"""
import sys
from dataclasses import dataclass
from typing import Optional

from prometheus_client.parser import text_string_to_metric_families
from rich.console import Console, Group
from rich.live import Live
from rich.table import Table
from rich.text import Text

__all__ = ["LiveView", "SidecarFigures", "acceleration_text", "read_sidecar", "sidecar_table", "summary_lines"]


@dataclass
class SidecarFigures:
    """One sidecar, read once. None: the sidecar does not export that figure."""
    role: str                                  # "outbound" (pod A) | "inbound" (pod B)
    pod: str                                   # "A" | "B"
    requests: int = 0
    errors_5xx: int = 0
    mode: str = None
    state: str = None
    programs: int = 0
    redirects: Optional[float] = None          # connections this pod's interception redirected
    kernel_bytes: Optional[dict] = None        # direction -> bytes
    kernel_drops: Optional[dict] = None        # reason -> packets
    accelerated_sockets: Optional[float] = None
    accelerated_peak: Optional[float] = None   # the most seen at once during the run
    accelerate_requested: bool = False


def _samples(metrics_text):
    """{family name: [(sample name, labels, value)]} of a Prometheus text exposition."""
    out = {}
    for family in text_string_to_metric_families(metrics_text):
        out[family.name] = [(s.name, s.labels, s.value) for s in family.samples]
    return out


def _by_label(samples, sample_name, label):
    totals = {}
    for name, labels, value in samples:
        if name == sample_name:
            key = labels.get(label, "")
            totals[key] = totals.get(key, 0) + value
    return totals


def read_sidecar(sidecar):
    """SidecarFigures of a running demo Sidecar (mesh.Sidecar), from its /stats and /metrics."""
    stats = sidecar.stats()
    families = _samples(sidecar.metrics_text())
    info = stats.get("interception") or {}
    fig = SidecarFigures(role=sidecar.role, pod="A" if sidecar.role == "outbound" else "B",
                         requests=stats["totals"]["requests"], errors_5xx=stats["totals"]["5xx"],
                         mode=info.get("mode"), state=info.get("state"),
                         programs=len(info.get("links") or ()),
                         accelerate_requested=bool(sidecar.config["interception"].get("accelerate_local")))
    direction = sidecar.role
    if "sidecar_kernel_redirects" in families:
        fig.redirects = _by_label(families["sidecar_kernel_redirects"], "sidecar_kernel_redirects_total",
                                  "direction").get(direction, 0)
    if "sidecar_kernel_bytes" in families:
        fig.kernel_bytes = _by_label(families["sidecar_kernel_bytes"], "sidecar_kernel_bytes_total",
                                     "direction")
    if "sidecar_kernel_drops" in families:
        fig.kernel_drops = _by_label(families["sidecar_kernel_drops"], "sidecar_kernel_drops_total", "reason")
    if "sidecar_kernel_accelerated_sockets" in families:
        fig.accelerated_sockets = sum(v for n, _, v in families["sidecar_kernel_accelerated_sockets"]
                                      if n == "sidecar_kernel_accelerated_sockets")
    return fig


# -- formatting ---------------------------------------------------------------------------

def _count(value):
    return "n/a" if value is None else "{:,}".format(int(value))


def _time(us):
    if us is None:
        return "-"
    return "%.0f us" % us if us < 1000 else "%.2f ms" % (us / 1000)


def _bytes(n):
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1000 or unit == "GB":
            return ("%.0f %s" if unit == "B" else "%.1f %s") % (n, unit)
        n /= 1000.0


def _kernel_bytes(fig):
    if fig.kernel_bytes is None:
        return "n/a"
    if not fig.kernel_bytes:
        return "0 B"
    return ", ".join("%s %s" % (d, _bytes(v)) for d, v in sorted(fig.kernel_bytes.items()))


def _drops(fig):
    if fig.kernel_drops is None:
        return "n/a"
    total = sum(fig.kernel_drops.values())
    if not total:
        return "0"
    return "%s (%s)" % (_count(total), ", ".join("%s %s" % (r, _count(v)) for r, v in
                                                  sorted(fig.kernel_drops.items()) if v))


def acceleration_text(fig, short=False):
    """Whether the app <-> sidecar hop of the pod skips the TCP/IP stack."""
    if fig.mode != "ebpf":
        return "off" if short else "off (an eBPF feature; interception is %s)" % fig.mode
    if not fig.accelerate_requested:
        return "off"
    if fig.accelerated_sockets is None:
        return "n/a" if short else "requested; n/a (this sidecar exports no sidecar_kernel_accelerated_sockets)"
    if short:
        return "on (%s)" % _count(fig.accelerated_sockets) if fig.accelerated_sockets > 0 else "0"
    peak = max(fig.accelerated_peak or 0, fig.accelerated_sockets)
    if peak > 0:
        return "on, up to %s sockets accelerated at once" % _count(peak)
    return "requested, but no socket was accelerated"


SIDECAR_HEAD = ("sidecar", "requests", "5xx", "interception", "redirects", "kernel B", "drops", "accel")


def _interception(fig):
    if fig.state != "active":
        return "%s (%s)" % (fig.mode, fig.state)
    if fig.mode == "ebpf":
        return "ebpf, %d progs" % fig.programs
    return fig.mode


def _sidecar_row(fig):
    kernel_bytes = "n/a" if fig.kernel_bytes is None else _bytes(sum(fig.kernel_bytes.values()))
    drops = "n/a" if fig.kernel_drops is None else _count(sum(fig.kernel_drops.values()))
    return ("pod %s %s" % (fig.pod, "out" if fig.role == "outbound" else "in"), _count(fig.requests),
            _count(fig.errors_5xx), _interception(fig), _count(fig.redirects), kernel_bytes, drops,
            acceleration_text(fig, short=True))


def table(rows, indent="  "):
    """Rows of cells as aligned text lines: the first column left-aligned, the rest right."""
    widths = [max(len(str(row[i])) for row in rows) for i in range(len(rows[0]))]
    return [indent + "  ".join(str(c).ljust(w) if i == 0 else str(c).rjust(w)
                               for i, (c, w) in enumerate(zip(row, widths))) for row in rows]


def sidecar_table(figures, indent="  "):
    """Both sidecars' figures as a table (header first)."""
    return table([SIDECAR_HEAD] + [_sidecar_row(f) for f in figures], indent)


class LiveView:
    """Once a second: the client's last interval and both sidecars' figures. A context
    manager: on a terminal it holds a rich Live display until it is left."""

    def __init__(self, duration, stream=None):
        self.duration = duration
        self.stream = stream or sys.stdout
        self.live = None
        self.last = (0.0, 0)                   # (elapsed, requests) of the previous report

    def __enter__(self):
        if self.stream.isatty():
            self.live = Live(console=Console(file=self.stream), auto_refresh=False)
            self.live.start()
        return self

    def __exit__(self, *exc):
        if self.live is not None:
            self.live.stop()                   # the last frame stays on the screen

    def update(self, report, figures):
        elapsed = report["elapsed"]
        seconds = elapsed - self.last[0]
        rate = (report["requests"] - self.last[1]) / seconds if seconds > 0 else 0
        self.last = (elapsed, report["requests"])
        iv = report.get("interval") or {}
        if self.live is not None:
            self.live.update(self._render(elapsed, report, rate, iv, figures), refresh=True)
            return
        side = ", ".join("%s %s (accel %s)" % (f.pod, _count(f.requests), acceleration_text(f, short=True))
                         for f in figures)
        self.stream.write(
            "  %4.0f s  requests %8s  %7s/s  p50 %9s  p99 %9s  errors %s  | sidecars: %s\n" % (
                elapsed, _count(report["requests"]), _count(rate), _time(iv.get("p50_us")),
                _time(iv.get("p99_us")), _count(report["errors"]), side))
        self.stream.flush()

    def _render(self, elapsed, report, rate, iv, figures):
        client = Table(title="client app, pod A -> pod B (last second)", title_justify="left")
        for col in ("requests", "req/s", "p50", "p90", "p99", "errors"):
            client.add_column(col, justify="right")
        client.add_row(_count(report["requests"]), _count(rate), _time(iv.get("p50_us")),
                       _time(iv.get("p90_us")), _time(iv.get("p99_us")), _count(report["errors"]))
        sidecars = Table(title="the sidecars' own figures (/stats, /metrics)", title_justify="left")
        for i, col in enumerate(SIDECAR_HEAD):
            sidecars.add_column(col, justify="left" if i == 0 else "right")
        for f in figures:
            sidecars.add_row(*_sidecar_row(f))
        parts = [Text("sidecar demo: %.0f s of %.0f s" % (elapsed, self.duration), style="bold"), client, sidecars]
        if report.get("last_error"):
            parts.append(Text("last client error: %s" % report["last_error"], style="red"))
        return Group(*parts)


def summary_lines(final, figures, mode, fallback_reason):
    """The closing summary: the client's whole run, each sidecar, the interception."""
    elapsed = final["elapsed"] or 1.0
    lines = [
        "summary: %s requests in %.1f s (%s/s), p50 %s, p90 %s, p99 %s, p99.9 %s, %s errors" % (
            _count(final["requests"]), elapsed, _count(final["requests"] / elapsed), _time(final.get("p50_us")),
            _time(final.get("p90_us")), _time(final.get("p99_us")), _time(final.get("p999_us")),
            _count(final["errors"])),
    ]
    lines += sidecar_table(figures)
    for f in figures:
        if f.kernel_bytes or f.kernel_drops:
            lines.append("  kernel, pod %s: bytes %s; drops %s" % (f.pod, _kernel_bytes(f), _drops(f)))
    if fallback_reason:
        lines.append("  interception: iptables (fallback: eBPF could not be used: %s)" % fallback_reason)
    else:
        lines.append("  interception: %s in both pods" % mode)
    for f in figures:
        lines.append("  acceleration, pod %s: %s" % (f.pod, acceleration_text(f)))
    if final.get("last_error"):
        lines.append("  last client error: %s" % final["last_error"])
    return lines
