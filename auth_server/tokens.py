"""Access tokens: JWS (RFC 7515) signed with the current key, RFC 9068 profile."""

from __future__ import annotations

import logging
import secrets
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass

from auth_server.audit import notify_listener
from auth_server.errors import (
    InvalidCredentials,
    InvalidGrant,
    InvalidRequest,
    KeyStoreUnavailable,
)
from auth_server.jws import encode_compact
from auth_server.keys import SigningKey, SigningKeyStore
from auth_server.users import User, validate_scopes

_LOGGER = logging.getLogger(__name__)

TOKEN_TYPE = "at+jwt"  # noqa: S105 - a JWT typ, not a secret
DEFAULT_ACCESS_TTL = 900


@dataclass(frozen=True, kw_only=True)
class IssuedToken:
    """A signed access token and what a token response says about it.

    Attributes:
        access_token: The JWS in compact form (never log it).
        expires_in: Seconds until it expires.
        scope: The granted scopes, space-separated.
        token_id: Its ``jti`` claim.
        expires_at: Its ``exp`` claim, epoch seconds.
    """

    access_token: str
    expires_in: int
    scope: str
    token_id: str
    expires_at: int

    def __repr__(self) -> str:
        return f"IssuedToken(token_id={self.token_id!r}, expires_at={self.expires_at!r})"


# Metric label values (RFC 6749 §4.4, RFC 8693 §2.1 name the grants by URN; short here).
_CLIENT = "client_credentials"
_EXCHANGE = "token_exchange"


