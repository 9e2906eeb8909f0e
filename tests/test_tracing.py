"""OpenTelemetry traces (issue 12): one trace from a client through the resource server and
its token exchange at the auth service, the token check as a span event, nothing secret in it.

Spans go to the SDK's in-memory exporter through a provider of the test's own (never the
global one), so each test sees exactly its spans.
"""

from __future__ import annotations

import time
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import grpc
import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from grpc_health.v1 import health_pb2, health_pb2_grpc
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode

from auth_server.app import start_auth_server
from auth_server.jwk import public_jwk
from helpers import AUDIENCE, ISSUER, AuthHarness, EventLoopThread, bearer, make_config
from interceptors.otel import VERIFY_EVENT, Tracing
from protos import auth_pb2, resource_pb2, resource_pb2_grpc
from resource_server.app import (
    ResourceServerConfig,
    build_server,
    open_verifier,
    start_aio_server,
)
from resource_server.downstream import DownstreamSettings

SERVICE_A = "service-a"
SERVICE_B = "service-b"
PASSWORD = "correct horse battery"
ON_BEHALF = "ssot.resource.v1.ResourceService/GetResourceOnBehalf"
PROTECTED = "ssot.resource.v1.ResourceService/GetProtectedResource"
TOKEN = "ssot.auth.v1.AuthService/Token"
LOGIN = "ssot.auth.v1.AuthService/Login"


@pytest.fixture
def exporter() -> InMemorySpanExporter:
    return InMemorySpanExporter()


@pytest.fixture
def tracing(exporter: InMemorySpanExporter) -> Iterator[Tracing]:
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    yield Tracing(provider)
    provider.shutdown()


@pytest.fixture
def auth(loop_thread: EventLoopThread, tmp_path: Path, tracing: Tracing) -> Iterator[AuthHarness]:
    config = make_config(tmp_path, additional_audiences=(SERVICE_A,))
    server = loop_thread.run(start_auth_server(config, span=tracing.server_span))
    harness = AuthHarness(
        server=server, loop_thread=loop_thread, channel=grpc.insecure_channel(server.grpc_target)
    )
    harness.add_user("alice", PASSWORD, ("resource.read",))
    yield harness
    harness.channel.close()
    harness.stop()


def finished(
    exporter: InMemorySpanExporter, ready: Callable[[list[ReadableSpan]], bool]
) -> list[ReadableSpan]:
    """The finished spans once ``ready`` says they are all there (spans end on several threads)."""
    deadline = time.monotonic() + 10
    while True:
        spans = list(exporter.get_finished_spans())
        if ready(spans) or time.monotonic() > deadline:
            return spans
        time.sleep(0.02)


def one(spans: list[ReadableSpan], name: str, kind: SpanKind, trace_id: int) -> ReadableSpan:
    found = [
        s
        for s in spans
        if s.name == name and s.kind is kind and s.context is not None
        if s.context.trace_id == trace_id
    ]
    assert len(found) == 1, [(s.name, s.kind) for s in spans]
    return found[0]


def child_of(span: ReadableSpan, parent: ReadableSpan) -> bool:
    assert span.parent is not None and parent.context is not None
    return (span.parent.trace_id, span.parent.span_id) == (
        parent.context.trace_id,
        parent.context.span_id,
    )


def verify_results(span: ReadableSpan) -> list[object]:
    return [e.attributes["ssot.verify.result"] for e in span.events if e.name == VERIFY_EVENT]  # type: ignore[index]


def recorded_text(spans: list[ReadableSpan]) -> str:
    """Every name, attribute, event and status text the spans hold."""
    parts: list[str] = []
    for span in spans:
        parts.append(span.name)
        parts.extend(f"{k}={v}" for k, v in (span.attributes or {}).items())
        parts.append(span.status.description or "")
        for event in span.events:
            parts.append(event.name)
            parts.extend(f"{k}={v}" for k, v in (event.attributes or {}).items())
        parts.extend(f"{k}={v}" for k, v in span.resource.attributes.items())
    return "\n".join(parts)


def key_file_for(key: rsa.RSAPrivateKey, path: Path) -> Path:
    path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return path


