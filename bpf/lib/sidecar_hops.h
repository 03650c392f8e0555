/* sidecar_hops.h: the maps, records and counters of local-hop acceleration
 * (bpf/local_hops.c, interception.accelerate_local), defined once.
 *
 * A "hop" is one of the two loopback connections between the app and the sidecar:
 *   outbound hop: the app's socket -> the sidecar's outbound listener (after the connect
 *                 rewrite, or after iptables REDIRECT)
 *   inbound hop:  the sidecar's upstream socket -> the app at inbound.app
 * Both sockets of a hop go into sc_hop_socks; bpf/local_hops.c's sk_msg program then moves
 * each write straight into the peer socket's receive queue, skipping TCP/IP.
 *
 * Pinned like every other map (SC_MAP_DIR), but only by the local_hops family: instances
 * without accelerate_local do not have them. Mirrored in sidecar/bpf/layout.py (the
 * local-hop block: HOP_KEY, MAPS entries, HOP_COUNTERS); change both together.
 */
#ifndef SIDECAR_HOPS_H
#define SIDECAR_HOPS_H

#include "sidecar_common.h"

/* inbound.app, the inbound hop's server end: an endpoint as in struct sc_endpoint (IPv4 as
 * ::ffff:a.b.c.d, words in network order written as host-order numbers, like SC_OUT_IP6_*),
 * its port (host order) and family. The loader sets them from the config. */
#ifndef SC_APP_PORT
#define SC_APP_PORT 8080
#define SC_APP_FAMILY SC_AF_INET
#define SC_APP_IP6_0 0
#define SC_APP_IP6_1 0
#define SC_APP_IP6_2 0x0000ffff
#define SC_APP_IP6_3 0x7f000001
#endif

/* Sized for the connections of a busy pod: each hop holds two entries. */
#define SC_HOP_SOCKS_MAX 32768
/* Hops (and handshakes in flight); LRU because a connection can stop half way (the app
 * gone, a SYN never answered). A hop whose record was evicted goes on through TCP. */
#define SC_HOP_PAIRS_MAX 16384
/* Bytes one end may move into its peer's receive queue before the peer writes back. A
 * redirected write lands in the peer's queue whatever its size: the kernel applies no
 * receive window to it. A direction past this budget goes through TCP from then on, whose
 * window holds a sender back (a large upload to a slow upstream, a large download by a
 * slow reader); request and response traffic stays well under it. */
#define SC_HOP_UNANSWERED_MAX (4 << 20)

/* One TCP connection as one of its sockets sees it. The key of sc_hop_socks: each socket
 * is filed under its own (local, remote), as the sidecar sees the connection (after any
 * NAT), so a socket's peer is found under the same two endpoints swapped. 40 bytes, no
 * padding. */
struct sc_hop_key {
    struct sc_endpoint local;
    struct sc_endpoint remote;
};

/* A hop, keyed by the client's view (local = client endpoint, remote = server endpoint).
 * During the handshake the client side records the sequence numbers both ends started
 * from; the server side admits its own socket only if its connection started from the very
 * same numbers, so a hop is never paired with an unrelated connection that happens to
 * share an endpoint. Then it holds the two directions' unanswered bytes. */
struct sc_hop_pair {
    __u32 client_next;       /* the client's ISN + 1 (its snd_una once established) */
    __u32 server_next;       /* the server's ISN + 1 (the client's rcv_nxt) */
    __u32 stage;             /* SC_HOP_SYN_SEEN, SC_HOP_CLIENT_READY, SC_HOP_PAIRED */
    __u32 pad;
    __u64 unanswered[2];     /* bytes redirected by the client [0] / server [1] end since
                                the other end last wrote */
};
#define SC_HOP_SYN_SEEN 1     /* the outbound listener saw the SYN (client unknown yet) */
#define SC_HOP_CLIENT_READY 2 /* the client socket is in sc_hop_socks, numbers recorded */
#define SC_HOP_PAIRED 3       /* both sockets are in sc_hop_socks */

