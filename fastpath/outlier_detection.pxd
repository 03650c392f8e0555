# Declarations of passive outlier detection; see outlier_detection.pyx.
from fastpath.endpoint cimport Endpoint

cdef class OutlierDetector:
    cdef readonly int consecutive        # failures in a row that eject
    cdef readonly double interval        # well this long: one ejection fewer counted
    cdef readonly double ejection        # base ejection time
    cdef readonly double max_ejection
    cdef readonly double max_ejected     # fraction of the endpoints

    cdef bint failed(self, Endpoint ep, double now, int ejected_now, int n_endpoints)
    cdef int most_ejected(self, int n_endpoints)
    cdef double eject(self, Endpoint ep, double now)
    cdef bint decay(self, Endpoint ep, double now)
