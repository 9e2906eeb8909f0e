"""The OAuth 2.0 token endpoint core, shared by the gRPC ``Token`` RPC and ``POST /oauth2/token``.

One core, two faces: :class:`OAuthEndpoint` takes requests already parsed into
plain values (:class:`TokenRequest`, :class:`ClientCredentials`) and either
returns a result or raises an :class:`~auth_server.errors.OAuthError` carrying the
RFC 6749 §5.2 code; the faces only render them. Blocking work runs in worker
threads; a revocation is pushed to verifiers before the call returns.

Grants: ``client_credentials`` (RFC 6749 §4.4), ``refresh_token`` (§6) and token
exchange (RFC 8693, :mod:`auth_server.token_exchange`; with an upstream ID token as
the subject, a federated sign-in: :mod:`auth_server.federation`). The resource-owner
password grant is the gRPC ``Login`` only (RFC 9700 §2.4).
"""

from __future__ import annotations

import asyncio
import functools
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar

from auth_server.audit import audit_event
from auth_server.authority import TokenAuthority, TokenGrant
from auth_server.client_auth import ClientAuthenticator, ClientCredentials
from auth_server.clients import Client, ClientStore
from auth_server.errors import (
    AuthServerError,
    InvalidRefreshToken,
    InvalidRequest,
    InvalidScope,
    InvalidTarget,
    OAuthError,
    OAuthInvalidRequest,
    RefreshTokenReused,
    UnauthorizedClient,
    UnsupportedGrantType,
    as_oauth_error,
)
from auth_server.federation import ID_TOKEN_TYPE, FederatedSignIn, SignInRequest
from auth_server.refresh_tokens import checked_hash
from auth_server.sessions import SessionStore
from auth_server.token_exchange import (
    ACCESS_TOKEN_TYPE,
    TOKEN_EXCHANGE,
    ExchangeRequest,
    TokenExchange,
)
from auth_server.token_inspector import TokenInspector
from auth_server.tokens import TokenIssuer
from auth_server.users import validate_scopes

_LOGGER = logging.getLogger(__name__)
_T = TypeVar("_T")

CLIENT_CREDENTIALS = "client_credentials"
REFRESH_TOKEN = "refresh_token"  # noqa: S105 - a grant type name, not a secret
GRANT_TYPES = (CLIENT_CREDENTIALS, REFRESH_TOKEN, TOKEN_EXCHANGE)
#: The scope a client needs to call the introspection endpoint (RFC 7662 §2.1).
INTROSPECT_SCOPE = "ssot.introspect"
MAX_SCOPE_BYTES = 2048
MAX_TOKEN_BYTES = 8192


class IntrospectionForbidden(UnauthorizedClient):
    """An authenticated client without the introspection scope."""

    http_status = 403
    message = "the client may not introspect tokens"


@dataclass(frozen=True, kw_only=True)
class TokenRequest:
    """An RFC 6749 token request, its parameters by their OAuth names.

    Attributes:
        grant_type: ``client_credentials`` or ``refresh_token``.
        scope: Space-separated scopes wanted; empty means all the client may have.
        audience: The ``aud`` wanted (RFC 8693 ``audience``); empty means the default.
        resource: The same, as an RFC 8707 ``resource`` indicator.
        refresh_token: For the ``refresh_token`` grant (never log it).
        subject_token: For token exchange (RFC 8693 §2.1; never log it).
        subject_token_type: Its type URN.
        requested_token_type: The type URN wanted, or empty.
        credentials: What the request presented to authenticate its client.
        address: The caller's address, for throttling and the audit trail.
    """

    grant_type: str
    scope: str = ""
    audience: str = ""
    resource: str = ""
    refresh_token: str = field(default="", repr=False)
    subject_token: str = field(default="", repr=False)
    subject_token_type: str = ""
    requested_token_type: str = ""
    credentials: ClientCredentials = field(default_factory=ClientCredentials)
    address: str = ""


