"""sidecar.demo.view and client_app: the figures the demo shows, read from a sidecar's
/stats and /metrics (n/a for a family it does not export), and the client's percentiles."""
from types import SimpleNamespace

from sidecar.demo.client_app import percentiles
from sidecar.demo.view import acceleration_text, read_sidecar, sidecar_table, summary_lines

STATS = {"totals": {"requests": 1200, "5xx": 0},
         "interception": {"mode": "ebpf", "state": "active", "links": [{}, {}, {}, {}, {}]}}

REDIRECTS_ONLY = """\
# HELP sidecar_kernel_redirects_total Connections redirected to the sidecar by the kernel
# TYPE sidecar_kernel_redirects_total counter
sidecar_kernel_redirects_total{direction="inbound",mode="ebpf"} 3.0
sidecar_kernel_redirects_total{direction="outbound",mode="ebpf"} 8.0
"""

WITH_KERNEL_FAMILIES = REDIRECTS_ONLY + """\
# HELP sidecar_kernel_bytes_total Bytes counted in the kernel
# TYPE sidecar_kernel_bytes_total counter
sidecar_kernel_bytes_total{direction="egress",peer="10.240.0.2",port="8080",protocol="tcp"} 1000.0
sidecar_kernel_bytes_total{direction="egress",peer="10.240.0.3",port="8080",protocol="tcp"} 500.0
sidecar_kernel_bytes_total{direction="ingress",peer="10.240.0.2",port="8080",protocol="tcp"} 4000.0
# HELP sidecar_kernel_drops_total Packets dropped in the kernel
# TYPE sidecar_kernel_drops_total counter
# HELP sidecar_kernel_accelerated_sockets Sockets on the local-hop sockhash
# TYPE sidecar_kernel_accelerated_sockets gauge
sidecar_kernel_accelerated_sockets 16.0
"""


def _sidecar(metrics, role="outbound", accelerate=True, stats=STATS):
    return SimpleNamespace(role=role, stats=lambda: stats, metrics_text=lambda: metrics,
                           config={"interception": {"mode": "ebpf", "accelerate_local": accelerate}})


def test_families_a_sidecar_does_not_export_are_not_available():
    fig = read_sidecar(_sidecar(REDIRECTS_ONLY))
    assert (fig.pod, fig.requests, fig.mode, fig.programs) == ("A", 1200, "ebpf", 5)
    assert fig.redirects == 8                       # its own direction only
    assert fig.kernel_bytes is None and fig.kernel_drops is None and fig.accelerated_sockets is None
    assert acceleration_text(fig) == ("requested; n/a (this sidecar exports no "
                                      "sidecar_kernel_accelerated_sockets)")
    row = sidecar_table([fig])[1].split()
    assert row[:5] == ["pod", "A", "out", "1,200", "0"] and row[-3:] == ["n/a", "n/a", "n/a"]


def test_exported_kernel_families_are_shown_by_direction_and_reason():
    fig = read_sidecar(_sidecar(WITH_KERNEL_FAMILIES, role="inbound"))
    assert fig.pod == "B" and fig.redirects == 3
    assert fig.kernel_bytes == {"egress": 1500.0, "ingress": 4000.0}
    assert fig.kernel_drops == {}                   # exported, nothing dropped
    assert fig.accelerated_sockets == 16
    assert acceleration_text(fig, short=True) == "on (16)"
    fig.accelerated_sockets, fig.accelerated_peak = 0, 16    # the run is over: the peak counts
    assert acceleration_text(fig) == "on, up to 16 sockets accelerated at once"
    lines = summary_lines({"elapsed": 2.0, "requests": 1200, "errors": 0, "p50_us": 900.0, "p90_us": 1500.0,
                           "p99_us": 4000.0, "p999_us": 9000.0}, [fig], "ebpf", None)
    assert lines[0] == ("summary: 1,200 requests in 2.0 s (600/s), p50 900 us, p90 1.50 ms, p99 4.00 ms, "
                        "p99.9 9.00 ms, 0 errors")
    assert "  kernel, pod B: bytes egress 1.5 KB, ingress 4.0 KB; drops 0" in lines
    assert "  interception: ebpf in both pods" in lines


def test_acceleration_off_without_ebpf_or_when_not_asked():
    fig = read_sidecar(_sidecar(WITH_KERNEL_FAMILIES, accelerate=False))
    assert acceleration_text(fig) == "off"
    iptables = dict(STATS, interception={"mode": "iptables", "state": "active"})
    fig = read_sidecar(_sidecar(REDIRECTS_ONLY, stats=iptables))
    assert acceleration_text(fig) == "off (an eBPF feature; interception is iptables)"
    lines = summary_lines({"elapsed": 1.0, "requests": 1, "errors": 0}, [fig], "iptables", "no bpffs")
    assert "  interception: iptables (fallback: eBPF could not be used: no bpffs)" in lines


def test_client_percentiles_are_nearest_rank_in_microseconds():
    values = [i / 1e6 for i in range(1, 1001)]      # 1 .. 1000 us
    assert percentiles(values, (50, 90, 99, 99.9)) == {"p50_us": 500.0, "p90_us": 900.0, "p99_us": 990.0,
                                                       "p999_us": 999.0}
    assert percentiles([]) == {"p50_us": None, "p90_us": None, "p99_us": None}
