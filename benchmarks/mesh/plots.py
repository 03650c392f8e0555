"""PNG plots of a mesh result document (matplotlib, no display needed):

- <stem>-latency.png: p50/p90/p99/p99.9 per row at each open-loop rate (log scale), with
  the min-max over rounds as error bars;
- <stem>-cpu.png: CPU µs per request of both pods' proxies per row at each HTTP load,
  with the min-max over rounds.

`python -m benchmarks.mesh.plots RESULT.json` draws them again from a result file.
"""
import json
import sys
from pathlib import Path

__all__ = ["write_plots"]

PERCENTILES = (("p50", "p50"), ("p90", "p90"), ("p99", "p99"), ("p999", "p99.9"))
# One colour per row in every plot (matplotlib's tab10, in scenarios.SCENARIOS order).
ROW_COLOURS = {
    "direct": "#7f7f7f", "bpf-sidecar": "#1f77b4", "bpf-sidecar-ebpf": "#17becf",
    "bpf-sidecar-ebpf-accel": "#2ca02c", "bpf-sidecar-policy": "#9467bd", "bpf-sidecar-mtls": "#8c564b",
    "nginx": "#ff7f0e", "haproxy": "#d62728",
}


def _pyplot():
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    return plt


def _bar_group(ax, labels, series, ylabel, log=False):
    """series: [(name, [spread or None per label])]; grouped bars with min-max whiskers."""
    n = max(1, len(series))
    width = 0.8 / n
    for i, (name, spreads) in enumerate(series):
        xs = [j + (i - (n - 1) / 2) * width for j in range(len(labels))]
        med = [s["median"] if s else 0 for s in spreads]
        low = [max(0, s["median"] - s["min"]) if s else 0 for s in spreads]
        high = [max(0, s["max"] - s["median"]) if s else 0 for s in spreads]
        ax.bar(xs, med, width, yerr=[low, high], capsize=2, label=name, color=ROW_COLOURS.get(name))
    ax.set_xticks(range(len(labels)))
    ax.set_xticklabels(labels, fontsize=8)
    ax.set_ylabel(ylabel)
    if log:
        ax.set_yscale("log")
    ax.grid(axis="y", alpha=0.3)


def _title(document):
    m = document["machine"]
    return f"{m['hostname']} {document['started_at'][:10]}, {m['cores']} cores, kernel {m['kernel']}"


def _suptitle(fig, what, document):
    fig.suptitle(f"{what}\n{_title(document)}", fontsize=10)


def _latency_plot(plt, document, path):
    loads = [(n, l) for n, l in document["settings"]["loads"].items() if l["kind"] == "open"]
    if not loads:
        return None
    fig, axes = plt.subplots(1, len(loads), figsize=(max(7, 5 * len(loads)), 4.5), squeeze=False)
    for ax, (name, load) in zip(axes[0], loads):
        rows = document["summary"].get(name, {})
        labels = [label for _, label in PERCENTILES]
        series = [(row_name, [row.get(f"{key}_us") for key, _ in PERCENTILES]) for row_name, row in rows.items()]
        _bar_group(ax, labels, series, "latency (µs, log)", log=True)
        ax.set_title(f"open loop, {load['rate']} req/s", fontsize=10)
    axes[0][0].legend(fontsize=7)
    _suptitle(fig, "Latency per row, open loop, timed from each request's due time (min-max over rounds)", document)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def _cpu_plot(plt, document, path):
    loads = [n for n, l in document["settings"]["loads"].items() if l["kind"] in ("closed", "open")]
    rows = []
    for name in loads:
        for row_name in document["summary"].get(name, {}):
            if row_name != "direct" and row_name not in rows:
                rows.append(row_name)
    if not loads or not rows:
        return None
    fig, ax = plt.subplots(figsize=(max(7, 1.3 * len(loads)), 4.2))
    series = [(row_name, [document["summary"][load].get(row_name, {}).get("cpu_us_per_req") for load in loads])
              for row_name in rows]
    _bar_group(ax, loads, series, "CPU µs per request, both sidecars")
    ax.legend(fontsize=7)
    _suptitle(fig, "CPU per request of both pods' proxies (user+sys; min-max over rounds)", document)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def write_plots(stem, document):
    """Writes <stem>-latency.png and <stem>-cpu.png; returns the paths written."""
    plt = _pyplot()
    stem = Path(stem)
    written = []
    for suffix, draw in (("latency", _latency_plot), ("cpu", _cpu_plot)):
        path = draw(plt, document, stem.parent / f"{stem.name}-{suffix}.png")
        if path is not None:
            written.append(path)
    return written


if __name__ == "__main__":
    source = Path(sys.argv[1])
    for p in write_plots(source.with_suffix(""), json.loads(source.read_text())):
        print(f"wrote {p}")
