# Declarations of request/response header edits; see header_edits.pyx.
from fastpath.parser cimport MessageHead

cdef enum EditVar:
    VAR_LITERAL = 0
    VAR_REQUEST_ID
    VAR_PRINCIPAL
    VAR_CLIENT_IP
    VAR_ROUTE
    VAR_CLAIM

from cpython.ref cimport PyObject

cdef struct EditPart:
    int var                    # EditVar
    int claim                  # VAR_CLAIM: index into the route's claim names
    const char* text           # VAR_LITERAL: the bytes
    Py_ssize_t len

cdef struct EditLine:
    const char* name           # lower-case field name
    Py_ssize_t name_len
    int first_part
    int n_parts
    bint has_vars

cdef struct EditValues:
    # The values of %{...} for one exchange (pointers valid while it lasts; len 0: none).
    const char* request_id
    Py_ssize_t request_id_len
    const char* principal
    Py_ssize_t principal_len
    const char* client_ip
    Py_ssize_t client_ip_len
    const char* route
    Py_ssize_t route_len
    PyObject* claims           # tuple of bytes, one per route claim name (borrowed), or NULL

cdef class HeaderEdits:
    cdef EditLine* lines
    cdef int n_lines
    cdef EditPart* parts
    cdef const char** drop_names
    cdef Py_ssize_t* drop_lens
    cdef int n_drop
    cdef bytes static_block    # the added lines when no value has a variable
    cdef list keep
    cdef readonly bint uses_request_id
    cdef readonly list claim_names     # the route's %{claim:NAME} names (shared by its edits)

    cdef Py_ssize_t _part_len(self, EditPart* p, const EditValues* v) noexcept
    cdef const char* _part_text(self, EditPart* p, const EditValues* v) noexcept
    cdef void mark_drops(self, MessageHead h) noexcept
    cdef bytes added_lines(self, const EditValues* v)
