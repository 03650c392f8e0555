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
    CACHE_NONE = 0      # the route has no cache (or the request was refused before it)
    CACHE_HIT           # answered from the store, without an upstream request
    CACHE_MISS          # looked up, and went upstream
    CACHE_REVALIDATED   # a stored response, validated upstream (304), answered it
    CACHE_BYPASS        # a request the cache does not take (POST, no-store, Range...)

# TraceContext.flags bits (see trace_context.pyx for the propagation rules).
cdef enum TraceFlag:
    TRACE_ON = 0x001            # the context is set (every exchange with a parsed head)
    TRACE_SAMPLED = 0x002       # the span is recorded and exported
    TRACE_DEBUG = 0x004         # B3 debug: sampled, and said so downstream (x-b3-flags: 1)
    TRACE_RANDOM = 0x008        # W3C trace-flags "random" bit: the trace id is random
    TRACE_STATE = 0x010         # a valid tracestate came with the traceparent: forward it
    TRACE_EMIT_W3C = 0x020      # write traceparent (and tracestate) upstream
    TRACE_EMIT_B3 = 0x040       # write x-b3-* upstream
    TRACE_EMIT_B3_SINGLE = 0x080   # also write the single `b3` header (the caller used it)
    TRACE_FROM_W3C = 0x100      # the context came in as traceparent
    TRACE_FROM_B3 = 0x200       # the context came in as b3 / x-b3-*
    TRACE_STATE_BOUNDED = 0x400 # the tracestate is over 512 bytes: forward it truncated

# The trace context of one exchange: a few C fields, no Python object.
cdef struct TraceContext:
    unsigned long long trace_hi       # 128-bit trace id (hi 0 for a 64-bit B3 id)
    unsigned long long trace_lo
    unsigned long long span_id        # the sidecar's span: the upstream's parent
    unsigned long long parent_id      # the caller's span; 0: the sidecar started the trace
    unsigned int flags                # TraceFlag bits

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
    TraceContext trace
