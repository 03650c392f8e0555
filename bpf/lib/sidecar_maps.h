/* sidecar_maps.h: every map the interception programs share, defined once.
 *
 * All maps are pinned under SC_MAP_DIR (/sys/fs/bpf/sidecar/<instance>/maps/<name>) by
 * bcc's BPF_TABLE_PINNED: the first program file compiled creates and pins a map, the
 * next ones open the same pinned map, so the programs of one instance share state across
 * separately compiled files, and the manager reads the maps after the loader has exited.
 * Names carry the `sc_` prefix (the kernel keeps 15 characters). Mirrored in
 * sidecar/bpf/layout.py (MAPS); change both together.
 */
#ifndef SIDECAR_MAPS_H
#define SIDECAR_MAPS_H

#include "sidecar_common.h"
#include "sidecar_counters.h"

#define SC_PIN(name) SC_MAP_DIR "/" #name

/* Connections in flight between connect() and the handshake's end; LRU because a connect
 * that never completes leaves its entry behind. */
#define SC_ORIG_COOKIE_MAX 16384
/* Established redirected connections by the client's (local ip, local port). Sized for
 * every ephemeral port towards the outbound listener; LRU evicts the oldest, which belong
 * to long-closed connections (entries are overwritten when a port is reused). */
#define SC_ORIG_TUPLE_MAX 65536
#define SC_PORT_SET_MAX 256

/* socket cookie -> original destination (connect4/6 -> sockops) */
BPF_TABLE_PINNED("lru_hash", __u64, struct sc_endpoint, sc_orig_cookie, SC_ORIG_COOKIE_MAX,
                 SC_PIN(sc_orig_cookie));
/* client's local endpoint -> original destination (sockops -> getsockopt) */
BPF_TABLE_PINNED("lru_hash", struct sc_endpoint, struct sc_endpoint, sc_orig_tuple,
                 SC_ORIG_TUPLE_MAX, SC_PIN(sc_orig_tuple));
/* host-order port -> 1: interception.exclude_outbound_ports / exclude_inbound_ports. Maps
 * rather than -D lists so a config reload can change them without reloading programs. */
BPF_TABLE_PINNED("hash", __u16, __u8, sc_excl_out, SC_PORT_SET_MAX, SC_PIN(sc_excl_out));
BPF_TABLE_PINNED("hash", __u16, __u8, sc_excl_in, SC_PORT_SET_MAX, SC_PIN(sc_excl_in));
/* enum sc_counter -> per-CPU count */
BPF_TABLE_PINNED("percpu_array", __u32, __u64, sc_counters, SC_CNT_MAX, SC_PIN(sc_counters));

/* The sidecar's own cgroup, whose connects redirect_connect.c never rewrites: needed where
 * the intercepted cgroup holds the sidecar's (interception.cgroup: pod). Written by the
 * instance's owner when it loads or adopts the instance (sidecar/bpf/pod_cgroup.py); id 0:
 * nothing excluded. Mirrored in sidecar/bpf/layout.py (OWN_CGROUP). */
struct sc_own_cgroup {
    __u64 id;         /* cgroup v2 id (the cgroup directory's inode number) */
    __u32 level;      /* its depth below the root cgroup (root: 0) */
    __u32 pad;
};
/* 0 -> struct sc_own_cgroup */
BPF_TABLE_PINNED("array", __u32, struct sc_own_cgroup, sc_sidecar_cg, 1, SC_PIN(sc_sidecar_cg));

/* No map helpers here: bcc rewrites `map.lookup()` into the real helper call only in the
 * main source file (not in included headers, and it refuses macros), so each program file
 * defines the two-line helpers it uses (sc_count, sc_port_excluded_*) next to its code. */

#endif /* SIDECAR_MAPS_H */
