# cython: language_level=3
"""Token-bucket rate limiting, per key, in C.

Each key (a client address, a header value, a JWT claim, or one global key) has a bucket
of `burst` tokens refilled at `rate` per second; a request takes one token or is refused
(429). The buckets live in a bounded LRU table (`max_keys`), so a flood of distinct keys
costs at most that many slots: new keys evict the keys that were quiet longest, and a key
that keeps sending stays in the table and stays limited. An evicted key that comes back
starts with a full bucket, as a key never seen.

Per worker: every worker process has its own buckets (no shared state, no lock on the
request path). The policy compiler gives each worker `rate / workers` and
`burst / workers` (at least one token), so the configured rate holds for the whole
sidecar when the kernel spreads connections evenly over the workers (SO_REUSEPORT); a
single connection is served by one worker, and so sees its share only.
"""
from libc.math cimport ceil
from libc.stdlib cimport malloc, free

from fastpath.lru_table cimport LruTable


cdef class TokenBucketLimiter:
    def __cinit__(self, double rate, double burst, int max_keys=16384, bint global_key=False,
                  seed=None):
        if rate <= 0 or burst < 1:
            raise ValueError("rate must be positive and burst at least 1")
        self.rate = rate
        self.burst = burst
        self.global_key = global_key
        self.g_tokens = burst
        self.g_updated = -1.0
        if not global_key:
            self.keys = LruTable(max_keys, seed)
            self.tokens = <double*>malloc(sizeof(double) * max_keys)
            self.updated = <double*>malloc(sizeof(double) * max_keys)
            if self.tokens == NULL or self.updated == NULL:
                raise MemoryError()

    def __dealloc__(self):
        free(self.tokens)
        free(self.updated)

    cdef bint take(self, const char* key, Py_ssize_t n, double now, RateDecision* out) noexcept:
        """Takes a token from `key`'s bucket at monotonic time `now`; fills `out`."""
        cdef double* tokens
        cdef double* updated
        cdef int slot
        if self.global_key:
            tokens = &self.g_tokens
            updated = &self.g_updated
        else:
            slot = self.keys.find(key, n)
            if slot < 0:
                slot = self.keys.insert(key, n)
                self.tokens[slot] = self.burst
                self.updated[slot] = now
            tokens = &self.tokens[slot]
            updated = &self.updated[slot]
        if updated[0] < 0:
            updated[0] = now
        if now > updated[0]:
            tokens[0] += (now - updated[0]) * self.rate
            if tokens[0] > self.burst:
                tokens[0] = self.burst
            updated[0] = now
        out.limit = self.burst
        if tokens[0] >= 1.0 - 1e-9:       # (refills add up floats: allow for rounding)
            tokens[0] -= 1.0
            if tokens[0] < 0:
                tokens[0] = 0
            out.allowed = True
            out.retry_after = 0.0
        else:
            out.allowed = False
            out.retry_after = (1.0 - tokens[0]) / self.rate
        out.remaining = tokens[0]
        out.reset = (self.burst - tokens[0]) / self.rate
        return out.allowed

    # -- Python-level forms, for tests ----------------------------------------------------

    def check(self, bytes key, double now):
        """(allowed, remaining, retry_after, reset) for one request of `key` at `now`."""
        cdef RateDecision d
        self.take(key, len(key), now, &d)
        return d.allowed, d.remaining, d.retry_after, d.reset

    @property
    def keys_held(self):
        return 1 if self.global_key else self.keys.used

    @property
    def max_keys(self):
        return 1 if self.global_key else self.keys.capacity

    @property
    def evictions(self):
        return 0 if self.global_key else self.keys.evictions


cdef bytes rate_limit_headers(RateDecision* d, double window):
    """The 429's extra header lines: Retry-After (RFC 9110) and the IETF draft's
    RateLimit-Limit / -Remaining / -Reset / -Policy."""
    return (("retry-after: %d\r\nratelimit-limit: %d\r\nratelimit-remaining: %d\r\n"
             "ratelimit-reset: %d\r\nratelimit-policy: %d;w=%d\r\n") % (
        <long>ceil(d.retry_after) if d.retry_after > 0 else 1, <long>d.limit, <long>d.remaining,
        <long>ceil(d.reset), <long>d.limit, <long>ceil(window) if window >= 1 else 1)).encode()


def headers_for(double limit, double remaining, double retry_after, double reset, double window):
    """Python entry for tests: the header lines of a refusal."""
    cdef RateDecision d
    d.allowed = False
    d.limit = limit
    d.remaining = remaining
    d.retry_after = retry_after
    d.reset = reset
    return rate_limit_headers(&d, window)
