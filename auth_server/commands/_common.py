"""Pieces every ``ssot-auth`` subcommand shares: its error, opening storage, running a server."""

from __future__ import annotations

import argparse
import asyncio
import signal
from collections.abc import Callable
from typing import Any

from auth_server.commands.settings import prepare_data_dir, resolve_passphrase
from auth_server.keys import SigningKeyStore
from auth_server.passwords import PasswordHasher
from auth_server.storage import Database, sqlite_url_for
from auth_server.users import UserStore


class CommandError(Exception):
    """A command failed in a way the user can fix; printed as one line."""


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
