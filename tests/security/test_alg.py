"""The ``alg`` family: ``none``, a missing or mistyped ``alg``, an ``alg`` the key lacks.

RFC 8725 §3.1: the verifier trusts the key's algorithm, never the token's. The strongest
cases here are validly signed by the real key under another algorithm (PS256 or RS512 over
the RS256 key): the signature checks out for the header's ``alg``, yet the JWK says RS256.
"""

from __future__ import annotations

from typing import Any

import pytest

from security.kit import ATTACKER, DROP, Attack, Issuer, Target, b64u, compact


def _none(spelling: str) -> Attack:
    """An unsigned token (empty signature) whose ``alg`` is some spelling of ``none``."""
    return lambda issuer: compact(issuer.header(alg=spelling), issuer.claims(), b"")


def _header_alg(value: Any) -> Attack:
    """The real key's signature over a header whose ``alg`` is ``value``."""
    return lambda issuer: issuer.sign(issuer.header(alg=value))


def _signed_as(algorithm: str, *, by_attacker: bool) -> Attack:
    """``alg: algorithm`` with a valid signature under it, by the real key or the attacker's."""

    def make(issuer: Issuer) -> str:
        key = ATTACKER.key_for(algorithm) if by_attacker else issuer.private_key
        return issuer.sign(issuer.header(alg=algorithm), algorithm=algorithm, key=key)

    return make


def _none_with_real_signature(issuer: Issuer) -> str:
    real = issuer.token()
    header = b64u(b'{"alg":"none","kid":"%s","typ":"at+jwt"}' % issuer.kid.encode())
    _, payload, signature = real.split(".")
    return f"{header}.{payload}.{signature}"


RSA_KEY_CASES = [
    *[
        pytest.param(_none(spelling), id=f"alg-{spelling}")
        for spelling in ("none", "None", "NONE", "nOnE")
    ],
    pytest.param(_none_with_real_signature, id="alg-none-with-real-signature"),
    pytest.param(_header_alg(DROP), id="alg-missing"),
    pytest.param(_header_alg(""), id="alg-empty"),
    pytest.param(_header_alg(None), id="alg-null"),
    pytest.param(_header_alg(256), id="alg-number"),
    pytest.param(_header_alg(True), id="alg-boolean"),
    pytest.param(_header_alg(["RS256"]), id="alg-list"),
    pytest.param(_header_alg({"name": "RS256"}), id="alg-object"),
    pytest.param(_header_alg("rs256"), id="alg-lower-case"),
    pytest.param(_header_alg("RS256 "), id="alg-trailing-space"),
    pytest.param(_header_alg("RSA-OAEP"), id="alg-encryption-algorithm"),
    # Validly signed by the real RSA key, under an algorithm its JWK does not name.
    pytest.param(_signed_as("PS256", by_attacker=False), id="ps256-by-the-real-rsa-key"),
    pytest.param(_signed_as("PS512", by_attacker=False), id="ps512-by-the-real-rsa-key"),
    pytest.param(_signed_as("RS384", by_attacker=False), id="rs384-by-the-real-rsa-key"),
    pytest.param(_signed_as("RS512", by_attacker=False), id="rs512-by-the-real-rsa-key"),
    # Key types that cannot fit an RSA key (PyJWT raises a bare TypeError on these).
    pytest.param(_signed_as("ES256", by_attacker=True), id="es256-on-the-rsa-key"),
    pytest.param(_signed_as("ES384", by_attacker=True), id="es384-on-the-rsa-key"),
    pytest.param(_signed_as("ES512", by_attacker=True), id="es512-on-the-rsa-key"),
    pytest.param(_signed_as("EdDSA", by_attacker=True), id="eddsa-on-the-rsa-key"),
]

EC_KEY_CASES = [
    pytest.param(_none("none"), id="alg-none"),
    pytest.param(_signed_as("RS256", by_attacker=True), id="rs256-on-the-p256-key"),
    pytest.param(_signed_as("PS256", by_attacker=True), id="ps256-on-the-p256-key"),
    pytest.param(_signed_as("EdDSA", by_attacker=True), id="eddsa-on-the-p256-key"),
    pytest.param(_signed_as("ES384", by_attacker=True), id="es384-on-the-p256-key"),
    pytest.param(_signed_as("ES512", by_attacker=True), id="es512-on-the-p256-key"),
]


@pytest.mark.parametrize("attack", RSA_KEY_CASES)
def test_alg_attacks_on_an_rsa_key_are_unauthenticated(target: Target, attack: Attack) -> None:
    target.refuse(attack(target.issuer))


@pytest.mark.parametrize("attack", EC_KEY_CASES)
def test_alg_attacks_on_an_ec_key_are_unauthenticated(es_target: Target, attack: Attack) -> None:
    es_target.refuse(attack(es_target.issuer))
