"""What the PKCS#11 key store asks a token for: key templates, mechanisms, public keys as JWKs.

Private to :mod:`auth_server.hsm`; pure apart from reading attributes of objects
it is given. Needs the optional ``python-pkcs11`` (``pip install 'ssot-auth[pkcs11]'``).
"""

from __future__ import annotations

import hashlib
import urllib.parse
from typing import Any

from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from pkcs11 import MGF, Attribute, KeyType, Mechanism, MechanismFlag
from pkcs11.util.ec import encode_named_curve_parameters

from auth_server.jwk import PublicKey, public_jwk
from auth_server.jws import Signer, es256_raw

# RFC 8410 §3: the Ed25519 curve, as CKA_EC_PARAMS names it (PKCS#11 3.0 §2.3.5).
_ED25519_OID = "1.3.101.112"
_LABEL = "ssot-auth"

# The private half: it signs and nothing else, it never leaves the token in clear
# (SENSITIVE) or wrapped (EXTRACTABLE false), and only a logged-in user sees it.
PRIVATE_TEMPLATE: dict[Attribute, Any] = {
    Attribute.TOKEN: True,
    Attribute.PRIVATE: True,
    Attribute.SENSITIVE: True,
    Attribute.EXTRACTABLE: False,
    Attribute.SIGN: True,
    Attribute.DECRYPT: False,
    Attribute.UNWRAP: False,
    Attribute.DERIVE: False,
}
PUBLIC_TEMPLATE: dict[Attribute, Any] = {
    Attribute.TOKEN: True,
    Attribute.VERIFY: True,
    Attribute.ENCRYPT: False,
    Attribute.WRAP: False,
}
CAPABILITIES = MechanismFlag.SIGN | MechanismFlag.VERIFY


def generate_pair(session: Any, algorithm: str, rsa_bits: int, object_id: bytes) -> Any:
    """Generate a token key pair for ``algorithm``; returns the public object."""
    kwargs: dict[str, Any] = {
        "id": object_id,
        "label": _LABEL,
        "store": True,
        "capabilities": CAPABILITIES,
        "public_template": PUBLIC_TEMPLATE,
        "private_template": PRIVATE_TEMPLATE,
    }
    if algorithm in ("RS256", "PS256"):
        public, _ = session.generate_keypair(KeyType.RSA, rsa_bits, **kwargs)
        return public
    key_type, curve = (
        (KeyType.EC, "secp256r1") if algorithm == "ES256" else (KeyType.EC_EDWARDS, _ED25519_OID)
    )
    params = session.create_domain_parameters(
        key_type, {Attribute.EC_PARAMS: encode_named_curve_parameters(curve)}, local=True
    )
    public, _ = params.generate_keypair(**kwargs)
    return public


def required_mechanisms(algorithm: str) -> tuple[tuple[Mechanism, ...], ...]:
    """For each step (generate, sign), the mechanisms of which the token must have one."""
    if algorithm in ("RS256", "PS256"):
        sign = Mechanism.SHA256_RSA_PKCS if algorithm == "RS256" else Mechanism.SHA256_RSA_PKCS_PSS
        return ((Mechanism.RSA_PKCS_KEY_PAIR_GEN,), (sign,))
    if algorithm == "ES256":
        return ((Mechanism.EC_KEY_PAIR_GEN,), (Mechanism.ECDSA_SHA256, Mechanism.ECDSA))
    return ((Mechanism.EC_EDWARDS_KEY_PAIR_GEN,), (Mechanism.EDDSA,))


def sign_with(private: Any, algorithm: str, mechanisms: frozenset[int]) -> Signer:
    """A signer calling ``C_Sign`` on a private key object (the caller holds the module lock)."""
    if algorithm == "RS256":
        return lambda data: bytes(private.sign(data, mechanism=Mechanism.SHA256_RSA_PKCS))
    if algorithm == "PS256":
        # RFC 7518 §3.5: MGF1 with SHA-256 and a salt as long as the hash.
        pss = (Mechanism.SHA256, MGF.SHA256, 32)
        return lambda data: bytes(
            private.sign(data, mechanism=Mechanism.SHA256_RSA_PKCS_PSS, mechanism_param=pss)
        )
    if algorithm == "ES256":
        if int(Mechanism.ECDSA_SHA256) in mechanisms:
            return lambda data: es256_raw(
                bytes(private.sign(data, mechanism=Mechanism.ECDSA_SHA256))
            )
        # Tokens without CKM_ECDSA_SHA256 (SoftHSM2 2.6) sign a digest made here:
        # the hash is public, the private operation still happens in the token.
        return lambda data: es256_raw(
            bytes(private.sign(hashlib.sha256(data).digest(), mechanism=Mechanism.ECDSA))
        )
    return lambda data: bytes(private.sign(data, mechanism=Mechanism.EDDSA))


def public_key_of(public: Any, algorithm: str) -> PublicKey:
    """The public key of a token's public object.

    Raises:
        ValueError: The object does not hold a key of ``algorithm``'s type.
    """
    if algorithm in ("RS256", "PS256"):
        n = int.from_bytes(bytes(public[Attribute.MODULUS]), "big")
        e = int.from_bytes(bytes(public[Attribute.PUBLIC_EXPONENT]), "big")
        return rsa.RSAPublicNumbers(e, n).public_key()
    point = _unwrap_octet_string(bytes(public[Attribute.EC_POINT]))
    if algorithm == "ES256":
        return ec.EllipticCurvePublicKey.from_encoded_point(ec.SECP256R1(), point)
    return ed25519.Ed25519PublicKey.from_public_bytes(point)


def jwk_of(public: Any, algorithm: str) -> dict[str, str]:
    """The public JWK (with its RFC 7638 ``kid``) of a token's public object."""
    return public_jwk(public_key_of(public, algorithm), algorithm)


def _unwrap_octet_string(value: bytes) -> bytes:
    # CKA_EC_POINT is a DER OCTET STRING (PKCS#11 v2.40 §2.3.3), but some tokens
    # give the bare point: accept both (short-form length: points are < 128 bytes).
    if len(value) >= 2 and value[0] == 0x04 and value[1] == len(value) - 2:
        return value[2:]
    return value


def uri_for(token_label: str, object_id: bytes) -> str:
    """The RFC 7512 URI of a token's private key object."""
    quote = urllib.parse.quote
    return (
        f"pkcs11:token={quote(token_label, safe='')};id={quote(object_id, safe='')}"
        f";object={_LABEL};type=private"
    )


def parse_uri(uri: str) -> tuple[str, bytes]:
    """``(token label, object id)`` of a URI made by :func:`uri_for`.

    Raises:
        ValueError: Not such a URI.
    """
    scheme, _, path = uri.partition(":")
    if scheme != "pkcs11":
        raise ValueError("not a pkcs11 URI")
    attributes = dict(part.partition("=")[::2] for part in path.split(";"))
    if "token" not in attributes or not attributes.get("id"):
        raise ValueError("pkcs11 URI without token or id")
    return (
        urllib.parse.unquote(attributes["token"]),
        urllib.parse.unquote_to_bytes(attributes["id"]),
    )
