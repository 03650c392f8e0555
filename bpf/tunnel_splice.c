/* tunnel_splice.c: in-kernel splice of byte tunnels (inbound.tcp_passthrough_ports,
 * outbound opaque TCP, upgraded connections after the 101). Once a worker has put a
 * tunnel's two sockets into sc_splice_socks (bpf/lib/sidecar_splice.h), every skb either
 * socket receives goes straight to the other's send queue (bpf_sk_redirect_hash, egress):
 * the bytes never reach userspace. The worker keeps both sockets open, watches them for
 * EOF and errors, passes a half-close on once the bytes before it are out, and reads
 * sc_splice_ends for the byte counts (fastpath/splice.py).
 *
 * Attached: sc_splice_verdict to the sc_splice_socks map (sk_skb stream verdict).
 *
 * Overhead: per received skb on a spliced socket, one hash lookup and the redirect
 * (instead of a copy to userspace and back). Nothing for other sockets.
 * Kernel: sk_skb stream verdict without a parser (5.13+), sockmap links (6.10+).
 */
#include "sidecar_splice.h"

int sc_splice_verdict(struct __sk_buff *skb)
{
    __u64 cookie = bpf_get_socket_cookie(skb);
    struct sc_splice_end *end = sc_splice_ends.lookup(&cookie);
    __u32 len = skb->len;
    long ret;

    /* Not (or no longer) a tunnel of ours: the bytes stay with their socket. */
    if (!end)
        return SK_PASS;
    /* The FIN arrives as an empty skb. Redirected, the peer's queue would count it as a
     * send error (EPIPE) and stop; passed, it stops the peer-bound queue of this socket if
     * bytes are waiting there. Dropped, nothing is lost: the socket knows of its FIN
     * (RCV_SHUTDOWN), and the worker passes it on. */
    if (len == 0)
        return SK_DROP;
    if (end->mode == SC_SPLICE_USER)
        return SK_PASS;
    if (end->mode == SC_SPLICE_FRESH) {
        /* Both directions of a tunnel go one way: if the other one stayed in userspace,
         * so does this one. (A socket that is both a userspace direction's source and a
         * kernel direction's target queues its passed bytes behind the redirected ones,
         * where its reader does not see them before the FIN.) */
        struct sc_splice_end *other = sc_splice_ends.lookup(&end->peer);

        if (other && other->mode == SC_SPLICE_USER) {
            end->mode = SC_SPLICE_USER;
            return SK_PASS;
        }
    }
    ret = sc_splice_socks.sk_redirect_hash(skb, &end->peer, 0);
    if (ret != SK_PASS) {
        if (end->mode == SC_SPLICE_FRESH) {
            /* The peer is not in the map yet (bytes came between the hand-off's two
             * inserts): the tunnel stays in userspace, from the first byte. */
            end->mode = SC_SPLICE_USER;
            return SK_PASS;
        }
        /* The peer left (it closed): nothing can carry these bytes any more. */
        return SK_DROP;
    }
    end->mode = SC_SPLICE_KERNEL;
    __sync_fetch_and_add(&end->bytes, len);
    return SK_PASS;
}
