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

/* -- traffic counters and kernel policy (traffic_counters.c, kernel_policy.c) -------------
 * Mirrored in sidecar/bpf/layout.py (TRAFFIC_KEY, TRAFFIC_VALUE, POLICY_CONFIG, LPM keys,
 * and MAPS); change both together. */

#include "sidecar_drop_reasons.h"

/* Label sets of sidecar_kernel_bytes_total / _packets_total: every entry becomes two
 * Prometheus series, so the size is the per-pod series budget, not a memory question
 * (Prometheus' guidance: a few thousand series per target). 4096 entries hold a pod
 * talking to ~1000 peers on a few ports in both directions; past that the least recently
 * used entries are evicted, and the collector keeps what it last read of them (see
 * sidecar/metrics/kernel_traffic.py). Memory: 4096 x (value 16 B x possible CPUs + about
 * 100 B of key and element), about 0.5 MB on 2 CPUs, 8.8 MB on 128. */
#define SC_TRAFFIC_MAX 4096
/* Local ports the pod serves on (learned from the SYN-ACKs it sends, or listed in config),
 * as a bitmap of all 65536 ports: one array word per 64 ports, 8 KiB, so a lookup is an
 * array index (no hashing on the per-packet path) and nothing is ever evicted. */
#define SC_SVC_PORT_WORDS 1024
/* kernel.deny_cidrs, per family. */
#define SC_DENY_CIDRS_MAX 1024
/* SYN token buckets, one per source address (IPv6: per /64, what one host can hold).
 * A bucket matters only while its source sends SYNs faster than the rate; an evicted one
 * starts full again, as after a quiet spell. 16384 sources outlast any real client mix;
 * a flood from more (spoofed) sources than that is not a per-source problem (SYN cookies
 * are). About 1.5 MiB. */
#define SC_SYN_SOURCES_MAX 16384

#define SC_DIR_INBOUND 0      /* received by the pod (tcx ingress) */
#define SC_DIR_OUTBOUND 1     /* sent by the pod (tcx egress) */

/* One label set of the traffic counters. 20 bytes, no padding (keys compare bytewise). */
struct sc_traffic_key {
    __u32 peer[4];        /* the other end's address, network order, IPv4 as ::ffff:a.b.c.d */
    __be16 port;          /* the connection's service port (sc_service_port), 0 without ports */
    __u8 direction;       /* SC_DIR_INBOUND or SC_DIR_OUTBOUND */
    __u8 protocol;        /* IPPROTO_* */
};

struct sc_traffic_value {
    __u64 bytes;          /* IP bytes (header included) of every packet, GSO segments apart */
    __u64 packets;        /* packets on the wire: a GSO/GRO skb counts its segments */
};

/* The policy's scalar settings, from config (one array entry, rewritten on reload). */
struct sc_policy_config {
    __u64 syn_interval_ns;    /* 0: no SYN rate limit; else 1e9 / kernel.syn_rate_limit.per_source */
    __u64 syn_tolerance_ns;   /* (burst - 1) x syn_interval_ns: how far ahead a source may run */
    __u32 allow_ports;        /* 1: kernel.allow_inbound_ports is set (enforced) */
    __u32 deny4;              /* entries in sc_deny4 (0: the lookup is skipped) */
    __u32 deny6;              /* entries in sc_deny6 */
    __u32 pad;
};

struct sc_lpm4_key {
    __u32 prefixlen;
    __u32 addr;               /* network order */
};

struct sc_lpm6_key {
    __u32 prefixlen;
    __u32 addr[4];            /* network order */
};

/* Values of sc_allow_in. */
#define SC_PORT_ALLOWED 1     /* in kernel.allow_inbound_ports */
#define SC_PORT_SIDECAR 2     /* a sidecar port: always allowed, never SYN-limited */

/* (direction, peer, service port, protocol) -> bytes and packets, per CPU */
BPF_TABLE_PINNED("lru_percpu_hash", struct sc_traffic_key, struct sc_traffic_value, sc_traffic,
                 SC_TRAFFIC_MAX, SC_PIN(sc_traffic));
/* enum sc_drop_reason -> dropped packets, per CPU */
BPF_TABLE_PINNED("percpu_array", __u32, __u64, sc_drops, SC_DROP_MAX, SC_PIN(sc_drops));
/* port / 64 -> bit port % 64 set: the pod serves on that local port (only ports inside
 * the ephemeral range are ever looked up: below it every local port is a server's) */
BPF_TABLE_PINNED("array", __u32, __u64, sc_svc_ports, SC_SVC_PORT_WORDS, SC_PIN(sc_svc_ports));
/* kernel.deny_cidrs; LPM tries must be created without preallocation */
BPF_TABLE_PINNED("lpm_trie", struct sc_lpm4_key, __u8, sc_deny4, SC_DENY_CIDRS_MAX,
                 SC_PIN(sc_deny4), BPF_F_NO_PREALLOC);
BPF_TABLE_PINNED("lpm_trie", struct sc_lpm6_key, __u8, sc_deny6, SC_DENY_CIDRS_MAX,
                 SC_PIN(sc_deny6), BPF_F_NO_PREALLOC);
/* host-order port -> SC_PORT_*: kernel.allow_inbound_ports and the sidecar's own ports */
BPF_TABLE_PINNED("hash", __u16, __u8, sc_allow_in, SC_PORT_SET_MAX, SC_PIN(sc_allow_in));
/* source (IPv4 address, or IPv6 /64) -> the GCRA "theoretical arrival time" of its next SYN */
BPF_TABLE_PINNED("lru_hash", struct sc_endpoint, __u64, sc_syn_bucket, SC_SYN_SOURCES_MAX,
                 SC_PIN(sc_syn_bucket));
/* 0 -> struct sc_policy_config */
BPF_TABLE_PINNED("array", __u32, struct sc_policy_config, sc_policy_cfg, 1, SC_PIN(sc_policy_cfg));

#endif /* SIDECAR_MAPS_H */
