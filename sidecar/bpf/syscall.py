"""A thin wrapper of bpf(2) for processes that must not import bcc (manager, CLI, tests).

Just what pinned objects need: open a pin, read and iterate a map, create a small map,
pin, create and detach links, and identify an object. `bpf_attr` is packed by hand at the
offsets of include/uapi/linux/bpf.h; every call raises OSError with the errno.
"""
import ctypes
import os
import platform
import struct

__all__ = [
    "obj_get", "obj_pin", "map_create", "map_lookup", "map_update", "map_delete", "map_keys",
    "link_create", "link_detach", "prog_info", "map_info", "link_info", "object_kind",
    "fdinfo", "possible_cpus", "prog_get_fd_by_id", "sum_percpu_u64",
    "BPF_MAP_TYPE_ARRAY", "BPF_MAP_TYPE_HASH", "BPF_MAP_TYPE_PERCPU_ARRAY",
    "map_items", "tcx_program_ids", "prog_test_run", "prog_load", "BPF_F_BEFORE",
]

_NR_BPF = {"x86_64": 321, "aarch64": 280, "arm64": 280}.get(platform.machine(), 321)

# commands
BPF_MAP_CREATE = 0
BPF_MAP_LOOKUP_ELEM = 1
BPF_MAP_UPDATE_ELEM = 2
BPF_MAP_DELETE_ELEM = 3
BPF_MAP_GET_NEXT_KEY = 4
BPF_OBJ_PIN = 6
BPF_OBJ_GET = 7
BPF_PROG_GET_FD_BY_ID = 13
BPF_OBJ_GET_INFO_BY_FD = 15
BPF_LINK_CREATE = 28
BPF_LINK_DETACH = 34

# map types used from Python
BPF_MAP_TYPE_HASH = 1
BPF_MAP_TYPE_ARRAY = 2
BPF_MAP_TYPE_PERCPU_HASH = 5
BPF_MAP_TYPE_PERCPU_ARRAY = 6
BPF_MAP_TYPE_LRU_HASH = 9
BPF_MAP_TYPE_LRU_PERCPU_HASH = 10
BPF_MAP_TYPE_LPM_TRIE = 11
BPF_F_NO_PREALLOC = 1
PERCPU_MAP_TYPES = {BPF_MAP_TYPE_PERCPU_HASH, BPF_MAP_TYPE_PERCPU_ARRAY,
                    BPF_MAP_TYPE_LRU_PERCPU_HASH}

ATTR_SIZE = 128       # larger than every part of bpf_attr used here; the rest is zero

_libc = ctypes.CDLL(None, use_errno=True)
_libc.syscall.restype = ctypes.c_long


def _bpf(cmd, attr):
    buf = ctypes.create_string_buffer(bytes(attr), ATTR_SIZE)
    ret = _libc.syscall(_NR_BPF, ctypes.c_int(cmd), buf, ctypes.c_uint(ATTR_SIZE))
    if ret < 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))
    return ret, buf


def _attr(*fields):
    """bytearray(ATTR_SIZE) with (offset, struct format, value) written in."""
    attr = bytearray(ATTR_SIZE)
    for offset, fmt, value in fields:
        struct.pack_into(fmt, attr, offset, value)
    return attr


def _addr(buf):
    return ctypes.addressof(buf)


def obj_get(path, flags=0):
    """A new fd for the object pinned at `path` (BPF_OBJ_GET)."""
    p = ctypes.create_string_buffer(os.fsencode(path))
    fd, _ = _bpf(BPF_OBJ_GET, _attr((0, "Q", _addr(p)), (12, "I", flags)))
    return fd


def obj_pin(fd, path):
    p = ctypes.create_string_buffer(os.fsencode(path))
    _bpf(BPF_OBJ_PIN, _attr((0, "Q", _addr(p)), (8, "I", fd)))


def map_create(map_type, key_size, value_size, max_entries, name=b"", flags=0):
    fd, _ = _bpf(BPF_MAP_CREATE, _attr((0, "I", map_type), (4, "I", key_size),
                                       (8, "I", value_size), (12, "I", max_entries),
                                       (16, "I", flags), (28, "16s", name[:15])))
    return fd


def possible_cpus():
    """Number of possible CPUs: the per-CPU value count of per-CPU maps."""
    with open("/sys/devices/system/cpu/possible") as f:
        total = 0
        for part in f.read().strip().split(","):
            lo, _, hi = part.partition("-")
            total += int(hi or lo) - int(lo) + 1
    return total


