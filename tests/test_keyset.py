"""KeySet.from_jwks: which JWKS documents are refused, which entries are skipped, what is kept."""

from __future__ import annotations

import base64
import dataclasses
import logging
from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import ec, ed448, ed25519, rsa
from jwt.algorithms import ECAlgorithm, OKPAlgorithm, RSAAlgorithm

from interceptors import KeySet, KeySetError, VerificationKey
from interceptors._keyset import SUPPORTED_ALGORITHMS, departed_kids

# -- key material, generated once ---------------------------------------------------------

_PRIVATE: dict[str, Any] = {}


def _private(name: str) -> Any:
    if name not in _PRIVATE:
        _PRIVATE[name] = {
            "rsa": lambda: rsa.generate_private_key(public_exponent=65537, key_size=2048),
            "rsa2": lambda: rsa.generate_private_key(public_exponent=65537, key_size=2048),
            "rsa1024": lambda: rsa.generate_private_key(public_exponent=65537, key_size=1024),
            "p256": lambda: ec.generate_private_key(ec.SECP256R1()),
            "p384": lambda: ec.generate_private_key(ec.SECP384R1()),
            "p521": lambda: ec.generate_private_key(ec.SECP521R1()),
            "ed25519": ed25519.Ed25519PrivateKey.generate,
            "ed448": ed448.Ed448PrivateKey.generate,
        }[name]()
    return _PRIVATE[name]


def _public_jwk(name: str, kid: str, **members: Any) -> dict[str, Any]:
    public = _private(name).public_key()
    if name.startswith("rsa"):
        jwk = RSAAlgorithm.to_jwk(public, as_dict=True)
    elif name.startswith("p"):
        jwk = ECAlgorithm.to_jwk(public, as_dict=True)
    else:
        jwk = OKPAlgorithm.to_jwk(public, as_dict=True)
    jwk = {**jwk, "kid": kid, **members}
    return {k: v for k, v in jwk.items() if v is not None}


def _good(kid: str = "good") -> dict[str, Any]:
    return _public_jwk("rsa", kid, alg="RS256", use="sig")


def _kids(document: dict[str, Any], **kwargs: Any) -> set[str]:
    return set(KeySet.from_jwks(document, **kwargs).kids)


# -- accepted keys --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "alg"),
    [
        pytest.param("rsa", "RS256", id="RS256"),
        pytest.param("rsa", "RS384", id="RS384"),
        pytest.param("rsa", "RS512", id="RS512"),
        pytest.param("rsa", "PS256", id="PS256"),
        pytest.param("rsa", "PS384", id="PS384"),
        pytest.param("rsa", "PS512", id="PS512"),
        pytest.param("p256", "ES256", id="ES256"),
        pytest.param("p384", "ES384", id="ES384"),
        pytest.param("p521", "ES512", id="ES512"),
        pytest.param("ed25519", "EdDSA", id="EdDSA-Ed25519"),
        pytest.param("ed448", "EdDSA", id="EdDSA-Ed448"),
    ],
)
def test_each_supported_key_verifies_a_token_signed_by_its_private_key(name: str, alg: str) -> None:
    key_set = KeySet.from_jwks({"keys": [_public_jwk(name, "k1", alg=alg)]})
    key = key_set.get("k1")
    assert key is not None
    assert key.algorithm == alg
    token = jwt.encode({"sub": "alice"}, _private(name), algorithm=alg, headers={"kid": "k1"})

    claims = jwt.decode(token, key.key, algorithms=[key.algorithm])

    assert claims == {"sub": "alice"}


