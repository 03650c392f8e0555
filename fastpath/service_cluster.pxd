# Declarations of a service's upstream cluster; see service_cluster.pyx.
from fastpath.upstream cimport EndpointPool

cdef class ServiceCluster:
    cdef readonly int index              # in config `services` (ExchangeRecord.service)
    cdef readonly str name
    cdef readonly object service         # the config's Service
    cdef list pools                      # one EndpointPool per configured endpoint
    cdef object destination_pool         # router.pool(host, port, service): no endpoints configured
    cdef unsigned int next_endpoint

    cdef EndpointPool pick(self, object original_dst)