class OAuthEndpoint:
    """Token, revocation and introspection: the logic behind both faces."""

    def __init__(
        self,
        *,
        authority: TokenAuthority,
        clients: ClientStore,
        authenticator: ClientAuthenticator,
        issuer: TokenIssuer,
        sessions: SessionStore,
        inspector: TokenInspector,
        push_revocations: Callable[[], Awaitable[None]] | None = None,
        exchange: TokenExchange | None = None,
        federation: FederatedSignIn | None = None,
    ) -> None:
        self._authority = authority
        self._clients = clients
        self._authenticator = authenticator
        self._issuer = issuer
        self._sessions = sessions
        self._inspector = inspector
        self._push = push_revocations
        self._exchange = exchange
        self._federation = federation

    # -- the async faces' entry points ------------------------------------------------------

    async def token(self, request: TokenRequest) -> TokenGrant:
        """Run a token request.

        Raises:
            OAuthError: The RFC 6749 §5.2 error to report.
        """
        return await self._run(functools.partial(self.token_blocking, request))

    async def revoke(
        self, token: str, credentials: ClientCredentials, *, address: str, hint: str = ""
    ) -> None:
        """RFC 7009: end the session of a refresh or access token; unknown tokens are no error.

        Raises:
            OAuthError: Missing token, or presented client credentials that fail.
        """
        ended = await self._run(
            functools.partial(self.revoke_blocking, token, credentials, address=address, hint=hint)
        )
        if ended:
            await self._push_revocations()

    async def introspect(
        self, token: str, credentials: ClientCredentials, *, address: str
    ) -> dict[str, Any]:
        """RFC 7662: ``{"active": false}`` or ``{"active": true, ...claims}``.

        Raises:
            OAuthError: The caller is not an authenticated client holding ``ssot.introspect``.
        """
        return await self._run(
            functools.partial(self.introspect_blocking, token, credentials, address=address)
        )

    async def _run(self, call: Callable[[], _T]) -> _T:
        try:
            return await asyncio.to_thread(call)
        except RefreshTokenReused as exc:
            # The session was revoked just now: verifiers hear it before the client does.
            await self._push_revocations()
            raise as_oauth_error(exc) from None
        except OAuthError:
            raise
        except AuthServerError as exc:
            raise as_oauth_error(exc) from None
        except Exception as exc:  # a server_error, never a traceback
            _LOGGER.error("unexpected %s at the token endpoint", type(exc).__name__, exc_info=exc)
            raise as_oauth_error(exc) from None

    async def _push_revocations(self) -> None:
        if self._push is not None:
            await self._push()

    # -- blocking logic ----------------------------------------------------------------------

    def token_blocking(self, request: TokenRequest) -> TokenGrant:
        """The logic of :meth:`token`, blocking (database work, signing)."""
        if not request.grant_type:
            raise OAuthInvalidRequest("grant_type is required")
        if len(request.scope.encode("utf-8", "surrogatepass")) > MAX_SCOPE_BYTES:
            raise InvalidScope("scope is too long")
        if request.audience and request.resource and request.audience != request.resource:
            raise InvalidTarget("give one audience")
        if request.grant_type == CLIENT_CREDENTIALS:
            return self._client_credentials(request)
        if request.grant_type == REFRESH_TOKEN:
            return self._refresh(request)
        if (
            request.grant_type == TOKEN_EXCHANGE
            and request.subject_token_type == ID_TOKEN_TYPE
            and self._federation is not None
        ):
            if request.requested_token_type not in ("", ACCESS_TOKEN_TYPE):
                raise OAuthInvalidRequest("only access tokens are issued")
            return self._federation.sign_in(
                SignInRequest(
                    id_token=request.subject_token,
                    scope=request.scope,
                    audience=request.audience or request.resource,
                    credentials=request.credentials,
                    address=request.address,
                )
            )
        if request.grant_type == TOKEN_EXCHANGE and self._exchange is not None:
            return self._exchange.exchange(
                ExchangeRequest(
                    subject_token=request.subject_token,
                    subject_token_type=request.subject_token_type,
                    requested_token_type=request.requested_token_type,
                    audience=request.audience or request.resource,
                    scope=request.scope,
                    credentials=request.credentials,
                    address=request.address,
                )
            )
        if request.grant_type == "password":
            raise UnsupportedGrantType("the password grant is offered only as the gRPC Login")
        raise UnsupportedGrantType()

    def _client_credentials(self, request: TokenRequest) -> TokenGrant:
        creds = request.credentials
        client = self._authenticator.authenticate(creds, address=request.address)
        scopes = _granted_scopes(request.scope, client)
        audience = _granted_audience(request.audience or request.resource, client)
        thumbprint = creds.certificate.thumbprint if creds.certificate else None
        token = self._issuer.issue_for_client(
            client.id, scopes=scopes, audience=audience, cert_thumbprint=thumbprint
        )
        try:
            self._clients.note_used(client)
        except AuthServerError:
            _LOGGER.warning("could not record the last use of client %s", client.id)
        audit_event(
            "client.token_issued",
            client_id=client.id,
            method=client.auth_method,
            aud=audience,
            scope=token.scope,
            jti=token.token_id,
            address=request.address,
            bound=thumbprint is not None,
        )
        return TokenGrant(
            access_token=token.access_token,
            token_type="Bearer",  # noqa: S106 - the OAuth token type, not a secret
            expires_in=token.expires_in,
            refresh_token="",  # RFC 6749 §4.4.3: SHOULD NOT be included
            scope=token.scope,
            client_id=client.id,
        )

    def _refresh(self, request: TokenRequest) -> TokenGrant:
        creds = request.credentials
        # Sessions belong to users, not clients (they start at the gRPC Login), so a
        # refresh needs no client; credentials that are presented must still be right.
        if creds.presented:
            self._authenticator.authenticate(creds, address=request.address)
        if not request.refresh_token:
            raise OAuthInvalidRequest("refresh_token is required")
        thumbprint = creds.certificate.thumbprint if creds.certificate else None
        # Audience and scope are checked against the session before its token is
        # spent, so a refused request leaves the refresh token good.
        return self._authority.refresh(
            request.refresh_token,
            cert_thumbprint=thumbprint,
            audience=request.audience or request.resource,
            scope=_scopes(request.scope) if request.scope.strip() else (),
        )

    def revoke_blocking(
        self, token: str, credentials: ClientCredentials, *, address: str, hint: str = ""
    ) -> bool:
        """The logic of :meth:`revoke`; True when a session ended (to push)."""
        if credentials.presented:
            self._authenticator.authenticate(credentials, address=address)
        if not token:
            raise OAuthInvalidRequest("token is required")
        if len(token) > MAX_TOKEN_BYTES:
            return False
        # RFC 7009 §2.1: the hint only orders the lookups; both kinds are tried.
        if _looks_like_refresh_token(token):
            try:
                ended = self._authority.logout(token)
            except InvalidRefreshToken:
                return False
            audit_event("token.revoked", kind="refresh_token", sid=ended.session_id)
            return not ended.already_ended
        principal = self._inspector.inspect(token)
        if principal is None or principal.session_id is None:
            # Unknown, expired, or a client-credentials token (no session: it lives at most
            # its 15 minutes, and its client can be disabled): RFC 7009 §2.2 says 200.
            return False
        ended_now = self._sessions.revoke(principal.session_id, reason="token_revoked")
        audit_event("token.revoked", kind="access_token", sid=principal.session_id)
        return ended_now

    def introspect_blocking(
        self, token: str, credentials: ClientCredentials, *, address: str
    ) -> dict[str, Any]:
        """The logic of :meth:`introspect`."""
        client = self._authenticator.authenticate(credentials, address=address)
        if INTROSPECT_SCOPE not in client.scopes:
            raise IntrospectionForbidden()
        if not token:
            raise OAuthInvalidRequest("token is required")
        principal = self._inspector.inspect(token)
        if principal is None:
            return {"active": False}
        owner = principal.claims.get("client_id")
        if isinstance(owner, str):
            # A client-credentials token dies with its client (disabled or removed).
            current = self._clients.get(owner)
            if current is None or current.disabled:
                return {"active": False}
        return {"active": True, "token_type": "Bearer", **dict(principal.claims)}


def _scopes(scope: str) -> tuple[str, ...]:
    try:
        return validate_scopes(scope.split())
    except InvalidRequest:
        raise InvalidScope("scope is malformed") from None


def _granted_scopes(requested: str, client: Client) -> tuple[str, ...]:
    """Requested ∩ allowed; RFC 6749 §5.2 ``invalid_scope`` when a requested one is not allowed."""
    if not requested.strip():
        return client.scopes
    wanted = _scopes(requested)
    if not set(wanted) <= set(client.scopes):
        raise InvalidScope()
    return wanted


def _granted_audience(requested: str, client: Client) -> str:
    if not requested:
        return client.audiences[0]
    if requested not in client.audiences:
        raise InvalidTarget()
    return requested


def _looks_like_refresh_token(token: str) -> bool:
    try:
        checked_hash(token)
    except InvalidRefreshToken:
        return False
    return True
