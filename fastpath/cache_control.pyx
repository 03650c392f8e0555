# cython: language_level=3
"""The HTTP caching rules the response cache follows (a subset of RFC 9111), as pure
functions over bytes: no I/O, no store, no Python object per call.

Directives (`parse_cache_control`): names case-insensitive, values as tokens or quoted
strings, commas inside quotes kept. A repeated max-age, s-maxage or min-fresh keeps the
smallest value; a value that is not delta-seconds counts as 0 (RFC 9111 4.2.1 lets a
cache treat such a response as stale). `no-cache="field"` and `private="field"` are
taken unqualified (RFC 9111 5.2.2.4 and 5.2.2.7 allow it): the whole response is
revalidated, or not stored. `proxy-revalidate` is `must-revalidate` here, this cache
being shared.

Statuses (`storable_status`, `heuristic_status`): RFC 9110 15.1's heuristically
cacheable codes minus 206 (no range support): 200, 203, 204, 300, 301, 308, 404, 405,
410, 414, 501. Of those, 200, 203, 204, 300, 301 and 308 take the route's `ttl` as
their freshness when the response states none; the errors (404, 405, 410, 414, 501) are
stored only with explicit freshness, so a passing error is never cached on the
sidecar's own initiative. Any other status is never stored.

Freshness (`freshness_lifetime`, RFC 9111 4.2.1, for a shared cache): s-maxage, else
max-age, else Expires minus Date (an Expires that does not parse is in the past), else
the route's `ttl` for the statuses above; an explicit lifetime is capped at `ttl`, so
`ttl` is the longest a response is ever served without validation.

Age (`corrected_initial_age`, RFC 9111 4.2.3): the larger of the apparent age (our
clock minus Date) and the upstream's Age plus the time the response took to arrive.
Date has one-second resolution, so the apparent age allows for it: a Date up to one
second behind our clock is age 0 (a response stamped in the second before the one it
arrives in is not taken as a second old).

Dates (`parse_http_date`, RFC 9110 5.6.7): IMF-fixdate, the obsolete RFC 850 form and
asctime, all GMT; anything else is invalid.

Validators (`etag_list_matches`): If-None-Match's weak comparison (RFC 9110 13.1.2),
`*` matching any stored entity tag.
"""
from libc.string cimport memcmp


cdef extern from "strings.h":
    int strncasecmp(const char* a, const char* b, size_t n)


DEF MAX_DELTA_SECONDS = 2147483648.0     # RFC 9111 1.2.2: larger values mean "this"


cdef inline bint _is_ows(char c) noexcept:
    return c == b' ' or c == b'\t'


cdef inline bint _name_is(const char* b, Py_ssize_t s, Py_ssize_t e, const char* name, Py_ssize_t n) noexcept:
    return e - s == n and strncasecmp(b + s, name, <size_t>n) == 0


cdef double _delta_seconds(const char* b, Py_ssize_t s, Py_ssize_t e) noexcept:
    """delta-seconds in [s, e), or 0 when it is not one."""
    cdef double value = 0
    cdef Py_ssize_t i
    if s >= e:
        return 0
    for i in range(s, e):
        if not (b'0' <= b[i] <= b'9'):
            return 0
        if value < MAX_DELTA_SECONDS:
            value = value * 10 + (b[i] - 48)
    return value if value < MAX_DELTA_SECONDS else MAX_DELTA_SECONDS


cdef inline void _keep_smallest(CacheControl* cc, unsigned int flag, double* slot, double value) noexcept:
    if not (cc.flags & flag) or value < slot[0]:
        slot[0] = value
    cc.flags |= flag


cdef void _directive(const char* b, Py_ssize_t ns, Py_ssize_t ne, Py_ssize_t vs, Py_ssize_t ve,
                     CacheControl* cc) noexcept:
    if _name_is(b, ns, ne, b"max-age", 7):
        _keep_smallest(cc, CC_MAX_AGE, &cc.max_age, _delta_seconds(b, vs, ve))
    elif _name_is(b, ns, ne, b"s-maxage", 8):
        _keep_smallest(cc, CC_S_MAXAGE, &cc.s_maxage, _delta_seconds(b, vs, ve))
    elif _name_is(b, ns, ne, b"no-cache", 8):
        cc.flags |= CC_NO_CACHE
    elif _name_is(b, ns, ne, b"no-store", 8):
        cc.flags |= CC_NO_STORE
    elif _name_is(b, ns, ne, b"private", 7):
        cc.flags |= CC_PRIVATE
    elif _name_is(b, ns, ne, b"public", 6):
        cc.flags |= CC_PUBLIC
    elif _name_is(b, ns, ne, b"must-revalidate", 15) or _name_is(b, ns, ne, b"proxy-revalidate", 16):
        cc.flags |= CC_MUST_REVALIDATE
    elif _name_is(b, ns, ne, b"min-fresh", 9):
        _keep_smallest(cc, CC_MIN_FRESH, &cc.min_fresh, _delta_seconds(b, vs, ve))
    elif _name_is(b, ns, ne, b"only-if-cached", 14):
        cc.flags |= CC_ONLY_IF_CACHED


