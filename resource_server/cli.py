"""``ssot-resource``: run the example protected service, or call it with a token."""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import signal
import sys
import threading
from collections.abc import Sequence
from pathlib import Path

import grpc
from google.protobuf import json_format
from google.protobuf.message import Message

from interceptors import CERT_BINDINGS
from interceptors.tls import TlsError, channel_credentials
from protos import resource_pb2, resource_pb2_grpc
from resource_server.app import (
    DEFAULT_GRPC_ADDRESS,
    DEFAULT_MAX_CONCURRENT_STREAMS,
    DEFAULT_MAX_JSON_DEPTH,
    DEFAULT_MAX_MESSAGE_SIZE,
    DEFAULT_MAX_METADATA_SIZE,
    DEFAULT_MAX_TOKEN_LENGTH,
    DEFAULT_MAX_TOKEN_LIFETIME,
    ResourceServerConfig,
    StartupError,
    build_server,
    open_verifier,
    start_aio_server,
)

PROG = "ssot-resource"
_LOGGER = logging.getLogger("ssot_resource")


class CommandError(Exception):
    """A command failed in a way the user can fix; printed as one line."""


def _env(name: str, default: str | None = None) -> str | None:
    return os.environ.get(f"SSOT_{name}", default)


def _flag(name: str) -> bool:
    return _env(name, "") not in ("", "0", "false")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=PROG, description=__doc__)
    parser.add_argument(
        "--log-level",
        default=_env("LOG_LEVEL", "INFO"),
        choices=["DEBUG", "INFO", "WARNING", "ERROR"],
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    serve = commands.add_parser("serve", help="run the resource service")
    serve.add_argument(
        "--grpc",
        default=_env("GRPC", DEFAULT_GRPC_ADDRESS),
        help=f"listen address (SSOT_GRPC, default {DEFAULT_GRPC_ADDRESS})",
    )
    source = serve.add_mutually_exclusive_group()
    source.add_argument(
        "--jwks-url", default=_env("JWKS_URL"), help="fetch keys from this JWKS URL (SSOT_JWKS_URL)"
    )
    source.add_argument(
        "--auth-target",
        default=_env("AUTH_TARGET"),
        help="fetch and follow keys over gRPC from the auth service at "
        "HOST:PORT (SSOT_AUTH_TARGET)",
    )
    source.add_argument(
        "--discover",
        action="store_true",
        default=_flag("DISCOVER"),
        help="find the JWKS by OIDC discovery on --issuer (SSOT_DISCOVER=1)",
    )
    serve.add_argument("--issuer", default=_env("ISSUER"), help="accepted iss (SSOT_ISSUER)")
    serve.add_argument("--audience", default=_env("AUDIENCE"), help="accepted aud (SSOT_AUDIENCE)")
    serve.add_argument(
        "--allow-insecure-http",
        action="store_true",
        default=_flag("ALLOW_INSECURE_HTTP"),
        help="allow fetching keys over plain HTTP from a non-loopback host",
    )
    serve.add_argument(
        "--aio",
        action="store_true",
        default=_flag("AIO"),
        help="serve with grpc.aio instead of a thread pool (SSOT_AIO=1)",
    )
    serve.add_argument("--no-reflection", action="store_true", default=_flag("NO_REFLECTION"))
    _add_tls_arguments(serve)
    _add_limit_arguments(serve)
    serve.set_defaults(run=_cmd_serve)

    get = commands.add_parser("get", help="call the service with an access token")
    get.add_argument(
        "--target",
        default=_env("TARGET", DEFAULT_GRPC_ADDRESS),
        help=f"resource service address (default {DEFAULT_GRPC_ADDRESS})",
    )
    get.add_argument(
        "--token-file",
        type=Path,
        help="file with the token: the JSON printed by `ssot-auth login`, or the "
        "bare token; '-' reads standard input",
    )
    get.add_argument("--method", choices=["protected", "admin", "public"], default="protected")
    _add_client_tls_arguments(get)
    get.set_defaults(run=_cmd_get)
    return parser


def _add_client_tls_arguments(parser: argparse.ArgumentParser) -> None:
    """``--tls``, ``--ca-cert``, ``--client-cert``, ``--client-key`` of a calling command."""
    parser.add_argument(
        "--tls",
        action="store_true",
        default=_flag("TLS"),
        help="connect with TLS, trusting the system roots (implied by --ca-cert; SSOT_TLS=1)",
    )
    parser.add_argument(
        "--ca-cert",
        type=Path,
        default=_env("CA_CERT"),
        help="connect with TLS, trusting the CAs in this PEM file (SSOT_CA_CERT)",
    )
    parser.add_argument(
        "--client-cert",
        type=Path,
        default=_env("CLIENT_CERT"),
        help="client certificate chain (PEM) for mutual TLS (SSOT_CLIENT_CERT)",
    )
    parser.add_argument(
        "--client-key",
        type=Path,
        default=_env("CLIENT_KEY"),
        help="private key (PEM) of --client-cert (SSOT_CLIENT_KEY)",
    )


def _open_channel(ns: argparse.Namespace, target: str) -> grpc.Channel:
    """A channel to ``target``: TLS when any of the client TLS flags asks for it."""
    if not (ns.tls or ns.ca_cert or ns.client_cert or ns.client_key):
        return grpc.insecure_channel(target)
    try:
        credentials = channel_credentials(ns.ca_cert, ns.client_cert, ns.client_key)
    except TlsError as exc:
        raise CommandError(str(exc)) from None
    return grpc.secure_channel(target, credentials)


def _add_tls_arguments(serve: argparse.ArgumentParser) -> None:
    serve.add_argument(
        "--tls-cert",
        type=Path,
        default=_env("TLS_CERT"),
        help="serve TLS with this certificate chain, PEM (SSOT_TLS_CERT; needs --tls-key)",
    )
    serve.add_argument(
        "--tls-key", type=Path, default=_env("TLS_KEY"), help="its private key, PEM (SSOT_TLS_KEY)"
    )
    serve.add_argument(
        "--client-ca",
        type=Path,
        default=_env("CLIENT_CA"),
        help="require client certificates signed by these CAs: mutual TLS (SSOT_CLIENT_CA)",
    )
    serve.add_argument(
        "--require-cert-binding",
        choices=CERT_BINDINGS,
        default=_env("REQUIRE_CERT_BINDING"),
        help="the client certificate must match the token: 'subject' (it names the token's "
        "sub or username) or 'cnf' (RFC 8705 x5t#S256); needs --client-ca "
        "(SSOT_REQUIRE_CERT_BINDING)",
    )
    serve.add_argument(
        "--auth-tls",
        action="store_true",
        default=_flag("AUTH_TLS"),
        help="reach --auth-target over TLS (implied by --auth-ca-cert; SSOT_AUTH_TLS=1)",
    )
    serve.add_argument(
        "--auth-ca-cert",
        type=Path,
        default=_env("AUTH_CA_CERT"),
        help="trust these CAs for the key source, gRPC or HTTPS (SSOT_AUTH_CA_CERT)",
    )
    serve.add_argument(
        "--auth-client-cert",
        type=Path,
        default=_env("AUTH_CLIENT_CERT"),
        help="client certificate for an auth service that requires mutual TLS "
        "(SSOT_AUTH_CLIENT_CERT)",
    )
    serve.add_argument(
        "--auth-client-key",
        type=Path,
        default=_env("AUTH_CLIENT_KEY"),
        help="private key of --auth-client-cert (SSOT_AUTH_CLIENT_KEY)",
    )


_LIMITS = (
    ("max-metadata-size", DEFAULT_MAX_METADATA_SIZE, "largest request metadata, bytes"),
    ("max-message-size", DEFAULT_MAX_MESSAGE_SIZE, "largest request message, bytes"),
    ("max-concurrent-streams", DEFAULT_MAX_CONCURRENT_STREAMS, "most calls per connection"),
    ("max-token-length", DEFAULT_MAX_TOKEN_LENGTH, "longest access token, characters"),
    ("max-json-depth", DEFAULT_MAX_JSON_DEPTH, "deepest JSON nesting in a token"),
    ("max-token-lifetime", DEFAULT_MAX_TOKEN_LIFETIME, "largest exp - iat, seconds"),
)


def _add_limit_arguments(serve: argparse.ArgumentParser) -> None:
    for flag, default, what in _LIMITS:
        env = flag.upper().replace("-", "_")
        serve.add_argument(
            f"--{flag}",
            type=int,
            default=_env(env, str(default)),
            help=f"{what} (SSOT_{env}, default {default})",
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
        )
    except ValueError as exc:
        raise CommandError(str(exc)) from None


def _cmd_serve(ns: argparse.Namespace) -> int:
    config = _config(ns)
    try:
        verifier = open_verifier(config)
    except ValueError as exc:
        raise CommandError(str(exc)) from None
    with verifier:
        if ns.aio:

            async def serve() -> None:
                stop = asyncio.Event()
                loop = asyncio.get_running_loop()
                for sig in (signal.SIGINT, signal.SIGTERM):
                    loop.add_signal_handler(sig, stop.set)
                server, port = await start_aio_server(config, verifier)
                print(f"ssot-resource (aio) serving on port {port}", flush=True)
                await stop.wait()
                await server.stop(2)

            asyncio.run(serve())
        else:
            server, port = build_server(config, verifier)
            print(f"ssot-resource serving on port {port}", flush=True)
            stopped = threading.Event()
            for sig in (signal.SIGINT, signal.SIGTERM):
                signal.signal(sig, lambda *_: stopped.set())
            stopped.wait()
            server.stop(2).wait()
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
    ns = build_parser().parse_args(argv)
    logging.basicConfig(
        level=ns.log_level,
        stream=sys.stderr,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    try:
        result: int = ns.run(ns)
        return result
    except (CommandError, StartupError) as exc:
        print(f"{PROG}: error: {exc}", file=sys.stderr)
    except KeyboardInterrupt:
        return 130
    return 1
