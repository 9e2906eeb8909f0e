"""``ssot-auth``: run the token authority and manage its users, sessions and keys."""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Callable, Sequence

from auth_server.app import StartupError
from auth_server.commands import keys, login, serve, sessions, up, users
from auth_server.commands._common import CommandError, close_databases
from auth_server.errors import AuthServerError
from interceptors._cli import SettingsError, add_log_level_argument

PROG = "ssot-auth"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=PROG, description=__doc__)
    add_log_level_argument(parser)
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for module in (serve, up, users, sessions, keys, login):
        module.register(commands)
    return parser


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
    finally:
        close_databases()
    return 1
