"""sidecar.bpf.handover: what the plan's fingerprint covers, and how a handed-over
instance's owner record is judged (no kernel needed)."""
import os
import time
from dataclasses import replace

from sidecar.bpf.handover import fingerprint
from sidecar.bpf.programs import Plan
from sidecar.bpf.state import boot_id, ns_inode, owner_liveness, proc_start_time


def _plan(**kw):
    plan = Plan(instance="default-reviews-pod42", app_cgroup="pod", interface="eth0",
                outbound=("127.0.0.1", 15001), inbound_port=15006, fail_open=True,
                exclude_outbound=[53], exclude_inbound=[15021, 15090])
    return replace(plan, **kw)


def test_the_fingerprint_is_stable_and_ignores_what_config_maps_hold():
    assert fingerprint(_plan()) == fingerprint(_plan())
    assert fingerprint(_plan()) == fingerprint(_plan(exclude_outbound=[53, 5432], exclude_inbound=[]))


def test_the_fingerprint_changes_with_what_is_compiled_in_or_where_it_attaches():
    base = fingerprint(_plan())
    for change in ({"fail_open": False}, {"outbound": ("127.0.0.1", 16001)}, {"inbound_port": 16006},
                   {"interface": None}, {"interface": "eth1"}, {"app_cgroup": "/sys/fs/cgroup/pod-x"},
                   {"instance": "other"}):
        assert fingerprint(_plan(**change)) != base, change


def test_the_fingerprint_covers_the_bpf_sources(tmp_path, monkeypatch):
    import shutil
    import sidecar.bpf.handover as handover
    from sidecar.bpf.programs import BPF_DIR
    copy = tmp_path / "bpf"
    shutil.copytree(BPF_DIR, copy)
    monkeypatch.setattr(handover, "BPF_DIR", str(copy))
    same = fingerprint(_plan())
    (copy / "lib" / "sidecar_common.h").write_text((copy / "lib" / "sidecar_common.h").read_text() + "\n")
    assert fingerprint(_plan()) != same


def _handed_over(**kw):
    record = {"pid": 1, "start_time": 1, "pidns": 1, "boot_id": boot_id(), "created": time.time(),
              "handed_over": True, "app_cgroup": "/", "fingerprint": "f"}
    record.update(kw)
    return record


def test_a_handed_over_instance_waits_for_its_sidecar_while_its_cgroup_lives(tmp_path):
    alive, why = owner_liveness(_handed_over(app_cgroup=str(tmp_path)))
    assert alive is None and "handed over by the loader (pid 1)" in why and "waiting for its sidecar" in why


def test_a_handed_over_instance_whose_cgroup_is_gone_is_stale(tmp_path):
    alive, why = owner_liveness(_handed_over(app_cgroup=str(tmp_path / "gone")))
    assert alive is False and "is gone" in why
    assert owner_liveness(_handed_over(boot_id="another boot"))[0] is False


def test_an_owner_in_another_pid_namespace_is_gone_with_its_cgroup(tmp_path):
    record = {"pid": os.getpid(), "start_time": proc_start_time(os.getpid()), "pidns": 1,
              "boot_id": boot_id(), "cgroup": str(tmp_path / "container-that-was")}
    alive, why = owner_liveness(record)
    assert alive is False and "its cgroup" in why and "gone" in why
    # a cgroup that still holds processes: the owner may live (cannot be told by pid)
    (tmp_path / "live").mkdir()
    (tmp_path / "live" / "cgroup.events").write_text("populated 1\nfrozen 0\n")
    assert owner_liveness(dict(record, cgroup=str(tmp_path / "live")))[0] is None
    (tmp_path / "live" / "cgroup.events").write_text("populated 0\nfrozen 0\n")
    assert owner_liveness(dict(record, cgroup=str(tmp_path / "live")))[0] is False
    assert ns_inode("pid") != 1
