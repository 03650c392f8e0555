# cython: language_level=3
"""Request and response header edits: `set` (replace), `add` (append), `remove`.

Compiled once per route: the names to drop (every `remove` and every `set` name) and the
lines to add, each value split into literal parts and variables:

  %{request_id}   the exchange's x-request-id (the client's, or the one generated)
  %{principal}    the authenticated principal (JWT subject or API-key principal)
  %{client_ip}    the downstream client's address
  %{route}        the route's name
  %{claim:NAME}   a claim of the verified JWT (authn.pyx keeps the route's claims with
                  the cached token, as header-safe bytes)

Per exchange, dropping is a flag on each matching parsed field (the head writer skips
flagged fields) and the added lines are one bytes object, built in one allocation, or a
prebuilt constant when no value has a variable. A line whose variables all come out empty
(no principal on an unauthenticated route, say) is left out rather than sent empty, as
Envoy does. Framing and hop-by-hop fields are refused by the config schema.
"""
from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_GET_SIZE, PyBytes_FromStringAndSize
from cpython.ref cimport PyObject
from cpython.tuple cimport PyTuple_GET_SIZE, PyTuple_GET_ITEM
from libc.stdlib cimport calloc, free
from libc.string cimport memcpy

from fastpath.parser cimport MessageHead, Field

from fastpath.header_template import split_template

VARIABLE_CODES = {"request_id": VAR_REQUEST_ID, "principal": VAR_PRINCIPAL,
                  "client_ip": VAR_CLIENT_IP, "route": VAR_ROUTE}


cdef extern from "strings.h":
    int strncasecmp(const char* a, const char* b, size_t n)


