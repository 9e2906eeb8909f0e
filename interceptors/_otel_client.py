"""Client interceptors, sync and asyncio, that give each outgoing call a span and send its context.

The span is a child of whatever span is current where the call is made (the
server span of the call being handled, so a service's calls to the auth service
and to its downstream join the caller's trace); its W3C ``traceparent`` goes out
in the call's metadata. It ends when the call does, with the status code.
"""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import AsyncIterable, Awaitable, Callable, Iterable, Iterator
from typing import Any, TypeAlias

import grpc
from grpc import aio
from opentelemetry import trace
from opentelemetry.trace import Span, SpanKind

from interceptors._otel_common import rpc_attributes, set_grpc_status, with_trace_context

_Metadata: TypeAlias = tuple[tuple[str, str | bytes], ...]


@dataclasses.dataclass(frozen=True)
class _CallDetails(grpc.ClientCallDetails):
    method: str
    timeout: float | None
    metadata: _Metadata | None
    credentials: grpc.CallCredentials | None
    wait_for_ready: bool | None
    compression: grpc.Compression | None


def _start(tracer: trace.Tracer, method: str) -> Span:
    return tracer.start_span(
        method.lstrip("/"),
        kind=SpanKind.CLIENT,
        attributes=rpc_attributes(method),
        record_exception=False,
        set_status_on_exception=False,
    )


def _end(span: Span, code: object) -> None:
    set_grpc_status(span, code, server=False)
    span.end()


class ClientTracing(
    grpc.UnaryUnaryClientInterceptor,
    grpc.UnaryStreamClientInterceptor,
    grpc.StreamUnaryClientInterceptor,
    grpc.StreamStreamClientInterceptor,
):
    """A client span per call of a sync channel, its context sent in the metadata."""

    def __init__(self, tracer: trace.Tracer) -> None:
        self._tracer = tracer

    def _call(
        self, continuation: Callable[[Any, Any], Any], details: grpc.ClientCallDetails, arg: Any
    ) -> Any:
        method = str(details.method)
        span = _start(self._tracer, method)
        traced = _CallDetails(
            method=details.method,
            timeout=details.timeout,
            metadata=with_trace_context(details.metadata, span),
            credentials=details.credentials,
            wait_for_ready=details.wait_for_ready,
            compression=getattr(details, "compression", None),
        )
        try:
            call = continuation(traced, arg)
        except BaseException:
            _end(span, grpc.StatusCode.UNKNOWN)
            raise
        # Runs at once if the call is already over (a blocking unary call).
        call.add_done_callback(lambda done: _end(span, _code_of(done)))
        return call

    def intercept_unary_unary(
        self, continuation: Any, client_call_details: grpc.ClientCallDetails, request: Any
    ) -> Any:
        """Trace a unary call (grpc calls this)."""
        return self._call(continuation, client_call_details, request)

    def intercept_unary_stream(
        self, continuation: Any, client_call_details: grpc.ClientCallDetails, request: Any
    ) -> Any:
        """Trace a response-streaming call (grpc calls this)."""
        return self._call(continuation, client_call_details, request)

    def intercept_stream_unary(
        self,
        continuation: Any,
        client_call_details: grpc.ClientCallDetails,
        request_iterator: Iterator[Any],
    ) -> Any:
        """Trace a request-streaming call (grpc calls this)."""
        return self._call(continuation, client_call_details, request_iterator)

    def intercept_stream_stream(
        self,
        continuation: Any,
        client_call_details: grpc.ClientCallDetails,
        request_iterator: Iterator[Any],
    ) -> Any:
        """Trace a bidirectional call (grpc calls this)."""
        return self._call(continuation, client_call_details, request_iterator)


def _code_of(call: Any) -> object:
    try:
        return call.code()
    except Exception:  # noqa: BLE001 -- a span must never fail a call
        return grpc.StatusCode.UNKNOWN


class AsyncClientTracing:
    """The asyncio face: :meth:`interceptors` gives one interceptor per call kind."""

    def __init__(self, tracer: trace.Tracer) -> None:
        self._tracer = tracer
        # Tasks that end a span when its call ends (a task needs a strong reference).
        self._watching: set[asyncio.Task[None]] = set()

    def interceptors(self) -> list[aio.ClientInterceptor]:
        """For ``grpc.aio.insecure_channel(target, interceptors=...)``."""
        return [
            _AioUnaryUnary(self),
            _AioUnaryStream(self),
            _AioStreamUnary(self),
            _AioStreamStream(self),
        ]

    async def call(
        self,
        continuation: Callable[[aio.ClientCallDetails, Any], Awaitable[Any]],
        details: aio.ClientCallDetails,
        arg: Any,
    ) -> Any:
        method = details.method.decode() if isinstance(details.method, bytes) else details.method
        span = _start(self._tracer, method)
        traced = aio.ClientCallDetails(
            details.method,
            details.timeout,
            aio.Metadata(*with_trace_context(details.metadata, span)),
            details.credentials,
            details.wait_for_ready,
        )
        try:
            call = await continuation(traced, arg)
        except BaseException:
            _end(span, grpc.StatusCode.UNKNOWN)
            raise
        watch = asyncio.get_running_loop().create_task(_end_when_done(span, call))
        self._watching.add(watch)
        watch.add_done_callback(self._watching.discard)
        return call


async def _end_when_done(span: Span, call: Any) -> None:
    try:
        code = await call.code()
    except asyncio.CancelledError:  # the loop is closing: the call ends unfinished
        _end(span, grpc.StatusCode.CANCELLED)
        raise
    except Exception:  # noqa: BLE001 -- a span must never fail a call
        code = grpc.StatusCode.UNKNOWN
    _end(span, code)


class _AioUnaryUnary(aio.UnaryUnaryClientInterceptor):
    def __init__(self, tracing: AsyncClientTracing) -> None:
        self._tracing = tracing

    async def intercept_unary_unary(
        self, continuation: Any, client_call_details: aio.ClientCallDetails, request: Any
    ) -> Any:
        return await self._tracing.call(continuation, client_call_details, request)


class _AioUnaryStream(aio.UnaryStreamClientInterceptor):
    def __init__(self, tracing: AsyncClientTracing) -> None:
        self._tracing = tracing

    async def intercept_unary_stream(
        self, continuation: Any, client_call_details: aio.ClientCallDetails, request: Any
    ) -> Any:
        return await self._tracing.call(continuation, client_call_details, request)


class _AioStreamUnary(aio.StreamUnaryClientInterceptor):
    def __init__(self, tracing: AsyncClientTracing) -> None:
        self._tracing = tracing

    async def intercept_stream_unary(
        self,
        continuation: Any,
        client_call_details: aio.ClientCallDetails,
        request_iterator: AsyncIterable[Any] | Iterable[Any],
    ) -> Any:
        return await self._tracing.call(continuation, client_call_details, request_iterator)


class _AioStreamStream(aio.StreamStreamClientInterceptor):
    def __init__(self, tracing: AsyncClientTracing) -> None:
        self._tracing = tracing

    async def intercept_stream_stream(
        self,
        continuation: Any,
        client_call_details: aio.ClientCallDetails,
        request_iterator: AsyncIterable[Any] | Iterable[Any],
    ) -> Any:
        return await self._tracing.call(continuation, client_call_details, request_iterator)
