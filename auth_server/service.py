"""The gRPC face of the token authority: parse, delegate, map errors to status codes.

RPC methods just raise; :func:`_status_on_error` turns any exception into the
call's status in one place (:func:`_abort`): an :class:`AuthServerError`'s
code and client-safe message, anything else ``INTERNAL`` with a fixed text.
An :class:`OAuthError` (the ``Token`` RPC) also carries its RFC 6749 §5.2 code
as the ``oauth-error`` trailing metadata entry.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import math
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, NoReturn, TypeAlias, TypeVar

import grpc

from auth_server.audit import audit_event, notify_listener
from auth_server.authority import JwksSnapshot, TokenAuthority, TokenGrant
from auth_server.config import DEFAULT_MAX_LOGIN_REQUEST_SIZE
from auth_server.errors import (
    AuthServerError,
    InvalidCredentials,
    InvalidRequest,
    LoginThrottled,
    OAuthError,
    OAuthServerError,
    RefreshTokenReused,
    RetryLater,
)
from auth_server.hashing import HashingPool
from auth_server.oauth import OAuthEndpoint
from auth_server.oauth_grpc import oauth_trailers, token_request
from auth_server.publisher import JwksPublisher
from auth_server.revocations import RevocationBatch, RevocationPublisher
from auth_server.throttle import client_address
from auth_server.tls import client_cert_thumbprint
from auth_server.watch_auth import WatchGrant, WatchGuard
from interceptors._reconnect import SHUTTING_DOWN
from protos import auth_pb2, auth_pb2_grpc

_LOGGER = logging.getLogger(__name__)


def jwks_message(snapshot: JwksSnapshot) -> auth_pb2.JwkSet:
    fields = ("kty", "kid", "use", "alg", "n", "e", "crv", "x", "y")
    keys = [auth_pb2.Jwk(**{f: k[f] for f in fields if f in k}) for k in snapshot.keys]
    return auth_pb2.JwkSet(keys=keys, max_age_seconds=snapshot.max_age, etag=snapshot.etag)


def revocation_message(batch: RevocationBatch) -> auth_pb2.RevocationUpdate:
    # A batch is shared by every watcher it goes to (the parts of a full list,
    # and each delta: RevocationPublisher._changes): build each message once.
    cached = batch.memo.get("pb")
    if isinstance(cached, auth_pb2.RevocationUpdate):
        return cached
    message = auth_pb2.RevocationUpdate(
        full=batch.full,
        full_list_continues=batch.continues,
        sessions=[
            auth_pb2.RevokedSession(session_id=sid, expires_at=math.ceil(exp))
            for sid, exp in batch.sessions.items()
        ],
        watermarks=[
            auth_pb2.RevocationWatermark(
                subject=subject,
                issued_before=mark.issued_before,
                expires_at=math.ceil(mark.expires_at),
            )
            for subject, mark in batch.watermarks.items()
        ],
    )
    batch.memo["pb"] = message
    return message


def _token_response(grant: TokenGrant) -> auth_pb2.TokenResponse:
    return auth_pb2.TokenResponse(
        access_token=grant.access_token,
        token_type=grant.token_type,
        expires_in=grant.expires_in,
        refresh_token=grant.refresh_token,
        scope=grant.scope,
    )


async def _abort(context: grpc.aio.ServicerContext[Any, Any], exc: Exception) -> NoReturn:
    """End the call with the status ``exc`` maps to: the one place errors meet the wire."""
    if isinstance(exc, OAuthError):
        # The RFC 6749 §5.2 code rides beside the status (and retry-after when throttled).
        await context.abort(exc.code, exc.message, trailing_metadata=oauth_trailers(exc))
    if isinstance(exc, RetryLater):
        # Throttled or shed. RFC 9110 §10.2.3 semantics, as gRPC trailing metadata:
        # seconds to wait.
        await context.abort(
            exc.code, exc.message, trailing_metadata=(("retry-after", str(exc.retry_after)),)
        )
    if isinstance(exc, AuthServerError):
        await context.abort(exc.code, exc.message)
    # Anything else is a bug or an outage; the client learns nothing of it.
    _LOGGER.error("unexpected %s in auth service", type(exc).__name__, exc_info=exc)
    await context.abort(grpc.StatusCode.INTERNAL, "internal error")


_Servicer = TypeVar("_Servicer")
_Request = TypeVar("_Request")
_Response = TypeVar("_Response")
_Unary: TypeAlias = Callable[
    [_Servicer, _Request, grpc.aio.ServicerContext[_Request, _Response]], Awaitable[_Response]
]


def _status_on_error(
    method: _Unary[_Servicer, _Request, _Response],
) -> _Unary[_Servicer, _Request, _Response]:
    """Let a unary RPC just raise: any exception becomes its status (see :func:`_abort`)."""

    @functools.wraps(method)
    async def call(
        servicer: _Servicer,
        request: _Request,
        context: grpc.aio.ServicerContext[_Request, _Response],
    ) -> _Response:
        try:
            return await method(servicer, request, context)
        except grpc.aio.AbortError:
            raise  # the method already chose its status
        except Exception as exc:  # noqa: BLE001 - mapped to a status, never a traceback
            await _abort(context, exc)

    return call


def _time_left(context: grpc.aio.ServicerContext[Any, Any]) -> float | None:
    """Seconds until the caller's deadline, or ``None`` if it set none."""
    left = context.time_remaining()
    # Without a deadline grpc reports a practically infinite time.
    return left if left is not None and left < 1e6 else None


