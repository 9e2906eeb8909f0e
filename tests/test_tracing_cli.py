"""OpenTelemetry traces from the commands (issue 12): when the ``OTEL_*`` variables turn them
on, what a missing exporter says, a host's own provider, and both servers as real processes
exporting to the console.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import grpc
import pytest

from helpers import AUDIENCE, ISSUER, PASSPHRASE, bearer
from interceptors._cli import tracing_requested
from protos import auth_pb2, auth_pb2_grpc, resource_pb2, resource_pb2_grpc

PASSWORD = "correct horse battery"
LOGIN = "ssot.auth.v1.AuthService/Login"


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