@pytest.mark.parametrize(
    ("name", "alg"),
    [
        pytest.param("rsa", "RS256", id="RS256"),
        pytest.param("rsa", "RS384", id="RS384"),
        pytest.param("rsa", "RS512", id="RS512"),
        pytest.param("rsa", "PS256", id="PS256"),
        pytest.param("rsa", "PS384", id="PS384"),
        pytest.param("rsa", "PS512", id="PS512"),
        pytest.param("p256", "ES256", id="ES256"),
        pytest.param("p384", "ES384", id="ES384"),
        pytest.param("p521", "ES512", id="ES512"),
        pytest.param("ed25519", "EdDSA", id="EdDSA-Ed25519"),
        pytest.param("ed448", "EdDSA", id="EdDSA-Ed448"),
    ],
)
def test_the_prepared_signature_check_agrees_with_pyjwts_algorithm(name: str, alg: str) -> None:
    # VerificationKey.verify_signature replaces PyJWT's per-call algorithm object on the
    # verifier's hot path; it must answer exactly as that object does.
    key = KeySet.from_jwks({"keys": [_public_jwk(name, "k1", alg=alg)]}).get("k1")
    assert key is not None
    token = jwt.encode({"sub": "alice"}, _private(name), algorithm=alg, headers={"kid": "k1"})
    signing_input, _, encoded = token.rpartition(".")
    signature = base64.urlsafe_b64decode(encoded + "=" * (-len(encoded) % 4))
    flipped = bytes([signature[0] ^ 1]) + signature[1:]
    cases = [signature, flipped, signature[:-1], signature + b"\0", b"", bytes(len(signature))]

    for candidate in cases:
        expected = key.key.Algorithm.verify(signing_input.encode(), key.key.key, candidate)
        assert key.verify_signature(signing_input.encode(), candidate) is expected
    assert key.verify_signature(signing_input.encode(), signature) is True
    assert key.verify_signature(b"x" + signing_input.encode(), signature) is False


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        pytest.param("rsa", "RS256", id="RSA-defaults-to-RS256"),
        pytest.param("p256", "ES256", id="P-256"),
        pytest.param("p384", "ES384", id="P-384"),
        pytest.param("p521", "ES512", id="P-521"),
        pytest.param("ed25519", "EdDSA", id="Ed25519"),
        pytest.param("ed448", "EdDSA", id="Ed448"),
    ],
)
def test_algorithm_is_derived_when_the_jwk_has_no_alg(name: str, expected: str) -> None:
    key_set = KeySet.from_jwks({"keys": [_public_jwk(name, "k1")]})

    key = key_set.get("k1")

    assert key is not None
    assert (key.algorithm, key.kty) == (expected, _public_jwk(name, "k1")["kty"])


def test_key_set_indexes_keys_by_kid_and_is_immutable() -> None:
    key_set = KeySet.from_jwks({"keys": [_good("a"), _public_jwk("p256", "b")]})

    assert key_set.kids == frozenset({"a", "b"})
    assert len(key_set) == 2
    assert "a" in key_set
    assert key_set.get("missing") is None
    assert {key.kid for key in key_set} == {"a", "b"}
    with pytest.raises(AttributeError):
        key_set.kids = frozenset()  # type: ignore[misc]
    with pytest.raises(AttributeError):
        key_set.extra = 1
    key = key_set.get("a")
    assert key is not None
    with pytest.raises(dataclasses.FrozenInstanceError):
        key.algorithm = "none"  # type: ignore[misc]


def test_exactly_max_keys_entries_are_accepted() -> None:
    document = {"keys": [_good(f"k{i}") for i in range(3)]}

    assert _kids(document, max_keys=3) == {"k0", "k1", "k2"}


def test_a_skipped_entry_may_share_a_kid_and_be_weak() -> None:
    encryption = _public_jwk("rsa1024", "good", use="enc")

    assert _kids({"keys": [_good(), encryption]}) == {"good"}


def test_min_rsa_bits_is_configurable() -> None:
    document = {"keys": [_public_jwk("rsa1024", "small", alg="RS256")]}

    assert _kids(document, min_rsa_bits=1024) == {"small"}


# -- refused documents ----------------------------------------------------------------------


