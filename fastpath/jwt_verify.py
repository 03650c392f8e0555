"""JSON Web Token verification against a JSON Web Key Set: the signature maths and the
claim checks, with no I/O beyond reading the key set file.

Rules (RFC 7515, 7517, 7519, and RFC 8725's best current practice):

- Only HS256, RS256 and ES256 are accepted; `none` and every other `alg` are refused, and
  so is a header with `crit` (no extension is understood).
- A key is used only for the algorithm family of its type: HS256 needs an `oct` key,
  RS256 an `RSA` key, ES256 an `EC` P-256 key. A key's own `alg`, when it has one, must
  equal the token's. So an HS256 token can never be checked with an RSA public key taken
  as an HMAC secret (algorithm confusion).
- With a `kid` in the header only keys with that `kid` are tried; without one, every key
  of the right type.
- Claims: `iss` must equal the configured issuer; `aud` (a string or a list) must contain
  one of the configured audiences when any are configured; `exp` and `nbf`, when present,
  must be numbers and hold at `now` within `clock_skew` seconds.

The maths is the `cryptography` package's (OpenSSL): RSA PKCS#1 v1.5 and ECDSA with
SHA-256, HMAC-SHA-256 with a constant-time comparison.
"""
import base64
import binascii
import json
import re

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, hmac
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature

__all__ = ["AuthnError", "JwkKey", "JwtVerifier", "load_jwks", "parse_jwks", "SUPPORTED_ALGS"]

SUPPORTED_ALGS = ("HS256", "RS256", "ES256")
_KTY_OF_ALG = {"HS256": "oct", "RS256": "RSA", "ES256": "EC"}
MIN_RSA_BITS = 2048
MIN_HMAC_BYTES = 32          # RFC 7518 section 3.2: a key at least as long as the hash


class AuthnError(Exception):
    """A credential was refused; `str(e)` is a short reason fit for WWW-Authenticate's
    error_description (no token content)."""


class JwkKey:
    """One usable key of a key set."""
    __slots__ = ("kid", "kty", "alg", "key")

    def __init__(self, kid, kty, alg, key):
        self.kid, self.kty, self.alg, self.key = kid, kty, alg, key

    def __repr__(self):
        return "JwkKey(kid=%r, kty=%r, alg=%r)" % (self.kid, self.kty, self.alg)


_B64URL = re.compile(rb"^[A-Za-z0-9_-]*$")


def _b64url(text) -> bytes:
    """Strict unpadded base64url (RFC 7515 section 2): any other byte is an error."""
    if isinstance(text, str):
        text = text.encode("ascii")
    if not _B64URL.match(text) or len(text) % 4 == 1:
        raise ValueError("not base64url")
    return base64.urlsafe_b64decode(text + b"=" * (-len(text) % 4))


def _b64url_int(text) -> int:
    return int.from_bytes(_b64url(text), "big")


def _parse_key(jwk: dict, index: int):
    """A JwkKey, or None for a key of a type or use this verifier does not take."""
    if not isinstance(jwk, dict):
        raise ValueError("keys[%d] is not an object" % index)
    kty = jwk.get("kty")
    alg = jwk.get("alg")
    if jwk.get("use", "sig") != "sig" or (alg is not None and alg not in SUPPORTED_ALGS):
        return None
    kid = jwk.get("kid")
    if kid is not None and not isinstance(kid, str):
        raise ValueError("keys[%d].kid is not a string" % index)
    try:
        if kty == "RSA":
            key = rsa.RSAPublicNumbers(_b64url_int(jwk["e"]), _b64url_int(jwk["n"])).public_key()
            if key.key_size < MIN_RSA_BITS:
                raise ValueError("keys[%d]: RSA keys need at least %d bits" % (index, MIN_RSA_BITS))
        elif kty == "EC":
            if jwk.get("crv") != "P-256":
                return None
            key = ec.EllipticCurvePublicNumbers(_b64url_int(jwk["x"]), _b64url_int(jwk["y"]),
                                                ec.SECP256R1()).public_key()
        elif kty == "oct":
            key = _b64url(jwk["k"])
            if len(key) < MIN_HMAC_BYTES:
                raise ValueError("keys[%d]: HMAC keys need at least %d bytes" % (index, MIN_HMAC_BYTES))
        else:
            return None
    except KeyError as e:
        raise ValueError("keys[%d] (%s) lacks '%s'" % (index, kty, e.args[0])) from None
    except (binascii.Error, TypeError, AttributeError):
        raise ValueError("keys[%d] (%s): a parameter is not base64url" % (index, kty)) from None
    if alg is not None and _KTY_OF_ALG[alg] != kty:
        raise ValueError("keys[%d]: alg %s does not fit kty %s" % (index, alg, kty))
    return JwkKey(kid, kty, alg, key)


