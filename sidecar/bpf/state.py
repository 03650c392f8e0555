"""What an instance has pinned and attached, and who owns it.

    /sys/fs/bpf/sidecar/<instance>/
        owner              a one-entry array map holding the owner record (JSON)
        maps/<name>        the programs' maps (pinned by bcc's BPF_TABLE_PINNED)
        links/<function>   one bpf link per attached program: unpinning detaches

bpffs holds only bpf objects, so the owner record is a small pinned map rather than a
file. It names the process whose life the kernel state belongs to (the manager: pid and
start time, so a reused pid is not mistaken for it), its pid and network namespaces and
cgroup, and what was attached where. An instance whose owner is gone is stale: the next
start replaces it, and `sidecar bpf cleanup --stale` removes it. An instance whose owner
lives is never touched by another process. An owner in another pid namespace (a sidecar
container before its restart) cannot be looked up by pid: it is gone when its cgroup is
(container runtimes remove a container's cgroup with it).

An instance loaded by `sidecar bpf load` (an init container) is "handed over": its record
says so (`handed_over`, and the plan's `fingerprint`) and names the loader, which has
exited; it waits for the sidecar that adopts it (sidecar.bpf.handover), and is stale only
once the cgroup it is attached to is gone (the pod ended without a sidecar).

No bcc here: the manager, the CLI and the tests read instances through sidecar.bpf.syscall.
"""
from __future__ import annotations

import json
import os
import re
import time

from sidecar.bpf import BPFFS_ROOT, syscall
from sidecar.bpf.layout import ATTACH_TYPE_NAMES, COUNTERS, MAPS, PROG_TYPE_NAMES
from sidecar.bpf.programs import program_names

OWNER_VALUE_SIZE = 2048
NO_OWNER_GRACE = 30.0     # seconds a directory without an owner record may be a loader at work
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]{0,63}$")     # bpffs refuses "." in names


# -- paths ---------------------------------------------------------------------------------

def instance_dir(name: str, root: str = BPFFS_ROOT) -> str:
    if not _NAME.match(name):
        raise ValueError("invalid instance name %r" % name)
    return os.path.join(root, name)


def maps_dir(path: str) -> str:
    return os.path.join(path, "maps")


def links_dir(path: str) -> str:
    return os.path.join(path, "links")


def owner_path(path: str) -> str:
    return os.path.join(path, "owner")


def list_instances(root: str = BPFFS_ROOT) -> list:
    try:
        return sorted(n for n in os.listdir(root) if _NAME.match(n)
                      and os.path.isdir(os.path.join(root, n)))
    except FileNotFoundError:
        return []


# -- process identity --------------------------------------------------------------------------

def ns_inode(kind: str, pid="self") -> int:
    """Inode of a namespace of a process (/proc/PID/ns/KIND), e.g. "net", "pid"."""
    return os.stat("/proc/%s/ns/%s" % (pid, kind)).st_ino


def proc_start_time(pid: int):
    """The process's start time in clock ticks since boot (/proc/PID/stat field 22), or None."""
    try:
        with open("/proc/%d/stat" % pid) as f:
            fields = f.read().rsplit(")", 1)[1].split()
    except (FileNotFoundError, ProcessLookupError, IndexError):
        return None
    if fields[0] in ("Z", "X"):
        return None                      # exited, not yet reaped: as good as gone
    return int(fields[19])


def boot_id() -> str:
    with open("/proc/sys/kernel/random/boot_id") as f:
        return f.read().strip()


def default_instance(cfg) -> str:
    """<namespace>-<name>-<netns inode>: unique per pod on a node (one sidecar per network
    namespace), and the same again when the sidecar restarts in the same pod, so a restart
    after a crash finds its own stale state. With `interception.cgroup: pod`,
    <namespace>-<name>-pod<pod cgroup id> instead: one instance per attach point, the same
    for the init container and the sidecar, and also after the pod's sandbox (and network
    namespace) is recreated, so the programs the old sandbox's sidecar left on the pod's
    cgroup are found and replaced rather than left running next to the new ones."""
    if cfg.interception.instance:
        return cfg.interception.instance
    w = cfg.workload
    name = "%s-%s-%d" % (w.namespace, w.name, ns_inode("net"))
    pod = _pod_cgroup_here(cfg.interception.cgroup)
    if pod is not None:
        name = "%s-%s-pod%d" % (w.namespace, w.name, os.stat(pod).st_ino)
    return re.sub(r"[^A-Za-z0-9_-]", "_", name)[:64]


