# Declarations of fault injection; see fault.pyx.
from fastpath.fast_random cimport Rng

cdef class FaultInjector:
    cdef readonly int abort_status
    cdef unsigned long long abort_ppm      # parts per million of requests aborted
    cdef readonly double delay
    cdef unsigned long long delay_ppm
    cdef Rng rng

    cdef int choose(self, double* delay_out) noexcept
