# cython: language_level=3
"""A route's policy chain, composed in one place: what happens to a request between
"it matched this route" and "it goes to this upstream".

    authn        a credential is required and verified (401, flag UAEX)
    authz        allow/deny rules on principal, claims, method, path, source (403, UAEX)
    rate limit   a token from the key's bucket (429 with Retry-After, flag RL)
    body limit   a declared Content-Length above max_request_body (413; a chunked body
                 is counted as it streams, by the downstream)
    fault        delay (flag DI) and/or abort (the configured status, flag FI)
    headers      request edits now; response edits when the response head arrives
    cache        the route's ResponseCache (response_cache.pyx): the downstream looks the
                 request up once the chain lets it through, before a destination is
                 chosen, and a hit is answered without an upstream
    destination  outbound routes: a weighted pick among the route's services, each a
                 ServiceCluster (load balancing and resilience live there)

Each stage is its own module, compiled from config once (fastpath.policy); `decide` runs
the stages in C with the request's parsed head and the connection's facts, and creates no
Python object when the request goes through (a local response builds its few header
lines). Stages a route does not configure cost one pointer test.
"""
import os

from libc.stdint cimport uint64_t
from libc.stdlib cimport calloc, free
from libc.string cimport memcpy, memset
from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_GET_SIZE
from posix.time cimport clock_gettime, timespec, CLOCK_REALTIME

from fastpath.parser cimport MessageHead, Field, BODY_LENGTH
from fastpath.exchange cimport RF_RL, RF_UAEX, RF_DI, RF_FI, DECISION_ALLOW, DECISION_DENY
from fastpath.request_path cimport RequestPath
from fastpath.net_address cimport IpAddress, parse_ip
from fastpath.authn cimport Authenticator, Principal, AUTHN_OK, AUTHN_MISSING
from fastpath.authz cimport AuthzPolicy
from fastpath.token_bucket cimport TokenBucketLimiter, RateDecision, rate_limit_headers
from fastpath.fault cimport FaultInjector
from fastpath.header_edits cimport HeaderEdits
from fastpath.service_cluster cimport ServiceCluster
from fastpath.fast_random cimport Rng, rng_seed, rng_below
from fastpath.response_cache cimport ResponseCache


cdef extern from "strings.h":
    int strncasecmp(const char* a, const char* b, size_t n)


# Local response texts (module constants: a refusal allocates none of them).
REASON_AUTHN_MISSING = "authentication required"
REASON_AUTHN_INVALID = "invalid credentials"
REASON_AUTHZ = "RBAC: access denied"
REASON_RATE = "local rate limit exceeded"
REASON_BODY = "request body too large"
REASON_FAULT = "fault filter abort"


cdef inline double wall_now() noexcept:
    cdef timespec ts
    clock_gettime(CLOCK_REALTIME, &ts)
    return ts.tv_sec + ts.tv_nsec * 1e-9


cdef class RequestFacts:
    def __cinit__(self):
        self.path = RequestPath()

    cdef void set_client(self, bytes client_ip):
        self.client_ip = client_ip
        if client_ip is None or not parse_ip(PyBytes_AS_STRING(client_ip), &self.source):
            memset(&self.source, 0, sizeof(IpAddress))

    @property
    def principal_name(self):
        return self.principal.name if self.principal is not None else None