def parse_jwks(data: bytes) -> list:
    """The usable keys of a JWKS document; raises ValueError saying what is wrong."""
    try:
        doc = json.loads(data)
    except (UnicodeDecodeError, ValueError) as e:
        raise ValueError("not JSON: %s" % e) from None
    if not isinstance(doc, dict) or not isinstance(doc.get("keys"), list):
        raise ValueError('not a JWK Set: expected an object with a "keys" list')
    keys = []
    for index, jwk in enumerate(doc["keys"]):
        key = _parse_key(jwk, index)
        if key is not None:
            keys.append(key)
    return keys


def load_jwks(path: str) -> list:
    """The usable keys of the JWKS file at `path`; raises ValueError (also for I/O)."""
    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError as e:
        raise ValueError("cannot read %s: %s" % (path, e.strerror or e)) from None
    return parse_jwks(data)


def _json_part(part: bytes, what: str) -> dict:
    try:
        value = json.loads(_b64url(part))
    except (ValueError, binascii.Error, UnicodeDecodeError):
        raise AuthnError("malformed token %s" % what) from None
    if not isinstance(value, dict):
        raise AuthnError("malformed token %s" % what)
    return value


def _signature_ok(key: JwkKey, alg: str, signing_input: bytes, signature: bytes) -> bool:
    try:
        if alg == "HS256":
            mac = hmac.HMAC(key.key, hashes.SHA256())
            mac.update(signing_input)
            mac.verify(signature)
        elif alg == "RS256":
            key.key.verify(signature, signing_input, padding.PKCS1v15(), hashes.SHA256())
        else:
            if len(signature) != 64:        # JWS ES256: r || s, 32 bytes each (RFC 7518 3.4)
                return False
            der = encode_dss_signature(int.from_bytes(signature[:32], "big"),
                                       int.from_bytes(signature[32:], "big"))
            key.key.verify(der, signing_input, ec.ECDSA(hashes.SHA256()))
        return True
    except InvalidSignature:
        return False


def _number(claims: dict, name: str):
    value = claims.get(name)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise AuthnError("'%s' is not a number" % name)
    return value


class JwtVerifier:
    """Checks tokens of one issuer against a key set (`keys`, replaced on reload)."""

    def __init__(self, issuer: str, audiences=(), clock_skew: float = 60.0, keys=()):
        self.issuer = issuer
        self.audiences = frozenset(audiences)
        self.clock_skew = clock_skew
        self.keys = list(keys)

    def verify(self, token: bytes, now: float) -> dict:
        """The claims of `token` (the compact serialisation) if it is valid at Unix time
        `now`; raises AuthnError with the reason otherwise."""
        parts = token.split(b".")
        if len(parts) != 3:
            raise AuthnError("malformed token")
        header = _json_part(parts[0], "header")
        alg = header.get("alg")
        if alg not in SUPPORTED_ALGS:
            raise AuthnError("unsupported alg")
        if "crit" in header:
            raise AuthnError("unsupported critical header")
        kid = header.get("kid")
        kty = _KTY_OF_ALG[alg]
        candidates = [k for k in self.keys
                      if k.kty == kty and (k.alg is None or k.alg == alg) and (kid is None or k.kid == kid)]
        if not candidates:
            raise AuthnError("no key for this token")
        try:
            signature = _b64url(parts[2])
        except (ValueError, binascii.Error):
            raise AuthnError("malformed token signature") from None
        signing_input = parts[0] + b"." + parts[1]
        if not any(_signature_ok(k, alg, signing_input, signature) for k in candidates):
            raise AuthnError("bad signature")
        claims = _json_part(parts[1], "payload")
        self.check_claims(claims, now)
        return claims

    def check_claims(self, claims: dict, now: float) -> None:
        if claims.get("iss") != self.issuer:
            raise AuthnError("wrong issuer")
        if self.audiences:
            aud = claims.get("aud")
            given = [aud] if isinstance(aud, str) else aud if isinstance(aud, list) else []
            if not any(isinstance(a, str) and a in self.audiences for a in given):
                raise AuthnError("audience not allowed")
        exp = _number(claims, "exp")
        if exp is not None and now >= exp + self.clock_skew:
            raise AuthnError("token expired")
        nbf = _number(claims, "nbf")
        if nbf is not None and now < nbf - self.clock_skew:
            raise AuthnError("token not yet valid")
