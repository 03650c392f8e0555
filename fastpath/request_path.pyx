# cython: language_level=3
"""The request path that routes and authorization rules match, and path patterns.

The path is the request target without its query (`?...`) and, for absolute-form
targets (`http://host/path`, which outbound proxies receive), without scheme and
authority. Before matching it is normalised as RFC 3986 section 6 describes, so that
`/./admin`, `/a/../admin`, `//admin` and `/%61dmin` cannot slip past a rule on `/admin`:

- percent-encoded unreserved characters (ALPHA DIGIT - . _ ~) are decoded; other
  escapes (`%2F` among them) stay as they are, with upper-case hex digits;
- dot segments are removed (section 5.2.4) and runs of `/` merged into one.

Only matching sees the normalised form; the request is forwarded as the client sent it.
A path that needs none of this (nearly all) is matched in place, without a copy.
"""
from libc.stdlib cimport malloc, realloc, free
from libc.string cimport memchr, memcmp, memcpy

from fastpath.parser cimport MessageHead

cdef const char* SLASH = b"/"
cdef const char* HEXDIGITS = b"0123456789ABCDEF"


cdef bint path_matches(const PathPattern* p, const char* path, Py_ssize_t n) noexcept:
    if p.kind == PATH_ANY:
        return True
    if p.kind == PATH_EXACT:
        return n == p.len and memcmp(path, p.text, n) == 0
    if p.kind == PATH_PREFIX:
        return n >= p.len and memcmp(path, p.text, p.len) == 0
    if p.kind == PATH_SUFFIX:
        return n >= p.len and memcmp(path + n - p.len, p.text, p.len) == 0
    return False


cdef inline int _hex(char c) noexcept:
    if b'0' <= c <= b'9':
        return c - 48
    if b'a' <= c <= b'f':
        return c - 87
    if b'A' <= c <= b'F':
        return c - 55
    return -1


cdef inline bint _unreserved(int c) noexcept:
    return ((65 <= c <= 90) or (97 <= c <= 122) or (48 <= c <= 57)
            or c == 45 or c == 46 or c == 95 or c == 126)


cdef bint _needs_normalising(const char* p, Py_ssize_t n) noexcept:
    cdef Py_ssize_t i
    for i in range(n):
        if p[i] == b'%':
            return True
        if p[i] == b'/' and i + 1 < n and (p[i + 1] == b'/' or p[i + 1] == b'.'):
            return True
    return False


cdef Py_ssize_t _decode_unreserved(const char* src, Py_ssize_t n, char* out) noexcept:
    cdef Py_ssize_t i = 0
    cdef Py_ssize_t o = 0
    cdef int hi, lo, c
    while i < n:
        if src[i] == b'%' and i + 2 < n:
            hi = _hex(src[i + 1])
            lo = _hex(src[i + 2])
            if hi >= 0 and lo >= 0:
                c = hi * 16 + lo
                if _unreserved(c):
                    out[o] = <char>c
                else:
                    out[o] = b'%'
                    out[o + 1] = HEXDIGITS[hi]
                    out[o + 2] = HEXDIGITS[lo]
                    o += 2
                o += 1
                i += 3
                continue
        out[o] = src[i]
        o += 1
        i += 1
    return o


cdef Py_ssize_t _remove_dot_segments(const char* a, Py_ssize_t n, char* b) noexcept:
    """`a` starts with '/'; writes the path without dot segments and repeated slashes
    to `b` (never longer than `a`); returns its length."""
    cdef Py_ssize_t i = 0
    cdef Py_ssize_t o = 0
    cdef Py_ssize_t j, k, seg
    cdef bint dir_end = False
    while i < n:
        j = i
        while j < n and a[j] == b'/':
            j += 1
        if j == n:
            dir_end = True
            break
        k = j
        while k < n and a[k] != b'/':
            k += 1
        seg = k - j
        if seg == 1 and a[j] == b'.':
            dir_end = True
        elif seg == 2 and a[j] == b'.' and a[j + 1] == b'.':
            while o > 0 and b[o - 1] != b'/':
                o -= 1
            if o > 0:
                o -= 1
            dir_end = True
        else:
            b[o] = b'/'
            memcpy(b + o + 1, a + j, seg)
            o += 1 + seg
            dir_end = False
        i = k
    if dir_end or o == 0:
        b[o] = b'/'
        o += 1
    return o


cdef class RequestPath:
    def __dealloc__(self):
        free(self.buf)

    cdef int load(self, MessageHead h) except -1:
        """Points at the path of request `h`, normalised when it needs it."""
        cdef const char* t = h.buf + h.target_start
        cdef Py_ssize_t n = h.target_end - h.target_start
        cdef const char* q
        cdef Py_ssize_t i
        cdef Py_ssize_t need
        cdef char* nb
        self.as_bytes = None
        if n and t[0] != b'/':
            # absolute-form (scheme://authority/path) or asterisk-form ("*")
            q = <const char*>memchr(t, b':', n)
            if q != NULL and q - t + 2 < n and q[1] == b'/' and q[2] == b'/':
                i = q - t + 3
                while i < n and t[i] != b'/' and t[i] != b'?':
                    i += 1
                t += i
                n -= i
            if n == 0 or t[0] == b'?':
                self.p = SLASH
                self.n = 1
                return 0
            if t[0] != b'/':
                self.p = t         # "*", or something no route's path can match
                self.n = n
                return 0
        q = <const char*>memchr(t, b'?', n)
        if q != NULL:
            n = q - t
        q = <const char*>memchr(t, b'#', n)
        if q != NULL:
            n = q - t
        if not _needs_normalising(t, n):
            self.p = t
            self.n = n
            return 0
        need = 2 * n + 2
        if need > self.cap:
            nb = <char*>realloc(self.buf, need)
            if nb == NULL:
                raise MemoryError()
            self.buf = nb
            self.cap = need
        i = _decode_unreserved(t, n, self.buf)
        self.n = _remove_dot_segments(self.buf, i, self.buf + n + 1)
        self.p = self.buf + n + 1
        return 0

    cdef bytes get_bytes(self):
        if self.as_bytes is None:
            self.as_bytes = self.p[:self.n]
        return self.as_bytes

    # Python-level views, for tests.
    @property
    def value(self):
        return self.p[:self.n] if self.p != NULL else None

    def load_head(self, MessageHead h):
        self.load(h)
        return self.p[:self.n]
