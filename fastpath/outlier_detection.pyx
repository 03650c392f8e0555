# cython: language_level=3
"""Passive outlier detection (the `outlier_detection` section), as Envoy's consecutive-5xx
detector: an endpoint whose requests fail `consecutive` times in a row (a 5xx response,
a connect failure, a reset or a try timeout; any other response ends the streak) is
ejected from load balancing for `ejection` times the number of times it was ejected, at
most `max_ejection`; an endpoint that stays well for `interval` has one ejection fewer
counted against it, so the time grows for endpoints that keep failing and shrinks back
for those that recover. At most `max_ejected` of the endpoints (rounded down) are ejected
at once (one of two or more whenever max_ejected is not 0): detection never empties a
service of two or more endpoints on its own, and ejects a service's only endpoint only
with max_ejected 100%.

Per worker: each worker sees its own share of the requests and ejects on its own.
"""
from fastpath.endpoint cimport Endpoint


cdef class OutlierDetector:
    def __cinit__(self, int consecutive, double interval, double ejection, double max_ejection,
                  double max_ejected):
        self.consecutive = consecutive
        self.interval = interval
        self.ejection = ejection
        self.max_ejection = max_ejection if max_ejection >= ejection else ejection
        self.max_ejected = max_ejected

    cdef bint failed(self, Endpoint ep, double now, int ejected_now, int n_endpoints):
        """Counts a failure of `ep`; True when it is to be ejected now."""
        ep.failures += 1
        ep.well_since = now
        if ep.failures < self.consecutive or ep.ejected_until > 0:
            return False
        return ejected_now < self.most_ejected(n_endpoints)

    cdef int most_ejected(self, int n_endpoints):
        """Endpoints that may be ejected at once: max_ejected of them rounded down, but
        one of two or more whenever max_ejected is not 0 (as Envoy allows one)."""
        cdef int most = <int>(n_endpoints * self.max_ejected + 1e-9)
        if most == 0 and self.max_ejected > 0 and n_endpoints > 1:
            most = 1
        return most

    cdef double eject(self, Endpoint ep, double now):
        """Ejects `ep`; returns for how long."""
        cdef double took
        ep.ejections += 1
        took = self.ejection * ep.ejections
        if took > self.max_ejection:
            took = self.max_ejection
        ep.ejected_until = now + took
        ep.failures = 0
        return took

    cdef bint decay(self, Endpoint ep, double now):
        """One ejection fewer counted for an endpoint well for an interval; True if so."""
        if ep.ejections > 0 and ep.ejected_until == 0 and now - ep.well_since >= self.interval:
            ep.ejections -= 1
            ep.well_since = now
            return True
        return False

    # -- Python-level forms, for tests ------------------------------------------------------

    def record_failure(self, Endpoint ep, double now, int ejected_now, int n_endpoints):
        return self.failed(ep, now, ejected_now, n_endpoints)

    def eject_endpoint(self, Endpoint ep, double now):
        return self.eject(ep, now)

    def decay_endpoint(self, Endpoint ep, double now):
        return self.decay(ep, now)
