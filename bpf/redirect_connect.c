/* redirect_connect.c: transparent outbound interception without iptables.
 *
 * Attached to the APP's cgroup (never the sidecar's, never the root cgroup), or with
 * interception.cgroup: pod to the POD's cgroup, which holds the sidecar's too: connects
 * from the sidecar's cgroup (sc_sidecar_cg) are then left alone (sidecar/bpf/pod_cgroup.py).
 *   sc_connect4 / sc_connect6 (cgroup/connect4, cgroup/connect6): a TCP connect() to a
 *     non-loopback destination whose port is not excluded is rewritten to the outbound
 *     listener; the original destination is remembered under the socket's cookie.
 *     IPv4 and v4-mapped destinations go to the IPv4 listener (127.0.0.1:15001), IPv6 ones
 *     to the IPv6 listener ([::1]:15001), so the proxy's accepted socket has the family
 *     of the original destination and SO_ORIGINAL_DST / IP6T_SO_ORIGINAL_DST can express it.
 *   sc_sockops (sockops, ACTIVE_ESTABLISHED): once the redirected connection is up, its
 *     original destination moves to sc_orig_tuple, keyed by the client's local ip:port:
 *     the one thing the proxy's accepted socket also knows (as its peer).
 * bpf/original_dst_getsockopt.c then answers getsockopt(SO_ORIGINAL_DST) from that map.
 *
 * Fail open (SC_FAIL_OPEN=1): when no outbound listener exists in the app's network
 * namespace (the sidecar is down), connect() is left alone instead of being refused.
 *
 * Overhead: one array lookup and one cgroup id read (the sidecar's own connects), one hash
 * lookup (excluded ports), one socket lookup (fail open) and one LRU update per outbound
 * connect; one LRU lookup + update + delete per established redirected
 * connection and one compare per other established connection. Nothing per packet.
 * Kernel: cgroup sock_addr and sockops programs (4.17+); bpf_sk_lookup_tcp in sock_addr
 * programs (5.2+); bpf_get_current_ancestor_cgroup_id in them (5.7+).
 */
#include "sidecar_maps.h"

static __always_inline void sc_count(__u32 counter)
{
    __u64 *value = sc_counters.lookup(&counter);

    if (value)          /* always found for an in-range index; the verifier needs the check */
        *value += 1;    /* per-CPU slot: no atomic needed */
}

static __always_inline int sc_port_excluded_out(__u16 port)
{
    return sc_excl_out.lookup(&port) != NULL;
}

/* Is the calling task the sidecar (in its cgroup, or one below it)? Compared at the
 * sidecar cgroup's depth, so a helper the sidecar runs in a child cgroup is the sidecar
 * too. Only in pod mode can the answer be yes: elsewhere the sidecar's cgroup is not below
 * the one these programs are attached to. */
static __always_inline int sc_from_sidecar(void)
{
    __u32 zero = 0;
    struct sc_own_cgroup *own = sc_sidecar_cg.lookup(&zero);

    if (!own || own->id == 0)
        return 0;
    return bpf_get_current_ancestor_cgroup_id(own->level) == own->id;
}

/* Is the outbound listener there? Only asked when failing open. */
static __always_inline int sc_out_listener4_up(struct bpf_sock_addr *ctx)
{
    struct bpf_sock_tuple tuple = {};
    struct bpf_sock *sk;

    tuple.ipv4.daddr = bpf_htonl(SC_OUT_IP4);
    tuple.ipv4.dport = bpf_htons(SC_OUT_PORT);
    sk = bpf_sk_lookup_tcp(ctx, &tuple, sizeof(tuple.ipv4), BPF_F_CURRENT_NETNS, 0);
    if (!sk)
        return 0;
    bpf_sk_release(sk);
    return 1;
}

static __always_inline int sc_out_listener6_up(struct bpf_sock_addr *ctx)
{
    struct bpf_sock_tuple tuple = {};
    struct bpf_sock *sk;

    tuple.ipv6.daddr[0] = bpf_htonl(SC_OUT_IP6_0);
    tuple.ipv6.daddr[1] = bpf_htonl(SC_OUT_IP6_1);
    tuple.ipv6.daddr[2] = bpf_htonl(SC_OUT_IP6_2);
    tuple.ipv6.daddr[3] = bpf_htonl(SC_OUT_IP6_3);
    tuple.ipv6.dport = bpf_htons(SC_OUT_PORT);
    sk = bpf_sk_lookup_tcp(ctx, &tuple, sizeof(tuple.ipv6), BPF_F_CURRENT_NETNS, 0);
    if (!sk)
        return 0;
    bpf_sk_release(sk);
    return 1;
}

