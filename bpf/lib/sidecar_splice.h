/* sidecar_splice.h: the maps of in-kernel splice (bpf/tunnel_splice.c), defined once.
 *
 * A worker hands a tunnel's two sockets to the kernel by writing them here (through
 * sidecar/bpf/syscall.py; the worker never imports bcc): first one sc_splice_ends entry
 * per socket, naming the other by cookie, then both sockets into sc_splice_socks (the
 * socket fd as the value). From then on sc_splice_verdict forwards what either socket
 * receives to the other's send queue. Entries of sc_splice_socks leave with their socket;
 * the worker deletes the sc_splice_ends entries when the tunnel ends.
 *
 * Pinned by the tunnel_splice family only. Mirrored in sidecar/bpf/layout.py (the splice
 * block: SPLICE_END, MAPS entries) and fastpath/splice.py; change them together.
 */
#ifndef SIDECAR_SPLICE_H
#define SIDECAR_SPLICE_H

#include "sidecar_common.h"

/* Two entries per tunnel. */
#define SC_SPLICE_MAX 65536

/* One side of a spliced tunnel, by the cookie of its socket. 24 bytes. */
struct sc_splice_end {
    __u64 peer;              /* the other socket's cookie: where this one's bytes go */
    __u64 bytes;             /* bytes received on this socket and handed to the peer */
    __u32 mode;              /* SC_SPLICE_FRESH, SC_SPLICE_KERNEL, SC_SPLICE_USER */
    __u32 pad;
};
/* Decided by the first bytes a socket receives after the hand-off: forwarded by the kernel
 * if the peer was in sc_splice_socks then, else left to userspace for good (the worker
 * reads them from the socket as before), and then the other direction too. A direction
 * never mixes the two, so bytes cannot overtake each other. */
#define SC_SPLICE_FRESH 0
#define SC_SPLICE_KERNEL 1
#define SC_SPLICE_USER 2

/* socket by cookie; the sk_skb program is attached to this map */
struct sc_splice_socks_table_t {
    __u64 key;
    __u64 leaf;
    int (*update)(__u64 *, __u64 *);
    int (*delete)(__u64 *);
    int (*sock_hash_update)(void *, void *, u64);
    int (*msg_redirect_hash)(void *, void *, u64);
    int (*sk_redirect_hash)(void *, void *, u64);
    u32 max_entries;
};
/* bcc's BPF_SOCKHASH cannot pin: the same table, with the pinned section name */
__attribute__((section("maps/sockhash:" SC_MAP_DIR "/sc_splice_socks")))
struct sc_splice_socks_table_t sc_splice_socks = { .max_entries = SC_SPLICE_MAX };
BPF_ANNOTATE_KV_PAIR(sc_splice_socks, __u64, __u64);

/* socket cookie -> its side of the tunnel */
BPF_TABLE_PINNED("hash", __u64, struct sc_splice_end, sc_splice_ends, SC_SPLICE_MAX,
                 SC_MAP_DIR "/sc_splice_ends");

#endif /* SIDECAR_SPLICE_H */