class TokenIssuer:
    """Signs access tokens with the key store's current key; thread-safe."""

    def __init__(
        self,
        keys: SigningKeyStore,
        *,
        issuer: str,
        audience: str,
        ttl: int = DEFAULT_ACCESS_TTL,
        now: Callable[[], float] = time.time,
    ) -> None:
        """Create the issuer.

        Args:
            keys: Supplies the current signing key.
            issuer: The ``iss`` claim (the authority's URL).
            audience: The ``aud`` claim.
            ttl: Access token lifetime in seconds.
            now: Clock, epoch seconds.

        Raises:
            ValueError: Empty issuer or audience, or a non-positive ttl.
        """
        if not issuer or not audience:
            raise ValueError("issuer and audience must not be empty")
        if isinstance(ttl, bool) or not isinstance(ttl, int) or ttl <= 0:
            raise ValueError("ttl must be a positive number of seconds")
        self._keys = keys
        self._issuer = issuer
        self._audience = audience
        self._ttl = ttl
        self._now = now

    @property
    def ttl(self) -> int:
        """Access token lifetime in seconds."""
        return self._ttl

    @property
    def audience(self) -> str:
        """The default ``aud``."""
        return self._audience

    def issue(
        self,
        user: User,
        *,
        scopes: Iterable[str],
        session_id: str,
        issued_at: float | None = None,
        cert_thumbprint: str | None = None,
        audience: str | None = None,
        key: SigningKey | None = None,
        grant_type: str = "password",
    ) -> IssuedToken:
        """Sign an access token for ``user``.

        Args:
            user: The authenticated user; ``sub`` is its id.
            scopes: The scopes to grant; each must be one the user holds.
            session_id: The session the token belongs to (``sid``).
            issued_at: The ``iat`` to use (the session recorded ``iat + ttl`` as
                its last token's expiry); the clock's time if not given.
            cert_thumbprint: The ``x5t#S256`` of the client certificate the token is
                bound to (RFC 8705 §3.1, the ``cnf`` claim), or ``None``.
            audience: The ``aud`` (RFC 8707), already checked by the caller; the
                default audience if ``None``.
            key: The current signing key, when the caller read which one it is in
                its own transaction; read here if ``None``.
            grant_type: How the token was earned (``password``: a Login;
                ``refresh_token``), for the metrics.

        Returns:
            The token and its metadata.

        Raises:
            InvalidRequest: A scope is malformed or not held by the user.
            InvalidCredentials: The user is disabled.
            KeyStoreError: No usable signing key.
            KeyStoreUnavailable: The PKCS#11 token holding the key does not answer.
            StorageError: The database is unavailable.
        """
        granted = validate_scopes(scopes)
        # Defence in depth: the caller narrows scopes, but a token must never
        # carry a scope its user does not hold, nor be issued to a disabled user.
        if not set(granted) <= set(user.scopes):
            raise InvalidRequest("requested scope is not granted to the user")
        if user.disabled:
            raise InvalidCredentials()
        extra = {"sid": session_id, "username": user.username}
        return self._sign(
            user.id,
            granted,
            extra,
            issued_at,
            cert_thumbprint,
            audience or self._audience,
            key=key,
            grant_type=grant_type,
        )

    def issue_for_client(
        self,
        client_id: str,
        *,
        scopes: Iterable[str],
        audience: str,
        cert_thumbprint: str | None = None,
    ) -> IssuedToken:
        """Sign a client-credentials access token (RFC 6749 §4.4; RFC 9068 §2.2).

        ``sub`` and ``client_id`` are both the client id; there is no ``sid``
        (no session) and no ``username``. The caller has checked the scopes and
        the audience against what the client may have.
        """
        granted = validate_scopes(scopes)
        extra = {"client_id": client_id}
        return self._sign(
            client_id, granted, extra, None, cert_thumbprint, audience, grant_type=_CLIENT
        )

    def issue_exchanged(
        self,
        subject: str,
        *,
        scopes: Iterable[str],
        audience: str,
        not_after: int,
        extra: dict[str, object],
        cert_thumbprint: str | None = None,
    ) -> IssuedToken:
        """Sign a token from an RFC 8693 exchange; it expires at ``not_after`` at the latest.

        ``extra`` holds the claims carried over from the subject token (``sid``,
        ``username``, ``client_id``) and the new ``act``; the caller has checked them.

        Raises:
            InvalidGrant: ``not_after`` is already past.
        """
        granted = validate_scopes(scopes)
        return self._sign(
            subject,
            granted,
            extra,
            None,
            cert_thumbprint,
            audience,
            not_after=not_after,
            grant_type=_EXCHANGE,
        )

    def _sign(
        self,
        subject: str,
        granted: tuple[str, ...],
        extra: Mapping[str, object],
        issued_at: float | None,
        cert_thumbprint: str | None,
        audience: str,
        *,
        not_after: int | None = None,
        key: SigningKey | None = None,
        grant_type: str,
    ) -> IssuedToken:
        if key is None:
            key = self._keys.current()
        issued_at = int(self._now() if issued_at is None else issued_at)
        expires_at = issued_at + self._ttl
        if not_after is not None and not_after < expires_at:
            # A derived token never outlives the token it was derived from.
            if not_after <= issued_at:
                raise InvalidGrant()
            expires_at = not_after
        token_id = secrets.token_urlsafe(16)
        scope = " ".join(granted)
        claims: dict[str, object] = {
            "iss": self._issuer,
            "sub": subject,
            "aud": audience,
            "exp": expires_at,
            "iat": issued_at,
            "nbf": issued_at,
            "jti": token_id,
            **extra,
            "scope": scope,
        }
        if cert_thumbprint is not None:
            claims["cnf"] = {"x5t#S256": cert_thumbprint}
        try:
            token = _signed_compact(claims, key)
        except KeyStoreUnavailable:
            # Another replica may be revoking this key: its token object is destroyed
            # just before that commits. Read the current key after the change (under
            # the key-change lock): its successor signs instead.
            successor = self._keys.current(after_changes=True)
            if successor.kid == key.kid:
                raise
            key = successor
            token = _signed_compact(claims, key)
        _LOGGER.debug("issued token %s for %s with key %s", token_id, subject, key.kid)
        notify_listener("token.issued", grant_type=grant_type, algorithm=key.algorithm)
        return IssuedToken(
            access_token=token,
            expires_in=expires_at - issued_at,
            scope=scope,
            token_id=token_id,
            expires_at=expires_at,
        )


def _signed_compact(claims: dict[str, object], key: SigningKey) -> str:
    # Assembled here rather than by jwt.encode: a token's key cannot be handed to
    # PyJWT, it can only be asked to sign (auth_server.jws).
    header = {"alg": key.algorithm, "kid": key.kid, "typ": TOKEN_TYPE}
    return encode_compact(header, claims, key.sign)
