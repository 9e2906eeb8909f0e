"""Exceptions of :mod:`interceptors`: two trees that never mix.

The server-side tree, raised while a call or a key set is checked. Each class
carries its gRPC status (``code``), the client-safe wire text (``message``) and
a stable audit identifier (``reason``, the ``token.rejected`` event's field)::

    AuthError                        UNAUTHENTICATED    base; never raised itself
    ├── MissingToken                 UNAUTHENTICATED    no authorization metadata
    ├── InvalidToken                 UNAUTHENTICATED    presented, not acceptable
    │   ├── MalformedToken
    │   ├── InvalidSignature
    │   ├── ExpiredToken
    │   ├── ImmatureToken
    │   ├── InvalidClaims
    │   ├── UnknownKey
    │   ├── CertificateMismatch
    │   └── RevokedToken
    ├── InsufficientScope            PERMISSION_DENIED
    ├── DelegationRefused            PERMISSION_DENIED  a delegated token from an actor not allowed
    ├── KeysUnavailable              UNAVAILABLE        retryable
    ├── RevocationsUnavailable       UNAVAILABLE        retryable; fail closed, list out of sync
    ├── KeySourceError               UNAVAILABLE        a key source failed (key cache only)
    │   └── KeySetError                                 it answered an unusable JWKS
    └── RevocationStreamError        UNAVAILABLE        inside the revocation list only

The client-side tree, raised by the token helpers of a *calling* service. It
has no status: nothing here goes on a wire, and a server handler that catches
``AuthError`` never catches its own outgoing client's failure::

    TokenClientError
    ├── TokenRequestError            no usable token from the auth service
    └── NoCallerToken                a propagated call made outside an authenticated handler

Two texts, never confused (gRPC's own word for the wire text is "details"):

- ``message`` (class attribute) is the wire text: it names the category only
  ("token expired"), never the token, a key, or the text of a library exception.
  ``str(exc)`` returns it, so ``context.abort(exc.code, str(exc))`` is safe.
- ``log_detail`` (per instance) is internal: why exactly, for logs and
  debugging (``repr(exc)`` shows it too). It holds no secret, but it is never
  sent to a client.
"""

from __future__ import annotations

from typing import ClassVar

import grpc


class AuthError(Exception):
    """Base of every server-side error raised by :mod:`interceptors`.

    Attributes:
        code: The gRPC status this error maps to.
        message: The client-safe wire text; also ``str(exc)``.
        reason: The category as a stable identifier for the audit trail.
        log_detail: Internal text saying why exactly; for logs only, never the wire.
    """

    code: ClassVar[grpc.StatusCode] = grpc.StatusCode.UNAUTHENTICATED
    message: ClassVar[str] = "unauthenticated"
    reason: ClassVar[str] = "unauthenticated"

    def __init__(self, log_detail: str | None = None) -> None:
        """Create the error.

        Args:
            log_detail: Why exactly, for logs; must not hold a token, key or password.
                Defaults to the class's ``message``.
        """
        self.log_detail = log_detail or self.message
        super().__init__(self.log_detail)

    def __str__(self) -> str:
        # The wire-safe text: whoever forwards str(exc) to a client leaks nothing.
        return self.message


class MissingToken(AuthError):
    """No ``authorization: Bearer`` metadata was sent."""

    message = "missing bearer token"
    reason = "missing_token"


class InvalidToken(AuthError):
    """The token was presented but cannot be accepted."""

    message = "invalid token"
    reason = "invalid_token"


class MalformedToken(InvalidToken):
    """The token, or the authorization metadata carrying it, is not well formed."""

    message = "malformed token"
    reason = "malformed"


class InvalidSignature(InvalidToken):
    """The signature does not verify with the key the ``kid`` selects."""

    message = "invalid signature"
    reason = "bad_signature"


class ExpiredToken(InvalidToken):
    """``exp`` has passed (beyond the leeway)."""

    message = "token expired"
    reason = "expired"


class ImmatureToken(InvalidToken):
    """``nbf`` or ``iat`` lies in the future (beyond the leeway)."""

    message = "token not yet valid"
    reason = "not_yet_valid"


class InvalidClaims(InvalidToken):
    """A claim is missing or wrong: issuer, audience, ``typ``, types, lifetime."""

    message = "invalid token claims"
    reason = "bad_claims"


class UnknownKey(InvalidToken):
    """The ``kid`` is not in the issuer's key set, even after a refetch."""

    message = "unknown signing key"
    reason = "unknown_key"


