# Declarations of the HTTP caching rules (RFC 9111) as pure functions; see cache_control.pyx.

# Cache-Control directives seen in one message (request or response), a bit each.
cdef enum CacheControlFlag:
    CC_PRESENT = 0x001            # the message has a Cache-Control field
    CC_NO_STORE = 0x002
    CC_NO_CACHE = 0x004           # also a request's `Pragma: no-cache` without Cache-Control
    CC_PRIVATE = 0x008            # qualified (private="x") counts as unqualified
    CC_PUBLIC = 0x010
    CC_MUST_REVALIDATE = 0x020    # must-revalidate or proxy-revalidate (this is a shared cache)
    CC_MAX_AGE = 0x040
    CC_S_MAXAGE = 0x080
    CC_MIN_FRESH = 0x100
    CC_ONLY_IF_CACHED = 0x200

cdef struct CacheControl:
    unsigned int flags            # CacheControlFlag bits
    double max_age                # seconds, with CC_MAX_AGE (the smallest when repeated)
    double s_maxage               # with CC_S_MAXAGE
    double min_fresh              # with CC_MIN_FRESH

cdef enum:
    NO_FRESHNESS = -1             # freshness_lifetime: the response may not be stored

cdef void parse_cache_control(const char* b, Py_ssize_t s, Py_ssize_t e, CacheControl* cc) noexcept
cdef bint has_token(const char* b, Py_ssize_t s, Py_ssize_t e, const char* token, Py_ssize_t n) noexcept
cdef double parse_http_date(const char* p, Py_ssize_t n) noexcept
cdef bint etag_list_matches(const char* lst, Py_ssize_t n, const char* etag, Py_ssize_t m) noexcept
cdef bint storable_status(int status) noexcept
cdef bint heuristic_status(int status) noexcept
cdef double freshness_lifetime(const CacheControl* cc, int status, double date, bint has_expires,
                               double expires, double ttl) noexcept
cdef double corrected_initial_age(double age_value, double date, double response_wall,
                                  double request_time, double response_time) noexcept
