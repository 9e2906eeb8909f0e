"""AuthServicer maps every error to a status in one place; no network, a fake context."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import grpc
import pytest

from auth_server.errors import (
    InvalidCredentials,
    LoginThrottled,
    Overloaded,
    RefreshTokenReused,
    StorageError,
)
from auth_server.hashing import HashingPool
from auth_server.service import AuthServicer
from protos import auth_pb2

SECRET_TEXT = "password=hunter2 at db.internal:5432"


class Aborted(Exception):
    """What the fake context raises on abort, as grpc.aio does."""


class FakeContext:
    def __init__(self) -> None:
        self.status: tuple[grpc.StatusCode, str, tuple[tuple[str, str], ...]] | None = None

    def peer(self) -> str:
        return "ipv4:127.0.0.1:50000"

    def auth_context(self) -> dict[str, list[bytes]]:
        return {}

    def time_remaining(self) -> float:
        return 1e9  # what grpc reports for a call without a deadline

    async def abort(
        self, code: grpc.StatusCode, details: str = "", trailing_metadata: Any = ()
    ) -> None:
        self.status = (code, details, tuple(trailing_metadata))
        raise Aborted()


class FailingAuthority:
    def __init__(self, error: Exception) -> None:
        self.error = error

    def login(self, *args: object, **kwargs: object) -> Any:
        raise self.error

    def refresh(self, *args: object, **kwargs: object) -> Any:
        raise self.error

    def logout(self, *args: object, **kwargs: object) -> Any:
        raise self.error


class CountingRevocations:
    def __init__(self) -> None:
        self.refreshed = 0

    async def refresh(self) -> None:
        self.refreshed += 1


def call(rpc: str, error: Exception) -> tuple[FakeContext, CountingRevocations]:
    revocations = CountingRevocations()
    hashing = HashingPool(cost=lambda: 0.01)
    servicer = AuthServicer(
        FailingAuthority(error),  # type: ignore[arg-type]
        None,  # type: ignore[arg-type]
        revocations,  # type: ignore[arg-type]
        hashing=hashing,
    )
    request = {
        "Login": auth_pb2.LoginRequest(username="alice", password="pw"),
        "Refresh": auth_pb2.RefreshRequest(refresh_token="t"),
        "Logout": auth_pb2.LogoutRequest(refresh_token="t"),
    }[rpc]
    context = FakeContext()
    try:
        with pytest.raises(Aborted):
            asyncio.run(getattr(servicer, rpc)(request, context))
    finally:
        hashing.close()
    return context, revocations


@pytest.mark.parametrize("rpc", ["Login", "Refresh", "Logout"])
@pytest.mark.parametrize(
    ("error", "status"),
    [
        pytest.param(
            InvalidCredentials(),
            (grpc.StatusCode.UNAUTHENTICATED, "invalid username or password", ()),
            id="domain-error",
        ),
        pytest.param(
            StorageError(), (grpc.StatusCode.UNAVAILABLE, "storage unavailable", ()), id="outage"
        ),
        pytest.param(
            RuntimeError(SECRET_TEXT),
            (grpc.StatusCode.INTERNAL, "internal error", ()),
            id="unexpected",
        ),
    ],
)
def test_an_error_becomes_its_status_and_nothing_more(
    rpc: str,
    error: Exception,
    status: tuple[grpc.StatusCode, str, tuple[()]],
    caplog: pytest.LogCaptureFixture,
) -> None:
    with caplog.at_level(logging.ERROR, logger="auth_server.service"):
        context, _ = call(rpc, error)

    assert context.status == status
    # An unexpected error is logged by type; its text never reaches the client.
    assert SECRET_TEXT not in context.status[1]
    if isinstance(error, RuntimeError):
        assert "unexpected RuntimeError in auth service" in caplog.messages


def test_a_throttled_login_says_when_to_retry() -> None:
    context, _ = call("Login", LoginThrottled(2.2))

    assert context.status == (
        grpc.StatusCode.RESOURCE_EXHAUSTED,
        "too many login attempts, retry later",
        (("retry-after", "3"),),
    )


def test_a_shed_login_says_when_to_retry_like_a_throttled_one() -> None:
    context, _ = call("Login", Overloaded(0.4))

    assert context.status == (
        grpc.StatusCode.RESOURCE_EXHAUSTED,
        "server busy, retry later",
        (("retry-after", "1"),),
    )


def test_a_reused_refresh_token_is_pushed_to_watchers_before_the_status() -> None:
    context, revocations = call("Refresh", RefreshTokenReused("sid-1"))

    assert context.status == (grpc.StatusCode.UNAUTHENTICATED, "invalid refresh token", ())
    assert revocations.refreshed == 1
