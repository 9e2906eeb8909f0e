"""``ssot-auth idp ...``: the upstream identity providers people sign in with."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from auth_server._envelope import KeyEncryption
from auth_server.commands._common import CommandError, open_database
from auth_server.commands.settings import (
    add_passphrase_argument,
    add_storage_arguments,
    key_kdf,
    prepare_data_dir,
    resolve_passphrase,
)
from auth_server.idps import DEFAULT_SCOPE, DEFAULT_USERNAME_CLAIM, IdentityProvider, IdpStore

_MAX_FILE = 16 * 1024


def register(commands: Any) -> None:
    idp = commands.add_parser(
        "idp", help="manage upstream identity providers (sign in with OpenID Connect)"
    ).add_subparsers(dest="idp_command", required=True, metavar="ACTION")
    add = idp.add_parser("add", help="register an OpenID Provider")
    add.add_argument("name")
    add.add_argument("--issuer", required=True, help="its issuer URL, exactly as in its tokens")
    add.add_argument("--client-id", required=True, help="our client id at the provider")
    credential = add.add_mutually_exclusive_group()
    credential.add_argument(
        "--client-secret-stdin",
        action="store_true",
        help="read our client secret at the provider from the first line of standard input"
        " (stored sealed under the key passphrase)",
    )
    credential.add_argument(
        "--private-key-file",
        type=Path,
        help="PEM private key for private_key_jwt at the provider (stored sealed)",
    )
    add.add_argument(
        "--scope", default=DEFAULT_SCOPE, help=f"asked of the provider ({DEFAULT_SCOPE!r})"
    )
    add.add_argument(
        "--username-claim",
        default=DEFAULT_USERNAME_CLAIM,
        help=f"the claim that names a user created at first sign-in ({DEFAULT_USERNAME_CLAIM})",
    )
    add.add_argument(
        "--allowed-domain",
        action="append",
        default=[],
        help="allow only verified e-mail addresses of this domain (repeatable; default: any)",
    )
    add.add_argument(
        "--default-scope",
        action="append",
        default=[],
        help="a scope of ours that users created at first sign-in hold (repeatable)",
    )
    add_passphrase_argument(add)
    add.set_defaults(run=_cmd_add)
    listing = idp.add_parser("list", help="list identity providers")
    listing.add_argument("--json", action="store_true", help="print JSON lines")
    listing.set_defaults(run=_cmd_list)
    show = idp.add_parser("show", help="show one identity provider as JSON")
    show.add_argument("name")
    show.set_defaults(run=_cmd_show)
    for action, text in (
        ("disable", "refuse the provider's ID tokens and end the sessions signed in with it"),
        ("enable", "accept a disabled provider's ID tokens again"),
        ("remove", "delete a provider, its identity links and its sessions (users stay)"),
    ):
        p = idp.add_parser(action, help=text)
        p.add_argument("name")
        p.set_defaults(run=_cmd_toggle, action=action)
    for sub in idp.choices.values():
        add_storage_arguments(sub)


def open_idp_store(ns: argparse.Namespace, *, credentials: bool = False) -> IdpStore:
    """The provider store; with ``credentials``, able to seal and open them (the passphrase)."""
    database = open_database(ns)
    if not credentials:
        return IdpStore(database)
    passphrase = resolve_passphrase(ns, prepare_data_dir(ns.data_dir), create=False)
    return IdpStore(database, sealer=KeyEncryption(passphrase, key_kdf(ns)))


def _cmd_add(ns: argparse.Namespace) -> int:
    secret = _read_secret() if ns.client_secret_stdin else None
    key = _read(ns.private_key_file) if ns.private_key_file is not None else None
    store = open_idp_store(ns, credentials=secret is not None or key is not None)
    provider = store.add(
        ns.name,
        issuer=ns.issuer,
        client_id=ns.client_id,
        client_secret=secret,
        private_key_pem=key,
        scope=ns.scope,
        username_claim=ns.username_claim,
        allowed_domains=ns.allowed_domain,
        default_scopes=ns.default_scope,
    )
    print(f"added identity provider {provider.name} ({_summary(provider)})")
    return 0


def _read_secret() -> str:
    line = sys.stdin.readline(_MAX_FILE + 1).rstrip("\r\n")
    if not line:
        raise CommandError("no client secret on standard input")
    return line


def _read(path: Path) -> bytes:
    try:
        with path.open("rb") as f:
            data = f.read(_MAX_FILE + 1)
    except OSError as exc:
        raise CommandError(f"cannot read {path}: {exc.strerror}") from None
    if len(data) > _MAX_FILE:
        raise CommandError(f"{path} is too large")
    return data


def _summary(provider: IdentityProvider) -> str:
    state = "disabled" if provider.disabled else "active"
    domains = " ".join(provider.allowed_domains) or "any"
    return (
        f"{provider.issuer}, client {provider.client_id}, {provider.auth_method}, {state},"
        f" domains: {domains}, new users' scopes: {' '.join(provider.default_scopes) or '-'}"
    )


def _cmd_list(ns: argparse.Namespace) -> int:
    for provider in open_idp_store(ns).list():
        if ns.json:
            print(json.dumps(provider.as_json()))
        else:
            print(f"{provider.name}\t{_summary(provider)}")
    return 0


def _cmd_show(ns: argparse.Namespace) -> int:
    print(json.dumps(open_idp_store(ns).require(ns.name).as_json(), indent=2))
    return 0


def _cmd_toggle(ns: argparse.Namespace) -> int:
    store = open_idp_store(ns)
    if ns.action == "remove":
        links = store.remove(ns.name)
        print(f"removed identity provider {ns.name} ({links} identity links removed)")
        return 0
    provider = store.set_disabled(ns.name, ns.action == "disable")
    print(f"{ns.action}d identity provider {provider.name}")
    return 0
