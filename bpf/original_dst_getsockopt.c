/* original_dst_getsockopt.c: answers getsockopt(SOL_IP, SO_ORIGINAL_DST) and
 * getsockopt(SOL_IPV6, IP6T_SO_ORIGINAL_DST) for the sidecar's sockets accepted on the
 * outbound listener, from sc_orig_tuple (filled by bpf/redirect_connect.c), so the proxy
 * reads the original destination exactly as it would under iptables REDIRECT
 * (fastpath/original_destination.py).
 *
 * Attached to the SIDECAR's cgroup. It runs after the kernel's own getsockopt handler for
 * every getsockopt() of the sidecar's processes, so everything that is not that one
 * question passes through untouched: the kernel's result and buffer stand, and optlen is
 * clamped for large options (a program sees at most one page of optval; leaving optlen
 * above that would make the kernel discard the real answer).
 *
 * Overhead: a few compares per getsockopt of the sidecar; one LRU lookup per accepted
 * outbound connection. Kernel: cgroup sockopt programs (5.3+).
 */
#include "sidecar_maps.h"

static __always_inline void sc_count(__u32 counter)
{
    __u64 *value = sc_counters.lookup(&counter);

    if (value)          /* always found for an in-range index; the verifier needs the check */
        *value += 1;    /* per-CPU slot: no atomic needed */
}

/* The accepted socket's peer: the client's local endpoint, the key sockops stored under. */
static __always_inline int sc_sockopt_peer(struct bpf_sock *sk, struct sc_endpoint *peer)
{
    /* dst_port is a network-order 16-bit field (bpf_sock, 5.19+ layout) */
    __be16 port = sk->dst_port;

    if (sk->family == SC_AF_INET) {
        sc_endpoint_set4(peer, sk->dst_ip4, port);
        return 1;
    }
    if (sk->family == SC_AF_INET6) {
        sc_endpoint_set6(peer, sk->dst_ip6[0], sk->dst_ip6[1], sk->dst_ip6[2], sk->dst_ip6[3],
                         port);
        return 1;
    }
    return 0;
}

static __always_inline int sc_answer_ip(struct bpf_sockopt *ctx, struct sc_endpoint *orig)
{
    struct sc_sockaddr_in *sin = ctx->optval;

    if (orig->family != SC_AF_INET)
        return 0;            /* cannot be said in a sockaddr_in */
    if ((void *)(sin + 1) > ctx->optval_end)
        return 0;            /* caller's buffer too small: the kernel's answer stands */
    sin->sin_family = SC_AF_INET;
    sin->sin_port = orig->port;
    sin->sin_addr = orig->ip6[3];
    __builtin_memset(sin->sin_zero, 0, sizeof(sin->sin_zero));
    ctx->optlen = sizeof(*sin);
    return 1;
}

static __always_inline int sc_answer_ipv6(struct bpf_sockopt *ctx, struct sc_endpoint *orig)
{
    struct sockaddr_in6 *sin6 = ctx->optval;

    if ((void *)(sin6 + 1) > ctx->optval_end)
        return 0;
    sin6->sin6_family = SC_AF_INET6;
    sin6->sin6_port = orig->port;
    sin6->sin6_flowinfo = 0;
    sin6->sin6_addr.in6_u.u6_addr32[0] = orig->ip6[0];
    sin6->sin6_addr.in6_u.u6_addr32[1] = orig->ip6[1];
    sin6->sin6_addr.in6_u.u6_addr32[2] = orig->ip6[2];
    sin6->sin6_addr.in6_u.u6_addr32[3] = orig->ip6[3];
    sin6->sin6_scope_id = 0;
    ctx->optlen = sizeof(*sin6);
    return 1;
}

/* Returns 1: the (possibly rewritten) result goes to the caller. 0 would mean EPERM. */
int sc_getsockopt(struct bpf_sockopt *ctx)
{
    struct sc_endpoint peer = {};
    struct sc_endpoint *orig;
    struct bpf_sock *sk;
    int level = ctx->level;

    if (ctx->optname != SC_SO_ORIGINAL_DST || (level != SC_SOL_IP && level != SC_SOL_IPV6))
        goto pass;
    sk = ctx->sk;
    if (!sk)
        goto pass;
    /* only sockets accepted on the outbound listener: their local port is its port */
    if (sk->src_port != SC_OUT_PORT || sk->protocol != SC_IPPROTO_TCP)
        goto pass;
    if (!sc_sockopt_peer(sk, &peer))
        goto pass;
    /* SOL_IP is an IPv4 socket's question, SOL_IPV6 an IPv6 socket's */
    if ((level == SC_SOL_IP) != (sk->family == SC_AF_INET))
        goto pass;
    orig = sc_orig_tuple.lookup(&peer);
    if (!orig) {
        sc_count(SC_CNT_ORIG_DST_UNKNOWN);
        goto pass;
    }
    if (level == SC_SOL_IP ? sc_answer_ip(ctx, orig) : sc_answer_ipv6(ctx, orig)) {
        ctx->retval = 0;     /* the kernel said ENOENT/ENOPROTOOPT without conntrack */
        sc_count(SC_CNT_ORIG_DST_ANSWERED);
        return 1;
    }
pass:
    if (ctx->optlen > SC_PAGE_SIZE)
        ctx->optlen = 0;     /* 0: use the kernel's full buffer, not our one-page view */
    return 1;
}