def _with(**members: Any) -> dict[str, Any]:
    return {"keys": [_good(), {**_good("other"), **members}]}


@pytest.mark.parametrize(
    ("document", "why"),
    [
        pytest.param([], "object", id="not-an-object"),
        pytest.param({}, "'keys' list", id="no-keys"),
        pytest.param({"keys": {"kid": "a"}}, "'keys' list", id="keys-not-a-list"),
        pytest.param({"keys": []}, "no usable", id="empty"),
        pytest.param({"keys": [_good(f"k{i}") for i in range(4)]}, "limit", id="too-many-keys"),
        pytest.param(_with(d="AQAB"), "private", id="private-d"),
        pytest.param(_with(p="AQAB"), "private", id="private-p"),
        pytest.param(_with(q="AQAB"), "private", id="private-q"),
        pytest.param(_with(dp="AQAB"), "private", id="private-dp"),
        pytest.param(_with(dq="AQAB"), "private", id="private-dq"),
        pytest.param(_with(qi="AQAB"), "private", id="private-qi"),
        pytest.param({"keys": [_good(), {"kty": "oct", "kid": "h", "k": "c2VjcmV0"}]}, "symmetric",
                     id="symmetric-k"),
        pytest.param({"keys": [_good(), {"kty": "oct", "kid": "h"}]}, "symmetric", id="kty-oct"),
        pytest.param({"keys": [_good(), {**_good("x"), "d": "AQAB", "use": "enc"}]}, "private",
                     id="private-even-on-an-encryption-key"),
        pytest.param({"keys": [_good("a"), _public_jwk("p256", "a")]}, "two usable keys",
                     id="duplicate-kid"),
        pytest.param({"keys": [_good(), _public_jwk("rsa1024", "weak", alg="RS256")]}, "1024-bit",
                     id="weak-rsa"),
        pytest.param({"keys": [_public_jwk("rsa", "enc", use="enc")]}, "no usable",
                     id="no-usable-key"),
        pytest.param({"keys": [{"kty": "OKP", "crv": [], "kid": "k"}]}, "no usable",
                     id="okp-crv-not-a-string"),
    ],
)  # fmt: skip
def test_document_is_refused(document: Any, why: str) -> None:
    with pytest.raises(KeySetError) as caught:
        KeySet.from_jwks(document, max_keys=3)

    assert why in caught.value.log_detail
    for entry in document.get("keys", []) if isinstance(document, dict) else []:
        for member in ("n", "x", "d", "k"):
            if isinstance(entry, dict) and member in entry and len(str(entry[member])) > 6:
                assert str(entry[member]) not in caught.value.log_detail


# -- skipped entries ------------------------------------------------------------------------


def _corrupt_point() -> dict[str, Any]:
    jwk = _public_jwk("p256", "bad", alg="ES256")
    y = base64.urlsafe_b64decode(jwk["y"] + "==")
    flipped = bytes([y[0] ^ 1]) + y[1:]
    return {**jwk, "y": base64.urlsafe_b64encode(flipped).rstrip(b"=").decode()}


