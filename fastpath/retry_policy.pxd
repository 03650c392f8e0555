# Declarations of a service's retry policy; see retry_policy.pyx.
from fastpath.fast_random cimport Rng

# The conditions of `retries.on` beyond statuses (one bit each).
cdef enum RetryOn:
    RETRY_ON_CONNECT_FAILURE = 1
    RETRY_ON_RESET = 2
    RETRY_ON_TIMEOUT = 4

cdef class RetryPolicy:
    cdef readonly int attempts              # retries after the first try
    cdef unsigned int conditions            # RetryOn bits
    cdef unsigned char statuses[200]        # 400..599: 1 when a retriable status
    cdef readonly double per_try_timeout    # 0: none
    cdef readonly double backoff_base
    cdef readonly double backoff_max
    cdef readonly Py_ssize_t replay_limit   # request bytes kept to send again
    cdef Rng rng

    cdef inline bint on_status(self, int status) noexcept:
        return 400 <= status < 600 and self.statuses[status - 400] != 0

    cdef double backoff(self, int retry) noexcept
