"""SessionStore without a network: rotation under contention, revocation list, cleanup, migration.

Runs on SQLite, and on PostgreSQL too when SSOT_TEST_DATABASE_URL is set.
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest
import sqlalchemy as sa

from auth_server.errors import InvalidRefreshToken, RefreshTokenReused, UserNotFound
from auth_server.passwords import Argon2Parameters, PasswordHasher
from auth_server.refresh_tokens import legacy_refresh_secret
from auth_server.sessions import REVOCATION_RETENTION, SessionStore, SessionTerms
from auth_server.storage import Database, sessions, spent_refresh_tokens
from auth_server.users import User, UserStore
from helpers import Clock, run_concurrently

T0 = 1_700_000_000.0
CHEAP = Argon2Parameters(time_cost=1, memory_cost=1024, parallelism=1)
SECRET = legacy_refresh_secret(b"test-passphrase-0123456789")


@pytest.fixture
def clock() -> Clock:
    return Clock(T0)


@pytest.fixture
def users(database: Database, clock: Clock) -> UserStore:
    return UserStore(database, PasswordHasher(CHEAP), now=clock)


@pytest.fixture
def alice(users: UserStore) -> User:
    return users.add("alice", "correct horse battery", ["read"])


@pytest.fixture
def store(database: Database, clock: Clock) -> SessionStore:
    return SessionStore(database, secret=SECRET, now=clock)


def test_many_threads_refreshing_one_token_leave_one_branch(
    database: Database, store: SessionStore, alice: User
) -> None:
    # Straight on the store, more threads than the gRPC server would run at once.
    for _ in range(3):
        token = store.create(alice.id).refresh_token
        results: list[str | BaseException] = run_concurrently(
            lambda _, token=token: store.refresh(token).refresh_token,
            range(24),
            return_exceptions=True,
        )
        assert all(isinstance(r, str) for r in results), results
        assert len(set(results)) == 1
        (successor,) = set(results)
        assert store.refresh(successor).refresh_token


class _Refused(Exception):
    pass


def test_a_check_that_refuses_spends_nothing_but_a_reuse_still_revokes(
    database: Database, store: SessionStore, alice: User, clock: Clock
) -> None:
    token = store.create(alice.id, scope=["read"], audience="orders-api").refresh_token
    seen: list[SessionTerms] = []

    def refuse(terms: SessionTerms) -> None:
        seen.append(terms)
        raise _Refused

    with pytest.raises(_Refused):
        store.refresh(token, check=refuse)
    assert seen == [SessionTerms(scope=("read",), audience="orders-api")]
    with database.transaction() as conn:
        assert conn.execute(sa.select(spent_refresh_tokens)).first() is None

    successor = store.refresh(token, check=seen.append).refresh_token  # still the current one
    clock.advance(store.policy.refresh_grace + 1)
    seen.clear()
    with pytest.raises(RefreshTokenReused):  # a reuse is never the check's to refuse
        store.refresh(token, check=refuse)
    assert seen == []
    with pytest.raises(InvalidRefreshToken):
        store.refresh(successor)


def test_the_successor_depends_on_the_secret_only(database: Database, alice: User) -> None:
    a = SessionStore(database, secret=SECRET)
    b = SessionStore(database, secret=SECRET)
    other = SessionStore(database, secret=b"another secret".ljust(32, b"!"))
    token = a.create(alice.id).refresh_token

    successor = a.refresh(token).refresh_token

    assert b.refresh(token).refresh_token == successor  # another replica, same secret
    with pytest.raises(RefreshTokenReused):
        other.refresh(token)  # a replica with a different secret cannot recognise the repeat


def test_reuse_revokes_and_names_the_session(
    store: SessionStore, alice: User, clock: Clock
) -> None:
    created = store.create(alice.id)
    store.refresh(created.refresh_token)
    clock.now += 21

    with pytest.raises(RefreshTokenReused) as raised:
        store.refresh(created.refresh_token)

    assert raised.value.session_id == created.session_id
    assert raised.value.message == InvalidRefreshToken().message
    [info] = store.list_for_user(alice.id, include_ended=True)
    assert (info.state, info.revoke_reason) == ("revoked", "reuse")


def test_the_revocation_list_keeps_a_session_until_its_last_access_token_expired(
    store: SessionStore, alice: User, clock: Clock
) -> None:
    created = store.create(alice.id, access_ttl=900)
    live = store.create(alice.id, access_ttl=900)
    clock.now += 100
    store.refresh(created.refresh_token, access_ttl=900)  # last token now expires at T0+1000
    store.logout(created.refresh_token)

    assert store.revoked_sessions() == {created.session_id: T0 + 100 + 900}
    assert live.session_id not in store.revoked_sessions()
    clock.now = T0 + 1000 + REVOCATION_RETENTION - 1
    assert created.session_id in store.revoked_sessions()
    clock.now = T0 + 1000 + REVOCATION_RETENTION + 1
    assert store.revoked_sessions() == {}


def test_purge_deletes_only_sessions_nobody_needs(
    database: Database, store: SessionStore, alice: User, clock: Clock
) -> None:
    ended = store.create(alice.id, access_ttl=900)
    spent = store.refresh(ended.refresh_token, access_ttl=900)
    store.logout(spent.refresh_token)
    live = store.create(alice.id, access_ttl=900)

    assert store.purge_expired() == 0  # the ended one is still on the revocation list
    clock.now += 900 + REVOCATION_RETENTION + 1
    live = store.create(alice.id, access_ttl=900)  # a fresh live session

    assert store.purge_expired() == 1
    with database.transaction() as conn:
        left = set(conn.execute(sa.select(sessions.c.id)).scalars())
        spent_left = conn.execute(sa.select(sa.func.count()).select_from(spent_refresh_tokens))
        assert spent_left.scalar() == 0
    assert ended.session_id not in left and live.session_id in left
    with pytest.raises(InvalidRefreshToken):
        store.refresh(spent.refresh_token)


def test_listing_and_revoking_sessions(store: SessionStore, alice: User, clock: Clock) -> None:
    first = store.create(alice.id)
    clock.now += 1
    second = store.create(alice.id)

    assert [s.session_id for s in store.list_for_user(alice.id)] == [
        first.session_id,
        second.session_id,
    ]
    assert store.revoke(first.session_id) is True
    assert store.revoke(first.session_id) is False
    assert [s.session_id for s in store.list_for_user(alice.id)] == [second.session_id]
    assert store.revoke_user(alice.id) == [second.session_id]
    assert store.list_for_user(alice.id) == []
    assert len(store.list_for_user(alice.id, include_ended=True)) == 2


def test_a_session_needs_an_existing_user(store: SessionStore) -> None:
    with pytest.raises(UserNotFound):
        store.create("no-such-user")


def test_users_disable_and_set_password_revoke_in_their_own_transaction(
    users: UserStore, store: SessionStore, alice: User
) -> None:
    created = store.create(alice.id)
    users.set_password("alice", "another password")
    with pytest.raises(InvalidRefreshToken):
        store.refresh(created.refresh_token)
    again = store.create(alice.id)
    users.enable("alice")  # neither enabling nor a scope change ends sessions
    users.set_scopes("alice", ["read", "write"])
    assert store.refresh(again.refresh_token).refresh_token
    users.disable("alice")
    ended = store.list_for_user(alice.id, include_ended=True)
    assert {s.session_id: s.revoke_reason for s in ended} == {
        created.session_id: "password_changed",
        again.session_id: "user_disabled",
    }


def test_an_older_database_gains_the_new_columns(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'old.db'}"
    engine = sa.create_engine(url)
    with engine.begin() as conn:
        conn.exec_driver_sql(
            "CREATE TABLE users (id VARCHAR(36) PRIMARY KEY, username VARCHAR(256) NOT NULL "
            "UNIQUE, password_hash TEXT NOT NULL, scopes TEXT NOT NULL, disabled BOOLEAN NOT "
            "NULL, created_at FLOAT NOT NULL, updated_at FLOAT NOT NULL)"
        )
        conn.exec_driver_sql(
            "CREATE TABLE sessions (id VARCHAR(36) PRIMARY KEY, user_id VARCHAR(36) NOT NULL "
            "REFERENCES users (id), created_at FLOAT NOT NULL, expires_at FLOAT NOT NULL, "
            "revoked_at FLOAT, refresh_token_hash VARCHAR(64) UNIQUE)"
        )
    engine.dispose()
    db = Database(url)
    try:
        db.create_schema()
        db.create_schema()  # idempotent
        columns = {c["name"] for c in sa.inspect(db.engine).get_columns("sessions")}
        assert {"last_used_at", "access_expires_at", "scope", "revoke_reason"} <= columns
        user = UserStore(db, PasswordHasher(CHEAP)).add("bob", "correct horse battery")
        store = SessionStore(db, secret=SECRET)
        assert store.refresh(store.create(user.id).refresh_token).refresh_token
    finally:
        db.dispose()


def test_deriving_the_secret_is_deterministic_and_slow_enough() -> None:
    started = time.perf_counter()
    assert legacy_refresh_secret(b"p" * 16) == legacy_refresh_secret(b"p" * 16)
    assert legacy_refresh_secret(b"p" * 16) != legacy_refresh_secret(b"q" * 16)
    assert time.perf_counter() - started > 0.01  # scrypt, not one hash