static __always_inline void sc_remember(struct bpf_sock_addr *ctx, struct sc_endpoint *orig)
{
    __u64 cookie = bpf_get_socket_cookie(ctx);

    sc_orig_cookie.update(&cookie, orig);
    sc_count(SC_CNT_OUT_REDIRECTED);
}

/* A cgroup connect program returns 1 to let connect() proceed (with or without a
 * rewrite); 0 would fail it with EPERM, which this file never does. */
int sc_connect4(struct bpf_sock_addr *ctx)
{
    struct sc_endpoint orig = {};
    __be32 ip4 = ctx->user_ip4;
    /* user_port holds the network-order port in its low 16 bits */
    __be16 port = (__be16)ctx->user_port;

    if (ctx->type != SC_SOCK_STREAM || ctx->protocol != SC_IPPROTO_TCP)
        return 1;
    if (sc_ip4_is_loopback(ip4))     /* local hops, and the listener itself */
        return 1;
    if (sc_from_sidecar())           /* its upstream connections go where they were sent */
        return 1;
    if (sc_port_excluded_out(bpf_ntohs(port))) {
        sc_count(SC_CNT_OUT_EXCLUDED);
        return 1;
    }
    if (SC_FAIL_OPEN && !sc_out_listener4_up(ctx)) {
        sc_count(SC_CNT_OUT_NO_LISTENER);
        return 1;
    }
    sc_endpoint_set4(&orig, ip4, port);
    sc_remember(ctx, &orig);
    ctx->user_ip4 = bpf_htonl(SC_OUT_IP4);
    ctx->user_port = bpf_htons(SC_OUT_PORT);
    return 1;
}

int sc_connect6(struct bpf_sock_addr *ctx)
{
    struct sc_endpoint orig = {};
    __be16 port = (__be16)ctx->user_port;
    /* the ctx allows 4-byte reads of user_ip6[i] only: read each word once */
    __u32 w0 = ctx->user_ip6[0], w1 = ctx->user_ip6[1];
    __u32 w2 = ctx->user_ip6[2], w3 = ctx->user_ip6[3];

    if (ctx->type != SC_SOCK_STREAM || ctx->protocol != SC_IPPROTO_TCP)
        return 1;
    if (sc_from_sidecar())
        return 1;
    sc_endpoint_set6(&orig, w0, w1, w2, w3, port);
    if (orig.family == SC_AF_INET) {
        /* v4-mapped: tcp_v6_connect hands it to the IPv4 stack without running connect4 */
        if (sc_ip4_is_loopback(w3))
            return 1;
    } else if (w0 == 0 && w1 == 0 && w2 == 0 && w3 == bpf_htonl(1)) {
        return 1;                    /* ::1 */
    }
    if (sc_port_excluded_out(bpf_ntohs(port))) {
        sc_count(SC_CNT_OUT_EXCLUDED);
        return 1;
    }
    if (orig.family == SC_AF_INET) {
        if (SC_FAIL_OPEN && !sc_out_listener4_up(ctx)) {
            sc_count(SC_CNT_OUT_NO_LISTENER);
            return 1;
        }
        sc_remember(ctx, &orig);
        ctx->user_ip6[0] = 0;
        ctx->user_ip6[1] = 0;
        ctx->user_ip6[2] = bpf_htonl(0x0000ffff);
        ctx->user_ip6[3] = bpf_htonl(SC_OUT_IP4);
    } else {
        if (SC_FAIL_OPEN && !sc_out_listener6_up(ctx)) {
            sc_count(SC_CNT_OUT_NO_LISTENER);
            return 1;
        }
        sc_remember(ctx, &orig);
        ctx->user_ip6[0] = bpf_htonl(SC_OUT_IP6_0);
        ctx->user_ip6[1] = bpf_htonl(SC_OUT_IP6_1);
        ctx->user_ip6[2] = bpf_htonl(SC_OUT_IP6_2);
        ctx->user_ip6[3] = bpf_htonl(SC_OUT_IP6_3);
    }
    ctx->user_port = bpf_htons(SC_OUT_PORT);
    return 1;
}

