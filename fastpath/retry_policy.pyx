# cython: language_level=3
"""A service's retry policy, compiled once per config (the `retries` section).

What it decides is pure: whether a condition or a status is retriable, and how long the
nth retry waits. The rules of *when* a request may be retried at all (idempotent method
or nothing sent, the replay buffer, the response not started, the budget) are applied by
the exchange (downstream.pyx) with the service's CircuitBreaker.

Backoff is exponential with full jitter, as Envoy's: the nth retry waits a uniformly
random time in [0, min(backoff_max, backoff_base * (2**n - 1))].
"""
import os

from fastpath.fast_random cimport rng_seed, rng_next

DEF TWO_POW_53 = 9007199254740992.0

# `retries.on` words (sidecar/config/schema.py) -> RetryOn bits or status ranges.
_CONDITIONS = {"connect-failure": RETRY_ON_CONNECT_FAILURE, "reset": RETRY_ON_RESET,
               "timeout": RETRY_ON_TIMEOUT}
_STATUS_SETS = {"5xx": range(500, 600), "gateway-error": (502, 503, 504)}


cdef class RetryPolicy:
    def __cinit__(self, int attempts, on, double per_try_timeout=0.0, double backoff_base=0.025,
                  double backoff_max=0.25, Py_ssize_t replay_limit=65536, seed=None):
        """`on`: the config's words and statuses; `seed` fixes the jitter (tests)."""
        cdef int i
        self.attempts = attempts
        self.per_try_timeout = per_try_timeout if per_try_timeout > 0 else 0.0
        self.backoff_base = backoff_base
        self.backoff_max = backoff_max if backoff_max >= backoff_base else backoff_base
        self.replay_limit = replay_limit
        for i in range(200):
            self.statuses[i] = 0
        for word in on:
            word = str(word)
            if word in _CONDITIONS:
                self.conditions |= _CONDITIONS[word]
            elif word in _STATUS_SETS:
                for status in _STATUS_SETS[word]:
                    self.statuses[status - 400] = 1
            else:
                status = int(word)
                if not 400 <= status < 600:
                    raise ValueError("retriable statuses are 4xx or 5xx, not %d" % status)
                self.statuses[status - 400] = 1
        rng_seed(&self.rng, int.from_bytes(os.urandom(8), "little") if seed is None else seed)

    cdef double backoff(self, int retry) noexcept:
        """Seconds the `retry`th retry (1-based) waits."""
        cdef double ceiling = self.backoff_base * ((1 << (retry if retry < 30 else 30)) - 1)
        if ceiling > self.backoff_max:
            ceiling = self.backoff_max
        return ceiling * ((rng_next(&self.rng) >> 11) / TWO_POW_53)

    # -- Python-level forms, for tests ------------------------------------------------------

    def retries_on(self, condition):
        """Whether `condition` (a RetryOn word, or a status) is retriable."""
        if isinstance(condition, int):
            return self.on_status(condition)
        return bool(self.conditions & _CONDITIONS[condition])

    def backoff_for(self, int retry):
        return self.backoff(retry)
