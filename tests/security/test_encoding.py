"""Encoding: the one canonical spelling of a compact JWS, and nothing else.

Base64url without padding (RFC 7515 §2), zero leftover bits, UTF-8 JSON objects with
unique members and bounded nesting, exactly three segments. A lenient decoder gives
one token several spellings (so a string-keyed cache or deny list can be dodged) and
lets JWE-shaped or nested input reach code that never expected it.
"""

from __future__ import annotations

import json
from collections.abc import Callable

import pytest

from security.kit import Attack, Issuer, Target, b64u, json_bytes

_ALPHABET = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"


def _segments(change: Callable[[list[str]], list[str] | str]) -> Attack:
    """A valid token whose segments are rewritten by ``change``."""

    def make(issuer: Issuer) -> str:
        result = change(issuer.token().split("."))
        return result if isinstance(result, str) else ".".join(result)

    return make


def _pad(index: int, padding: str) -> Attack:
    def change(parts: list[str]) -> list[str]:
        parts[index] += padding
        return parts

    return _segments(change)


def _standard_alphabet(issuer: Issuer) -> str:
    """The signature in the ``+``/``/`` alphabet (re-signed until it has such a character)."""
    for _ in range(50):
        header, payload, signature = issuer.token().split(".")
        if "-" in signature or "_" in signature:
            return f"{header}.{payload}.{signature.replace('-', '+').replace('_', '/')}"
    raise AssertionError("no signature with '-' or '_' in 50 tries")


def _dirty_trailing_bits(index: int) -> Attack:
    """The segment's last character with its unused low bits set: same bytes, new spelling."""

    def change(parts: list[str]) -> list[str]:
        segment = parts[index]
        unused = (6 * len(segment)) % 8  # bits of the last character that carry no data
        if unused == 0:
            raise AssertionError("segment has no leftover bits")
        last = _ALPHABET.index(segment[-1])
        parts[index] = segment[:-1] + _ALPHABET[last | ((1 << unused) - 1)]
        return parts

    return _segments(change)


def _header_bytes(raw: bytes | Callable[[Issuer], bytes]) -> Attack:
    """A token signed by the real key over this exact header byte string."""
    return lambda issuer: issuer.sign(header=raw(issuer) if callable(raw) else raw)


def _payload_bytes(raw: bytes | Callable[[Issuer], bytes]) -> Attack:
    return lambda issuer: issuer.sign(claims=raw(issuer) if callable(raw) else raw)


def _header_json(issuer: Issuer) -> str:
    return json.dumps(issuer.header(), separators=(",", ":"))


def _claims_json(issuer: Issuer, **extra: object) -> bytes:
    return json_bytes(issuer.claims(**extra))


def _nested(depth: int) -> Callable[[Issuer], bytes]:
    def make(issuer: Issuer) -> bytes:
        claims = json.dumps(issuer.claims(), separators=(",", ":"))
        return (claims[:-1] + ',"x":' + "[" * depth + "]" * depth + "}").encode()

    return make


def _jwe_shape(issuer: Issuer) -> str:
    header = b64u(json_bytes({"alg": "RSA-OAEP", "enc": "A256GCM", "kid": issuer.kid}))
    return ".".join(
        [header, b64u(b"k" * 256), b64u(b"iv" * 6), b64u(b"ciphertext"), b64u(b"t" * 16)]
    )


PADDING_CASES = [
    pytest.param(_pad(0, "="), id="header-padded"),
    pytest.param(_pad(1, "=="), id="payload-padded"),
    pytest.param(_pad(2, "="), id="signature-one-pad"),
    pytest.param(_pad(2, "=="), id="signature-two-pads"),
    pytest.param(_standard_alphabet, id="plus-and-slash-alphabet"),
    pytest.param(_dirty_trailing_bits(2), id="signature-non-canonical-trailing-bits"),
    pytest.param(
        _segments(lambda p: [p[0], p[1].replace("e", "%65", 1), p[2]]), id="percent-encoded"
    ),
    pytest.param(
        _segments(lambda p: [p[0], p[1], p[2][:10] + "!" + p[2][11:]]), id="non-base64-char"
    ),
    pytest.param(_segments(lambda p: "%2E".join(p)), id="percent-encoded-dots"),
]

