# cython: language_level=3
"""One endpoint of a service, as the service's load balancing, outlier detection and health
checks see it in one worker. Kept across config reloads while the service keeps the
endpoint (ServiceCluster carries it over by address), so a reload neither forgets an
ejection nor brings an unhealthy endpoint back; requests in flight keep counting in
`active`. The decisions are the ServiceCluster's and the OutlierDetector's; this is state.
"""


cdef class Endpoint:
    def __cinit__(self, str host, int port):
        self.host = host
        self.port = port
        self.healthy = True     # until the health check says otherwise (if there is one)

    @property
    def ejected(self):
        return self.ejected_until > 0

    def state(self):
        return {"address": "%s:%d" % (self.host, self.port), "active": self.active,
                "healthy": self.healthy, "ejected": self.ejected_until > 0,
                "failures": self.failures, "ejections": self.ejections}