cdef void parse_cache_control(const char* b, Py_ssize_t s, Py_ssize_t e, CacheControl* cc) noexcept:
    """Adds the directives of one Cache-Control field value b[s:e] to `cc` (call once per
    field line; start from a zeroed struct)."""
    cdef Py_ssize_t i = s
    cdef Py_ssize_t ns, ne, vs, ve
    cc.flags |= CC_PRESENT
    while i < e:
        while i < e and (b[i] == b',' or _is_ows(b[i])):
            i += 1
        if i >= e:
            break
        ns = i
        while i < e and b[i] != b'=' and b[i] != b',' and not _is_ows(b[i]):
            i += 1
        ne = i
        while i < e and _is_ows(b[i]):
            i += 1
        vs = ve = i
        if i < e and b[i] == b'=':
            i += 1
            while i < e and _is_ows(b[i]):
                i += 1
            if i < e and b[i] == b'"':
                i += 1
                vs = i
                while i < e and b[i] != b'"':
                    if b[i] == b'\\' and i + 1 < e:
                        i += 1
                    i += 1
                ve = i
                if i < e:
                    i += 1
            else:
                vs = i
                while i < e and b[i] != b',' and not _is_ows(b[i]):
                    i += 1
                ve = i
        while i < e and b[i] != b',':
            i += 1          # junk after a directive: up to the next element
        if ne > ns:
            _directive(b, ns, ne, vs, ve, cc)


cdef bint has_token(const char* b, Py_ssize_t s, Py_ssize_t e, const char* token, Py_ssize_t n) noexcept:
    """Whether the comma-separated list b[s:e] has the element `token` (case-insensitive)."""
    cdef Py_ssize_t i = s
    cdef Py_ssize_t ts, te
    while i < e:
        while i < e and (b[i] == b',' or _is_ows(b[i])):
            i += 1
        ts = i
        while i < e and b[i] != b',':
            i += 1
        te = i
        while te > ts and _is_ows(b[te - 1]):
            te -= 1
        if _name_is(b, ts, te, token, n):
            return True
    return False


# -- HTTP-date ------------------------------------------------------------------------------

cdef int _month(const char* p) noexcept:
    """1..12 for a three-letter month name (case-sensitive, as RFC 9110 5.6.7 writes them)."""
    cdef const char* names = b"JanFebMarAprMayJunJulAugSepOctNovDec"
    cdef int m
    for m in range(12):
        if memcmp(p, names + 3 * m, 3) == 0:
            return m + 1
    return 0


cdef int _number(const char* p, Py_ssize_t n, Py_ssize_t* i, int digits) noexcept:
    """`digits` decimal digits at p[i]; -1 when there are not that many."""
    cdef int value = 0
    cdef int k
    if i[0] + digits > n:
        return -1
    for k in range(digits):
        if not (b'0' <= p[i[0] + k] <= b'9'):
            return -1
        value = value * 10 + (p[i[0] + k] - 48)
    i[0] += digits
    return value


cdef inline bint _expect(const char* p, Py_ssize_t n, Py_ssize_t* i, char c) noexcept:
    if i[0] < n and p[i[0]] == c:
        i[0] += 1
        return True
    return False


cdef bint _time_of_day(const char* p, Py_ssize_t n, Py_ssize_t* i, int* hms) noexcept:
    hms[0] = _number(p, n, i, 2)
    if hms[0] < 0 or not _expect(p, n, i, b':'):
        return False
    hms[1] = _number(p, n, i, 2)
    if hms[1] < 0 or not _expect(p, n, i, b':'):
        return False
    hms[2] = _number(p, n, i, 2)
    return hms[2] >= 0 and hms[0] < 24 and hms[1] < 60 and hms[2] <= 60


