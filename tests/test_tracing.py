"""OpenTelemetry traces (issue 12): one trace from a client through the resource server and
its token exchange at the auth service, the token check as a span event, nothing secret in it.

Spans go to the SDK's in-memory exporter through a provider of the test's own (never the
global one), so each test sees exactly its spans.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
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
from helpers import AUDIENCE, ISSUER, PASSPHRASE, AuthHarness, EventLoopThread, bearer, make_config
from interceptors._cli import tracing_requested
from interceptors.otel import VERIFY_EVENT, Tracing
from protos import auth_pb2, auth_pb2_grpc, resource_pb2, resource_pb2_grpc
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


@pytest.mark.parametrize(
    ("environ", "wanted"),
    [
        pytest.param({}, False, id="nothing-set"),
        pytest.param({"OTEL_TRACES_EXPORTER": "none"}, False, id="exporter-none"),
        pytest.param({"OTEL_TRACES_EXPORTER": "otlp"}, True, id="otlp"),
        pytest.param({"OTEL_TRACES_EXPORTER": "none, console"}, True, id="list"),
        pytest.param(
            {"OTEL_TRACES_EXPORTER": "otlp", "OTEL_SDK_DISABLED": "TRUE"}, False, id="sdk-disabled"
        ),
        pytest.param(
            {"OTEL_TRACES_EXPORTER": "otlp", "OTEL_SDK_DISABLED": "false"}, True, id="not-disabled"
        ),
    ],
)
def test_the_commands_trace_only_when_the_otel_variables_ask(
    environ: dict[str, str], wanted: bool
) -> None:
    assert tracing_requested(environ) is wanted


ROOT = Path(__file__).resolve().parent.parent


def test_the_commands_load_no_opentelemetry_unless_the_variables_ask() -> None:
    code = (
        "import os, sys\n"
        "for name in [n for n in os.environ if n.startswith('OTEL_')]: del os.environ[n]\n"
        "import auth_server.cli, resource_server.cli\n"
        "from interceptors._cli import start_tracing\n"
        "assert start_tracing('x') is None\n"
        "bad = [m for m in sys.modules if m.startswith('opentelemetry')]\n"
        "assert not bad, bad\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, cwd=ROOT, timeout=60)


def test_an_exporter_that_is_not_installed_is_a_clear_error() -> None:
    env = {**os.environ, "OTEL_TRACES_EXPORTER": "no-such-exporter"}
    env.pop("OTEL_SDK_DISABLED", None)
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "resource_server",
            "serve",
            "--grpc",
            "127.0.0.1:0",
            "--jwks-url",
            "http://127.0.0.1:9/jwks.json",
            "--allow-insecure-http",
            "--issuer",
            ISSUER,
            "--audience",
            AUDIENCE,
        ],
        capture_output=True,
        text=True,
        env=env,
        cwd=ROOT,
        timeout=60,
        check=False,
    )
    assert out.returncode == 1, out.stderr
    assert out.stderr.strip().splitlines()[-1] == (
        "ssot-resource: error: OTEL_TRACES_EXPORTER names 'no-such-exporter', which is not"
        " installed (otlp: pip install opentelemetry-exporter-otlp)"
    )
    assert "Traceback" not in out.stderr


def _serve(command: list[str], env: dict[str, str], ready: str) -> subprocess.Popen[str]:
    proc = subprocess.Popen(
        command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, cwd=ROOT
    )
    assert proc.stdout is not None
    line = proc.stdout.readline()
    if ready not in line:
        proc.kill()
        pytest.fail(f"{command[2]} did not start: {line!r} {proc.communicate(timeout=10)[1]}")
    return proc


def _console_spans(out: str) -> list[dict[str, Any]]:
    """The console exporter's spans: pretty-printed JSON objects after the ready line."""
    decoder = json.JSONDecoder()
    text = out[out.index("{") :] if "{" in out else ""
    spans = []
    while text.strip():
        span, end = decoder.raw_decode(text)
        spans.append(span)
        text = text[end:].lstrip()
    return spans


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.mark.slow  # real processes
def test_both_commands_export_spans_that_continue_the_callers_trace(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SSOT_", "OTEL_"))}
    env.update(
        PYTHONPATH=str(ROOT),
        SSOT_KEY_PASSPHRASE=PASSPHRASE.decode(),
        OTEL_TRACES_EXPORTER="console",
        OTEL_BSP_SCHEDULE_DELAY="100",
    )
    scope = ["--scope", "resource.read", "--password-stdin"]
    data_dir = ["--data-dir", str(tmp_path)]
    added = subprocess.run(
        [sys.executable, "-m", "auth_server", "users", "add", "alice", *scope, *data_dir],
        input=PASSWORD + "\n",
        capture_output=True,
        text=True,
        env=env,
        cwd=ROOT,
        timeout=60,
        check=False,
    )
    assert added.returncode == 0, added.stderr
    auth_target, resource_target = f"127.0.0.1:{_port()}", f"127.0.0.1:{_port()}"
    common = ["--issuer", ISSUER, "--audience", AUDIENCE]
    json_logs = ["--log-level", "INFO", "--log-format", "json"]
    procs = [
        _serve(
            [
                sys.executable,
                "-m",
                "auth_server",
                *json_logs,
                "serve",
                *data_dir,
                *common,
                "--grpc",
                auth_target,
                "--http",
                "127.0.0.1:0",
            ],
            env,
            "ssot-auth serving",
        )
    ]
    try:
        procs.append(
            _serve(
                [
                    sys.executable,
                    "-m",
                    "resource_server",
                    "serve",
                    *common,
                    "--grpc",
                    resource_target,
                    "--auth-target",
                    auth_target,
                ],
                {**env, "OTEL_SERVICE_NAME": "orders-api"},
                "ssot-resource serving",
            )
        )
        trace_id = "4bf92f3577b34da6a3ce929d0e0e4736"
        parents = {
            "login": "00f067aa0ba902b7",
            "good": "00f067aa0ba902b8",
            "bad": "00f067aa0ba902b9",
        }

        def traced(name: str) -> tuple[tuple[str, str], ...]:
            return (("traceparent", f"00-{trace_id}-{parents[name]}-01"),)

        with grpc.insecure_channel(auth_target) as channel:
            alice = auth_pb2_grpc.AuthServiceStub(channel).Login(
                auth_pb2.LoginRequest(username="alice", password=PASSWORD),
                metadata=traced("login"),
                timeout=10,
            )
        with grpc.insecure_channel(resource_target) as channel:
            stub = resource_pb2_grpc.ResourceServiceStub(channel)
            deadline = time.monotonic() + 10
            while True:  # until the verifier holds the key set
                try:
                    stub.GetProtectedResource(
                        resource_pb2.GetProtectedResourceRequest(),
                        metadata=(*bearer(alice.access_token), *traced("good")),
                        timeout=10,
                    )
                    break
                except grpc.RpcError as exc:
                    if exc.code() is not grpc.StatusCode.UNAVAILABLE or time.monotonic() > deadline:  # type: ignore[attr-defined]
                        raise
                    time.sleep(0.1)
            with pytest.raises(grpc.RpcError):
                stub.GetProtectedResource(
                    resource_pb2.GetProtectedResourceRequest(),
                    metadata=(*bearer(alice.access_token + "x"), *traced("bad")),
                    timeout=10,
                )
        outputs = []
        for proc in reversed(procs):
            proc.send_signal(signal.SIGTERM)
            outputs.append(proc.communicate(timeout=30))
            assert proc.returncode == 0, outputs[-1][1][-2000:]
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
                proc.communicate(timeout=10)
    (resource_out, _), (auth_out, auth_err) = outputs

    (login,) = [s for s in _console_spans(auth_out) if s["name"] == LOGIN]
    assert login["kind"] == "SpanKind.SERVER"
    assert login["context"]["trace_id"] == f"0x{trace_id}"
    assert login["parent_id"] == f"0x{parents['login']}"
    assert login["attributes"]["rpc.grpc.status_code"] == 0
    assert login["resource"]["attributes"]["service.name"] == "ssot-auth"
    assert [e["name"] for e in login["events"]][-1] == "login.succeeded"
    # The JSON log lines written while the call was handled name its trace.
    audit = [json.loads(line) for line in auth_err.splitlines() if "login.succeeded" in line]
    (line,) = [a for a in audit if a.get("event") == "login.succeeded"]
    assert (line["trace_id"], line["span_id"]) == (trace_id, login["context"]["span_id"][2:])

    served = {
        s["parent_id"]: s
        for s in _console_spans(resource_out)
        if s["name"] == "ssot.resource.v1.ResourceService/GetProtectedResource"
    }
    good, bad = served[f"0x{parents['good']}"], served[f"0x{parents['bad']}"]
    for span in (good, bad):
        assert span["context"]["trace_id"] == f"0x{trace_id}"
        assert span["resource"]["attributes"]["service.name"] == "orders-api"
    assert [e["attributes"]["ssot.verify.result"] for e in good["events"]] == ["ok"]
    assert [e["attributes"]["ssot.verify.result"] for e in bad["events"]] == ["malformed"]
    assert bad["attributes"]["rpc.grpc.status_code"] == grpc.StatusCode.UNAUTHENTICATED.value[0]
    for secret in (alice.access_token, alice.refresh_token, PASSWORD):
        assert secret not in auth_out + resource_out


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


def test_a_tracer_provider_already_installed_is_used_as_it_is() -> None:
    # As under opentelemetry-instrument: the host set up the SDK; the command must not
    # replace its provider (or its exporters) with one of its own.
    code = (
        "import os\n"
        "from opentelemetry import trace\n"
        "from opentelemetry.sdk.trace import TracerProvider\n"
        "from opentelemetry.sdk.trace.export import SimpleSpanProcessor\n"
        "from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter\n"
        "exporter = InMemorySpanExporter()\n"
        "provider = TracerProvider()\n"
        "provider.add_span_processor(SimpleSpanProcessor(exporter))\n"
        "trace.set_tracer_provider(provider)\n"
        "os.environ['OTEL_TRACES_EXPORTER'] = 'console'\n"
        "from interceptors._cli import start_tracing\n"
        "tracing = start_tracing('ssot-auth')\n"
        "assert trace.get_tracer_provider() is provider\n"
        "tracing.tracer.start_span('x').end()\n"
        "assert [s.name for s in exporter.get_finished_spans()] == ['x']\n"
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("OTEL_")}
    subprocess.run([sys.executable, "-c", code], check=True, cwd=ROOT, env=env, timeout=60)
