"""The policy compiler: a config's routes -> each direction's RouteTable, once per config
load (Worker.apply_config builds it inside the new Snapshot, so a reload applies every
route's policy at once, or none of it).

For each route, in config order per direction: its match (route_table.pyx), and its
RoutePolicy (route_policy.pyx) with the stages it configures:

  authn       Authenticator (authn.pyx) over a JwtVerifier (jwt_verify.py) whose keys
              follow a WatchedFile of the JWKS file, and/or a WatchedFile of API keys
  authz       AuthzPolicy (authz.pyx)
  rate_limit  TokenBucketLimiter (token_bucket.pyx) with this worker's share: rate and
              burst divided by `workers`. A limiter whose route and settings did not
              change is carried over from the previous snapshot, so a reload does not
              refill every bucket
  fault       FaultInjector (fault.pyx)
  headers     HeaderEdits (header_edits.pyx), request and response
  cache       ResponseCache (response_cache.pyx): `ttl`, `max_entry`, `max_total`. A store
              whose route kept its name, direction, cache settings and destination (its
              services, or the inbound app) is carried over with its entries; any change
              of those starts the route with an empty store
  service     the weighted ServiceClusters of the outbound router

Key files are shared by path between routes, and checked for changes by `check_files`
(the worker's timer, about once a second).
"""
import logging

from fastpath.api_keys import load_api_keys
from fastpath.authn import Authenticator
from fastpath.authz import AuthzPolicy
from fastpath.fault import FaultInjector
from fastpath.header_edits import HeaderEdits
from fastpath.response_cache import ResponseCache
from fastpath.route_policy import RoutePolicy
from fastpath.route_table import METHOD_CODES, RouteTable
from fastpath.token_bucket import TokenBucketLimiter
from fastpath.watched_file import WatchedFile

log = logging.getLogger("sidecar.policy")

__all__ = ["PolicySet", "compile_policy", "worker_share"]


def worker_share(rate: float, burst: int, workers: int):
    """(rate, burst) of one worker's buckets when `workers` share a limit."""
    workers = max(1, workers)
    return rate / workers, max(1.0, burst / workers)


class PolicySet:
    """What one config's routes compile to in a worker."""

    def __init__(self, inbound: RouteTable, outbound: RouteTable, files: dict, limiters: dict,
                 caches: dict = None):
        self.inbound = inbound
        self.outbound = outbound
        self.files = files          # (kind, path) -> WatchedFile
        self.limiters = limiters    # limiter_key -> TokenBucketLimiter
        self.caches = caches or {}  # cache_key -> ResponseCache

    def check_files(self):
        """Reloads the key files that changed (a bad new version keeps the last good)."""
        for watched in self.files.values():
            watched.check()


