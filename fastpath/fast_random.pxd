# A small, fast pseudo-random generator for per-request choices that need no secrecy
# (fault injection percentages, weighted service splits): xorshift128+, seeded with
# splitmix64. Inline, so each user keeps its own state in a struct.
from libc.stdint cimport uint64_t

cdef struct Rng:
    uint64_t s0
    uint64_t s1

cdef inline uint64_t _splitmix(uint64_t* x) noexcept nogil:
    x[0] += <uint64_t>0x9E3779B97F4A7C15
    cdef uint64_t z = x[0]
    z = (z ^ (z >> 30)) * <uint64_t>0xBF58476D1CE4E5B9
    z = (z ^ (z >> 27)) * <uint64_t>0x94D049BB133111EB
    return z ^ (z >> 31)

cdef inline void rng_seed(Rng* r, uint64_t seed) noexcept nogil:
    r.s0 = _splitmix(&seed)
    r.s1 = _splitmix(&seed)
    if r.s0 == 0 and r.s1 == 0:
        r.s1 = 1

cdef inline uint64_t rng_next(Rng* r) noexcept nogil:
    cdef uint64_t x = r.s0
    cdef uint64_t y = r.s1
    r.s0 = y
    x ^= x << 23
    r.s1 = x ^ y ^ (x >> 17) ^ (y >> 26)
    return r.s1 + y

cdef inline uint64_t rng_below(Rng* r, uint64_t bound) noexcept nogil:
    """A value in [0, bound) (bound > 0); the modulo bias is below 2**-40 for bounds used here."""
    return rng_next(r) % bound
