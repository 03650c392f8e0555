# Declarations of the byte tunnel; see tunnel.pyx.
from fastpath.stats cimport WorkerStats

cdef class Tunnel


cdef class TunnelEnd:
    cdef readonly object transport
    cdef readonly TunnelEnd peer
    cdef list early             # bytes received before the peer is connected
    cdef Py_ssize_t early_bytes
    cdef readonly bint eof      # this end's incoming direction is over
    cdef readonly bint closed
    cdef readonly bint writing_paused    # this end's transport is over its write high-water mark
    cdef readonly unsigned long long bytes_in    # bytes read by userspace on this end
    cdef readonly int index     # END_DOWNSTREAM or END_UPSTREAM
    cdef public bint kernel     # what this end receives is forwarded by the kernel (spliced)
    cdef Tunnel tunnel

    cdef void link(self, TunnelEnd peer)
    cdef void close(self)


cdef class Tunnel:
    """The two ends, what they count, and their splice (fastpath/splice.py) if any."""
    cdef readonly TunnelEnd down
    cdef readonly TunnelEnd up
    cdef WorkerStats stats
    cdef int direction          # DIR_INBOUND / DIR_OUTBOUND (stats.pxd)
    cdef bint counted_closed
    cdef bint path_recorded
    cdef public object splice   # fastpath.splice.SplicedTunnel while spliced, else None
    cdef public int splice_attempts

    cdef void count(self, int index, long long n) noexcept
    cdef void ended(self)
    cpdef record_path(self, int path)