cdef long long _days_from_civil(long long y, int m, int d) noexcept:
    """Days since 1970-01-01 of a proleptic Gregorian date (Howard Hinnant's algorithm)."""
    cdef long long era, yoe, doy, doe
    if m <= 2:
        y -= 1
    era = (y if y >= 0 else y - 399) // 400
    yoe = y - era * 400
    doy = (153 * (m + (-3 if m > 2 else 9)) + 2) // 5 + d - 1
    doe = yoe * 365 + yoe // 4 - yoe // 100 + doy
    return era * 146097 + doe - 719468


cdef inline bint _is_gmt(const char* p, Py_ssize_t n, Py_ssize_t i) noexcept:
    return n - i == 4 and memcmp(p + i, b" GMT", 4) == 0


cdef double parse_http_date(const char* p, Py_ssize_t n) noexcept:
    """Seconds since the epoch of an HTTP-date, or -1 when it is not one."""
    cdef Py_ssize_t i = 0
    cdef int day, month, year
    cdef int hms[3]
    while n > 0 and _is_ows(p[n - 1]):
        n -= 1
    while i < n and _is_ows(p[i]):
        i += 1
    # The day name: letters, then ", " (IMF-fixdate, RFC 850) or " " (asctime).
    while i < n and ((b'A' <= p[i] <= b'Z') or (b'a' <= p[i] <= b'z')):
        i += 1
    if i < n and p[i] == b',':
        i += 1
        if not _expect(p, n, &i, b' '):
            return -1
        day = _number(p, n, &i, 2)
        if day < 0:
            return -1
        if _expect(p, n, &i, b' '):
            # IMF-fixdate: "06 Nov 1994 08:49:37 GMT"
            if i + 4 > n:
                return -1
            month = _month(p + i)
            i += 3
            if not _expect(p, n, &i, b' '):
                return -1
            year = _number(p, n, &i, 4)
        elif _expect(p, n, &i, b'-'):
            # RFC 850: "06-Nov-94 08:49:37 GMT"; a two-digit year below 70 is 20xx
            if i + 4 > n:
                return -1
            month = _month(p + i)
            i += 3
            if not _expect(p, n, &i, b'-'):
                return -1
            year = _number(p, n, &i, 2)
            if year >= 0:
                year += 2000 if year < 70 else 1900
        else:
            return -1
        if year < 0 or month == 0 or not _expect(p, n, &i, b' ') or not _time_of_day(p, n, &i, hms):
            return -1
        if not _is_gmt(p, n, i):
            return -1
    elif _expect(p, n, &i, b' '):
        # asctime: "Nov  6 08:49:37 1994"
        if i + 4 > n:
            return -1
        month = _month(p + i)
        i += 3
        if month == 0 or not _expect(p, n, &i, b' '):
            return -1
        if _expect(p, n, &i, b' '):
            day = _number(p, n, &i, 1)
        else:
            day = _number(p, n, &i, 2)
        if day < 0 or not _expect(p, n, &i, b' ') or not _time_of_day(p, n, &i, hms):
            return -1
        if not _expect(p, n, &i, b' '):
            return -1
        year = _number(p, n, &i, 4)
        if year < 0 or i != n:
            return -1
    else:
        return -1
    if day < 1 or day > 31:
        return -1
    return <double>(_days_from_civil(year, month, day) * 86400 + hms[0] * 3600 + hms[1] * 60 + hms[2])


# -- entity tags ----------------------------------------------------------------------------

cdef bint etag_list_matches(const char* lst, Py_ssize_t n, const char* etag, Py_ssize_t m) noexcept:
    """If-None-Match's weak comparison: whether the list lst[0:n] (entity tags, or "*")
    names the stored entity tag etag[0:m] (m == 0: the stored response has none, and only
    "*" matches)."""
    cdef Py_ssize_t i = 0
    cdef Py_ssize_t s
    if m >= 2 and etag[0] == b'W' and etag[1] == b'/':
        etag += 2
        m -= 2
    while i < n:
        while i < n and (lst[i] == b',' or _is_ows(lst[i])):
            i += 1
        if i >= n:
            break
        if lst[i] == b'*':
            return True           # any current representation
        if i + 1 < n and lst[i] == b'W' and lst[i + 1] == b'/':
            i += 2
        if i >= n or lst[i] != b'"':
            return False          # not a list of entity tags: nothing matches
        s = i
        i += 1
        while i < n and lst[i] != b'"':
            i += 1
        if i >= n:
            return False
        i += 1
        if i - s == m and memcmp(lst + s, etag, m) == 0:
            return True
    return False


