/* sidecar_counters.h: the one numbered table of interception counters.
 *
 * Each index is a per-CPU u64 in the `sc_counters` map, summed by userspace. The numbers
 * are ABI between the programs and userspace: append only, never renumber. When this table
 * changes, change with it: sidecar/bpf/layout.py (COUNTERS, the names `sidecar bpf status`
 * prints and the metrics collectors use as label values).
 */
#ifndef SIDECAR_COUNTERS_H
#define SIDECAR_COUNTERS_H

enum sc_counter {
    SC_CNT_OUT_REDIRECTED = 0,   /* connect4/6 rewritten to the outbound listener */
    SC_CNT_OUT_EXCLUDED = 1,     /* destination port in exclude_outbound_ports */
    SC_CNT_OUT_NO_LISTENER = 2,  /* fail open: no outbound listener, connect left alone */
    SC_CNT_OUT_TRACKED = 3,      /* sockops: original destination keyed by the client tuple */
    SC_CNT_ORIG_DST_ANSWERED = 4,/* getsockopt(SO_ORIGINAL_DST) answered from the map */
    SC_CNT_ORIG_DST_UNKNOWN = 5, /* asked on an outbound-listener socket, nothing recorded */
    SC_CNT_IN_STEERED = 6,       /* inbound SYN assigned to the inbound listener */
    SC_CNT_IN_EXCLUDED = 7,      /* destination port in exclude_inbound_ports */
    SC_CNT_IN_NO_LISTENER = 8,   /* no inbound listener: passed (fail open) or dropped (closed) */
    SC_CNT_MAX = 9,
};

#endif /* SIDECAR_COUNTERS_H */
