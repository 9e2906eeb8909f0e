"""TokenVerifier: the key decides the algorithm, the signature check, both faces, and the cache.

The parse and the claims policy are pure and tested on their own (test_jws.py,
test_claims.py); here one case of each shows the verifier runs them, on both faces.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import json
import sys
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa

import helpers
from helpers import DROP, Clock, b64url, replace_segment, segments
from interceptors import (
    AuthError,
    ExpiredToken,
    ImmatureToken,
    InvalidClaims,
    InvalidSignature,
    KeyProvider,
    KeysUnavailable,
    MalformedToken,
    Principal,
    TokenPolicy,
    TokenVerifier,
    UnknownKey,
    VerificationKeyLike,
)
from interceptors._claims import check_claims

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
    signing_input = f"{b64url(header_raw)}.{b64url(payload_raw)}"
    if signature is None:
        algorithm = jwt.get_algorithm_by_name(key.algorithm)
        signature = algorithm.sign(signing_input.encode(), key.private)
    return f"{signing_input}.{b64url(signature)}"


def header(**members: Any) -> dict[str, Any]:
    base: dict[str, Any] = {"alg": "RS256", "kid": RS.kid, "typ": "at+jwt"}
    base.update(members)
    return {name: value for name, value in base.items() if value is not DROP}


def hs256_with_public_pem() -> str:
    pem = RS.private.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    head, body = (json.dumps(part).encode() for part in (header(alg="HS256"), claims()))
    signing_input = f"{b64url(head)}.{b64url(body)}"
    mac = hmac.new(pem, signing_input.encode(), hashlib.sha256).digest()
    return f"{signing_input}.{b64url(mac)}"


def truncated_signature() -> str:
    valid = token()
    signature = base64.urlsafe_b64decode(segments(valid)[2] + "==")
    return replace_segment(valid, 2, b64url(signature[:-8]))


def tampered_payload() -> str:
    valid = token()
    return replace_segment(valid, 1, b64url(json.dumps(claims(sub="admin")).encode()))


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
    # The parse and the claims check, run by the verifier (their cases: test_jws, test_claims).
    pytest.param(lambda: token(h_typ="application/at+jwt"), id="typ-with-media-prefix"),
    pytest.param(lambda: token(aud=["other", AUDIENCE]), id="aud-list-with-ours"),
    pytest.param(lambda: token(exp=NOW - LEEWAY + 1, iat=NOW - 600), id="expired-within-leeway"),
    pytest.param(lambda: token(h_jku="https://evil.test/jwks.json"), id="jku-ignored"),
]


@FACES
@pytest.mark.parametrize("make", VALID)
def test_valid_tokens_are_accepted(make: Callable[[], str], use_async: bool) -> None:
    principal = check(make_verifier(), make(), use_async)

    assert principal.subject == "user-1"


@FACES
def test_the_principal_is_the_claims_checks_and_read_only(use_async: bool) -> None:
    # Each field of it is pinned by test_claims; here: the verifier hands it on intact.
    principal = check(make_verifier(), token(iat=NOW - 10, exp=NOW + 890), use_async)

    policy = TokenPolicy(issuer=ISSUER, audience=AUDIENCE, leeway=LEEWAY)
    assert principal == check_claims(claims(iat=NOW - 10, exp=NOW + 890), policy, NOW)
    assert principal.subject == "user-1" and principal.claims["iss"] == ISSUER
    with pytest.raises(TypeError):
        principal.claims["sub"] = "admin"  # type: ignore[index]


REJECTED = [
    # The parse and the claims check, run by the verifier (their cases: test_jws, test_claims).
    pytest.param(lambda: token(exp=NOW - LEEWAY, iat=NOW - 900), ExpiredToken, id="expired"),
    pytest.param(lambda: token(nbf=NOW + LEEWAY + 1), ImmatureToken, id="not-yet-valid"),
    pytest.param(lambda: token(aud="someone-else"), InvalidClaims, id="wrong-aud"),
    pytest.param(lambda: token(h_typ="JWT"), InvalidClaims, id="typ-jwt"),
    pytest.param(
        lambda: raw_token(header(alg="none"), claims(), signature=b""),
        InvalidSignature,
        id="alg-none",
    ),
    pytest.param(hs256_with_public_pem, InvalidSignature, id="hs256-with-public-key-pem"),
    pytest.param(lambda: token(RS, algorithm="RS384"), InvalidSignature, id="alg-outside-policy"),
    pytest.param(lambda: raw_token(header(kid=DROP), claims()), MalformedToken, id="kid-missing"),
    pytest.param(non_canonical_signature, MalformedToken, id="non-canonical-base64"),
    pytest.param(too_long, MalformedToken, id="too-long"),
    pytest.param(lambda: "a.b", MalformedToken, id="garbage-two-segments"),
    pytest.param(lambda: None, MalformedToken, id="none"),
    # the key and the signature
    pytest.param(lambda: token(RS, algorithm="PS256"), InvalidSignature, id="alg-mismatches-key"),
    pytest.param(
        lambda: raw_token(header(alg="ES256", kid=RS.kid), claims(), key=ES),
        InvalidSignature,
        id="es256-header-on-rsa-key",
    ),
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
        lambda: replace_segment(token(ES), 2, b64url(b"\x01" * 63)),
        InvalidSignature,
        id="es256-signature-wrong-length",
    ),
    pytest.param(lambda: replace_segment(token(), 2, ""), InvalidSignature, id="empty-signature"),
    pytest.param(
        lambda: token(ATTACKER, exp=NOW - 3600, iat=NOW - 4000),
        InvalidSignature,
        id="bad-signature-wins-over-bad-claims",
    ),
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


# -- the verified-token cache ----------------------------------------------------------


@FACES
def test_a_verified_token_is_served_from_the_cache(use_async: bool) -> None:
    keys = FakeKeys(RS)
    verifier = make_verifier(keys)
    value = token()

    check(verifier, value, use_async)
    remembered = check(verifier, value, use_async)
    keys.down = True
    again = check(verifier, value, use_async)

    assert again is remembered
    assert keys.lookups == 2
    assert verifier.cache_lookups == (1, 2)


@FACES
def test_a_token_verified_once_is_not_remembered_yet(use_async: bool) -> None:
    # One-shot tokens (a new token per call) would only churn the cache: a token is
    # remembered from its second successful check on.
    keys = FakeKeys(RS)
    verifier = make_verifier(keys)
    value = token()

    first = check(verifier, value, use_async)
    second = check(verifier, value, use_async)

    assert second is not first
    assert second == first
    assert keys.lookups == 2


def test_a_cached_token_is_not_used_from_its_exp_on() -> None:
    keys, clock = FakeKeys(RS), Clock()
    verifier = make_verifier(keys, now=clock)
    value = token(exp=NOW + 900)

    verifier.verify(value)
    verifier.verify(value)  # remembered from here on
    clock.now = NOW + 899.9
    verifier.verify(value)
    assert keys.lookups == 2

    clock.now = NOW + 900
    verifier.verify(value)  # full check again: still inside the leeway
    assert keys.lookups == 3

    clock.now = NOW + 900 + LEEWAY
    with pytest.raises(ExpiredToken):
        verifier.verify(value)


def test_a_token_is_not_cached_before_its_nbf() -> None:
    keys, clock = FakeKeys(RS), Clock()
    verifier = make_verifier(keys, now=clock)
    value = token(nbf=NOW + 10)

    for _ in range(3):
        verifier.verify(value)
    assert keys.lookups == 3

    clock.now = NOW + 10
    for _ in range(3):
        verifier.verify(value)
    assert keys.lookups == 5


def test_a_cached_token_is_dropped_when_its_key_leaves_the_set() -> None:
    keys = FakeKeys(RS, ES)
    verifier = make_verifier(keys)
    rsa_token, ec_token = token(RS), token(ES)
    for value in (rsa_token, rsa_token, ec_token, ec_token):
        verifier.verify(value)
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

    value = token()
    verifier.verify(value)  # a first check is only noted
    keys.on_lookup = key_leaves_during_lookup
    verifier.verify(value)  # would be remembered, but a key left meanwhile
    keys.on_lookup = None
    verifier.verify(value)

    assert keys.lookups == 3


def test_the_cache_evicts_the_least_recently_used_token() -> None:
    keys = FakeKeys(RS)
    verifier = make_verifier(keys, cache_size=2)
    first, second, third = (token(jti=f"token-{n}") for n in range(3))

    for value in (first, first, second, second):  # each remembered at its second check
        verifier.verify(value)
    verifier.verify(first)  # hit: first is now the most recent
    verifier.verify(third)
    verifier.verify(third)  # remembered: evicts second
    assert keys.lookups == 6

    verifier.verify(first)
    assert keys.lookups == 6
    verifier.verify(second)
    assert keys.lookups == 7


def test_a_remembered_token_serves_only_its_exact_string() -> None:
    # The cache finds entries by the token's last characters (its signature's); a
    # token sharing them with a remembered one is still checked in full.
    keys = FakeKeys(RS)
    verifier = make_verifier(keys)
    honest = token()
    verifier.verify(honest)
    verifier.verify(honest)
    payload = json.loads(base64.urlsafe_b64decode(segments(honest)[1] + "=="))
    forged = replace_segment(honest, 1, b64url(json.dumps({**payload, "sub": "admin"}).encode()))
    assert forged[-32:] == honest[-32:]

    with pytest.raises(InvalidSignature):
        verifier.verify(forged)
    assert verifier.verify(honest).subject == "user-1"
    assert verifier.cache_lookups == (1, 3)


def test_concurrent_checks_keep_the_cache_right_while_a_key_leaves() -> None:
    keys = FakeKeys(RS, ES)
    # The pool fits the cache: once the key has left, only a missed purge or a racing
    # insert could leave one of its tokens there. The churn tokens, checked early
    # on, make the threads evict concurrently.
    verifier = make_verifier(keys, cache_size=32)
    pool = [token(RS, jti=f"rs-{n}") for n in range(12)] + [
        token(ES, jti=f"es-{n}") for n in range(12)
    ]
    churn = [token(ES, jti=f"churn-{n}") for n in range(48)]
    wrong: list[str] = []
    removed = threading.Event()

    def work(offset: int) -> None:
        for round_ in range(40):
            if offset == 0 and round_ == 20:
                removed.set()  # first: other threads may be refused from the removal on
                keys.remove(RS.kid)
            extra = churn[offset::6] * 2 if round_ < 10 else []
            for value in pool[offset:] + pool[:offset] + extra:
                try:
                    principal = verifier.verify(value)
                except UnknownKey:
                    if not removed.is_set() or "rs-" not in value_jti(value):
                        wrong.append(f"refused {value_jti(value)}")
                    continue
                if principal.token_id != value_jti(value):
                    wrong.append(f"{value_jti(value)} answered as {principal.token_id}")

    interval = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)  # switch threads as often as the interpreter allows
    try:
        threads = [threading.Thread(target=work, args=(n,)) for n in range(6)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
    finally:
        sys.setswitchinterval(interval)

    assert wrong == []
    # No token of the removed key was left behind in the cache by a racing insert.
    for value in pool[:12]:
        with pytest.raises(UnknownKey):
            verifier.verify(value)
    assert all(verifier.verify(value).token_id == value_jti(value) for value in pool[12:])


def value_jti(value: str) -> str:
    payload = json.loads(base64.urlsafe_b64decode(segments(value)[1] + "=="))
    return str(payload["jti"])


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


def test_a_custom_provider_may_inherit_the_no_op_removal_listener() -> None:
    class OneKey(KeyProvider):
        def get_key(self, kid: str) -> VerificationKeyLike:
            if kid != RS.kid:
                raise UnknownKey("no such key")
            return RS

        async def aget_key(self, kid: str) -> VerificationKeyLike:
            return self.get_key(kid)

    verifier = TokenVerifier(OneKey(), TokenPolicy(issuer=ISSUER, audience=AUDIENCE), now=Clock())

    assert verifier.verify(token()).subject == "user-1"
    assert asyncio.run(verifier.averify(token(jti="token-2"))).token_id == "token-2"
