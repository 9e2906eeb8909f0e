"""The client token helpers against the real auth service: renewal, Logout, revocation."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import grpc
import jwt
import pytest

from helpers import (
    AuthHarness,
    Clock,
    EventLoopThread,
    ResourceHarness,
    run_concurrently,
    running_resource,
    wait_until,
)
from interceptors import AsyncTokenManager, TokenManager
from protos import resource_pb2, resource_pb2_grpc

PASSWORD = "correct horse battery"


def _sid(token: str) -> str:
    sid: str = jwt.decode(token, options={"verify_signature": False})["sid"]
    return sid


@pytest.fixture
def auth(auth_fresh: AuthHarness) -> AuthHarness:
    """Every test here adds users and counts sessions: each gets an auth service of its own."""
    return auth_fresh


@pytest.fixture
def alice(auth: AuthHarness) -> str:
    return auth.add_user("alice", PASSWORD, ("resource.read",))


@pytest.fixture
def pushed(loop_thread: EventLoopThread, auth: AuthHarness) -> Iterator[ResourceHarness]:
    with running_resource(loop_thread, auth, aio=False, push=True) as resource:
        yield resource


def _live_sessions(auth: AuthHarness, user_id: str) -> list[str]:
    return [s.session_id for s in auth.server.components.sessions.list_for_user(user_id)]


def test_renewal_uses_refresh_and_keeps_the_session(auth: AuthHarness, alice: str) -> None:
    clock = Clock()
    manager = TokenManager(auth.channel, "alice", PASSWORD, now=clock)
    first = manager.token()
    clock.now += 900  # past the renewal point

    tokens = run_concurrently(lambda _: manager.token(), range(20), timeout=30)

    assert len(set(tokens)) == 1 and tokens[0] != first
    assert _sid(tokens[0]) == _sid(first)  # Refresh, not a new Login
    assert _live_sessions(auth, alice) == [_sid(first)]  # one session, not revoked


def test_a_revoked_session_makes_the_helper_log_in_again_when_it_holds_the_password(
    auth: AuthHarness, alice: str, pushed: ResourceHarness
) -> None:
    manager = TokenManager(auth.channel, "alice", PASSWORD)
    channel = grpc.intercept_channel(grpc.insecure_channel(pushed.target), manager.interceptor())
    stub = resource_pb2_grpc.ResourceServiceStub(channel)
    try:
        before = manager.token()
        assert stub.GetProtectedResource(resource_pb2.GetProtectedResourceRequest(), timeout=10)
        auth.server.components.sessions.revoke(_sid(before))
        assert pushed.revocations is not None
        assert wait_until(
            lambda: pushed.revocations is not None and pushed.revocations.is_revoked(_sid(before))
        ), "the revocation never reached the resource server"

        # Refused with "token revoked"; the interceptor renews (Refresh fails, Login works)
        # and retries once: the caller sees a success.
        reply = stub.GetProtectedResource(resource_pb2.GetProtectedResourceRequest(), timeout=10)

        assert reply.user.username == "alice"
        after = manager.token()
        assert _sid(after) != _sid(before)
    finally:
        channel.close()


def test_without_the_password_a_revoked_session_is_the_end(auth: AuthHarness, alice: str) -> None:
    login = auth.login("alice", PASSWORD)
    clock = Clock()
    manager = TokenManager(auth.channel, "alice", refresh_token=login.refresh_token, now=clock)
    assert _sid(manager.token()) == _sid(login.access_token)
    auth.logout(login.refresh_token)
    clock.now += 900

    with pytest.raises(grpc.RpcError) as raised:
        manager.token()

    assert raised.value.code() == grpc.StatusCode.UNAUTHENTICATED  # type: ignore[attr-defined]
    assert login.refresh_token not in repr(manager)


def test_the_async_helper_refreshes_once_for_many_tasks_and_recovers_after_logout(
    auth: AuthHarness, alice: str
) -> None:
    clock = Clock()

    async def scenario() -> tuple[str, list[str], str]:
        async with grpc.aio.insecure_channel(auth.target) as channel:
            manager = AsyncTokenManager(channel, "alice", PASSWORD, now=clock)
            first = await manager.token()
            clock.now += 900
            renewed = await asyncio.gather(*(manager.token() for _ in range(20)))
            auth.server.components.sessions.revoke(_sid(first))
            clock.now += 900
            again = await manager.token()
            return first, list(renewed), again

    first, renewed, again = asyncio.run(scenario())

    assert len(set(renewed)) == 1 and _sid(renewed[0]) == _sid(first)
    assert _sid(again) != _sid(first)
