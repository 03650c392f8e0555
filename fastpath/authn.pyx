# cython: language_level=3
"""Request authentication: bearer JWTs and API keys, with verified tokens cached.

Credentials: `Authorization: Bearer <JWT>` when the route has `authn.jwt`, and the
`authn.api_keys.header` field (default `x-api-key`) when it has `authn.api_keys`. A
bearer token, when present, decides (a bad token is not rescued by an API key); with no
credential of a configured kind the request is refused as missing. Refusals are 401 with
`WWW-Authenticate` (RFC 6750's `Bearer` challenge, with `error="invalid_token"` and the
reason when a token was refused).

The token cache: a verified token is kept, with its principal, claims and authz identity
bits, in a bounded LRU table keyed by a seeded hash of the token, and a hit compares the
whole token, so a hit costs a hash, a compare and no Python object; the signature and
claims are checked again only on a miss. An entry is good until the token's `exp` (plus
the clock skew) or `max_cache_age`, whichever is first, and the whole cache is dropped
when the key set file changes, so a removed key stops working at once. Refused tokens
are remembered too, for REFUSED_FOR seconds, so a client repeating a bad token does not
cost a signature check per request. API keys are
looked up the same way in a table built from the key file (compared in constant time).
"""
from libc.math cimport INFINITY
from libc.stdint cimport uint64_t
from libc.string cimport memcmp
from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_GET_SIZE

from fastpath.parser cimport MessageHead, Field
from fastpath.lru_table cimport LruTable

from fastpath.authz import claim_values

DEF MAX_CACHE_AGE = 300.0
DEF REFUSED_ENTRIES = 1024
DEF REFUSED_FOR = 10.0         # seconds a refused token is answered from the refusal cache


cdef extern from "strings.h":
    int strncasecmp(const char* a, const char* b, size_t n)


cdef inline bint _ct_equal(const char* a, const char* b, Py_ssize_t n) noexcept:
    cdef unsigned char diff = 0
    cdef Py_ssize_t i
    for i in range(n):
        diff |= <unsigned char>a[i] ^ <unsigned char>b[i]
    return diff == 0


cdef inline bint _header_safe(bytes value):
    cdef const unsigned char* p = <const unsigned char*>PyBytes_AS_STRING(value)
    cdef Py_ssize_t i
    for i in range(PyBytes_GET_SIZE(value)):
        if p[i] < 0x20 or p[i] == 0x7f:
            return False
    return True


cdef bytes _header_value(str text):
    """A claim as a header value: UTF-8, or nothing if it has control characters."""
    cdef bytes value = text.encode("utf-8")
    return value if _header_safe(value) else b""


cdef class Principal:
    def __repr__(self):
        return "Principal(%r, %s)" % (self.name, self.method)


cdef tuple NO_CLAIMS = ()


cdef Principal _principal(bytes name, claims, str method, bytes credential, uint64_t bits,
                          bytes ratelimit_key, double expires, tuple header_claims=NO_CLAIMS):
    cdef Principal p = Principal.__new__(Principal)
    p.name = name
    p.claims = claims
    p.method = method
    p.credential = credential
    p.identity_bits = bits
    p.ratelimit_key = ratelimit_key
    p.expires = expires
    p.header_claims = header_claims
    return p


