"""``ssot-auth``: run the token authority and manage its users and keys."""

from __future__ import annotations

import argparse
import asyncio
import getpass
import json
import logging
import signal
import sys
from collections.abc import Callable, Sequence
from typing import Any

import grpc

from auth_server.app import StartupError, start_auth_server
from auth_server.config import (
    DEFAULT_ACCESS_TOKEN_TTL,
    DEFAULT_GRPC_ADDRESS,
    DEFAULT_HTTP_ADDRESS,
    DEFAULT_JWKS_MAX_AGE,
    AuthServerConfig,
)
from auth_server.errors import AuthServerError
from auth_server.jwk import ALGORITHMS
from auth_server.keys import SigningKeyStore
from auth_server.passwords import PasswordHasher
from auth_server.settings import (
    SettingsError,
    add_passphrase_argument,
    add_storage_arguments,
    env_default,
    env_int,
    prepare_data_dir,
    resolve_passphrase,
)
from auth_server.storage import Database, sqlite_url_for
from auth_server.users import UserStore
from protos import auth_pb2, auth_pb2_grpc

_LOGGER = logging.getLogger("ssot_auth")
PROG = "ssot-auth"


class CommandError(Exception):
    """A command failed in a way the user can fix; printed as one line."""


# --- arguments ---------------------------------------------------------------


def _add_server_arguments(parser: argparse.ArgumentParser, *, required: bool) -> None:
    add_storage_arguments(parser)
    add_passphrase_argument(parser)
    parser.add_argument(
        "--grpc",
        default=env_default("GRPC", DEFAULT_GRPC_ADDRESS),
        help=f"gRPC listen address (SSOT_GRPC, default {DEFAULT_GRPC_ADDRESS})",
    )
    parser.add_argument(
        "--http",
        default=env_default("HTTP", DEFAULT_HTTP_ADDRESS),
        help=f"JWKS HTTP listen address (SSOT_HTTP, default {DEFAULT_HTTP_ADDRESS})",
    )
    issuer = env_default("ISSUER")
    audience = env_default("AUDIENCE")
    parser.add_argument(
        "--issuer",
        default=issuer,
        required=required and issuer is None,
        help="token issuer URL, the iss claim (SSOT_ISSUER)",
    )
    parser.add_argument(
        "--audience",
        default=audience,
        required=required and audience is None,
        help="token audience, the aud claim (SSOT_AUDIENCE)",
    )
    parser.add_argument(
        "--algorithm",
        choices=ALGORITHMS,
        default=env_default("ALGORITHM", "RS256"),
        help="signing algorithm for new keys (SSOT_ALGORITHM, default RS256)",
    )
    parser.add_argument(
        "--access-token-ttl",
        type=int,
        default=env_int("ACCESS_TOKEN_TTL", DEFAULT_ACCESS_TOKEN_TTL),
        help="access token lifetime in seconds (SSOT_ACCESS_TOKEN_TTL, default 900)",
    )
    parser.add_argument(
        "--jwks-max-age",
        type=int,
        default=env_int("JWKS_MAX_AGE", DEFAULT_JWKS_MAX_AGE),
        help="JWKS Cache-Control max-age in seconds (SSOT_JWKS_MAX_AGE, default 300)",
    )
    parser.add_argument(
        "--no-reflection",
        action="store_true",
        default=env_default("NO_REFLECTION", "") not in ("", "0", "false"),
        help="do not serve gRPC server reflection (SSOT_NO_REFLECTION=1)",
    )


