"""The token authority's logic, free of gRPC and HTTP so it can be tested without a network."""

from __future__ import annotations

import hashlib
import json
import logging
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import sqlalchemy as sa

from auth_server.audit import notify_listener
from auth_server.errors import InvalidRefreshToken, InvalidRequest, InvalidScope, InvalidTarget
from auth_server.keys import SigningKeyStore
from auth_server.sessions import EndedSession, SessionStore, SessionTerms
from auth_server.throttle import LoginThrottle
from auth_server.tokens import TokenIssuer
from auth_server.users import User, UserStore, user_from_row, validate_scopes

_LOGGER = logging.getLogger(__name__)

MAX_USERNAME_BYTES = 256
MAX_PASSWORD_BYTES = 1024
MAX_SCOPE_BYTES = 2048
MAX_REFRESH_TOKEN_BYTES = 512


@dataclass(frozen=True, kw_only=True)
class TokenGrant:
    """What a successful login returns (RFC 6749 §5.1), and whom it was for."""

    access_token: str = field(repr=False)
    token_type: str
    expires_in: int
    refresh_token: str = field(repr=False)
    scope: str
    user_id: str = ""
    session_id: str = ""
    client_id: str = ""


@dataclass(frozen=True, kw_only=True)
class JwksSnapshot:
    """One version of the published key set, with its HTTP validators.

    Attributes:
        keys: The public JWKs.
        max_age: The configured ``--jwks-max-age``.
        body: The exact JSON served over HTTP.
        etag: Strong validator, without quotes.
        next_change_at: When the set is next scheduled to change (a key joins or
            leaves), epoch seconds; ``None`` if nothing is scheduled.
    """

    keys: tuple[Mapping[str, str], ...]
    max_age: int
    body: bytes
    etag: str
    next_change_at: float | None = None

    def max_age_at(self, now: float) -> int:
        """The ``max-age`` to send at ``now``: never past the next scheduled change.

        At least 1 s, so a change that is due but not yet made cannot turn
        every verifier's cache into a refetch loop.
        """
        if self.next_change_at is None:
            return self.max_age
        left = math.floor(self.next_change_at - now)
        return max(1, min(self.max_age, left))


def make_jwks_snapshot(
    keys: Sequence[Mapping[str, str]], max_age: int, *, next_change_at: float | None = None
) -> JwksSnapshot:
    body = json.dumps({"keys": list(keys)}, separators=(",", ":"), sort_keys=True).encode()
    etag = hashlib.sha256(body).hexdigest()[:32]
    return JwksSnapshot(
        keys=tuple(keys), max_age=max_age, body=body, etag=etag, next_change_at=next_change_at
    )


def _check_refresh_token(value: str) -> None:
    if not value:
        raise InvalidRequest("refresh_token is required")
    if len(value) > MAX_REFRESH_TOKEN_BYTES:
        raise InvalidRefreshToken()


def _check_size(value: str, name: str, limit: int) -> None:
    if not value:
        raise InvalidRequest(f"{name} is required")
    if len(value.encode("utf-8", "surrogatepass")) > limit:
        raise InvalidRequest(f"{name} is longer than {limit} bytes")


