/* sidecar_common.h: what every program in bpf/ shares: includes, the loader's -D
 * parameters with their defaults, and byte-order and address helpers.
 *
 * Runtime specialisation goes only through the -D flags below; sidecar/bpf/programs.py
 * (`cflags_for`) is the one place that sets them, and the loader's `--print-cflags` shows
 * them (`--print-c` the C as compiled).
 */
#ifndef SIDECAR_COMMON_H
#define SIDECAR_COMMON_H

#include <uapi/linux/bpf.h>
#include <uapi/linux/if_ether.h>
#include <uapi/linux/in6.h>
#include <uapi/linux/ip.h>
#include <uapi/linux/ipv6.h>
#include <uapi/linux/pkt_cls.h>
/* Not included on purpose: linux/socket.h, uapi/linux/in.h and uapi/linux/tcp.h pull in
 * the kernel's internal headers and cost about 0.6 s of compile time each, per program
 * file; the few definitions needed from them are below. */

/* -- loader parameters ------------------------------------------------------------------- */

/* bpffs directory holding this instance's maps: /sys/fs/bpf/sidecar/<instance>/maps */
#ifndef SC_MAP_DIR
#error "SC_MAP_DIR must be set by the loader (-DSC_MAP_DIR=\"/sys/fs/bpf/sidecar/NAME/maps\")"
#endif

/* Outbound listener: IPv4 address (host order) and port; IPv6 address as four host-order
 * 32-bit words (::1 is 0,0,0,1). IPv4 and v4-mapped destinations go to the IPv4 one. */
#ifndef SC_OUT_PORT
#define SC_OUT_PORT 15001
#endif
#ifndef SC_OUT_IP4
#define SC_OUT_IP4 0x7f000001
#endif
#ifndef SC_OUT_IP6_0
#define SC_OUT_IP6_0 0
#define SC_OUT_IP6_1 0
#define SC_OUT_IP6_2 0
#define SC_OUT_IP6_3 1
#endif

/* Inbound listener port (bound to the wildcard address: 0.0.0.0 and/or [::]). */
#ifndef SC_IN_PORT
#define SC_IN_PORT 15006
#endif

/* interception.fail: 1 (open) leaves app traffic alone while no sidecar listener exists;
 * 0 (closed) steers it anyway, so it is refused while the sidecar is not running. */
#ifndef SC_FAIL_OPEN
#define SC_FAIL_OPEN 1
#endif

/* -- constants and wire formats (see the includes above for why they are here) ----------- */

#define SC_AF_INET 2
#define SC_AF_INET6 10
#define SC_SOCK_STREAM 1
#define SC_IPPROTO_TCP 6
#define SC_SOL_IP 0
#define SC_SOL_IPV6 41
#define SC_SO_ORIGINAL_DST 80     /* linux/netfilter_ipv4.h; IP6T_SO_ORIGINAL_DST is also 80 */
#define SC_PAGE_SIZE 4096         /* a sockopt program sees at most one page of optval */
#define SC_TCX_NEXT TC_ACT_UNSPEC /* tcx: let the next program (and then the stack) decide */

struct sc_sockaddr_in {           /* struct sockaddr_in */
    __u16 sin_family;
    __be16 sin_port;
    __be32 sin_addr;
    __u8 sin_zero[8];
};

struct sc_tcphdr {                /* struct tcphdr, flags as one byte */
    __be16 source;
    __be16 dest;
    __be32 seq;
    __be32 ack_seq;
    __u8 doff_res;
    __u8 flags;
    __be16 window;
    __sum16 check;
    __be16 urg_ptr;
};
#define SC_TCP_SYN 0x02
#define SC_TCP_ACK 0x10

/* A context field read as one load from ctx + constant offset, where it stands. Without
 * it the compiler may compute `ctx + offset` once and share it between branches, and the
 * verifier rejects any load through a modified ctx pointer. */
#define SC_CTX(field) (*(volatile typeof(field) *)&(field))

/* -- addresses ---------------------------------------------------------------------------- */

/* One transport endpoint, as map key and value. IPv4 is stored IPv4-mapped (::ffff:a.b.c.d)
 * with family SC_AF_INET, so a connection looks the same from a v4 socket and from a
 * dual-stack v6 socket that dialled a v4-mapped address. 20 bytes, no padding: keys are
 * compared bytewise. Mirrored in sidecar/bpf/layout.py (ENDPOINT). */
struct sc_endpoint {
    __u32 ip6[4];     /* network order */
    __be16 port;      /* network order */
    __u16 family;     /* SC_AF_INET or SC_AF_INET6 */
};

static __always_inline void sc_endpoint_set4(struct sc_endpoint *ep, __be32 ip4, __be16 port)
{
    ep->ip6[0] = 0;
    ep->ip6[1] = 0;
    ep->ip6[2] = bpf_htonl(0x0000ffff);
    ep->ip6[3] = ip4;
    ep->port = port;
    ep->family = SC_AF_INET;
}

static __always_inline int sc_ip6_is_v4mapped(__u32 w0, __u32 w1, __u32 w2)
{
    return w0 == 0 && w1 == 0 && w2 == bpf_htonl(0x0000ffff);
}

static __always_inline void sc_endpoint_set6(struct sc_endpoint *ep, __u32 w0, __u32 w1,
                                             __u32 w2, __u32 w3, __be16 port)
{
    ep->ip6[0] = w0;
    ep->ip6[1] = w1;
    ep->ip6[2] = w2;
    ep->ip6[3] = w3;
    ep->port = port;
    ep->family = sc_ip6_is_v4mapped(w0, w1, w2) ? SC_AF_INET : SC_AF_INET6;
}

static __always_inline int sc_ip4_is_loopback(__be32 ip4)
{
    return (bpf_ntohl(ip4) >> 24) == 127;
}

#endif /* SIDECAR_COMMON_H */
