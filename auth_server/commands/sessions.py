"""``ssot-auth sessions ...``: list a user's sessions, revoke one or all of them."""

from __future__ import annotations

import argparse
import json
from datetime import UTC, datetime
from typing import Any

from auth_server.commands._common import CommandError, IdArgumentParser, open_database
from auth_server.commands.settings import add_storage_arguments
from auth_server.passwords import PasswordHasher
from auth_server.sessions import SessionInfo, SessionStore
from auth_server.users import UserStore


def register(commands: Any) -> None:
    sessions = commands.add_parser(
        "sessions", help="list and revoke login sessions"
    ).add_subparsers(
        dest="sessions_command", required=True, metavar="ACTION", parser_class=IdArgumentParser
    )
    listing = sessions.add_parser("list", help="list a user's live sessions")
    listing.add_argument("user", help="username")
    listing.add_argument("--all", action="store_true", help="include ended sessions")
    listing.add_argument("--json", action="store_true", help="print JSON lines")
    listing.set_defaults(run=_cmd_sessions_list)
    revoke = sessions.add_parser(
        "revoke",
        help="end a session, every session of a user, or every session; verifiers that "
        "follow the auth service refuse the access tokens within a second",
    )
    which = revoke.add_mutually_exclusive_group(required=True)
    revoke.add_id_argument("sid", into=which, nargs="?", help="the session id (the sid claim)")
    which.add_argument("--user", help="end every session of this user")
    which.add_argument(
        "--all",
        action="store_true",
        help="incident response: end every session, and refuse every access token "
        "issued before --before (sessionless ones too)",
    )
    revoke.add_argument(
        "--before",
        metavar="TIME",
        type=_parse_time,
        help="with --all: ISO 8601 time (UTC unless it names a zone) or epoch seconds; "
        "default now; not in the future",
    )
    revoke.set_defaults(run=_cmd_sessions_revoke)
    for sub in (listing, revoke):
        add_storage_arguments(sub)


def _stores(ns: argparse.Namespace) -> tuple[UserStore, SessionStore]:
    db = open_database(ns)
    # The hasher is never used here (no password is checked or set).
    return UserStore(db, PasswordHasher()), SessionStore(db)


def _user_id(users: UserStore, name: str) -> str:
    user = users.get(name)
    if user is None:
        raise CommandError(f"no user named {name!r}")
    return user.id


def _iso(when: float | None) -> str | None:
    if when is None:
        return None
    return datetime.fromtimestamp(when, UTC).isoformat(timespec="seconds")


def _cmd_sessions_list(ns: argparse.Namespace) -> int:
    users, sessions = _stores(ns)
    rows: list[SessionInfo] = sessions.list_for_user(_user_id(users, ns.user), include_ended=ns.all)
    for info in rows:
        if ns.json:
            print(
                json.dumps(
                    {
                        "sid": info.session_id,
                        "state": info.state,
                        "created_at": info.created_at,
                        "last_used_at": info.last_used_at,
                        "ends_at": info.ends_at,
                        "revoked_at": info.revoked_at,
                        "revoke_reason": info.revoke_reason,
                    }
                )
            )
        else:
            print(
                f"{info.session_id}\t{info.state}\tcreated {_iso(info.created_at)}\t"
                f"last used {_iso(info.last_used_at)}\tends {_iso(info.ends_at)}"
            )
    return 0


def _parse_time(text: str) -> float:
    try:
        return float(text)
    except ValueError:
        pass
    try:
        when = datetime.fromisoformat(text)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"not an ISO 8601 time or epoch seconds: {text!r}"
        ) from None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return when.timestamp()


def _cmd_sessions_revoke(ns: argparse.Namespace) -> int:
    if ns.before is not None and not ns.all:
        raise CommandError("--before goes with --all")
    users, sessions = _stores(ns)
    if ns.all:
        count, before = sessions.revocations.revoke_all(before=ns.before)
        print(f"revoked {count} sessions; refusing every access token issued before {_iso(before)}")
        return 0
    if ns.user is not None:
        ended = sessions.revoke_user(_user_id(users, ns.user), reason="admin")
        print(f"revoked {len(ended)} sessions of {ns.user}")
        return 0
    if not sessions.revoke(ns.sid, reason="admin"):
        raise CommandError(f"no live session {ns.sid!r}")
    print(f"revoked session {ns.sid}")
    return 0