def _pod_cgroup_here(cgroup):
    """The pod's cgroup as this process sees it (`interception.cgroup: pod`), or None."""
    from sidecar.bpf.pod_cgroup import is_pod, pod_of
    from sidecar.bpf.preflight import cgroup2_mount, own_cgroup
    if not is_pod(cgroup):
        return None
    try:
        mount = cgroup2_mount()
        mine = own_cgroup(mount) if mount else None
    except OSError:
        return None
    return pod_of(mine, mount) if mine else None


# -- the owner record ----------------------------------------------------------------------------

def owner_record(pid: int, **facts) -> dict:
    """The owner record of process `pid` (which must be alive), with `facts` added."""
    record = {"pid": pid, "start_time": proc_start_time(pid), "pidns": ns_inode("pid", pid),
              "netns": ns_inode("net", pid), "cgroup": _cgroup_of(pid), "boot_id": boot_id(),
              "created": time.time()}
    record.update(facts)
    return record


def _cgroup_of(pid: int):
    from sidecar.bpf.preflight import cgroup2_mount, own_cgroup
    try:
        mount = cgroup2_mount()
        return own_cgroup(mount, pid) if mount else None
    except OSError:
        return None


def write_owner(path: str, record: dict):
    """Creates and pins `path`/owner holding `record`."""
    data = json.dumps(record, sort_keys=True).encode()
    if len(data) >= OWNER_VALUE_SIZE:
        raise ValueError("owner record too large (%d bytes)" % len(data))
    fd = syscall.map_create(syscall.BPF_MAP_TYPE_ARRAY, 4, OWNER_VALUE_SIZE, 1, b"sc_owner")
    try:
        syscall.map_update(fd, b"\0\0\0\0", data.ljust(OWNER_VALUE_SIZE, b"\0"))
        syscall.obj_pin(fd, owner_path(path))
    finally:
        os.close(fd)


def update_owner(path: str, record: dict):
    """Replaces the owner record of the instance at `path` in place (one map write: a
    reader sees the old record or the new one)."""
    data = json.dumps(record, sort_keys=True).encode()
    if len(data) >= OWNER_VALUE_SIZE:
        raise ValueError("owner record too large (%d bytes)" % len(data))
    fd = syscall.obj_get(owner_path(path))
    try:
        syscall.map_update(fd, b"\0\0\0\0", data.ljust(OWNER_VALUE_SIZE, b"\0"))
    finally:
        os.close(fd)


def read_owner(path: str):
    """The owner record of the instance at `path`, or None (none pinned, or unreadable)."""
    try:
        fd = syscall.obj_get(owner_path(path))
    except OSError:
        return None
    try:
        raw = syscall.map_lookup(fd, b"\0\0\0\0")
    finally:
        os.close(fd)
    try:
        return json.loads(raw.rstrip(b"\0"))
    except (ValueError, AttributeError):
        return None


def owner_liveness(owner, path: str = None):
    """(alive, reason). `alive` is True, False, or None when it cannot be told (the owner
    lives in another pid namespace): callers treat None as alive and leave it alone."""
    if owner is None:
        if path is not None:
            try:
                age = time.time() - os.stat(path).st_mtime
            except FileNotFoundError:
                return False, "gone"
            if age < NO_OWNER_GRACE:
                return None, "no owner record yet (a loader may be at work)"
        return False, "no owner record"
    pid = owner.get("pid")
    if "boot_id" in owner and owner["boot_id"] != boot_id():
        return False, "owner pid %s ran before the last boot" % pid
    if owner.get("handed_over"):
        return _handed_over_liveness(owner)
    if owner.get("pidns") != ns_inode("pid"):
        cgroup = owner.get("cgroup")
        if cgroup and not _populated(cgroup):
            return False, "owner pid %s (another pid namespace) is gone: its cgroup %s is %s" % (
                pid, cgroup, "empty" if os.path.isdir(cgroup) else "gone")
        return None, "owner pid %s is in another pid namespace" % pid
    start = proc_start_time(pid)
    if start is None:
        return False, "owner pid %s has exited" % pid
    if start != owner.get("start_time"):
        return False, "owner pid %s has exited (the pid now belongs to another process)" % pid
    return True, "owner pid %s is running" % pid


