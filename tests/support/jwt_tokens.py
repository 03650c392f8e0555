"""Keys, key sets and signed tokens for the authentication tests (cryptography's maths).

    keys = TestKeys()                      # one RSA, one EC P-256, one HMAC key
    keys.jwks(["rsa-1", "ec-1"])           # a JWKS document with those keys
    keys.token("rsa-1", iss=..., aud=...)  # a signed compact JWT
"""
import base64
import json
import os
import time

from cryptography.hazmat.primitives import hashes, hmac
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature

ISSUER = "https://issuer.test"
AUDIENCE = "reviews"


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _int_b64(n: int) -> str:
    return b64url(n.to_bytes((n.bit_length() + 7) // 8, "big"))


class TestKeys:
    """Signing keys named by kid: 'rsa-N', 'ec-N', 'hs-N' are made on first use."""
    __test__ = False

    def __init__(self):
        self.private = {}

    def key(self, kid):
        if kid not in self.private:
            if kid.startswith("rsa"):
                self.private[kid] = rsa.generate_private_key(public_exponent=65537, key_size=2048)
            elif kid.startswith("ec"):
                self.private[kid] = ec.generate_private_key(ec.SECP256R1())
            else:
                self.private[kid] = os.urandom(32)
        return self.private[kid]

    def jwk(self, kid, with_alg=True):
        key = self.key(kid)
        if kid.startswith("rsa"):
            pub = key.public_key().public_numbers()
            jwk = {"kty": "RSA", "kid": kid, "n": _int_b64(pub.n), "e": _int_b64(pub.e), "use": "sig"}
            alg = "RS256"
        elif kid.startswith("ec"):
            pub = key.public_key().public_numbers()
            jwk = {"kty": "EC", "kid": kid, "crv": "P-256", "x": b64url(pub.x.to_bytes(32, "big")),
                   "y": b64url(pub.y.to_bytes(32, "big"))}
            alg = "ES256"
        else:
            jwk = {"kty": "oct", "kid": kid, "k": b64url(key)}
            alg = "HS256"
        if with_alg:
            jwk["alg"] = alg
        return jwk

    def jwks(self, kids, with_alg=True) -> str:
        return json.dumps({"keys": [self.jwk(k, with_alg) for k in kids]})

    def write_jwks(self, path, kids):
        """Replaces the JWKS file atomically (as a Secret update would)."""
        tmp = str(path) + ".tmp"
        with open(tmp, "w") as f:
            f.write(self.jwks(kids))
        os.replace(tmp, str(path))

    def token(self, kid, alg=None, header=None, **claims) -> str:
        """A compact JWT signed with key `kid` (alg from its type unless given); claims
        default to iss, aud, sub, exp a minute from now."""
        alg = alg or ("RS256" if kid.startswith("rsa") else "ES256" if kid.startswith("ec") else "HS256")
        body = {"iss": ISSUER, "aud": AUDIENCE, "sub": "user-1", "exp": int(time.time()) + 60}
        body.update(claims)
        body = {k: v for k, v in body.items() if v is not None}
        head = {"alg": alg, "typ": "JWT", "kid": kid}
        head.update(header or {})
        signing_input = (b64url(json.dumps(head).encode()) + "." + b64url(json.dumps(body).encode())).encode()
        return signing_input.decode() + "." + b64url(self.sign(kid, alg, signing_input))

    def sign(self, kid, alg, data: bytes) -> bytes:
        if alg == "none":
            return b""
        if alg not in ("HS256", "RS256", "ES256"):
            return b"not-a-real-signature"
        key = self.key(kid)
        if alg == "HS256":
            secret = key if isinstance(key, bytes) else self.public_pem(kid)
            mac = hmac.HMAC(secret, hashes.SHA256())
            mac.update(data)
            return mac.finalize()
        if alg == "RS256":
            return key.sign(data, padding.PKCS1v15(), hashes.SHA256())
        r, s = decode_dss_signature(key.sign(data, ec.ECDSA(hashes.SHA256())))
        return r.to_bytes(32, "big") + s.to_bytes(32, "big")

    def public_pem(self, kid) -> bytes:
        from cryptography.hazmat.primitives import serialization
        return self.key(kid).public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)

    def confused_token(self, rsa_kid, **claims) -> str:
        """An HS256 token whose HMAC secret is the RSA key's public PEM (algorithm confusion)."""
        return self.token(rsa_kid, alg="HS256", **claims)
