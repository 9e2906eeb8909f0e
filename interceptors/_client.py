"""Client-side token helpers: log in once, keep the access token fresh, attach it to every call.

A client developer builds one manager per identity and lets it handle the
``AuthService`` round trips::

    auth = grpc.insecure_channel("127.0.0.1:50051")
    tokens = TokenManager(auth, "alice", "s3cret", scope="resource.read")
    channel = grpc.intercept_channel(grpc.insecure_channel(target), tokens.interceptor())
    # or, on a TLS channel:
    creds = grpc.composite_channel_credentials(
        grpc.ssl_channel_credentials(), tokens.call_credentials()
    )

How the token is kept (one sans-I/O core, :class:`_TokenCore`, decides; the
sync and asyncio managers only perform the RPCs it asks for):

- The first :meth:`TokenManager.token` logs in (or, given only a refresh
  token, refreshes). The token is renewed once less than
  ``min(refresh_margin, 20% of its lifetime)`` is left, so a caller never
  sends a token that is about to expire.
- Renewal uses ``Refresh`` while the manager holds a refresh token. When
  ``Refresh`` answers ``UNIMPLEMENTED`` (servers without refresh support) or
  ``UNAUTHENTICATED`` (spent, expired or revoked session) and the manager
  holds the password, it logs in again instead. ``Refresh`` is tried again on
  every renewal, so a server upgraded to support it is used at once.
- Concurrent callers share one renewal (single flight): twenty threads or
  tasks asking at once cause one ``Login``.

Errors: a failed ``Login``/``Refresh`` surfaces as the :class:`grpc.RpcError`
the auth service returned, unchanged, so its status code is there to inspect.
An answer that holds no usable token (no ``access_token``, ``expires_in <= 0``,
a ``token_type`` other than Bearer), or a manager with no credential left to
ask with, raises :class:`TokenRequestError`. Neither ever carries the password
or a token; the managers' reprs do not show them either.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import threading
import time
from collections.abc import (
    AsyncIterable,
    AsyncIterator,
    Awaitable,
    Callable,
    Iterable,
    Iterator,
)
from concurrent.futures import Future
from typing import TYPE_CHECKING, TypeVar

import grpc
from grpc import aio

from interceptors._errors import AuthError
from protos import auth_pb2, auth_pb2_grpc

if TYPE_CHECKING:
    from grpc import _CallFuture, _CallIterator

__all__ = [
    "AsyncTokenManager",
    "BearerClientInterceptor",
    "TokenManager",
    "TokenRequestError",
]

_LOGGER = logging.getLogger(__name__)

_AUTHORIZATION = "authorization"
_BEARER = "Bearer"
# The token is renewed when less than min(refresh_margin, this share of its lifetime) is left,
# so a short-lived token is not renewed on every call.
_MAX_MARGIN_SHARE = 0.2

_TRequest = TypeVar("_TRequest")
_TResponse = TypeVar("_TResponse")
_Metadata = tuple[tuple[str, str | bytes], ...]


class TokenRequestError(AuthError):
    """The auth service gave no usable token, or there is no credential left to ask with.

    Failed ``Login``/``Refresh`` RPCs are not wrapped in this error: they surface as the
    auth service's own :class:`grpc.RpcError`, so its status code can be inspected.
    """

    message = "token request failed"


@dataclasses.dataclass(frozen=True, slots=True)
class _LoginStep:
    request: auth_pb2.LoginRequest = dataclasses.field(repr=False)


@dataclasses.dataclass(frozen=True, slots=True)
class _RefreshStep:
    request: auth_pb2.RefreshRequest = dataclasses.field(repr=False)


_Step = _LoginStep | _RefreshStep


class _TokenCore:
    """The token state machine, free of I/O: which RPC to send next and what its answer means.

    Not thread-safe on its own; the managers serialise access to it.
    """

    def __init__(
        self,
        *,
        username: str,
        password: str | None,
        refresh_token: str | None,
        scope: str,
        refresh_margin: float,
        now: Callable[[], float],
    ) -> None:
        if not username:
            raise ValueError("username must not be empty")
        if password is None and not refresh_token:
            raise ValueError("a password or a refresh token is required")
        if refresh_margin < 0:
            raise ValueError("refresh_margin must not be negative")
        self.username = username
        self.scope = scope
        self._password = password
        self._refresh_token = refresh_token or None
        self._refresh_margin = refresh_margin
        self._now = now
        self._access_token: str | None = None
        self._renew_at = 0.0
        self._sent_at = 0.0

    def __repr__(self) -> str:
        return f"_TokenCore(username={self.username!r}, has_token={self.has_token})"

    @property
    def has_token(self) -> bool:
        """Whether an access token is held (fresh or not)."""
        return self._access_token is not None

    def fresh_token(self) -> str | None:
        """The current token if it needs no renewal yet, else ``None``."""
        if self._access_token is not None and self._now() < self._renew_at:
            return self._access_token
        return None

    def first_step(self) -> _Step:
        """The RPC that starts a renewal: ``Refresh`` when possible, else ``Login``."""
        if self._refresh_token is not None:
            return self._start(
                _RefreshStep(auth_pb2.RefreshRequest(refresh_token=self._refresh_token))
            )
        if self._password is not None:
            return self._login()
        raise TokenRequestError("no password or refresh token left to obtain a token with")

    def after_failure(self, step: _Step, code: grpc.StatusCode | None) -> _Step | None:
        """The RPC to try after ``step`` failed with ``code``, or ``None`` to give up."""
        if not isinstance(step, _RefreshStep):
            return None
        if code is grpc.StatusCode.UNAUTHENTICATED:
            # The refresh token is spent, expired or revoked: it will never work again.
            self._refresh_token = None
        elif code is not grpc.StatusCode.UNIMPLEMENTED:
            return None
        if self._password is None:
            return None
        _LOGGER.info("Refresh for %s answered %s; logging in again", self.username, code)
        return self._login()

    def accept(self, response: auth_pb2.TokenResponse) -> str:
        """Take a ``TokenResponse`` to the last step into the state and return its token.

        Raises:
            TokenRequestError: the response holds no usable token.
        """
        if not response.access_token:
            raise TokenRequestError("token response has no access_token")
        if response.token_type and response.token_type.lower() != _BEARER.lower():
            raise TokenRequestError("token response has an unsupported token_type")
        if response.expires_in <= 0:
            raise TokenRequestError("token response has a non-positive expires_in")
        lifetime = float(response.expires_in)
        margin = min(self._refresh_margin, lifetime * _MAX_MARGIN_SHARE)
        # Counted from when the request was sent: the server's clock started no earlier.
        self._renew_at = self._sent_at + lifetime - margin
        self._access_token = response.access_token
        if response.refresh_token:
            self._refresh_token = response.refresh_token
        _LOGGER.debug("new access token for %s, expires in %d s", self.username, lifetime)
        return response.access_token

    def invalidate(self, token: str) -> None:
        """Forget ``token`` if it is still the current one."""
        if token == self._access_token:
            self._access_token = None

    def _login(self) -> _Step:
        assert self._password is not None
        return self._start(
            _LoginStep(
                auth_pb2.LoginRequest(
                    username=self.username, password=self._password, scope=self.scope
                )
            )
        )

    def _start(self, step: _Step) -> _Step:
        self._sent_at = self._now()
        return step


def _status_code(error: grpc.RpcError) -> grpc.StatusCode | None:
    code = getattr(error, "code", None)
    if not callable(code):
        return None
    result = code()
    return result if isinstance(result, grpc.StatusCode) else None


def _bearer_pairs(metadata: Iterable[tuple[str, str | bytes]] | None, token: str) -> _Metadata:
    kept = tuple((key, value) for key, value in metadata or () if key.lower() != _AUTHORIZATION)
    return (*kept, (_AUTHORIZATION, f"{_BEARER} {token}"))


def _remaining(timeout: float | None, started: float) -> float | None:
    if timeout is None:
        return None
    return timeout - (time.monotonic() - started)


def _check_timeout(timeout: float) -> None:
    if timeout <= 0:
        raise ValueError("timeout must be positive")


class TokenManager:
    """Obtains and renews an access token for one identity; thread-safe.

    Args:
        auth_channel: A channel to the auth service (no credentials or interceptor of this
            manager on it).
        username: The account to log in as.
        password: The account's password. Without it the manager can only refresh, starting
            from ``refresh_token``, and fails once that session ends.
        refresh_token: A refresh token to start from instead of logging in.
        scope: Scopes to ask for at login (space-separated); empty asks for all.
        refresh_margin: Renew when fewer seconds than this (or than 20% of the token's
            lifetime, whichever is smaller) are left.
        timeout: Deadline in seconds for each ``Login``/``Refresh`` RPC.
        now: The clock, in seconds since the epoch.

    Raises:
        ValueError: an empty username, neither password nor refresh token, a negative margin
            or a non-positive timeout.
    """

    def __init__(
        self,
        auth_channel: grpc.Channel,
        username: str,
        password: str | None = None,
        *,
        refresh_token: str | None = None,
        scope: str = "",
        refresh_margin: float = 60.0,
        timeout: float = 10.0,
        now: Callable[[], float] = time.time,
    ) -> None:
        _check_timeout(timeout)
        self._core = _TokenCore(
            username=username,
            password=password,
            refresh_token=refresh_token,
            scope=scope,
            refresh_margin=refresh_margin,
            now=now,
        )
        self._stub = auth_pb2_grpc.AuthServiceStub(auth_channel)
        self._timeout = timeout
        self._lock = threading.Lock()
        self._flight: Future[str] | None = None

    def __repr__(self) -> str:
        return (
            f"TokenManager(username={self._core.username!r}, scope={self._core.scope!r}, "
            f"has_token={self._core.has_token})"
        )

    def token(self) -> str:
        """Return a valid access token, logging in or renewing it first when needed.

        Concurrent callers share one ``Login``/``Refresh``.

        Raises:
            grpc.RpcError: the auth service refused or failed the request.
            TokenRequestError: the answer held no usable token, or no credential is left.
        """
        with self._lock:
            token = self._core.fresh_token()
            if token is not None:
                return token
            flight = self._flight
            leader = flight is None
            if flight is None:
                flight = self._flight = Future()
        if not leader:
            return flight.result()
        try:
            token = self._renew()
        except BaseException as exc:
            self._land(flight)
            flight.set_exception(exc)
            raise
        self._land(flight)
        flight.set_result(token)
        return token

    def invalidate(self, token: str) -> None:
        """Forget ``token`` if it is still the current one, so the next :meth:`token` renews."""
        with self._lock:
            self._core.invalidate(token)

    def metadata(self) -> _Metadata:
        """Return call metadata holding the current token: ``(("authorization", "Bearer …"),)``."""
        return _bearer_pairs((), self.token())

    def call_credentials(self) -> grpc.CallCredentials:
        """Return call credentials that send the current token (TLS or local channels only).

        gRPC sends call credentials only over secure channels. They renew the token ahead of
        expiry but cannot retry a call the server rejects; use :meth:`interceptor` (which
        also works on TLS channels) for that, not both at once.
        """
        return grpc.metadata_call_credentials(_BearerPlugin(self), name="ssot-bearer")

    def interceptor(self) -> BearerClientInterceptor:
        """Return an interceptor for ``grpc.intercept_channel(channel, interceptor)``."""
        return BearerClientInterceptor(self)

    def _land(self, flight: Future[str]) -> None:
        with self._lock:
            if self._flight is flight:
                self._flight = None

    def _renew(self) -> str:
        with self._lock:
            step: _Step | None = self._core.first_step()
        while step is not None:
            try:
                response = self._send(step)
            except grpc.RpcError as exc:
                with self._lock:
                    step = self._core.after_failure(step, _status_code(exc))
                if step is None:
                    raise
                continue
            with self._lock:
                return self._core.accept(response)
        raise AssertionError("unreachable")  # pragma: no cover

    def _send(self, step: _Step) -> auth_pb2.TokenResponse:
        if isinstance(step, _LoginStep):
            return self._stub.Login(step.request, timeout=self._timeout)
        return self._stub.Refresh(step.request, timeout=self._timeout)


class AsyncTokenManager:
    """The asyncio face of :class:`TokenManager`: same arguments and behaviour.

    Concurrent tasks share one ``Login``/``Refresh``; a task cancelled while waiting does not
    cancel the shared request. Use it from one event loop.
    """

    def __init__(
        self,
        auth_channel: aio.Channel,
        username: str,
        password: str | None = None,
        *,
        refresh_token: str | None = None,
        scope: str = "",
        refresh_margin: float = 60.0,
        timeout: float = 10.0,
        now: Callable[[], float] = time.time,
    ) -> None:
        _check_timeout(timeout)
        self._core = _TokenCore(
            username=username,
            password=password,
            refresh_token=refresh_token,
            scope=scope,
            refresh_margin=refresh_margin,
            now=now,
        )
        self._stub = auth_pb2_grpc.AuthServiceStub(auth_channel)
        self._timeout = timeout
        self._flight: asyncio.Task[str] | None = None

    def __repr__(self) -> str:
        return (
            f"AsyncTokenManager(username={self._core.username!r}, scope={self._core.scope!r}, "
            f"has_token={self._core.has_token})"
        )

    async def token(self) -> str:
        """Return a valid access token, logging in or renewing it first when needed.

        Raises:
            grpc.aio.AioRpcError: the auth service refused or failed the request.
            TokenRequestError: the answer held no usable token, or no credential is left.
        """
        token = self._core.fresh_token()
        if token is not None:
            return token
        flight = self._flight
        if flight is None or flight.done():
            flight = self._flight = asyncio.get_running_loop().create_task(self._renew())
            flight.add_done_callback(self._land)
        return await asyncio.shield(flight)

    def invalidate(self, token: str) -> None:
        """Forget ``token`` if it is still the current one, so the next :meth:`token` renews."""
        self._core.invalidate(token)

    async def metadata(self) -> _Metadata:
        """Return call metadata holding the current token: ``(("authorization", "Bearer …"),)``."""
        return _bearer_pairs((), await self.token())

    def interceptors(self) -> list[aio.ClientInterceptor]:
        """Return interceptors for ``grpc.aio.insecure_channel(target, interceptors=...)``.

        One per call kind, as grpc.aio requires. They behave as
        :class:`BearerClientInterceptor`: the token on all four kinds, caller metadata kept,
        one retry of a unary-unary call rejected with ``UNAUTHENTICATED``.
        """
        return [
            _AsyncUnaryUnaryBearer(self),
            _AsyncUnaryStreamBearer(self),
            _AsyncStreamUnaryBearer(self),
            _AsyncStreamStreamBearer(self),
        ]

    def _land(self, flight: asyncio.Task[str]) -> None:
        if self._flight is flight:
            self._flight = None
        if not flight.cancelled():
            # Retrieved here so a failure nobody awaited any more is not reported as unhandled.
            flight.exception()

    async def _renew(self) -> str:
        step: _Step | None = self._core.first_step()
        while step is not None:
            try:
                response = await self._send(step)
            except grpc.RpcError as exc:
                step = self._core.after_failure(step, _status_code(exc))
                if step is None:
                    raise
                continue
            return self._core.accept(response)
        raise AssertionError("unreachable")  # pragma: no cover

    async def _send(self, step: _Step) -> auth_pb2.TokenResponse:
        if isinstance(step, _LoginStep):
            return await self._stub.Login(step.request, timeout=self._timeout)
        return await self._stub.Refresh(step.request, timeout=self._timeout)


class _BearerPlugin(grpc.AuthMetadataPlugin):
    """Call credentials plugin; gRPC runs it on a thread of its own, so it may block."""

    def __init__(self, manager: TokenManager) -> None:
        self._manager = manager

    def __call__(
        self, context: grpc.AuthMetadataContext, callback: grpc.AuthMetadataPluginCallback
    ) -> None:
        try:
            metadata = self._manager.metadata()
        # Any failure must reach gRPC through the callback, which fails the call with it.
        except Exception as exc:  # noqa: BLE001
            callback((), exc)
            return
        callback(metadata, None)


@dataclasses.dataclass(frozen=True)
class _CallDetails(grpc.ClientCallDetails):
    method: str
    timeout: float | None
    metadata: _Metadata | None
    credentials: grpc.CallCredentials | None
    wait_for_ready: bool | None
    compression: grpc.Compression | None


def _with_token(details: grpc.ClientCallDetails, token: str, timeout: float | None) -> _CallDetails:
    return _CallDetails(
        method=details.method,
        timeout=timeout,
        metadata=_bearer_pairs(details.metadata, token),
        credentials=details.credentials,
        wait_for_ready=details.wait_for_ready,
        compression=getattr(details, "compression", None),
    )


class BearerClientInterceptor(
    grpc.UnaryUnaryClientInterceptor,
    grpc.UnaryStreamClientInterceptor,
    grpc.StreamUnaryClientInterceptor,
    grpc.StreamStreamClientInterceptor,
):
    """Sends ``authorization: Bearer <token>`` on every call of a (sync) channel.

    Metadata the caller passed is kept; an ``authorization`` entry in it is replaced.
    A unary-unary call rejected with ``UNAUTHENTICATED`` is retried once with a renewed
    token, within the caller's original deadline (so a ``.future()`` call through this
    interceptor waits for its first attempt to finish). Calls with a response or request
    stream are not retried: their messages may already have been read or consumed, and
    the token is renewed ahead of expiry anyway. No other status code is ever retried.
    """

    def __init__(self, manager: TokenManager) -> None:
        self._manager = manager

    def intercept_unary_unary(
        self,
        continuation: Callable[[grpc.ClientCallDetails, _TRequest], _CallFuture[_TResponse]],
        client_call_details: grpc.ClientCallDetails,
        request: _TRequest,
    ) -> _CallFuture[_TResponse]:
        started = time.monotonic()
        token = self._manager.token()
        details = _with_token(client_call_details, token, client_call_details.timeout)
        outcome = continuation(details, request)
        if outcome.code() is not grpc.StatusCode.UNAUTHENTICATED:
            return outcome
        timeout = _remaining(client_call_details.timeout, started)
        if timeout is not None and timeout <= 0:
            return outcome
        _LOGGER.info("%s was UNAUTHENTICATED; retrying once with a new token", details.method)
        self._manager.invalidate(token)
        retry = _with_token(client_call_details, self._manager.token(), timeout)
        return continuation(retry, request)

    def intercept_unary_stream(
        self,
        continuation: Callable[[grpc.ClientCallDetails, _TRequest], _CallIterator[_TResponse]],
        client_call_details: grpc.ClientCallDetails,
        request: _TRequest,
    ) -> _CallIterator[_TResponse]:
        token = self._manager.token()
        return continuation(
            _with_token(client_call_details, token, client_call_details.timeout), request
        )

    def intercept_stream_unary(
        self,
        continuation: Callable[
            [grpc.ClientCallDetails, Iterator[_TRequest]], _CallFuture[_TResponse]
        ],
        client_call_details: grpc.ClientCallDetails,
        request_iterator: Iterator[_TRequest],
    ) -> _CallFuture[_TResponse]:
        token = self._manager.token()
        return continuation(
            _with_token(client_call_details, token, client_call_details.timeout),
            request_iterator,
        )

    def intercept_stream_stream(
        self,
        continuation: Callable[
            [grpc.ClientCallDetails, Iterator[_TRequest]], _CallIterator[_TResponse]
        ],
        client_call_details: grpc.ClientCallDetails,
        request_iterator: Iterator[_TRequest],
    ) -> _CallIterator[_TResponse]:
        token = self._manager.token()
        return continuation(
            _with_token(client_call_details, token, client_call_details.timeout),
            request_iterator,
        )


def _aio_with_token(
    details: aio.ClientCallDetails, token: str, timeout: float | None
) -> aio.ClientCallDetails:
    return aio.ClientCallDetails(
        details.method,
        timeout,
        aio.Metadata(*_bearer_pairs(details.metadata, token)),
        details.credentials,
        details.wait_for_ready,
    )


class _AsyncBearer:
    """Shared part of the four asyncio interceptors; see :class:`BearerClientInterceptor`."""

    def __init__(self, manager: AsyncTokenManager) -> None:
        self._manager = manager

    async def _details(self, details: aio.ClientCallDetails) -> aio.ClientCallDetails:
        return _aio_with_token(details, await self._manager.token(), details.timeout)


class _AsyncUnaryUnaryBearer(_AsyncBearer, aio.UnaryUnaryClientInterceptor):
    async def intercept_unary_unary(
        self,
        continuation: Callable[
            [aio.ClientCallDetails, _TRequest], Awaitable[aio.UnaryUnaryCall[_TRequest, _TResponse]]
        ],
        client_call_details: aio.ClientCallDetails,
        request: _TRequest,
    ) -> _TResponse | aio.UnaryUnaryCall[_TRequest, _TResponse]:
        started = time.monotonic()
        token = await self._manager.token()
        details = _aio_with_token(client_call_details, token, client_call_details.timeout)
        call = await continuation(details, request)
        if await call.code() is not grpc.StatusCode.UNAUTHENTICATED:
            return call
        timeout = _remaining(client_call_details.timeout, started)
        if timeout is not None and timeout <= 0:
            return call
        _LOGGER.info("%r was UNAUTHENTICATED; retrying once with a new token", details.method)
        self._manager.invalidate(token)
        retry = _aio_with_token(client_call_details, await self._manager.token(), timeout)
        return await continuation(retry, request)


class _AsyncUnaryStreamBearer(_AsyncBearer, aio.UnaryStreamClientInterceptor):
    async def intercept_unary_stream(
        self,
        continuation: Callable[
            [aio.ClientCallDetails, _TRequest],
            Awaitable[aio.UnaryStreamCall[_TRequest, _TResponse]],
        ],
        client_call_details: aio.ClientCallDetails,
        request: _TRequest,
    ) -> AsyncIterator[_TResponse] | aio.UnaryStreamCall[_TRequest, _TResponse]:
        return await continuation(await self._details(client_call_details), request)


class _AsyncStreamUnaryBearer(_AsyncBearer, aio.StreamUnaryClientInterceptor):
    async def intercept_stream_unary(
        self,
        continuation: Callable[
            [aio.ClientCallDetails, AsyncIterable[_TRequest] | Iterable[_TRequest]],
            Awaitable[aio.StreamUnaryCall[_TRequest, _TResponse]],
        ],
        client_call_details: aio.ClientCallDetails,
        request_iterator: AsyncIterable[_TRequest] | Iterable[_TRequest],
    ) -> _TResponse | aio.StreamUnaryCall[_TRequest, _TResponse]:
        return await continuation(await self._details(client_call_details), request_iterator)


class _AsyncStreamStreamBearer(_AsyncBearer, aio.StreamStreamClientInterceptor):
    async def intercept_stream_stream(
        self,
        continuation: Callable[
            [aio.ClientCallDetails, AsyncIterable[_TRequest] | Iterable[_TRequest]],
            Awaitable[aio.StreamStreamCall[_TRequest, _TResponse]],
        ],
        client_call_details: aio.ClientCallDetails,
        request_iterator: AsyncIterable[_TRequest] | Iterable[_TRequest],
    ) -> AsyncIterator[_TResponse] | aio.StreamStreamCall[_TRequest, _TResponse]:
        return await continuation(await self._details(client_call_details), request_iterator)
