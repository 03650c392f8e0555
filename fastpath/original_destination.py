"""The address a redirected connection was originally sent to.

Under iptables REDIRECT the kernel's conntrack answers `getsockopt(SOL_IP, SO_ORIGINAL_DST)`;
under eBPF interception a cgroup getsockopt program answers the same call from the
redirect map, so this code is the same in every mode. A socket that was not redirected
has no original destination (ENOENT), or reports its own local address.
"""
import socket
import struct

SO_ORIGINAL_DST = 80          # linux/netfilter_ipv4.h
IP6T_SO_ORIGINAL_DST = 80     # linux/netfilter_ipv6/ip6_tables.h


def original_destination(sock):
    """(host, port) the client connected to before redirection, or None."""
    try:
        if sock.family == socket.AF_INET6:
            raw = sock.getsockopt(socket.IPPROTO_IPV6, IP6T_SO_ORIGINAL_DST, 28)
            port = struct.unpack_from("!H", raw, 2)[0]
            host = socket.inet_ntop(socket.AF_INET6, raw[8:24])
            if host.startswith("::ffff:") and "." in host:
                host = host[7:]
        else:
            raw = sock.getsockopt(socket.SOL_IP, SO_ORIGINAL_DST, 16)
            port = struct.unpack_from("!H", raw, 2)[0]
            host = socket.inet_ntoa(raw[4:8])
    except OSError:
        return None
    local = sock.getsockname()
    if (host, port) == (local[0], local[1]):
        return None
    return host, port
