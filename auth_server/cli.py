"""``ssot-auth``: run the token authority and manage its users, clients, sessions and keys."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence

from auth_server.app import StartupError
from auth_server.commands import clients, idp, keys, login, serve, sessions, token, up, users
from auth_server.commands._common import CommandError, close_databases
from auth_server.errors import AuthServerError
from interceptors._cli import SettingsError, add_log_level_argument, parse_command_line

PROG = "ssot-auth"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=PROG, description=__doc__)
    add_log_level_argument(parser)
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for module in (serve, up, users, clients, idp, sessions, keys, login, token):
        module.register(commands)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    ns = parse_command_line(build_parser, argv, prog=PROG)
    if ns is None:
        return 2
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
