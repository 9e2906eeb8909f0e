"""``ssot-resource``: run the example protected service, or call it with a token."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import json
import logging
import os
import signal
import sys
import threading
from collections.abc import Callable, Sequence
from pathlib import Path

import grpc
from google.protobuf import json_format
from google.protobuf.message import Message

from interceptors import ClientSecret, PrivateKeyJwt
from interceptors._cli import (
    CLIENT_TLS_FLAGS,
    SettingsError,
    add_log_level_argument,
    parse_command_line,
    run_until_signalled,
    start_tracing,
    wants_tls,
)
from interceptors._workers import (
    WorkerError,
    per_worker_address,
    run_workers,
)
from interceptors.tls import TlsError, channel_credentials
from protos import resource_pb2, resource_pb2_grpc
from resource_server.app import (
    HEALTH_SERVICES,
    WATCH_SCOPE,
    ResourceServerConfig,
    StartupError,
    build_server,
    open_verifier,
    start_aio_server,
)
from resource_server.cli_flags import add_get_arguments, add_serve_arguments
from resource_server.downstream import DownstreamSettings
from resource_server.ops import AsyncKeyedHealthServicer, KeyedHealthServicer, start_metrics

PROG = "ssot-resource"
_LOGGER = logging.getLogger("ssot_resource")


class CommandError(Exception):
    """A command failed in a way the user can fix; printed as one line."""


#: How the --auth-* flags name ``channel_credentials``' parameters, in TlsError messages.
AUTH_SOURCE_TLS_FLAGS = {
    "ca_cert": "--auth-ca-cert",
    "client_cert": "--auth-client-cert",
    "client_key": "--auth-client-key",
}


def build_parser() -> argparse.ArgumentParser:
    """The ``ssot-resource`` parser; every flag also reads its ``SSOT_*`` variable.

    Raises:
        SettingsError: A variable holds a value its flag refuses.
    """
    parser = argparse.ArgumentParser(prog=PROG, description=__doc__)
    add_log_level_argument(parser)
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    serve = commands.add_parser("serve", help="run the resource service")
    add_serve_arguments(serve)
    serve.set_defaults(run=_cmd_serve)

    get = commands.add_parser("get", help="call the service with an access token")
    add_get_arguments(get)
    get.set_defaults(run=_cmd_get)
    return parser


def _open_channel(ns: argparse.Namespace, target: str) -> grpc.Channel:
    """A channel to ``target``: TLS when any of the client TLS flags asks for it."""
    if not wants_tls(ns):
        return grpc.insecure_channel(target)
    try:
        credentials = channel_credentials(ns.ca_cert, ns.client_cert, ns.client_key)
    except TlsError as exc:
        raise CommandError(exc.naming(CLIENT_TLS_FLAGS)) from None
    return grpc.secure_channel(target, credentials)


def _downstream(ns: argparse.Namespace) -> DownstreamSettings | None:
    if not ns.downstream:
        return None
    return DownstreamSettings(
        target=ns.downstream,
        audience=ns.downstream_audience or "",
        auth_target=ns.auth_target or "",
        client_id=ns.client_id or "",
        client_key_file=ns.client_key_file or Path(),
    )


def _watch_identity(ns: argparse.Namespace) -> PrivateKeyJwt | ClientSecret | None:
    if not ns.watch_token:
        return None
    if not ns.client_id or (ns.client_key_file is None) == (ns.client_secret_file is None):
        raise CommandError(
            "--watch-token needs --client-id and one of --client-key-file, --client-secret-file"
        )
    if ns.client_secret_file is not None:
        try:
            secret = ns.client_secret_file.read_text().strip()
        except (OSError, UnicodeDecodeError) as exc:
            raise CommandError(f"cannot read --client-secret-file: {type(exc).__name__}") from None
        if not secret:
            raise CommandError("--client-secret-file is empty")
        return ClientSecret(client_id=ns.client_id, secret=secret, scope=WATCH_SCOPE)
    return PrivateKeyJwt(
        client_id=ns.client_id, key=ns.client_key_file, issuer=ns.issuer, scope=WATCH_SCOPE
    )


def _config(ns: argparse.Namespace) -> ResourceServerConfig:
    if not ns.issuer or not ns.audience:
        raise CommandError("--issuer and --audience are required")
    try:
        return ResourceServerConfig(
            grpc_address=ns.grpc,
            issuer=ns.issuer,
            audience=ns.audience,
            jwks_url=ns.jwks_url,
            auth_target=ns.auth_target,
            discover=ns.discover,
            allow_insecure_http=ns.allow_insecure_http,
            reflection=not ns.no_reflection,
            tls_cert=ns.tls_cert,
            tls_key=ns.tls_key,
            client_ca=ns.client_ca,
            cert_binding=ns.require_cert_binding,
            auth_tls=ns.auth_tls,
            auth_ca_cert=ns.auth_ca_cert,
            auth_client_cert=ns.auth_client_cert,
            auth_client_key=ns.auth_client_key,
            max_metadata_size=ns.max_metadata_size,
            max_message_size=ns.max_message_size,
            max_concurrent_streams=ns.max_concurrent_streams,
            max_token_length=ns.max_token_length,
            max_json_depth=ns.max_json_depth,
            max_token_lifetime=ns.max_token_lifetime,
            revocations_fail_closed=ns.revocations_fail_closed,
            downstream=_downstream(ns),
            metrics_address=ns.metrics,
            shutdown_grace=ns.shutdown_grace,
            watch_identity=_watch_identity(ns),
        )
    except ValueError as exc:
        raise CommandError(str(exc)) from None


def _cmd_serve(ns: argparse.Namespace) -> int:
    config = _config(ns)
    if ns.workers == 1:
        return _serve_one(config, aio=ns.aio, ready=lambda: None)
    shared = dataclasses.replace(config, reuse_port=True)
    try:
        return run_workers(
            ns.workers,
            lambda ready: _serve_one(shared, aio=ns.aio, ready=ready),
            prog=PROG,
            errors=(CommandError, StartupError),
            ports=[(config.grpc_address, "--grpc")],
        )
    except WorkerError as exc:
        raise CommandError(str(exc)) from None


def _serve_one(config: ResourceServerConfig, *, aio: bool, ready: Callable[[], None]) -> int:
    # In each worker of --workers N: its own key cache and push streams.
    try:
        verifier = open_verifier(config)
    except TlsError as exc:
        raise CommandError(exc.naming(AUTH_SOURCE_TLS_FLAGS)) from None
    except ValueError as exc:
        raise CommandError(str(exc)) from None
    with verifier, contextlib.ExitStack() as opened:
        try:
            tracing = start_tracing("ssot-resource")
        except SettingsError as exc:
            raise CommandError(str(exc)) from None
        observer = None
        metrics_address = per_worker_address(config.metrics_address)
        if metrics_address is not None:
            try:
                endpoint = start_metrics(verifier, metrics_address)
            except ValueError as exc:
                raise CommandError(str(exc)) from None
            except OSError:
                raise CommandError(f"cannot listen on {metrics_address} (--metrics)") from None
            opened.callback(endpoint.close)
            observer = endpoint.observer
            print(f"ssot-resource metrics on port {endpoint.port}", flush=True)
        grace = config.shutdown_grace
        if aio:

            async def serve(stop: asyncio.Event) -> None:
                aio_health = AsyncKeyedHealthServicer(verifier, HEALTH_SERVICES)
                server, port = await start_aio_server(
                    config,
                    verifier,
                    observer=observer,
                    health_servicer=aio_health,
                    tracing=tracing,
                )
                print(f"ssot-resource (aio) serving on port {port}", flush=True)
                ready()
                await stop.wait()
                # Load balancers stop sending first; then calls in flight finish.
                await aio_health.enter_graceful_shutdown()
                await server.stop(grace)

            run_until_signalled(serve)
        else:
            sync_health = KeyedHealthServicer(verifier, HEALTH_SERVICES)
            server, port = build_server(
                config,
                verifier,
                observer=observer,
                health_servicer=sync_health,
                tracing=tracing,
            )
            print(f"ssot-resource serving on port {port}", flush=True)
            ready()
            stopped = threading.Event()
            for sig in (signal.SIGINT, signal.SIGTERM):
                signal.signal(sig, lambda *_: stopped.set())
            stopped.wait()
            sync_health.enter_graceful_shutdown()
            server.stop(grace).wait()
    return 0


def _read_token(path: Path | None) -> str:
    if path is None:
        token = os.environ.get("SSOT_TOKEN", "")
        if not token:
            raise CommandError("give --token-file or SSOT_TOKEN")
        return token
    try:
        text = sys.stdin.read() if str(path) == "-" else path.read_text()
    except (OSError, UnicodeDecodeError) as exc:
        raise CommandError(f"cannot read --token-file {path}: {type(exc).__name__}") from None
    text = text.strip()
    if text.startswith("{"):
        try:
            token = json.loads(text).get("access_token", "")
        except (json.JSONDecodeError, AttributeError):
            raise CommandError(
                f"--token-file {path} is not the JSON of `ssot-auth login`"
            ) from None
        if not isinstance(token, str) or not token:
            raise CommandError(f"--token-file {path} has no access_token")
        return token
    return text


def _cmd_get(ns: argparse.Namespace) -> int:
    metadata = (
        None
        if ns.method == "public"
        else (("authorization", f"Bearer {_read_token(ns.token_file)}"),)
    )
    with _open_channel(ns, ns.target) as channel:
        stub = resource_pb2_grpc.ResourceServiceStub(channel)
        response: Message
        try:
            if ns.method == "protected":
                response = stub.GetProtectedResource(
                    resource_pb2.GetProtectedResourceRequest(), metadata=metadata, timeout=10
                )
            elif ns.method == "admin":
                response = stub.GetAdminReport(
                    resource_pb2.GetAdminReportRequest(), metadata=metadata, timeout=10
                )
            else:
                response = stub.GetPublicInfo(resource_pb2.GetPublicInfoRequest(), timeout=10)
        except grpc.RpcError as exc:
            code = exc.code() if isinstance(exc, grpc.Call) else grpc.StatusCode.UNKNOWN
            details = exc.details() if isinstance(exc, grpc.Call) else ""
            raise CommandError(f"{code.name}: {details}") from None
    print(
        json.dumps(json_format.MessageToDict(response, preserving_proto_field_name=True), indent=2)
    )
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    ns = parse_command_line(build_parser, argv, prog=PROG)
    if ns is None:
        return 2
    try:
        result: int = ns.run(ns)
        return result
    except (CommandError, StartupError) as exc:
        print(f"{PROG}: error: {exc}", file=sys.stderr)
    except KeyboardInterrupt:
        return 130
    return 1