async def _server_leaving(context: grpc.aio.ServicerContext[Any, Any]) -> NoReturn:
    """End a push stream whose publisher stopped: the server is draining.

    ``UNAVAILABLE`` with this exact text tells a verifier to reopen the stream at
    once (on another replica), not after its backoff (interceptors._reconnect).
    """
    await context.abort(grpc.StatusCode.UNAVAILABLE, SHUTTING_DOWN)


def _login_failure_reason(exc: Exception) -> str:
    if isinstance(exc, InvalidCredentials):
        return "bad_credentials"
    if isinstance(exc, AuthServerError):
        return exc.code.name.lower()
    return "internal"


class AuthServicer(auth_pb2_grpc.AuthServiceServicer):
    """``ssot.auth.v1.AuthService`` over a :class:`TokenAuthority`."""

    def __init__(
        self,
        authority: TokenAuthority,
        publisher: JwksPublisher,
        revocations: RevocationPublisher | None = None,
        *,
        hashing: HashingPool,
        max_login_request_size: int = DEFAULT_MAX_LOGIN_REQUEST_SIZE,
        oauth: OAuthEndpoint | None = None,
        watch_guard: WatchGuard | None = None,
    ) -> None:
        self._oauth = oauth
        # Who may follow WatchJwks/WatchRevocations (--watch-auth); GetJwks stays public.
        self._watch_guard = watch_guard or WatchGuard("none")
        self._authority = authority
        self._hashing = hashing
        self._publisher = publisher
        self._revocations = revocations
        self._max_login_request_size = max_login_request_size
        # The message of the newest key set, built once for every WatchJwks stream.
        self._jwks: tuple[JwksSnapshot, auth_pb2.JwkSet] | None = None

    @_status_on_error
    async def Login(
        self,
        request: auth_pb2.LoginRequest,
        context: grpc.aio.ServicerContext[auth_pb2.LoginRequest, auth_pb2.TokenResponse],
    ) -> auth_pb2.TokenResponse:
        peer = context.peer()
        try:
            grant = await self._login(request, context, peer)
        except Exception as exc:
            # A throttled attempt already has its own, more specific line (login.throttled);
            # shed ones are counted and logged by the pool, not one line each.
            if not isinstance(exc, RetryLater):
                audit_event("login.failed", reason=_login_failure_reason(exc), peer=peer)
            elif not isinstance(exc, LoginThrottled):
                notify_listener("login.shed")
            raise
        audit_event("login.succeeded", user_id=grant.user_id, sid=grant.session_id, peer=peer)
        return _token_response(grant)

    async def _login(
        self,
        request: auth_pb2.LoginRequest,
        context: grpc.aio.ServicerContext[auth_pb2.LoginRequest, auth_pb2.TokenResponse],
        peer: str,
    ) -> TokenGrant:
        # Unknown fields count too: they would otherwise ride along unchecked.
        if request.ByteSize() > self._max_login_request_size:
            raise InvalidRequest("login request too large")
        # Over mutual TLS the token is bound to the client's certificate (RFC 8705).
        thumbprint = client_cert_thumbprint(context.auth_context())
        # On the password-check pool, never the default executor, so Refresh, Logout
        # and key work do not queue behind argon2; shed at once when it cannot
        # answer in time (issue 15).
        return await self._hashing.run(
            functools.partial(
                self._authority.login,
                request.username,
                request.password,
                request.scope,
                address=client_address(peer),
                cert_thumbprint=thumbprint,
                audience=request.audience,
            ),
            time_left=_time_left(context),
        )

    @_status_on_error
    async def Token(
        self,
        request: auth_pb2.TokenRequest,
        context: grpc.aio.ServicerContext[auth_pb2.TokenRequest, auth_pb2.TokenResponse],
    ) -> auth_pb2.TokenResponse:
        # Size is bounded by --max-message-size; the core checks every field.
        if self._oauth is None:
            raise OAuthServerError()  # a server built without one: the INTERNAL it always was
        grant = await self._oauth.token(token_request(request, context))
        return _token_response(grant)

    @_status_on_error
    async def Refresh(
        self,
        request: auth_pb2.RefreshRequest,
        context: grpc.aio.ServicerContext[auth_pb2.RefreshRequest, auth_pb2.TokenResponse],
    ) -> auth_pb2.TokenResponse:
        # A session opened over mutual TLS refreshes only with the same certificate,
        # and its new access token keeps the binding (RFC 8705 §4).
        thumbprint = client_cert_thumbprint(context.auth_context())
        try:
            grant = await asyncio.to_thread(
                functools.partial(
                    self._authority.refresh, request.refresh_token, cert_thumbprint=thumbprint
                )
            )
        except RefreshTokenReused:
            # The session was revoked just now: push that before answering.
            await self._push_revocations()
            raise
        return _token_response(grant)

    @_status_on_error
    async def Logout(
        self,
        request: auth_pb2.LogoutRequest,
        context: grpc.aio.ServicerContext[auth_pb2.LogoutRequest, auth_pb2.LogoutResponse],
    ) -> auth_pb2.LogoutResponse:
        await asyncio.to_thread(self._authority.logout, request.refresh_token)
        # Handed to every WatchRevocations stream before Logout returns.
        await self._push_revocations()
        return auth_pb2.LogoutResponse()

    async def WatchRevocations(
        self,
        request: auth_pb2.WatchRevocationsRequest,
        context: grpc.aio.ServicerContext[
            auth_pb2.WatchRevocationsRequest, auth_pb2.RevocationUpdate
        ],
    ) -> AsyncIterator[auth_pb2.RevocationUpdate]:
        if self._revocations is None:
            await context.abort(grpc.StatusCode.UNIMPLEMENTED, "revocations are not published")
        grant = await self._admit_watcher(context)
        if not request.watermarks:
            _LOGGER.warning(
                "a verifier at %s follows WatchRevocations without watermark support: it does"
                " not learn of mass revocations (sessions revoke --user/--all, users disable)",
                context.peer(),
            )
        try:
            async for batch in self._watch_guard.until_expiry(grant, self._revocations.watch()):
                yield revocation_message(batch)
        except AuthServerError as exc:  # the token expired: reconnect with a fresh one
            await _abort(context, exc)
        await _server_leaving(context)

    async def _admit_watcher(self, context: grpc.aio.ServicerContext[Any, Any]) -> WatchGrant:
        """The subscriber's grant under ``--watch-auth``; the call ends at once if refused."""
        try:
            return self._watch_guard.admit(context.invocation_metadata(), context.auth_context())
        except AuthServerError as exc:
            _LOGGER.info("watch refused for %s: %s", context.peer(), exc.message)
            await _abort(context, exc)

    async def _push_revocations(self) -> None:
        if self._revocations is None:
            return
        try:
            await self._revocations.refresh()
        except AuthServerError as exc:
            # The revocation is committed; the poll loop will publish it.
            _LOGGER.warning("could not publish a revocation at once: %s", exc.message)

    async def GetJwks(
        self,
        request: auth_pb2.GetJwksRequest,
        context: grpc.aio.ServicerContext[auth_pb2.GetJwksRequest, auth_pb2.JwkSet],
    ) -> auth_pb2.JwkSet:
        # Never behind --watch-auth: the same public keys /.well-known/jwks.json serves.
        return self._jwks_message(self._publisher.snapshot)

    async def WatchJwks(
        self,
        request: auth_pb2.WatchJwksRequest,
        context: grpc.aio.ServicerContext[auth_pb2.WatchJwksRequest, auth_pb2.JwkSet],
    ) -> AsyncIterator[auth_pb2.JwkSet]:
        grant = await self._admit_watcher(context)
        try:
            async for snapshot in self._watch_guard.until_expiry(grant, self._publisher.watch()):
                yield self._jwks_message(snapshot)
        except AuthServerError as exc:  # the token expired: reconnect with a fresh one
            await _abort(context, exc)
        await _server_leaving(context)

    def _jwks_message(self, snapshot: JwksSnapshot) -> auth_pb2.JwkSet:
        cached = self._jwks
        if cached is None or cached[0] is not snapshot:
            cached = self._jwks = (snapshot, jwks_message(snapshot))
        return cached[1]
