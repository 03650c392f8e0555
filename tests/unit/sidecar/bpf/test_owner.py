"""sidecar.bpf.state: who owns an instance, and whether that owner is still alive."""
import os
import subprocess

from sidecar.bpf.state import boot_id, default_instance, ns_inode, owner_liveness, proc_start_time
from sidecar.config import load_config_text


def _owner(pid, **kw):
    record = {"pid": pid, "start_time": proc_start_time(pid), "pidns": ns_inode("pid"), "boot_id": boot_id()}
    record.update(kw)
    return record


def test_a_running_owner_is_alive():
    assert owner_liveness(_owner(os.getpid())) == (True, "owner pid %d is running" % os.getpid())


def test_an_exited_owner_is_dead_also_when_its_pid_is_reused():
    p = subprocess.Popen(["true"])
    p.wait()
    gone = _owner(p.pid, start_time=123)
    assert owner_liveness(gone)[0] is False
    reused = _owner(os.getpid(), start_time=proc_start_time(os.getpid()) - 1)
    alive, why = owner_liveness(reused)
    assert alive is False and "belongs to another process" in why


def test_an_owner_from_another_boot_is_dead():
    assert owner_liveness(_owner(os.getpid(), boot_id="not-this-boot"))[0] is False


def test_an_owner_in_another_pid_namespace_cannot_be_judged():
    alive, why = owner_liveness(_owner(os.getpid(), pidns=1))
    assert alive is None and "another pid namespace" in why


def test_no_owner_record_is_dead():
    assert owner_liveness(None) == (False, "no owner record")


def test_default_instance_is_workload_and_network_namespace():
    cfg = load_config_text("workload: {name: reviews, namespace: default}\n")
    assert default_instance(cfg) == "default-reviews-%d" % ns_inode("net")
    named = load_config_text("interception: {instance: mine}\n")
    assert default_instance(named) == "mine"
