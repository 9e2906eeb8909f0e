"""Server interceptors, sync and asyncio, that run each call inside its trace span.

Thin shells over a :class:`SpanSource` (:class:`interceptors.otel.Tracing`): they
only decide where the span is current. Put them before the auth interceptor, so
the token check runs inside the span and its event lands there.
"""

from __future__ import annotations

import contextlib
import inspect
from collections.abc import AsyncGenerator, Awaitable, Callable, Iterator
from typing import Any, Protocol, TypeAlias

import grpc
import grpc.aio
from opentelemetry import trace
from opentelemetry.trace import Span

_Behaviour: TypeAlias = Callable[[Any, Any], Any]
_Handler: TypeAlias = "grpc.RpcMethodHandler[Any, Any]"
_KINDS: tuple[tuple[str, Callable[..., Any], bool], ...] = (
    ("unary_unary", grpc.unary_unary_rpc_method_handler, False),
    ("unary_stream", grpc.unary_stream_rpc_method_handler, True),
    ("stream_unary", grpc.stream_unary_rpc_method_handler, False),
    ("stream_stream", grpc.stream_stream_rpc_method_handler, True),
)
_MAX_WRAPPED_METHODS = 1024


def current_span_of(span: Span) -> contextlib.AbstractContextManager[Span]:
    # Not use_span's defaults: they would record the exception's text (it may quote
    # anything) and mark a refused call as a server error.
    return trace.use_span(
        span, end_on_exit=False, record_exception=False, set_status_on_exception=False
    )


class SpanSource(Protocol):
    """Starts and ends the span of a call (what :class:`~interceptors.otel.Tracing` does)."""

    def start_server_span(self, method: str, metadata: Any) -> Span: ...

    def end_server_span(self, span: Span, context: Any, error: BaseException | None) -> None: ...

    def audit_events(self) -> contextlib.AbstractContextManager[None]: ...

    @property
    def untraced(self) -> frozenset[str]: ...


def _traced_unary(spans: SpanSource, method: str, behaviour: _Behaviour) -> _Behaviour:
    def traced(request: Any, context: grpc.ServicerContext) -> Any:
        span = spans.start_server_span(method, context.invocation_metadata())
        error: BaseException | None = None
        try:
            with current_span_of(span), spans.audit_events():
                return behaviour(request, context)
        except BaseException as exc:
            error = exc
            raise
        finally:
            spans.end_server_span(span, context, error)

    return traced


def _traced_stream(spans: SpanSource, method: str, behaviour: _Behaviour) -> _Behaviour:
    def traced(request: Any, context: grpc.ServicerContext) -> Iterator[Any]:
        span = spans.start_server_span(method, context.invocation_metadata())
        return _hold(spans, span, behaviour, request, context)

    return traced


def _hold(
    spans: SpanSource, span: Span, behaviour: _Behaviour, request: Any, context: Any
) -> Iterator[Any]:
    # Current around each step, not across a yield: the stream may end on another thread.
    error: BaseException | None = None
    try:
        with current_span_of(span), spans.audit_events():
            responses = iter(behaviour(request, context))
        done = object()
        while True:
            with current_span_of(span), spans.audit_events():
                response = next(responses, done)
            if response is done:
                break
            yield response
    except BaseException as exc:  # GeneratorExit included: the client left
        error = exc
        raise
    finally:
        spans.end_server_span(span, context, error)


def _atraced_unary(spans: SpanSource, method: str, behaviour: _Behaviour) -> _Behaviour:
    async def traced(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
        span = spans.start_server_span(method, context.invocation_metadata())
        error: BaseException | None = None
        try:
            with current_span_of(span), spans.audit_events():
                return await behaviour(request, context)
        except BaseException as exc:
            error = exc
            raise
        finally:
            spans.end_server_span(span, context, error)

    return traced


def _atraced_stream(spans: SpanSource, method: str, behaviour: _Behaviour) -> _Behaviour:
    # A coroutine using context.write, so the span is current in the call's own task.
    async def traced(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> None:
        span = spans.start_server_span(method, context.invocation_metadata())
        error: BaseException | None = None
        try:
            with current_span_of(span), spans.audit_events():
                responses = behaviour(request, context)
                if inspect.isawaitable(responses):
                    await responses  # the handler writes its responses itself
                else:
                    await _write_all(responses, context)
        except BaseException as exc:
            error = exc
            raise
        finally:
            spans.end_server_span(span, context, error)

    return traced


async def _write_all(responses: AsyncGenerator[Any, None], context: Any) -> None:
    async with contextlib.aclosing(responses) as stream:
        async for response in stream:
            await context.write(response)


class _Wrapper:
    def __init__(self, spans: SpanSource, aio: bool) -> None:
        self._spans = spans
        self._aio = aio
        self._wrapped: dict[str, tuple[_Handler, _Handler]] = {}

    def wrap(self, handler: _Handler | None, method: str) -> _Handler | None:
        if handler is None:
            return None  # an unknown method: grpc answers UNIMPLEMENTED
        known = self._wrapped.get(method)
        if known is not None and known[0] is handler:
            return known[1]
        wrapped = self._wrap(handler, method)
        if len(self._wrapped) >= _MAX_WRAPPED_METHODS:
            self._wrapped.clear()  # a proxy serving any method name must not grow this
        self._wrapped[method] = (handler, wrapped)
        return wrapped

    def _wrap(self, handler: _Handler, method: str) -> _Handler:
        if method in self._spans.untraced:
            return handler
        for attribute, factory, streams_out in _KINDS:
            behaviour: _Behaviour | None = getattr(handler, attribute)
            if behaviour is None:
                continue
            if self._aio and (
                inspect.iscoroutinefunction(behaviour) or inspect.isasyncgenfunction(behaviour)
            ):
                make = _atraced_stream if streams_out else _atraced_unary
            else:
                make = _traced_stream if streams_out else _traced_unary
            wrapped: _Handler = factory(
                make(self._spans, method, behaviour),
                request_deserializer=handler.request_deserializer,
                response_serializer=handler.response_serializer,
            )
            return wrapped
        return handler


class ServerTracing(grpc.ServerInterceptor):
    """Runs each call of a ``grpc.server`` inside its server span."""

    def __init__(self, spans: SpanSource) -> None:
        self._wrapper = _Wrapper(spans, aio=False)

    def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], _Handler | None],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> _Handler | None:
        """Wrap the method's handler (grpc calls this)."""
        return self._wrapper.wrap(continuation(handler_call_details), handler_call_details.method)


class AsyncServerTracing(grpc.aio.ServerInterceptor):
    """Runs each call of a ``grpc.aio.server`` inside its server span."""

    def __init__(self, spans: SpanSource) -> None:
        self._wrapper = _Wrapper(spans, aio=True)

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[_Handler | None]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> _Handler | None:
        """Wrap the method's handler (grpc calls this)."""
        handler = await continuation(handler_call_details)
        return self._wrapper.wrap(handler, handler_call_details.method)
