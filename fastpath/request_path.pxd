# Declarations of the request path view and path patterns; see request_path.pyx.
from fastpath.parser cimport MessageHead

cdef enum PathKind:
    PATH_ANY = 0
    PATH_EXACT
    PATH_PREFIX
    PATH_SUFFIX
    PATH_REGEX             # matched by the owner (a compiled Python regex)

cdef struct PathPattern:
    int kind
    const char* text       # into a bytes object the owner keeps alive
    Py_ssize_t len
    int regex              # PATH_REGEX: index into the owner's list of compiled patterns

cdef bint path_matches(const PathPattern* p, const char* path, Py_ssize_t n) noexcept


cdef class RequestPath:
    """The path of the current request, for matching (one per connection, reused)."""
    cdef const char* p           # into the request head, or into buf when normalised
    cdef Py_ssize_t n
    cdef char* buf
    cdef Py_ssize_t cap
    cdef bytes as_bytes          # made on first use by a regex, per request

    cdef int load(self, MessageHead h) except -1
    cdef bytes get_bytes(self)
