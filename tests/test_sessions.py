"""Sessions through the public RPCs: Refresh, Logout, revocation push, expiry, restart.

Runs on SQLite, and on PostgreSQL too when SSOT_TEST_DATABASE_URL is set.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import grpc
import jwt
import pytest
import sqlalchemy as sa

from auth_server.sessions import SessionPolicy
from auth_server.storage import Database
from helpers import (
    FACES,
    AuthHarness,
    Clock,
    EventLoopThread,
    ResourceHarness,
    bearer,
    make_config,
    run_concurrently,
    running_resource,
    start_harness,
)
from protos import auth_pb2, resource_pb2

PASSWORD = "correct horse battery"


@pytest.fixture
def clock() -> Clock:
    return Clock(time.time())


@pytest.fixture
def harness_factory(
    loop_thread: EventLoopThread, tmp_path: Path, database_url: str, clock: Clock
) -> Iterator[Callable[..., AuthHarness]]:
    """Starts auth servers on this test's database (each backend) with the test's clock."""
    started: list[AuthHarness] = []

    def start(**changes: Any) -> AuthHarness:
        harness = start_harness(loop_thread, make_config(tmp_path, database_url, **changes), clock)
        started.append(harness)
        return harness

    yield start
    for harness in started:
        harness.channel.close()
        harness.stop()


@pytest.fixture
def server(harness_factory: Callable[..., AuthHarness]) -> AuthHarness:
    harness = harness_factory()
    harness.add_user("alice", PASSWORD, ("resource.read",))
    return harness


def _error(call: Callable[[], Any]) -> tuple[grpc.StatusCode, str]:
    with pytest.raises(grpc.RpcError) as info:
        call()
    err = info.value
    assert isinstance(err, grpc.Call)
    return err.code(), err.details() or ""


def _claims(token: str) -> dict[str, Any]:
    claims: dict[str, Any] = jwt.decode(token, options={"verify_signature": False})
    return claims


def _call(resource: ResourceHarness, token: str) -> resource_pb2.GetProtectedResourceResponse:
    return resource.stub.GetProtectedResource(
        resource_pb2.GetProtectedResourceRequest(), metadata=bearer(token), timeout=10
    )


def _rejected_within(resource: ResourceHarness, token: str, seconds: float) -> float | None:
    """Call until the resource server refuses ``token``; the time it took, or None."""
    started = time.monotonic()
    while time.monotonic() - started < seconds:
        try:
            _call(resource, token)
        except grpc.RpcError as err:
            assert isinstance(err, grpc.Call)
            assert (err.code(), err.details()) == (grpc.StatusCode.UNAUTHENTICATED, "token revoked")
            return time.monotonic() - started
        time.sleep(0.005)
    return None


INVALID = (grpc.StatusCode.UNAUTHENTICATED, "invalid refresh token")


# -- rotation ----------------------------------------------------------------------------


def test_refresh_returns_a_new_pair_for_the_same_session(
    server: AuthHarness, database_url: str
) -> None:
    login = server.login("alice", PASSWORD)

    refreshed = server.refresh(login.refresh_token)

    assert refreshed.token_type == "Bearer" and refreshed.expires_in == 900
    assert refreshed.scope == "resource.read"
    assert refreshed.refresh_token != login.refresh_token and len(refreshed.refresh_token) >= 43
    before, after = _claims(login.access_token), _claims(refreshed.access_token)
    assert after["sid"] == before["sid"] and after["sub"] == before["sub"]
    assert after["jti"] != before["jti"]
    # The successor works in turn; nothing in the database spells a token out.
    server.refresh(refreshed.refresh_token)
    db = Database(database_url)
    try:
        with db.engine.connect() as conn:
            dump = repr(
                [
                    conn.execute(sa.text(f"SELECT * FROM {table}")).all()
                    for table in ("sessions", "spent_refresh_tokens")
                ]
            )
    finally:
        db.dispose()
    for secret in (login.refresh_token, refreshed.refresh_token, login.access_token):
        assert secret not in dump


def test_a_repeat_within_the_grace_window_returns_the_same_successor(
    server: AuthHarness, clock: Clock
) -> None:
    login = server.login("alice", PASSWORD)
    first = server.refresh(login.refresh_token)
    clock.advance(19)

    again = server.refresh(login.refresh_token)

    assert again.refresh_token == first.refresh_token
    assert _claims(again.access_token)["sid"] == _claims(first.access_token)["sid"]
    # No revocation happened: the successor is still good.
    assert server.refresh(first.refresh_token).refresh_token


def test_a_repeat_after_the_successor_was_spent_revokes_the_session(server: AuthHarness) -> None:
    login = server.login("alice", PASSWORD)
    first = server.refresh(login.refresh_token)
    second = server.refresh(first.refresh_token)

    assert _error(lambda: server.refresh(login.refresh_token)) == INVALID
    assert _error(lambda: server.refresh(second.refresh_token)) == INVALID


@pytest.mark.parametrize("aio", FACES)
def test_reuse_after_the_grace_window_revokes_the_family_everywhere(
    server: AuthHarness, clock: Clock, loop_thread: EventLoopThread, aio: bool
) -> None:
    login = server.login("alice", PASSWORD)
    other = server.login("alice", PASSWORD)  # another session of the same user
    with running_resource(loop_thread, server, aio=aio, push=True) as resource:
        first = server.refresh(login.refresh_token)
        assert _call(resource, first.access_token).user.username == "alice"
        clock.advance(21)  # past the 20 s grace window

        assert _error(lambda: server.refresh(login.refresh_token)) == INVALID

        # The whole family: the successor no longer refreshes ...
        assert _error(lambda: server.refresh(first.refresh_token)) == INVALID
        # ... and every access token of the session is refused by the resource server.
        for token in (login.access_token, first.access_token):
            assert _rejected_within(resource, token, 1.0) is not None
        # The honest other session is untouched.
        assert _call(resource, other.access_token).user.username == "alice"
        assert server.refresh(other.refresh_token).access_token


def test_concurrent_refreshes_with_one_token_yield_one_successor(server: AuthHarness) -> None:
    login = server.login("alice", PASSWORD)
    results: list[auth_pb2.TokenResponse | BaseException] = run_concurrently(
        lambda _: server.refresh(login.refresh_token),
        range(20),
        return_exceptions=True,
        timeout=30,
    )

    assert len(results) == 20
    assert all(isinstance(r, auth_pb2.TokenResponse) for r in results), results
    successors = {r.refresh_token for r in results if isinstance(r, auth_pb2.TokenResponse)}
    assert len(successors) == 1
    # One live branch, not revoked: it refreshes, and the old token's family is intact.
    (successor,) = successors
    assert server.refresh(successor).refresh_token


# -- expiry ------------------------------------------------------------------------------


def test_an_idle_session_ends(harness_factory: Callable[..., AuthHarness], clock: Clock) -> None:
    server = harness_factory(sessions=SessionPolicy(idle_timeout=100, max_lifetime=1000))
    server.add_user("alice", PASSWORD)
    login = server.login("alice", PASSWORD)
    clock.advance(99)
    kept = server.refresh(login.refresh_token)  # used in time: the idle clock restarts
    clock.advance(99)
    kept = server.refresh(kept.refresh_token)

    clock.advance(101)

    assert _error(lambda: server.refresh(kept.refresh_token)) == INVALID


def test_a_session_ends_at_its_absolute_lifetime_however_often_it_is_refreshed(
    harness_factory: Callable[..., AuthHarness], clock: Clock
) -> None:
    server = harness_factory(sessions=SessionPolicy(idle_timeout=100, max_lifetime=250))
    server.add_user("alice", PASSWORD)
    token = server.login("alice", PASSWORD).refresh_token
    for _ in range(2):
        clock.advance(90)
        token = server.refresh(token).refresh_token  # at 90 s and 180 s

    clock.advance(90)  # 270 s

    assert _error(lambda: server.refresh(token)) == INVALID


def test_logins_beyond_the_per_user_limit_end_the_oldest_session(
    harness_factory: Callable[..., AuthHarness], clock: Clock
) -> None:
    server = harness_factory(sessions=SessionPolicy(max_per_user=3))
    server.add_user("alice", PASSWORD)
    logins = []
    for _ in range(4):
        logins.append(server.login("alice", PASSWORD))
        clock.advance(1)

    assert _error(lambda: server.refresh(logins[0].refresh_token)) == INVALID
    for login in logins[1:]:
        assert server.refresh(login.refresh_token).access_token


# -- logout and revocation ----------------------------------------------------------------


@pytest.mark.parametrize("aio", FACES)
def test_logout_reaches_a_subscribed_resource_server_within_a_second(
    server: AuthHarness, loop_thread: EventLoopThread, aio: bool
) -> None:
    login = server.login("alice", PASSWORD)
    other = server.login("alice", PASSWORD)
    with running_resource(loop_thread, server, aio=aio, push=True) as resource:
        assert _call(resource, login.access_token).user.username == "alice"  # now cached

        server.logout(login.refresh_token)
        took = _rejected_within(resource, login.access_token, 1.0)

        assert took is not None and took < 1.0
        assert _error(lambda: server.refresh(login.refresh_token)) == INVALID
        assert _call(resource, other.access_token).user.username == "alice"


def test_logout_is_idempotent_and_needs_a_known_token(server: AuthHarness) -> None:
    login = server.login("alice", PASSWORD)
    server.logout(login.refresh_token)
    server.logout(login.refresh_token)  # a retried logout still succeeds

    unknown = "A" * 43
    assert _error(lambda: server.logout(unknown)) == INVALID
    assert _error(lambda: server.logout("x" * 20)) == INVALID
    code, _ = _error(lambda: server.logout(""))
    assert code == grpc.StatusCode.INVALID_ARGUMENT


def test_a_spent_token_also_logs_its_session_out(server: AuthHarness) -> None:
    login = server.login("alice", PASSWORD)
    current = server.refresh(login.refresh_token)

    server.logout(login.refresh_token)

    assert _error(lambda: server.refresh(current.refresh_token)) == INVALID


@pytest.mark.parametrize(
    "change",
    [
        pytest.param(lambda users: users.disable("alice"), id="disable"),
        pytest.param(lambda users: users.set_password("alice", "a new password"), id="password"),
    ],
)
def test_disabling_a_user_or_setting_a_password_ends_its_sessions(
    server: AuthHarness, loop_thread: EventLoopThread, change: Callable[[Any], object]
) -> None:
    logins = [server.login("alice", PASSWORD) for _ in range(2)]
    with running_resource(loop_thread, server, aio=False, push=True) as resource:
        for login in logins:
            _call(resource, login.access_token)

        change(server.server.components.users)  # as the CLI does, straight on the database

        for login in logins:
            assert _error(lambda login=login: server.refresh(login.refresh_token)) == INVALID
            # Learned by the auth server's poll of the database, then pushed.
            assert _rejected_within(resource, login.access_token, 2.0) is not None


def _set_user(database_url: str, **values: object) -> None:
    db = Database(database_url)
    try:
        with db.engine.begin() as conn:
            conn.execute(
                sa.text("UPDATE users SET " + ", ".join(f"{k} = :{k}" for k in values)), values
            )
    finally:
        db.dispose()


def test_a_user_disabled_before_its_sessions_end_is_refused_without_spending(
    server: AuthHarness, database_url: str
) -> None:
    # The moment inside a disable between the user's row and its sessions: the
    # refresh reads the user with the session and refuses, spending nothing.
    login = server.login("alice", PASSWORD)
    _set_user(database_url, disabled=True)

    assert _error(lambda: server.refresh(login.refresh_token)) == INVALID
    db = Database(database_url)
    try:
        with db.engine.connect() as conn:
            spent = conn.execute(sa.text("SELECT count(*) FROM spent_refresh_tokens")).scalar()
    finally:
        db.dispose()
    assert spent == 0

    # Enabled again, with no scope left: the refresh reads the user's row as it is now.
    _set_user(database_url, disabled=False, scopes="")
    refreshed = server.refresh(login.refresh_token)
    assert refreshed.scope == ""
    server.refresh(refreshed.refresh_token)


@pytest.mark.parametrize(
    "token",
    [
        pytest.param("x", id="malformed"),
        pytest.param("A" * 43, id="unknown"),
        pytest.param("A" * 600, id="oversized"),
        pytest.param("é" * 43, id="non-ascii"),
    ],
)
def test_bad_refresh_tokens_get_one_answer(server: AuthHarness, token: str) -> None:
    assert _error(lambda: server.refresh(token)) == INVALID


def test_revoked_and_expired_refresh_tokens_get_the_same_answer(
    server: AuthHarness, clock: Clock
) -> None:
    revoked = server.login("alice", PASSWORD)
    server.logout(revoked.refresh_token)
    expired = server.login("alice", PASSWORD)
    clock.advance(8 * 86400)

    assert _error(lambda: server.refresh(revoked.refresh_token)) == INVALID
    assert _error(lambda: server.refresh(expired.refresh_token)) == INVALID
    code, _ = _error(lambda: server.refresh(""))
    assert code == grpc.StatusCode.INVALID_ARGUMENT


# -- restart and audit --------------------------------------------------------------------


def test_a_restarted_server_keeps_every_session(
    harness_factory: Callable[..., AuthHarness],
) -> None:
    first = harness_factory()
    first.add_user("alice", PASSWORD)
    sessions = [first.login("alice", PASSWORD) for _ in range(3)]
    spent = sessions[0].refresh_token
    successor = first.refresh(spent)
    first.channel.close()
    first.stop()

    second = harness_factory()

    # The repeat within the grace window gets the same successor from the new process.
    assert second.refresh(spent).refresh_token == successor.refresh_token
    assert second.refresh(successor.refresh_token).access_token
    for login in sessions[1:]:
        assert second.refresh(login.refresh_token).access_token


def test_session_events_reach_the_audit_trail_without_secrets(
    server: AuthHarness, clock: Clock, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    login = server.login("alice", PASSWORD)
    with pytest.raises(grpc.RpcError):
        server.login("alice", "wrong password")
    first = server.refresh(login.refresh_token)
    clock.advance(21)
    with pytest.raises(grpc.RpcError):
        server.refresh(login.refresh_token)
    second = server.login("alice", PASSWORD)
    server.logout(second.refresh_token)

    events = [json.loads(r.getMessage()) for r in caplog.records if r.name == "ssot.audit"]
    names = [e["event"] for e in events]
    for expected in (
        "login.succeeded",
        "login.failed",
        "refresh.reuse_detected",
        "session.revoked",
        "session.logout",
    ):
        assert expected in names
    revoked = next(e for e in events if e["event"] == "session.revoked")
    assert revoked["reason"] == "reuse" and revoked["sid"] == _claims(login.access_token)["sid"]
    failed = next(e for e in events if e["event"] == "login.failed")
    assert failed["reason"] == "bad_credentials"
    everything = "\n".join(r.getMessage() for r in caplog.records)
    for secret in (
        PASSWORD,
        "wrong password",
        login.refresh_token,
        first.refresh_token,
        login.access_token,
        second.refresh_token,
    ):
        assert secret not in everything