/* What sockops needs of the established socket, read unconditionally: loads chosen per
 * family get merged by the compiler into one load through a computed ctx pointer, which
 * the verifier refuses. */
struct sc_sockops_view {
    __u32 family;
    __u32 local_ip4, local_ip6[4], local_port;      /* local_port: host order */
    __u32 remote_ip4, remote_ip6[4], remote_port;   /* remote_port: see below */
};

static __always_inline void sc_sockops_read(struct bpf_sock_ops *skops,
                                            struct sc_sockops_view *v)
{
    v->family = SC_CTX(skops->family);
    v->local_ip4 = SC_CTX(skops->local_ip4);
    v->local_ip6[0] = SC_CTX(skops->local_ip6[0]);
    v->local_ip6[1] = SC_CTX(skops->local_ip6[1]);
    v->local_ip6[2] = SC_CTX(skops->local_ip6[2]);
    v->local_ip6[3] = SC_CTX(skops->local_ip6[3]);
    v->local_port = SC_CTX(skops->local_port);
    v->remote_ip4 = SC_CTX(skops->remote_ip4);
    v->remote_ip6[0] = SC_CTX(skops->remote_ip6[0]);
    v->remote_ip6[1] = SC_CTX(skops->remote_ip6[1]);
    v->remote_ip6[2] = SC_CTX(skops->remote_ip6[2]);
    v->remote_ip6[3] = SC_CTX(skops->remote_ip6[3]);
    v->remote_port = SC_CTX(skops->remote_port);
}

static __always_inline int sc_sockops_to_listener(struct sc_sockops_view *v)
{
    /* remote_port: network-order port in the upper 16 bits on little-endian; ntohl fixes both */
    if (bpf_ntohl(v->remote_port) != SC_OUT_PORT)
        return 0;
    if (v->family == SC_AF_INET)
        return v->remote_ip4 == bpf_htonl(SC_OUT_IP4);
    if (sc_ip6_is_v4mapped(v->remote_ip6[0], v->remote_ip6[1], v->remote_ip6[2]))
        return v->remote_ip6[3] == bpf_htonl(SC_OUT_IP4);
    return v->remote_ip6[0] == bpf_htonl(SC_OUT_IP6_0) &&
           v->remote_ip6[1] == bpf_htonl(SC_OUT_IP6_1) &&
           v->remote_ip6[2] == bpf_htonl(SC_OUT_IP6_2) &&
           v->remote_ip6[3] == bpf_htonl(SC_OUT_IP6_3);
}

int sc_sockops(struct bpf_sock_ops *skops)
{
    struct sc_sockops_view v = {};
    struct sc_endpoint local = {};
    struct sc_endpoint *orig;
    __u64 cookie;

    if (SC_CTX(skops->op) != BPF_SOCK_OPS_ACTIVE_ESTABLISHED_CB)
        return 1;
    sc_sockops_read(skops, &v);
    if (!sc_sockops_to_listener(&v))
        return 1;
    /* the client's local endpoint, normalised like the accepted socket's peer */
    if (v.family == SC_AF_INET)
        sc_endpoint_set4(&local, v.local_ip4, bpf_htons((__u16)v.local_port));
    else
        sc_endpoint_set6(&local, v.local_ip6[0], v.local_ip6[1], v.local_ip6[2],
                         v.local_ip6[3], bpf_htons((__u16)v.local_port));
    cookie = bpf_get_socket_cookie(skops);
    orig = sc_orig_cookie.lookup(&cookie);
    if (!orig) {
        /* The app dialled the listener itself: make sure no entry left by an earlier
         * redirected connection from the same local port answers for this one. */
        sc_orig_tuple.delete(&local);
        return 1;
    }
    /* The entry is complete before the handshake's last ACK is sent, so before the
     * proxy can accept the connection and ask for its original destination. */
    sc_orig_tuple.update(&local, orig);
    sc_orig_cookie.delete(&cookie);
    sc_count(SC_CNT_OUT_TRACKED);
    return 1;
}