cdef class RoutePolicy:
    def __cinit__(self, int index, str name, Authenticator authn=None, AuthzPolicy authz=None,
                  TokenBucketLimiter ratelimit=None, str ratelimit_key="client_ip",
                  long long max_request_body=-1, FaultInjector fault=None,
                  HeaderEdits request_edits=None, HeaderEdits response_edits=None,
                  clusters=(), weights=(), seed=None, ResponseCache cache=None):
        """The stages of route `name` (index `index` among its direction's routes); any
        may be None. `clusters`/`weights`: the weighted services of an outbound route;
        `cache`: its response cache."""
        cdef int i
        cdef unsigned int running = 0
        cdef uint64_t s
        cdef bytes b
        self.index = index
        self.name = name
        self.name_bytes = name.encode()
        self.authn = authn
        self.authz = authz
        self.ratelimit = ratelimit
        self.ratelimit_key = RLK_CLIENT_IP
        if ratelimit is not None:
            self.ratelimit_window = ratelimit.burst / ratelimit.rate
            if ratelimit_key == "global":
                self.ratelimit_key = RLK_GLOBAL
            elif ratelimit_key.startswith("header:"):
                self.ratelimit_key = RLK_HEADER
                self.ratelimit_header = ratelimit_key[7:].lower().encode()
            elif ratelimit_key.startswith("jwt:"):
                self.ratelimit_key = RLK_CLAIM
        self.max_request_body = max_request_body
        self.fault = fault
        self.request_edits = request_edits
        self.response_edits = response_edits
        self.cache = cache
        self.clusters = list(clusters)
        self.weights = <unsigned int*>calloc(max(1, len(self.clusters)), sizeof(unsigned int))
        if self.weights == NULL:
            raise MemoryError()
        for i, w in enumerate(weights):
            running += <unsigned int>w
            self.weights[i] = running
        self.total_weight = running
        if seed is None:
            b = os.urandom(8)
            memcpy(&s, PyBytes_AS_STRING(b), 8)
        else:
            s = <uint64_t>seed
        rng_seed(&self.rng, s)

    def __dealloc__(self):
        free(self.weights)

    cdef int decide(self, MessageHead req, RequestFacts f, Verdict* v) except -1:
        """Runs the chain for request `req`; fills `v` (status 0: forward it)."""
        cdef Principal p = None
        cdef int outcome = 0
        cdef uint64_t identity = 0
        cdef RateDecision rd
        cdef const char* key = NULL
        cdef Py_ssize_t key_len = 0
        cdef int i
        cdef Field* fld
        cdef double delay = 0.0
        cdef int status
        memset(v, 0, sizeof(Verdict))
        f.principal = None
        f.local_headers = None

        if self.authn is not None:
            p = self.authn.authenticate(req, wall_now(), &outcome)
            if p is None:
                v.flags |= RF_UAEX
                v.status = 401
                f.local_headers = self.authn.challenge_lines(outcome)
                f.reason = REASON_AUTHN_MISSING if outcome == AUTHN_MISSING else REASON_AUTHN_INVALID
                return 0
            f.principal = p
            identity = p.identity_bits

        if self.authz is not None:
            if f.peer_identity is not None and self.authz.needs_identity:
                # mTLS: the peer's identity joins the credential's (computed per request
                # here; a TLS listener would keep it per connection and token).
                identity |= self.authz.identity_bits(
                    (p.name if p is not None else None, f.peer_identity),
                    p.claims if p is not None else None)
            v.authz = self.authz.decide(req.method, req.buf + req.start, req.method_end - req.start,
                                        f.path.p, f.path.n, &f.source, identity)
            if v.authz == DECISION_DENY:
                v.flags |= RF_UAEX
                v.status = 403
                f.reason = REASON_AUTHZ
                return 0

        if self.ratelimit is not None:
            if self.ratelimit_key == RLK_CLIENT_IP:
                if f.client_ip is not None:
                    key = PyBytes_AS_STRING(f.client_ip)
                    key_len = PyBytes_GET_SIZE(f.client_ip)
            elif self.ratelimit_key == RLK_HEADER:
                key_len = PyBytes_GET_SIZE(self.ratelimit_header)
                key = NULL
                for i in range(req.nfields):
                    fld = &req.fields[i]
                    if (fld.name_end - fld.line_start == key_len and strncasecmp(
                            req.buf + fld.line_start, PyBytes_AS_STRING(self.ratelimit_header), key_len) == 0):
                        key = req.buf + fld.value_start
                        key_len = fld.value_end - fld.value_start
                        break
                if key == NULL:
                    key_len = 0          # requests without the field share one bucket
            elif self.ratelimit_key == RLK_CLAIM:
                if p is not None and p.ratelimit_key is not None:
                    key = PyBytes_AS_STRING(p.ratelimit_key)
                    key_len = PyBytes_GET_SIZE(p.ratelimit_key)
            if key == NULL:
                key = b""
                key_len = 0
            if self.ratelimit.take(key, key_len, f.now, &rd):
                v.ratelimit = DECISION_ALLOW
            else:
                v.ratelimit = DECISION_DENY
                v.flags |= RF_RL
                v.status = 429
                f.local_headers = rate_limit_headers(&rd, self.ratelimit_window)
                f.reason = REASON_RATE
                return 0

        if (self.max_request_body >= 0 and req.body_kind == BODY_LENGTH
                and req.content_length > self.max_request_body):
            v.status = 413
            f.reason = REASON_BODY
            return 0

        if self.fault is not None:
            status = self.fault.choose(&delay)
            if delay > 0:
                v.delay = delay
                v.flags |= RF_DI
            if status:
                v.flags |= RF_FI
                f.reason = REASON_FAULT
                if delay > 0:
                    v.abort_after_delay = status
                else:
                    v.status = status
        return 0

    cdef ServiceCluster pick_cluster(self):
        """The service cluster for this request (weighted), or None for a route without
        services."""
        cdef int n = len(self.clusters)
        cdef unsigned int r
        cdef int i
        if n == 0:
            return None
        if n == 1 or self.total_weight == 0:
            return <ServiceCluster>self.clusters[0]
        r = <unsigned int>rng_below(&self.rng, self.total_weight)
        for i in range(n):
            if r < self.weights[i]:
                return <ServiceCluster>self.clusters[i]
        return <ServiceCluster>self.clusters[n - 1]

    # -- Python-level forms, for tests and tools -------------------------------------------

    @property
    def has_services(self):
        return bool(self.clusters)

    @property
    def request_header_edits(self):
        return self.request_edits

    @property
    def response_header_edits(self):
        return self.response_edits

    @property
    def rate_limiter(self):
        return self.ratelimit

    @property
    def authenticator(self):
        return self.authn

    def evaluate(self, MessageHead req, bytes client_ip=b"127.0.0.1", double now=0.0,
                 bytes peer_identity=None):
        """Runs the chain as the downstream would: a dict of the verdict."""
        cdef Verdict v
        cdef RequestFacts f = RequestFacts()
        f.set_client(client_ip)
        f.peer_identity = peer_identity
        f.now = now
        f.path.load(req)
        self.decide(req, f, &v)
        return {"status": v.status, "flags": v.flags, "ratelimit": v.ratelimit, "authz": v.authz,
                "delay": v.delay, "abort_after_delay": v.abort_after_delay,
                "principal": f.principal, "headers": f.local_headers,
                "reason": f.reason if v.status or v.abort_after_delay else None}

    def pick_service(self):
        """Python entry for tests: the index of the picked service, or -1."""
        cdef ServiceCluster c = self.pick_cluster()
        return c.index if c is not None else -1
