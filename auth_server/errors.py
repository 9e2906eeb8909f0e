"""The token authority's exception tree: every error carries its gRPC status and a safe message.

::

    AuthServerError                  INTERNAL            base
    ├── InvalidRequest               INVALID_ARGUMENT    malformed, missing or oversized field
    ├── InvalidCredentials           UNAUTHENTICATED     unknown user, wrong password, disabled
    ├── UserExists                   ALREADY_EXISTS
    ├── UserNotFound                 NOT_FOUND
    ├── KeyStoreError                FAILED_PRECONDITION a signing key cannot be used
    ├── StorageError                 UNAVAILABLE         the database; retryable
    ├── InvalidRefreshToken          UNAUTHENTICATED     one answer for every bad refresh token
    │   └── RefreshTokenReused                           ... and its session is now revoked
    ├── RetryLater                   RESOURCE_EXHAUSTED  refused before any work; ``retry_after``
    │   ├── LoginThrottled                               too many failed logins
    │   └── Overloaded                                   the password pool sheds the login
    └── CallerGone                   DEADLINE_EXCEEDED   the caller left before the work began

A servicer maps any of these to the wire with ``context.abort(exc.code, exc.message)``.
Unlike the verifier's :class:`interceptors.AuthError` (a fixed class ``message`` plus
an internal ``log_detail``), here ``message`` may be narrowed per instance, and it is
always client-safe: it names the category only; it never holds a password, a token,
a key, or the text of a library exception. ``str(exc)`` is that message.
"""

from __future__ import annotations

import math
from typing import ClassVar

import grpc


class AuthServerError(Exception):
    """Base of every error raised by the :mod:`auth_server` domain layer.

    Attributes:
        code: The gRPC status this error maps to.
        message: Text that is safe to send to a client.
    """

    code: ClassVar[grpc.StatusCode] = grpc.StatusCode.INTERNAL
    message: str = "internal error"

    def __init__(self, message: str | None = None) -> None:
        """Create the error.

        Args:
            message: A more specific, client-safe text replacing the class's
                default. Never pass secrets or a library exception's text.
        """
        if message is not None:
            self.message = message
        super().__init__(self.message)


class InvalidRequest(AuthServerError):
    """The request is malformed: a missing, oversized or badly formed field."""

    code = grpc.StatusCode.INVALID_ARGUMENT
    message = "invalid request"


class InvalidCredentials(AuthServerError):
    """Unknown user, wrong password or disabled user: one message for all three."""

    code = grpc.StatusCode.UNAUTHENTICATED
    message = "invalid username or password"

    def __init__(self) -> None:
        # Fixed on purpose: a specific text would tell an attacker which case it was.
        super().__init__()


class UserExists(AuthServerError):
    """A user with that name already exists."""

    code = grpc.StatusCode.ALREADY_EXISTS
    message = "user already exists"


class UserNotFound(AuthServerError):
    """No user has that name."""

    code = grpc.StatusCode.NOT_FOUND
    message = "user not found"


class KeyStoreError(AuthServerError):
    """A signing key cannot be used: wrong passphrase, corrupted row, unknown or missing key."""

    code = grpc.StatusCode.FAILED_PRECONDITION
    message = "signing key unavailable"


class StorageError(AuthServerError):
    """The database is unreachable or unusable; retrying later may succeed."""

    code = grpc.StatusCode.UNAVAILABLE
    message = "storage unavailable"


class InvalidRefreshToken(AuthServerError):
    """A malformed, unknown, expired, spent or revoked refresh token: one message for all."""

    code = grpc.StatusCode.UNAUTHENTICATED
    message = "invalid refresh token"

    def __init__(self) -> None:
        # Fixed on purpose: which case it was is for the audit trail, not the client.
        super().__init__()


class RefreshTokenReused(InvalidRefreshToken):
    """A spent refresh token came back after the grace window: its session is now revoked.

    Looks exactly like :class:`InvalidRefreshToken` on the wire.
    """

    def __init__(self, session_id: str) -> None:
        super().__init__()
        self.session_id = session_id


class RetryLater(AuthServerError):
    """Refused before any work was done; the client may try again after ``retry_after``.

    Attributes:
        retry_after: Whole seconds after which a new attempt may be admitted;
            sent as the ``retry-after`` trailing metadata entry.
    """

    code = grpc.StatusCode.RESOURCE_EXHAUSTED
    message = "retry later"

    def __init__(self, retry_after: float) -> None:
        super().__init__()
        self.retry_after = max(1, math.ceil(retry_after))


class LoginThrottled(RetryLater):
    """Too many failed logins for this user, address or both; try again later."""

    message = "too many login attempts, retry later"


class Overloaded(RetryLater):
    """More password checks are waiting than the pool can finish in time: shed at once.

    Raised before anything is hashed or stored, for known and unknown users alike.
    """

    message = "server busy, retry later"


class CallerGone(AuthServerError):
    """The caller's deadline passed (or it cancelled) before the work began: never started."""

    code = grpc.StatusCode.DEADLINE_EXCEEDED
    message = "deadline exceeded"
