"""``ssot-auth keys ...``: list, rotate, revoke and re-encrypt signing keys."""

from __future__ import annotations

import argparse
import datetime
import json
import sys
from pathlib import Path
from typing import Any

from auth_server.commands._common import CommandError, IdArgumentParser, open_database
from auth_server.commands._keystore import add_key_store_arguments, open_custody
from auth_server.commands.serve_flags import duration
from auth_server.commands.settings import (
    add_passphrase_argument,
    add_storage_arguments,
    key_kdf,
    prepare_data_dir,
    resolve_passphrase,
)
from auth_server.config import DEFAULT_ACCESS_TOKEN_TTL, DEFAULT_JWKS_MAX_AGE
from auth_server.jwk import ALGORITHMS
from auth_server.keys import KeyInfo, SigningKeyStore
from auth_server.lifecycle import KeyLifecycle
from auth_server.passphrase_policy import (
    ALLOW_SHORT_FLAG,
    MIN_PASSPHRASE_CHARS,
    check_passphrase_policy,
    is_new_deployment,
    passphrase_length,
)
from interceptors._cli import add_env_argument, env_value


def register(commands: Any) -> None:
    keys = commands.add_parser("keys", help="manage signing keys").add_subparsers(
        dest="keys_command", required=True, metavar="ACTION", parser_class=IdArgumentParser
    )
    klist = keys.add_parser("list", help="list signing keys, their states and transition times")
    klist.add_argument("--json", action="store_true", help="print JSON lines")
    klist.set_defaults(run=_cmd_keys_list)

    rotate = keys.add_parser(
        "rotate", help="publish a new signing key now; it signs after --activate-after"
    )
    rotate.add_argument(
        "--activate-after",
        type=duration,
        default=None,
        metavar="DURATION",
        help="how long the new key is published before it signs; at least 2 x --jwks-max-age"
        " (default 2 x --jwks-max-age)",
    )
    add_env_argument(
        rotate,
        "--jwks-max-age",
        type=int,
        default=DEFAULT_JWKS_MAX_AGE,
        help="the servers' --jwks-max-age",
        default_help=DEFAULT_JWKS_MAX_AGE,
    )
    add_env_argument(
        rotate,
        "--algorithm",
        choices=ALGORITHMS,
        default="RS256",
        help="algorithm of the new key; use the servers' --algorithm, which their schedule follows",
        default_help="RS256",
    )
    add_env_argument(
        rotate, "--rsa-bits", type=int, default=2048, help="RSA key size", default_help=2048
    )
    rotate.set_defaults(run=_cmd_keys_rotate)

    revoke = keys.add_parser(
        "revoke", help="remove a compromised key from the key set at once (and replace it)"
    )
    revoke.add_id_argument("kid")
    revoke.set_defaults(run=_cmd_keys_revoke)

    rewrap = keys.add_parser(
        "rewrap",
        help="re-encrypt every private key under a new passphrase, or the same one with"
        " --keep-passphrase (moves legacy rows and old KDF costs to the current format)",
    )
    source = rewrap.add_mutually_exclusive_group(required=True)
    source.add_argument("--new-passphrase-file", type=Path, help="file holding the new passphrase")
    source.add_argument(
        "--new-passphrase-stdin",
        action="store_true",
        help="read the new passphrase from the first line of standard input",
    )
    source.add_argument(
        "--keep-passphrase",
        action="store_true",
        help="keep the current passphrase: only move every key to the current format and KDF cost",
    )
    rewrap.set_defaults(run=_cmd_keys_rewrap)

    for sub in (klist, rotate, revoke, rewrap):
        add_storage_arguments(sub)
        add_passphrase_argument(sub)
    for sub in (klist, rotate, revoke):
        add_key_store_arguments(sub)


def _open_store(
    ns: argparse.Namespace, *, jwks_max_age: int = DEFAULT_JWKS_MAX_AGE, creates: bool = False
) -> SigningKeyStore:
    """The key store the flags name; ``creates``: the command may make a deployment's first key."""
    passphrase = resolve_passphrase(ns, prepare_data_dir(ns.data_dir), create=False)
    lifecycle = KeyLifecycle.for_server(
        jwks_max_age=jwks_max_age,
        access_token_ttl=env_value("ACCESS_TOKEN_TTL", DEFAULT_ACCESS_TOKEN_TTL, type=int),
        rotation_interval=0,
    )
    algorithm = getattr(ns, "algorithm", "RS256")
    # `keys list` reads rows only, `keys rewrap` the database keys only: no token.
    custody = None if ns.keys_command in ("list", "rewrap") else open_custody(ns, algorithm)
    database = open_database(ns)
    try:
        if creates:
            check_passphrase_policy(
                passphrase,
                new_deployment=is_new_deployment(database),
                allow_short=ns.allow_short_passphrase,
            )
        return SigningKeyStore(
            database,
            passphrase,
            algorithm=algorithm,
            rsa_bits=getattr(ns, "rsa_bits", 2048),
            lifecycle=lifecycle,
            kdf=key_kdf(ns),
            custody=custody,
        )
    except ValueError as exc:
        raise CommandError(str(exc)) from None


