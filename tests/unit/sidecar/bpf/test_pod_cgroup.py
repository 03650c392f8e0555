"""sidecar.bpf.pod_cgroup: `interception.cgroup: pod` as paths (no kernel needed)."""
from sidecar.bpf.pod_cgroup import cgroup_level, is_pod, pod_of

MOUNT = "/sys/fs/cgroup"
POD = MOUNT + "/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod1234.slice"


def test_pod_is_the_parent_of_the_sidecars_cgroup():
    assert pod_of(POD + "/cri-containerd-abcd.scope", MOUNT) == POD
    assert pod_of("/sys/fs/cgroup/unified/sc-t-1/sidecar", "/sys/fs/cgroup/unified") == \
        "/sys/fs/cgroup/unified/sc-t-1"


def test_pod_is_never_the_root_cgroup():
    assert pod_of(MOUNT + "/sidecar", MOUNT) is None      # parent is the root
    assert pod_of(MOUNT, MOUNT) is None                   # the process is in the root
    assert pod_of("/elsewhere/x/y", MOUNT) is None        # not below the mount


def test_levels_count_from_the_root_as_the_kernel_does():
    assert cgroup_level(MOUNT, MOUNT) == 0
    assert cgroup_level(MOUNT + "/", MOUNT) == 0
    assert cgroup_level(POD, MOUNT) == 3
    assert cgroup_level(POD + "/cri-containerd-abcd.scope", MOUNT + "/") == 4


def test_only_the_word_pod_means_pod_mode():
    assert is_pod("pod") and not is_pod("/sys/fs/cgroup/pod") and not is_pod(None)
