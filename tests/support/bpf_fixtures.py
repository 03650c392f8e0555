"""Fixture maps for the kernel collectors and readers: real BPF maps of the same types and
shapes as bpf/lib/sidecar_maps.h declares, created and pinned by the test itself under
/sys/fs/bpf/sidecar/<random instance>/maps (removed on exit), filled from Python. No
program is loaded: the collectors read exactly what they would read from the loader's
maps, and the test decides what is in them."""
import os
import secrets
import struct

from sidecar.bpf import BPFFS_ROOT, syscall
from sidecar.bpf.cleanup import remove_instance
from sidecar.bpf.layout import MAPS, TRAFFIC_VALUE, pack_traffic_key
from sidecar.bpf.state import instance_dir, maps_dir

# map name -> (type, flags), as sidecar_maps.h declares them
MAP_TYPES = {
    "sc_traffic": (syscall.BPF_MAP_TYPE_LRU_PERCPU_HASH, 0),
    "sc_drops": (syscall.BPF_MAP_TYPE_PERCPU_ARRAY, 0),
    "sc_svc_ports": (syscall.BPF_MAP_TYPE_ARRAY, 0),
    "sc_deny4": (syscall.BPF_MAP_TYPE_LPM_TRIE, syscall.BPF_F_NO_PREALLOC),
    "sc_deny6": (syscall.BPF_MAP_TYPE_LPM_TRIE, syscall.BPF_F_NO_PREALLOC),
    "sc_allow_in": (syscall.BPF_MAP_TYPE_HASH, 0),
    "sc_syn_bucket": (syscall.BPF_MAP_TYPE_LRU_HASH, 0),
    "sc_policy_cfg": (syscall.BPF_MAP_TYPE_ARRAY, 0),
    "sc_excl_in": (syscall.BPF_MAP_TYPE_HASH, 0),
    "sc_excl_out": (syscall.BPF_MAP_TYPE_HASH, 0),
}


class FixtureMaps:
    """`with FixtureMaps("sc_traffic", "sc_drops") as fx:` pins those maps; `fx.dir` is
    the map directory to hand to a collector or reader."""

    def __init__(self, *names):
        self.names = names
        self.path = instance_dir("t-fixture-" + secrets.token_hex(4), BPFFS_ROOT)
        self.dir = maps_dir(self.path)
        self.fds = {}

    def __enter__(self):
        os.makedirs(self.dir)
        try:
            for name in self.names:
                spec = MAPS[name]
                kind, flags = MAP_TYPES[name]
                fd = syscall.map_create(kind, spec.key_size, spec.value_size, spec.max_entries,
                                        name.encode(), flags)
                syscall.obj_pin(fd, os.path.join(self.dir, name))
                self.fds[name] = fd
        except BaseException:
            self.__exit__()
            raise
        return self

    def __exit__(self, *exc):
        for fd in self.fds.values():
            os.close(fd)
        self.fds = {}
        remove_instance(self.path)

    def percpu(self, *values_per_cpu, fmt="=Q"):
        """A per-CPU value: one slot per possible CPU (missing ones zero)."""
        size = struct.calcsize(fmt)
        slot = (size + 7) // 8 * 8
        out = bytearray(slot * syscall.possible_cpus())
        for cpu, value in enumerate(values_per_cpu):
            packed = struct.pack(fmt, *value) if isinstance(value, tuple) else struct.pack(fmt, value)
            out[cpu * slot:cpu * slot + size] = packed
        return bytes(out)

    def set_traffic(self, direction, peer, port, protocol, *per_cpu):
        """per_cpu: (bytes, packets) for CPU 0, 1, ..."""
        key = pack_traffic_key(direction, peer, port, protocol)
        syscall.map_update(self.fds["sc_traffic"], key, self.percpu(*per_cpu, fmt=TRAFFIC_VALUE.format))

    def delete_traffic(self, direction, peer, port, protocol):
        syscall.map_delete(self.fds["sc_traffic"], pack_traffic_key(direction, peer, port, protocol))

    def set_drops(self, index, *per_cpu):
        syscall.map_update(self.fds["sc_drops"], struct.pack("=I", index), self.percpu(*per_cpu))
