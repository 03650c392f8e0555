/* sidecar_drop_reasons.h: the one numbered table of reasons a sidecar program drops a
 * packet.
 *
 * Each index is a per-CPU u64 packet count in the `sc_drops` map, summed by userspace; the
 * names below are the `reason` label of sidecar_kernel_drops_total. The numbers are ABI
 * between the programs and userspace: append only, never renumber, never reuse. When this
 * table changes, change with it:
 *   sidecar/bpf/layout.py               DROP_REASONS (index -> label value, same order)
 *   sidecar/metrics/kernel_traffic.py   nothing to edit: it exports every DROP_REASONS name
 *   README.md                           "Kernel counters and policy" (the reasons table)
 * tests/unit/sidecar/bpf/test_layout.py checks that this enum and DROP_REASONS agree.
 */
#ifndef SIDECAR_DROP_REASONS_H
#define SIDECAR_DROP_REASONS_H

enum sc_drop_reason {
    SC_DROP_DENY_CIDR = 0,           /* "deny_cidr": source address in kernel.deny_cidrs */
    SC_DROP_PORT_NOT_ALLOWED = 1,    /* "port_not_allowed": new inbound connection (TCP SYN)
                                      * or UDP datagram to a pod port outside
                                      * kernel.allow_inbound_ports */
    SC_DROP_SYN_RATE_LIMIT = 2,      /* "syn_rate_limit": the source's SYNs exceed
                                      * kernel.syn_rate_limit.per_source */
    SC_DROP_L4_UNPARSED = 3,         /* "l4_unparsed": port policy applies, but the TCP/UDP
                                      * header could not be found (IPv6 extension header
                                      * chain longer than SC_IPV6_EXT_MAX) */
    SC_DROP_NO_INBOUND_LISTENER = 4, /* "no_inbound_listener": interception.fail closed and
                                      * the sidecar's inbound listener is not there */
    SC_DROP_MAX = 5,
};

#endif /* SIDECAR_DROP_REASONS_H */