class TokenAuthority:
    """Checks passwords, opens, refreshes and ends sessions, and issues access tokens.

    Every method is blocking (argon2 and database work); the gRPC servicer
    runs them in worker threads.
    """

    def __init__(
        self,
        *,
        users: UserStore,
        sessions: SessionStore,
        issuer: TokenIssuer,
        keys: SigningKeyStore,
        jwks_max_age: int,
        throttle: LoginThrottle | None = None,
        audiences: Sequence[str] = (),
    ) -> None:
        self._users = users
        self._sessions = sessions
        self._issuer = issuer
        self._keys = keys
        self._jwks_max_age = jwks_max_age
        self._throttle = throttle
        # The audiences a user login may ask for (RFC 8707); the issuer's default first.
        self._audiences = (issuer.audience, *(a for a in audiences if a != issuer.audience))

    @property
    def audiences(self) -> tuple[str, ...]:
        """The audiences user tokens may carry; the first is the default."""
        return self._audiences

    def audience_for(self, requested: str) -> str | None:
        """The ``aud`` for a user token: ``None`` means the default.

        Raises:
            InvalidTarget: ``requested`` is not one of the configured audiences.
        """
        if not requested or requested == self._audiences[0]:
            return None
        if requested not in self._audiences:
            raise InvalidTarget()
        return requested

    def login(
        self,
        username: str,
        password: str,
        scope: str = "",
        *,
        address: str = "",
        cert_thumbprint: str | None = None,
        audience: str = "",
    ) -> TokenGrant:
        """Check credentials and issue a token pair for a new session.

        Args:
            username: The account name.
            password: Its password.
            scope: Space-separated scopes wanted; empty means all the user holds.
            address: The client's address (see :func:`auth_server.throttle.client_address`),
                for throttling and the audit trail.
            cert_thumbprint: The ``x5t#S256`` of the client's TLS certificate, which the
                access token is then bound to (RFC 8705 ``cnf``), or ``None``.
            audience: The ``aud`` wanted (RFC 8707); empty means the default.

        Raises:
            InvalidRequest: a field is empty, too long or not well formed.
            InvalidTarget: ``audience`` is not one the server issues tokens for.
            LoginThrottled: too many recent failures; nothing was checked.
            InvalidCredentials: unknown user, wrong password or disabled user.
            KeyStoreUnavailable: the PKCS#11 token holding the keys does not answer.
        """
        _check_size(username, "username", MAX_USERNAME_BYTES)
        _check_size(password, "password", MAX_PASSWORD_BYTES)
        if len(scope.encode()) > MAX_SCOPE_BYTES:
            raise InvalidRequest(f"scope is longer than {MAX_SCOPE_BYTES} bytes")
        wanted = validate_scopes(scope.split()) if scope.strip() else None
        chosen = self.audience_for(audience)
        # Throttled before argon2 runs: a refused attempt costs a database round trip only.
        attempt = self._throttle.admit(username, address) if self._throttle else None
        # Audited by the servicer (login.failed / login.succeeded, with the peer).
        user = self._users.authenticate(username, password)
        if self._throttle is not None and attempt is not None:
            self._throttle.succeeded(attempt)
        granted = (
            user.scopes if wanted is None else tuple(s for s in wanted if s in set(user.scopes))
        )
        return self.open_session(
            user, granted, cert_thumbprint=cert_thumbprint, audience_choice=chosen
        )

    def open_session(
        self,
        user: User,
        granted: Sequence[str],
        *,
        cert_thumbprint: str | None = None,
        audience_choice: str | None = None,
        idp: str | None = None,
    ) -> TokenGrant:
        """Start a session for an already authenticated user and issue its first token pair.

        Args:
            user: Who signed in (a password login, or an upstream ID token).
            granted: The scopes granted.
            cert_thumbprint: The client certificate the tokens are bound to, or ``None``.
            audience_choice: ``aud`` as :meth:`audience_for` chose it (``None``: default).
            idp: The upstream provider of a federated sign-in, or ``None``.
        """
        # Before the session exists: a token outage must not leave sessions behind
        # (each counts against --max-sessions-per-user) for logins that got no token.
        self._keys.check_ready()
        session = self._sessions.create(
            user.id,
            scope=granted,
            access_ttl=self._issuer.ttl,
            cert_thumbprint=cert_thumbprint,
            audience=audience_choice,
            idp=idp,
        )
        token = self._issuer.issue(
            user,
            scopes=granted,
            session_id=session.session_id,
            issued_at=session.issued_at,
            cert_thumbprint=cert_thumbprint,
            audience=audience_choice,
        )
        _LOGGER.info("login succeeded user_id=%s sid=%s", user.id, session.session_id)
        return TokenGrant(
            access_token=token.access_token,
            token_type="Bearer",  # noqa: S106 - the OAuth token type, not a secret
            expires_in=token.expires_in,
            refresh_token=session.refresh_token,
            scope=token.scope,
            user_id=user.id,
            session_id=session.session_id,
        )

    def refresh(
        self,
        refresh_token: str,
        *,
        cert_thumbprint: str | None = None,
        audience: str = "",
        scope: Sequence[str] = (),
    ) -> TokenGrant:
        """Spend a refresh token: a new access token and the successor refresh token.

        Within the grace window a repeat of the just-spent token returns the
        same successor refresh token (and a fresh access token).

        A session keeps the audience chosen at login; ``audience``, when given,
        must be that one (RFC 8707 §2.2), else :class:`InvalidTarget`. Each scope
        in ``scope`` must have been granted at login (RFC 6749 §6), else
        :class:`InvalidScope`. Both are checked before the token is spent: a
        refused request consumes nothing.

        Raises:
            InvalidRequest: the token is empty.
            InvalidRefreshToken: malformed, unknown, expired, spent or revoked
                (:class:`~auth_server.errors.RefreshTokenReused` when a spent
                token revoked its session just now).
            KeyStoreUnavailable: the PKCS#11 token holding the keys does not answer.
            StorageError: the database is unavailable.
        """
        _check_refresh_token(refresh_token)
        # Before the refresh token is spent: a client retrying through a token
        # outage longer than the grace window would otherwise look like a reuse.
        self._keys.check_ready()
        if audience and audience not in self._audiences:
            raise InvalidTarget()
        default = self._audiences[0]

        def within_terms(terms: SessionTerms) -> None:
            if audience and audience != (terms.audience or default):
                raise InvalidTarget()
            if not set(scope) <= set(terms.scope):
                raise InvalidScope()

        def user_and_key(conn: sa.Connection, row: Mapping[str, Any] | None) -> tuple[User, str]:
            # In the rotation's transaction: a refresh is one transaction, not three.
            user = None if row is None else user_from_row(row)
            if user is None or user.disabled:
                # Disabling a user revokes its sessions in the same transaction; this
                # is only the moment between the two. Raised here, it spends nothing.
                raise InvalidRefreshToken()
            return user, self._keys.current_kid(conn)

        rotation, (user, kid) = self._sessions.refresh_loading(
            refresh_token,
            user_and_key,
            access_ttl=self._issuer.ttl,
            cert_thumbprint=cert_thumbprint,
            check=within_terms,
        )
        held = set(user.scopes)
        granted = tuple(s for s in rotation.scope if s in held)
        token = self._issuer.issue(
            user,
            scopes=granted,
            session_id=rotation.session_id,
            issued_at=rotation.issued_at,
            cert_thumbprint=rotation.cert_thumbprint,
            audience=rotation.audience,
            key=self._keys.load(kid),
            grant_type="refresh_token",
        )
        notify_listener("refresh.grace_repeat" if rotation.repeated else "refresh.rotated")
        _LOGGER.info(
            "refresh succeeded user_id=%s sid=%s%s",
            user.id,
            rotation.session_id,
            " (repeat within grace)" if rotation.repeated else "",
        )
        return TokenGrant(
            access_token=token.access_token,
            token_type="Bearer",  # noqa: S106 - the OAuth token type, not a secret
            expires_in=token.expires_in,
            refresh_token=rotation.refresh_token,
            scope=token.scope,
        )

    def logout(self, refresh_token: str) -> EndedSession:
        """End the session ``refresh_token`` belongs to.

        Raises:
            InvalidRequest: the token is empty.
            InvalidRefreshToken: malformed or unknown.
            StorageError: the database is unavailable.
        """
        _check_refresh_token(refresh_token)
        ended = self._sessions.logout(refresh_token)
        _LOGGER.info("logout user_id=%s sid=%s", ended.user_id, ended.session_id)
        return ended

    def revoked_sessions(self) -> dict[str, float]:
        """The revocation list verifiers follow: ``{sid: exp of its last access token}``."""
        return self._sessions.revoked_sessions()

    def jwks(self) -> JwksSnapshot:
        """The key set verifiers must know now, as published over gRPC and HTTP."""
        published = self._keys.published_set()
        return make_jwks_snapshot(
            published.keys, self._jwks_max_age, next_change_at=published.next_change_at
        )
