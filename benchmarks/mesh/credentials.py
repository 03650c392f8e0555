"""Key material for the policy and mTLS rows, made with the openssl CLI in the run's private
directory: an RS256 key with its JWKS and a signed token, and a CA with one certificate per
pod whose URI SAN is the pod's SPIFFE identity. Nothing here is reused across runs.
"""
import base64
import json
import subprocess
import time
from pathlib import Path

__all__ = ["ISSUER", "AUDIENCE", "jwt_material", "pod_certificates", "spiffe_id"]

ISSUER = "https://issuer.bench.local"
AUDIENCE = "bench-server"


def _openssl(*args, input=None):
    r = subprocess.run(["openssl", *args], capture_output=True, input=input, timeout=60)
    if r.returncode != 0:
        raise RuntimeError(f"openssl {' '.join(args[:2])} failed: {r.stderr.decode(errors='replace').strip()}")
    return r.stdout


def _b64url(data):
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def jwt_material(directory):
    """Writes key.pem and jwks.json; returns (jwks_path, token) where the token is an RS256
    JWT from ISSUER for AUDIENCE with scope "read", valid for a day."""
    d = Path(directory)
    d.mkdir(parents=True, exist_ok=True)
    key = d / "jwt-key.pem"
    _openssl("genpkey", "-algorithm", "RSA", "-pkeyopt", "rsa_keygen_bits:2048", "-out", str(key))
    modulus_hex = _openssl("rsa", "-in", str(key), "-noout", "-modulus").decode().strip().split("=", 1)[1]
    n = bytes.fromhex(modulus_hex)
    jwks = {"keys": [{"kty": "RSA", "kid": "bench", "use": "sig", "alg": "RS256",
                      "n": _b64url(n), "e": _b64url((65537).to_bytes(3, "big"))}]}
    jwks_path = d / "jwks.json"
    jwks_path.write_text(json.dumps(jwks))
    now = int(time.time())
    header = {"alg": "RS256", "typ": "JWT", "kid": "bench"}
    claims = {"iss": ISSUER, "aud": AUDIENCE, "sub": spiffe_id("client"), "scope": "read",
              "iat": now, "exp": now + 86400}
    signing_input = f"{_b64url(json.dumps(header).encode())}.{_b64url(json.dumps(claims).encode())}"
    signature = _openssl("dgst", "-sha256", "-sign", str(key), input=signing_input.encode())
    return jwks_path, f"{signing_input}.{_b64url(signature)}"


def spiffe_id(role):
    return f"spiffe://cluster.local/ns/bench/sa/{role}"


def pod_certificates(directory, roles=("client", "server")):
    """A CA and, per role, an EC P-256 certificate with the role's SPIFFE URI SAN.
    Returns {"ca": path, role: {"cert": path, "key": path}}."""
    d = Path(directory)
    d.mkdir(parents=True, exist_ok=True)
    ca_key, ca = d / "ca-key.pem", d / "ca.pem"
    _openssl("req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
             "-keyout", str(ca_key), "-out", str(ca), "-days", "2", "-subj", "/O=bench/CN=bench-ca")
    out = {"ca": ca}
    for role in roles:
        key, csr, cert, ext = (d / f"{role}-key.pem", d / f"{role}.csr", d / f"{role}.pem", d / f"{role}.ext")
        ext.write_text(f"subjectAltName=URI:{spiffe_id(role)}\nextendedKeyUsage=serverAuth,clientAuth\n")
        _openssl("req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
                 "-keyout", str(key), "-out", str(csr), "-subj", f"/O=bench/CN={role}")
        _openssl("x509", "-req", "-in", str(csr), "-CA", str(ca), "-CAkey", str(ca_key), "-CAcreateserial",
                 "-out", str(cert), "-days", "2", "-extfile", str(ext))
        out[role] = {"cert": cert, "key": key}
    return out
