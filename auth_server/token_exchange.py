"""The RFC 8693 token-exchange grant: a service trades a user's token for one to another service.

A service (the acting client, authenticated by any of its methods) that received
a user's access token asks for a token to another audience on that user's
behalf. The rules, each refused with its RFC error:

* the subject token is an access token of this issuer, unexpired, whose session
  is not revoked (the published list and the database both say so), and whose
  ``aud`` is the acting client's id: the service must have received the token
  legitimately, as its audience (``invalid_grant``);
* the target audience is one the client's exchange policy names
  (``invalid_target``);
* the scopes are at most the subject token's, and at most the policy's cap for
  that target (``invalid_scope``);
* the ``act`` chain (RFC 8693 §4.1: the new actor outermost, earlier ones nested)
  stays within :data:`MAX_CHAIN_DEPTH` (``invalid_grant``);
* a client-credentials token is a subject only where the policy allows it
  (``invalid_grant``).

The new token keeps the subject's ``sub``, ``username`` and ``sid`` -- so
revoking the session refuses every token derived from it at every push
verifier -- and never outlives the subject token.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import sqlalchemy as sa

from auth_server.audit import audit_event
from auth_server.authority import TokenGrant
from auth_server.client_auth import ClientAuthenticator, ClientCredentials
from auth_server.clients import Client, ClientStore
from auth_server.errors import (
    InvalidGrant,
    InvalidRequest,
    InvalidScope,
    InvalidTarget,
    OAuthInvalidRequest,
)
from auth_server.storage import Database, sessions
from auth_server.token_inspector import TokenInspector
from auth_server.tokens import TokenIssuer
from auth_server.users import validate_scopes
from interceptors import Principal

_LOGGER = logging.getLogger(__name__)

TOKEN_EXCHANGE = "urn:ietf:params:oauth:grant-type:token-exchange"  # noqa: S105 - a URN
ACCESS_TOKEN_TYPE = "urn:ietf:params:oauth:token-type:access_token"  # noqa: S105 - a URN
#: Longest ``act`` chain a derived token may carry (the new actor included).
MAX_CHAIN_DEPTH = 4


class ChainTooDeep(InvalidGrant):
    """Exchanging again would nest ``act`` deeper than the server allows."""

    message = "delegation chain too deep"


@dataclass(frozen=True, kw_only=True)
class ExchangeRequest:
    """The token-exchange parameters of a token request (RFC 8693 §2.1).

    Attributes:
        subject_token: The token to exchange (never log it).
        subject_token_type: Must be :data:`ACCESS_TOKEN_TYPE`.
        requested_token_type: Empty or :data:`ACCESS_TOKEN_TYPE`.
        audience: The target audience (``audience`` or ``resource``).
        scope: Space-separated scopes wanted; empty: all the subject may pass on.
        credentials: The acting client's authentication.
        address: The caller's address.
    """

    subject_token: str = field(repr=False)
    subject_token_type: str
    requested_token_type: str = ""
    audience: str = ""
    scope: str = ""
    credentials: ClientCredentials = field(default_factory=ClientCredentials)
    address: str = ""


def session_revoked_in(database: Database) -> Callable[[str], bool]:
    """A check of the database: is this session revoked (or gone)?"""

    def revoked(session_id: str) -> bool:
        with database.transaction() as conn:
            row = conn.execute(
                sa.select(sessions.c.revoked_at).where(sessions.c.id == session_id)
            ).first()
        return row is None or row.revoked_at is not None

    return revoked


class TokenExchange:
    """Runs the token-exchange grant; blocking (database, signing); thread-safe."""

    def __init__(
        self,
        *,
        authenticator: ClientAuthenticator,
        clients: ClientStore,
        issuer: TokenIssuer,
        inspector: TokenInspector,
        session_revoked: Callable[[str], bool],
        max_chain_depth: int = MAX_CHAIN_DEPTH,
        now: Callable[[], float] = time.time,
    ) -> None:
        if max_chain_depth < 1:
            raise ValueError("max_chain_depth must be at least 1")
        self._authenticator = authenticator
        self._clients = clients
        self._issuer = issuer
        self._inspector = inspector
        self._session_revoked = session_revoked
        self._max_depth = max_chain_depth
        self._now = now

    def exchange(self, request: ExchangeRequest) -> TokenGrant:
        """Exchange ``request.subject_token`` for a token to ``request.audience``.

        Raises:
            OAuthError: The RFC 6749 §5.2 / RFC 8693 §2.2.2 error to report.
        """
        if not request.subject_token:
            raise OAuthInvalidRequest("subject_token is required")
        if request.subject_token_type != ACCESS_TOKEN_TYPE:
            raise OAuthInvalidRequest("subject_token_type must be an access token")
        if request.requested_token_type not in ("", ACCESS_TOKEN_TYPE):
            raise OAuthInvalidRequest("only access tokens are issued")
        client = self._authenticator.authenticate(request.credentials, address=request.address)
        subject = self._subject(request.subject_token, client)
        target = request.audience
        if not target or target not in client.exchange_audiences:
            raise InvalidTarget()
        scopes = _exchanged_scopes(request.scope, subject, client.exchange_scope_cap(target))
        if len(subject.actors) + 1 > self._max_depth:
            raise ChainTooDeep()
        act: dict[str, Any] = {"sub": client.id}
        previous = subject.claims.get("act")
        if isinstance(previous, Mapping):
            act["act"] = dict(previous)
        extra: dict[str, object] = {"act": act}
        for name in ("sid", "username", "client_id"):
            value = subject.claims.get(name)
            if isinstance(value, str):
                extra[name] = value
        creds = request.credentials
        token = self._issuer.issue_exchanged(
            subject.subject,
            scopes=scopes,
            audience=target,
            not_after=subject.expires_at,
            extra=extra,
            cert_thumbprint=creds.certificate.thumbprint if creds.certificate else None,
        )
        audit_event(
            "token.exchanged",
            client_id=client.id,
            sub=subject.subject,
            sid=subject.session_id,
            aud=target,
            scope=token.scope,
            depth=len(subject.actors) + 1,
            jti=token.token_id,
            address=request.address,
        )
        return TokenGrant(
            access_token=token.access_token,
            token_type="Bearer",  # noqa: S106 - the OAuth token type, not a secret
            expires_in=token.expires_in,
            refresh_token="",  # RFC 8693 §2.2.1: none for a short-lived delegation
            scope=token.scope,
            user_id=subject.subject,
            session_id=subject.session_id or "",
            client_id=client.id,
        )

    def _subject(self, token: str, client: Client) -> Principal:
        principal = self._inspector.inspect(token)
        if principal is None:
            raise InvalidGrant()
        if principal.claims.get("aud") != client.id:
            # The acting service must have received the token as its audience.
            _LOGGER.info("exchange by %s refused: subject token is not for it", client.id)
            raise InvalidGrant()
        if principal.session_id is not None:
            # The published list may lag a revocation by another replica; the database not.
            if self._session_revoked(principal.session_id):
                raise InvalidGrant()
        elif principal.is_service or principal.client_id is not None:
            if not client.exchange_services:
                raise InvalidGrant()
            owner = self._clients.get(principal.client_id or "")
            if owner is None or owner.disabled:
                raise InvalidGrant()
        else:
            raise InvalidGrant()  # neither a session nor a client: not a token we issue
        return principal


def _exchanged_scopes(
    requested: str, subject: Principal, cap: frozenset[str] | None
) -> tuple[str, ...]:
    """Requested (or all) ⊆ the subject's scopes ∩ the target's cap, else ``invalid_scope``."""
    ceiling = subject.scopes if cap is None else subject.scopes & cap
    if not requested.strip():
        return tuple(sorted(ceiling))
    try:
        wanted = validate_scopes(requested.split())
    except InvalidRequest:
        raise InvalidScope("scope is malformed") from None
    if not set(wanted) <= ceiling:
        raise InvalidScope()
    return wanted
