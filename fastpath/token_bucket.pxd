# Declarations of the rate limiter; see token_bucket.pyx.
from fastpath.lru_table cimport LruTable

cdef struct RateDecision:
    bint allowed
    double limit            # bucket size (this worker's share of the burst)
    double remaining        # tokens left after this request
    double retry_after      # seconds until one token is available (refused requests)
    double reset            # seconds until the bucket is full again

cdef class TokenBucketLimiter:
    cdef readonly double rate          # tokens per second, this worker's share
    cdef readonly double burst         # bucket size, this worker's share
    cdef readonly bint global_key      # one bucket for every request
    cdef LruTable keys
    cdef double* tokens                # per key slot
    cdef double* updated               # per key slot: monotonic time of the last refill
    cdef double g_tokens
    cdef double g_updated

    cdef bint take(self, const char* key, Py_ssize_t n, double now, RateDecision* out) noexcept
cdef bytes rate_limit_headers(RateDecision* d, double window)
