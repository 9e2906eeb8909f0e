"""``ssot-auth users ...``: create, list, disable and re-password users."""

from __future__ import annotations

import argparse
import json
from typing import Any

from auth_server.commands._common import CommandError, open_database, open_user_store
from auth_server.commands.settings import (
    add_password_argument,
    add_storage_arguments,
    read_password,
)


def register(commands: Any) -> None:
    users = commands.add_parser("users", help="manage users").add_subparsers(
        dest="users_command", required=True, metavar="ACTION"
    )
    add = users.add_parser("add", help="create a user")
    add.add_argument("name")
    add.add_argument("--scope", action="append", default=[], help="grant a scope (repeatable)")
    add_password_argument(add)
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
    add_password_argument(setpw)
    setpw.set_defaults(run=_cmd_users_set_password)
    link = users.add_parser(
        "link", help="link a user to an identity at an upstream provider (sign-in as that user)"
    )
    link.add_argument("name")
    link.add_argument("--idp", required=True, help="the provider's name (ssot-auth idp list)")
    link.add_argument("--subject", required=True, help="the person's sub claim at the provider")
    link.set_defaults(run=_cmd_users_link)
    for sub in (add, listing, setpw, link, *(users.choices[a] for a in ("disable", "enable"))):
        add_storage_arguments(sub)


def _cmd_users_add(ns: argparse.Namespace) -> int:
    password = read_password(ns, confirm=True)
    user = open_user_store(ns).add(ns.name, password, ns.scope)
    print(f"created user {user.username} (id {user.id}, scopes: {' '.join(user.scopes) or '-'})")
    return 0


def _cmd_users_list(ns: argparse.Namespace) -> int:
    users = open_user_store(ns).list()
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
    store = open_user_store(ns)
    user = store.disable(ns.name) if ns.action == "disable" else store.enable(ns.name)
    print(f"{ns.action}d user {user.username}")
    return 0


def _cmd_users_set_password(ns: argparse.Namespace) -> int:
    store = open_user_store(ns)
    if store.get(ns.name) is None:
        raise CommandError(f"no user named {ns.name!r}")
    user = store.set_password(ns.name, read_password(ns, confirm=True))
    print(f"password set for {user.username}")
    return 0


def _cmd_users_link(ns: argparse.Namespace) -> int:
    from auth_server.identities import IdentityStore
    from auth_server.passwords import PasswordHasher
    from auth_server.users import UserStore

    database = open_database(ns)
    store = IdentityStore(database, UserStore(database, PasswordHasher()))
    identity = store.link(ns.name, ns.idp, ns.subject)
    print(f"linked user {ns.name} to subject {identity.subject} at {identity.idp}")
    return 0
