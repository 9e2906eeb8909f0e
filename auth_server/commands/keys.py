"""``ssot-auth keys ...``: list, rotate and revoke signing keys."""

from __future__ import annotations

import argparse
import json
from typing import Any

from auth_server.commands._common import open_key_store
from auth_server.jwk import ALGORITHMS
from auth_server.settings import add_passphrase_argument, add_storage_arguments, env_default


def register(commands: Any) -> None:
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


def _cmd_keys_list(ns: argparse.Namespace) -> int:
    for k in open_key_store(ns).list_keys():
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
    info = open_key_store(ns, ns.algorithm).rotate(activate_after=ns.activate_after)
    print(f"new key {info.kid} ({info.algorithm}), state {info.state}")
    return 0


def _cmd_keys_revoke(ns: argparse.Namespace) -> int:
    info = open_key_store(ns).revoke(ns.kid)
    print(f"revoked key {info.kid}")
    return 0
