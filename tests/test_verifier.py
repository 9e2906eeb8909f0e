"""TokenVerifier: strict JWS parsing, the key decides the algorithm, claim checks, and the cache."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import json
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa

import helpers
from helpers import DROP, Clock
from interceptors._errors import (
    AuthError,
    ExpiredToken,
    ImmatureToken,
    InvalidClaims,
    InvalidSignature,
    KeysUnavailable,
    MalformedToken,
    UnknownKey,
)
from interceptors._verify import Principal, TokenPolicy, TokenVerifier

ISSUER = "https://auth.example.test"
AUDIENCE = "ssot-resource"
NOW = 1_700_000_000
LEEWAY = 30


@dataclass(frozen=True)
class Key:
    """A VerificationKey look-alike that also holds the private half, to sign with."""

    kid: str
    algorithm: str
    kty: str
    key: jwt.PyJWK
    private: Any
    jwk: dict[str, Any]


def make_key(kid: str, algorithm: str, private: Any) -> Key:
    jwk = jwt.get_algorithm_by_name(algorithm).to_jwk(private.public_key(), as_dict=True)
    jwk.update(kid=kid, alg=algorithm, use="sig")
    return Key(kid, algorithm, jwk["kty"], jwt.PyJWK(jwk, algorithm), private, jwk)


RS = make_key("rs-1", "RS256", rsa.generate_private_key(public_exponent=65537, key_size=2048))
PS = make_key("ps-1", "PS256", rsa.generate_private_key(public_exponent=65537, key_size=2048))
ES = make_key("es-1", "ES256", ec.generate_private_key(ec.SECP256R1()))
ED = make_key("ed-1", "EdDSA", ed25519.Ed25519PrivateKey.generate())
ATTACKER = make_key("rs-1", "RS256", rsa.generate_private_key(public_exponent=65537, key_size=2048))


class FakeKeys:
    """A KeyProvider over a dict, counting lookups."""

    def __init__(self, *keys: Key) -> None:
        self.keys = {key.kid: key for key in keys}
        self.lookups = 0
        self.listeners: list[Callable[[frozenset[str]], None]] = []
        self.down = False
        self.on_lookup: Callable[[str], None] | None = None

    def get_key(self, kid: str) -> Key:
        self.lookups += 1
        if self.on_lookup is not None:
            self.on_lookup(kid)
        if self.down:
            raise KeysUnavailable("test source is down")
        try:
            return self.keys[kid]
        except KeyError:
            raise UnknownKey(f"no key {kid!r}") from None

    async def aget_key(self, kid: str) -> Key:
        return self.get_key(kid)

    def add_removal_listener(self, callback: Callable[[frozenset[str]], None]) -> None:
        self.listeners.append(callback)

    def remove(self, kid: str) -> None:
        del self.keys[kid]
        for callback in self.listeners:
            callback(frozenset({kid}))


def claims(**overrides: Any) -> dict[str, Any]:
    changes = {"jti": "token-1", "scope": "resource.read resource.admin", **overrides}
    return helpers.claims(now=NOW, issuer=ISSUER, audience=AUDIENCE, lifetime=900, **changes)


def token(key: Key = RS, *, algorithm: str | None = None, **overrides: Any) -> str:
    """A token signed by PyJWT; header members come in as ``h_<name>`` overrides."""
    headers: dict[str, Any] = {"kid": key.kid, "typ": "at+jwt"}
    for name in [name for name in overrides if name.startswith("h_")]:
        headers[name[2:]] = overrides.pop(name)
    headers = {name: value for name, value in headers.items() if value is not DROP}
    headers.setdefault("typ", None)  # PyJWT adds "typ": "JWT" unless told not to
    return jwt.encode(
        claims(**overrides), key.private, algorithm=algorithm or key.algorithm, headers=headers
    )


def b64(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def raw_token(
    header: dict[str, Any] | bytes,
    payload: dict[str, Any] | bytes,
    *,
    key: Key = RS,
    signature: bytes | None = None,
) -> str:
    """A token built by hand, for what PyJWT refuses to produce; signed unless told."""
    header_raw = header if isinstance(header, bytes) else json.dumps(header).encode()
    payload_raw = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
    signing_input = f"{b64(header_raw)}.{b64(payload_raw)}"
    if signature is None:
        algorithm = jwt.get_algorithm_by_name(key.algorithm)
        signature = algorithm.sign(signing_input.encode(), key.private)
    return f"{signing_input}.{b64(signature)}"


def header(**members: Any) -> dict[str, Any]:
    base: dict[str, Any] = {"alg": "RS256", "kid": RS.kid, "typ": "at+jwt"}
    base.update(members)
    return {name: value for name, value in base.items() if value is not DROP}


def segments(value: str) -> list[str]:
    return value.split(".")


def replace_segment(value: str, index: int, segment: str) -> str:
    parts = segments(value)
    parts[index] = segment
    return ".".join(parts)


def hs256_with_public_pem() -> str:
    pem = RS.private.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    signing_input = (
        f"{b64(json.dumps(header(alg='HS256')).encode())}.{b64(json.dumps(claims()).encode())}"
    )
    mac = hmac.new(pem, signing_input.encode(), hashlib.sha256).digest()
    return f"{signing_input}.{b64(mac)}"


def truncated_signature() -> str:
    valid = token()
    signature = base64.urlsafe_b64decode(segments(valid)[2] + "==")
    return replace_segment(valid, 2, b64(signature[:-8]))


def tampered_payload() -> str:
    valid = token()
    return replace_segment(valid, 1, b64(json.dumps(claims(sub="admin")).encode()))


def non_canonical_signature() -> str:
    valid = token()
    signature = segments(valid)[2]
    # 256 bytes leave 4 unused bits in the last character; setting one keeps the
    # decoded bytes but changes the spelling.
    last = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_".index(signature[-1])
    twin = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"[last | 1]
    return replace_segment(valid, 2, signature[:-1] + twin)


def too_long() -> str:
    return token(padding="x" * 8192)


def make_verifier(keys: FakeKeys | None = None, **kwargs: Any) -> TokenVerifier:
    now = kwargs.pop("now", Clock())
    cache_size = kwargs.pop("cache_size", 4096)
    policy = TokenPolicy(issuer=ISSUER, audience=AUDIENCE, leeway=LEEWAY, **kwargs)
    return TokenVerifier(
        keys if keys is not None else FakeKeys(RS, PS, ES, ED),
        policy,
        cache_size=cache_size,
        now=now,
    )


def check(verifier: TokenVerifier, value: Any, use_async: bool) -> Principal:
    if use_async:
        return asyncio.run(verifier.averify(value))
    return verifier.verify(value)


FACES = pytest.mark.parametrize("use_async", [False, True], ids=["verify", "averify"])


VALID = [
    pytest.param(lambda: token(RS), id="rs256"),
    pytest.param(lambda: token(PS), id="ps256"),
    pytest.param(lambda: token(ES), id="es256"),
    pytest.param(lambda: token(ED), id="eddsa"),
    pytest.param(lambda: token(h_typ="application/at+jwt"), id="typ-with-media-prefix"),
    pytest.param(lambda: token(h_typ="AT+JWT"), id="typ-upper-case"),
    pytest.param(lambda: token(aud=["other", AUDIENCE]), id="aud-list-with-ours"),
    pytest.param(lambda: token(exp=NOW - LEEWAY + 1, iat=NOW - 600), id="expired-within-leeway"),
    pytest.param(lambda: token(nbf=NOW + LEEWAY - 1), id="nbf-within-leeway"),
    pytest.param(lambda: token(iat=NOW + 0.5, exp=NOW + 900.5), id="float-times"),
    pytest.param(lambda: token(h_jku="https://evil.test/jwks.json"), id="jku-ignored"),
]


@FACES
@pytest.mark.parametrize("make", VALID)
def test_valid_tokens_are_accepted(make: Callable[[], str], use_async: bool) -> None:
    principal = check(make_verifier(), make(), use_async)

    assert principal.subject == "user-1"


@FACES
def test_the_principal_carries_the_tokens_claims(use_async: bool) -> None:
    principal = check(make_verifier(), token(iat=NOW - 10, exp=NOW + 890), use_async)

    assert principal.subject == "user-1"
    assert principal.username == "alice"
    assert principal.scopes == frozenset({"resource.read", "resource.admin"})
    assert principal.session_id == "session-1"
    assert principal.token_id == "token-1"
    assert principal.issued_at == NOW - 10
    assert principal.expires_at == NOW + 890
    assert principal.claims["iss"] == ISSUER
    with pytest.raises(TypeError):
        principal.claims["sub"] = "admin"  # type: ignore[index]


def test_optional_claims_default_to_empty() -> None:
    principal = make_verifier().verify(token(scope=DROP, sid=DROP, username=DROP))

    assert principal.scopes == frozenset()
    assert principal.session_id is None
    assert principal.username == ""


def test_scope_is_split_on_spaces_only() -> None:
    principal = make_verifier().verify(token(scope=" a  b:c\td "))

    assert principal.scopes == frozenset({"a", "b:c\td"})


REJECTED = [
    # time
    pytest.param(lambda: token(exp=NOW - LEEWAY, iat=NOW - 900), ExpiredToken, id="expired"),
    pytest.param(lambda: token(nbf=NOW + LEEWAY + 1), ImmatureToken, id="not-yet-valid"),
    pytest.param(
        lambda: token(iat=NOW + LEEWAY + 1, nbf=DROP, exp=NOW + 900),
        ImmatureToken,
        id="iat-in-future",
    ),
    pytest.param(lambda: token(exp=NOW + 86401), InvalidClaims, id="lifetime-too-long"),
    pytest.param(lambda: token(exp=NOW + 20, iat=NOW + 20), InvalidClaims, id="exp-not-after-iat"),
    pytest.param(lambda: token(exp="9999999999"), InvalidClaims, id="exp-string"),
    pytest.param(lambda: token(exp=True), InvalidClaims, id="exp-bool"),
    pytest.param(lambda: token(iat=False), InvalidClaims, id="iat-bool"),
    pytest.param(lambda: token(nbf="0"), InvalidClaims, id="nbf-string"),
    pytest.param(lambda: token(exp=DROP), InvalidClaims, id="exp-missing"),
    pytest.param(lambda: token(iat=DROP), InvalidClaims, id="iat-missing"),
    # who
    pytest.param(lambda: token(aud="someone-else"), InvalidClaims, id="wrong-aud"),
    pytest.param(lambda: token(aud=["a", "b"]), InvalidClaims, id="aud-list-without-ours"),
    pytest.param(lambda: token(aud=[AUDIENCE, 7]), InvalidClaims, id="aud-list-non-string"),
    pytest.param(lambda: token(aud=DROP), InvalidClaims, id="aud-missing"),
    pytest.param(lambda: token(iss="https://evil.test"), InvalidClaims, id="wrong-iss"),
    pytest.param(lambda: token(iss=DROP), InvalidClaims, id="iss-missing"),
    pytest.param(lambda: token(sub=DROP), InvalidClaims, id="sub-missing"),
    pytest.param(lambda: token(sub=""), InvalidClaims, id="sub-empty"),
    pytest.param(lambda: token(sub=42), InvalidClaims, id="sub-not-string"),
    pytest.param(lambda: token(jti=DROP), InvalidClaims, id="jti-missing"),
    pytest.param(lambda: token(scope=["a", "b"]), InvalidClaims, id="scope-not-string"),
    pytest.param(lambda: token(username=7), InvalidClaims, id="username-not-string"),
    pytest.param(lambda: token(sid=7), InvalidClaims, id="sid-not-string"),
    # typ
    pytest.param(lambda: token(h_typ="JWT"), InvalidClaims, id="typ-jwt"),
    pytest.param(lambda: token(h_typ=DROP), InvalidClaims, id="typ-missing"),
    pytest.param(lambda: raw_token(header(typ=1), claims()), InvalidClaims, id="typ-not-string"),
    # algorithms and keys
    *[
        pytest.param(
            lambda alg=alg: raw_token(header(alg=alg), claims(), signature=b""),
            InvalidSignature,
            id=f"alg-{alg}",
        )
        for alg in ("none", "None", "NONE", "nOnE")
    ],
    pytest.param(
        lambda: raw_token(header(alg="none"), claims(), signature=b"x"),
        InvalidSignature,
        id="alg-none-with-signature",
    ),
    pytest.param(hs256_with_public_pem, InvalidSignature, id="hs256-with-public-key-pem"),
    pytest.param(lambda: token(RS, algorithm="PS256"), InvalidSignature, id="alg-mismatches-key"),
    pytest.param(
        lambda: raw_token(header(alg="ES256", kid=RS.kid), claims(), key=ES),
        InvalidSignature,
        id="es256-header-on-rsa-key",
    ),
    pytest.param(lambda: token(RS, algorithm="RS384"), InvalidSignature, id="alg-outside-policy"),
    pytest.param(lambda: raw_token(header(alg=7), claims()), MalformedToken, id="alg-not-string"),
    pytest.param(lambda: raw_token(header(alg=DROP), claims()), MalformedToken, id="alg-missing"),
    pytest.param(lambda: token(h_kid="nobody"), UnknownKey, id="unknown-kid"),
    pytest.param(lambda: token(ATTACKER), InvalidSignature, id="signed-by-another-key"),
    pytest.param(
        lambda: token(ATTACKER, h_jwk={k: v for k, v in ATTACKER.jwk.items() if k != "kid"}),
        InvalidSignature,
        id="embedded-jwk-ignored",
    ),
    pytest.param(
        lambda: token(ATTACKER, h_x5u="https://evil.test/cert.pem"),
        InvalidSignature,
        id="x5u-ignored",
    ),
    pytest.param(tampered_payload, InvalidSignature, id="tampered-payload"),
    pytest.param(truncated_signature, InvalidSignature, id="truncated-signature"),
    pytest.param(
        lambda: replace_segment(token(ES), 2, b64(b"\x01" * 63)),
        InvalidSignature,
        id="es256-signature-wrong-length",
    ),
    pytest.param(lambda: replace_segment(token(), 2, ""), InvalidSignature, id="empty-signature"),
    # header
    pytest.param(lambda: raw_token(header(kid=DROP), claims()), MalformedToken, id="kid-missing"),
    pytest.param(lambda: raw_token(header(kid=""), claims()), MalformedToken, id="kid-empty"),
    pytest.param(lambda: raw_token(header(kid=1), claims()), MalformedToken, id="kid-number"),
    pytest.param(lambda: raw_token(header(kid="k" * 257), claims()), MalformedToken, id="kid-long"),
    pytest.param(
        lambda: raw_token(header(crit=["exp"], exp=1), claims()),
        MalformedToken,
        id="crit-unknown",
    ),
    pytest.param(
        lambda: raw_token(header(crit=["b64"], b64=False), claims()),
        MalformedToken,
        id="b64-false",
    ),
    pytest.param(lambda: raw_token(header(b64=False), claims()), MalformedToken, id="b64-no-crit"),
    # encoding
    pytest.param(lambda: token() + "=", MalformedToken, id="padding-on-signature"),
    pytest.param(
        lambda: replace_segment(token(), 0, segments(token())[0] + "=="),
        MalformedToken,
        id="padding-on-header",
    ),
    pytest.param(non_canonical_signature, MalformedToken, id="non-canonical-base64"),
    pytest.param(
        lambda: replace_segment(token(), 2, "+/" + segments(token())[2][2:]),
        MalformedToken,
        id="standard-base64-alphabet",
    ),
    pytest.param(
        lambda: raw_token(b'{"alg":"RS256","alg":"none","kid":"rs-1","typ":"at+jwt"}', claims()),
        MalformedToken,
        id="duplicate-header-member",
    ),
    pytest.param(
        lambda: raw_token(header(), json.dumps(claims()).encode()[:-1] + b',"sub":"admin"}'),
        MalformedToken,
        id="duplicate-payload-member",
    ),
    pytest.param(lambda: raw_token(b"[]", claims()), MalformedToken, id="header-not-object"),
    pytest.param(lambda: raw_token(b"{not json", claims()), MalformedToken, id="header-not-json"),
    pytest.param(
        lambda: raw_token(json.dumps(header()).encode("utf-16"), claims()),
        MalformedToken,
        id="header-utf16",
    ),
    pytest.param(lambda: raw_token(header(), b'"a string"'), MalformedToken, id="payload-string"),
    pytest.param(
        lambda: raw_token(header(), json.dumps(claims()).encode()[:-1] + b',"x":NaN}'),
        MalformedToken,
        id="payload-nan",
    ),
    pytest.param(lambda: raw_token(header(), b"[" * 3000), MalformedToken, id="payload-deep"),
    pytest.param(too_long, MalformedToken, id="too-long"),
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
    pytest.param(lambda: " " + token(), MalformedToken, id="leading-space"),
    pytest.param(lambda: token() + "\n", MalformedToken, id="trailing-newline"),
    pytest.param(lambda: b"a.b.c", MalformedToken, id="bytes"),
    pytest.param(lambda: None, MalformedToken, id="none"),
]


@FACES
@pytest.mark.parametrize(("make", "error"), REJECTED)
def test_bad_tokens_are_rejected_with_the_right_error(
    make: Callable[[], Any], error: type[AuthError], use_async: bool
) -> None:
    value = make()

    with pytest.raises(AuthError) as caught:
        check(make_verifier(), value, use_async)

    assert type(caught.value) is error
    if isinstance(value, str) and len(value) > 8:
        assert value not in str(caught.value)


def test_a_tampered_payload_fails_the_signature_check() -> None:
    with pytest.raises(InvalidSignature) as caught:
        make_verifier().verify(tampered_payload())

    assert caught.value.message == "invalid signature"


def test_a_library_failure_is_chained_not_copied(monkeypatch: pytest.MonkeyPatch) -> None:
    def explode(self: object, msg: bytes, key: object, sig: bytes) -> bool:
        raise ValueError("library text that may echo the token")

    monkeypatch.setattr(jwt.algorithms.RSAAlgorithm, "verify", explode)
    with pytest.raises(InvalidSignature) as caught:
        make_verifier().verify(token())

    assert isinstance(caught.value.__cause__, ValueError)
    assert "library text" not in str(caught.value)
    assert caught.value.message == "invalid signature"


@FACES
def test_keys_unavailable_is_passed_on(use_async: bool) -> None:
    keys = FakeKeys(RS)
    keys.down = True

    with pytest.raises(KeysUnavailable):
        check(make_verifier(keys), token(), use_async)


def test_a_custom_token_type_is_required() -> None:
    verifier = make_verifier(token_type="application/custom+jwt")

    assert verifier.verify(token(h_typ="custom+jwt")).subject == "user-1"
    with pytest.raises(InvalidClaims):
        verifier.verify(token())


def test_a_policy_may_narrow_the_algorithms() -> None:
    verifier = make_verifier(algorithms=frozenset({"ES256"}))

    assert verifier.verify(token(ES)).subject == "user-1"
    with pytest.raises(InvalidSignature):
        verifier.verify(token(RS))


@pytest.mark.parametrize(
    "kwargs",
    [
        pytest.param({"algorithms": frozenset({"HS256"})}, id="hs256"),
        pytest.param({"algorithms": frozenset({"RS256", "HS512"})}, id="hs512-among-others"),
        pytest.param({"algorithms": frozenset({"none"})}, id="none"),
        pytest.param({"algorithms": frozenset({"RS257"})}, id="unknown"),
        pytest.param({"algorithms": frozenset()}, id="empty"),
        pytest.param({"leeway": -1.0}, id="negative-leeway"),
        pytest.param({"max_lifetime": 0.0}, id="zero-lifetime"),
        pytest.param({"max_token_length": 0}, id="zero-length"),
        pytest.param({"token_type": ""}, id="empty-typ"),
        pytest.param({"required_claims": frozenset({"iss", "sub", "aud", "iat"})}, id="no-exp"),
        pytest.param({"issuer": ""}, id="empty-issuer"),
        pytest.param({"audience": ""}, id="empty-audience"),
    ],
)
def test_a_policy_refuses_unsafe_settings(kwargs: dict[str, Any]) -> None:
    settings: dict[str, Any] = {"issuer": ISSUER, "audience": AUDIENCE, **kwargs}

    with pytest.raises(ValueError):
        TokenPolicy(**settings)


def test_a_policy_defaults_to_asymmetric_algorithms_and_rfc9068_claims() -> None:
    policy = TokenPolicy(issuer=ISSUER, audience=AUDIENCE)

    assert policy.algorithms == {"RS256", "PS256", "ES256", "EdDSA"}
    assert policy.token_type == "at+jwt"
    assert {"iss", "sub", "aud", "exp", "iat", "jti"} <= policy.required_claims


@pytest.mark.parametrize(
    ("required", "expected"),
    [
        pytest.param({"resource.read"}, True, id="one-held"),
        pytest.param(["resource.read", "resource.admin"], True, id="all-held"),
        pytest.param({"resource.write"}, False, id="one-missing"),
        pytest.param(set(), True, id="none-required"),
        pytest.param("resource.read resource.admin", True, id="string-is-split"),
        pytest.param("resource", False, id="string-is-not-characters"),
    ],
)
def test_has_scopes_needs_every_scope(required: Any, expected: bool) -> None:
    principal = make_verifier().verify(token())

    assert principal.has_scopes(required) is expected


# -- the verified-token cache ----------------------------------------------------------


@FACES
def test_a_verified_token_is_served_from_the_cache(use_async: bool) -> None:
    keys = FakeKeys(RS)
    verifier = make_verifier(keys)
    value = token()

    first = check(verifier, value, use_async)
    keys.down = True
    second = check(verifier, value, use_async)

    assert second is first
    assert keys.lookups == 1


def test_a_cached_token_is_not_used_from_its_exp_on() -> None:
    keys, clock = FakeKeys(RS), Clock()
    verifier = make_verifier(keys, now=clock)
    value = token(exp=NOW + 900)

    verifier.verify(value)
    clock.now = NOW + 899.9
    verifier.verify(value)
    assert keys.lookups == 1

    clock.now = NOW + 900
    verifier.verify(value)  # full check again: still inside the leeway
    assert keys.lookups == 2

    clock.now = NOW + 900 + LEEWAY
    with pytest.raises(ExpiredToken):
        verifier.verify(value)


def test_a_token_is_not_cached_before_its_nbf() -> None:
    keys, clock = FakeKeys(RS), Clock()
    verifier = make_verifier(keys, now=clock)
    value = token(nbf=NOW + 10)

    verifier.verify(value)
    verifier.verify(value)
    assert keys.lookups == 2

    clock.now = NOW + 10
    verifier.verify(value)
    verifier.verify(value)
    assert keys.lookups == 3


def test_a_cached_token_is_dropped_when_its_key_leaves_the_set() -> None:
    keys = FakeKeys(RS, ES)
    verifier = make_verifier(keys)
    rsa_token, ec_token = token(RS), token(ES)
    verifier.verify(rsa_token)
    verifier.verify(ec_token)
    assert len(keys.listeners) == 1

    keys.remove(RS.kid)

    with pytest.raises(UnknownKey):
        verifier.verify(rsa_token)
    lookups = keys.lookups
    verifier.verify(ec_token)
    assert keys.lookups == lookups


def test_a_token_checked_while_its_key_leaves_is_not_cached() -> None:
    keys = FakeKeys(RS)
    verifier = make_verifier(keys)

    def key_leaves_during_lookup(kid: str) -> None:
        for callback in keys.listeners:
            callback(frozenset({kid}))

    keys.on_lookup = key_leaves_during_lookup
    value = token()

    verifier.verify(value)
    keys.on_lookup = None
    verifier.verify(value)

    assert keys.lookups == 2


def test_the_cache_evicts_the_least_recently_used_token() -> None:
    keys = FakeKeys(RS)
    verifier = make_verifier(keys, cache_size=2)
    first, second, third = (token(jti=f"token-{n}") for n in range(3))

    verifier.verify(first)
    verifier.verify(second)
    verifier.verify(first)  # hit: first is now the most recent
    verifier.verify(third)  # evicts second
    assert keys.lookups == 3

    verifier.verify(first)
    assert keys.lookups == 3
    verifier.verify(second)
    assert keys.lookups == 4


def test_a_zero_size_cache_verifies_every_time() -> None:
    keys = FakeKeys(RS)
    verifier = make_verifier(keys, cache_size=0)
    value = token()

    verifier.verify(value)
    verifier.verify(value)

    assert keys.lookups == 2


def test_a_rejected_token_is_not_cached() -> None:
    keys = FakeKeys(RS)
    verifier = make_verifier(keys)
    value = token(aud="someone-else")

    for _ in range(2):
        with pytest.raises(InvalidClaims):
            verifier.verify(value)

    assert keys.lookups == 2
