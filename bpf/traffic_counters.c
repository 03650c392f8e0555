/* traffic_counters.c: bytes and packets of the pod's traffic, per (direction, peer
 * address, service port, protocol), counted in the kernel per packet.
 *
 * Attached at ingress (sc_count_in) and egress (sc_count_out) of the POD's interface
 * (tcx links; never a host interface). On ingress it runs after the policy and the
 * inbound steering (sidecar/bpf/programs.py: FAMILIES order), so what it counts is what
 * the pod accepted; drops are counted by reason in sc_drops by the program that drops.
 * It always returns TC_ACT_UNSPEC (tcx "next"): it only counts.
 *
 * The key (struct sc_traffic_key, bpf/lib/sidecar_maps.h):
 *   direction  inbound: received by the pod; outbound: sent by the pod
 *   peer       the other end's address
 *   port       the connection's service port, the same in both directions: the pod's
 *              port when the pod is the server (inbound connections), the peer's when the
 *              pod is the client (sc_service_port in bpf/lib/sidecar_packet.h has the
 *              rule); never a client's ephemeral port, so label values stay bounded
 *   protocol   the IP protocol (tcp, udp, icmp, ...); 0 port for those without ports
 * The value: IP bytes (IP header and everything after it; no Ethernet header) and
 * packets, per wire packet: a GSO/GRO skb of N segments counts N packets and its headers
 * N times (hdr_len), so the figures do not depend on offloads. Non-IP frames (ARP) are
 * not counted. A per-CPU value: no atomic operation on the hot path.
 *
 * The map is an LRU hash of SC_TRAFFIC_MAX entries: when full, the least recently used
 * label set is evicted; the collector (sidecar/metrics/kernel_traffic.py) keeps what it
 * last read of an evicted entry so exported counters never go down.
 *
 * Overhead: per packet, one header parse, at most one word of the server-port bitmap
 * (an array index, only for local ports inside the ephemeral range), and one per-CPU
 * hash lookup and add; a new label set costs an insert. Measured by `python -m benchmarks.kernel_counters`.
 * Kernel: tcx links (6.6+).
 */
#include "sidecar_maps.h"
#include "sidecar_packet.h"

static __always_inline int sc_port_learned(__be16 port)
{
    __u16 host = bpf_ntohs(port);
    __u32 word = host >> 6;
    __u64 *bits = sc_svc_ports.lookup(&word);

    return bits && ((*bits >> (host & 63)) & 1);
}

/* The pod answered a connection on `port`: it serves there. Only ports inside the
 * ephemeral range need remembering (below it, every local port counts as a server's). */
static __always_inline void sc_learn_server_port(__be16 port)
{
    __u16 host = bpf_ntohs(port);
    __u32 word = host >> 6;
    __u64 bit = 1ULL << (host & 63);
    __u64 *bits;

    if (host < SC_EPHEMERAL_LOW)
        return;
    bits = sc_svc_ports.lookup(&word);
    if (bits && !(*bits & bit))
        __sync_fetch_and_or(bits, bit);     /* another CPU may set a neighbour's bit */
}

static __always_inline int sc_count_packet(struct __sk_buff *skb, int ingress)
{
    struct sc_packet pkt = {};
    struct sc_traffic_key key = {};
    struct sc_traffic_value *value;
    __u32 segs = skb->gso_segs;
    __u64 bytes;
    int learned = 0;

    if (sc_parse(skb, &pkt) != SC_PARSED)
        return SC_TCX_NEXT;
    if (ingress)
        __builtin_memcpy(key.peer, pkt.saddr, sizeof(key.peer));
    else
        __builtin_memcpy(key.peer, pkt.daddr, sizeof(key.peer));
    key.direction = ingress ? SC_DIR_INBOUND : SC_DIR_OUTBOUND;
    key.protocol = pkt.protocol;
    if (!ingress && pkt.protocol == SC_IPPROTO_TCP && pkt.has_ports &&
        (pkt.tcp_flags & (SC_TCP_SYN | SC_TCP_ACK)) == (SC_TCP_SYN | SC_TCP_ACK))
        sc_learn_server_port(pkt.sport);
    if (sc_needs_learned(&pkt, ingress))
        learned = sc_port_learned(sc_local_port(&pkt, ingress));
    key.port = sc_service_port(&pkt, ingress, learned);

    if (segs == 0)
        segs = 1;                   /* not a GSO skb */
    bytes = pkt.l3_len + (__u64)(segs - 1) * pkt.hdr_len;
    value = sc_traffic.lookup(&key);
    if (value) {
        value->bytes += bytes;      /* this CPU's slot */
        value->packets += segs;
        return SC_TCX_NEXT;
    }
    {
        struct sc_traffic_value first = {.bytes = bytes, .packets = segs};

        /* NOEXIST: another CPU may have created the entry since the lookup; then add to
         * this CPU's slot of it rather than replace the element (and the other CPU's
         * count with it). */
        if (sc_traffic.insert(&key, &first) != 0) {
            value = sc_traffic.lookup(&key);
            if (value) {
                value->bytes += bytes;
                value->packets += segs;
            }
        }
    }
    return SC_TCX_NEXT;
}

int sc_count_in(struct __sk_buff *skb)
{
    return sc_count_packet(skb, 1);
}

int sc_count_out(struct __sk_buff *skb)
{
    return sc_count_packet(skb, 0);
}
