# Declarations of request authentication; see authn.pyx.
from libc.stdint cimport uint64_t
from fastpath.parser cimport MessageHead
from fastpath.lru_table cimport LruTable

cdef enum AuthnOutcome:
    AUTHN_OK = 0
    AUTHN_MISSING          # no credential of a configured kind
    AUTHN_INVALID          # a credential was presented and refused

cdef class Principal:
    """A verified credential: what authz, header values and logs know of the caller."""
    cdef readonly bytes name           # JWT `sub`, or the API key's principal
    cdef readonly object claims        # the JWT's claims (dict), or None
    cdef readonly str method           # "jwt" | "api_key"
    cdef bytes credential              # the whole token or key, for exact cache compares
    cdef readonly unsigned long long identity_bits   # authz identity conditions it satisfies
    cdef readonly bytes ratelimit_key  # the rate limit's jwt:CLAIM value, or None
    cdef readonly tuple header_claims  # values of the route's %{claim:NAME} (header-safe bytes)
    cdef readonly double expires       # Unix time it stops being valid

cdef class Authenticator:
    cdef object verifier               # JwtVerifier, or None
    cdef object authn_error            # its AuthnError class
    cdef object jwks                   # its WatchedFile
    cdef object api_key_file           # WatchedFile of {key: principal}, or None
    cdef bytes api_key_header          # lower-case field name
    cdef LruTable cache                # verified tokens
    cdef list cached                   # slot -> Principal
    cdef LruTable refused              # tokens refused lately (not verified again for a while)
    cdef list refused_entries          # slot -> (token, reason, until)
    cdef LruTable key_index            # API keys
    cdef list key_principals           # slot -> Principal
    cdef object authz                  # AuthzPolicy, or None (identity bits)
    cdef object ratelimit_claim        # str, or None
    cdef list header_claims            # claim names the route's header edits use
    cdef double max_cache_age
    cdef bytes challenge               # WWW-Authenticate lines for a missing credential
    cdef str realm_text
    cdef readonly str last_reason      # why the last credential was refused
    cdef readonly unsigned long long verifications   # cache misses that ran the signature check

    cdef Principal authenticate(self, MessageHead req, double wall, int* outcome)
    cdef Principal _bearer(self, const char* token, Py_ssize_t n, double wall, int* outcome)
    cdef Principal _verify(self, bytes token, double wall)
    cdef bytes challenge_lines(self, int outcome)