def _value_buffer(map_fd, value_size=None):
    info = map_info(map_fd)
    size = value_size or info["value_size"]
    if info["type"] in PERCPU_MAP_TYPES:
        size = ((size + 7) // 8 * 8) * possible_cpus()
    return ctypes.create_string_buffer(size)


def map_lookup(map_fd, key, value_size=None):
    """The value bytes for `key` (all CPUs' slots concatenated for per-CPU maps), or None."""
    k = ctypes.create_string_buffer(bytes(key), len(key))
    v = _value_buffer(map_fd, value_size)
    try:
        _bpf(BPF_MAP_LOOKUP_ELEM, _attr((0, "I", map_fd), (8, "Q", _addr(k)), (16, "Q", _addr(v))))
    except FileNotFoundError:
        return None
    return v.raw


def map_update(map_fd, key, value, flags=0):
    k = ctypes.create_string_buffer(bytes(key), len(key))
    v = ctypes.create_string_buffer(bytes(value), len(value))
    _bpf(BPF_MAP_UPDATE_ELEM, _attr((0, "I", map_fd), (8, "Q", _addr(k)), (16, "Q", _addr(v)),
                                    (24, "Q", flags)))


def map_delete(map_fd, key):
    k = ctypes.create_string_buffer(bytes(key), len(key))
    try:
        _bpf(BPF_MAP_DELETE_ELEM, _attr((0, "I", map_fd), (8, "Q", _addr(k))))
    except FileNotFoundError:
        return False
    return True


def map_keys(map_fd, key_size):
    """Every key of a hash-like map (snapshot semantics of BPF_MAP_GET_NEXT_KEY)."""
    keys = []
    cur = None
    nxt = ctypes.create_string_buffer(key_size)
    while True:
        attr = [(0, "I", map_fd), (16, "Q", _addr(nxt))]
        if cur is not None:
            attr.append((8, "Q", _addr(cur)))
        try:
            _bpf(BPF_MAP_GET_NEXT_KEY, _attr(*attr))
        except FileNotFoundError:
            return keys
        keys.append(nxt.raw)
        cur = ctypes.create_string_buffer(nxt.raw, key_size)


BPF_F_BEFORE = 1 << 3     # link_create flag (tcx): before every program on the hook


def link_create(prog_fd, target, attach_type, flags=0):
    """A bpf link attaching `prog_fd` to `target` (a cgroup directory fd or an ifindex);
    `flags` BPF_F_BEFORE puts a tcx program first on its hook."""
    fd, _ = _bpf(BPF_LINK_CREATE, _attr((0, "I", prog_fd), (4, "I", target),
                                        (8, "I", attach_type), (12, "I", flags)))
    return fd


def link_detach(link_fd):
    """Detaches a link now, whoever else still holds it (BPF_LINK_DETACH, 5.9+)."""
    _bpf(BPF_LINK_DETACH, _attr((0, "I", link_fd)))


def prog_get_fd_by_id(prog_id):
    """A new fd for the loaded program `prog_id` (to read its info)."""
    fd, _ = _bpf(BPF_PROG_GET_FD_BY_ID, _attr((0, "I", prog_id)))
    return fd


def sum_percpu_u64(raw):
    """The sum of a per-CPU u64 value as map_lookup returns it (one 8-byte slot per CPU)."""
    return sum(struct.unpack("=%dQ" % (len(raw) // 8), raw))


def _info(fd, size):
    info = ctypes.create_string_buffer(size)
    _bpf(BPF_OBJ_GET_INFO_BY_FD, _attr((0, "I", fd), (4, "I", size), (8, "Q", _addr(info))))
    return info.raw


def _name(raw):
    return raw.split(b"\0", 1)[0].decode(errors="replace")


def prog_info(fd):
    """{"type", "id", "name"} of a program (struct bpf_prog_info)."""
    raw = _info(fd, 80)
    ptype, pid = struct.unpack_from("II", raw, 0)
    return {"type": ptype, "id": pid, "name": _name(raw[64:80])}


def map_info(fd):
    """{"type", "id", "key_size", "value_size", "max_entries", "flags", "name"}."""
    raw = _info(fd, 40)
    mtype, mid, ks, vs, maxe, flags = struct.unpack_from("IIIIII", raw, 0)
    return {"type": mtype, "id": mid, "key_size": ks, "value_size": vs, "max_entries": maxe,
            "flags": flags, "name": _name(raw[24:40])}


BPF_LINK_TYPE_CGROUP = 3
BPF_LINK_TYPE_TCX = 11
BPF_LINK_TYPE_SOCKMAP = 14


def link_info(fd):
    """{"type", "id", "prog_id"} plus "cgroup_id"/"attach_type" (cgroup links),
    "ifindex"/"attach_type" (tcx links) or "map_id"/"attach_type" (sockmap links)."""
    raw = _info(fd, 64)
    ltype, lid, prog_id = struct.unpack_from("III", raw, 0)
    out = {"type": ltype, "id": lid, "prog_id": prog_id}
    if ltype == BPF_LINK_TYPE_CGROUP:
        out["cgroup_id"], out["attach_type"] = struct.unpack_from("QI", raw, 16)
    elif ltype == BPF_LINK_TYPE_TCX:
        out["ifindex"], out["attach_type"] = struct.unpack_from("II", raw, 16)
    elif ltype == BPF_LINK_TYPE_SOCKMAP:
        out["map_id"], out["attach_type"] = struct.unpack_from("II", raw, 16)
    return out


def object_kind(fd):
    """"prog", "map" or "link": what kind of bpf object `fd` is."""
    target = os.readlink("/proc/self/fd/%d" % fd)     # anon_inode:bpf-prog / bpf-map / bpf_link
    for kind in ("prog", "map", "link"):
        if target.endswith("bpf-" + kind) or target.endswith("bpf_" + kind):
            return kind
    raise ValueError("fd %d is not a bpf object (%s)" % (fd, target))


def fdinfo(fd):
    """/proc/self/fdinfo/<fd> as a dict of strings (what the kernel shows of the object)."""
    out = {}
    with open("/proc/self/fdinfo/%d" % fd) as f:
        for line in f:
            key, _, value = line.partition(":")
            out[key.strip()] = value.strip()
    return out


# -- reading whole maps, and the order of programs on a tcx hook ------------------------------

BPF_PROG_QUERY = 16
BPF_MAP_LOOKUP_BATCH = 24
BATCH_CHUNK = 1024


def map_items(map_fd, key_size, value_size=None):
    """[(key, value)] of every entry of a hash-like map (per-CPU values as map_lookup
    gives them), read with BPF_MAP_LOOKUP_BATCH: a few syscalls for the whole map. Where
    the kernel has no batch operation for the map type, one lookup per key."""
    value_len = len(_value_buffer(map_fd, value_size))
    keys = ctypes.create_string_buffer(key_size * BATCH_CHUNK)
    values = ctypes.create_string_buffer(value_len * BATCH_CHUNK)
    in_batch = ctypes.create_string_buffer(8)      # opaque position (a bucket index for hashes)
    out_batch = ctypes.create_string_buffer(8)
    items = []
    first = True
    while True:
        count = ctypes.c_uint32(BATCH_CHUNK)
        attr = _attr((0, "Q", 0 if first else _addr(in_batch)), (8, "Q", _addr(out_batch)),
                     (16, "Q", _addr(keys)), (24, "Q", _addr(values)), (32, "I", count.value),
                     (36, "I", map_fd))
        buf = ctypes.create_string_buffer(bytes(attr), ATTR_SIZE)
        ret = _libc.syscall(_NR_BPF, ctypes.c_int(BPF_MAP_LOOKUP_BATCH), buf, ctypes.c_uint(ATTR_SIZE))
        err = ctypes.get_errno() if ret < 0 else 0
        if ret < 0 and err in (22, 28, 95, 524):      # EINVAL, ENOSPC (a huge bucket), EOPNOTSUPP
            pairs = [(k, map_lookup(map_fd, k, value_size)) for k in map_keys(map_fd, key_size)]
            return [(k, v) for k, v in pairs if v is not None]
        if ret < 0 and err != 2:                             # ENOENT: the end (count may be > 0)
            raise OSError(err, os.strerror(err))
        got = struct.unpack_from("I", buf.raw, 32)[0]
        for i in range(got):
            items.append((keys.raw[i * key_size:(i + 1) * key_size],
                          values.raw[i * value_len:(i + 1) * value_len]))
        if ret < 0:
            return [(k, v) for k, v in items if v is not None]
        ctypes.memmove(in_batch, out_batch, 8)
        first = False


def tcx_program_ids(ifindex, attach_type):
    """The ids of the programs on a tcx hook of `ifindex` (in this network namespace), in
    the order they run (BPF_PROG_QUERY)."""
    ids = (ctypes.c_uint32 * 64)()
    _, buf = _bpf(BPF_PROG_QUERY, _attr((0, "I", ifindex), (4, "I", attach_type),
                                       (16, "Q", ctypes.addressof(ids)), (24, "I", 64)))
    count = struct.unpack_from("I", buf.raw, 24)[0]
    return list(ids[:count])


BPF_PROG_TEST_RUN = 10


def prog_test_run(prog_fd, data, repeat=1):
    """Runs a loaded program on `data` (for a TC program: an Ethernet frame) `repeat` times
    in the kernel, without attaching it (BPF_PROG_TEST_RUN); (its return value, the mean
    run time in ns). Its map writes are real: run it on an instance of your own."""
    buf_in = ctypes.create_string_buffer(bytes(data), len(data))
    buf_out = ctypes.create_string_buffer(len(data) + 256)
    _, buf = _bpf(BPF_PROG_TEST_RUN, _attr((0, "I", prog_fd), (8, "I", len(data)),
                                          (12, "I", len(buf_out)), (16, "Q", _addr(buf_in)),
                                          (24, "Q", _addr(buf_out)), (32, "I", repeat)))
    retval, = struct.unpack_from("I", buf.raw, 4)
    duration, = struct.unpack_from("I", buf.raw, 36)
    return struct.unpack("i", struct.pack("I", retval))[0], duration


BPF_PROG_LOAD = 5


def prog_load(prog_type, insns: bytes, name=b"", license=b"GPL"):
    """Loads raw eBPF instructions (8 bytes each) as a program of `prog_type`; its fd.
    For tiny fixed programs (a benchmark's empty baseline): everything real goes
    through bcc in the loader."""
    code = ctypes.create_string_buffer(insns, len(insns))
    lic = ctypes.create_string_buffer(license)
    fd, _ = _bpf(BPF_PROG_LOAD, _attr((0, "I", prog_type), (4, "I", len(insns) // 8), (8, "Q", _addr(code)),
                                      (16, "Q", _addr(lic)), (48, "16s", name[:15])))
    return fd