class CertificateMismatch(InvalidToken):
    """The token is not bound to the client certificate the call came with (mutual TLS).

    Either the certificate does not name the token's subject, or the token's
    ``cnf`` claim names another certificate (RFC 8705 §3).
    """

    message = "token not bound to the client certificate"
    reason = "certificate_mismatch"


class RevokedToken(InvalidToken):
    """The token's session (``sid``) was ended: logout, reuse of a refresh token, an admin."""

    message = "token revoked"
    reason = "revoked"


class RevocationsUnavailable(AuthError):
    """The revocation list is out of sync and the verifier was told to fail closed.

    Retryable: raised only with ``RevocationList(fail_closed_after=...)``, until
    the list has synced (again).
    """

    code = grpc.StatusCode.UNAVAILABLE
    message = "revocation list unavailable"
    reason = "revocations_unavailable"


class InsufficientScope(AuthError):
    """The token is valid but lacks a scope the method requires."""

    code = grpc.StatusCode.PERMISSION_DENIED
    message = "insufficient scope"
    reason = "insufficient_scope"


class DelegationRefused(AuthError):
    """The token is delegated (RFC 8693 ``act``) and the method does not accept its actors."""

    code = grpc.StatusCode.PERMISSION_DENIED
    message = "delegated token not accepted"
    reason = "delegation_refused"


class KeysUnavailable(AuthError):
    """No usable key set could be loaded, so the token cannot be checked now.

    Retryable: the issuer may be down, or the token's key may be new.
    """

    code = grpc.StatusCode.UNAVAILABLE
    message = "signing keys unavailable"
    reason = "keys_unavailable"


class KeySourceError(AuthError):
    """A key source failed: unreachable, timed out, an HTTP error status, a broken stream.

    Raised by sources inside the key cache, which keeps the last good set in
    force; a caller never sees it on the wire (it gets :class:`KeysUnavailable`).
    """

    code = grpc.StatusCode.UNAVAILABLE
    message = "signing keys unavailable"
    reason = "key_source_failed"


class KeySetError(KeySourceError):
    """A key source answered, but with a document that is not a usable JWKS.

    Raised inside the key cache; the last good set stays in force.
    """

    reason = "bad_key_set"


class RevocationStreamError(AuthError):
    """The revocation stream could not be opened or broke (the list follower reconnects)."""

    code = grpc.StatusCode.UNAVAILABLE
    message = "revocation list unavailable"
    reason = "revocation_stream_failed"


class TokenClientError(Exception):
    """Base of the client-side token helpers' errors (not an :class:`AuthError`).

    ``str(exc)`` says what went wrong; it never holds a password or a token.

    Attributes:
        message: The category, as a fixed text.
    """

    message: ClassVar[str] = "token client error"

    def __init__(self, detail: str | None = None) -> None:
        """Create the error; ``detail`` says what went wrong (defaults to ``message``)."""
        super().__init__(detail or self.message)


class TokenRequestError(TokenClientError):
    """The auth service gave no usable token, or there is no credential left to ask with.

    Failed ``Login``/``Refresh`` RPCs are not wrapped in this error: they surface as the
    auth service's own :class:`grpc.RpcError`, so its status code can be inspected. A
    failed ``Token`` RPC (a service identity's client-credentials request) is: the RFC
    6749 §5.2 code the auth service sent in its ``oauth-error`` trailer is then
    :attr:`oauth_error`, the status :attr:`code`, and the RPC error is ``__cause__``.

    Attributes:
        oauth_error: The RFC 6749 §5.2 error code (``invalid_client``, ...), or ``None``.
        code: The gRPC status of the failed ``Token`` RPC, or ``None``.
        retry_after: Seconds the auth service asked to wait (throttled), or ``None``.
    """

    message = "token request failed"

    def __init__(
        self,
        detail: str | None = None,
        *,
        oauth_error: str | None = None,
        code: grpc.StatusCode | None = None,
        retry_after: int | None = None,
    ) -> None:
        """Create the error; the keywords describe a refused ``Token`` RPC."""
        super().__init__(detail)
        self.oauth_error = oauth_error
        self.code = code
        self.retry_after = retry_after


class NoCallerToken(TokenClientError):
    """A call that propagates the caller's identity was made outside an authenticated handler.

    It fails closed: the call is not sent, rather than sent with the service's own
    identity or none.
    """

    message = "no authenticated caller to act for: propagate only inside a protected handler"