# -- statuses, freshness, age ---------------------------------------------------------------

cdef bint storable_status(int status) noexcept:
    return (status == 200 or status == 203 or status == 204 or status == 300 or status == 301
            or status == 308 or status == 404 or status == 405 or status == 410 or status == 414
            or status == 501)


cdef bint heuristic_status(int status) noexcept:
    return (status == 200 or status == 203 or status == 204 or status == 300 or status == 301
            or status == 308)


cdef double freshness_lifetime(const CacheControl* cc, int status, double date, bint has_expires,
                               double expires, double ttl) noexcept:
    """Seconds the response stays fresh, capped at `ttl`; NO_FRESHNESS when it may not be
    stored for its status. `date`: the Date value (or when the response arrived, without
    one); `expires`: the Expires value (-1: it did not parse), read when `has_expires`."""
    cdef double explicit
    if not storable_status(status):
        return NO_FRESHNESS
    if cc.flags & CC_S_MAXAGE:
        explicit = cc.s_maxage
    elif cc.flags & CC_MAX_AGE:
        explicit = cc.max_age
    elif has_expires:
        explicit = expires - date if expires >= 0 else 0.0
        if explicit < 0:
            explicit = 0.0
    elif heuristic_status(status):
        return ttl
    else:
        return NO_FRESHNESS
    return explicit if explicit < ttl else ttl


cdef double corrected_initial_age(double age_value, double date, double response_wall,
                                  double request_time, double response_time) noexcept:
    """RFC 9111 4.2.3's corrected_initial_age. `date` and `response_wall` are wall-clock
    seconds (date < 0: no Date), `request_time` and `response_time` monotonic."""
    cdef double apparent = 0.0
    cdef double corrected = age_value + (response_time - request_time)
    if date >= 0:
        apparent = response_wall - date - 1.0
        if apparent < 0:
            apparent = 0.0
    return apparent if apparent > corrected else corrected


# -- Python-level forms, for tests and tools --------------------------------------------------

_FLAG_NAMES = (
    (CC_NO_STORE, "no-store"), (CC_NO_CACHE, "no-cache"), (CC_PRIVATE, "private"),
    (CC_PUBLIC, "public"), (CC_MUST_REVALIDATE, "must-revalidate"),
    (CC_ONLY_IF_CACHED, "only-if-cached"),
)


def cache_control(*values):
    """The directives of Cache-Control field values (bytes), as a dict: flag names -> True,
    and "max-age", "s-maxage", "min-fresh" -> seconds when present."""
    cdef CacheControl cc
    cc.flags = 0
    cc.max_age = cc.s_maxage = cc.min_fresh = 0
    for v in values:
        parse_cache_control(v, 0, len(v), &cc)
    out = {name: True for bit, name in _FLAG_NAMES if cc.flags & bit}
    if cc.flags & CC_MAX_AGE:
        out["max-age"] = cc.max_age
    if cc.flags & CC_S_MAXAGE:
        out["s-maxage"] = cc.s_maxage
    if cc.flags & CC_MIN_FRESH:
        out["min-fresh"] = cc.min_fresh
    return out


def http_date(bytes value):
    """Seconds since the epoch of an HTTP-date, or None."""
    cdef double t = parse_http_date(value, len(value))
    return None if t < 0 else t


def etag_matches(bytes if_none_match, bytes etag):
    return etag_list_matches(if_none_match, len(if_none_match), etag, len(etag))


def lifetime(int status, cache_control_value=None, double date=0.0, expires=None, double ttl=30.0):
    """freshness_lifetime for a response with this status, Cache-Control value (bytes or
    None), Date (seconds) and Expires (bytes or None); None when it may not be stored."""
    cdef CacheControl cc
    cdef double exp = -1
    cc.flags = 0
    cc.max_age = cc.s_maxage = cc.min_fresh = 0
    if cache_control_value is not None:
        parse_cache_control(cache_control_value, 0, len(cache_control_value), &cc)
    if expires is not None:
        exp = parse_http_date(expires, len(expires))
    cdef double t = freshness_lifetime(&cc, status, date, expires is not None, exp, ttl)
    return None if t == NO_FRESHNESS else t


def initial_age(double age_value, double date, double response_wall, double request_time,
                double response_time):
    return corrected_initial_age(age_value, date, response_wall, request_time, response_time)


def is_storable_status(int status):
    return storable_status(status)


def is_heuristic_status(int status):
    return heuristic_status(status)
