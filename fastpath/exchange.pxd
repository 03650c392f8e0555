# What one HTTP exchange did: filled in by the stages it passes through (downstream,
# routing, policy, upstream) and handed whole to the listener's telemetry when it ends
# (ListenerContext.exchange_done). A plain C struct: no Python object per request.
#
# The flag bits and decision values are ABI with the telemetry layer, which turns them
# into metric label values and access-log fields; change them together with the
# tables of names in sidecar/telemetry (RESPONSE_FLAGS and the decision names).

# Envoy's response-flag vocabulary (SPEC.md, "Response flags"), one bit each.
cdef enum ResponseFlag:
    RF_UF = 0x001       # upstream connect failure
    RF_UO = 0x002       # upstream overflow (circuit breaker)
    RF_UT = 0x004       # upstream request timeout
    RF_UH = 0x008       # no healthy upstream
    RF_RL = 0x010       # rate limited
    RF_UAEX = 0x020     # unauthorized (authn or authz)
    RF_DI = 0x040       # delay injected
    RF_FI = 0x080       # fault (abort) injected
    RF_DC = 0x100       # downstream closed before the response was complete
    RF_URX = 0x200      # retry limit exceeded
    RF_UC = 0x400       # upstream connection terminated (reset, bad or truncated response)

# ratelimit and authz decisions; DECISION_NONE: the route has no such policy.
cdef enum Decision:
    DECISION_NONE = 0
    DECISION_ALLOW
    DECISION_DENY

cdef enum CacheResult:
    CACHE_NONE = 0      # the route has no cache, or the request is not cacheable
    CACHE_HIT
    CACHE_MISS

cdef struct ExchangeRecord:
    double start                  # CLOCK_MONOTONIC seconds: the request head was complete
    int method                    # parser Method
    int status                    # status sent to the client; 0: none was sent
    int route                     # index of the matched route in its direction; -1: none
    int service                   # index in config `services`; -1: the original destination
    unsigned int flags            # ResponseFlag bits
    long long request_bytes       # request body bytes received from the client
    long long response_bytes      # response bytes (after the head) sent to the client
    int retries                   # upstream attempts beyond the first
    int ratelimit                 # Decision
    int authz                     # Decision
    int cache                     # CacheResult