@pytest.mark.parametrize(
    "entry",
    [
        pytest.param("not-an-object", id="not-an-object"),
        pytest.param(_public_jwk("rsa2", "bad", use="enc"), id="use-enc"),
        pytest.param(_public_jwk("rsa2", "bad", key_ops=["encrypt"]), id="key-ops-without-verify"),
        pytest.param(_public_jwk("rsa2", "bad", key_ops="verify"), id="key-ops-not-a-list"),
        pytest.param({**_public_jwk("rsa2", "bad"), "kty": "XYZ"}, id="unknown-kty"),
        pytest.param({k: v for k, v in _public_jwk("rsa2", "x").items() if k != "kid"},
                     id="no-kid"),
        pytest.param(_public_jwk("rsa2", "bad") | {"kid": 7}, id="kid-not-a-string"),
        pytest.param(_public_jwk("rsa2", "bad", alg="HS256"), id="HS256-on-rsa"),
        pytest.param(_public_jwk("rsa2", "bad", alg="none"), id="alg-none"),
        pytest.param(_public_jwk("rsa2", "bad", alg="ES256"), id="ES256-on-rsa"),
        pytest.param(_public_jwk("rsa2", "bad", alg=256), id="alg-not-a-string"),
        pytest.param(_public_jwk("p384", "bad", alg="ES256"), id="ES256-with-P-384"),
        pytest.param(_public_jwk("p256", "bad", alg="EdDSA"), id="EdDSA-on-EC"),
        pytest.param(_public_jwk("ed25519", "bad", alg="ES256"), id="ES256-on-OKP"),
        pytest.param({**_public_jwk("p256", "bad"), "crv": "secp256k1"}, id="unsupported-curve"),
        pytest.param({"kty": "OKP", "crv": "X25519", "kid": "bad", "x": "AAAA"},
                     id="key-agreement-curve"),
        pytest.param(_public_jwk("rsa2", "bad") | {"n": "!!not base64!!"}, id="bad-base64"),
        pytest.param({k: v for k, v in _public_jwk("rsa2", "bad").items() if k != "n"},
                     id="rsa-without-modulus"),
        pytest.param(_corrupt_point(), id="point-not-on-curve"),
        pytest.param(_public_jwk("ed25519", "bad") | {"x": "AAAA"}, id="short-ed25519-key"),
    ],
)  # fmt: skip
def test_unusable_entry_is_skipped_and_the_rest_kept(
    entry: Any, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger="interceptors._keyset")

    key_set = KeySet.from_jwks({"keys": [_good(), entry]})

    assert key_set.kids == frozenset({"good"})
    assert "skipping JWKS entry 1" in caplog.text


def test_algorithm_outside_the_accepted_list_is_skipped() -> None:
    document = {"keys": [_good(), _public_jwk("rsa2", "pss", alg="PS256")]}

    assert _kids(document, algorithms={"RS256"}) == {"good"}
    assert _kids(document) == {"good", "pss"}


@pytest.mark.parametrize(
    "algorithms",
    [
        pytest.param({"HS256"}, id="HS256"),
        pytest.param({"RS256", "none"}, id="none"),
        pytest.param(set(), id="empty"),
        pytest.param("RS256", id="a-string"),
    ],
)
def test_unsupported_algorithm_arguments_are_a_programming_error(algorithms: Any) -> None:
    with pytest.raises(ValueError, match="algorithms"):
        KeySet.from_jwks({"keys": [_good()]}, algorithms=algorithms)


def test_supported_algorithms_never_include_symmetric_or_none() -> None:
    assert not {a for a in SUPPORTED_ALGORITHMS if a.startswith("HS") or a == "none"}


# -- departed kids --------------------------------------------------------------------------


def test_departed_kids_are_the_removed_ones_and_those_whose_key_changed() -> None:
    old = KeySet.from_jwks({"keys": [_good("stays"), _good("goes"), _good("changes")]})
    new = KeySet.from_jwks(
        {"keys": [_good("stays"), _public_jwk("rsa2", "changes", alg="RS256"), _good("added")]}
    )

    assert departed_kids(old, new) == frozenset({"goes", "changes"})
    assert departed_kids(old, old) == frozenset()


def test_departed_kids_include_a_kid_whose_algorithm_changed() -> None:
    old = KeySet.from_jwks({"keys": [_public_jwk("rsa", "k", alg="RS256")]})
    new = KeySet.from_jwks({"keys": [_public_jwk("rsa", "k", alg="PS256")]})

    assert departed_kids(old, new) == frozenset({"k"})


def test_constructor_refuses_duplicate_kids() -> None:
    key = KeySet.from_jwks({"keys": [_good()]}).get("good")
    assert isinstance(key, VerificationKey)

    with pytest.raises(ValueError, match="duplicate"):
        KeySet([key, key])
