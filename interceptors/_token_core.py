"""The token helpers' sans-I/O core: when to renew, which RPC to send, what an answer means.

:class:`_TokenCore` holds the state; the sync and asyncio managers in
:mod:`interceptors._client` only perform the RPCs it asks for.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import (
    Callable,
)
from typing import TYPE_CHECKING, TypeVar

import grpc

from interceptors._errors import AuthError
from protos import auth_pb2

if TYPE_CHECKING:
    pass

_LOGGER = logging.getLogger(__name__)

_AUTHORIZATION = "authorization"
_BEARER = "Bearer"
# The token is renewed when less than min(refresh_margin, this share of its lifetime) is left,
# so a short-lived token is not renewed on every call.
_MAX_MARGIN_SHARE = 0.2

_TRequest = TypeVar("_TRequest")
_TResponse = TypeVar("_TResponse")
_Metadata = tuple[tuple[str, str | bytes], ...]


class TokenRequestError(AuthError):
    """The auth service gave no usable token, or there is no credential left to ask with.

    Failed ``Login``/``Refresh`` RPCs are not wrapped in this error: they surface as the
    auth service's own :class:`grpc.RpcError`, so its status code can be inspected.
    """

    message = "token request failed"


@dataclasses.dataclass(frozen=True, slots=True)
class _LoginStep:
    request: auth_pb2.LoginRequest = dataclasses.field(repr=False)


@dataclasses.dataclass(frozen=True, slots=True)
class _RefreshStep:
    request: auth_pb2.RefreshRequest = dataclasses.field(repr=False)


_Step = _LoginStep | _RefreshStep


class _TokenCore:
    """The token state machine, free of I/O: which RPC to send next and what its answer means.

    Not thread-safe on its own; the managers serialise access to it.
    """

    def __init__(
        self,
        *,
        username: str,
        password: str | None,
        refresh_token: str | None,
        scope: str,
        refresh_margin: float,
        now: Callable[[], float],
    ) -> None:
        if not username:
            raise ValueError("username must not be empty")
        if password is None and not refresh_token:
            raise ValueError("a password or a refresh token is required")
        if refresh_margin < 0:
            raise ValueError("refresh_margin must not be negative")
        self.username = username
        self.scope = scope
        self._password = password
        self._refresh_token = refresh_token or None
        self._refresh_margin = refresh_margin
        self._now = now
        self._access_token: str | None = None
        self._renew_at = 0.0
        self._sent_at = 0.0

    def __repr__(self) -> str:
        return f"_TokenCore(username={self.username!r}, has_token={self.has_token})"

    @property
    def has_token(self) -> bool:
        """Whether an access token is held (fresh or not)."""
        return self._access_token is not None

    def fresh_token(self) -> str | None:
        """The current token if it needs no renewal yet, else ``None``."""
        if self._access_token is not None and self._now() < self._renew_at:
            return self._access_token
        return None

    def first_step(self) -> _Step:
        """The RPC that starts a renewal: ``Refresh`` when possible, else ``Login``."""
        if self._refresh_token is not None:
            return self._start(
                _RefreshStep(auth_pb2.RefreshRequest(refresh_token=self._refresh_token))
            )
        if self._password is not None:
            return self._login()
        raise TokenRequestError("no password or refresh token left to obtain a token with")

    def after_failure(self, step: _Step, code: grpc.StatusCode | None) -> _Step | None:
        """The RPC to try after ``step`` failed with ``code``, or ``None`` to give up."""
        if not isinstance(step, _RefreshStep):
            return None
        if code is grpc.StatusCode.UNAUTHENTICATED:
            # The refresh token is spent, expired or revoked: it will never work again.
            self._refresh_token = None
        elif code is not grpc.StatusCode.UNIMPLEMENTED:
            return None
        if self._password is None:
            return None
        _LOGGER.info("Refresh for %s answered %s; logging in again", self.username, code)
        return self._login()

    def accept(self, response: auth_pb2.TokenResponse) -> str:
        """Take a ``TokenResponse`` to the last step into the state and return its token.

        Raises:
            TokenRequestError: the response holds no usable token.
        """
        if not response.access_token:
            raise TokenRequestError("token response has no access_token")
        if response.token_type and response.token_type.lower() != _BEARER.lower():
            raise TokenRequestError("token response has an unsupported token_type")
        if response.expires_in <= 0:
            raise TokenRequestError("token response has a non-positive expires_in")
        lifetime = float(response.expires_in)
        margin = min(self._refresh_margin, lifetime * _MAX_MARGIN_SHARE)
        # Counted from when the request was sent: the server's clock started no earlier.
        self._renew_at = self._sent_at + lifetime - margin
        self._access_token = response.access_token
        if response.refresh_token:
            self._refresh_token = response.refresh_token
        _LOGGER.debug("new access token for %s, expires in %d s", self.username, lifetime)
        return response.access_token

    def invalidate(self, token: str) -> None:
        """Forget ``token`` if it is still the current one."""
        if token == self._access_token:
            self._access_token = None

    def _login(self) -> _Step:
        assert self._password is not None
        return self._start(
            _LoginStep(
                auth_pb2.LoginRequest(
                    username=self.username, password=self._password, scope=self.scope
                )
            )
        )

    def _start(self, step: _Step) -> _Step:
        self._sent_at = self._now()
        return step


def _status_code(error: grpc.RpcError) -> grpc.StatusCode | None:
    code = getattr(error, "code", None)
    if not callable(code):
        return None
    result = code()
    return result if isinstance(result, grpc.StatusCode) else None


def _remaining(timeout: float | None, started: float) -> float | None:
    if timeout is None:
        return None
    return timeout - (time.monotonic() - started)


def _check_timeout(timeout: float) -> None:
    if timeout <= 0:
        raise ValueError("timeout must be positive")
