"""ROCA-weak RSA keys (CVE-2017-15361) are refused; ordinary keys pass."""

from __future__ import annotations

import base64
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric import rsa
from roca_vectors import FAKE, FINGERPRINTED, ORDINARY

from auth_server.clients import validate_jwks
from auth_server.errors import InvalidRequest
from interceptors._errors import KeySetError
from interceptors._keyset import KeySet
from interceptors._roca import is_roca_weak


def _b64_uint(value: int) -> str:
    raw = value.to_bytes((value.bit_length() + 7) // 8, "big")
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode("ascii")


def _rsa_jwk(n: int, kid: str) -> dict[str, Any]:
    return {"kty": "RSA", "kid": kid, "use": "sig", "alg": "RS256", "n": _b64_uint(n), "e": "AQAB"}


@pytest.mark.parametrize("name", sorted(FINGERPRINTED))
def test_fingerprinted_moduli_are_weak(name: str) -> None:
    assert is_roca_weak(FINGERPRINTED[name])


@pytest.mark.parametrize("name", sorted(ORDINARY) + sorted(FAKE))
def test_ordinary_and_fake_moduli_are_not_weak(name: str) -> None:
    # The fakes pass the tool's older per-prime residue test; the discrete-log test is exact.
    assert not is_roca_weak({**ORDINARY, **FAKE}[name])


def test_freshly_generated_keys_are_not_weak() -> None:
    for size in (2048, 3072):
        key = rsa.generate_private_key(public_exponent=65537, key_size=size)
        assert not is_roca_weak(key.public_key().public_numbers().n)


@pytest.mark.parametrize("value", [0, 1, 2**255 + 1, -5, True])
def test_values_the_test_cannot_judge_are_not_flagged(value: int) -> None:
    assert not is_roca_weak(value)


def test_key_set_refuses_a_roca_key_of_a_size_it_would_accept() -> None:
    weak = FINGERPRINTED["mod03"]  # 2048 bits: passes the minimum-size check
    assert weak.bit_length() == 2048
    honest = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    document = {"keys": [_rsa_jwk(honest.public_key().public_numbers().n, "honest")]}

    assert KeySet.from_jwks(document).kids == {"honest"}
    document["keys"].append(_rsa_jwk(weak, "infineon"))
    with pytest.raises(KeySetError) as refused:
        KeySet.from_jwks(document)
    assert "ROCA" in refused.value.log_detail
    assert "infineon" in refused.value.log_detail


@pytest.mark.parametrize("name", ["mod04", "mod05", "mod06", "mod07"])
def test_key_set_accepts_ordinary_keys_of_the_same_shape(name: str) -> None:
    assert KeySet.from_jwks({"keys": [_rsa_jwk(ORDINARY[name], name)]}).kids == {name}


def test_client_registration_refuses_a_roca_key_and_accepts_an_ordinary_one() -> None:
    weak = {"keys": [_rsa_jwk(FINGERPRINTED["mod03"], "infineon")]}
    with pytest.raises(InvalidRequest) as refused:
        validate_jwks(weak)
    assert "ROCA" in refused.value.message
    assert "infineon" in refused.value.message

    honest = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    document = {"keys": [_rsa_jwk(honest.public_key().public_numbers().n, "honest")]}
    assert validate_jwks(document)["keys"][0]["kid"] == "honest"