def _populated(cgroup: str) -> bool:
    """Whether a cgroup v2 directory exists and holds a process (cgroup.events)."""
    try:
        with open(os.path.join(cgroup, "cgroup.events")) as f:
            return any(line.split() == ["populated", "1"] for line in f)
    except FileNotFoundError:
        return False
    except OSError:
        return True          # cannot tell: assume it does


def _handed_over_liveness(owner):
    """A handed-over instance waits for its sidecar while the cgroup it is attached to
    lives (None: not for another process to remove); once that is gone, so is the pod."""
    loaded = "handed over by the loader (pid %s) at %s" % (
        owner.get("pid"), time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(owner.get("created", 0))))
    cgroup = owner.get("app_cgroup")
    if cgroup and not os.path.isdir(cgroup):
        return False, "%s, but its cgroup %s is gone" % (loaded, cgroup)
    return None, "%s, waiting for its sidecar" % loaded


# -- what is pinned ---------------------------------------------------------------------------------

def _listdir(path):
    try:
        return sorted(os.listdir(path))
    except FileNotFoundError:
        return []


def _cgroup_target(owner, cgroup_id):
    for key in ("app_cgroup", "sidecar_cgroup"):
        path = (owner or {}).get(key)
        if path:
            try:
                if os.stat(path).st_ino == cgroup_id:
                    return {"cgroup": path, "cgroup_id": cgroup_id}
            except OSError:
                pass
    return {"cgroup": None, "cgroup_id": cgroup_id}


def read_links(path: str, owner=None) -> list:
    """Every pinned link: its program, where it is attached, and whether it still is."""
    names = program_names()
    out = []
    for function in _listdir(links_dir(path)):
        entry = {"function": function, "family": names[function][0].name if function in names else None}
        try:
            fd = syscall.obj_get(os.path.join(links_dir(path), function))
        except OSError as e:
            entry["error"] = e.strerror
            out.append(entry)
            continue
        try:
            info = syscall.link_info(fd)
        finally:
            os.close(fd)
        entry.update({"link_id": info["id"], "prog_id": info["prog_id"],
                      "attach_type": ATTACH_TYPE_NAMES.get(info.get("attach_type"), info.get("attach_type"))})
        if "cgroup_id" in info:
            entry.update(_cgroup_target(owner, info["cgroup_id"]))
            entry["attached"] = info["cgroup_id"] != 0
        elif "ifindex" in info:
            entry["ifindex"] = info["ifindex"]
            entry["interface"] = (owner or {}).get("interface") if info["ifindex"] == (owner or {}).get("ifindex") else None
            entry["attached"] = info["ifindex"] != 0
        elif "map_id" in info:
            entry["map_id"] = info["map_id"]
            entry["map"] = names[function][1].target_map if function in names else None
            entry["attached"] = info["map_id"] != 0
        try:
            pfd = syscall.prog_get_fd_by_id(info["prog_id"])
            try:
                prog = syscall.prog_info(pfd)
            finally:
                os.close(pfd)
            entry["program"] = {"id": prog["id"], "name": prog["name"],
                                "type": PROG_TYPE_NAMES.get(prog["type"], prog["type"])}
        except OSError:
            entry["program"] = None
        out.append(entry)
    return out


def _map_fill(fd, info):
    if info["type"] in (syscall.BPF_MAP_TYPE_ARRAY, syscall.BPF_MAP_TYPE_PERCPU_ARRAY):
        return info["max_entries"]
    return len(syscall.map_keys(fd, info["key_size"]))


