/* sidecar_packet.h: one parse of a packet at TC (tcx) on the pod interface, shared by the
 * traffic counters and the kernel policy, and the rule that names a packet's service port.
 *
 * No maps here (bcc rewrites map calls only in the main source file): where the rule
 * needs a map answer (is this local port a learned server port?), the program file looks
 * it up and passes the answer in.
 */
#ifndef SIDECAR_PACKET_H
#define SIDECAR_PACKET_H

#include "sidecar_common.h"

#define SC_IPPROTO_UDP 17
#define SC_IPPROTO_ICMP 1
#define SC_IPPROTO_ICMPV6 58
#define SC_ETH_HLEN 14

/* IPv6 extension headers walked before the transport header. Linux accepts longer
 * chains; past this many the packet's ports are unknown (pkt.l4_unparsed), which the
 * policy treats as a drop when it needs the ports (SC_DROP_L4_UNPARSED). */
#define SC_IPV6_EXT_MAX 6

/* Bytes pulled into the skb's linear area when a header is not all there: Ethernet, IPv6
 * with a few extension headers, a TCP header with options. */
#define SC_PARSE_LINEAR 128

/* The pod's ephemeral port range starts here (net.ipv4.ip_local_port_range of the pod's
 * network namespace, read by the loader: -DSC_EPHEMERAL_LOW). Client sockets of the pod
 * take their local port from that range, so a local port below it is a server port. */
#ifndef SC_EPHEMERAL_LOW
#define SC_EPHEMERAL_LOW 32768
#endif

struct sc_packet {
    __u32 saddr[4];     /* network order; IPv4 as ::ffff:a.b.c.d */
    __u32 daddr[4];
    __be16 sport;       /* network order; 0 without has_ports */
    __be16 dport;
    __u8 family;        /* SC_AF_INET or SC_AF_INET6 */
    __u8 protocol;      /* the transport protocol, after IPv6 extension headers */
    __u8 tcp_flags;     /* TCP only */
    __u8 has_ports;     /* TCP or UDP header found (not in a non-first fragment) */
    __u8 l4_unparsed;   /* TCP/UDP expected but its header not found (see SC_IPV6_EXT_MAX) */
    __u32 l3_len;       /* the IP packet: IP header to the end (the skb without Ethernet) */
    __u32 hdr_len;      /* IP + extension + transport header: what every GSO segment repeats */
};

static __always_inline int sc_ipv6_is_ext(__u8 nexthdr)
{
    /* hop-by-hop, routing, fragment, AH, destination options, mobility, HIP, shim6 */
    return nexthdr == 0 || nexthdr == 43 || nexthdr == 44 || nexthdr == 51 || nexthdr == 60 ||
           nexthdr == 135 || nexthdr == 139 || nexthdr == 140;
}

/* The IP packet's own length where it is known and within the skb: a frame padded to
 * Ethernet's 60-byte minimum by a NIC carries bytes that are not the packet's. A GSO skb's
 * header says the whole super-packet's length, the same as the skb's; 0 (IPv4 BIG TCP)
 * leaves the skb's length. */
static __always_inline void sc_set_l3_len(struct sc_packet *pkt, __u32 ip_len)
{
    if (ip_len && ip_len < pkt->l3_len)
        pkt->l3_len = ip_len;
}

/* Outcome of one parse attempt over the skb's linear area. */
#define SC_PARSED 0
#define SC_NOT_IP -1
#define SC_NOT_LINEAR 1      /* a header ends past the linear area: pull, then parse again */

