"""benchmarks.kernel_datapath: medians over rounds, the target ratios and the report, from
fixture records (the measuring itself runs in `make bench`)."""
from benchmarks import kernel_datapath as kd


def _records():
    out = []
    for rnd, (inb, acc, spliced, direct) in enumerate([(20.0, 12.0, 900.0, 1000.0),
                                                       (22.0, 12.5, 850.0, 1100.0),
                                                       (21.0, 30.0, 700.0, 1050.0)], 1):
        out += [
            {"round": rnd, "row": "inbound", "load": "closed-c32-0", "error": None, "cpu_us_per_req": inb},
            {"round": rnd, "row": "inbound-accel", "load": "closed-c32-0", "error": None, "cpu_us_per_req": acc},
            {"round": rnd, "row": "passthrough-spliced", "load": "tcp", "error": None, "mb_per_s": spliced},
            {"round": rnd, "row": "direct", "load": "tcp", "error": None, "mb_per_s": direct},
        ]
    out.append({"round": 4, "row": "inbound-accel", "load": "closed-c32-0", "error": "wrk failed"})
    return out


def test_medians_skip_failed_rounds_and_targets_divide_medians():
    summary = kd.summarize(_records())
    assert summary[("inbound-accel", "closed-c32-0")]["rounds"] == 3
    assert summary[("inbound-accel", "closed-c32-0")]["cpu_us_per_req"] == {"median": 12.5, "min": 12.0, "max": 30.0}
    verdicts = {t["ratio_of"]: t for t in kd.judge(summary)}
    cpu = verdicts["inbound-accel / inbound at closed-c32-0"]
    assert round(cpu["ratio"], 3) == round(12.5 / 21.0, 3) and cpu["verdict"] == "PASS"
    splice = verdicts["passthrough-spliced / direct at tcp"]
    assert round(splice["ratio"], 3) == round(850.0 / 1050.0, 3) and splice["verdict"] == "PASS"
    assert verdicts["outbound-accel / outbound at closed-c32-0"]["verdict"] == "n.a."
    reference = verdicts["passthrough-userspace / direct at tcp"]
    assert reference["bound"] is None and reference["verdict"] == "n.a."


def test_the_report_shows_every_target_and_the_measured_rows():
    summary = kd.summarize(_records())
    doc = {"machine": {"hostname": "h", "cores": 2, "cpu_model": "cpu", "kernel": "6.18", "os": "Debian"},
           "started": "2026-12-01T00:00:00", "rounds": 3, "duration_s": 4.0, "loadavg_start": [1, 1, 1],
           "loadavg_end": [1, 1, 1], "summary": {"|".join(k): v for k, v in summary.items()},
           "targets": kd.judge(summary)}
    md = kd.markdown(doc)
    for t in kd.TARGETS:
        assert t[0] in md
    assert "| inbound, eBPF + accelerate_local | – | 12.5 (12.0–30.0) |" in md
    assert "| TCP passthrough, spliced in the kernel | 850 (700–900) |" in md


def test_outbound_rows_take_the_same_service_path_with_and_without_interception():
    class Pod:
        app_cgroup = type("Cg", (), {"path": "/sys/fs/cgroup/unified/bench/app"})()
        dev = "veth-c"
    rows = {v.name: v for v in kd.VARIANTS}
    intercepted, direct = rows["outbound"], rows["outbound-no-interception"]
    assert kd._sidecar_overlay(Pod, intercepted)["services"] == kd._sidecar_overlay(Pod, direct)["services"]
    assert kd._sidecar_overlay(Pod, direct)["interception"]["mode"] == "off"
    assert kd._sidecar_overlay(Pod, intercepted)["interception"]["mode"] == "ebpf"
    assert kd._load_options(intercepted) == (("Host: server.bench:80",), None)
    assert kd._load_options(direct) == (("Host: server.bench:80",), ("127.0.0.1", kd.OUTBOUND_PORT))
    assert kd._load_options(rows["inbound"]) == ((), None)
    assert "services" not in kd._sidecar_overlay(Pod, rows["inbound"])