/* Per hop socket, in its socket-local storage. */
struct sc_hop_state {
    struct sc_hop_key pair;  /* its hop's key in sc_hop_pairs (the client's view) */
    __u32 side;              /* 0: the client end, 1: the server end */
    __u32 mode;              /* SC_HOP_FRESH, SC_HOP_REDIRECT, SC_HOP_STACK */
    __u32 counted;           /* 1 while counted in SC_HOP_CNT_SOCKETS_ADDED - _REMOVED */
    __u32 pad;
};
/* A socket's first write decides: redirect only if its peer is in the map then; a socket
 * that sent anything through TCP never redirects afterwards (its peer would read the
 * redirected bytes, queued apart, before the TCP ones still in its receive queue). The
 * other way is safe, and happens once a direction is over its budget or its peer is gone:
 * the peer reads what was redirected first, then the TCP bytes. */
#define SC_HOP_FRESH 0
#define SC_HOP_REDIRECT 1
#define SC_HOP_STACK 2

/* The counters of this family, per CPU in sc_hop_counters. ABI with userspace (append
 * only, never renumber); mirrored in sidecar/bpf/layout.py (HOP_COUNTERS). The
 * sidecar_kernel_accelerated_sockets gauge is SOCKETS_ADDED - SOCKETS_REMOVED. */
enum sc_hop_counter {
    SC_HOP_CNT_SOCKETS_ADDED = 0,     /* a socket went into sc_hop_socks */
    SC_HOP_CNT_SOCKETS_REMOVED = 1,   /* one of those closed (and left the map) */
    SC_HOP_CNT_OUTBOUND_HOPS = 2,     /* app -> outbound listener pairs completed */
    SC_HOP_CNT_INBOUND_HOPS = 3,      /* sidecar -> inbound.app pairs completed */
    SC_HOP_CNT_MISMATCH = 4,          /* a server socket whose handshake did not match */
    SC_HOP_CNT_INSERT_FAILED = 5,     /* sc_hop_socks refused a socket (full, taken) */
    SC_HOP_CNT_MSGS_REDIRECTED = 6,   /* writes moved into the peer's receive queue */
    SC_HOP_CNT_BYTES_REDIRECTED = 7,  /* their bytes */
    SC_HOP_CNT_STAYED_ON_STACK = 8,   /* sockets whose first write found no peer */
    SC_HOP_CNT_OVER_BUDGET = 9,       /* directions moved to TCP: SC_HOP_UNANSWERED_MAX */
    SC_HOP_CNT_MAX = 10,
};

/* socket (in sc_hop_socks) by its own key; the sk_msg program is attached to this map */
struct sc_hop_socks_table_t {
    struct sc_hop_key key;
    __u64 leaf;              /* 8 bytes: a lookup from userspace answers the socket cookie */
    int (*update)(struct sc_hop_key *, __u64 *);
    int (*delete)(struct sc_hop_key *);
    int (*sock_hash_update)(void *, void *, u64);
    int (*msg_redirect_hash)(void *, void *, u64);
    int (*sk_redirect_hash)(void *, void *, u64);
    u32 max_entries;
};
/* bcc's BPF_SOCKHASH cannot pin: the same table, with the pinned section name */
__attribute__((section("maps/sockhash:" SC_MAP_DIR "/sc_hop_socks")))
struct sc_hop_socks_table_t sc_hop_socks = { .max_entries = SC_HOP_SOCKS_MAX };
BPF_ANNOTATE_KV_PAIR(sc_hop_socks, struct sc_hop_key, __u64);

/* client's view of a connection -> its handshake, then its unanswered bytes */
BPF_TABLE_PINNED("lru_hash", struct sc_hop_key, struct sc_hop_pair, sc_hop_pairs,
                 SC_HOP_PAIRS_MAX, SC_MAP_DIR "/sc_hop_pairs");
/* enum sc_hop_counter -> per-CPU count */
BPF_TABLE_PINNED("percpu_array", __u32, __u64, sc_hop_counters, SC_HOP_CNT_MAX,
                 SC_MAP_DIR "/sc_hop_counters");
/* per hop socket: its hop and how its writes go. Freed with the socket; not pinned (only
 * these programs read it). */
BPF_SK_STORAGE(sc_hop_state, struct sc_hop_state);

#endif /* SIDECAR_HOPS_H */
