"""The token authority's exception tree: every error carries its gRPC status and a safe message.

::

    AuthServerError                  INTERNAL            base
    ├── InvalidRequest               INVALID_ARGUMENT    malformed, missing or oversized field
    ├── InvalidCredentials           UNAUTHENTICATED     unknown user, wrong password, disabled
    ├── UserExists                   ALREADY_EXISTS
    ├── UserNotFound                 NOT_FOUND
    ├── KeyStoreError                FAILED_PRECONDITION a signing key cannot be used
    ├── KeyStoreUnavailable          UNAVAILABLE         the PKCS#11 token; retryable
    ├── StorageError                 UNAVAILABLE         the database; retryable
    ├── InvalidRefreshToken          UNAUTHENTICATED     one answer for every bad refresh token
    │   └── RefreshTokenReused                           ... and its session is now revoked
    ├── RetryLater                   RESOURCE_EXHAUSTED  refused before any work; ``retry_after``
    │   ├── LoginThrottled                               too many failed logins
    │   └── Overloaded                                   the password pool sheds the login
    ├── CallerGone                   DEADLINE_EXCEEDED   the caller left before the work began
    ├── OAuthError                   (per class)         RFC 6749 §5.2 ``error``: drawn below
    ├── ClientExists, ClientNotFound ALREADY_EXISTS, NOT_FOUND
    ├── IdpExists, IdpNotFound       ALREADY_EXISTS, NOT_FOUND   upstream identity providers
    └── IdentityLinked               ALREADY_EXISTS      (provider, subject) already has a user

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


class KeyStoreUnavailable(AuthServerError):
    """The token holding the signing keys (PKCS#11) does not answer; retrying later may succeed.

    Not a :class:`KeyStoreError`: nothing is wrong with any key, so no key may be
    marked unusable or withdrawn because of it.
    """

    code = grpc.StatusCode.UNAVAILABLE
    message = "signing key store unavailable, retry later"


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


# -- OAuth 2.0 errors (RFC 6749 §5.2, RFC 8707 §2) ----------------------------------------
#
# AuthServerError
#  └── OAuthError                      .error (the RFC code), .http_status, .code (gRPC)
#       ├── OAuthInvalidRequest        invalid_request          400  INVALID_ARGUMENT
#       ├── InvalidClient              invalid_client           401  UNAUTHENTICATED
#       ├── InvalidGrant               invalid_grant            400  UNAUTHENTICATED
#       ├── UnauthorizedClient         unauthorized_client      400  PERMISSION_DENIED
#       ├── UnsupportedGrantType       unsupported_grant_type   400  INVALID_ARGUMENT
#       ├── InvalidScope               invalid_scope            400  PERMISSION_DENIED
#       ├── InvalidTarget              invalid_target           400  PERMISSION_DENIED
#       ├── ClientAuthThrottled        temporarily_unavailable  429  RESOURCE_EXHAUSTED
#       ├── TemporarilyUnavailable     temporarily_unavailable  503  UNAVAILABLE
#       └── OAuthServerError           server_error             500  INTERNAL


class OAuthError(AuthServerError):
    """An error the token endpoint reports by its RFC 6749 §5.2 code.

    Attributes:
        error: The ``error`` code (``invalid_client``, ...); over gRPC it is the
            ``oauth-error`` trailing metadata entry.
        http_status: The HTTP status of the JSON error response.
    """

    error: ClassVar[str] = "invalid_request"
    http_status: ClassVar[int] = 400


class OAuthInvalidRequest(OAuthError):
    """Missing, repeated, conflicting or malformed parameters (RFC 6749 §5.2)."""

    code = grpc.StatusCode.INVALID_ARGUMENT
    message = "invalid request"


class InvalidClient(OAuthError):
    """Client authentication failed: unknown client, bad credentials, disabled, wrong method.

    One message for every case: which one it was is for the audit trail only.
    """

    code = grpc.StatusCode.UNAUTHENTICATED
    error = "invalid_client"
    http_status = 401
    message = "client authentication failed"

    def __init__(self) -> None:
        super().__init__()


class InvalidGrant(OAuthError):
    """The refresh token is malformed, unknown, expired, spent or revoked."""

    code = grpc.StatusCode.UNAUTHENTICATED
    error = "invalid_grant"
    message = "invalid grant"


class UnauthorizedClient(OAuthError):
    """The client may not use this grant type or endpoint."""

    code = grpc.StatusCode.PERMISSION_DENIED
    error = "unauthorized_client"
    message = "the client is not authorized for this request"


class UnsupportedGrantType(OAuthError):
    """The grant type is unknown or not offered here."""

    code = grpc.StatusCode.INVALID_ARGUMENT
    error = "unsupported_grant_type"
    message = "unsupported grant_type"


class InvalidScope(OAuthError):
    """A requested scope is malformed or not allowed to the client."""

    code = grpc.StatusCode.PERMISSION_DENIED
    error = "invalid_scope"
    message = "requested scope is not allowed"


class InvalidTarget(OAuthError):
    """The requested audience/resource is not one allowed (RFC 8707 §2)."""

    code = grpc.StatusCode.PERMISSION_DENIED
    error = "invalid_target"
    message = "requested audience is not allowed"


class ClientAuthThrottled(OAuthError):
    """Too many failed client authentications for this client and address; retry later."""

    code = grpc.StatusCode.RESOURCE_EXHAUSTED
    error = "temporarily_unavailable"
    http_status = 429
    message = "too many failed client authentications, retry later"

    def __init__(self, retry_after: float) -> None:
        super().__init__()
        self.retry_after = max(1, math.ceil(retry_after))


class SignInThrottled(ClientAuthThrottled):
    """Too many refused upstream ID tokens from this address; retry later."""

    message = "too many failed sign-ins, retry later"


class TemporarilyUnavailable(OAuthError):
    """Storage is down; retrying later may succeed."""

    code = grpc.StatusCode.UNAVAILABLE
    error = "temporarily_unavailable"
    http_status = 503
    message = "temporarily unavailable"


class OAuthServerError(OAuthError):
    """A bug or an outage; the client learns nothing more."""

    code = grpc.StatusCode.INTERNAL
    error = "server_error"
    http_status = 500
    message = "internal error"


class ClientExists(AuthServerError):
    """A client with that id already exists."""

    code = grpc.StatusCode.ALREADY_EXISTS
    message = "client already exists"


class ClientNotFound(AuthServerError):
    """No client has that id."""

    code = grpc.StatusCode.NOT_FOUND
    message = "client not found"


class IdpExists(AuthServerError):
    """An identity provider with that name (or issuer) already exists."""

    code = grpc.StatusCode.ALREADY_EXISTS
    message = "identity provider already exists"


class IdpNotFound(AuthServerError):
    """No identity provider has that name."""

    code = grpc.StatusCode.NOT_FOUND
    message = "identity provider not found"


class IdentityLinked(AuthServerError):
    """That provider subject is already linked to a user."""

    code = grpc.StatusCode.ALREADY_EXISTS
    message = "that identity is already linked to a user"


def as_oauth_error(exc: BaseException) -> OAuthError:
    """The OAuth error that ``exc`` is on the wire (RFC 6749 §5.2)."""
    if isinstance(exc, OAuthError):
        return exc
    if isinstance(exc, InvalidRefreshToken | InvalidCredentials):
        return InvalidGrant()
    if isinstance(exc, InvalidRequest):
        return OAuthInvalidRequest(exc.message)
    if isinstance(exc, StorageError | KeyStoreUnavailable):
        # The database or the PKCS#11 token is down: retrying later may succeed.
        return TemporarilyUnavailable()
    return OAuthServerError()
