"""sidecar.bpf.loader: the one-line reasons it gives for compiler and verifier logs."""
from sidecar.bpf.loader import _first_error

VERIFIER_LOG = """\
bpf: Failed to load program: Permission denied
0: R1=ctx() R10=fp0
; void *data = (void *)(long)skb->data; @ inbound_steer.c:109
0: (61) r2 = *(u32 *)(r1 +76)         ; R1=ctx() R2_w=pkt(r=0)
9: (71) r9 = *(u8 *)(r1 +13)
invalid access to packet, off=13 size=1, R1(id=0,off=13,r=0)
R1 offset is outside of the packet
processed 10 insns (limit 1000000) max_states_per_insn 0 total_states 0 peak_states 0 mark_read 0
"""


def test_verifier_verdict_is_the_lines_after_the_last_instruction():
    assert _first_error(VERIFIER_LOG, "fallback") == (
        "invalid access to packet, off=13 size=1, R1(id=0,off=13,r=0); R1 offset is outside of the packet")


def test_compiler_error_is_the_first_error_line():
    log = "In file included from x.h:1:\n/virtual/main.c:12:3: error: use of undeclared identifier 'x'\n" \
          "/virtual/main.c:14:1: error: another\n2 errors generated.\n"
    assert _first_error(log, "f") == "/virtual/main.c:12:3: error: use of undeclared identifier 'x'"


def test_nothing_telling_falls_back():
    assert _first_error("", "Failed to load BPF program sc_x: Invalid argument") == \
        "Failed to load BPF program sc_x: Invalid argument"
