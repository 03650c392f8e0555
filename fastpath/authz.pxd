# Declarations of the authorization policy; see authz.pyx.
from libc.stdint cimport uint64_t
from fastpath.request_path cimport PathPattern
from fastpath.net_address cimport IpAddress, CidrBlock

cdef struct AuthzRule:
    unsigned int methods          # bit (1 << parser Method) per listed method; 0 with no extension names: any
    int names_first               # extension methods (M_OTHER) by name: into AuthzPolicy.method_names
    int names_count
    int paths_first               # into AuthzPolicy.paths; count 0: any path
    int paths_count
    int cidrs_first               # into AuthzPolicy.cidrs; count 0: any source
    int cidrs_count
    uint64_t identity_bit         # 0: no principal/claim condition; else the bit it needs

cdef class AuthzPolicy:
    cdef AuthzRule* allow
    cdef int n_allow
    cdef AuthzRule* deny
    cdef int n_deny
    cdef PathPattern* paths
    cdef CidrBlock* cidrs
    cdef list method_names        # bytes
    cdef list keep                # bytes the patterns point into
    cdef list identity_rules      # (bit, principals frozenset, claims tuple) per identity condition
    cdef readonly bint needs_identity

    cdef tuple _compile(self, AuthzRule* r, dict rule, dict method_codes, int np, int nc)
    cdef bint _matches(self, AuthzRule* r, int method, const char* method_text,
                       Py_ssize_t method_len, const char* path, Py_ssize_t path_len,
                       const IpAddress* source, uint64_t identity) noexcept
    cdef int decide(self, int method, const char* method_text, Py_ssize_t method_len,
                    const char* path, Py_ssize_t path_len, const IpAddress* source,
                    uint64_t identity) noexcept
