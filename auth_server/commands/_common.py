"""Pieces every ``ssot-auth`` subcommand shares: its error, opening storage, id positionals."""

from __future__ import annotations

import argparse
import re
from collections.abc import Mapping, Sequence
from typing import Any

from auth_server.commands.settings import prepare_data_dir, resolve_passphrase
from auth_server.keys import SigningKeyStore
from auth_server.passwords import PasswordHasher
from auth_server.storage import Database, sqlite_url_for
from auth_server.users import UserStore


class CommandError(Exception):
    """A command failed in a way the user can fix; printed as one line."""


# base64url, the alphabet of key ids (RFC 7638 thumbprints) and of the ids we mint.
_DASHED_ID = re.compile(r"-[A-Za-z0-9_-]+")


class IdArgumentParser(argparse.ArgumentParser):
    """A subcommand parser whose id positional may start with ``-``.

    A key id is a base64url thumbprint (RFC 7638), so one in 64 starts with ``-``,
    and argparse reads such a word as an unknown option ("unrecognized arguments").
    An id registered with :meth:`add_id_argument` is accepted as it is, before or
    after the options; ``--`` keeps working. A word counts as an option, and is
    left alone, when it names one of this parser's options exactly, abbreviates
    a long one, or carries an ``=``.
    """

    takes_id = False

    def add_id_argument(self, dest: str, *, into: Any = None, **kwargs: Any) -> argparse.Action:
        """Add the id positional ``dest`` (to the group ``into``, if given)."""
        self.takes_id = True
        action: argparse.Action = (into or self).add_argument(dest, **kwargs)
        return action

    def parse_known_args(  # type: ignore[override]
        self, args: Sequence[str] | None = None, namespace: argparse.Namespace | None = None
    ) -> tuple[argparse.Namespace, list[str]]:
        if self.takes_id and args is not None:
            args = ids_after_double_dash(list(args), self._option_string_actions)
        return super().parse_known_args(args, namespace)


def ids_after_double_dash(args: list[str], options: Mapping[str, object]) -> list[str]:
    """Move the words before ``--`` that are ids, not options, to just after it.

    argparse takes everything after ``--`` as positional, so an id that starts
    with ``-`` reaches its positional there. Only for parsers with one positional:
    the moved words keep their order among themselves, not among other positionals.
    """
    end = args.index("--") if "--" in args else len(args)
    head, tail = args[:end], args[end + 1 :]

    def is_id(word: str) -> bool:
        if not _DASHED_ID.fullmatch(word) or word in options:
            return False
        # argparse's abbreviations: "--data" may stand for "--data-dir".
        return not (word.startswith("--") and any(o.startswith(word) for o in options))

    ids = [word for word in head if is_id(word)]
    if not ids:
        return args
    return [*(word for word in head if not is_id(word)), "--", *ids, *tail]


# Databases a command opened; ``close_databases`` disposes them when it returns, so a
# command run in-process (tests, embedding) leaves no pooled connection behind.
_OPENED: list[Database] = []


def open_database(ns: argparse.Namespace) -> Database:
    if ns.database_url:
        db = Database(ns.database_url)
    else:
        db = Database(sqlite_url_for(prepare_data_dir(ns.data_dir)))
    _OPENED.append(db)
    db.create_schema()
    return db


def close_databases() -> None:
    while _OPENED:
        _OPENED.pop().dispose()


def open_user_store(ns: argparse.Namespace) -> UserStore:
    return UserStore(open_database(ns), PasswordHasher())


def open_key_store(ns: argparse.Namespace, algorithm: str = "RS256") -> SigningKeyStore:
    data_dir = prepare_data_dir(ns.data_dir)
    passphrase = resolve_passphrase(ns, data_dir, create=False)
    return SigningKeyStore(open_database(ns), passphrase, algorithm=algorithm)
