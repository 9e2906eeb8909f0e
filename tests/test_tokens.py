"""Access token issuing (verified with PyJWT and the published JWKs) and session creation.

Runs on SQLite, and on PostgreSQL too when SSOT_TEST_DATABASE_URL is set.
"""

from __future__ import annotations

import hashlib
import time
import uuid
from typing import Any

import jwt
import pytest
import sqlalchemy as sa

from auth_server.errors import InvalidCredentials, InvalidRequest, KeyStoreError, UserNotFound
from auth_server.jwk import ALGORITHMS
from auth_server.keys import SigningKeyStore
from auth_server.passwords import Argon2Parameters, PasswordHasher
from auth_server.sessions import SessionPolicy, SessionStore
from auth_server.storage import Database, sessions
from auth_server.tokens import TokenIssuer
from auth_server.users import User, UserStore
from helpers import Clock

PASSPHRASE = b"test passphrase"
ISSUER = "https://auth.example.test"
AUDIENCE = "ssot-tests"
# Near the real time: PyJWT checks exp/nbf against the wall clock.
T0 = float(int(time.time()))
SID = "5f0c7a52-8a43-4a57-9c3e-1f0b5e0d9a11"
CHEAP = Argon2Parameters(time_cost=1, memory_cost=1024, parallelism=1)


@pytest.fixture(autouse=True)
def _near_now() -> None:
    # Set per test, not once at import: when a whole suite runs longer than a token's
    # lifetime, an import-time T0 lets PyJWT's wall-clock exp check fail the test.
    global T0
    T0 = float(int(time.time()))


@pytest.fixture
def clock() -> Clock:
    return Clock(T0)


@pytest.fixture
def user(database: Database, clock: Clock) -> User:
    store = UserStore(database, PasswordHasher(CHEAP), now=clock)
    return store.add("alice", "correct horse battery staple", ["read", "write"])


def _issuer(
    database: Database, clock: Clock, algorithm: str = "ES256", ttl: int = 900
) -> tuple[SigningKeyStore, TokenIssuer]:
    keys = SigningKeyStore(database, PASSPHRASE, algorithm=algorithm, now=clock)
    keys.ensure_signing_key()
    return keys, TokenIssuer(keys, issuer=ISSUER, audience=AUDIENCE, ttl=ttl, now=clock)


def _verify(token: str, keys: SigningKeyStore) -> dict[str, Any]:
    """Verify as a relying party would: pick the published JWK by kid, trust its alg."""
    kid = jwt.get_unverified_header(token)["kid"]
    [jwk] = [k for k in keys.published_jwks() if k["kid"] == kid]
    key = jwt.PyJWK(jwk)
    claims: dict[str, Any] = jwt.decode(
        token,
        key,
        algorithms=[jwk["alg"]],
        audience=AUDIENCE,
        issuer=ISSUER,
        options={"require": ["exp", "iat", "nbf", "jti", "sub"]},
        leeway=60,
    )
    return claims


@pytest.mark.parametrize("algorithm", [pytest.param(a, id=a) for a in ALGORITHMS])
def test_tokens_of_every_algorithm_verify_with_the_published_jwk(
    database: Database, clock: Clock, user: User, algorithm: str
) -> None:
    keys, issuer = _issuer(database, clock, algorithm)

    issued = issuer.issue(user, scopes=["read"], session_id=SID)

    header = jwt.get_unverified_header(issued.access_token)
    assert header == {"alg": algorithm, "kid": keys.current().kid, "typ": "at+jwt"}
    assert _verify(issued.access_token, keys)["sub"] == user.id


def test_token_claims_are_exactly_as_specified(
    database: Database, clock: Clock, user: User
) -> None:
    clock.now = T0 + 0.75
    keys, issuer = _issuer(database, clock, ttl=600)

    issued = issuer.issue(user, scopes=["write", "read"], session_id=SID)

    claims = _verify(issued.access_token, keys)
    assert claims == {
        "iss": ISSUER,
        "sub": user.id,
        "aud": AUDIENCE,
        "exp": int(T0) + 600,
        "iat": int(T0),
        "nbf": int(T0),
        "jti": issued.token_id,
        "sid": SID,
        "username": "alice",
        "scope": "read write",
    }
    assert all(isinstance(claims[name], int) for name in ("exp", "iat", "nbf"))
    assert (issued.expires_in, issued.expires_at, issued.scope) == (
        600,
        int(T0) + 600,
        "read write",
    )


def test_token_ids_are_random_url_safe_and_at_least_128_bits(
    database: Database, clock: Clock, user: User
) -> None:
    _, issuer = _issuer(database, clock)

    ids = {issuer.issue(user, scopes=[], session_id=SID).token_id for _ in range(50)}

    assert len(ids) == 50
    for token_id in ids:
        assert len(token_id) >= 22  # 22 base64url characters carry 132 bits
        assert set(token_id) <= set(
            "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
        )


def test_token_without_scopes_has_an_empty_scope_claim(
    database: Database, clock: Clock, user: User
) -> None:
    keys, issuer = _issuer(database, clock)

    issued = issuer.issue(user, scopes=(), session_id=SID)

    assert issued.scope == ""
    assert _verify(issued.access_token, keys)["scope"] == ""