cdef class HeaderEdits:
    def __cinit__(self, dict set_=None, dict add=None, list remove=None, list claim_names=None):
        """`set_`/`add`: lower-case name -> value template; `remove`: lower-case names;
        `claim_names`: the route's list of %{claim:NAME} names, extended with this one's
        (so the request and response edits of a route index one tuple of values)."""
        cdef int i, k
        set_ = set_ or {}
        add = add or {}
        drop = list(dict.fromkeys(list(remove or []) + list(set_)))
        entries = [(n, v) for n, v in set_.items()] + [(n, v) for n, v in add.items()]
        compiled = [(name, split_template(value)) for name, value in entries]
        n_parts = sum(len(parts) for _, parts in compiled)
        self.n_lines = len(compiled)
        self.lines = <EditLine*>calloc(max(1, self.n_lines), sizeof(EditLine))
        self.parts = <EditPart*>calloc(max(1, n_parts), sizeof(EditPart))
        self.n_drop = len(drop)
        self.drop_names = <const char**>calloc(max(1, self.n_drop), sizeof(char*))
        self.drop_lens = <Py_ssize_t*>calloc(max(1, self.n_drop), sizeof(Py_ssize_t))
        if self.lines == NULL or self.parts == NULL or self.drop_names == NULL or self.drop_lens == NULL:
            raise MemoryError()
        self.keep = []
        self.claim_names = claim_names if claim_names is not None else []
        for i, name in enumerate(drop):
            b = name.lower().encode()
            self.keep.append(b)
            self.drop_names[i] = PyBytes_AS_STRING(b)
            self.drop_lens[i] = len(b)
        k = 0
        any_vars = False
        for i, (name, parts) in enumerate(compiled):
            b = name.lower().encode()
            self.keep.append(b)
            self.lines[i].name = PyBytes_AS_STRING(b)
            self.lines[i].name_len = len(b)
            self.lines[i].first_part = k
            self.lines[i].n_parts = len(parts)
            for var, text in parts:
                t = text.encode("latin-1")
                self.keep.append(t)
                if var and var.startswith("claim:"):
                    if var[6:] not in self.claim_names:
                        self.claim_names.append(var[6:])
                    self.parts[k].var = VAR_CLAIM
                    self.parts[k].claim = self.claim_names.index(var[6:])
                else:
                    self.parts[k].var = VARIABLE_CODES[var] if var else VAR_LITERAL
                self.parts[k].text = PyBytes_AS_STRING(t)
                self.parts[k].len = len(t)
                if var:
                    self.lines[i].has_vars = True
                    any_vars = True
                    if var == "request_id":
                        self.uses_request_id = True
                k += 1
        if not any_vars:
            self.static_block = b"".join(
                name.lower().encode() + b": " + "".join(t for _, t in parts).encode("latin-1") + b"\r\n"
                for name, parts in compiled)

    def __dealloc__(self):
        free(self.lines)
        free(self.parts)
        free(self.drop_names)
        free(self.drop_lens)

    cdef void mark_drops(self, MessageHead h) noexcept:
        """Flags the fields of `h` that `remove` or `set` replace."""
        cdef int i, k
        cdef Field* f
        cdef Py_ssize_t n
        if self.n_drop == 0:
            return
        for i in range(h.nfields):
            f = &h.fields[i]
            n = f.name_end - f.line_start
            for k in range(self.n_drop):
                if n == self.drop_lens[k] and strncasecmp(h.buf + f.line_start, self.drop_names[k], n) == 0:
                    f.drop = True
                    break

    cdef Py_ssize_t _part_len(self, EditPart* p, const EditValues* v) noexcept:
        if p.var == VAR_LITERAL:
            return p.len
        if p.var == VAR_REQUEST_ID:
            return v.request_id_len
        if p.var == VAR_PRINCIPAL:
            return v.principal_len
        if p.var == VAR_CLIENT_IP:
            return v.client_ip_len
        if p.var == VAR_CLAIM:
            if v.claims == NULL or p.claim >= PyTuple_GET_SIZE(<object>v.claims):
                return 0
            return PyBytes_GET_SIZE(<object>PyTuple_GET_ITEM(<object>v.claims, p.claim))
        return v.route_len

    cdef const char* _part_text(self, EditPart* p, const EditValues* v) noexcept:
        if p.var == VAR_LITERAL:
            return p.text
        if p.var == VAR_REQUEST_ID:
            return v.request_id
        if p.var == VAR_PRINCIPAL:
            return v.principal
        if p.var == VAR_CLIENT_IP:
            return v.client_ip
        if p.var == VAR_CLAIM:
            return PyBytes_AS_STRING(<object>PyTuple_GET_ITEM(<object>v.claims, p.claim))
        return v.route

    cdef bytes added_lines(self, const EditValues* v):
        """The field lines to add (CRLF-terminated), or None when there are none."""
        cdef int i, k
        cdef Py_ssize_t total = 0
        cdef Py_ssize_t value_len, vars_len, n
        cdef EditLine* line
        cdef bytes out
        cdef char* w
        if self.static_block is not None:
            return self.static_block if self.n_lines else None
        for i in range(self.n_lines):
            line = &self.lines[i]
            value_len = 0
            vars_len = 0
            for k in range(line.first_part, line.first_part + line.n_parts):
                n = self._part_len(&self.parts[k], v)
                value_len += n
                if self.parts[k].var != VAR_LITERAL:
                    vars_len += n
            if line.has_vars and vars_len == 0:
                continue
            total += line.name_len + 2 + value_len + 2
        if total == 0:
            return None
        out = PyBytes_FromStringAndSize(NULL, total)
        w = PyBytes_AS_STRING(out)
        for i in range(self.n_lines):
            line = &self.lines[i]
            vars_len = 0
            for k in range(line.first_part, line.first_part + line.n_parts):
                if self.parts[k].var != VAR_LITERAL:
                    vars_len += self._part_len(&self.parts[k], v)
            if line.has_vars and vars_len == 0:
                continue
            memcpy(w, line.name, line.name_len)
            w += line.name_len
            memcpy(w, b": ", 2)
            w += 2
            for k in range(line.first_part, line.first_part + line.n_parts):
                n = self._part_len(&self.parts[k], v)
                if n:
                    memcpy(w, self._part_text(&self.parts[k], v), n)
                    w += n
            memcpy(w, b"\r\n", 2)
            w += 2
        return out

    # -- Python-level forms, for tests ----------------------------------------------------

    def apply_to(self, MessageHead h):
        """Flags `h`'s dropped fields; returns the names of the fields kept."""
        self.mark_drops(h)
        return [h.buf[h.fields[i].line_start:h.fields[i].name_end]
                for i in range(h.nfields) if not h.fields[i].drop]

    def render(self, bytes request_id=b"", bytes principal=b"", bytes client_ip=b"", bytes route=b"",
               tuple claims=None):
        cdef EditValues v
        v.claims = <PyObject*>claims if claims is not None else NULL
        v.request_id = PyBytes_AS_STRING(request_id)
        v.request_id_len = len(request_id)
        v.principal = PyBytes_AS_STRING(principal)
        v.principal_len = len(principal)
        v.client_ip = PyBytes_AS_STRING(client_ip)
        v.client_ip_len = len(client_ip)
        v.route = PyBytes_AS_STRING(route)
        v.route_len = len(route)
        return self.added_lines(&v)
