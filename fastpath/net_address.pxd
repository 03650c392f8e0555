# IP addresses and CIDR blocks in binary form, for source-address rules: a client address
# is parsed once per connection, and a CIDR check is a few byte compares.
from libc.string cimport memcmp, memset

cdef extern from "arpa/inet.h":
    int inet_pton(int af, const char* src, void* dst)

cdef extern from "sys/socket.h":
    int AF_INET
    int AF_INET6

cdef struct IpAddress:
    int family                 # 4, 6, or 0 (unknown)
    unsigned char addr[16]     # network order; IPv4 in the first 4 bytes

cdef struct CidrBlock:
    int family
    unsigned char addr[16]
    int prefix                 # bits

cdef inline bint parse_ip(const char* text, IpAddress* out) noexcept:
    """Parses a textual IPv4/IPv6 address; an IPv4-mapped IPv6 address becomes IPv4."""
    memset(out, 0, sizeof(IpAddress))
    if inet_pton(AF_INET, text, out.addr) == 1:
        out.family = 4
        return True
    if inet_pton(AF_INET6, text, out.addr) == 1:
        out.family = 6
        if (memcmp(out.addr, b"\0\0\0\0\0\0\0\0\0\0\xff\xff", 12) == 0):
            out.addr[0] = out.addr[12]
            out.addr[1] = out.addr[13]
            out.addr[2] = out.addr[14]
            out.addr[3] = out.addr[15]
            memset(out.addr + 4, 0, 12)
            out.family = 4
        return True
    return False

cdef inline bint cidr_contains(const CidrBlock* c, const IpAddress* a) noexcept:
    cdef int full, rest
    if c.family != a.family:
        return False
    full = c.prefix >> 3
    rest = c.prefix & 7
    if full and memcmp(c.addr, a.addr, full) != 0:
        return False
    if rest:
        return ((c.addr[full] ^ a.addr[full]) & (<unsigned char>(0xFF << (8 - rest)))) == 0
    return True
