"""Properties (hypothesis): no mutation of a valid token verifies, and no input whatever
makes the verifier, the metadata parser or the key set raise anything but our own errors.

Example counts are modest for CI time; the direct checks run against the real auth
service's key without a network, the mutation check also through both servers.
"""

from __future__ import annotations

import contextlib
import string
from collections.abc import Iterator
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from helpers import AUDIENCE, ISSUER, AuthHarness
from interceptors import (
    AuthError,
    KeyCache,
    KeySet,
    KeySetError,
    StaticSource,
    TokenPolicy,
    TokenVerifier,
    bearer_token,
)
from security.kit import Issuer, Target, b64u, issuer_from_auth, json_bytes

FAST = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
SLOW = settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
PRINTABLE = st.characters(min_codepoint=0x20, max_codepoint=0x7E)


@pytest.fixture(scope="module")
def issuer(auth_rs256: AuthHarness) -> Issuer:
    return issuer_from_auth(auth_rs256)


@pytest.fixture(scope="module")
def verifier(issuer: Issuer) -> Iterator[TokenVerifier]:
    keys = KeyCache(StaticSource({"keys": [dict(issuer.jwk)]}), background=False)
    # No verified-token cache: every example runs every check.
    yield TokenVerifier(keys, TokenPolicy(issuer=ISSUER, audience=AUDIENCE), cache_size=0)
    keys.close()


@st.composite
def mutations(draw: st.DrawFn, token: str) -> str:
    """``token`` with one edit: a character replaced, inserted or deleted, a swap, a cut."""
    kind = draw(st.sampled_from(["replace", "insert", "delete", "swap", "truncate"]))
    index = draw(st.integers(0, len(token) - 1))
    if kind == "replace":
        mutated = token[:index] + draw(PRINTABLE) + token[index + 1 :]
    elif kind == "insert":
        mutated = token[:index] + draw(PRINTABLE) + token[index:]
    elif kind == "delete":
        mutated = token[:index] + token[index + 1 :]
    elif kind == "swap":
        other = draw(st.integers(0, len(token) - 1))
        chars = list(token)
        chars[index], chars[other] = chars[other], chars[index]
        mutated = "".join(chars)
    else:
        mutated = token[:index]
    return mutated


def test_no_single_edit_of_a_valid_token_verifies(issuer: Issuer, verifier: TokenVerifier) -> None:
    token = issuer.token()
    assert verifier.verify(token).subject == "user-1"

    @FAST
    @given(mutations(token))
    def check(mutated: str) -> None:
        if mutated == token:
            return
        with pytest.raises(AuthError):
            verifier.verify(mutated)

    check()


def test_no_single_edit_of_a_valid_token_gets_through_a_server(target: Target) -> None:
    token = target.issuer.token()

    @SLOW
    @given(mutations(token))
    def check(mutated: str) -> None:
        if mutated != token:
            target.refuse(mutated, fetches=1)

    check()


JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=12,
)
HEADER_MEMBERS = st.sampled_from(["alg", "kid", "typ", "crit", "b64", "jwk", "jku", "x5c", "zip"])
CLAIM_MEMBERS = st.sampled_from(["iss", "sub", "aud", "exp", "iat", "nbf", "jti", "sid", "scope"])


@st.composite
def structured_tokens(draw: st.DrawFn, issuer: Issuer) -> str:
    """Three base64url segments: JSON-ish header and claims (often the real kid and alg)."""
    header: dict[str, Any] = draw(st.dictionaries(HEADER_MEMBERS, JSON, max_size=5))
    if draw(st.booleans()):
        header.update({"alg": issuer.algorithm, "kid": issuer.kid, "typ": "at+jwt"})
    claims: Any = draw(st.dictionaries(CLAIM_MEMBERS, JSON, max_size=9) | JSON)
    if draw(st.booleans()) and isinstance(claims, dict):
        claims = {**issuer.claims(), **claims}
    signature = draw(st.binary(max_size=300))
    return f"{b64u(json_bytes(header))}.{b64u(json_bytes(claims))}.{b64u(signature)}"


def test_arbitrary_text_raises_only_auth_errors(verifier: TokenVerifier) -> None:
    @FAST
    @given(st.text(max_size=300) | st.text(alphabet=string.ascii_letters + "-_.=", max_size=300))
    def check(text: str) -> None:
        with pytest.raises(AuthError):
            verifier.verify(text)

    check()


def test_arbitrary_bytes_and_objects_raise_only_auth_errors(verifier: TokenVerifier) -> None:
    @FAST
    @given(st.binary(max_size=300) | JSON)
    def check(value: Any) -> None:
        with pytest.raises(AuthError):
            verifier.verify(value)

    check()


def test_arbitrary_structured_tokens_raise_only_auth_errors(
    issuer: Issuer, verifier: TokenVerifier
) -> None:
    @FAST
    @given(structured_tokens(issuer))
    def check(token: str) -> None:
        with pytest.raises(AuthError):
            verifier.verify(token)

    check()


def test_arbitrary_metadata_yields_a_token_or_an_auth_error() -> None:
    entry = st.tuples(
        st.sampled_from(["authorization", "authorization-bin", "Authorization", "x-other"]),
        st.text(max_size=40) | st.binary(max_size=40),
    )

    @FAST
    @given(st.lists(entry, max_size=4))
    def check(metadata: list[tuple[str, str | bytes]]) -> None:
        try:
            token = bearer_token(metadata)
        except AuthError:
            return
        assert isinstance(token, str) and token and " " not in token

    check()


def test_arbitrary_key_set_documents_yield_a_key_set_or_a_key_set_error(issuer: Issuer) -> None:
    jwk_like = st.dictionaries(
        st.sampled_from(
            ["kty", "kid", "use", "key_ops", "alg", "n", "e", "crv", "x", "y", "d", "k"]
        ),
        JSON | st.sampled_from(["RSA", "EC", "OKP", "oct", "sig", "enc", "RS256", "P-256"]),
        max_size=8,
    )
    document = (
        st.fixed_dictionaries({"keys": st.lists(jwk_like | st.just(dict(issuer.jwk)), max_size=4)})
        | JSON
    )

    @FAST
    @given(document)
    def check(doc: Any) -> None:
        with contextlib.suppress(KeySetError):
            assert isinstance(KeySet.from_jwks(doc), KeySet)

    check()