cdef class Authenticator:
    def __cinit__(self, verifier=None, jwks=None, api_key_file=None, str api_key_header="x-api-key",
                  authz=None, ratelimit_claim=None, int cache_entries=4096,
                  double max_cache_age=MAX_CACHE_AGE, str realm="sidecar", list header_claims=None):
        """`verifier`: a JwtVerifier whose keys follow the WatchedFile `jwks`;
        `api_key_file`: a WatchedFile of {key: principal}; `authz`: the route's AuthzPolicy,
        whose identity bits are computed once per credential; `ratelimit_claim`: the claim a
        `jwt:CLAIM` rate limit keys by."""
        self.verifier = verifier
        if verifier is not None:
            # Imported only where a route verifies JWTs: the signature maths (cryptography,
            # OpenSSL) costs a worker ~70 ms and several MB, and most configs need none.
            from fastpath.jwt_verify import AuthnError
            self.authn_error = AuthnError
        self.jwks = jwks
        self.api_key_file = api_key_file
        self.api_key_header = api_key_header.lower().encode()
        self.authz = authz
        self.ratelimit_claim = ratelimit_claim
        self.header_claims = header_claims if header_claims is not None else []
        self.max_cache_age = max_cache_age
        self.cache = LruTable(cache_entries)
        self.cached = [None] * cache_entries
        self.refused = LruTable(REFUSED_ENTRIES)
        self.refused_entries = [None] * REFUSED_ENTRIES
        challenges = []
        if verifier is not None:
            challenges.append('www-authenticate: Bearer realm="%s"\r\n' % realm)
            jwks.listeners.append(self._keys_changed)
        if api_key_file is not None:
            challenges.append('www-authenticate: APIKey realm="%s", header="%s"\r\n'
                              % (realm, api_key_header))
            api_key_file.listeners.append(self._api_keys_changed)
            self._api_keys_changed(api_key_file.value)
        self.challenge = "".join(challenges).encode()
        self.realm_text = realm


    def _keys_changed(self, keys):
        """The JWKS file changed: new keys, and no token verified with the old ones."""
        self.verifier.keys = list(keys)
        self.cache.clear()
        self.cached = [None] * self.cache.capacity
        self.refused.clear()
        self.refused_entries = [None] * self.refused.capacity

    def _api_keys_changed(self, keys):
        cdef int slot
        cdef bytes key
        index = LruTable(max(1, len(keys)))
        principals = [None] * index.capacity
        for key, name in keys.items():
            slot = index.insert(PyBytes_AS_STRING(key), PyBytes_GET_SIZE(key))
            bits = self.authz.identity_bits((name,), None) if self.authz is not None else 0
            principals[slot] = _principal(name, None, "api_key", key, bits, None, INFINITY)
        self.key_index = index
        self.key_principals = principals

    cdef Principal authenticate(self, MessageHead req, double wall, int* outcome):
        """The request's principal, or None with `outcome` AUTHN_MISSING / AUTHN_INVALID
        (and `last_reason`)."""
        cdef int i
        cdef Field* f
        cdef const char* v
        cdef Py_ssize_t n, name_len
        cdef const char* name
        cdef Principal p
        cdef int slot
        cdef const char* header = PyBytes_AS_STRING(self.api_key_header)
        cdef Py_ssize_t header_len = PyBytes_GET_SIZE(self.api_key_header)
        cdef const char* key = NULL
        cdef Py_ssize_t key_len = 0
        for i in range(req.nfields):
            f = &req.fields[i]
            name = req.buf + f.line_start
            name_len = f.name_end - f.line_start
            v = req.buf + f.value_start
            n = f.value_end - f.value_start
            if (self.verifier is not None and name_len == 13
                    and strncasecmp(name, b"authorization", 13) == 0
                    and n > 7 and strncasecmp(v, b"bearer ", 7) == 0):
                v += 7
                n -= 7
                while n and v[0] == b' ':
                    v += 1
                    n -= 1
                return self._bearer(v, n, wall, outcome)
            if (key == NULL and self.api_key_file is not None and name_len == header_len
                    and strncasecmp(name, header, header_len) == 0):
                key = v
                key_len = n
        if key != NULL:
            slot = self.key_index.find(key, key_len)
            if slot >= 0:
                p = <Principal>self.key_principals[slot]
                if PyBytes_GET_SIZE(p.credential) == key_len and _ct_equal(
                        PyBytes_AS_STRING(p.credential), key, key_len):
                    outcome[0] = AUTHN_OK
                    return p
            self.last_reason = "unknown API key"
            outcome[0] = AUTHN_INVALID
            return None
        self.last_reason = "credential missing"
        outcome[0] = AUTHN_MISSING
        return None

    cdef Principal _bearer(self, const char* token, Py_ssize_t n, double wall, int* outcome):
        cdef int slot = self.cache.find(token, n)
        cdef Principal p
        if slot >= 0:
            p = <Principal>self.cached[slot]
            if (p is not None and PyBytes_GET_SIZE(p.credential) == n
                    and memcmp(PyBytes_AS_STRING(p.credential), token, n) == 0):
                if wall < p.expires:
                    outcome[0] = AUTHN_OK
                    return p
                self.cache.remove(slot)
                self.cached[slot] = None
        slot = self.refused.find(token, n)
        if slot >= 0:
            entry = self.refused_entries[slot]
            if entry is not None and wall < entry[2] and entry[0] == token[:n]:
                self.last_reason = entry[1]
                outcome[0] = AUTHN_INVALID
                return None
        credential = token[:n]
        p = self._verify(credential, wall)
        if p is None:
            slot = self.refused.find(token, n)
            if slot < 0:
                slot = self.refused.insert(token, n)
            self.refused_entries[slot] = (credential, self.last_reason, wall + REFUSED_FOR)
            outcome[0] = AUTHN_INVALID
            return None
        slot = self.cache.find(token, n)
        if slot < 0:
            slot = self.cache.insert(token, n)
        self.cached[slot] = p
        outcome[0] = AUTHN_OK
        return p

    cdef Principal _verify(self, bytes token, double wall):
        cdef double expires
        self.verifications += 1
        try:
            claims = self.verifier.verify(token, wall)
        except self.authn_error as e:
            self.last_reason = str(e)
            return None
        sub = claims.get("sub")
        name = sub.encode("utf-8") if isinstance(sub, str) else b""
        if not _header_safe(name):
            self.last_reason = "subject has control characters"
            return None
        expires = wall + self.max_cache_age
        exp = claims.get("exp")
        if exp is not None and exp + self.verifier.clock_skew < expires:
            expires = exp + self.verifier.clock_skew
        ratelimit_key = None
        if self.ratelimit_claim is not None:
            values = claim_values(claims, self.ratelimit_claim)
            ratelimit_key = values[0].encode("utf-8") if values else b""
        header_claims = NO_CLAIMS
        if self.header_claims:
            header_claims = tuple(_header_value(",".join(claim_values(claims, c)))
                                  for c in self.header_claims)
        bits = self.authz.identity_bits((name,), claims) if self.authz is not None else 0
        return _principal(name, claims, "jwt", token, bits, ratelimit_key, expires, header_claims)

    cdef bytes challenge_lines(self, int outcome):
        """The WWW-Authenticate lines of a 401 for `outcome`."""
        if outcome == AUTHN_INVALID and self.verifier is not None and self.last_reason != "unknown API key":
            reason = self.last_reason.replace('"', "'")
            lines = 'www-authenticate: Bearer realm="%s", error="invalid_token", error_description="%s"\r\n' % (
                self.realm_text, reason)
            if self.api_key_file is not None:
                lines += 'www-authenticate: APIKey realm="%s", header="%s"\r\n' % (
                    self.realm_text, self.api_key_header.decode())
            return lines.encode()
        return self.challenge

    # -- Python-level forms, for tests ----------------------------------------------------

    def check(self, MessageHead req, double wall):
        """(outcome, Principal or None, reason) for request `req` at Unix time `wall`."""
        cdef int outcome = 0
        p = self.authenticate(req, wall, &outcome)
        return outcome, p, self.last_reason if p is None else None

    def challenge_for(self, int outcome):
        return self.challenge_lines(outcome)

    @property
    def cached_tokens(self):
        return self.cache.used
