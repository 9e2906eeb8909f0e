"""Signatures: stripped, truncated, zeroed, flipped, borrowed, out of range or mis-encoded.

For ECDSA the classic failures are accepting ``r = s = 0`` (Java's "psychic signatures",
CVE-2022-21449), values not reduced mod ``n``, and DER where JWS wants raw ``r || s``
(RFC 7518 §3.4). Every curve we accept gets its own cases. The canonical high-S twin
``(r, n - s)`` is a valid signature and *is* accepted (see
``test_the_high_s_twin_of_a_valid_signature_verifies_and_names_the_same_session``).
"""

from __future__ import annotations

from collections.abc import Callable

import pytest
from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature

from security.kit import ATTACKER, Attack, Issuer, Target, b64u, b64u_decode, bearer

#: Group orders (SEC 2 §2.4, RFC 8032 §5.1).
ORDER = {
    "ES256": 0xFFFFFFFF00000000FFFFFFFFFFFFFFFFBCE6FAADA7179E84F3B9CAC2FC632551,
    "ES384": int(
        "FFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFC7634D81F4372DDF"
        "581A0DB248B0A77AECEC196ACCC52973",
        16,
    ),
    "ES512": int(
        "01FFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFF"
        "FA51868783BF2F966B7FCC0148F709A5D03BB5C9B8899C47AEBB6FB71E91386409",
        16,
    ),
}
ED25519_L = 2**252 + 27742317777372353535851937790883648493
SIZE = {"ES256": 32, "ES384": 48, "ES512": 66}


def _resign(change: Callable[[bytes, Issuer], bytes]) -> Attack:
    """A valid token whose signature bytes are replaced by ``change(signature, issuer)``."""

    def make(issuer: Issuer) -> str:
        header, payload, signature = issuer.token().split(".")
        return f"{header}.{payload}.{b64u(change(b64u_decode(signature), issuer))}"

    return make


def _flip(index: int) -> Callable[[bytes, Issuer], bytes]:
    def change(sig: bytes, issuer: Issuer) -> bytes:
        data = bytearray(sig)
        data[index] ^= 0x01
        return bytes(data)

    return change


def _from_another_token(issuer: Issuer) -> str:
    header, payload, _ = issuer.token(scope="resource.read resource.admin").split(".")
    signature = issuer.token().split(".")[2]
    return f"{header}.{payload}.{signature}"


def _same_kid_other_key(issuer: Issuer) -> str:
    return issuer.sign(key=ATTACKER.key_for(issuer.algorithm))


def _rsa_integer(value: Callable[[int], int]) -> Callable[[bytes, Issuer], bytes]:
    """The signature replaced by an integer derived from the modulus, at the modulus size."""

    def change(sig: bytes, issuer: Issuer) -> bytes:
        n = issuer.public_key.public_numbers().n
        return value(n).to_bytes(len(sig), "big")

    return change