class _Compiler:
    def __init__(self, cfg, router, previous, seed):
        self.cfg = cfg
        self.router = router
        self.previous = previous
        self.seed = seed
        self.files = {}
        self.limiters = {}
        self.caches = {}
        self.service_index = {s.name: i for i, s in enumerate(cfg.services)}

    def watched(self, kind, path):
        key = (kind, path)
        if key not in self.files:
            if kind == "jwks":
                from fastpath.jwt_verify import load_jwks      # cryptography: only when used
                self.files[key] = WatchedFile(path, load_jwks, "JWKS file")
            else:
                self.files[key] = WatchedFile(path, load_api_keys, "API key file")
        return self.files[key]

    def _seed(self, index, salt):
        return None if self.seed is None else (self.seed * 1000003 + index * 131 + salt) & ((1 << 64) - 1)

    def route_policy(self, index, direction, route):
        authz = None
        if route.authz:
            authz = AuthzPolicy(route.authz.get("allow", []), route.authz.get("deny", []), METHOD_CODES)
        rate_key = route.rate_limit["key"] if route.rate_limit else "client_ip"
        claim_names = []            # %{claim:NAME} of the route's header edits, in one list
        request_edits = response_edits = None
        if route.headers:
            request_edits = _edits(route.headers.get("request"), claim_names)
            response_edits = _edits(route.headers.get("response"), claim_names)
        authn = None
        if route.authn:
            jwt = route.authn.get("jwt")
            keys = route.authn.get("api_keys")
            verifier = jwks = key_file = None
            if jwt:
                from fastpath.jwt_verify import JwtVerifier
                jwks = self.watched("jwks", jwt["jwks_file"])
                verifier = JwtVerifier(jwt["issuer"], jwt["audiences"], jwt["clock_skew"], jwks.value)
            if keys:
                key_file = self.watched("api_keys", keys["file"])
            authn = Authenticator(
                verifier, jwks, key_file, keys["header"] if keys else "x-api-key", authz,
                rate_key[4:] if rate_key.startswith("jwt:") else None,
                jwt["cache_entries"] if jwt else 16, realm=self.cfg.workload.name,
                header_claims=claim_names)
        limiter = None
        if route.rate_limit:
            rl = route.rate_limit
            rate, burst = worker_share(rl["rate"], rl["burst"], self.cfg.workers)
            lkey = (direction, route.name, rate, burst, rl["key"], rl["max_keys"])
            old = self.previous.limiters.get(lkey) if self.previous is not None else None
            limiter = old if old is not None else TokenBucketLimiter(
                rate, burst, rl["max_keys"], rl["key"] == "global", self._seed(index, 1))
            self.limiters[lkey] = limiter
        fault = None
        if route.fault:
            abort = route.fault.get("abort") or {}
            delay = route.fault.get("delay") or {}
            fault = FaultInjector(abort.get("status", 0), abort.get("percent", 0.0),
                                  delay.get("duration", 0.0), delay.get("percent", 0.0),
                                  self._seed(index, 2))
        clusters = [self.router.clusters[self.service_index[s.name]] for s in route.service] \
            if direction == "outbound" else []
        weights = [s.weight for s in route.service] if clusters else []
        cache = None
        if route.cache:
            c = route.cache
            if clusters:        # by name, weight and config index (the index labels hits)
                destination = tuple((s.name, s.weight, self.service_index[s.name]) for s in route.service)
            else:
                destination = tuple(self.cfg.inbound.app) if direction == "inbound" else None
            ckey = (direction, route.name, c["ttl"], c["max_entry"], c["max_total"], destination)
            old = self.previous.caches.get(ckey) if self.previous is not None else None
            cache = old if old is not None else ResponseCache(c["ttl"], c["max_entry"], c["max_total"])
            self.caches[ckey] = cache
        return RoutePolicy(
            index, route.name, authn, authz, limiter, rate_key,
            route.max_request_body if route.max_request_body is not None else -1,
            fault, request_edits, response_edits, clusters, weights, self._seed(index, 3), cache)

    def table(self, direction):
        routes = [r for r in self.cfg.routes if r.direction == direction]
        policies = [self.route_policy(i, direction, r) for i, r in enumerate(routes)]
        return RouteTable(direction, [r.match for r in routes], policies)


def _edits(section, claim_names):
    if not section or not (section.get("set") or section.get("add") or section.get("remove")):
        return None
    return HeaderEdits(dict(section.get("set") or {}), dict(section.get("add") or {}),
                       list(section.get("remove") or []), claim_names)


def compile_policy(cfg, router, previous: PolicySet = None, seed=None) -> PolicySet:
    """The PolicySet of `cfg` for a worker whose outbound services are `router`'s
    clusters. Raises (ValueError for a bad key file) without side effects on `previous`.
    `seed` fixes the random draws (fault injection, weighted splits) for tests."""
    c = _Compiler(cfg, router, previous, seed)
    inbound = c.table("inbound")
    outbound = c.table("outbound")
    return PolicySet(inbound, outbound, c.files, c.limiters, c.caches)
