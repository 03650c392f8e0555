# cython: language_level=3
"""The route matcher: the first route of a direction whose match holds, in config order.

A match holds when each condition it has holds:

  path / path_prefix / path_regex   the normalised request path (request_path.pyx) is
                                    equal to, starts with, or wholly matches (a regular
                                    expression over the path bytes, compiled once)
  methods                           the method is one of these
  headers                           for each name, some field of that name has exactly
                                    that value

Compiled once per config into C arrays; matching compares bytes in the parsed head (no
Python object per header or per rule). A regex route costs one bytes object per request
that reaches it (the path, made once and shared by every regex route).
"""
import re

from cpython.bytes cimport PyBytes_AS_STRING
from libc.stdlib cimport calloc, free
from libc.string cimport memcmp

from fastpath.parser cimport (
    MessageHead, Field, M_GET, M_HEAD, M_POST, M_PUT, M_DELETE, M_OPTIONS, M_PATCH,
    M_CONNECT, M_TRACE,
)
from fastpath.request_path cimport (
    PathPattern, RequestPath, PATH_ANY, PATH_EXACT, PATH_PREFIX, PATH_REGEX, path_matches,
)
from fastpath.route_policy cimport RoutePolicy

# Method name -> parser Method code (parser.pxd); other methods are matched by name.
METHOD_CODES = {"GET": M_GET, "HEAD": M_HEAD, "POST": M_POST, "PUT": M_PUT, "DELETE": M_DELETE,
                "OPTIONS": M_OPTIONS, "PATCH": M_PATCH, "CONNECT": M_CONNECT, "TRACE": M_TRACE}


cdef extern from "strings.h":
    int strncasecmp(const char* a, const char* b, size_t n)


cdef class RouteTable:
    def __cinit__(self, str direction, matches, policies):
        """`matches`: the routes' RouteMatch (config model) in order; `policies`: the
        RoutePolicy of each."""
        cdef int i
        cdef RouteMatch* r
        cdef HeaderMatch* h
        cdef bytes name, value, text
        self.direction = direction
        self.n_routes = len(matches)
        self.policies = list(policies)
        if len(self.policies) != self.n_routes:
            raise ValueError("one policy per route")
        n_headers = sum(len(m.headers) for m in matches)
        self.routes = <RouteMatch*>calloc(max(1, self.n_routes), sizeof(RouteMatch))
        self.headers = <HeaderMatch*>calloc(max(1, n_headers), sizeof(HeaderMatch))
        if self.routes == NULL or self.headers == NULL:
            raise MemoryError()
        self.method_names = []
        self.regexes = []
        self.keep = []
        cdef int nh = 0
        for i, m in enumerate(matches):
            r = &self.routes[i]
            if m.path_exact is not None:
                text = m.path_exact.encode()
                r.path.kind = PATH_EXACT
            elif m.path_prefix is not None:
                text = m.path_prefix.encode()
                r.path.kind = PATH_PREFIX
            elif m.path_regex is not None:
                text = m.path_regex.encode()
                r.path.kind = PATH_REGEX
                r.path.regex = len(self.regexes)
                self.regexes.append(re.compile(text))
            else:
                text = b""
                r.path.kind = PATH_ANY
            self.keep.append(text)
            r.path.text = PyBytes_AS_STRING(text)
            r.path.len = len(text)
            r.methods = 0
            r.names_first = len(self.method_names)
            for method in m.methods:
                code = METHOD_CODES.get(method)
                if code is not None:
                    r.methods |= 1u << code
                else:
                    self.method_names.append(method.encode())
            r.names_count = len(self.method_names) - r.names_first
            r.headers_first = nh
            for hname, hvalue in m.headers.items():
                name = hname.lower().encode()
                value = hvalue.encode("latin-1")
                self.keep.append(name)
                self.keep.append(value)
                h = &self.headers[nh]
                h.name = PyBytes_AS_STRING(name)
                h.name_len = len(name)
                h.value = PyBytes_AS_STRING(value)
                h.value_len = len(value)
                nh += 1
            r.headers_count = nh - r.headers_first

    def __dealloc__(self):
        free(self.routes)
        free(self.headers)

    cdef bint _methods_match(self, RouteMatch* r, MessageHead req) noexcept:
        cdef int i
        cdef bytes name
        cdef Py_ssize_t n
        if r.methods == 0 and r.names_count == 0:
            return True
        if req.method != 0:
            return (r.methods & (1u << req.method)) != 0
        n = req.method_end - req.start
        for i in range(r.names_first, r.names_first + r.names_count):
            name = <bytes>self.method_names[i]
            if len(name) == n and memcmp(<const char*>name, req.buf + req.start, n) == 0:
                return True
        return False

    cdef bint _headers_match(self, RouteMatch* r, MessageHead req) noexcept:
        cdef int k, i
        cdef HeaderMatch* h
        cdef Field* f
        cdef bint found
        for k in range(r.headers_first, r.headers_first + r.headers_count):
            h = &self.headers[k]
            found = False
            for i in range(req.nfields):
                f = &req.fields[i]
                if (f.name_end - f.line_start == h.name_len
                        and f.value_end - f.value_start == h.value_len
                        and strncasecmp(req.buf + f.line_start, h.name, h.name_len) == 0
                        and memcmp(req.buf + f.value_start, h.value, h.value_len) == 0):
                    found = True
                    break
            if not found:
                return False
        return True

    cdef RoutePolicy match(self, MessageHead req, RequestPath path):
        """The policy of the first matching route, or None. `path` is loaded for `req`."""
        cdef int i
        cdef RouteMatch* r
        for i in range(self.n_routes):
            r = &self.routes[i]
            if r.path.kind == PATH_REGEX:
                if self.regexes[r.path.regex].fullmatch(path.get_bytes()) is None:
                    continue
            elif not path_matches(&r.path, path.p, path.n):
                continue
            if not self._methods_match(r, req) or not self._headers_match(r, req):
                continue
            return <RoutePolicy>self.policies[i]
        return None

    # -- Python-level forms, for tests ----------------------------------------------------

    def route_for(self, MessageHead req):
        """The matching route's name, or None."""
        cdef RequestPath path = RequestPath()
        path.load(req)
        cdef RoutePolicy p = self.match(req, path)
        return p.name if p is not None else None

    def policy(self, int index):
        return self.policies[index]

    @property
    def names(self):
        return [p.name for p in self.policies]