WHITESPACE_CASES = [
    pytest.param(_segments(lambda p: [p[0], p[1][:8] + " " + p[1][8:], p[2]]), id="space-inside"),
    pytest.param(_segments(lambda p: " " + ".".join(p)), id="leading-space"),
    pytest.param(_segments(lambda p: ".".join(p) + " "), id="trailing-space"),
    pytest.param(_segments(lambda p: ". ".join(p)), id="space-after-dots"),
]

JSON_CASES = [
    pytest.param(
        _header_bytes(
            lambda i: _header_json(i).replace('"at+jwt"', '"at+jwt\xe9"').encode("latin-1")
        ),
        id="header-latin-1",
    ),
    pytest.param(_header_bytes(lambda i: _header_json(i).encode("utf-16")), id="header-utf-16"),
    pytest.param(
        _header_bytes(lambda i: b"\xef\xbb\xbf" + _header_json(i).encode()), id="header-utf-8-bom"
    ),
    pytest.param(
        _payload_bytes(lambda i: _claims_json(i).replace(b'"sub"', b'"s\xc0\xb5b"')),
        id="payload-overlong-utf-8",
    ),
    pytest.param(
        _payload_bytes(lambda i: _claims_json(i).replace(b'"user-1"', b'"\\ud800"')),
        id="payload-lone-surrogate-sub",
    ),
    pytest.param(
        _payload_bytes(lambda i: _claims_json(i).replace(b'"mallory"', b'"\\udfff"')),
        id="payload-lone-surrogate-username",
    ),
    pytest.param(
        _header_bytes(lambda i: _header_json(i).encode() + b"x"), id="header-trailing-garbage"
    ),
    pytest.param(_payload_bytes(lambda i: _claims_json(i) + b"{}"), id="payload-two-objects"),
    pytest.param(_header_bytes(b"[]"), id="header-array"),
    pytest.param(_header_bytes(b'"RS256"'), id="header-string"),
    pytest.param(_header_bytes(b"1"), id="header-number"),
    pytest.param(_header_bytes(b"null"), id="header-null"),
    pytest.param(_header_bytes(b""), id="header-empty"),
    pytest.param(_payload_bytes(b"[]"), id="payload-array"),
    pytest.param(_payload_bytes(b'"claims"'), id="payload-string"),
    pytest.param(_payload_bytes(b"true"), id="payload-boolean"),
    pytest.param(_payload_bytes(b""), id="payload-empty"),
    pytest.param(_payload_bytes(_nested(16)), id="payload-nested-past-the-depth-limit"),
    pytest.param(_payload_bytes(_nested(3000)), id="payload-nested-3000-deep"),
    pytest.param(
        _header_bytes(
            lambda i: (_header_json(i)[:-1] + ',"x":' + '{"a":' * 20 + "1" + "}" * 21).encode()
        ),
        id="header-nested-past-the-depth-limit",
    ),
]

SHAPE_CASES = [
    pytest.param(_jwe_shape, id="jwe-five-segments"),
    pytest.param(_segments(lambda p: [*p, p[2]]), id="four-segments"),
    pytest.param(_segments(lambda p: p[:2]), id="two-segments"),
    pytest.param(_segments(lambda p: p[:1]), id="one-segment"),
    pytest.param(_segments(lambda p: ".".join(p) + "."), id="trailing-dot"),
    pytest.param(_segments(lambda p: "." + ".".join(p)), id="leading-dot"),
    pytest.param(_segments(lambda p: f"{p[0]}..{p[1]}.{p[2]}"), id="double-dot"),
    pytest.param(_segments(lambda p: ["", p[1], p[2]]), id="empty-header-segment"),
    pytest.param(_segments(lambda p: [p[0], "", p[2]]), id="empty-payload-segment"),
    pytest.param(lambda i: "...", id="only-dots"),
]


@pytest.mark.parametrize("attack", PADDING_CASES)
def test_non_canonical_base64url_is_unauthenticated(target: Target, attack: Attack) -> None:
    target.refuse(attack(target.issuer))


@pytest.mark.parametrize("attack", WHITESPACE_CASES)
def test_whitespace_in_a_token_is_unauthenticated(target: Target, attack: Attack) -> None:
    target.refuse(attack(target.issuer))


@pytest.mark.parametrize("attack", JSON_CASES)
def test_json_that_is_not_one_utf8_object_is_unauthenticated(
    target: Target, attack: Attack
) -> None:
    target.refuse(attack(target.issuer))


@pytest.mark.parametrize("attack", SHAPE_CASES)
def test_tokens_of_another_shape_are_unauthenticated(target: Target, attack: Attack) -> None:
    target.refuse(attack(target.issuer))
