"""``ssot-auth sessions ...`` and the session, throttling and argon2 flags of ``serve``/``up``."""

from __future__ import annotations

import argparse
import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from auth_server.__main__ import main as auth_main
from auth_server.cli import build_parser
from auth_server.commands.serve import server_config
from auth_server.errors import InvalidRefreshToken
from auth_server.sessions import SessionStore
from auth_server.storage import Database, sqlite_url_for
from helpers import run_cli


def run(argv: list[str], stdin: str = "") -> int:
    return run_cli(auth_main, argv, stdin)


def _json_lines(out: str) -> list[dict[str, object]]:
    return [json.loads(line) for line in out.splitlines() if line.startswith("{")]


@pytest.fixture
def alice_sessions(
    env: Path, capsys: pytest.CaptureFixture[str]
) -> Iterator[tuple[SessionStore, list[str]]]:
    assert run(["users", "add", "alice", "--password-stdin"], "correct horse battery\n") == 0
    assert run(["users", "list", "--json"]) == 0
    [row] = _json_lines(capsys.readouterr().out)
    db = Database(sqlite_url_for(env))
    store = SessionStore(db)
    yield store, [store.create(str(row["id"])).refresh_token for _ in range(3)]
    db.dispose()


def test_sessions_list_and_revoke_one(
    alice_sessions: tuple[SessionStore, list[str]], capsys: pytest.CaptureFixture[str]
) -> None:
    store, tokens = alice_sessions
    assert run(["sessions", "list", "alice", "--json"]) == 0
    rows = _json_lines(capsys.readouterr().out)
    assert len(rows) == 3 and {r["state"] for r in rows} == {"active"}
    sid = str(rows[0]["sid"])

    assert run(["sessions", "revoke", sid]) == 0
    assert capsys.readouterr().out.strip() == f"revoked session {sid}"

    assert run(["sessions", "list", "alice", "--json"]) == 0
    assert sid not in {r["sid"] for r in _json_lines(capsys.readouterr().out)}
    assert run(["sessions", "list", "alice", "--all", "--json"]) == 0
    ended = [r for r in _json_lines(capsys.readouterr().out) if r["sid"] == sid]
    assert ended[0]["state"] == "revoked" and ended[0]["revoke_reason"] == "admin"
    assert sum(1 for t in tokens if _refreshes(store, t)) == 2
    # Revoking it again, or an unknown id, is a one-line error.
    assert run(["sessions", "revoke", sid]) == 1
    err = capsys.readouterr().err
    assert err.startswith("ssot-auth: error:") and len(err.strip().splitlines()) == 1


def _refreshes(store: SessionStore, token: str) -> bool:
    try:
        store.refresh(token)
    except InvalidRefreshToken:
        return False
    return True


def test_sessions_revoke_user_ends_all_of_them(
    alice_sessions: tuple[SessionStore, list[str]], capsys: pytest.CaptureFixture[str]
) -> None:
    store, tokens = alice_sessions
    assert run(["sessions", "revoke", "--user", "alice"]) == 0
    assert capsys.readouterr().out.strip() == "revoked 3 sessions of alice"
    assert not any(_refreshes(store, t) for t in tokens)


@pytest.mark.parametrize(
    ("argv", "stdin"),
    [
        pytest.param(["users", "disable", "alice"], "", id="disable"),
        pytest.param(
            ["users", "set-password", "alice", "--password-stdin"],
            "a brand new password\n",
            id="set-password",
        ),
    ],
)
def test_user_changes_from_the_cli_end_the_users_sessions(
    alice_sessions: tuple[SessionStore, list[str]], argv: list[str], stdin: str
) -> None:
    store, tokens = alice_sessions
    assert run(argv, stdin) == 0
    assert not any(_refreshes(store, t) for t in tokens)


def test_sessions_of_an_unknown_user_is_a_one_line_error(
    env: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert run(["sessions", "list", "nobody"]) == 1
    assert capsys.readouterr().err.strip() == "ssot-auth: error: no user named 'nobody'"


def test_session_throttle_and_argon2_flags_reach_the_configuration(
    env: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SSOT_REFRESH_GRACE", "5")
    monkeypatch.setenv("SSOT_ARGON2_MEMORY_COST", "19456")
    ns: argparse.Namespace = build_parser().parse_args(
        [
            "serve",
            "--issuer",
            "http://127.0.0.1:8080",
            "--audience",
            "a",
            "--session-idle-ttl",
            "3600",
            "--session-max-lifetime",
            "86400",
            "--max-sessions-per-user",
            "5",
            "--throttle-user-address",
            "4",
            "--throttle-window",
            "60",
            "--argon2-time-cost",
            "2",
            "--argon2-parallelism",
            "2",
        ]
    )
    config = server_config(ns, issuer=ns.issuer, audience=ns.audience)

    assert (config.sessions.idle_timeout, config.sessions.max_lifetime) == (3600, 86400)
    assert (config.sessions.refresh_grace, config.sessions.max_per_user) == (5, 5)
    assert (config.throttle.per_user_address, config.throttle.window) == (4, 60)
    assert (config.argon2.time_cost, config.argon2.memory_cost, config.argon2.parallelism) == (
        2,
        19456,
        2,
    )


def test_an_unusable_session_setting_is_a_one_line_error(
    env: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code = run(
        [
            "serve",
            "--issuer",
            "http://127.0.0.1:8080",
            "--audience",
            "a",
            "--refresh-grace",
            "-1",
        ]
    )
    assert code == 1
    err = capsys.readouterr().err
    assert "refresh grace" in err and len(err.strip().splitlines()) == 1


@pytest.mark.parametrize(
    "argv",
    [
        pytest.param(["sessions", "revoke", "-s1d"], id="alone"),
        pytest.param(["sessions", "revoke", "-s1d", "--data-dir", "d"], id="before-an-option"),
        pytest.param(["sessions", "revoke", "--", "-s1d"], id="after-double-dash"),
        pytest.param(["keys", "revoke", "-hk1d"], id="kid-like-help"),
        pytest.param(["keys", "revoke", "--k1d", "--data-dir", "d"], id="kid-with-two-dashes"),
    ],
)
def test_an_id_that_starts_with_a_dash_is_the_id_not_an_option(argv: list[str]) -> None:
    ns = build_parser().parse_args(argv)
    assert (ns.sid if argv[0] == "sessions" else ns.kid) == next(
        a for a in argv[2:] if a.lstrip("-") in ("s1d", "hk1d", "k1d")
    )


def test_options_around_a_dashed_id_still_count_and_still_refuse(
    capsys: pytest.CaptureFixture[str],
) -> None:
    ns = build_parser().parse_args(["sessions", "revoke", "--use", "alice"])
    assert (ns.user, ns.sid) == ("alice", None)
    with pytest.raises(SystemExit):
        build_parser().parse_args(["sessions", "revoke", "-s1d", "--user", "alice"])
    assert "not allowed with argument --user" in capsys.readouterr().err