def _map_memory(fd):
    """Kernel memory the map takes (fdinfo's memlock: its real usage on 6.x kernels)."""
    try:
        return int(syscall.fdinfo(fd).get("memlock", 0))
    except (OSError, ValueError):
        return None


def read_maps(path: str, fill: bool = True) -> list:
    out = []
    for name in _listdir(maps_dir(path)):
        entry = {"name": name, "holds": MAPS[name].kind if name in MAPS else None}
        try:
            fd = syscall.obj_get(os.path.join(maps_dir(path), name))
        except OSError as e:
            entry["error"] = e.strerror
            out.append(entry)
            continue
        try:
            info = syscall.map_info(fd)
            entry.update({"id": info["id"], "max_entries": info["max_entries"],
                          "memory_bytes": _map_memory(fd)})
            if fill:
                entry["entries"] = _map_fill(fd, info)
        finally:
            os.close(fd)
        out.append(entry)
    return out


def read_counters(path: str) -> dict:
    """The interception counters (enum sc_counter), summed over CPUs; {} if not pinned."""
    try:
        fd = syscall.obj_get(os.path.join(maps_dir(path), "sc_counters"))
    except OSError:
        return {}
    try:
        out = {}
        for index, name in enumerate(COUNTERS):
            raw = syscall.map_lookup(fd, index.to_bytes(4, "little"))
            out[name] = syscall.sum_percpu_u64(raw) if raw else 0
        return out
    finally:
        os.close(fd)


def read_port_set(path: str, name: str) -> list:
    """The ports in a pinned port set (sc_excl_out, sc_excl_in)."""
    fd = syscall.obj_get(os.path.join(maps_dir(path), name))
    try:
        return sorted(int.from_bytes(k, "little") for k in syscall.map_keys(fd, 2))
    finally:
        os.close(fd)


def kernel_tables(path: str) -> dict:
    """The traffic counters (summary), drops by reason and the enforced kernel policy of
    the instance at `path`; keys absent where those families are not loaded."""
    from sidecar.bpf.policy import read_policy
    from sidecar.bpf.traffic import read_drops, read_traffic, traffic_summary
    out = {}
    rows = read_traffic(maps_dir(path))
    if rows is not None:
        out["traffic"] = traffic_summary(rows)
    drops = read_drops(maps_dir(path))
    if drops:
        out["drops"] = drops
    policy = read_policy(maps_dir(path))
    if policy:
        out["policy"] = policy
    return out


def describe_instance(name: str, root: str = BPFFS_ROOT, fill: bool = True) -> dict:
    """The whole state of one instance, as `sidecar bpf status` shows it."""
    path = instance_dir(name, root)
    owner = read_owner(path)
    alive, why = owner_liveness(owner, path)
    if alive is None and (owner or {}).get("handed_over"):
        state = "handed_over"
    else:
        state = "live" if alive else "unknown" if alive is None else "stale"
    out = {"instance": name, "path": path, "owner": owner, "state": state,
           "owner_status": why, "links": read_links(path, owner),
           "maps": read_maps(path, fill), "counters": read_counters(path),
           "local_hops": read_hop_counters(path)}
    out.update(kernel_tables(path))
    return out


# -- local-hop acceleration ---------------------------------------------------------------------

def read_hop_counters(path: str) -> dict:
    """The local-hop counters (enum sc_hop_counter) summed over CPUs, plus
    "accelerated_sockets" (sockets in sc_hop_socks now); {} if the family is not loaded."""
    from sidecar.bpf.layout import HOP_COUNTERS
    try:
        fd = syscall.obj_get(os.path.join(maps_dir(path), "sc_hop_counters"))
    except OSError:
        return {}
    try:
        out = {}
        for index, name in enumerate(HOP_COUNTERS):
            raw = syscall.map_lookup(fd, index.to_bytes(4, "little"))
            out[name] = syscall.sum_percpu_u64(raw) if raw else 0
    finally:
        os.close(fd)
    out["accelerated_sockets"] = max(0, out["hop_sockets_added"] - out["hop_sockets_removed"])
    return out
