# Declarations of the route matcher; see route_table.pyx.
from fastpath.parser cimport MessageHead
from fastpath.request_path cimport PathPattern, RequestPath
from fastpath.route_policy cimport RoutePolicy

cdef struct HeaderMatch:
    const char* name           # lower-case
    Py_ssize_t name_len
    const char* value
    Py_ssize_t value_len

cdef struct RouteMatch:
    PathPattern path
    unsigned int methods       # bit (1 << parser Method) per listed method
    int names_first            # extension methods by name, into RouteTable.method_names
    int names_count
    int headers_first          # into RouteTable.headers; all must match
    int headers_count

cdef class RouteTable:
    cdef readonly str direction
    cdef RouteMatch* routes
    cdef readonly int n_routes
    cdef HeaderMatch* headers
    cdef list method_names
    cdef list regexes
    cdef list keep
    cdef list policies

    cdef bint _methods_match(self, RouteMatch* r, MessageHead req) noexcept
    cdef bint _headers_match(self, RouteMatch* r, MessageHead req) noexcept
    cdef RoutePolicy match(self, MessageHead req, RequestPath path)
