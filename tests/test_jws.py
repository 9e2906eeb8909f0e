"""parse_compact: the strict compact-JWS parse (RFC 7515), without keys, clocks or signatures."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import pytest

from helpers import b64url, replace_segment, segments
from interceptors import AuthError, InvalidClaims, InvalidSignature, MalformedToken
from interceptors._jws import ParsedJws, parse_compact

ALGORITHMS = frozenset({"RS256", "PS256", "ES256", "EdDSA"})
ACCEPTED_TYPES = frozenset({"at+jwt", "application/at+jwt"})
MAX_LENGTH = 8192
MAX_DEPTH = 16
# An RSA-2048 signature is 256 bytes; the parse only decodes it, so any bytes do.
SIGNATURE = bytes(range(256))
DROP = object()


def parse(value: Any, **overrides: Any) -> ParsedJws:
    settings: dict[str, Any] = {
        "algorithms": ALGORITHMS,
        "accepted_types": ACCEPTED_TYPES,
        "max_length": MAX_LENGTH,
        "max_depth": MAX_DEPTH,
        **overrides,
    }
    return parse_compact(value, **settings)


def header(**members: Any) -> dict[str, Any]:
    base: dict[str, Any] = {"alg": "RS256", "kid": "rs-1", "typ": "at+jwt"}
    base.update(members)
    return {name: value for name, value in base.items() if value is not DROP}


def claims(**members: Any) -> dict[str, Any]:
    base: dict[str, Any] = {"iss": "https://auth.example.test", "sub": "user-1", "jti": "t-1"}
    base.update(members)
    return base


def compact(
    head: dict[str, Any] | bytes | None = None,
    payload: dict[str, Any] | bytes | None = None,
    signature: bytes = SIGNATURE,
) -> str:
    """A compact JWS built by hand; the parse never checks the signature, so none is made."""
    head = header() if head is None else head
    payload = claims() if payload is None else payload
    header_raw = head if isinstance(head, bytes) else json.dumps(head).encode()
    payload_raw = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
    return f"{b64url(header_raw)}.{b64url(payload_raw)}.{b64url(signature)}"


def non_canonical_signature() -> str:
    valid = compact()
    signature = segments(valid)[2]
    # 256 bytes leave 4 unused bits in the last character; setting one keeps the
    # decoded bytes but changes the spelling.
    alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
    twin = alphabet[alphabet.index(signature[-1]) | 1]
    return replace_segment(valid, 2, signature[:-1] + twin)


def hs256_header() -> str:
    # The key-confusion attack (an HMAC keyed with the public key) is refused before
    # any key is looked at: HS256 is never an allowed algorithm.
    return compact(header(alg="HS256"), signature=b"\x00" * 32)


# -- what passes ------------------------------------------------------------------------


def test_a_well_formed_token_yields_its_kid_alg_claims_and_signature() -> None:
    value = compact(header(kid="key-7", alg="ES256"), claims(sub="alice"), signature=b"sig")

    parsed = parse(value)

    assert parsed.kid == "key-7"
    assert parsed.alg == "ES256"
    assert parsed.claims["sub"] == "alice"
    assert parsed.signature == b"sig"
    assert parsed.signing_input == value.rsplit(".", 1)[0].encode("ascii")


ACCEPTED = [
    pytest.param(lambda: compact(header(typ="application/at+jwt")), id="typ-with-media-prefix"),
    pytest.param(lambda: compact(header(typ="AT+JWT")), id="typ-upper-case"),
    pytest.param(lambda: compact(header(jku="https://evil.test/jwks.json")), id="jku-ignored"),
]


@pytest.mark.parametrize("make", ACCEPTED)
def test_well_formed_variants_are_accepted(make: Callable[[], str]) -> None:
    assert parse(make()).kid == "rs-1"


def test_the_accepted_types_are_the_callers() -> None:
    custom = frozenset({"custom+jwt", "application/custom+jwt"})

    assert parse(compact(header(typ="custom+jwt")), accepted_types=custom).kid == "rs-1"
    with pytest.raises(InvalidClaims):
        parse(compact(), accepted_types=custom)


def test_kid_and_typ_may_be_made_optional_but_are_checked_when_present() -> None:
    # How the auth service parses RFC 7523 client assertions.
    loose = {"require_kid": False, "require_typ": False}
    bare = compact(header(kid=DROP, typ=DROP))

    assert parse(bare, **loose).kid == ""
    for wrong_kid in ("", None, 7, "k" * 257):
        with pytest.raises(MalformedToken):
            parse(compact(header(kid=wrong_kid)), **loose)
    with pytest.raises(InvalidClaims):
        parse(compact(header(typ=None)), **loose)
    with pytest.raises(InvalidClaims):
        parse(compact(header(typ="JWT")), **loose)
    # The defaults (the verifier's) still require both.
    with pytest.raises(MalformedToken):
        parse(compact(header(kid=DROP)))
    with pytest.raises(InvalidClaims):
        parse(compact(header(typ=DROP)))


def test_the_allowed_algorithms_are_the_callers() -> None:
    assert parse(compact(header(alg="ES256")), algorithms=frozenset({"ES256"})).alg == "ES256"
    with pytest.raises(InvalidSignature):
        parse(compact(), algorithms=frozenset({"ES256"}))


# -- what is refused --------------------------------------------------------------------

REJECTED = [
    # typ
    pytest.param(lambda: compact(header(typ="JWT")), InvalidClaims, id="typ-jwt"),
    pytest.param(lambda: compact(header(typ=DROP)), InvalidClaims, id="typ-missing"),
    pytest.param(lambda: compact(header(typ=1)), InvalidClaims, id="typ-not-string"),
    # algorithms
    *[
        pytest.param(
            lambda alg=alg: compact(header(alg=alg), signature=b""),
            InvalidSignature,
            id=f"alg-{alg}",
        )
        for alg in ("none", "None", "NONE", "nOnE")
    ],
    pytest.param(
        lambda: compact(header(alg="none"), signature=b"x"),
        InvalidSignature,
        id="alg-none-with-signature",
    ),
    pytest.param(hs256_header, InvalidSignature, id="hs256-with-public-key-pem"),
    pytest.param(lambda: compact(header(alg="RS384")), InvalidSignature, id="alg-outside-policy"),
    pytest.param(lambda: compact(header(alg=7)), MalformedToken, id="alg-not-string"),
    pytest.param(lambda: compact(header(alg=DROP)), MalformedToken, id="alg-missing"),
    pytest.param(lambda: compact(signature=b""), InvalidSignature, id="empty-signature"),
    # header
    pytest.param(lambda: compact(header(kid=DROP)), MalformedToken, id="kid-missing"),
    pytest.param(lambda: compact(header(kid="")), MalformedToken, id="kid-empty"),
    pytest.param(lambda: compact(header(kid=1)), MalformedToken, id="kid-number"),
    pytest.param(lambda: compact(header(kid="k" * 257)), MalformedToken, id="kid-long"),
    pytest.param(lambda: compact(header(crit=["exp"], exp=1)), MalformedToken, id="crit-unknown"),
    pytest.param(lambda: compact(header(crit=["b64"], b64=False)), MalformedToken, id="b64-false"),
    pytest.param(lambda: compact(header(b64=False)), MalformedToken, id="b64-no-crit"),
    # encoding
    pytest.param(lambda: compact() + "=", MalformedToken, id="padding-on-signature"),
    pytest.param(
        lambda: replace_segment(compact(), 0, segments(compact())[0] + "=="),
        MalformedToken,
        id="padding-on-header",
    ),
    pytest.param(non_canonical_signature, MalformedToken, id="non-canonical-base64"),
    pytest.param(
        lambda: replace_segment(compact(), 2, "+/" + segments(compact())[2][2:]),
        MalformedToken,
        id="standard-base64-alphabet",
    ),
    pytest.param(
        lambda: compact(b'{"alg":"RS256","alg":"none","kid":"rs-1","typ":"at+jwt"}'),
        MalformedToken,
        id="duplicate-header-member",
    ),
    pytest.param(
        lambda: compact(payload=json.dumps(claims()).encode()[:-1] + b',"sub":"admin"}'),
        MalformedToken,
        id="duplicate-payload-member",
    ),
    pytest.param(lambda: compact(b"[]"), MalformedToken, id="header-not-object"),
    pytest.param(lambda: compact(b"{not json"), MalformedToken, id="header-not-json"),
    pytest.param(
        lambda: compact(json.dumps(header()).encode("utf-16")),
        MalformedToken,
        id="header-utf16",
    ),
    pytest.param(lambda: compact(payload=b'"a string"'), MalformedToken, id="payload-string"),
    pytest.param(
        lambda: compact(payload=json.dumps(claims()).encode()[:-1] + b',"x":NaN}'),
        MalformedToken,
        id="payload-nan",
    ),
    pytest.param(lambda: compact(payload=b"[" * 3000), MalformedToken, id="payload-deep"),
    pytest.param(
        lambda: compact(payload=claims(padding="x" * MAX_LENGTH)), MalformedToken, id="too-long"
    ),
    # garbage
    *[
        pytest.param(lambda value=value: value, MalformedToken, id=f"garbage-{name}")
        for name, value in [
            ("empty", ""),
            ("word", "abc"),
            ("two-segments", "a.b"),
            ("four-segments", "a.b.c.d"),
            ("dots", "..."),
            ("non-ascii", "é.é.é"),
            ("spaces", "a b.c d.e f"),
            ("one-char-segments", "a.a.a"),
            ("huge", "a" * 100_000),
        ]
    ],
    pytest.param(lambda: " " + compact(), MalformedToken, id="leading-space"),
    pytest.param(lambda: compact() + "\n", MalformedToken, id="trailing-newline"),
    pytest.param(lambda: b"a.b.c", MalformedToken, id="bytes"),
    pytest.param(lambda: None, MalformedToken, id="none"),
]


@pytest.mark.parametrize(("make", "error"), REJECTED)
def test_bad_tokens_are_refused_with_the_right_error(
    make: Callable[[], Any], error: type[AuthError]
) -> None:
    value = make()

    with pytest.raises(AuthError) as caught:
        parse(value)

    assert type(caught.value) is error
    if isinstance(value, str) and len(value) > 8:
        assert value not in str(caught.value)
        assert value not in caught.value.log_detail


@pytest.mark.parametrize(
    ("payload", "why"),
    [
        pytest.param(b"[" * 16 + b"]" * 16, "deeper", id="one-level-too-deep"),
        pytest.param(b'{"a":"\\ud800"}', "surrogate", id="lone-surrogate-value"),
        pytest.param(b'{"\\udfff":1}', "surrogate", id="lone-surrogate-name"),
    ],
)
def test_payloads_that_json_accepts_but_the_parse_does_not(payload: bytes, why: str) -> None:
    document = b'{"sub":' + payload + b"}" if payload.startswith(b"[") else payload

    with pytest.raises(MalformedToken) as caught:
        parse(compact(payload=document))

    assert why in caught.value.log_detail


def test_nesting_up_to_the_limit_is_accepted() -> None:
    # The top-level object counts as 1, so 15 nested lists make 16 levels.
    parsed = parse(compact(payload=b'{"sub":' + b"[" * 15 + b"]" * 15 + b"}"))

    assert isinstance(parsed.claims["sub"], list)
