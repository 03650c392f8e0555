/* inbound_steer.c: inbound TCP to the pod reaches the sidecar's inbound listener, with the
 * original destination kept, and without NAT.
 *
 * Attached at ingress of the POD's interface (tcx: a pinned bpf link; never a host
 * interface). For each TCP packet whose destination port is not excluded:
 *   - a connection socket already exists for its 4-tuple (established, handshaking): the
 *     stack's own lookup will find the same socket, so nothing to do;
 *   - otherwise (no socket, a TIME_WAIT one, or only a listener such as the app's own on
 *     the same port) the packet is assigned with bpf_sk_assign to the inbound listener
 *     (wildcard address, port SC_IN_PORT), found with a socket lookup in the pod's network
 *     namespace (SO_REUSEPORT groups spread as usual). The connection it creates keeps the
 *     packet's destination as its local address, so the proxy's getsockname() on the
 *     accepted socket is the original destination (pod IP, app port): no map needed.
 * No inbound listener for the packet's family: pass (fail open, the app answers directly)
 * or drop (fail closed; counted in sc_drops as SC_DROP_NO_INBOUND_LISTENER).
 *
 * Returns TC_ACT_UNSPEC (tcx "next") except when dropping, so programs attached after this
 * one (counters, policy) still see every packet.
 *
 * Overhead: per TCP packet on the pod interface, header parsing and one socket lookup
 * (plus a second lookup and bpf_sk_assign for packets starting a connection). IPv6
 * packets with extension headers before TCP, and IPv4 fragments, pass untouched.
 * Kernel: bpf_sk_assign at TC ingress (5.7+), tcx links (6.6+).
 */
#include "sidecar_maps.h"

static __always_inline void sc_count(__u32 counter)
{
    __u64 *value = sc_counters.lookup(&counter);

    if (value)          /* always found for an in-range index; the verifier needs the check */
        *value += 1;    /* per-CPU slot: no atomic needed */
}

static __always_inline int sc_drop(__u32 reason)
{
    __u64 *count = sc_drops.lookup(&reason);

    if (count)
        *count += 1;
    return TC_ACT_SHOT;
}

static __always_inline int sc_port_excluded_in(__u16 port)
{
    return sc_excl_in.lookup(&port) != NULL;
}

static __always_inline int sc_is_listener(struct bpf_sock *sk)
{
    return sk->state == BPF_TCP_LISTEN;
}

/* The inbound listener for a packet addressed to tuple's daddr. The packet's own source
 * is tried first (it spreads SO_REUSEPORT groups); if that finds a connection that happens
 * to use the same source port towards the listener port, try again without it. */
static __always_inline struct bpf_sock *sc_in_listener(struct __sk_buff *skb,
                                                       struct bpf_sock_tuple *tuple, __u32 len)
{
    struct bpf_sock *sk;

    sk = bpf_sk_lookup_tcp(skb, tuple, len, BPF_F_CURRENT_NETNS, 0);
    if (!sk)
        return NULL;
    if (sc_is_listener(sk))
        return sk;
    bpf_sk_release(sk);
    return NULL;
}

static __always_inline int sc_steer(struct __sk_buff *skb, struct bpf_sock_tuple *tuple,
                                    __u32 len, int v6)
{
    struct bpf_sock *sk;
    long err;

    sk = bpf_skc_lookup_tcp(skb, tuple, len, BPF_F_CURRENT_NETNS, 0);
    if (sk) {
        int state = sk->state;

        bpf_sk_release(sk);
        if (state != BPF_TCP_LISTEN && state != BPF_TCP_TIME_WAIT)
            return SC_TCX_NEXT;      /* the stack finds this connection by itself */
    }

    if (v6)
        tuple->ipv6.dport = bpf_htons(SC_IN_PORT);
    else
        tuple->ipv4.dport = bpf_htons(SC_IN_PORT);
    sk = sc_in_listener(skb, tuple, len);
    if (!sk) {
        if (v6) {
            tuple->ipv6.saddr[0] = tuple->ipv6.saddr[1] = 0;
            tuple->ipv6.saddr[2] = tuple->ipv6.saddr[3] = 0;
            tuple->ipv6.sport = 0;
        } else {
            tuple->ipv4.saddr = 0;
            tuple->ipv4.sport = 0;
        }
        sk = sc_in_listener(skb, tuple, len);
    }
    if (!sk) {
        sc_count(SC_CNT_IN_NO_LISTENER);
        return SC_FAIL_OPEN ? SC_TCX_NEXT : sc_drop(SC_DROP_NO_INBOUND_LISTENER);
    }
    err = bpf_sk_assign(skb, sk, 0);
    bpf_sk_release(sk);      /* the skb holds its own reference once assigned */
    if (err == 0)
        sc_count(SC_CNT_IN_STEERED);
    return SC_TCX_NEXT;
}

int sc_inbound(struct __sk_buff *skb)
{
    void *data = (void *)(long)skb->data;
    void *data_end = (void *)(long)skb->data_end;
    struct bpf_sock_tuple tuple = {};
    struct ethhdr *eth = data;
    struct sc_tcphdr *tcp;
    __u16 dport;
    int v6;

    if ((void *)(eth + 1) > data_end)
        return SC_TCX_NEXT;
    if (eth->h_proto == bpf_htons(ETH_P_IP)) {
        struct iphdr *ip4 = (void *)(eth + 1);

        if ((void *)(ip4 + 1) > data_end || ip4->protocol != SC_IPPROTO_TCP)
            return SC_TCX_NEXT;
        if (ip4->frag_off & bpf_htons(0x3fff))   /* MF or a fragment offset */
            return SC_TCX_NEXT;
        tcp = (void *)ip4 + ip4->ihl * 4;
        if ((void *)(tcp + 1) > data_end)
            return SC_TCX_NEXT;
        tuple.ipv4.saddr = ip4->saddr;
        tuple.ipv4.daddr = ip4->daddr;
        tuple.ipv4.sport = tcp->source;
        tuple.ipv4.dport = tcp->dest;
        v6 = 0;
    } else if (eth->h_proto == bpf_htons(ETH_P_IPV6)) {
        struct ipv6hdr *ip6 = (void *)(eth + 1);

        if ((void *)(ip6 + 1) > data_end || ip6->nexthdr != SC_IPPROTO_TCP)
            return SC_TCX_NEXT;
        tcp = (void *)(ip6 + 1);
        if ((void *)(tcp + 1) > data_end)
            return SC_TCX_NEXT;
        __builtin_memcpy(tuple.ipv6.saddr, &ip6->saddr, sizeof(tuple.ipv6.saddr));
        __builtin_memcpy(tuple.ipv6.daddr, &ip6->daddr, sizeof(tuple.ipv6.daddr));
        tuple.ipv6.sport = tcp->source;
        tuple.ipv6.dport = tcp->dest;
        v6 = 1;
    } else {
        return SC_TCX_NEXT;
    }

    dport = bpf_ntohs(tcp->dest);
    if (dport == SC_IN_PORT)
        return SC_TCX_NEXT;          /* already addressed to the listener */
    if (sc_port_excluded_in(dport)) {
        if ((tcp->flags & (SC_TCP_SYN | SC_TCP_ACK)) == SC_TCP_SYN)
            sc_count(SC_CNT_IN_EXCLUDED);
        return SC_TCX_NEXT;
    }
    return sc_steer(skb, &tuple, v6 ? sizeof(tuple.ipv6) : sizeof(tuple.ipv4), v6);
}
