"""Signing key generation and JSON Web Keys (RFC 7517, 7518, 7638, 8037)."""

from __future__ import annotations

import base64
import hashlib
import json
from collections.abc import Mapping
from typing import TypeAlias

from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa

PrivateKey: TypeAlias = rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey | ed25519.Ed25519PrivateKey
PublicKey: TypeAlias = rsa.RSAPublicKey | ec.EllipticCurvePublicKey | ed25519.Ed25519PublicKey
# The classes of PrivateKey, for isinstance checks (a loaded PEM may hold any key type).
PRIVATE_TYPES = (rsa.RSAPrivateKey, ec.EllipticCurvePrivateKey, ed25519.Ed25519PrivateKey)

ALGORITHMS: tuple[str, ...] = ("RS256", "PS256", "ES256", "EdDSA")

_RSA_ALGORITHMS = ("RS256", "PS256")
_MIN_RSA_BITS = 2048
# RFC 7638 §3.2: the members that make up the thumbprint, per key type.
_REQUIRED_MEMBERS: Mapping[str, tuple[str, ...]] = {
    "RSA": ("e", "kty", "n"),
    "EC": ("crv", "kty", "x", "y"),
    "OKP": ("crv", "kty", "x"),
}


def generate_private_key(algorithm: str, *, rsa_bits: int = 2048) -> PrivateKey:
    """Generate a new private key for ``algorithm``.

    Args:
        algorithm: One of :data:`ALGORITHMS`.
        rsa_bits: RSA modulus size for RS256/PS256: 2048, or 3072 and more.

    Returns:
        An RSA key (RS256, PS256), a P-256 key (ES256) or an Ed25519 key (EdDSA).

    Raises:
        ValueError: Unknown algorithm or unsupported RSA size.
    """
    if algorithm in _RSA_ALGORITHMS:
        check_rsa_bits(rsa_bits)
        return rsa.generate_private_key(public_exponent=65537, key_size=rsa_bits)
    if algorithm == "ES256":
        return ec.generate_private_key(ec.SECP256R1())
    if algorithm == "EdDSA":
        return ed25519.Ed25519PrivateKey.generate()
    raise ValueError(
        f"unsupported algorithm {algorithm!r}; expected one of {', '.join(ALGORITHMS)}"
    )


def check_rsa_bits(rsa_bits: int) -> int:
    """Check an RSA modulus size: 2048, or 3072 and more (NIST SP 800-57 strength steps).

    Raises:
        ValueError: The size is not supported.
    """
    if isinstance(rsa_bits, bool) or not isinstance(rsa_bits, int):
        raise ValueError("rsa_bits must be an int")
    if rsa_bits != _MIN_RSA_BITS and rsa_bits < 3072:
        raise ValueError("rsa_bits must be 2048, or 3072 or more")
    return rsa_bits


def public_jwk(private_or_public_key: PrivateKey | PublicKey, algorithm: str) -> dict[str, str]:
    """Return the public JWK of a key, with its RFC 7638 thumbprint as ``kid``.

    Args:
        private_or_public_key: The key; only its public half is exported.
        algorithm: The algorithm the key is for; must fit the key's type.

    Returns:
        ``{kty, kid, use: "sig", alg}`` plus ``n, e`` (RSA), ``crv, x, y`` (EC)
        or ``crv, x`` (OKP).

    Raises:
        ValueError: The key does not fit ``algorithm``, or the algorithm is unknown.
    """
    key = private_or_public_key
    public = key.public_key() if isinstance(key, PRIVATE_TYPES) else key
    members: dict[str, str]
    if algorithm in _RSA_ALGORITHMS and isinstance(public, rsa.RSAPublicKey):
        numbers = public.public_numbers()
        members = {"kty": "RSA", "n": _b64_uint(numbers.n), "e": _b64_uint(numbers.e)}
    elif (
        algorithm == "ES256"
        and isinstance(public, ec.EllipticCurvePublicKey)
        and isinstance(public.curve, ec.SECP256R1)
    ):
        point = public.public_numbers()
        members = {
            "kty": "EC",
            "crv": "P-256",
            "x": _b64(point.x.to_bytes(32, "big")),
            "y": _b64(point.y.to_bytes(32, "big")),
        }
    elif algorithm == "EdDSA" and isinstance(public, ed25519.Ed25519PublicKey):
        raw = public.public_bytes_raw()
        members = {"kty": "OKP", "crv": "Ed25519", "x": _b64(raw)}
    else:
        raise ValueError(f"key type {type(public).__name__} does not fit algorithm {algorithm!r}")
    kid = jwk_thumbprint(members)
    jwk = {"kty": members["kty"], "kid": kid, "use": "sig", "alg": algorithm}
    jwk.update((name, value) for name, value in members.items() if name != "kty")
    return jwk


def jwk_thumbprint(jwk: Mapping[str, str]) -> str:
    """Compute the RFC 7638 thumbprint of a JWK.

    SHA-256 over the JSON object of the key type's required members, in
    lexicographic order and without whitespace; base64url without padding.

    Raises:
        ValueError: Unknown ``kty`` or a required member is missing.
    """
    kty = jwk.get("kty")
    if not isinstance(kty, str) or kty not in _REQUIRED_MEMBERS:
        raise ValueError("unsupported or missing kty")
    required = {}
    for name in _REQUIRED_MEMBERS[kty]:
        value = jwk.get(name)
        if not isinstance(value, str) or not value:
            raise ValueError(f"JWK member {name!r} is missing")
        required[name] = value
    canonical = json.dumps(required, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return _b64(hashlib.sha256(canonical.encode("utf-8")).digest())


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _b64_uint(value: int) -> str:
    # RFC 7518 §2: the minimal big-endian octets, at least one.
    return _b64(value.to_bytes(max(1, (value.bit_length() + 7) // 8), "big"))
