"""``ssot-auth login NAME``: log in over gRPC and print the token response as JSON."""

from __future__ import annotations

import argparse
import json
from typing import Any

import grpc

from auth_server.commands._common import CommandError, add_password_argument, read_password
from auth_server.config import DEFAULT_GRPC_ADDRESS
from auth_server.settings import env_default
from protos import auth_pb2, auth_pb2_grpc


def register(commands: Any) -> None:
    login = commands.add_parser("login", help="log in and print the token response as JSON")
    login.add_argument("name")
    login.add_argument(
        "--target",
        default=env_default("TARGET", DEFAULT_GRPC_ADDRESS),
        help="auth service address (SSOT_TARGET)",
    )
    login.add_argument("--scope", default="", help="space-separated scopes to ask for")
    add_password_argument(login)
    login.set_defaults(run=_cmd_login)


def _cmd_login(ns: argparse.Namespace) -> int:
    password = read_password(ns, confirm=False)
    with grpc.insecure_channel(ns.target) as channel:
        stub = auth_pb2_grpc.AuthServiceStub(channel)
        try:
            response = stub.Login(
                auth_pb2.LoginRequest(username=ns.name, password=password, scope=ns.scope),
                timeout=15,
            )
        except grpc.RpcError as exc:
            code = exc.code() if isinstance(exc, grpc.Call) else grpc.StatusCode.UNKNOWN
            details = exc.details() if isinstance(exc, grpc.Call) else ""
            raise CommandError(f"login failed: {code.name}: {details}") from None
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
    return 0
