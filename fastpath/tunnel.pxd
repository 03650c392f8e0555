# Declarations of the byte tunnel; see tunnel.pyx.

cdef class TunnelEnd:
    cdef object transport
    cdef TunnelEnd peer
    cdef list early             # bytes received before the peer is connected
    cdef Py_ssize_t early_bytes
    cdef bint eof
    cdef bint closed
    cdef bint writing_paused    # this end's transport is over its write high-water mark
    cdef readonly unsigned long long bytes_in

    cdef void link(self, TunnelEnd peer)
    cdef void close(self)
