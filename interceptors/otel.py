"""OpenTelemetry traces for gRPC services that verify tokens: opt in by importing this module.

It needs ``opentelemetry-api`` (the ``otel`` extra); ``import interceptors`` never
loads it. One :class:`Tracing` per service gives everything::

    tracing = Tracing()  # the global tracer provider, or tracer_provider=...
    server = grpc.server(pool, interceptors=[
        tracing.interceptor(),                      # first: the span covers the check
        AuthInterceptor(verifier, observer=tracing),  # the check becomes a span event
    ])
    downstream = grpc.intercept_channel(channel, tracing.client_interceptor(), ...)

(``aio_interceptor()`` and ``aio_client_interceptors()`` for ``grpc.aio``.)

What is recorded: a ``SERVER`` span per call, continuing the W3C ``traceparent``
the caller sent (the global propagator: ``OTEL_PROPAGATORS``, W3C trace context
and baggage by default); a ``CLIENT`` span per outgoing call whose context is sent
on; the token check as the span event ``ssot.token.verify`` with its result (``ok``
or the refusal's audit reason); the auth service's audit events by name with their
bounded fields. Attributes are the RPC's service, method and status code, and
those categories: never metadata, a token, a password, a user or a peer address.
Spans and events cost nothing more when no SDK is set up (the API's no-op tracer).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
from collections.abc import Iterable, Iterator, Mapping
from typing import Any, Final

import grpc
import grpc.aio
from opentelemetry import propagate, trace
from opentelemetry.trace import Span, SpanKind

from interceptors._methods import HEALTH_METHODS, REFLECTION_METHODS
from interceptors._observe import VerifyObserver
from interceptors._otel_client import AsyncClientTracing, ClientTracing
from interceptors._otel_common import METADATA_GETTER, rpc_attributes, set_grpc_status
from interceptors._otel_server import AsyncServerTracing, ServerTracing, current_span_of
from interceptors.audit import AuditListener, AuditValue, audit_listener, current_audit_listener

__all__ = [
    "TRACER_NAME",
    "VERIFY_EVENT",
    "Tracing",
    "configure_from_env",
]

TRACER_NAME: Final = "ssot-auth"
#: The span event of a token check; its ``ssot.verify.result`` is ``ok`` or the reason.
VERIFY_EVENT: Final = "ssot.token.verify"
# The audit fields that are bounded categories (never ids, names, addresses or times).
_SPAN_EVENT_FIELDS: Final = frozenset({"reason", "grant_type", "algorithm", "kind", "layer"})
# The verify event already says why a token was refused.
_NOT_SPAN_EVENTS: Final = frozenset({"token.rejected"})


class Tracing(VerifyObserver):
    """Spans and trace propagation for one service's gRPC servers and channels.

    Also a :class:`~interceptors.VerifyObserver`: hand it to ``AuthInterceptor(...,
    observer=tracing)`` (with metrics: ``observer=Observers(metrics, tracing)``).

    Args:
        tracer_provider: Where spans go; ``None``: the global provider (set up by
            the SDK, e.g. :func:`configure_from_env`).
        untraced: Methods served without a span: by default health and reflection
            (a load balancer's probe every few seconds is not worth a trace).
    """

    def __init__(
        self,
        tracer_provider: trace.TracerProvider | None = None,
        *,
        untraced: Iterable[str] = HEALTH_METHODS | REFLECTION_METHODS,
    ) -> None:
        self._tracer = trace.get_tracer(TRACER_NAME, tracer_provider=tracer_provider)
        self.untraced = frozenset(untraced)

    @property
    def tracer(self) -> trace.Tracer:
        """The tracer the spans come from."""
        return self._tracer

    # -- server side ---------------------------------------------------------------------

    def start_server_span(self, method: str, metadata: Any) -> Span:
        """Start (not activate) the span of an incoming call, continuing the caller's trace."""
        parent = propagate.extract(metadata, getter=METADATA_GETTER)
        return self._tracer.start_span(
            method.lstrip("/"),
            context=parent,
            kind=SpanKind.SERVER,
            attributes=rpc_attributes(method),
            record_exception=False,
            set_status_on_exception=False,
        )

    @contextlib.contextmanager
    def server_span(self, method: str, context: Any) -> Iterator[Span]:
        """The span of one call, current while its handler runs (the auth service's hook).

        ``context`` is the call's servicer context: the caller's trace comes from its
        metadata, the status code from it at the end. The server's audit events
        recorded meanwhile become span events.
        """
        if method in self.untraced:
            yield trace.INVALID_SPAN
            return
        span = self.start_server_span(method, context.invocation_metadata())
        error: BaseException | None = None
        try:
            with current_span_of(span), self.audit_events():
                yield span
        except BaseException as exc:
            error = exc
            raise
        finally:
            self.end_server_span(span, context, error)

    def end_server_span(self, span: Span, context: Any, error: BaseException | None) -> None:
        """Record the call's status code (``error``: what ended it, if it did not return)."""
        try:
            code = context.code()
        except Exception:  # noqa: BLE001 -- a span must never fail a call
            code = None
        if code is None and error is not None:
            # The client left (its task cancelled, its stream closed); otherwise grpc
            # answers UNKNOWN for an exception that escaped the handler.
            left = isinstance(error, (asyncio.CancelledError, GeneratorExit))
            code = grpc.StatusCode.CANCELLED if left else grpc.StatusCode.UNKNOWN
        set_grpc_status(span, code, server=True)
        span.end()

    @contextlib.contextmanager
    def audit_events(self) -> Iterator[None]:
        """Add the audit events recorded in this context to the current span, too."""
        inner = current_audit_listener()

        def listener(event: str, fields: Mapping[str, AuditValue]) -> None:
            if inner is not None:
                inner(event, fields)
            if event not in _NOT_SPAN_EVENTS:
                trace.get_current_span().add_event(event, _bounded(fields))

        chained: AuditListener = listener
        with audit_listener(chained):
            yield

    def interceptor(self) -> grpc.ServerInterceptor:
        """A server span for each call of a ``grpc.server`` (put it first)."""
        return ServerTracing(self)

    def aio_interceptor(self) -> grpc.aio.ServerInterceptor:
        """A server span for each call of a ``grpc.aio.server`` (put it first)."""
        return AsyncServerTracing(self)

    def verified(self, method: str, result: str, seconds: float) -> None:
        """Add the token check to the current span (the ``VerifyObserver`` hook)."""
        trace.get_current_span().add_event(
            VERIFY_EVENT,
            {"ssot.verify.result": result, "ssot.verify.duration_ms": seconds * 1000.0},
        )

    # -- client side ---------------------------------------------------------------------

    def client_interceptor(self) -> ClientTracing:
        """For ``grpc.intercept_channel``: a client span per call, its context sent on."""
        return ClientTracing(self._tracer)

    def aio_client_interceptors(self) -> list[grpc.aio.ClientInterceptor]:
        """The same for ``grpc.aio`` channels (one interceptor per call kind)."""
        return AsyncClientTracing(self._tracer).interceptors()


def _bounded(fields: Mapping[str, AuditValue]) -> dict[str, str | int | float | bool]:
    return {
        f"ssot.{name}": value
        for name, value in fields.items()
        if name in _SPAN_EVENT_FIELDS and value is not None
    }


def configure_from_env(service_name: str) -> Tracing:
    """Set up the OpenTelemetry SDK from the ``OTEL_*`` variables; what the CLIs call.

    A tracer provider already installed (``opentelemetry-instrument``, the host
    program) is used as it is. Otherwise one is made and installed globally: its
    resource from ``OTEL_SERVICE_NAME`` / ``OTEL_RESOURCE_ATTRIBUTES`` (``service_name``
    when they name none), its sampler from ``OTEL_TRACES_SAMPLER``, and a batch
    processor (``OTEL_BSP_*``) per exporter that ``OTEL_TRACES_EXPORTER`` names
    (comma-separated entry points: ``console`` comes with the SDK, ``otlp`` with
    ``opentelemetry-exporter-otlp``, configured by ``OTEL_EXPORTER_OTLP_*``). Spans
    still buffered are sent when the process exits.

    Raises:
        ValueError: An exporter is named that is not installed, or none is named.
    """
    from importlib.metadata import entry_points  # only the CLIs need the SDK

    from opentelemetry.sdk.resources import SERVICE_NAME, Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor

    current = trace.get_tracer_provider()
    if isinstance(current, TracerProvider):
        return Tracing(current)
    names = [
        name.strip()
        for name in os.environ.get("OTEL_TRACES_EXPORTER", "").split(",")
        if name.strip() and name.strip() != "none"
    ]
    if not names:
        raise ValueError("OTEL_TRACES_EXPORTER names no exporter")
    exporters = []
    for name in names:
        found = entry_points(group="opentelemetry_traces_exporter", name=name)
        if not found:
            raise ValueError(
                f"OTEL_TRACES_EXPORTER names {name!r}, which is not installed"
                " (otlp: pip install opentelemetry-exporter-otlp)"
            )
        exporters.append(next(iter(found)).load()())
    resource = Resource.create()
    if str(resource.attributes.get(SERVICE_NAME, "")).startswith("unknown_service"):
        resource = resource.merge(Resource({SERVICE_NAME: service_name}))
    provider = TracerProvider(resource=resource)
    for exporter in exporters:
        provider.add_span_processor(BatchSpanProcessor(exporter))
    trace.set_tracer_provider(provider)
    return Tracing(provider)
