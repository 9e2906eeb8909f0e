"""``ssot-auth clients ...``: register and manage service identities (OAuth clients)."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.serialization import load_pem_public_key

from auth_server.clients import Client, ClientStore
from auth_server.commands._common import CommandError, open_database
from auth_server.commands.serve_flags import duration
from auth_server.commands.settings import add_storage_arguments
from auth_server.commands.token import algorithm_for
from auth_server.jwk import public_jwk

_MAX_FILE = 64 * 1024


def register(commands: Any) -> None:
    clients = commands.add_parser("clients", help="manage service identities").add_subparsers(
        dest="clients_command", required=True, metavar="ACTION"
    )
    add = clients.add_parser("add", help="register a client")
    add.add_argument("name")
    add.add_argument("--scope", action="append", default=[], help="allow a scope (repeatable)")
    add.add_argument(
        "--audience",
        action="append",
        required=True,
        help="allow an audience (repeatable); the first is the client's default",
    )
    _add_exchange_arguments(add)
    _add_key_arguments(add, secret=True)
    add.set_defaults(run=_cmd_add)
    listing = clients.add_parser("list", help="list clients")
    listing.add_argument("--json", action="store_true", help="print JSON lines")
    listing.set_defaults(run=_cmd_list)
    show = clients.add_parser("show", help="show one client as JSON")
    show.add_argument("name")
    show.set_defaults(run=_cmd_show)
    for action, text in (
        ("disable", "stop a client from getting tokens"),
        ("enable", "let a disabled client get tokens again"),
        ("remove", "delete a client"),
    ):
        p = clients.add_parser(action, help=text)
        p.add_argument("name")
        p.set_defaults(run=_cmd_toggle, action=action)
    rotate = clients.add_parser("rotate-secret", help="give a secret client a new secret")
    rotate.add_argument("name")
    rotate.add_argument(
        "--keep-old",
        type=duration,
        default=0.0,
        metavar="DURATION",
        help="how long the old secret keeps working, e.g. 1h (default: not at all)",
    )
    rotate.set_defaults(run=_cmd_rotate)
    set_keys = clients.add_parser("set-keys", help="replace a private_key_jwt client's keys")
    set_keys.add_argument("name")
    _add_key_arguments(set_keys, secret=False)
    set_keys.set_defaults(run=_cmd_set_keys)
    exchange = clients.add_parser(
        "set-exchange", help="replace the audiences a client may exchange user tokens to"
    )
    exchange.add_argument("name")
    _add_exchange_arguments(exchange)
    exchange.set_defaults(run=_cmd_set_exchange)
    for sub in clients.choices.values():
        add_storage_arguments(sub)


def _add_exchange_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--exchange-audience",
        action="append",
        default=[],
        metavar="AUD[=SCOPE,...]",
        help="let the client exchange a user's token for one to AUD (RFC 8693), optionally"
        " capped to these scopes (repeatable)",
    )
    parser.add_argument(
        "--exchange-service-tokens",
        action="store_true",
        help="also accept client-credentials tokens as the subject of an exchange",
    )


def _add_key_arguments(parser: argparse.ArgumentParser, *, secret: bool) -> None:
    group = parser.add_mutually_exclusive_group(required=True)
    group.add_argument("--jwks-file", type=Path, help="the client's public JWK Set (JSON)")
    group.add_argument(
        "--public-key-file",
        type=Path,
        help="the client's public key (PEM); its JWK gets the RFC 7638 thumbprint as kid",
    )
    group.add_argument("--jwks-uri", help="where the client publishes its public keys (https)")
    if secret:
        group.add_argument(
            "--tls-subject", help="tls_client_auth: the client certificate's subject DN"
        )
        group.add_argument("--secret", action="store_true", help="generate a secret (printed once)")


def _store(ns: argparse.Namespace) -> ClientStore:
    return ClientStore(open_database(ns))


def _jwks(ns: argparse.Namespace) -> dict[str, Any] | None:
    if ns.jwks_file is not None:
        try:
            document = json.loads(_read(ns.jwks_file))
        except ValueError:
            raise CommandError(f"{ns.jwks_file} is not JSON") from None
        if not isinstance(document, dict):
            raise CommandError(f"{ns.jwks_file} is not a JWK Set")
        return document
    if ns.public_key_file is not None:
        try:
            key = load_pem_public_key(_read(ns.public_key_file))
            return {"keys": [public_jwk(key, algorithm_for(key))]}  # type: ignore[arg-type]
        except ValueError as exc:
            raise CommandError(f"{ns.public_key_file}: {exc}") from None
    return None


def _read(path: Path) -> bytes:
    try:
        with path.open("rb") as f:
            data = f.read(_MAX_FILE + 1)
    except OSError as exc:
        raise CommandError(f"cannot read {path}: {exc.strerror}") from None
    if len(data) > _MAX_FILE:
        raise CommandError(f"{path} is too large")
    return data


def _cmd_add(ns: argparse.Namespace) -> int:
    client, secret = _store(ns).add(
        ns.name,
        scopes=ns.scope,
        audiences=ns.audience,
        jwks=_jwks(ns),
        jwks_uri=ns.jwks_uri,
        tls_subject=ns.tls_subject,
        secret=ns.secret,
        exchange_audiences=ns.exchange_audience,
        exchange_services=ns.exchange_service_tokens,
    )
    print(f"created client {client.id} ({_summary(client)})")
    if secret is not None:
        _print_secret(secret)
    return 0


def _print_secret(secret: str) -> None:
    print(f"client_secret: {secret}")
    print("This secret is shown once; the server keeps only its hash.", file=sys.stderr)


def _summary(client: Client) -> str:
    method = client.as_json()["token_endpoint_auth_method"]
    state = "disabled" if client.disabled else "active"
    return (
        f"{method}, {state}, scopes: {' '.join(client.scopes) or '-'},"
        f" audiences: {' '.join(client.audiences)}"
    )


def _cmd_list(ns: argparse.Namespace) -> int:
    for client in _store(ns).list():
        if ns.json:
            print(json.dumps(client.as_json()))
        else:
            print(f"{client.id}\t{_summary(client)}")
    return 0


def _cmd_show(ns: argparse.Namespace) -> int:
    print(json.dumps(_store(ns).require(ns.name).as_json(), indent=2))
    return 0


def _cmd_toggle(ns: argparse.Namespace) -> int:
    store = _store(ns)
    if ns.action == "remove":
        store.remove(ns.name)
        print(f"removed client {ns.name}")
        return 0
    client = store.set_disabled(ns.name, ns.action == "disable")
    print(f"{ns.action}d client {client.id}")
    return 0


def _cmd_rotate(ns: argparse.Namespace) -> int:
    client, secret = _store(ns).rotate_secret(ns.name, keep_old=ns.keep_old)
    kept = f"; the old one works for {ns.keep_old:g} s more" if ns.keep_old else ""
    print(f"new secret for client {client.id}{kept}")
    _print_secret(secret)
    return 0


def _cmd_set_keys(ns: argparse.Namespace) -> int:
    client = _store(ns).set_keys(ns.name, jwks=_jwks(ns), jwks_uri=ns.jwks_uri)
    print(f"keys replaced for client {client.id}")
    return 0


def _cmd_set_exchange(ns: argparse.Namespace) -> int:
    client = _store(ns).set_exchange(
        ns.name, audiences=ns.exchange_audience, services=ns.exchange_service_tokens
    )
    targets = " ".join(client.exchange_audiences) or "none"
    print(f"client {client.id} may exchange tokens to: {targets}")
    return 0
