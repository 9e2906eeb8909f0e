"""Attach a token manager's access token to calls: call credentials and client interceptors.

The sync :class:`BearerClientInterceptor` covers the four call kinds; the
asyncio ones come from :func:`async_bearer_interceptors`, one per call kind as
grpc.aio requires. Unary-unary calls rejected with ``UNAUTHENTICATED`` are
retried once with a fresh token.

This module knows managers only as :class:`TokenSource` / :class:`AsyncTokenSource`,
so the managers (:mod:`interceptors._token_manager`) import it and not the
other way round.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import AsyncIterable, AsyncIterator, Awaitable, Callable, Iterable, Iterator
from typing import TYPE_CHECKING, Protocol, TypeAlias, TypeVar

import grpc
from grpc import aio

if TYPE_CHECKING:
    from grpc import _CallFuture, _CallIterator

_LOGGER = logging.getLogger(__name__)

_AUTHORIZATION = "authorization"
_SCHEME = "Bearer"  # RFC 6750 §2.1

_TRequest = TypeVar("_TRequest")
_TResponse = TypeVar("_TResponse")

#: Call metadata as gRPC takes it: ``(key, value)`` pairs.
Metadata: TypeAlias = tuple[tuple[str, str | bytes], ...]


class TokenSource(Protocol):
    """What the sync interceptor needs from :class:`~interceptors.TokenManager`."""

    def token(self) -> str:
        """Return a valid access token, renewing it first when needed."""
        ...

    def invalidate(self, token: str) -> None:
        """Forget ``token`` if it is still the current one."""
        ...


class AsyncTokenSource(Protocol):
    """What the asyncio interceptors need from :class:`~interceptors.AsyncTokenManager`."""

    async def token(self) -> str:
        """Return a valid access token, renewing it first when needed."""
        ...

    def invalidate(self, token: str) -> None:
        """Forget ``token`` if it is still the current one."""
        ...


def bearer_metadata(metadata: Iterable[tuple[str, str | bytes]] | None, token: str) -> Metadata:
    """Return ``metadata`` with any ``authorization`` entry replaced by ``Bearer <token>``."""
    kept = tuple((key, value) for key, value in metadata or () if key.lower() != _AUTHORIZATION)
    return (*kept, (_AUTHORIZATION, f"{_SCHEME} {token}"))


def bearer_call_credentials(tokens: TokenSource) -> grpc.CallCredentials:
    """Return call credentials that send ``tokens``' current token on every call."""
    return grpc.metadata_call_credentials(_BearerPlugin(tokens), name="ssot-bearer")


class _BearerPlugin(grpc.AuthMetadataPlugin):
    """Call credentials plugin; gRPC runs it on a thread of its own, so it may block."""

    def __init__(self, tokens: TokenSource) -> None:
        self._tokens = tokens

    def __call__(
        self, context: grpc.AuthMetadataContext, callback: grpc.AuthMetadataPluginCallback
    ) -> None:
        try:
            metadata = bearer_metadata((), self._tokens.token())
        # Any failure must reach gRPC through the callback, which fails the call with it.
        except Exception as exc:  # noqa: BLE001
            callback((), exc)
            return
        callback(metadata, None)


@dataclasses.dataclass(frozen=True)
class _CallDetails(grpc.ClientCallDetails):
    method: str
    timeout: float | None
    metadata: Metadata | None
    credentials: grpc.CallCredentials | None
    wait_for_ready: bool | None
    compression: grpc.Compression | None


def _with_token(details: grpc.ClientCallDetails, token: str, timeout: float | None) -> _CallDetails:
    return _CallDetails(
        method=details.method,
        timeout=timeout,
        metadata=bearer_metadata(details.metadata, token),
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

    def __init__(self, manager: TokenSource) -> None:
        """Create the interceptor; ``manager`` is usually a :class:`~interceptors.TokenManager`."""
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


def _remaining(timeout: float | None, started: float) -> float | None:
    if timeout is None:
        return None
    return timeout - (time.monotonic() - started)


def _aio_with_token(
    details: aio.ClientCallDetails, token: str, timeout: float | None
) -> aio.ClientCallDetails:
    return aio.ClientCallDetails(
        details.method,
        timeout,
        aio.Metadata(*bearer_metadata(details.metadata, token)),
        details.credentials,
        details.wait_for_ready,
    )


class _AsyncBearer:
    """Shared part of the four asyncio interceptors; see :class:`BearerClientInterceptor`."""

    def __init__(self, manager: AsyncTokenSource) -> None:
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


def async_bearer_interceptors(manager: AsyncTokenSource) -> list[aio.ClientInterceptor]:
    """Return the four asyncio interceptors (one per call kind) that send ``manager``'s token."""
    return [
        _AsyncUnaryUnaryBearer(manager),
        _AsyncUnaryStreamBearer(manager),
        _AsyncStreamUnaryBearer(manager),
        _AsyncStreamStreamBearer(manager),
    ]
