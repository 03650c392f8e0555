# cython: language_level=3
"""A service's upstream cluster: where a request for the service goes.

The one place that turns "this request is for service S" into a connection pool. Today:
the service's configured endpoints in turn (round robin), or, without endpoints, the
request's original destination. Load balancing, outlier ejection, health checks, retries
and circuit breaking belong here: they decide among (and around) these pools, and every
request that a route or a Host/CIDR match sends to a service comes through `pick`.
"""
from fastpath.upstream cimport EndpointPool


cdef class ServiceCluster:
    def __cinit__(self, int index, service, pool_factory):
        """`pool_factory(host, port, service)` -> EndpointPool (the router's, which shares
        pools between clusters and retires them on reload)."""
        self.index = index
        self.name = service.name
        self.service = service
        self.pools = [pool_factory(host, port, service) for host, port in service.endpoints]
        self.destination_pool = pool_factory
        self.next_endpoint = 0

    cdef EndpointPool pick(self, object original_dst):
        """The pool for the next request, or None (no endpoints, no original destination)."""
        cdef int n = len(self.pools)
        cdef unsigned int i
        if n:
            i = self.next_endpoint % n
            self.next_endpoint += 1
            return <EndpointPool>self.pools[i]
        if original_dst is not None:
            return self.destination_pool(original_dst[0], original_dst[1], self.service)
        return None

    def pick_pool(self, original_dst=None):
        """Python entry for tests and tools."""
        return self.pick(original_dst)
