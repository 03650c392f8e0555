# cython: language_level=3
"""Authorization: allow and deny rules, decided in C once per request.

A rule matches when every condition it has matches (conditions it does not have match
anything):

  principals    the request's principal is one of these: the JWT subject or API-key
                principal (authn), or the peer's SPIFFE ID (mTLS)
  claims        every listed JWT claim has the value (a claim that is a list, or a
                space-separated `scope`/`scp`, matches when it contains the value)
  methods       the request method is one of these
  paths         the (normalised) path matches one of: `/exact`, `/prefix*`, `*suffix`, `*`
  source_cidrs  the client address is in one of these blocks

Decision: if any `deny` rule matches, deny; otherwise, if there are `allow` rules, allow
only when one matches; with deny rules alone, allow. Deny is answered 403 (UAEX).

Identity conditions (principals, claims) are not evaluated per request: each rule that
has them owns one bit, and `identity_bits()` computes the bits an identity satisfies once,
when a credential is verified (the token cache keeps them with the token). So a request
costs a few integer and byte compares per rule and no Python object.
"""
from libc.stdint cimport uint64_t
from libc.stdlib cimport malloc, calloc, free
from libc.string cimport memcmp, memcpy

from fastpath.exchange cimport DECISION_ALLOW, DECISION_DENY
from fastpath.request_path cimport PathPattern, PathKind, PATH_ANY, PATH_EXACT, PATH_PREFIX, PATH_SUFFIX, path_matches
from fastpath.net_address cimport IpAddress, CidrBlock, cidr_contains, parse_ip

import ipaddress

MAX_IDENTITY_RULES = 64
_LIST_LIKE_STRING_CLAIMS = frozenset({"scope", "scp"})


def path_pattern(text):
    """('exact'|'prefix'|'suffix'|'any', bytes) of an authz path pattern."""
    if text == "*":
        return "any", b""
    if text.endswith("*"):
        return "prefix", text[:-1].encode()
    if text.startswith("*"):
        return "suffix", text[1:].encode()
    return "exact", text.encode()


def claim_values(claims, str name):
    """The values of claim `name` (dotted for nested objects) as a list of strings."""
    value = claims
    for part in name.split("."):
        if not isinstance(value, dict) or part not in value:
            return []
        value = value[part]
    if isinstance(value, list):
        return [_claim_text(v) for v in value if not isinstance(v, (dict, list))]
    if isinstance(value, dict):
        return []
    text = _claim_text(value)
    if name.rpartition(".")[2] in _LIST_LIKE_STRING_CLAIMS and isinstance(value, str):
        return text.split()
    return [text]


def _claim_text(value):
    if isinstance(value, bool):
        return "true" if value else "false"
    return value if isinstance(value, str) else str(value)