@pytest.mark.parametrize("aio", [False, True])
def test_a_call_on_behalf_of_the_user_is_one_trace_through_the_token_exchange(
    loop_thread: EventLoopThread,
    auth: AuthHarness,
    tracing: Tracing,
    exporter: InMemorySpanExporter,
    tmp_path: Path,
    aio: bool,
) -> None:
    key_a = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    auth.server.components.client_side.clients.add(
        SERVICE_A,
        audiences=[SERVICE_B],
        jwks={"keys": [public_jwk(key_a, "RS256")]},
        exchange_audiences=[SERVICE_B],
    )
    alice = auth.stub.Login(
        auth_pb2.LoginRequest(username="alice", password=PASSWORD, audience=SERVICE_A), timeout=10
    )
    config_b = ResourceServerConfig(
        grpc_address="127.0.0.1:0", issuer=ISSUER, audience=SERVICE_B, auth_target=auth.target
    )
    with open_verifier(config_b) as verifier_b:
        server_b, port_b = build_server(config_b, verifier_b, tracing=tracing)
        config_a = ResourceServerConfig(
            grpc_address="127.0.0.1:0",
            issuer=ISSUER,
            audience=SERVICE_A,
            auth_target=auth.target,
            downstream=DownstreamSettings(
                target=f"127.0.0.1:{port_b}",
                audience=SERVICE_B,
                auth_target=auth.target,
                client_id=SERVICE_A,
                client_key_file=key_file_for(key_a, tmp_path / "a.pem"),
            ),
        )
        verifier_a = open_verifier(config_a)
        if aio:
            aio_a, port_a = loop_thread.run(start_aio_server(config_a, verifier_a, tracing=tracing))
            stop_a: Callable[[], object] = lambda: loop_thread.run(aio_a.stop(0.5))  # noqa: E731
        else:
            sync_a, port_a = build_server(config_a, verifier_a, tracing=tracing)
            stop_a = lambda: sync_a.stop(0.5).wait()  # noqa: E731
        try:
            with grpc.insecure_channel(f"127.0.0.1:{port_a}") as plain:
                channel = grpc.intercept_channel(plain, tracing.client_interceptor())
                stub = resource_pb2_grpc.ResourceServiceStub(channel)
                with tracing.tracer.start_as_current_span("client") as root:
                    answer = stub.GetResourceOnBehalf(
                        resource_pb2.GetProtectedResourceRequest(),
                        metadata=bearer(alice.access_token),
                        timeout=10,
                    )
                assert (answer.user.username, list(answer.user.actors)) == ("alice", [SERVICE_A])
                trace_id = root.get_span_context().trace_id

                def complete(spans: list[ReadableSpan]) -> bool:
                    ours = [s for s in spans if s.context and s.context.trace_id == trace_id]
                    return len(ours) >= 7

                spans = finished(exporter, complete)
        finally:
            stop_a()
            verifier_a.close()
            server_b.stop(0.5).wait()

    root_span = one(spans, "client", SpanKind.INTERNAL, trace_id)
    call_a = one(spans, ON_BEHALF, SpanKind.CLIENT, trace_id)
    served_a = one(spans, ON_BEHALF, SpanKind.SERVER, trace_id)
    exchange = one(spans, TOKEN, SpanKind.CLIENT, trace_id)
    exchanged = one(spans, TOKEN, SpanKind.SERVER, trace_id)
    call_b = one(spans, PROTECTED, SpanKind.CLIENT, trace_id)
    served_b = one(spans, PROTECTED, SpanKind.SERVER, trace_id)
    # client -> A -> (auth service: Token exchange, then B), each hop a child of the last.
    assert child_of(call_a, root_span)
    assert child_of(served_a, call_a)
    assert child_of(exchange, served_a)
    assert child_of(exchanged, exchange)
    assert child_of(call_b, served_a)
    assert child_of(served_b, call_b)
    # Each server checked the token it got, inside its span.
    assert verify_results(served_a) == ["ok"]
    assert verify_results(served_b) == ["ok"]
    # The exchange issued a token, recorded as the auth service's event with its grant type.
    issued = [e for e in exchanged.events if e.name == "token.issued"]
    assert [dict(e.attributes or {}) for e in issued] == [
        {
            "ssot.grant_type": "token_exchange",
            "ssot.algorithm": "RS256",
        }
    ]
    for span in (call_a, served_a, exchange, exchanged, call_b, served_b):
        assert span.attributes is not None
        assert span.attributes["rpc.system"] == "grpc"
        assert span.attributes["rpc.grpc.status_code"] == 0
        assert span.status.status_code is StatusCode.UNSET
    assert served_a.attributes is not None and served_a.attributes["rpc.method"] == (
        "GetResourceOnBehalf"
    )

    # Nothing secret, and nothing naming the user, in any span of any trace (the
    # login and the verifiers' key streams included).
    login_spans = [s for s in exporter.get_finished_spans() if s.name == LOGIN]
    assert [e.name for e in login_spans[0].events][-1:] == ["login.succeeded"]
    text = recorded_text(list(exporter.get_finished_spans()))
    user_id = jwt.decode(alice.access_token, options={"verify_signature": False})["sub"]
    for secret in (alice.access_token, alice.refresh_token, PASSWORD, "eyJ", "alice", user_id):
        assert secret not in text


