"""check_claims and TokenPolicy: the claims policy (RFC 7519, RFC 9068) as a pure function."""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import pytest

from interceptors import (
    AuthError,
    ExpiredToken,
    ImmatureToken,
    InvalidClaims,
    Principal,
    TokenPolicy,
)
from interceptors._claims import check_claims, check_claims_window

ISSUER = "https://auth.example.test"
AUDIENCE = "ssot-resource"
NOW = 1_700_000_000
LEEWAY = 30
DROP = object()
POLICY = TokenPolicy(issuer=ISSUER, audience=AUDIENCE, leeway=LEEWAY)


def claims(**overrides: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "iss": ISSUER,
        "sub": "user-1",
        "aud": AUDIENCE,
        "iat": NOW,
        "nbf": NOW,
        "exp": NOW + 900,
        "jti": "token-1",
        "sid": "session-1",
        "username": "alice",
        "scope": "resource.read resource.admin",
    }
    base.update(overrides)
    return {name: value for name, value in base.items() if value is not DROP}


def check(values: dict[str, Any], policy: TokenPolicy = POLICY, now: float = NOW) -> Principal:
    return check_claims(values, policy, now)


# -- what passes ------------------------------------------------------------------------

VALID = [
    pytest.param(claims(), id="plain"),
    pytest.param(claims(aud=["other", AUDIENCE]), id="aud-list-with-ours"),
    pytest.param(claims(exp=NOW - LEEWAY + 1, iat=NOW - 600), id="expired-within-leeway"),
    pytest.param(claims(nbf=NOW + LEEWAY - 1), id="nbf-within-leeway"),
    pytest.param(claims(iat=NOW + 0.5, exp=NOW + 900.5), id="float-times"),
]


@pytest.mark.parametrize("values", VALID)
def test_valid_claims_are_accepted(values: dict[str, Any]) -> None:
    assert check(values).subject == "user-1"


def test_the_principal_carries_the_claims() -> None:
    principal = check(claims(iat=NOW - 10, exp=NOW + 890))

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


@pytest.mark.parametrize(
    "values",
    [
        claims(iat=NOW - 10, exp=NOW + 890),
        claims(scope=DROP, sid=DROP, username=DROP),
        claims(client_id="svc", sub="svc", act={"sub": "gateway", "act": {"sub": "edge"}}),
    ],
)
def test_the_principal_is_the_one_its_constructor_makes(values: dict[str, Any]) -> None:
    # check_claims fills the frozen dataclass's dict at once instead of calling its
    # __init__ (speed): it must still be exactly the object the constructor makes.
    principal = check(values)
    fields = {field.name for field in dataclasses.fields(Principal)}

    assert set(vars(principal)) == fields
    rebuilt = Principal(**{name: getattr(principal, name) for name in fields})
    assert rebuilt == principal
    assert repr(rebuilt) == repr(principal)
    with pytest.raises(dataclasses.FrozenInstanceError):
        principal.subject = "admin"  # type: ignore[misc]


def test_optional_claims_default_to_empty() -> None:
    principal = check(claims(scope=DROP, sid=DROP, username=DROP))

    assert principal.scopes == frozenset()
    assert principal.session_id is None
    assert principal.username == ""


def test_scope_is_split_on_spaces_only() -> None:
    principal = check(claims(scope=" a  b:c\td "))

    assert principal.scopes == frozenset({"a", "b:c\td"})


def test_the_window_is_nbf_to_the_exact_exp_without_leeway() -> None:
    _, not_before, expires = check_claims_window(claims(nbf=NOW - 5, exp=NOW + 900.5), POLICY, NOW)
    _, open_start, _ = check_claims_window(claims(nbf=DROP), POLICY, NOW)

    assert (not_before, expires) == (NOW - 5, NOW + 900.5)
    assert open_start == -math.inf


def test_the_time_is_the_callers() -> None:
    values = claims(exp=NOW + 900)

    assert check(values, now=NOW + 900 + LEEWAY - 1).subject == "user-1"
    with pytest.raises(ExpiredToken):
        check(values, now=NOW + 900 + LEEWAY)


# -- what is refused --------------------------------------------------------------------

REJECTED = [
    # time
    pytest.param(claims(exp=NOW - LEEWAY, iat=NOW - 900), ExpiredToken, id="expired"),
    pytest.param(claims(nbf=NOW + LEEWAY + 1), ImmatureToken, id="not-yet-valid"),
    pytest.param(
        claims(iat=NOW + LEEWAY + 1, nbf=DROP, exp=NOW + 900), ImmatureToken, id="iat-in-future"
    ),
    pytest.param(claims(exp=NOW + 86401), InvalidClaims, id="lifetime-too-long"),
    pytest.param(claims(exp=NOW + 20, iat=NOW + 20), InvalidClaims, id="exp-not-after-iat"),
    pytest.param(claims(exp="9999999999"), InvalidClaims, id="exp-string"),
    pytest.param(claims(exp=True), InvalidClaims, id="exp-bool"),
    pytest.param(claims(iat=False), InvalidClaims, id="iat-bool"),
    pytest.param(claims(nbf="0"), InvalidClaims, id="nbf-string"),
    pytest.param(claims(exp=math.inf), InvalidClaims, id="exp-infinite"),
    pytest.param(claims(exp=DROP), InvalidClaims, id="exp-missing"),
    pytest.param(claims(iat=DROP), InvalidClaims, id="iat-missing"),
    # who
    pytest.param(claims(aud="someone-else"), InvalidClaims, id="wrong-aud"),
    pytest.param(claims(aud=["a", "b"]), InvalidClaims, id="aud-list-without-ours"),
    pytest.param(claims(aud=[AUDIENCE, 7]), InvalidClaims, id="aud-list-non-string"),
    pytest.param(claims(aud=DROP), InvalidClaims, id="aud-missing"),
    pytest.param(claims(iss="https://evil.test"), InvalidClaims, id="wrong-iss"),
    pytest.param(claims(iss=DROP), InvalidClaims, id="iss-missing"),
    pytest.param(claims(sub=DROP), InvalidClaims, id="sub-missing"),
    pytest.param(claims(sub=""), InvalidClaims, id="sub-empty"),
    pytest.param(claims(sub=42), InvalidClaims, id="sub-not-string"),
    pytest.param(claims(jti=DROP), InvalidClaims, id="jti-missing"),
    pytest.param(claims(scope=["a", "b"]), InvalidClaims, id="scope-not-string"),
    pytest.param(claims(username=7), InvalidClaims, id="username-not-string"),
    pytest.param(claims(sid=7), InvalidClaims, id="sid-not-string"),
]


@pytest.mark.parametrize(("values", "error"), REJECTED)
def test_bad_claims_are_refused_with_the_right_error(
    values: dict[str, Any], error: type[AuthError]
) -> None:
    with pytest.raises(AuthError) as caught:
        check(values)

    assert type(caught.value) is error


# -- the policy ---------------------------------------------------------------------------


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
    principal = check(claims())

    assert principal.has_scopes(required) is expected
