/* local_hops.c: local-hop acceleration (interception.accelerate_local). Bytes between the
 * app and the sidecar skip the TCP/IP stack in both directions: both sockets of each hop
 * go into sc_hop_socks, and an sk_msg program moves every write on one of them straight
 * into the other's receive queue (bpf_msg_redirect_hash with BPF_F_INGRESS), up to a budget of unanswered bytes
 * per direction (SC_HOP_UNANSWERED_MAX: the kernel applies no receive window to such
 * writes; past the budget a direction goes through TCP again). Connection
 * set-up and teardown (SYN, FIN, RST) still travel over TCP, so close, half-close and
 * reset behave exactly as without acceleration.
 *
 * Which sockets (never the app's other loopback traffic, never the sidecar's connections
 * to the network):
 *   outbound hop: app -> outbound listener. The listener's side sees every SYN first
 *     (sc_hop_sidecar_ops, RWND_INIT on the request socket: the connection as the sidecar
 *     sees it, after any NAT). The app's side, once established (sc_hop_app_ops), finds
 *     that record under (its own endpoint, the listener): it is the client of a hop; it
 *     joins the map and records both initial sequence numbers. Under iptables REDIRECT the
 *     app's socket still believes it talks to the original destination, so it is filed
 *     under the sidecar's view of the connection, not under its own addresses.
 *   inbound hop: sidecar -> inbound.app. The sidecar's socket, once established, is the
 *     client (sc_hop_sidecar_ops).
 *   The server socket of either hop (the sidecar's accepted socket, the app's accepted
 *     socket), once established, joins only if a client recorded the same connection and
 *     both initial sequence numbers match its own.
 * Entries leave sc_hop_socks when their socket closes (the kernel does that); the
 * STATE_CB callback keeps the count of sockets in the map (SC_HOP_CNT_SOCKETS_*).
 *
 * Attached: sc_hop_app_ops to the APP's cgroup, sc_hop_sidecar_ops to the SIDECAR's cgroup
 * (both sockops), sc_hop_msg to the sc_hop_socks map (sk_msg verdict). Never the root
 * cgroup.
 *
 * Overhead: per connection of the app or the sidecar, a few compares and at most two hash
 * operations; per write on a hop socket, one socket-storage lookup and the redirect
 * (instead of a trip through TCP, IP and loopback on both sides). Nothing per packet.
 * Kernel: sk_msg (4.17+), socket-local storage in sk_msg (5.8+), sockmap links (6.10+).
 */
#include "sidecar_hops.h"

static __always_inline void sc_hop_count(__u32 counter, __u64 n)
{
    __u64 *value = sc_hop_counters.lookup(&counter);

    if (value)          /* always found for an in-range index; the verifier needs the check */
        *value += n;    /* per-CPU slot: no atomic needed */
}

/* The socket's own endpoints, normalised like struct sc_endpoint (v4-mapped is IPv4).
 * Every field is read, whatever the family: see SC_CTX. */
static __always_inline void sc_hop_endpoints(struct bpf_sock_ops *skops,
                                             struct sc_endpoint *local,
                                             struct sc_endpoint *remote)
{
    __u32 family = SC_CTX(skops->family);
    __u32 l4 = SC_CTX(skops->local_ip4), r4 = SC_CTX(skops->remote_ip4);
    __u32 l0 = SC_CTX(skops->local_ip6[0]), l1 = SC_CTX(skops->local_ip6[1]);
    __u32 l2 = SC_CTX(skops->local_ip6[2]), l3 = SC_CTX(skops->local_ip6[3]);
    __u32 r0 = SC_CTX(skops->remote_ip6[0]), r1 = SC_CTX(skops->remote_ip6[1]);
    __u32 r2 = SC_CTX(skops->remote_ip6[2]), r3 = SC_CTX(skops->remote_ip6[3]);
    /* local_port: host order; remote_port: network order in the upper 16 bits (ntohl) */
    __u16 lport = (__u16)SC_CTX(skops->local_port);
    __u16 rport = (__u16)bpf_ntohl(SC_CTX(skops->remote_port));

    if (family == SC_AF_INET) {
        sc_endpoint_set4(local, l4, bpf_htons(lport));
        sc_endpoint_set4(remote, r4, bpf_htons(rport));
    } else {
        sc_endpoint_set6(local, l0, l1, l2, l3, bpf_htons(lport));
        sc_endpoint_set6(remote, r0, r1, r2, r3, bpf_htons(rport));
    }
}

/* The outbound listener of an endpoint's family: where the app's hops end. */
static __always_inline void sc_hop_outbound_listener(struct sc_endpoint *client,
                                                     struct sc_endpoint *listener)
{
    if (client->family == SC_AF_INET)
        sc_endpoint_set4(listener, bpf_htonl(SC_OUT_IP4), bpf_htons(SC_OUT_PORT));
    else
        sc_endpoint_set6(listener, bpf_htonl(SC_OUT_IP6_0), bpf_htonl(SC_OUT_IP6_1),
                         bpf_htonl(SC_OUT_IP6_2), bpf_htonl(SC_OUT_IP6_3), bpf_htons(SC_OUT_PORT));
}

