"""Server interceptors, sync and asyncio, that admit a call only with a valid bearer token.

Both are thin shells over :class:`_HandlerWrapper`, which decides which methods are
protected and wraps each one's handler, of any of the four kinds, once per method.
For every call the wrapped handler runs the method's
:class:`~interceptors._admission.MethodCheck` (token, certificate binding, scopes)
and only then the handler, with the caller set in
:data:`~interceptors._context.CALLER` (what :func:`current_principal` reads). The two
classes differ in ``await``, and in one saving of the asyncio one: the handler takes
the metadata ``intercept_service`` was given instead of converting it again.
"""

from __future__ import annotations

import asyncio
import inspect
from collections.abc import Awaitable, Callable
from typing import Any, Final, TypeAlias, TypeVar

import grpc
import grpc.aio

from interceptors._admission import (
    HANDED_OFF,
    Behaviour,
    MethodCheck,
    awrap_stream,
    awrap_unary,
    bearer_token,
    wrap_stream,
    wrap_unary,
)
from interceptors._binding import CERT_BINDINGS, CertBinding
from interceptors._methods import MethodPolicy
from interceptors._observe import VerifyObserver
from interceptors._verify import TokenVerifier

__all__ = ["AsyncAuthInterceptor", "AuthInterceptor", "bearer_token"]

_TRequest = TypeVar("_TRequest")
_TResponse = TypeVar("_TResponse")
_Handler: TypeAlias = "grpc.RpcMethodHandler[Any, Any]"

_MAX_WRAPPED_METHODS: Final = 1024
# The four handler kinds: the behaviour attribute, its factory, and whether it streams out.
_KINDS: Final[tuple[tuple[str, Callable[..., _Handler], bool], ...]] = (
    ("unary_unary", grpc.unary_unary_rpc_method_handler, False),
    ("unary_stream", grpc.unary_stream_rpc_method_handler, True),
    ("stream_unary", grpc.stream_unary_rpc_method_handler, False),
    ("stream_stream", grpc.stream_stream_rpc_method_handler, True),
)


class _HandlerWrapper:
    """What both interceptors share: which calls to check, and the wrapped handlers."""

    def __init__(
        self,
        verifier: TokenVerifier,
        policy: MethodPolicy | None,
        cert_binding: CertBinding | None,
        observer: VerifyObserver | None = None,
    ) -> None:
        self._observer = observer
        if cert_binding is not None and cert_binding not in CERT_BINDINGS:
            raise ValueError(f"cert_binding must be one of {CERT_BINDINGS} or None")
        self._verifier = verifier
        self._policy = policy if policy is not None else MethodPolicy()
        self._binding = cert_binding
        # method -> (the handler grpc gave, what we return for it). Generic handlers
        # hand out the same handler object for a method on every call, so the policy
        # lookup and the wrapping happen once per method, not once per call.
        self._wrapped: dict[str, tuple[_Handler, _Handler | None]] = {}

    def wrap(self, handler: _Handler | None, method: str) -> _Handler | None:
        if handler is None:
            return None
        known = self._wrapped.get(method)
        if known is not None and known[0] is handler:
            return known[1]
        wrapped = self._wrap(handler, method)
        wrapped_by_method = self._wrapped
        if len(wrapped_by_method) >= _MAX_WRAPPED_METHODS:
            # A handler that serves any method name (a proxy) must not grow this without bound.
            wrapped_by_method.clear()
        wrapped_by_method[method] = (handler, wrapped)
        return wrapped

    def _wrap(self, handler: _Handler, method: str) -> _Handler | None:
        if self._policy.is_public(method):
            return handler
        check = MethodCheck(
            self._verifier,
            method,
            self._policy.scopes_for(method),
            self._binding,
            self._policy.actors_for(method),
            self._observer,
        )
        for attribute, factory, streams_out in _KINDS:
            behaviour: Behaviour | None = getattr(handler, attribute)
            if behaviour is None:
                continue
            is_async = inspect.iscoroutinefunction(behaviour) or inspect.isasyncgenfunction(
                behaviour
            )
            if is_async:
                make = awrap_stream if streams_out else awrap_unary
            else:
                make = wrap_stream if streams_out else wrap_unary
            return factory(
                make(check, behaviour),
                request_deserializer=handler.request_deserializer,
                response_serializer=handler.response_serializer,
            )
        # A handler without a behaviour cannot be served; fail closed as "not found".
        return None


class AuthInterceptor(grpc.ServerInterceptor):
    """Requires a valid bearer token on a ``grpc.server``'s protected methods.

    Example:
        >>> server = grpc.server(executor, interceptors=[AuthInterceptor(verifier, policy)])
    """

    def __init__(
        self,
        verifier: TokenVerifier,
        policy: MethodPolicy | None = None,
        *,
        cert_binding: CertBinding | None = None,
        observer: VerifyObserver | None = None,
    ) -> None:
        """Create the interceptor.

        Args:
            verifier: Checks the token.
            policy: Public methods and per-method scopes; by default every method but
                health and reflection needs a token.
            cert_binding: On a mutual-TLS server, require the client certificate to
                match the token: ``"subject"`` (it names ``sub`` or ``username``) or
                ``"cnf"`` (RFC 8705 ``x5t#S256``); ``None`` does not look at it.
            observer: Told of every check's result and duration (metrics, traces:
                :mod:`interceptors.prometheus`, :mod:`interceptors.otel`); ``None``
                costs nothing.
        """
        self._wrapper = _HandlerWrapper(verifier, policy, cert_binding, observer)

    def intercept_service(
        self,
        continuation: Callable[
            [grpc.HandlerCallDetails], grpc.RpcMethodHandler[_TRequest, _TResponse] | None
        ],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler[_TRequest, _TResponse] | None:
        """Wrap the method's handler so that it authenticates first (grpc calls this)."""
        handler = continuation(handler_call_details)
        return self._wrapper.wrap(handler, handler_call_details.method)


class AsyncAuthInterceptor(grpc.aio.ServerInterceptor):
    """Requires a valid bearer token on a ``grpc.aio.server``'s protected methods.

    Example:
        >>> server = grpc.aio.server(interceptors=[AsyncAuthInterceptor(verifier, policy)])
    """

    def __init__(
        self,
        verifier: TokenVerifier,
        policy: MethodPolicy | None = None,
        *,
        cert_binding: CertBinding | None = None,
        observer: VerifyObserver | None = None,
    ) -> None:
        """Create the interceptor.

        Args:
            verifier: Checks the token; key fetches never block the event loop.
            policy: Public methods and per-method scopes; by default every method but
                health and reflection needs a token.
            cert_binding: As for :class:`AuthInterceptor`.
            observer: As for :class:`AuthInterceptor`.
        """
        self._wrapper = _HandlerWrapper(verifier, policy, cert_binding, observer)

    async def intercept_service(
        self,
        continuation: Callable[
            [grpc.HandlerCallDetails],
            Awaitable[grpc.RpcMethodHandler[_TRequest, _TResponse] | None],
        ],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler[_TRequest, _TResponse] | None:
        """Wrap the method's handler so that it authenticates first (grpc calls this)."""
        handler = await continuation(handler_call_details)
        wrapped = self._wrapper.wrap(handler, handler_call_details.method)
        if wrapped is not handler:
            task = asyncio.current_task()
            if task is not None:
                HANDED_OFF.set((task, handler_call_details.invocation_metadata))
        return wrapped