def _password_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--password-stdin",
        action="store_true",
        help="read the password from the first line of standard input",
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=PROG, description=__doc__)
    parser.add_argument(
        "--log-level",
        default=env_default("LOG_LEVEL", "INFO"),
        choices=["DEBUG", "INFO", "WARNING", "ERROR"],
        help="log level (SSOT_LOG_LEVEL, default INFO)",
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    serve = commands.add_parser("serve", help="run the auth service")
    _add_server_arguments(serve, required=True)
    serve.set_defaults(run=_cmd_serve)

    up = commands.add_parser("up", help="run auth + resource servers on embedded defaults")
    _add_server_arguments(up, required=False)
    up.add_argument(
        "--resource-grpc",
        default=env_default("RESOURCE_GRPC", "127.0.0.1:50052"),
        help="resource server listen address (SSOT_RESOURCE_GRPC)",
    )
    up.set_defaults(run=_cmd_up)

    users = commands.add_parser("users", help="manage users").add_subparsers(
        dest="users_command", required=True, metavar="ACTION"
    )
    add = users.add_parser("add", help="create a user")
    add.add_argument("name")
    add.add_argument("--scope", action="append", default=[], help="grant a scope (repeatable)")
    _password_argument(add)
    add.set_defaults(run=_cmd_users_add)
    listing = users.add_parser("list", help="list users")
    listing.add_argument("--json", action="store_true", help="print JSON lines")
    listing.set_defaults(run=_cmd_users_list)
    for action, helptext in (
        ("disable", "stop a user from logging in"),
        ("enable", "let a disabled user log in again"),
    ):
        p = users.add_parser(action, help=helptext)
        p.add_argument("name")
        p.set_defaults(run=_cmd_users_toggle, action=action)
    setpw = users.add_parser("set-password", help="set a user's password")
    setpw.add_argument("name")
    _password_argument(setpw)
    setpw.set_defaults(run=_cmd_users_set_password)
    for sub in (add, listing, setpw, *(users.choices[a] for a in ("disable", "enable"))):
        add_storage_arguments(sub)

    keys = commands.add_parser("keys", help="manage signing keys").add_subparsers(
        dest="keys_command", required=True, metavar="ACTION"
    )
    klist = keys.add_parser("list", help="list signing keys and their states")
    klist.add_argument("--json", action="store_true", help="print JSON lines")
    klist.set_defaults(run=_cmd_keys_list)
    rotate = keys.add_parser("rotate", help="create a new signing key")
    rotate.add_argument(
        "--activate-after",
        type=float,
        default=0.0,
        help="seconds before the new key starts signing (default: at once)",
    )
    rotate.add_argument(
        "--algorithm", choices=ALGORITHMS, default=env_default("ALGORITHM", "RS256")
    )
    rotate.set_defaults(run=_cmd_keys_rotate)
    revoke = keys.add_parser("revoke", help="remove a compromised key from the key set at once")
    revoke.add_argument("kid")
    revoke.set_defaults(run=_cmd_keys_revoke)
    for sub in (klist, rotate, revoke):
        add_storage_arguments(sub)
        add_passphrase_argument(sub)

    login = commands.add_parser("login", help="log in and print the token response as JSON")
    login.add_argument("name")
    login.add_argument(
        "--target",
        default=env_default("TARGET", DEFAULT_GRPC_ADDRESS),
        help="auth service address (SSOT_TARGET)",
    )
    login.add_argument("--scope", default="", help="space-separated scopes to ask for")
    _password_argument(login)
    login.set_defaults(run=_cmd_login)
    return parser


# --- helpers -----------------------------------------------------------------


def _read_password(ns: argparse.Namespace, *, confirm: bool) -> str:
    if ns.password_stdin:
        line = sys.stdin.readline()
        password = line.removesuffix("\n").removesuffix("\r")
        if not password:
            raise CommandError("no password on standard input")
        return password
    if not sys.stdin.isatty():
        raise CommandError("standard input is not a terminal: use --password-stdin")
    password = getpass.getpass("Password: ")
    if confirm and getpass.getpass("Password (again): ") != password:
        raise CommandError("passwords do not match")
    return password


def _database(ns: argparse.Namespace) -> Database:
    if ns.database_url:
        db = Database(ns.database_url)
    else:
        db = Database(sqlite_url_for(prepare_data_dir(ns.data_dir)))
    db.create_schema()
    return db


def _user_store(ns: argparse.Namespace) -> UserStore:
    return UserStore(_database(ns), PasswordHasher())


def _key_store(ns: argparse.Namespace, algorithm: str = "RS256") -> SigningKeyStore:
    data_dir = prepare_data_dir(ns.data_dir)
    passphrase = resolve_passphrase(ns, data_dir, create=False)
    return SigningKeyStore(_database(ns), passphrase, algorithm=algorithm)


def server_config(ns: argparse.Namespace, *, issuer: str, audience: str) -> AuthServerConfig:
    data_dir = prepare_data_dir(ns.data_dir)
    try:
        return AuthServerConfig(
            grpc_address=ns.grpc,
            http_address=ns.http,
            data_dir=data_dir,
            database_url=ns.database_url,
            issuer=issuer,
            audience=audience,
            algorithm=ns.algorithm,
            access_token_ttl=ns.access_token_ttl,
            jwks_max_age=ns.jwks_max_age,
            key_passphrase=resolve_passphrase(ns, data_dir, create=True),
            reflection=not ns.no_reflection,
        )
    except ValueError as exc:
        raise CommandError(str(exc)) from None


def run_until_signalled(serve: Callable[[asyncio.Event], Any]) -> int:
    """Run ``serve(stop_event)`` until it returns; SIGINT/SIGTERM set the event."""

    async def runner() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        await serve(stop)

    asyncio.run(runner())
    return 0


# --- commands ----------------------------------------------------------------


def _cmd_serve(ns: argparse.Namespace) -> int:
    config = server_config(ns, issuer=ns.issuer, audience=ns.audience)

    async def serve(stop: asyncio.Event) -> None:
        server = await start_auth_server(config)
        print(
            f"ssot-auth serving gRPC on {server.grpc_target}, "
            f"JWKS on {server.http_base_url}/.well-known/jwks.json",
            flush=True,
        )
        await stop.wait()
        _LOGGER.info("shutting down")
        await server.stop()

    return run_until_signalled(serve)


def _cmd_up(ns: argparse.Namespace) -> int:
    from auth_server.demo import run_demo

    return run_demo(ns)


def _cmd_users_add(ns: argparse.Namespace) -> int:
    password = _read_password(ns, confirm=True)
    user = _user_store(ns).add(ns.name, password, ns.scope)
    print(f"created user {user.username} (id {user.id}, scopes: {' '.join(user.scopes) or '-'})")
    return 0


def _cmd_users_list(ns: argparse.Namespace) -> int:
    users = _user_store(ns).list()
    for u in users:
        if ns.json:
            print(
                json.dumps(
                    {
                        "id": u.id,
                        "username": u.username,
                        "scopes": list(u.scopes),
                        "disabled": u.disabled,
                        "created_at": u.created_at,
                    }
                )
            )
        else:
            state = "disabled" if u.disabled else "active"
            print(f"{u.username}\t{u.id}\t{state}\t{' '.join(u.scopes)}")
    return 0


def _cmd_users_toggle(ns: argparse.Namespace) -> int:
    store = _user_store(ns)
    user = store.disable(ns.name) if ns.action == "disable" else store.enable(ns.name)
    print(f"{ns.action}d user {user.username}")
    return 0


def _cmd_users_set_password(ns: argparse.Namespace) -> int:
    store = _user_store(ns)
    if store.get(ns.name) is None:
        raise CommandError(f"no user named {ns.name!r}")
    user = store.set_password(ns.name, _read_password(ns, confirm=True))
    print(f"password set for {user.username}")
    return 0


def _cmd_keys_list(ns: argparse.Namespace) -> int:
    for k in _key_store(ns).list_keys():
        row = {
            "kid": k.kid,
            "algorithm": k.algorithm,
            "state": k.state,
            "created_at": k.created_at,
            "activates_at": k.activates_at,
            "deactivated_at": k.deactivated_at,
            "retires_at": k.retires_at,
            "revoked_at": k.revoked_at,
        }
        if ns.json:
            print(json.dumps(row))
        else:
            print(f"{k.kid}\t{k.algorithm}\t{k.state}")
    return 0


def _cmd_keys_rotate(ns: argparse.Namespace) -> int:
    info = _key_store(ns, ns.algorithm).rotate(activate_after=ns.activate_after)
    print(f"new key {info.kid} ({info.algorithm}), state {info.state}")
    return 0


def _cmd_keys_revoke(ns: argparse.Namespace) -> int:
    info = _key_store(ns).revoke(ns.kid)
    print(f"revoked key {info.kid}")
    return 0


def _cmd_login(ns: argparse.Namespace) -> int:
    password = _read_password(ns, confirm=False)
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


# --- entry point -------------------------------------------------------------


def main(argv: Sequence[str] | None = None) -> int:
    try:
        ns = build_parser().parse_args(argv)
    except SettingsError as exc:
        print(f"{PROG}: error: {exc}", file=sys.stderr)
        return 2
    logging.basicConfig(
        level=ns.log_level,
        stream=sys.stderr,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    run: Callable[[argparse.Namespace], int] = ns.run
    try:
        return run(ns)
    except (CommandError, SettingsError, StartupError) as exc:
        print(f"{PROG}: error: {exc}", file=sys.stderr)
    except AuthServerError as exc:
        print(f"{PROG}: error: {exc.message}", file=sys.stderr)
    except KeyboardInterrupt:
        return 130
    return 1
