# cython: language_level=3
"""Fault injection: delay and abort a share of a route's requests (Envoy's fault filter).

Each request draws independently: with `delay.percent` it is held for `delay.duration`
before it goes upstream (flag DI); with `abort.percent` it is answered `abort.status` by
the sidecar and never forwarded (flag FI). A request drawn for both is delayed, then
aborted. Percentages are kept in parts per million, so 0.01% is exact.
"""
import os

from libc.stdint cimport uint64_t
from libc.string cimport memcpy
from cpython.bytes cimport PyBytes_AS_STRING

from fastpath.fast_random cimport Rng, rng_seed, rng_below

DEF PPM = 1000000


cdef class FaultInjector:
    def __cinit__(self, int abort_status=0, double abort_fraction=0.0, double delay=0.0,
                  double delay_fraction=0.0, seed=None):
        """Fractions in [0, 1]; `seed` fixes the draws (tests), else os.urandom."""
        cdef uint64_t s
        cdef bytes b
        self.abort_status = abort_status
        self.abort_ppm = <unsigned long long>(abort_fraction * PPM + 0.5) if abort_status else 0
        self.delay = delay
        self.delay_ppm = <unsigned long long>(delay_fraction * PPM + 0.5) if delay > 0 else 0
        if seed is None:
            b = os.urandom(8)
            memcpy(&s, PyBytes_AS_STRING(b), 8)
        else:
            s = <uint64_t>seed
        rng_seed(&self.rng, s)

    cdef int choose(self, double* delay_out) noexcept:
        """The status to abort with (0: none); `delay_out` the seconds to hold (0: none)."""
        delay_out[0] = 0.0
        if self.delay_ppm and rng_below(&self.rng, PPM) < self.delay_ppm:
            delay_out[0] = self.delay
        if self.abort_ppm and rng_below(&self.rng, PPM) < self.abort_ppm:
            return self.abort_status
        return 0

    def draw(self):
        """Python entry for tests: (abort status or 0, delay seconds or 0)."""
        cdef double d
        cdef int status = self.choose(&d)
        return status, d