/* The transport header at `l4`: ports, flags, header length. */
static __always_inline int sc_parse_l4(struct sc_packet *pkt, void *l4, void *data_end,
                                       int last_try)
{
    if (pkt->protocol == SC_IPPROTO_TCP) {
        struct sc_tcphdr *tcp = l4;

        if ((void *)(tcp + 1) > data_end)
            goto short_header;
        pkt->sport = tcp->source;
        pkt->dport = tcp->dest;
        pkt->tcp_flags = tcp->flags;
        pkt->hdr_len += (tcp->doff_res >> 4) * 4;
        pkt->has_ports = 1;
    } else if (pkt->protocol == SC_IPPROTO_UDP) {
        __be16 *udp = l4;           /* source, dest, length, check */

        if ((void *)(udp + 4) > data_end)
            goto short_header;
        pkt->sport = udp[0];
        pkt->dport = udp[1];
        pkt->hdr_len += 8;
        pkt->has_ports = 1;
    }
    return SC_PARSED;
short_header:
    if (!last_try)
        return SC_NOT_LINEAR;
    pkt->l4_unparsed = 1;           /* truncated: the stack drops it anyway */
    return SC_PARSED;
}

static __always_inline int sc_parse_linear(struct __sk_buff *skb, struct sc_packet *pkt,
                                           int last_try)
{
    void *data = (void *)(long)skb->data;
    void *data_end = (void *)(long)skb->data_end;
    struct ethhdr *eth = data;

    if ((void *)(eth + 1) > data_end)
        return last_try ? SC_NOT_IP : SC_NOT_LINEAR;
    pkt->l3_len = skb->len - SC_ETH_HLEN;     /* narrowed to the IP length below */

    if (eth->h_proto == bpf_htons(ETH_P_IP)) {
        struct iphdr *ip4 = (void *)(eth + 1);
        __u32 ihl;

        if ((void *)(ip4 + 1) > data_end)
            return last_try ? SC_NOT_IP : SC_NOT_LINEAR;
        ihl = ip4->ihl * 4;
        if (ihl < sizeof(*ip4))
            return SC_NOT_IP;       /* malformed: the stack drops it */
        pkt->family = SC_AF_INET;
        pkt->protocol = ip4->protocol;
        pkt->saddr[2] = pkt->daddr[2] = bpf_htonl(0x0000ffff);
        pkt->saddr[3] = ip4->saddr;
        pkt->daddr[3] = ip4->daddr;
        pkt->hdr_len = ihl;
        sc_set_l3_len(pkt, bpf_ntohs(ip4->tot_len));
        if (ip4->frag_off & bpf_htons(0x1fff))
            return SC_PARSED;       /* a non-first fragment: no transport header */
        return sc_parse_l4(pkt, (void *)ip4 + ihl, data_end, last_try);
    }
    if (eth->h_proto == bpf_htons(ETH_P_IPV6)) {
        struct ipv6hdr *ip6 = (void *)(eth + 1);
        void *cur;
        __u8 nexthdr;

        if ((void *)(ip6 + 1) > data_end)
            return last_try ? SC_NOT_IP : SC_NOT_LINEAR;
        pkt->family = SC_AF_INET6;
        __builtin_memcpy(pkt->saddr, &ip6->saddr, 16);
        __builtin_memcpy(pkt->daddr, &ip6->daddr, 16);
        pkt->hdr_len = sizeof(*ip6);
        if (ip6->payload_len)       /* 0: a jumbogram (BIG TCP): the skb's length stands */
            sc_set_l3_len(pkt, sizeof(*ip6) + bpf_ntohs(ip6->payload_len));
        nexthdr = ip6->nexthdr;
        cur = (void *)(ip6 + 1);
#pragma unroll
        for (int i = 0; i < SC_IPV6_EXT_MAX; i++) {
            __u8 *ext = cur;
            __u32 ext_len;

            if (!sc_ipv6_is_ext(nexthdr))
                break;
            if ((void *)(ext + 8) > data_end) {  /* every extension header is >= 8 bytes */
                if (!last_try)
                    return SC_NOT_LINEAR;
                pkt->protocol = nexthdr;
                pkt->l4_unparsed = 1;
                return SC_PARSED;
            }
            if (nexthdr == 44) {                 /* fragment: offset in bytes 2-3 */
                if (((ext[2] << 8) | ext[3]) & 0xfff8) {
                    pkt->protocol = ext[0];
                    pkt->hdr_len += 8;
                    return SC_PARSED;            /* a non-first fragment */
                }
                ext_len = 8;
            } else if (nexthdr == 51) {
                ext_len = (ext[1] + 2) * 4;      /* AH counts 4-byte units, minus 2 */
            } else {
                ext_len = (ext[1] + 1) * 8;
            }
            nexthdr = ext[0];
            cur += ext_len;
            pkt->hdr_len += ext_len;
        }
        pkt->protocol = nexthdr;
        if (sc_ipv6_is_ext(nexthdr)) {
            pkt->l4_unparsed = 1;                /* longer than SC_IPV6_EXT_MAX */
            return SC_PARSED;
        }
        return sc_parse_l4(pkt, cur, data_end, last_try);
    }
    return SC_NOT_IP;
}