static __always_inline int sc_hop_is_app(struct sc_endpoint *ep)
{
    return ep->port == bpf_htons(SC_APP_PORT) && ep->family == SC_APP_FAMILY &&
           ep->ip6[0] == bpf_htonl(SC_APP_IP6_0) && ep->ip6[1] == bpf_htonl(SC_APP_IP6_1) &&
           ep->ip6[2] == bpf_htonl(SC_APP_IP6_2) && ep->ip6[3] == bpf_htonl(SC_APP_IP6_3);
}

/* Files the socket under its own key, as `side` of the hop `pair`, and asks for its state
 * changes (to count it out when it closes). 1 if it is in the map now. */
static __always_inline int sc_hop_join(struct bpf_sock_ops *skops, struct sc_hop_key *self,
                                       struct sc_hop_key *pair, __u32 side)
{
    struct sc_hop_state *st;
    struct bpf_sock *sk = skops->sk;
    __u32 flags;
    long err;

    if (!sk)
        return 0;
    /* NOEXIST: a key already taken belongs to a live socket (entries leave with their
     * socket); never push it out. (bcc rewrites these helpers as statements: assign.) */
    err = sc_hop_socks.sock_hash_update(skops, self, BPF_NOEXIST);
    if (err != 0) {
        sc_hop_count(SC_HOP_CNT_INSERT_FAILED, 1);
        return 0;
    }
    st = sc_hop_state.sk_storage_get(sk, 0, BPF_SK_STORAGE_GET_F_CREATE);
    if (!st) {
        /* Without its state the socket's writes go through TCP (sc_hop_msg passes them):
         * correct, just not accelerated. It stays in the map until it closes. */
        sc_hop_count(SC_HOP_CNT_INSERT_FAILED, 1);
        return 1;
    }
    __builtin_memcpy(&st->pair, pair, sizeof(*pair));
    st->side = side;
    st->mode = SC_HOP_FRESH;
    st->counted = 1;
    sc_hop_count(SC_HOP_CNT_SOCKETS_ADDED, 1);
    flags = skops->bpf_sock_ops_cb_flags;
    bpf_sock_ops_cb_flags_set(skops, flags | BPF_SOCK_OPS_STATE_CB_FLAG);
    return 1;
}

/* The client end of a hop, established; `self` is its key, local = client, remote =
 * server (the pair's key too): record its sequence numbers and join. */
static __always_inline void sc_hop_client(struct bpf_sock_ops *skops, struct sc_hop_key *self)
{
    struct sc_hop_pair rec = {};

    if (!sc_hop_join(skops, self, self, 0))
        return;
    rec.client_next = SC_CTX(skops->snd_una);
    rec.server_next = SC_CTX(skops->rcv_nxt);
    rec.stage = SC_HOP_CLIENT_READY;
    sc_hop_pairs.update(self, &rec);
}

/* Any server socket, established: it joins if a client recorded this very connection. */
static __always_inline void sc_hop_server(struct bpf_sock_ops *skops, __u32 counter)
{
    struct sc_hop_key self = {}, client = {};
    struct sc_hop_pair *rec;

    sc_hop_endpoints(skops, &self.local, &self.remote);
    client.local = self.remote;
    client.remote = self.local;
    rec = sc_hop_pairs.lookup(&client);
    if (!rec)
        return;
    if (rec->stage != SC_HOP_CLIENT_READY || rec->client_next != SC_CTX(skops->rcv_nxt) ||
        rec->server_next != SC_CTX(skops->snd_una)) {
        sc_hop_count(SC_HOP_CNT_MISMATCH, 1);
        sc_hop_pairs.delete(&client);
        return;
    }
    if (!sc_hop_join(skops, &self, &client, 1)) {
        sc_hop_pairs.delete(&client);
        return;
    }
    rec->stage = SC_HOP_PAIRED;
    sc_hop_count(counter, 1);
}

/* A hop socket closing: count it out of the map, forget its hop. */
static __always_inline void sc_hop_closing(struct bpf_sock_ops *skops)
{
    struct sc_hop_state *st;
    struct bpf_sock *sk = skops->sk;
    struct sc_hop_key pair;

    if (SC_CTX(skops->args[1]) != BPF_TCP_CLOSE || !sk)
        return;
    st = sc_hop_state.sk_storage_get(sk, 0, 0);
    if (st && st->counted) {
        st->counted = 0;
        sc_hop_count(SC_HOP_CNT_SOCKETS_REMOVED, 1);
        __builtin_memcpy(&pair, &st->pair, sizeof(pair));
        sc_hop_pairs.delete(&pair);
    }
}

