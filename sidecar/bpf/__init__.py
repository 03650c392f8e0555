"""The kernel side of interception, as seen from Python.

    programs     the program families of bpf/ and where each program attaches; the load
                 plan and its -D flags (`cflags_for`): where a new family is registered
    loader       the short-lived child (`python -m sidecar.bpf.loader`): the only module
                 that imports bcc; compiles bpf/*.c, attaches, pins, exits
    preflight    what the loader refuses before touching the kernel, one line each
    layout       the C headers' structs, map names and counter table, mirrored once
    config_maps  maps filled from config (exclusions), by the loader and on reload
    syscall      a thin bpf(2) wrapper: pinned objects, maps, links, without bcc
    state        what an instance has pinned and attached, and its owner record
    cleanup      detach and unpin an instance, or every stale one
    status       `sidecar bpf status`, `sidecar bpf cleanup` and `sidecar bpf load`
    pod_cgroup   `interception.cgroup: pod`: the pod's cgroup, and the sidecar's own cgroup
                 the connect programs leave alone
    handover     the loader as an init container: the plan's fingerprint, and the
                 manager adopting what `sidecar bpf load` handed over

The manager's side of ebpf mode (running the loader, reload, status surfaces) is
sidecar.interception.ebpf.

Everything an instance owns lives under /sys/fs/bpf/sidecar/<instance>/. Attachments are
bpf links pinned there, so unpinning them is what detaches them, and a loader that dies
half way leaves no attachment behind (its unpinned links go with its file descriptors).

Loader exit codes (for the manager; see `sidecar.bpf.loader`):
"""
BPFFS_ROOT = "/sys/fs/bpf/sidecar"

EXIT_OK = 0
EXIT_CONFIG = 2        # bad or unsafe configuration (root cgroup, instance in use): refuse to start
EXIT_UNAVAILABLE = 3   # BPF not possible here (privileges, cgroup v2, headers, verifier, kernel):
                       # apply interception.fail (open: run without interception; closed: refuse)

__doc__ += """
    0  loaded, attached and pinned
    2  refused: bad or unsafe configuration; the manager refuses to start
    3  BPF unavailable here; the manager applies interception.fail
    other  loader bug (traceback on stderr); treat like 2
"""
