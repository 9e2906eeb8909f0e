"""JWS compact serialisation (RFC 7515 §7.1) with a signing function instead of a key object.

The signer is whatever holds the key: a key in this process (:func:`local_signer`)
or a token reached through PKCS#11, where the private key never leaves the
device and so cannot be handed to PyJWT. Header and payload are encoded exactly
as PyJWT encodes them (sorted header members, compact separators), so tokens
from a database key are byte-for-byte what ``jwt.encode`` made before.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Callable, Mapping
from typing import Any, TypeAlias

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, padding, rsa
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature

#: Signs a JWS signing input, returning the JWS signature octets (RFC 7518 §3).
Signer: TypeAlias = Callable[[bytes], bytes]

# RFC 7518 §3.4: an ES256 signature is R || S, each 32 octets (not DER).
ES256_COORDINATE = 32


def b64url(data: bytes) -> str:
    """Unpadded base64url (RFC 7515 §2)."""
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def encode_compact(header: Mapping[str, Any], claims: Mapping[str, Any], sign: Signer) -> str:
    """Serialise and sign a JWS: ``b64(header).b64(claims).b64(sign(signing input))``."""
    protected = json.dumps(dict(header), separators=(",", ":"), sort_keys=True).encode()
    payload = json.dumps(dict(claims), separators=(",", ":")).encode("utf-8")
    signing_input = f"{b64url(protected)}.{b64url(payload)}"
    return f"{signing_input}.{b64url(sign(signing_input.encode('ascii')))}"


def es256_raw(signature: bytes) -> bytes:
    """An ECDSA P-256 signature as JWS wants it, R || S, from DER or already raw.

    PKCS#11 ``CKM_ECDSA`` returns R || S (PKCS#11 v2.40 §2.3.1), OpenSSL and
    ``cryptography`` return DER; some tokens return DER too, so both are accepted.

    Raises:
        ValueError: Neither 64 raw octets nor a DER ECDSA signature of P-256 size.
    """
    if len(signature) == 2 * ES256_COORDINATE:
        return signature
    r, s = decode_dss_signature(signature)
    if max(r.bit_length(), s.bit_length()) > 8 * ES256_COORDINATE:
        raise ValueError("not a P-256 ECDSA signature")
    return r.to_bytes(ES256_COORDINATE, "big") + s.to_bytes(ES256_COORDINATE, "big")


def local_signer(
    private_key: rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey | ed25519.Ed25519PrivateKey,
    algorithm: str,
) -> Signer:
    """A signer over a private key held in this process (the database key store).

    The same parameters as PyJWT's: PKCS#1 v1.5 (RS256), PSS with MGF1-SHA-256 and
    a 32-octet salt (PS256, RFC 7518 §3.5), ECDSA P-256 with R || S (ES256), Ed25519.

    Raises:
        ValueError: The key does not fit ``algorithm``.
    """
    if algorithm == "RS256" and isinstance(private_key, rsa.RSAPrivateKey):
        rsa_key = private_key
        return lambda data: rsa_key.sign(data, padding.PKCS1v15(), hashes.SHA256())
    if algorithm == "PS256" and isinstance(private_key, rsa.RSAPrivateKey):
        pss_key = private_key
        pss = padding.PSS(mgf=padding.MGF1(hashes.SHA256()), salt_length=32)
        return lambda data: pss_key.sign(data, pss, hashes.SHA256())
    if algorithm == "ES256" and isinstance(private_key, ec.EllipticCurvePrivateKey):
        ec_key = private_key
        return lambda data: es256_raw(ec_key.sign(data, ec.ECDSA(hashes.SHA256())))
    if algorithm == "EdDSA" and isinstance(private_key, ed25519.Ed25519PrivateKey):
        ed_key = private_key
        return ed_key.sign
    raise ValueError(f"key type {type(private_key).__name__} does not fit algorithm {algorithm!r}")
