"""The auth service's own gRPC interceptor: counts and times each call, and scopes its events.

Every handler runs inside the server's audit listener (so the events a call
records count on this server's metrics, not another's in the same process) and,
when OpenTelemetry is set up, inside a server span continuing the caller's trace.
"""

from __future__ import annotations

import asyncio
import inspect
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AbstractContextManager
from typing import Any

import grpc
import grpc.aio

from auth_server.metrics import AuthMetrics
from interceptors.audit import audit_listener

_Handler = "grpc.RpcMethodHandler[Any, Any]"
# Wraps a call's handling in a context (a trace span); given the method and the servicer
# context (its metadata carries the caller's trace, its code the outcome):
# :meth:`interceptors.otel.Tracing.server_span`.
SpanFactory = Callable[[str, Any], AbstractContextManager[Any]]


def _code_of(context: grpc.aio.ServicerContext[Any, Any], failed: bool | None) -> str:
    """The call's status code name; ``failed``: an exception escaped (``None``: the client left)."""
    code = context.code()
    if code is None:
        return "CANCELLED" if failed is None else "UNKNOWN" if failed else "OK"
    if isinstance(code, grpc.StatusCode):
        return code.name
    try:
        return grpc.StatusCode(code).name
    except ValueError:
        return "UNKNOWN"


class ObservingInterceptor(grpc.aio.ServerInterceptor):
    """Counts every call by method and status code and times it; sets the audit listener."""

    def __init__(self, metrics: AuthMetrics, span: SpanFactory | None = None) -> None:
        self._metrics = metrics
        self._span = span
        self._wrapped: dict[str, tuple[Any, Any]] = {}

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[Any]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> Any:
        handler = await continuation(handler_call_details)
        if handler is None:
            return None  # an unknown method: grpc answers UNIMPLEMENTED, no label for it
        method = handler_call_details.method
        known = self._wrapped.get(method)
        if known is not None and known[0] is handler:
            return known[1]
        wrapped = self._wrap(handler, method)
        if len(self._wrapped) < 1024:
            self._wrapped[method] = (handler, wrapped)
        return wrapped

    def _wrap(self, handler: Any, method: str) -> Any:
        metrics, span = self._metrics, self._span
        calls = metrics.rpcs
        seconds = metrics.rpc_seconds.labels(method)
        listener = metrics.on_event

        def scope(context: Any) -> Any:
            if span is None:
                return _NoSpan
            return span(method, context)

        if handler.unary_unary is not None:
            behaviour = handler.unary_unary

            async def unary(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
                started = time.perf_counter()
                failed: bool | None = True
                try:
                    with audit_listener(listener), scope(context):
                        result = await behaviour(request, context)
                    failed = False
                    return result
                except asyncio.CancelledError:
                    failed = None  # the client left
                    raise
                finally:
                    calls.labels(method, _code_of(context, failed)).inc()
                    seconds.observe(time.perf_counter() - started)

            return grpc.unary_unary_rpc_method_handler(
                unary,
                request_deserializer=handler.request_deserializer,
                response_serializer=handler.response_serializer,
            )
        if handler.unary_stream is not None and not inspect.isasyncgenfunction(
            handler.unary_stream
        ):
            # A coroutine that writes its responses itself (grpc's health Watch).
            writer = handler.unary_stream

            async def writes(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> None:
                started = time.perf_counter()
                failed: bool | None = True
                try:
                    with audit_listener(listener), scope(context):
                        await writer(request, context)
                    failed = False
                except (asyncio.CancelledError, GeneratorExit):
                    failed = None  # the client left
                    raise
                finally:
                    calls.labels(method, _code_of(context, failed)).inc()
                    seconds.observe(time.perf_counter() - started)

            return grpc.unary_stream_rpc_method_handler(
                writes,
                request_deserializer=handler.request_deserializer,
                response_serializer=handler.response_serializer,
            )
        if handler.unary_stream is not None:
            stream_behaviour = handler.unary_stream

            async def stream(
                request: Any, context: grpc.aio.ServicerContext[Any, Any]
            ) -> AsyncIterator[Any]:
                started = time.perf_counter()
                failed: bool | None = True
                try:
                    with audit_listener(listener), scope(context):
                        async for response in stream_behaviour(request, context):
                            yield response
                    failed = False
                except (asyncio.CancelledError, GeneratorExit):
                    failed = None  # the client left
                    raise
                finally:
                    calls.labels(method, _code_of(context, failed)).inc()
                    seconds.observe(time.perf_counter() - started)

            return grpc.unary_stream_rpc_method_handler(
                stream,
                request_deserializer=handler.request_deserializer,
                response_serializer=handler.response_serializer,
            )
        return handler  # the auth service has no client-streaming methods


class _NoSpanType:
    def __enter__(self) -> None:
        return None

    def __exit__(self, *exc_info: object) -> None:
        return None


_NoSpan = _NoSpanType()
