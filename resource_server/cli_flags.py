"""The flags of ``ssot-resource serve`` and ``get``; the commands are in :mod:`resource_server.cli`.

Every flag also reads its ``SSOT_*`` variable (``interceptors._cli.add_env_argument``).
"""

from __future__ import annotations

import argparse
from pathlib import Path

from interceptors import CERT_BINDINGS
from interceptors._cli import add_client_tls_arguments, add_env_argument, add_server_tls_arguments
from interceptors._workers import add_workers_argument
from resource_server.app import (
    DEFAULT_GRPC_ADDRESS,
    DEFAULT_MAX_CONCURRENT_STREAMS,
    DEFAULT_MAX_JSON_DEPTH,
    DEFAULT_MAX_MESSAGE_SIZE,
    DEFAULT_MAX_METADATA_SIZE,
    DEFAULT_MAX_TOKEN_LENGTH,
    DEFAULT_MAX_TOKEN_LIFETIME,
    WATCH_SCOPE,
)


def add_serve_arguments(serve: argparse.ArgumentParser) -> None:
    """The flags of ``ssot-resource serve``; each also reads its ``SSOT_*`` variable."""
    add_env_argument(
        serve,
        "--grpc",
        default=DEFAULT_GRPC_ADDRESS,
        help="listen address",
        default_help=DEFAULT_GRPC_ADDRESS,
    )
    source = serve.add_mutually_exclusive_group()
    add_env_argument(source, "--jwks-url", help="fetch keys from this JWKS URL")
    add_env_argument(
        source,
        "--auth-target",
        help="fetch and follow keys over gRPC from the auth service at HOST:PORT",
    )
    add_env_argument(
        source,
        "--discover",
        action="store_true",
        help="find the JWKS by OIDC discovery on --issuer",
    )
    add_env_argument(serve, "--issuer", help="accepted iss")
    add_env_argument(serve, "--audience", help="accepted aud")
    add_env_argument(
        serve,
        "--allow-insecure-http",
        action="store_true",
        help="allow fetching keys over plain HTTP from a non-loopback host",
    )
    add_env_argument(
        serve, "--aio", action="store_true", help="serve with grpc.aio instead of a thread pool"
    )
    add_env_argument(
        serve, "--no-reflection", action="store_true", help="do not serve gRPC server reflection"
    )
    add_env_argument(
        serve,
        "--revocations-fail-closed",
        type=float,
        metavar="SECONDS",
        help="with --auth-target: refuse every token (UNAVAILABLE) until the revocation "
        "list has synced, and once it has been out of sync for longer than SECONDS "
        "(default: fail open, revoked tokens pass until exp while the stream is down)",
    )
    add_env_argument(
        serve,
        "--metrics",
        metavar="HOST:PORT",
        help="serve Prometheus /metrics of the verifier on this address",
    )
    add_env_argument(
        serve,
        "--shutdown-grace",
        type=float,
        default=5.0,
        metavar="SECONDS",
        help="on SIGTERM, after health turns NOT_SERVING, how long in-flight calls get",
        default_help=5.0,
    )
    _add_downstream_arguments(serve)
    _add_tls_arguments(serve)
    _add_limit_arguments(serve)
    add_workers_argument(serve)


def add_get_arguments(get: argparse.ArgumentParser) -> None:
    """The flags of ``ssot-resource get``."""
    add_env_argument(
        get,
        "--target",
        default=DEFAULT_GRPC_ADDRESS,
        help="resource service address",
        default_help=DEFAULT_GRPC_ADDRESS,
    )
    get.add_argument(
        "--token-file",
        type=Path,
        help="file with the token: the JSON printed by `ssot-auth login`, or the "
        "bare token; '-' reads standard input; without it, SSOT_TOKEN holds the token",
    )
    get.add_argument("--method", choices=["protected", "admin", "public"], default="protected")
    add_client_tls_arguments(get)


def _add_tls_arguments(serve: argparse.ArgumentParser) -> None:
    add_server_tls_arguments(serve, serves="gRPC")
    add_env_argument(
        serve,
        "--require-cert-binding",
        choices=CERT_BINDINGS,
        help="the client certificate must match the token: 'subject' (it names the token's "
        "sub or username) or 'cnf' (RFC 8705 x5t#S256); needs --client-ca",
    )
    add_env_argument(
        serve,
        "--auth-tls",
        action="store_true",
        help="reach --auth-target over TLS",
        note="implied by --auth-ca-cert",
    )
    add_env_argument(
        serve,
        "--auth-ca-cert",
        type=Path,
        help="trust these CAs for the key source, gRPC or HTTPS",
    )
    add_env_argument(
        serve,
        "--auth-client-cert",
        type=Path,
        help="client certificate for an auth service that requires mutual TLS",
    )
    add_env_argument(
        serve, "--auth-client-key", type=Path, help="private key of --auth-client-cert"
    )


_LIMITS = (
    ("--max-metadata-size", DEFAULT_MAX_METADATA_SIZE, "largest request metadata, bytes"),
    ("--max-message-size", DEFAULT_MAX_MESSAGE_SIZE, "largest request message, bytes"),
    ("--max-concurrent-streams", DEFAULT_MAX_CONCURRENT_STREAMS, "most calls per connection"),
    ("--max-token-length", DEFAULT_MAX_TOKEN_LENGTH, "longest access token, characters"),
    ("--max-json-depth", DEFAULT_MAX_JSON_DEPTH, "deepest JSON nesting in a token"),
    ("--max-token-lifetime", DEFAULT_MAX_TOKEN_LIFETIME, "largest exp - iat, seconds"),
)


def _add_downstream_arguments(serve: argparse.ArgumentParser) -> None:
    add_env_argument(
        serve,
        "--downstream",
        metavar="HOST:PORT",
        help="GetResourceOnBehalf calls this service as the caller (token exchange)",
    )
    add_env_argument(serve, "--downstream-audience", help="the downstream service's audience")
    add_env_argument(
        serve, "--client-id", help="this service's client id at the auth service (= --audience)"
    )
    add_env_argument(
        serve,
        "--client-key-file",
        type=Path,
        help="PEM private key of the client (private_key_jwt) for the exchange and --watch-token",
    )
    add_env_argument(
        serve,
        "--client-secret-file",
        type=Path,
        help="file holding the client's secret, for --watch-token instead of --client-key-file",
    )
    add_env_argument(
        serve,
        "--watch-token",
        action="store_true",
        help=f"open the --auth-target streams with a {WATCH_SCOPE} client-credentials token of"
        " --client-id (for an auth service run with --watch-auth token)",
    )


def _add_limit_arguments(serve: argparse.ArgumentParser) -> None:
    for flag, default, what in _LIMITS:
        add_env_argument(serve, flag, type=int, default=default, help=what, default_help=default)