@pytest.mark.parametrize("aio", [False, True])
def test_a_refused_token_shows_the_reason_on_the_server_span(
    loop_thread: EventLoopThread,
    auth: AuthHarness,
    tracing: Tracing,
    exporter: InMemorySpanExporter,
    aio: bool,
) -> None:
    alice = auth.stub.Login(auth_pb2.LoginRequest(username="alice", password=PASSWORD), timeout=10)
    header, payload, signature = alice.access_token.split(".")
    tampered = f"{header}.{payload}.{signature[:-4]}AAAA"
    config = ResourceServerConfig(
        grpc_address="127.0.0.1:0",
        issuer=ISSUER,
        audience=AUDIENCE,
        auth_target=auth.target,
    )
    with open_verifier(config) as verifier:
        if aio:
            aio_server, port = loop_thread.run(start_aio_server(config, verifier, tracing=tracing))
            stop: Callable[[], object] = lambda: loop_thread.run(aio_server.stop(0.5))  # noqa: E731
        else:
            sync_server, port = build_server(config, verifier, tracing=tracing)
            stop = lambda: sync_server.stop(0.5).wait()  # noqa: E731
        try:
            with grpc.insecure_channel(f"127.0.0.1:{port}") as plain:
                stub = resource_pb2_grpc.ResourceServiceStub(
                    grpc.intercept_channel(plain, tracing.client_interceptor())
                )
                # Probes are not traced: a load balancer's every few seconds is noise.
                for channel in (plain, auth.channel):
                    health_pb2_grpc.HealthStub(channel).Check(
                        health_pb2.HealthCheckRequest(), timeout=10
                    )
                outcomes: dict[str, Any] = {}
                for name, metadata in (
                    ("honest", bearer(alice.access_token)),
                    ("tampered", bearer(tampered)),
                    ("missing", ()),
                ):
                    with tracing.tracer.start_as_current_span(name) as root:
                        try:
                            stub.GetProtectedResource(
                                resource_pb2.GetProtectedResourceRequest(),
                                metadata=metadata,
                                timeout=10,
                            )
                            code = grpc.StatusCode.OK
                        except grpc.RpcError as exc:
                            code = exc.code()  # type: ignore[attr-defined]
                    outcomes[name] = (root.get_span_context().trace_id, code)
                spans = finished(
                    exporter,
                    lambda spans: sum(1 for s in spans if s.name == PROTECTED) >= 6,
                )
        finally:
            stop()

    expected = {
        "honest": (grpc.StatusCode.OK, ["ok"]),
        "tampered": (grpc.StatusCode.UNAUTHENTICATED, ["bad_signature"]),
        "missing": (grpc.StatusCode.UNAUTHENTICATED, ["missing_token"]),
    }
    for name, (code, results) in expected.items():
        trace_id, got = outcomes[name]
        assert got == code, name
        served = one(spans, PROTECTED, SpanKind.SERVER, trace_id)
        client = one(spans, PROTECTED, SpanKind.CLIENT, trace_id)
        assert child_of(served, client)
        assert verify_results(served) == results, name
        assert served.attributes is not None
        assert served.attributes["rpc.grpc.status_code"] == code.value[0]
        # A refusal is the server doing its job: not an error span on the server side;
        # the caller's span records the failed call.
        assert served.status.status_code is StatusCode.UNSET
        expected_client = StatusCode.UNSET if code is grpc.StatusCode.OK else StatusCode.ERROR
        assert client.status.status_code is expected_client
    assert not [s.name for s in exporter.get_finished_spans() if "Health" in s.name]
    text = recorded_text(list(exporter.get_finished_spans()))
    for secret in (alice.access_token, tampered, signature, PASSWORD, "eyJ"):
        assert secret not in text


def test_a_push_stream_is_one_span_that_ends_when_the_client_leaves(
    auth: AuthHarness, exporter: InMemorySpanExporter, caplog: pytest.LogCaptureFixture
) -> None:
    watch = "ssot.auth.v1.AuthService/WatchJwks"
    stream = auth.stub.WatchJwks(auth_pb2.WatchJwksRequest(), timeout=10)
    first = next(stream)
    assert first.keys
    assert not [s for s in exporter.get_finished_spans() if s.name == watch]  # still open
    stream.cancel()
    spans = finished(exporter, lambda spans: any(s.name == watch for s in spans))
    (served,) = [s for s in spans if s.name == watch]
    assert served.kind is SpanKind.SERVER
    assert served.attributes is not None
    assert served.attributes["rpc.grpc.status_code"] == grpc.StatusCode.CANCELLED.value[0]
    # The span's context was left in the task that entered it.
    assert "Failed to detach context" not in caplog.text
    # The metrics agree: the client left, nothing failed.
    text = urllib.request.urlopen(auth.server.metrics_url, timeout=10).read().decode()
    assert f'ssot_auth_rpcs_total{{code="CANCELLED",method="/{watch}"}} 1.0' in text
    assert 'code="UNKNOWN"' not in text