def _when(epoch: float | None) -> str:
    if epoch is None:
        return "-"
    moment = datetime.datetime.fromtimestamp(epoch, tz=datetime.UTC)
    return moment.isoformat(timespec="seconds").replace("+00:00", "Z")


def _cmd_keys_list(ns: argparse.Namespace) -> int:
    infos = _open_store(ns).list_keys()
    if ns.json:
        for k in infos:
            print(json.dumps(_as_dict(k)))
        return 0
    header = ("KID", "ALG", "STATE", "CREATED", "SIGNS FROM", "SIGNS UNTIL", "RETIRES", "REVOKED")
    table = [header] + [
        (
            k.kid,
            k.algorithm,
            k.state,
            _when(k.created_at),
            _when(k.activates_at),
            _when(k.deactivated_at),
            _when(k.retires_at),
            _when(k.revoked_at),
        )
        for k in infos
    ]
    widths = [max(len(row[i]) for row in table) for i in range(len(header))]
    for row in table:
        print(
            "  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip()
        )
    return 0


def _as_dict(k: KeyInfo) -> dict[str, object]:
    return {
        "kid": k.kid,
        "algorithm": k.algorithm,
        "state": k.state,
        "created_at": k.created_at,
        "activates_at": k.activates_at,
        "deactivated_at": k.deactivated_at,
        "retires_at": k.retires_at,
        "revoked_at": k.revoked_at,
    }


def _cmd_keys_rotate(ns: argparse.Namespace) -> int:
    minimum = 2 * ns.jwks_max_age
    activate_after = minimum if ns.activate_after is None else ns.activate_after
    if activate_after < minimum:
        raise CommandError(
            f"--activate-after {activate_after:g} s is less than 2 x --jwks-max-age"
            f" ({minimum:g} s): a verifier that cached the key set could meet the new key"
            " before it knows it; wait longer, or give --jwks-max-age if the servers use a"
            " smaller one (for a compromised key, use `ssot-auth keys revoke KID`)"
        )
    store = _open_store(ns, jwks_max_age=ns.jwks_max_age, creates=True)
    info = store.rotate(activate_after=activate_after)
    if info.state == "current":
        print(f"new key {info.kid} ({info.algorithm}) signs now: no key was signing")
    else:
        print(
            f"new key {info.kid} ({info.algorithm}) is published now"
            f" and signs from {_when(info.activates_at)}"
        )
    return 0


def _cmd_keys_revoke(ns: argparse.Namespace) -> int:
    store = _open_store(ns)
    before = {k.kid: k for k in store.list_keys()}
    if ns.kid not in before:
        raise CommandError(
            f"unknown kid {ns.kid[:80]!r}: `ssot-auth keys list` shows the stored keys"
        )
    if before[ns.kid].state == "revoked":
        print(f"key {ns.kid} was already revoked")
        return 0
    store.revoke(ns.kid)
    signer = ""
    if before[ns.kid].state == "current":
        current = [k for k in store.list_keys() if k.state == "current"]
        signer = (
            f"; key {current[0].kid} ({current[0].algorithm}) signs now"
            if current
            else "; no replacement: the servers create one within a second"
        )
    print(f"revoked key {ns.kid}{signer}")
    print(
        "running servers drop it within a second; push verifiers (--auth-target) at once,"
        " HTTP verifiers at their next JWKS refresh"
    )
    return 0


def _cmd_keys_rewrap(ns: argparse.Namespace) -> int:
    store = _open_store(ns)
    if ns.keep_passphrase:
        count = store.rewrap(store_passphrase(ns))
        print(
            f"re-encrypted {count} signing keys in the current format under the same passphrase;"
            " running servers need no restart"
        )
        return 0
    if ns.new_passphrase_stdin:
        new = sys.stdin.readline().strip().encode()
    else:
        try:
            new = Path(ns.new_passphrase_file).read_bytes().strip()
        except OSError as exc:
            raise CommandError(
                f"cannot read --new-passphrase-file {ns.new_passphrase_file}: {exc.strerror}"
            ) from None
    if not new:
        raise CommandError("the new passphrase is empty")
    if passphrase_length(new) < MIN_PASSPHRASE_CHARS and not ns.allow_short_passphrase:
        raise CommandError(
            f"the new passphrase must be at least {MIN_PASSPHRASE_CHARS} characters"
            f" ({ALLOW_SHORT_FLAG} accepts a shorter one)"
        )
    count = store.rewrap(new)
    print(
        f"re-encrypted {count} signing keys under the new passphrase; running servers keep"
        " signing with the keys they hold: restart them with the new passphrase before the"
        " next rotation"
    )
    return 0


def store_passphrase(ns: argparse.Namespace) -> bytes:
    """The passphrase the store was opened with (the flags', again)."""
    return resolve_passphrase(ns, prepare_data_dir(ns.data_dir), create=False)
