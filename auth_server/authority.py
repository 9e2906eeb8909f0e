"""The token authority's logic, free of gRPC and HTTP so it can be tested without a network."""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from auth_server.errors import InvalidRequest
from auth_server.keys import SigningKeyStore
from auth_server.sessions import SessionStore
from auth_server.tokens import TokenIssuer
from auth_server.users import UserStore, validate_scopes

_LOGGER = logging.getLogger(__name__)

MAX_USERNAME_BYTES = 256
MAX_PASSWORD_BYTES = 1024
MAX_SCOPE_BYTES = 2048


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


@dataclass(frozen=True, kw_only=True)
class JwksSnapshot:
    """One version of the published key set, with its HTTP validators."""

    keys: tuple[Mapping[str, str], ...]
    max_age: int
    body: bytes  # the exact JSON served over HTTP
    etag: str  # strong validator, without quotes


def make_jwks_snapshot(keys: Sequence[Mapping[str, str]], max_age: int) -> JwksSnapshot:
    body = json.dumps({"keys": list(keys)}, separators=(",", ":"), sort_keys=True).encode()
    etag = hashlib.sha256(body).hexdigest()[:32]
    return JwksSnapshot(keys=tuple(keys), max_age=max_age, body=body, etag=etag)


def _check_size(value: str, name: str, limit: int) -> None:
    if not value:
        raise InvalidRequest(f"{name} is required")
    if len(value.encode("utf-8", "surrogatepass")) > limit:
        raise InvalidRequest(f"{name} is longer than {limit} bytes")


class TokenAuthority:
    """Checks passwords, opens sessions and issues access tokens.

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
    ) -> None:
        self._users = users
        self._sessions = sessions
        self._issuer = issuer
        self._keys = keys
        self._jwks_max_age = jwks_max_age

    def login(
        self,
        username: str,
        password: str,
        scope: str = "",
        *,
        cert_thumbprint: str | None = None,
    ) -> TokenGrant:
        """Check credentials and issue a token pair.

        With ``cert_thumbprint`` (the client logged in over mutual TLS), the access
        token is bound to that certificate (RFC 8705 ``cnf``).

        Raises:
            InvalidRequest: a field is empty, too long or not well formed.
            InvalidCredentials: unknown user, wrong password or disabled user.
        """
        _check_size(username, "username", MAX_USERNAME_BYTES)
        _check_size(password, "password", MAX_PASSWORD_BYTES)
        if len(scope.encode()) > MAX_SCOPE_BYTES:
            raise InvalidRequest(f"scope is longer than {MAX_SCOPE_BYTES} bytes")
        wanted = validate_scopes(scope.split()) if scope.strip() else None
        user = self._users.authenticate(username, password)
        granted = (
            user.scopes if wanted is None else tuple(s for s in wanted if s in set(user.scopes))
        )
        session = self._sessions.create(user.id)
        token = self._issuer.issue(
            user,
            scopes=granted,
            session_id=session.session_id,
            cert_thumbprint=cert_thumbprint,
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

    def jwks(self) -> JwksSnapshot:
        """The key set verifiers must know now, as published over gRPC and HTTP."""
        return make_jwks_snapshot(self._keys.published_jwks(), self._jwks_max_age)
