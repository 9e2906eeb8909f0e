"""Attach a manager's access token to calls: call credentials and client interceptors.

The sync :class:`BearerClientInterceptor` covers the four call kinds; the
asyncio ones are returned by ``AsyncTokenManager.interceptors()``. Unary-unary
calls rejected with ``UNAUTHENTICATED`` are retried once with a fresh token.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import (
    AsyncIterable,
    AsyncIterator,
    Awaitable,
    Callable,
    Iterable,
    Iterator,
)
from typing import TYPE_CHECKING

import grpc
from grpc import aio

from interceptors._token_core import (
    _AUTHORIZATION,
    _BEARER,
    _Metadata,
    _remaining,
    _TRequest,
    _TResponse,
)

_LOGGER = logging.getLogger(__name__)

if TYPE_CHECKING:
    from grpc import _CallFuture, _CallIterator


if TYPE_CHECKING:
    from interceptors._client import AsyncTokenManager, TokenManager


def _bearer_pairs(metadata: Iterable[tuple[str, str | bytes]] | None, token: str) -> _Metadata:
    kept = tuple((key, value) for key, value in metadata or () if key.lower() != _AUTHORIZATION)
    return (*kept, (_AUTHORIZATION, f"{_BEARER} {token}"))


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