SHARED_CASES = [
    pytest.param(_resign(lambda s, i: b""), id="stripped"),
    pytest.param(_resign(lambda s, i: s[:-1]), id="truncated-by-one-byte"),
    pytest.param(_resign(lambda s, i: s[: len(s) // 2]), id="truncated-to-half"),
    pytest.param(_resign(lambda s, i: s + b"\x00"), id="one-byte-appended"),
    pytest.param(_resign(lambda s, i: bytes(len(s))), id="all-zero"),
    pytest.param(_resign(lambda s, i: b"\xff" * len(s)), id="all-ones"),
    pytest.param(_resign(_flip(0)), id="first-bit-flipped"),
    pytest.param(_resign(_flip(-1)), id="last-bit-flipped"),
    pytest.param(_from_another_token, id="taken-from-another-token"),
    pytest.param(_same_kid_other_key, id="another-key-same-kid"),
]

RSA_CASES = [
    *SHARED_CASES,
    pytest.param(_resign(_rsa_integer(lambda n: 1)), id="rsa-s-equals-1"),
    pytest.param(_resign(_rsa_integer(lambda n: n - 1)), id="rsa-s-equals-n-minus-1"),
    pytest.param(_resign(_rsa_integer(lambda n: n)), id="rsa-s-equals-n"),
    pytest.param(_resign(lambda s, i: b"\x00" + s[:-1]), id="rsa-shifted-right"),
]


def _ecdsa(change: Callable[[int, int, int], tuple[int, int]]) -> Callable[[bytes, Issuer], bytes]:
    """Replace raw ``r || s`` by ``change(r, s, n)``, encoded at the curve's size."""

    def apply(sig: bytes, issuer: Issuer) -> bytes:
        size = SIZE[issuer.algorithm]
        r, s = int.from_bytes(sig[:size], "big"), int.from_bytes(sig[size:], "big")
        r2, s2 = change(r, s, ORDER[issuer.algorithm])
        return r2.to_bytes(size, "big") + s2.to_bytes(size, "big")

    return apply


def _der(sig: bytes, issuer: Issuer) -> bytes:
    size = SIZE[issuer.algorithm]
    return encode_dss_signature(
        int.from_bytes(sig[:size], "big"), int.from_bytes(sig[size:], "big")
    )


ECDSA_CASES = [
    *SHARED_CASES,
    pytest.param(_resign(_ecdsa(lambda r, s, n: (0, 0))), id="r-and-s-zero-psychic-signature"),
    pytest.param(_resign(_ecdsa(lambda r, s, n: (0, s))), id="r-zero"),
    pytest.param(_resign(_ecdsa(lambda r, s, n: (r, 0))), id="s-zero"),
    pytest.param(_resign(_ecdsa(lambda r, s, n: (n, s))), id="r-equals-n"),
    pytest.param(_resign(_ecdsa(lambda r, s, n: (r, n))), id="s-equals-n"),
    pytest.param(_resign(_ecdsa(lambda r, s, n: (n, n))), id="r-and-s-equal-n"),
    pytest.param(_resign(_ecdsa(lambda r, s, n: (1, 1))), id="r-and-s-one"),
    pytest.param(_resign(_ecdsa(lambda r, s, n: (r, n - 1))), id="s-is-minus-one"),
    pytest.param(_resign(_ecdsa(lambda r, s, n: (r + 1, n - s))), id="high-s-twin-with-r-changed"),
    pytest.param(_resign(_der), id="der-instead-of-raw"),
    pytest.param(_resign(lambda s, i: b"\x00" + s), id="wrong-length-leading-zero"),
]

# Values above the order are representable in the raw encoding only on P-521 (66 bytes).
P521_CASES = [
    pytest.param(_resign(_ecdsa(lambda r, s, n: (r, s + n))), id="p521-s-plus-n-unreduced"),
    pytest.param(_resign(_ecdsa(lambda r, s, n: (r + n, s))), id="p521-r-plus-n-unreduced"),
    pytest.param(_resign(_ecdsa(lambda r, s, n: (r, (n - s) + n))), id="p521-high-s-twin-plus-n"),
]


def _ed25519_s(change: Callable[[int], int]) -> Callable[[bytes, Issuer], bytes]:
    def apply(sig: bytes, issuer: Issuer) -> bytes:
        s = int.from_bytes(sig[32:], "little")
        return sig[:32] + change(s).to_bytes(32, "little")

    return apply


EDDSA_CASES = [
    *SHARED_CASES,
    pytest.param(_resign(_ed25519_s(lambda s: s + ED25519_L)), id="eddsa-s-plus-l-non-canonical"),
    pytest.param(_resign(_ed25519_s(lambda s: ED25519_L)), id="eddsa-s-equals-l"),
    pytest.param(
        _resign(lambda s, i: (1).to_bytes(32, "little") + bytes(32)), id="eddsa-identity-r-zero-s"
    ),
]


@pytest.mark.parametrize("attack", RSA_CASES)
def test_bad_rsa_signatures_are_unauthenticated(target: Target, attack: Attack) -> None:
    target.refuse(attack(target.issuer))


@pytest.mark.parametrize("attack", ECDSA_CASES)
def test_bad_p256_signatures_are_unauthenticated(es_target: Target, attack: Attack) -> None:
    es_target.refuse(attack(es_target.issuer))


@pytest.mark.parametrize("attack", ECDSA_CASES)
@pytest.mark.parametrize("algorithm", ["ES384", "ES512"])
def test_bad_p384_and_p521_signatures_are_unauthenticated(
    curve_targets: dict[str, Target], algorithm: str, attack: Attack
) -> None:
    target = curve_targets[algorithm]
    target.refuse(attack(target.issuer))


@pytest.mark.parametrize("attack", P521_CASES)
def test_unreduced_p521_signatures_are_unauthenticated(
    curve_targets: dict[str, Target], attack: Attack
) -> None:
    target = curve_targets["ES512"]
    target.refuse(attack(target.issuer))


@pytest.mark.parametrize("attack", EDDSA_CASES)
def test_bad_ed25519_signatures_are_unauthenticated(
    curve_targets: dict[str, Target], attack: Attack
) -> None:
    target = curve_targets["EdDSA"]
    target.refuse(attack(target.issuer))


def _twin(token: str, algorithm: str) -> str:
    header, payload, signature = token.split(".")
    raw, size, n = b64u_decode(signature), SIZE[algorithm], ORDER[algorithm]
    r, s = int.from_bytes(raw[:size], "big"), int.from_bytes(raw[size:], "big")
    return f"{header}.{payload}.{b64u(r.to_bytes(size, 'big') + (n - s).to_bytes(size, 'big'))}"


@pytest.mark.parametrize("algorithm", ["ES256", "ES384", "ES512"])
def test_the_high_s_twin_of_a_valid_signature_is_accepted_as_the_same_token(
    es_target: Target, curve_targets: dict[str, Target], algorithm: str
) -> None:
    # The decision this documents: ECDSA is malleable, (r, n - s) verifies like (r, s),
    # and we accept both (RFC 7518 asks for no low-S rule, and issuers emit either half).
    # So one token has two spellings, with the same claims: nothing may key on the raw
    # string (revocation keys on jti/sid). Enforcing low-S would make this test fail.
    target = es_target if algorithm == "ES256" else curve_targets[algorithm]
    token = target.issuer.token(sub="user-honest", username="honest")
    twin = _twin(token, algorithm)
    assert twin != token and twin.rsplit(".", 1)[0] == token.rsplit(".", 1)[0]
    assert target.call(bearer(twin)) == target.call(bearer(token))