/* The app's cgroup: the client end of outbound hops, the server end of inbound ones. */
int sc_hop_app_ops(struct bpf_sock_ops *skops)
{
    struct sc_hop_key self = {}, post_nat = {};
    struct sc_hop_pair *rec;
    __u32 op = SC_CTX(skops->op);

    if (op == BPF_SOCK_OPS_STATE_CB) {
        sc_hop_closing(skops);
    } else if (op == BPF_SOCK_OPS_ACTIVE_ESTABLISHED_CB) {
        sc_hop_endpoints(skops, &self.local, &self.remote);
        /* As the sidecar's listener saw it: (this socket's endpoint, the listener). Its
         * own remote is the listener (eBPF connect rewrite) or the original destination
         * (iptables REDIRECT); either way the SYN reached the listener if it is recorded. */
        post_nat.local = self.local;
        sc_hop_outbound_listener(&self.local, &post_nat.remote);
        rec = sc_hop_pairs.lookup(&post_nat);
        if (rec && rec->stage == SC_HOP_SYN_SEEN)
            sc_hop_client(skops, &post_nat);
    } else if (op == BPF_SOCK_OPS_PASSIVE_ESTABLISHED_CB) {
        sc_hop_server(skops, SC_HOP_CNT_INBOUND_HOPS);
    }
    return 1;
}

/* The sidecar's cgroup: SYNs to the outbound listener, the server end of outbound hops,
 * the client end of inbound ones (connections to inbound.app only). */
int sc_hop_sidecar_ops(struct bpf_sock_ops *skops)
{
    struct sc_hop_key self = {}, client = {};
    struct sc_hop_pair rec = {};
    __u32 op = SC_CTX(skops->op);

    if (op == BPF_SOCK_OPS_STATE_CB) {
        sc_hop_closing(skops);
    } else if (op == BPF_SOCK_OPS_RWND_INIT) {
        /* Called for the request socket of every SYN a listener of the sidecar answers
         * (syncookies included), and for the sidecar's own connects (full sockets). */
        if (SC_CTX(skops->is_fullsock) || SC_CTX(skops->local_port) != SC_OUT_PORT)
            return 1;
        sc_hop_endpoints(skops, &self.local, &self.remote);
        client.local = self.remote;
        client.remote = self.local;
        rec.stage = SC_HOP_SYN_SEEN;
        sc_hop_pairs.update(&client, &rec);
    } else if (op == BPF_SOCK_OPS_PASSIVE_ESTABLISHED_CB) {
        if (SC_CTX(skops->local_port) == SC_OUT_PORT)
            sc_hop_server(skops, SC_HOP_CNT_OUTBOUND_HOPS);
    } else if (op == BPF_SOCK_OPS_ACTIVE_ESTABLISHED_CB) {
        sc_hop_endpoints(skops, &self.local, &self.remote);
        if (sc_hop_is_app(&self.remote))
            sc_hop_client(skops, &self);
    }
    /* RWND_INIT reads the reply as a window: left 0, the kernel's default. */
    return 1;
}

/* Every write on a hop socket. SK_PASS with a redirect set moves the bytes into the
 * peer's receive queue; SK_PASS without one sends them through TCP as usual. */
int sc_hop_msg(struct sk_msg_md *msg)
{
    struct sc_hop_state *st;
    struct sc_hop_pair *pair;
    struct bpf_sock *sk = msg->sk;
    struct sc_hop_key key, peer;
    __u32 size = msg->size;
    __u32 side;
    long verdict;

    if (!sk)
        return SK_PASS;
    st = sc_hop_state.sk_storage_get(sk, 0, 0);
    if (!st || st->mode == SC_HOP_STACK)
        return SK_PASS;
    __builtin_memcpy(&key, &st->pair, sizeof(key));
    side = st->side & 1;
    pair = sc_hop_pairs.lookup(&key);
    if (!pair || pair->stage != SC_HOP_PAIRED)
        goto stack;
    if (pair->unanswered[side] + size > SC_HOP_UNANSWERED_MAX) {
        sc_hop_count(SC_HOP_CNT_OVER_BUDGET, 1);
        st->mode = SC_HOP_STACK;
        return SK_PASS;
    }
    /* the peer's key: the client's own is the pair's; the server's is it swapped */
    if (side) {
        __builtin_memcpy(&peer, &key, sizeof(peer));
    } else {
        peer.local = key.remote;
        peer.remote = key.local;
    }
    verdict = sc_hop_socks.msg_redirect_hash(msg, &peer, BPF_F_INGRESS);
    if (verdict == SK_PASS) {
        st->mode = SC_HOP_REDIRECT;
        /* this end wrote: whatever the other end sent has been answered */
        __sync_fetch_and_add(&pair->unanswered[side], size);
        pair->unanswered[side ^ 1] = 0;
        sc_hop_count(SC_HOP_CNT_MSGS_REDIRECTED, 1);
        sc_hop_count(SC_HOP_CNT_BYTES_REDIRECTED, size);
        return SK_PASS;
    }
stack:
    /* No peer (yet, or any more). At the first write: this socket stays on the stack for
     * good. Later (the peer closed): through TCP, which tells this side of the close. */
    if (st->mode == SC_HOP_FRESH)
        sc_hop_count(SC_HOP_CNT_STAYED_ON_STACK, 1);
    st->mode = SC_HOP_STACK;
    return SK_PASS;
}
