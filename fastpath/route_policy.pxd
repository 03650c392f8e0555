# Declarations of a route's policy chain; see route_policy.pyx.
from libc.stdint cimport uint64_t
from fastpath.parser cimport MessageHead
from fastpath.request_path cimport RequestPath
from fastpath.net_address cimport IpAddress
from fastpath.authn cimport Authenticator, Principal
from fastpath.authz cimport AuthzPolicy
from fastpath.token_bucket cimport TokenBucketLimiter
from fastpath.fault cimport FaultInjector
from fastpath.header_edits cimport HeaderEdits
from fastpath.service_cluster cimport ServiceCluster
from fastpath.fast_random cimport Rng
from fastpath.response_cache cimport ResponseCache

cdef enum RateLimitKey:
    RLK_CLIENT_IP = 0
    RLK_HEADER
    RLK_CLAIM
    RLK_GLOBAL

cdef struct Verdict:
    int status                # 0: forward; else answer this status locally
    unsigned int flags        # ResponseFlag bits to add
    int ratelimit             # Decision
    int authz                 # Decision
    double delay              # hold the request this long before forwarding (0: no)
    int abort_after_delay     # status to answer once the delay is over (0: forward)


cdef class RequestFacts:
    """What the policy chain reads of a request beyond its head, and what it leaves for
    the downstream (one per connection, reused for each exchange)."""
    cdef RequestPath path
    cdef IpAddress source            # the client address, parsed once per connection
    cdef bytes client_ip
    cdef public bytes peer_identity  # the peer's SPIFFE ID under mTLS (None without TLS)
    cdef double now                  # monotonic time the request head was complete
    # set by RoutePolicy.decide
    cdef Principal principal
    cdef bytes local_headers         # extra header lines of a local response
    cdef str reason                  # its body text

    cdef void set_client(self, bytes client_ip)


cdef class RoutePolicy:
    cdef readonly int index          # route index in its direction (ExchangeRecord.route)
    cdef readonly str name
    cdef bytes name_bytes
    cdef Authenticator authn
    cdef AuthzPolicy authz
    cdef TokenBucketLimiter ratelimit
    cdef int ratelimit_key
    cdef bytes ratelimit_header
    cdef double ratelimit_window
    cdef readonly long long max_request_body   # -1: no limit
    cdef FaultInjector fault
    cdef HeaderEdits request_edits
    cdef HeaderEdits response_edits
    cdef readonly ResponseCache cache   # the route's response cache, or None
    cdef list clusters               # ServiceCluster per weighted entry (outbound routes)
    cdef unsigned int* weights       # cumulative
    cdef unsigned int total_weight
    cdef Rng rng

    cdef int decide(self, MessageHead req, RequestFacts f, Verdict* v) except -1
    cdef ServiceCluster pick_cluster(self)
