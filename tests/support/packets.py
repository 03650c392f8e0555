"""Ethernet frames built by hand, for running TC programs on exact packets with
BPF_PROG_TEST_RUN (sidecar.bpf.syscall.prog_test_run): the tests of what the parser makes
of unusual packets, and the kernel-counters benchmark's per-packet cost. Checksums are
left zero: the programs never look at them."""
import ipaddress
import struct

ETH_IP, ETH_IPV6 = 0x0800, 0x86DD
TCP, UDP = 6, 17
SYN, ACK, PSH = 0x02, 0x10, 0x08
TIMESTAMPS = b"\x01\x01\x08\x0a" + b"\0" * 8       # NOP NOP TS (what Linux sends)


def _eth(proto):
    return b"\x02\0\0\0\0\x01" + b"\x02\0\0\0\0\x02" + struct.pack("!H", proto)


def tcp_header(sport, dport, flags=ACK, options=TIMESTAMPS):
    doff = (20 + len(options)) // 4
    return struct.pack("!HHIIBBHHH", sport, dport, 1, 1, doff << 4, flags, 65535, 0, 0) + options


def udp_header(sport, dport, payload_len):
    return struct.pack("!HHHH", sport, dport, 8 + payload_len, 0)


def l4(protocol, sport, dport, payload, flags=ACK):
    if protocol == TCP:
        return tcp_header(sport, dport, flags) + payload
    return udp_header(sport, dport, len(payload)) + payload


def ipv4(src, dst, protocol, body, frag_off=0):
    header = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(body), 1, frag_off, 64, protocol, 0,
                         ipaddress.IPv4Address(src).packed, ipaddress.IPv4Address(dst).packed)
    return _eth(ETH_IP) + header + body


def ipv6(src, dst, protocol, body, extension_headers=0):
    """IPv6 with `extension_headers` destination-options headers (8 bytes each) before the
    transport header."""
    chain = b""
    for i in range(extension_headers):
        nxt = protocol if i == extension_headers - 1 else 60
        chain += bytes([nxt, 0, 1, 4, 0, 0, 0, 0])       # next header, length 0, PadN(4)
    first = 60 if extension_headers else protocol
    header = struct.pack("!IHBB16s16s", 6 << 28, len(chain) + len(body), first, 64,
                         ipaddress.IPv6Address(src).packed, ipaddress.IPv6Address(dst).packed)
    return _eth(ETH_IPV6) + header + chain + body


def arp():
    return _eth(0x0806) + b"\0" * 28