/* Parses `skb` (Ethernet first, as on a veth) into `pkt` (zeroed by the caller).
 * SC_PARSED: an IP packet, with or without ports; SC_NOT_IP: not IP (ARP, ...) or a
 * malformed IP header, left to the stack. Headers are read in place; only when one ends
 * past the skb's linear area (a driver that puts just the Ethernet header there) is the
 * skb pulled, once, and parsed again. */
static __always_inline int sc_parse(struct __sk_buff *skb, struct sc_packet *pkt)
{
    __u32 len = skb->len;
    int r = sc_parse_linear(skb, pkt, 0);

    if (r != SC_NOT_LINEAR)
        return r;
    __builtin_memset(pkt, 0, sizeof(*pkt));
    bpf_skb_pull_data(skb, len < SC_PARSE_LINEAR ? len : SC_PARSE_LINEAR);
    return sc_parse_linear(skb, pkt, 1);
}

static __always_inline int sc_tcp_syn(const struct sc_packet *pkt)
{
    /* A connection request: SYN without ACK (a SYN-ACK answers one). */
    return pkt->protocol == SC_IPPROTO_TCP && pkt->has_ports &&
           (pkt->tcp_flags & (SC_TCP_SYN | SC_TCP_ACK)) == SC_TCP_SYN;
}

static __always_inline __be16 sc_local_port(const struct sc_packet *pkt, int ingress)
{
    return ingress ? pkt->dport : pkt->sport;
}

/* Whether the rule below needs to know if the local port is a learned server port: only
 * for local ports inside the ephemeral range (below it, the answer is already "server"). */
static __always_inline int sc_needs_learned(const struct sc_packet *pkt, int ingress)
{
    return pkt->has_ports && !sc_tcp_syn(pkt) &&
           bpf_ntohs(sc_local_port(pkt, ingress)) >= SC_EPHEMERAL_LOW;
}

/* The service port of a packet: the server side's port of its connection, so that both
 * directions of a connection carry the same, bounded label (a client's ephemeral port
 * would make a label value per connection):
 *   - a TCP SYN: its destination port (the pod's for one received, the peer's for one sent);
 *   - else the local (pod) port if the pod serves on it: below the ephemeral range, or
 *     `local_learned` (the pod sent a SYN-ACK from it, or config lists it:
 *     kernel.allow_inbound_ports, inbound.tcp_passthrough_ports, the sidecar's ports);
 *   - else the peer's port (the pod is the client).
 * 0 for packets without ports. */
static __always_inline __be16 sc_service_port(const struct sc_packet *pkt, int ingress,
                                              int local_learned)
{
    __be16 local = sc_local_port(pkt, ingress);

    if (!pkt->has_ports)
        return 0;
    if (sc_tcp_syn(pkt))
        return pkt->dport;
    if (bpf_ntohs(local) < SC_EPHEMERAL_LOW || local_learned)
        return local;
    return ingress ? pkt->sport : pkt->dport;
}

#endif /* SIDECAR_PACKET_H */
