"""The verifier's exception tree: every error carries its gRPC status and a safe message.

The message is what a client sees in the status details. It names the
category only ("token expired"), never the token, a key, or the text of a
library exception. ``reason`` is the same category as a stable identifier for
the audit trail (``token.rejected``).
"""

from __future__ import annotations

from typing import ClassVar

import grpc


class AuthError(Exception):
    """Base of every error raised by :mod:`interceptors`."""

    code: ClassVar[grpc.StatusCode] = grpc.StatusCode.UNAUTHENTICATED
    message: ClassVar[str] = "unauthenticated"
    reason: ClassVar[str] = "unauthenticated"

    def __init__(self, detail: str | None = None) -> None:
        # ``detail`` is for logs and debugging only and must not hold secrets;
        # the wire only ever gets the class's ``message``.
        super().__init__(detail or self.message)
        self.detail = detail or self.message


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


class InsufficientScope(AuthError):
    """The token is valid but lacks a scope the method requires."""

    code = grpc.StatusCode.PERMISSION_DENIED
    message = "insufficient scope"
    reason = "insufficient_scope"


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
