/* kernel_policy.c: L3/L4 policy for traffic entering the pod (`kernel:` in the config),
 * enforced per packet at tcx ingress of the POD's interface, before anything else on that
 * hook (the loader attaches it first: sidecar/bpf/programs.py), so a dropped packet is
 * never steered to the sidecar or counted as traffic; each drop is counted by reason in
 * sc_drops (bpf/lib/sidecar_drop_reasons.h).
 *
 * Why TC and not XDP: the pod interface is a veth, where native XDP needs an XDP program
 * (or GRO) on the peer in the host's namespace, which a sidecar must not touch, and
 * generic XDP costs more than tcx; tcx ingress also shares the parse and hook with the
 * inbound steering and the counters.
 *
 * Rules, in order (the tables are maps written from config on every reload, so a policy
 * change never reloads this program):
 *   1. deny_cidrs: a packet from a source in sc_deny4 / sc_deny6 (LPM tries) is dropped,
 *      whatever its protocol, port or connection: explicit denial beats everything,
 *      the sidecar's own ports included (do not deny the node's kubelet address).
 *   2. The sidecar's own ports (admin, metrics 15090, health 15021: SC_PORT_SIDECAR in
 *      sc_allow_in) are exempt from the rules below, so kubelet probes and Prometheus
 *      scrapes always reach them.
 *   3. allow_inbound_ports (when set): a new inbound TCP connection (SYN without ACK) or a
 *      UDP datagram to a pod server port (sc_service_port's rule: below the ephemeral
 *      range, or a learned/configured server port) outside the list is dropped. Packets
 *      of established connections and replies to the pod's own connections (to its
 *      ephemeral ports) pass; so does everything without ports (ICMP).
 *   4. syn_rate_limit.per_source: each source address (IPv6: its /64) gets a token bucket
 *      of `burst` SYNs refilled at the rate, in the GCRA form (one timestamp per source in
 *      an LRU map); a SYN without ACK beyond it is dropped. Racing CPUs may admit a few
 *      more than the burst (each admission is still charged).
 * Returns TC_ACT_SHOT for a drop, else TC_ACT_UNSPEC (tcx "next").
 *
 * Overhead: with no policy configured, the header parse and one array lookup per packet.
 * With deny_cidrs, one LPM lookup per packet; the port and SYN rules look at connection
 * requests and UDP datagrams only. Kernel: tcx links (6.6+).
 */
#include "sidecar_maps.h"
#include "sidecar_packet.h"

static __always_inline int sc_drop(__u32 reason)
{
    __u64 *count = sc_drops.lookup(&reason);

    if (count)          /* always found for an in-range index; the verifier needs the check */
        *count += 1;    /* per-CPU slot */
    return TC_ACT_SHOT;
}

static __always_inline int sc_denied(const struct sc_packet *pkt,
                                     const struct sc_policy_config *cfg)
{
    if (pkt->family == SC_AF_INET) {
        struct sc_lpm4_key key = {.prefixlen = 32, .addr = pkt->saddr[3]};

        return cfg->deny4 && sc_deny4.lookup(&key) != NULL;
    }
    if (cfg->deny6) {
        struct sc_lpm6_key key = {.prefixlen = 128};

        __builtin_memcpy(key.addr, pkt->saddr, sizeof(key.addr));
        return sc_deny6.lookup(&key) != NULL;
    }
    return 0;
}

/* Whether the pod serves on local port `port` (sc_service_port's rule). */
static __always_inline int sc_local_port_serves(__u16 port)
{
    __u32 word = port >> 6;
    __u64 *bits;

    if (port < SC_EPHEMERAL_LOW)
        return 1;
    bits = sc_svc_ports.lookup(&word);
    return bits && ((*bits >> (port & 63)) & 1);
}

/* GCRA: `tat` is when the source's bucket would be full again; a SYN is admitted while
 * tat - now stays within the tolerance, and moves tat one interval on. */
static __always_inline int sc_syn_admitted(const struct sc_packet *pkt,
                                           const struct sc_policy_config *cfg)
{
    struct sc_endpoint source = {};
    __u64 now = bpf_ktime_get_ns();
    __u64 *tat;

    __builtin_memcpy(source.ip6, pkt->saddr, sizeof(source.ip6));
    source.family = pkt->family;
    if (pkt->family == SC_AF_INET6)
        source.ip6[2] = source.ip6[3] = 0;      /* one bucket per /64 */
    tat = sc_syn_bucket.lookup(&source);
    if (!tat) {
        __u64 next = now + cfg->syn_interval_ns;

        sc_syn_bucket.update(&source, &next);
        return 1;
    }
    if (*tat < now) {
        *tat = now + cfg->syn_interval_ns;      /* a full bucket */
        return 1;
    }
    if (*tat - now > cfg->syn_tolerance_ns)
        return 0;
    __sync_fetch_and_add(tat, cfg->syn_interval_ns);
    return 1;
}

int sc_policy(struct __sk_buff *skb)
{
    struct sc_packet pkt = {};
    struct sc_policy_config *cfg;
    __u32 zero = 0;
    __u8 *tag;
    __u16 port;
    int syn;

    if (sc_parse(skb, &pkt) != SC_PARSED)
        return SC_TCX_NEXT;
    cfg = sc_policy_cfg.lookup(&zero);
    if (!cfg)
        return SC_TCX_NEXT;
    if (sc_denied(&pkt, cfg))
        return sc_drop(SC_DROP_DENY_CIDR);
    if (!cfg->allow_ports && !cfg->syn_interval_ns)
        return SC_TCX_NEXT;
    if (pkt.l4_unparsed)
        return sc_drop(SC_DROP_L4_UNPARSED);
    syn = sc_tcp_syn(&pkt);
    if (!syn && !(pkt.protocol == SC_IPPROTO_UDP && pkt.has_ports))
        return SC_TCX_NEXT;

    port = bpf_ntohs(pkt.dport);
    tag = sc_allow_in.lookup(&port);
    if (tag && *tag == SC_PORT_SIDECAR)
        return SC_TCX_NEXT;
    if (cfg->allow_ports && !tag && (syn || sc_local_port_serves(port)))
        return sc_drop(SC_DROP_PORT_NOT_ALLOWED);
    if (syn && cfg->syn_interval_ns && !sc_syn_admitted(&pkt, cfg))
        return sc_drop(SC_DROP_SYN_RATE_LIMIT);
    return SC_TCX_NEXT;
}
