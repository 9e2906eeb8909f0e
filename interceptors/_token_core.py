"""The token helpers' sans-I/O core: when to renew, which RPC to send, what an answer means.

:class:`TokenCore` holds the state; the sync and asyncio managers in
:mod:`interceptors._token_manager` only perform the RPCs it asks for.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable

import grpc

from interceptors._errors import TokenRequestError
from protos import auth_pb2

_LOGGER = logging.getLogger(__name__)

_TOKEN_TYPE = "bearer"  # noqa: S105 -- RFC 6749 §7.1 token_type, compared case-insensitively
# The token is renewed when less than min(refresh_margin, this share of its lifetime) is left,
# so a short-lived token is not renewed on every call.
_MAX_MARGIN_SHARE = 0.2


@dataclasses.dataclass(frozen=True, slots=True)
class LoginStep:
    """Send ``Login`` with this request."""

    request: auth_pb2.LoginRequest = dataclasses.field(repr=False)


@dataclasses.dataclass(frozen=True, slots=True)
class RefreshStep:
    """Send ``Refresh`` with this request."""

    request: auth_pb2.RefreshRequest = dataclasses.field(repr=False)


#: The RPC the core asks a manager to send next.
Step = LoginStep | RefreshStep


class TokenCore:
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
        return f"TokenCore(username={self.username!r}, has_token={self.has_token})"

    @property
    def has_token(self) -> bool:
        """Whether an access token is held (fresh or not)."""
        return self._access_token is not None

    def fresh_token(self) -> str | None:
        """The current token if it needs no renewal yet, else ``None``."""
        if self._access_token is not None and self._now() < self._renew_at:
            return self._access_token
        return None

    def first_step(self) -> Step:
        """The RPC that starts a renewal: ``Refresh`` when possible, else ``Login``."""
        if self._refresh_token is not None:
            return self._start(
                RefreshStep(auth_pb2.RefreshRequest(refresh_token=self._refresh_token))
            )
        if self._password is not None:
            return self._login()
        raise TokenRequestError("no password or refresh token left to obtain a token with")

    def after_failure(self, step: Step, code: grpc.StatusCode | None) -> Step | None:
        """The RPC to try after ``step`` failed with ``code``, or ``None`` to give up."""
        if not isinstance(step, RefreshStep):
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
        if response.token_type and response.token_type.lower() != _TOKEN_TYPE:
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

    def _login(self) -> Step:
        assert self._password is not None
        return self._start(
            LoginStep(
                auth_pb2.LoginRequest(
                    username=self.username, password=self._password, scope=self.scope
                )
            )
        )

    def _start(self, step: Step) -> Step:
        self._sent_at = self._now()
        return step


def status_code(error: grpc.RpcError) -> grpc.StatusCode | None:
    """The status code of a failed RPC, or ``None`` when the error carries none."""
    code = getattr(error, "code", None)
    if not callable(code):
        return None
    result = code()
    return result if isinstance(result, grpc.StatusCode) else None


def check_timeout(timeout: float) -> None:
    """Refuse a non-positive RPC deadline."""
    if timeout <= 0:
        raise ValueError("timeout must be positive")