def test_tokens_are_signed_by_the_new_key_after_rotation_and_old_ones_still_verify(
    database: Database, clock: Clock, user: User
) -> None:
    keys, issuer = _issuer(database, clock)
    before = issuer.issue(user, scopes=["read"], session_id=SID)

    rotated = keys.rotate().kid
    after = issuer.issue(user, scopes=["read"], session_id=SID)

    assert jwt.get_unverified_header(after.access_token)["kid"] == rotated
    assert jwt.get_unverified_header(before.access_token)["kid"] != rotated
    assert _verify(before.access_token, keys)["jti"] == before.token_id
    assert _verify(after.access_token, keys)["jti"] == after.token_id


def test_a_revoked_key_no_longer_signs_nor_is_published(
    database: Database, clock: Clock, user: User
) -> None:
    keys, issuer = _issuer(database, clock)
    old_token = issuer.issue(user, scopes=[], session_id=SID).access_token
    old_kid = keys.current().kid

    keys.revoke(old_kid)

    new_token = issuer.issue(user, scopes=[], session_id=SID).access_token
    assert jwt.get_unverified_header(new_token)["kid"] != old_kid
    assert jwt.get_unverified_header(old_token)["kid"] == old_kid
    assert old_kid not in [k["kid"] for k in keys.published_jwks()]


def test_issuing_a_scope_the_user_does_not_hold_is_refused(
    database: Database, clock: Clock, user: User
) -> None:
    _, issuer = _issuer(database, clock)

    with pytest.raises(InvalidRequest):
        issuer.issue(user, scopes=["admin"], session_id=SID)


def test_issuing_to_a_disabled_user_is_refused(
    database: Database, clock: Clock, user: User
) -> None:
    _, issuer = _issuer(database, clock)
    disabled = User(
        id=user.id, username=user.username, scopes=user.scopes, disabled=True, created_at=0.0
    )

    with pytest.raises(InvalidCredentials):
        issuer.issue(disabled, scopes=[], session_id=SID)


def test_issuing_without_a_signing_key_raises_key_store_error(
    database: Database, clock: Clock, user: User
) -> None:
    keys = SigningKeyStore(database, PASSPHRASE, algorithm="ES256", now=clock)
    issuer = TokenIssuer(keys, issuer=ISSUER, audience=AUDIENCE, now=clock)

    with pytest.raises(KeyStoreError):
        issuer.issue(user, scopes=[], session_id=SID)


@pytest.mark.parametrize(
    "kwargs",
    [
        pytest.param({"issuer": ""}, id="empty-issuer"),
        pytest.param({"audience": ""}, id="empty-audience"),
        pytest.param({"ttl": 0}, id="zero-ttl"),
        pytest.param({"ttl": -5}, id="negative-ttl"),
    ],
)
def test_issuer_rejects_bad_configuration(database: Database, kwargs: dict[str, Any]) -> None:
    keys = SigningKeyStore(database, PASSPHRASE, algorithm="ES256")
    settings: dict[str, Any] = {"issuer": ISSUER, "audience": AUDIENCE, **kwargs}

    with pytest.raises(ValueError):
        TokenIssuer(keys, **settings)


def test_issued_token_repr_does_not_show_the_token(
    database: Database, clock: Clock, user: User
) -> None:
    _, issuer = _issuer(database, clock)

    issued = issuer.issue(user, scopes=[], session_id=SID)

    assert issued.access_token not in repr(issued)


# --- sessions ----------------------------------------------------------------


def test_session_stores_only_the_hash_of_its_refresh_token(
    database: Database, clock: Clock, user: User
) -> None:
    store = SessionStore(database, policy=SessionPolicy(max_lifetime=3600), now=clock)

    created = store.create(user.id)

    assert created.expires_at == T0 + 3600
    assert len(created.refresh_token) >= 43
    assert created.refresh_token not in repr(created)
    with database.transaction() as conn:
        row = conn.execute(sa.select(sessions)).one()._mapping
    assert row["id"] == created.session_id
    assert row["user_id"] == user.id
    assert (row["created_at"], row["expires_at"], row["revoked_at"]) == (T0, T0 + 3600, None)
    assert row["refresh_token_hash"] == hashlib.sha256(created.refresh_token.encode()).hexdigest()
    assert created.refresh_token not in str(dict(row))


def test_sessions_get_distinct_ids_and_tokens(database: Database, clock: Clock, user: User) -> None:
    store = SessionStore(database, now=clock)

    first, second = store.create(user.id), store.create(user.id)

    assert first.session_id != second.session_id
    assert first.refresh_token != second.refresh_token
    assert first.expires_at == T0 + 30 * 86400  # absolute lifetime (issue 3)


def test_session_for_an_unknown_user_raises_user_not_found(database: Database) -> None:
    with pytest.raises(UserNotFound):
        SessionStore(database).create(str(uuid.uuid4()))


@pytest.mark.parametrize(
    "ttl",
    [
        pytest.param(0.0, id="zero"),
        pytest.param(-1.0, id="negative"),
        pytest.param(float("nan"), id="nan"),
    ],
)
def test_session_store_rejects_a_bad_ttl(database: Database, ttl: float) -> None:
    with pytest.raises(ValueError):
        SessionStore(database, policy=SessionPolicy(max_lifetime=ttl))
