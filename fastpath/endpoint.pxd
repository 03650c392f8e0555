# Declarations of an endpoint's state in a service; see endpoint.pyx.

cdef class Endpoint:
    cdef readonly str host
    cdef readonly int port
    cdef readonly int active             # tries in flight to it (least request compares these)
    cdef readonly int failures           # failures in a row (outlier detection)
    cdef readonly int ejections          # times ejected, less one per well interval
    cdef readonly double ejected_until   # monotonic time its ejection ends; 0: not ejected
    cdef double well_since               # last failure or return from ejection
    cdef readonly bint healthy           # the active health check's verdict
    cdef readonly int checks_passed      # probe results in a row
    cdef readonly int checks_failed
