"""Key confusion: HMAC tokens keyed with the public key (CVE-2015-9235, CVE-2022-29217).

A verifier that lets the token pick the algorithm can be made to run HMAC with the
RSA or EC public key as the shared secret, and the attacker knows that key. Every
spelling of the public key an implementation might hand to HMAC is tried, plus
blank and well-known secrets. None can pass: a verifier never accepts HS*.
"""

from __future__ import annotations

import hashlib
import hmac
import json
from collections.abc import Callable

import pytest
from cryptography.hazmat.primitives import serialization

from security.kit import Attack, Issuer, Target, b64u, json_bytes

_PEM = serialization.Encoding.PEM
_DER = serialization.Encoding.DER
_SPKI = serialization.PublicFormat.SubjectPublicKeyInfo
_PKCS1 = serialization.PublicFormat.PKCS1
_HASHES = {"HS256": hashlib.sha256, "HS384": hashlib.sha384, "HS512": hashlib.sha512}


def _hmac(secret_of: Callable[[Issuer], bytes], algorithm: str = "HS256") -> Attack:
    """An ``alg: HS*`` token over the real ``kid``, its MAC keyed with ``secret_of(issuer)``."""

    def make(issuer: Issuer) -> str:
        secret = secret_of(issuer)
        header = issuer.header(alg=algorithm)
        signing_input = f"{b64u(json_bytes(header))}.{b64u(json_bytes(issuer.claims()))}"
        mac = hmac.new(secret, signing_input.encode(), _HASHES[algorithm]).digest()
        return f"{signing_input}.{b64u(mac)}"

    return make


def pem_spki(issuer: Issuer) -> bytes:
    return issuer.public_key.public_bytes(_PEM, _SPKI)


def pem_pkcs1(issuer: Issuer) -> bytes:
    return issuer.public_key.public_bytes(_PEM, _PKCS1)


def openssh(issuer: Issuer) -> bytes:
    return issuer.public_key.public_bytes(
        serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH
    )


def jwk_compact(issuer: Issuer) -> bytes:
    return json.dumps(dict(issuer.jwk), separators=(",", ":"), sort_keys=True).encode()


RSA_CASES = [
    pytest.param(_hmac(pem_spki), id="hs256-pem-spki"),
    pytest.param(_hmac(lambda i: pem_spki(i).rstrip(b"\n")), id="hs256-pem-spki-no-newline"),
    pytest.param(_hmac(lambda i: pem_spki(i).replace(b"\n", b"\r\n")), id="hs256-pem-spki-crlf"),
    pytest.param(_hmac(pem_spki, "HS384"), id="hs384-pem-spki"),
    pytest.param(_hmac(pem_spki, "HS512"), id="hs512-pem-spki"),
    pytest.param(_hmac(pem_pkcs1), id="hs256-pem-pkcs1"),
    pytest.param(_hmac(lambda i: pem_pkcs1(i).rstrip(b"\n")), id="hs256-pem-pkcs1-no-newline"),
    pytest.param(_hmac(pem_pkcs1, "HS512"), id="hs512-pem-pkcs1"),
    pytest.param(_hmac(lambda i: i.public_key.public_bytes(_DER, _SPKI)), id="hs256-der-spki"),
    pytest.param(_hmac(lambda i: i.public_key.public_bytes(_DER, _PKCS1)), id="hs256-der-pkcs1"),
    pytest.param(_hmac(openssh), id="hs256-openssh"),
    pytest.param(_hmac(lambda i: openssh(i) + b" issuer@example\n"), id="hs256-openssh-line"),
    pytest.param(_hmac(jwk_compact), id="hs256-jwk-json"),
    pytest.param(_hmac(lambda i: json.dumps(dict(i.jwk)).encode()), id="hs256-jwk-json-spaced"),
    pytest.param(_hmac(lambda i: i.jwks_body), id="hs256-jwks-json-as-served"),
    pytest.param(_hmac(lambda i: i.jwk["n"].encode()), id="hs256-jwk-n-member"),
    pytest.param(_hmac(lambda i: b""), id="hs256-blank-secret"),
    pytest.param(_hmac(lambda i: b"secret"), id="hs256-secret"),
    pytest.param(_hmac(lambda i: b"your-256-bit-secret"), id="hs256-jwt-io-default"),
    pytest.param(_hmac(lambda i: b"changeit"), id="hs256-changeit"),
    pytest.param(_hmac(lambda i: i.kid.encode()), id="hs256-the-kid"),
    pytest.param(_hmac(lambda i: i.claims()["iss"].encode()), id="hs256-the-issuer-url"),
]

EC_CASES = [
    pytest.param(_hmac(pem_spki), id="hs256-pem-spki"),
    pytest.param(_hmac(jwk_compact), id="hs256-jwk-json"),
    pytest.param(
        _hmac(lambda i: i.public_key.public_bytes(_DER, _SPKI), "HS512"), id="hs512-der-spki"
    ),
]


@pytest.mark.parametrize("attack", RSA_CASES)
def test_hmac_with_the_rsa_public_key_is_unauthenticated(target: Target, attack: Attack) -> None:
    target.refuse(attack(target.issuer))


@pytest.mark.parametrize("attack", EC_CASES)
def test_hmac_with_the_ec_public_key_is_unauthenticated(es_target: Target, attack: Attack) -> None:
    es_target.refuse(attack(es_target.issuer))