cdef class AuthzPolicy:
    def __cinit__(self, rules_allow, rules_deny, method_codes):
        """`rules_*`: the route's parsed `authz.allow` / `authz.deny` lists (dicts);
        `method_codes`: method name -> parser Method code."""
        cdef list all_rules = list(rules_allow) + list(rules_deny)
        cdef int n_paths = sum(len(r.get("paths") or ()) for r in all_rules)
        cdef int n_cidrs = sum(len(r.get("source_cidrs") or ()) for r in all_rules)
        self.n_allow = len(rules_allow)
        self.n_deny = len(rules_deny)
        self.allow = <AuthzRule*>calloc(max(1, self.n_allow), sizeof(AuthzRule))
        self.deny = <AuthzRule*>calloc(max(1, self.n_deny), sizeof(AuthzRule))
        self.paths = <PathPattern*>calloc(max(1, n_paths), sizeof(PathPattern))
        self.cidrs = <CidrBlock*>calloc(max(1, n_cidrs), sizeof(CidrBlock))
        if self.allow == NULL or self.deny == NULL or self.paths == NULL or self.cidrs == NULL:
            raise MemoryError()
        self.method_names = []
        self.keep = []
        self.identity_rules = []
        cdef int np = 0
        cdef int nc = 0
        cdef int i
        for i, rule in enumerate(rules_allow):
            np, nc = self._compile(&self.allow[i], rule, method_codes, np, nc)
        for i, rule in enumerate(rules_deny):
            np, nc = self._compile(&self.deny[i], rule, method_codes, np, nc)
        self.needs_identity = bool(self.identity_rules)

    def __dealloc__(self):
        free(self.allow)
        free(self.deny)
        free(self.paths)
        free(self.cidrs)

    cdef tuple _compile(self, AuthzRule* r, dict rule, dict method_codes, int np, int nc):
        cdef PathPattern* p
        cdef CidrBlock* c
        cdef bytes text
        r.methods = 0
        r.names_first = len(self.method_names)
        for m in rule.get("methods") or ():
            code = method_codes.get(m, 0)
            if code:
                r.methods |= 1u << code
            else:
                self.method_names.append(m.encode())
        r.names_count = len(self.method_names) - r.names_first
        r.paths_first = np
        for text_pattern in rule.get("paths") or ():
            kind, text = path_pattern(text_pattern)
            self.keep.append(text)
            p = &self.paths[np]
            p.kind = {"any": PATH_ANY, "exact": PATH_EXACT, "prefix": PATH_PREFIX,
                      "suffix": PATH_SUFFIX}[kind]
            p.text = text
            p.len = len(text)
            np += 1
        r.paths_count = np - r.paths_first
        r.cidrs_first = nc
        for cidr in rule.get("source_cidrs") or ():
            net = ipaddress.ip_network(cidr, strict=False)
            c = &self.cidrs[nc]
            c.family = net.version
            packed = net.network_address.packed
            memcpy(c.addr, <const char*>packed, len(packed))
            c.prefix = net.prefixlen
            nc += 1
        r.cidrs_count = nc - r.cidrs_first
        r.identity_bit = 0
        principals = frozenset(p.encode() for p in rule.get("principals") or ())
        claims = tuple((name, value) for name, value in (rule.get("claims") or {}).items())
        if principals or claims:
            if len(self.identity_rules) >= MAX_IDENTITY_RULES:
                raise ValueError("at most %d rules with principals or claims per route" % MAX_IDENTITY_RULES)
            r.identity_bit = (<uint64_t>1) << len(self.identity_rules)
            self.identity_rules.append((r.identity_bit, principals, claims))
        return np, nc

    cdef bint _matches(self, AuthzRule* r, int method, const char* method_text,
                              Py_ssize_t method_len, const char* path, Py_ssize_t path_len,
                              const IpAddress* source, uint64_t identity) noexcept:
        cdef int i
        cdef bint ok
        cdef bytes name
        if r.identity_bit and not (identity & r.identity_bit):
            return False
        if r.methods or r.names_count:
            ok = method != 0 and (r.methods & (1u << method)) != 0
            if not ok and method == 0:
                for i in range(r.names_first, r.names_first + r.names_count):
                    name = <bytes>self.method_names[i]
                    if len(name) == method_len and memcmp(<const char*>name, method_text, method_len) == 0:
                        ok = True
                        break
            if not ok:
                return False
        if r.paths_count:
            ok = False
            for i in range(r.paths_first, r.paths_first + r.paths_count):
                if path_matches(&self.paths[i], path, path_len):
                    ok = True
                    break
            if not ok:
                return False
        if r.cidrs_count:
            ok = False
            for i in range(r.cidrs_first, r.cidrs_first + r.cidrs_count):
                if cidr_contains(&self.cidrs[i], source):
                    ok = True
                    break
            if not ok:
                return False
        return True

    cdef int decide(self, int method, const char* method_text, Py_ssize_t method_len,
                    const char* path, Py_ssize_t path_len, const IpAddress* source,
                    uint64_t identity) noexcept:
        """DECISION_ALLOW or DECISION_DENY for one request (see the module rules)."""
        cdef int i
        for i in range(self.n_deny):
            if self._matches(&self.deny[i], method, method_text, method_len, path, path_len,
                             source, identity):
                return DECISION_DENY
        if self.n_allow == 0:
            return DECISION_ALLOW
        for i in range(self.n_allow):
            if self._matches(&self.allow[i], method, method_text, method_len, path, path_len,
                             source, identity):
                return DECISION_ALLOW
        return DECISION_DENY

    def identity_bits(self, principals, claims):
        """The identity bits satisfied by a request whose principals (bytes: JWT subject
        or API-key principal, and the peer's SPIFFE ID under mTLS) and JWT claims (a dict,
        or None) are these. Called once per verified credential, not per request."""
        cdef uint64_t bits = 0
        names = frozenset(p for p in principals if p is not None)
        for bit, wanted, conditions in self.identity_rules:
            if wanted and not (wanted & names):
                continue
            if conditions and (claims is None or not all(
                    value in claim_values(claims, name) for name, value in conditions)):
                continue
            bits |= bit
        return bits

    def check(self, int method_code, bytes method_text, bytes path, bytes source_ip,
              unsigned long long identity=0):
        """Python entry for tests: 'allow' or 'deny'."""
        cdef IpAddress a
        parse_ip(source_ip, &a)
        d = self.decide(method_code, method_text, len(method_text), path, len(path), &a, identity)
        return "allow" if d == DECISION_ALLOW else "deny"
