"""``ssot-auth login NAME``: log in over gRPC and print the token response as JSON."""

from __future__ import annotations

import argparse
import json
from typing import Any

import grpc

from auth_server.commands._common import CommandError
from auth_server.commands.idp_login import add_idp_arguments, sign_in_with_idp
from auth_server.commands.settings import add_password_argument, read_password
from auth_server.config import DEFAULT_GRPC_ADDRESS
from auth_server.tls import TlsError, channel_credentials
from interceptors._cli import (
    CLIENT_TLS_FLAGS,
    add_client_tls_arguments,
    add_env_argument,
    wants_tls,
)
from protos import auth_pb2, auth_pb2_grpc


def register(commands: Any) -> None:
    login = commands.add_parser(
        "login",
        help="log in (with a password, or at an upstream identity provider with --idp)"
        " and print the token response as JSON",
    )
    login.add_argument("name", nargs="?", help="the user (password login)")
    add_connection_arguments(login)
    add_idp_arguments(login)
    login.add_argument("--scope", default="", help="space-separated scopes to ask for")
    login.add_argument(
        "--audience", default="", help="the audience (aud) to ask for; default: the server's"
    )
    add_password_argument(login)
    login.set_defaults(run=_cmd_login)


def add_connection_arguments(parser: argparse.ArgumentParser) -> None:
    """``--target`` and the TLS flags of a command that calls the auth service."""
    add_env_argument(parser, "--target", default=DEFAULT_GRPC_ADDRESS, help="auth service address")
    add_client_tls_arguments(parser)


def _cmd_login(ns: argparse.Namespace) -> int:
    if ns.idp is not None:
        if ns.name is not None:
            raise CommandError("give a user name or --idp, not both")
        with open_channel(ns) as channel:
            print_token_response(sign_in_with_idp(ns, channel))
        return 0
    if ns.name is None:
        raise CommandError("give the user name to log in as (or --idp NAME)")
    password = read_password(ns, confirm=False)
    with open_channel(ns) as channel:
        stub = auth_pb2_grpc.AuthServiceStub(channel)
        try:
            response = stub.Login(
                auth_pb2.LoginRequest(
                    username=ns.name, password=password, scope=ns.scope, audience=ns.audience
                ),
                timeout=15,
            )
        except grpc.RpcError as exc:
            raise CommandError(f"login failed: {_rpc_error(exc)}") from None
    print_token_response(response)
    return 0


def _rpc_error(exc: grpc.RpcError) -> str:
    code = exc.code() if isinstance(exc, grpc.Call) else grpc.StatusCode.UNKNOWN
    details = exc.details() if isinstance(exc, grpc.Call) else ""
    return f"{code.name}: {details}"


def print_token_response(response: auth_pb2.TokenResponse) -> None:
    """Print our token response as the JSON object of RFC 6749 §5.1."""
    print(
        json.dumps(
            {
                "access_token": response.access_token,
                "token_type": response.token_type,
                "expires_in": response.expires_in,
                "refresh_token": response.refresh_token,
                "scope": response.scope,
            },
            indent=2,
        )
    )


def open_channel(ns: argparse.Namespace) -> grpc.Channel:
    """A channel to ``--target``, with TLS when a TLS flag asks for it."""
    if not wants_tls(ns):
        return grpc.insecure_channel(ns.target)
    try:
        credentials = channel_credentials(ns.ca_cert, ns.client_cert, ns.client_key)
    except TlsError as exc:
        raise CommandError(exc.naming(CLIENT_TLS_FLAGS)) from None
    return grpc.secure_channel(ns.target, credentials)
