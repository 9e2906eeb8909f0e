"""What the tracing interceptors share: reading and writing W3C headers in gRPC metadata,
the attributes that name a call, and how its status code lands on the span."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any, Final

import grpc
from opentelemetry import propagate, trace
from opentelemetry.propagators.textmap import Getter
from opentelemetry.trace import Span, Status, StatusCode

# A server span is an error only for these (OpenTelemetry's gRPC conventions);
# a refused token is the server working, not failing.
_SERVER_ERRORS: Final = frozenset(
    {
        grpc.StatusCode.UNKNOWN,
        grpc.StatusCode.DEADLINE_EXCEEDED,
        grpc.StatusCode.UNIMPLEMENTED,
        grpc.StatusCode.INTERNAL,
        grpc.StatusCode.UNAVAILABLE,
        grpc.StatusCode.DATA_LOSS,
    }
)


class _MetadataGetter(Getter[Any]):
    """Reads W3C headers from gRPC invocation metadata (text values only)."""

    def get(self, carrier: Any, key: str) -> list[str] | None:
        found = [
            value for name, value in carrier or () if name.lower() == key and isinstance(value, str)
        ]
        return found or None

    def keys(self, carrier: Any) -> list[str]:
        return [name for name, _ in carrier or ()]


def rpc_attributes(method: str) -> dict[str, str]:
    """The span attributes naming a call (``/pkg.Service/Method``)."""
    service, _, name = method.lstrip("/").partition("/")
    return {"rpc.system": "grpc", "rpc.service": service, "rpc.method": name}


def _as_status(code: object) -> grpc.StatusCode | None:
    if code is None or isinstance(code, grpc.StatusCode):
        return code
    for status in grpc.StatusCode:  # grpc.aio may hand back the integer
        if status.value[0] == code:
            return status
    return grpc.StatusCode.UNKNOWN


def set_grpc_status(span: Span, code: object, *, server: bool) -> None:
    """Record a call's final status code on its span (OK when ``code`` is ``None``)."""
    status = _as_status(code) or grpc.StatusCode.OK
    span.set_attribute("rpc.grpc.status_code", status.value[0])
    if status is grpc.StatusCode.OK:
        return
    if not server or status in _SERVER_ERRORS:
        # The code's name only: details may be a server's own words.
        span.set_status(Status(StatusCode.ERROR, status.name))


METADATA_GETTER: Final = _MetadataGetter()


def with_trace_context(
    metadata: Iterable[tuple[str, str | bytes]] | None, span: Span
) -> tuple[tuple[str, str | bytes], ...]:
    """``metadata`` carrying ``span``'s context (W3C headers replaced, the rest kept)."""
    carrier: dict[str, str] = {}
    propagate.inject(carrier, context=trace.set_span_in_context(span))
    kept = tuple((key, value) for key, value in metadata or () if key.lower() not in carrier)
    return (*kept, *carrier.items())
