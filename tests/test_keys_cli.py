"""``ssot-auth keys list|rotate|revoke|rewrap`` and the server's refusals, through the CLI."""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from auth_server import _keyrows, jwk
from auth_server.__main__ import main as auth_main
from auth_server.app import build_components
from auth_server.storage import signing_keys, sqlite_url_for
from helpers import make_config, run_cli


def run(argv: list[str], stdin: str = "") -> int:
    return run_cli(auth_main, ["--log-level", "ERROR", *argv], stdin)


def rows(capsys: pytest.CaptureFixture[str]) -> list[dict[str, object]]:
    capsys.readouterr()
    assert run(["keys", "list", "--json"]) == 0
    return [json.loads(line) for line in capsys.readouterr().out.splitlines()]


def error_line(capsys: pytest.CaptureFixture[str]) -> str:
    err = capsys.readouterr().err.strip()
    assert "Traceback" not in err
    return err.splitlines()[-1]


def corrupt(data_dir: Path, kid: object) -> None:
    engine = sa.create_engine(sqlite_url_for(data_dir))
    with engine.begin() as conn:
        conn.execute(
            signing_keys.update().where(signing_keys.c.kid == kid).values(private_key=b"junk")
        )
    engine.dispose()


def serve(*flags: str) -> int:
    return run(
        ["serve", "--issuer", "http://127.0.0.1:8080", "--audience", "a", "--grpc",
         "127.0.0.1:0", "--http", "127.0.0.1:0", *flags]
    )  # fmt: skip


def test_keys_list_shows_state_and_transition_times(
    env: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert run(["keys", "rotate"]) == 0
    assert run(["keys", "rotate", "--activate-after", "1h"]) == 0
    capsys.readouterr()

    assert run(["keys", "list"]) == 0

    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split() == [
        "KID", "ALG", "STATE", "CREATED", "SIGNS", "FROM", "SIGNS", "UNTIL", "RETIRES", "REVOKED",
    ]  # fmt: skip
    upcoming, current = (line.split() for line in lines[1:])
    assert (upcoming[1:3], current[1:3]) == (["RS256", "next"], ["RS256", "current"])
    # The current key signs until the next activates, then stays published 930 s.
    assert current[5] == upcoming[4] and current[5].endswith("Z")
    assert current[6] != "-" and current[7] == "-"


def test_keys_rotate_refuses_a_pre_publication_shorter_than_two_max_ages(
    env: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert run(["keys", "rotate"]) == 0
    capsys.readouterr()

    assert run(["keys", "rotate", "--activate-after", "30"]) == 1
    assert "--activate-after 30 s is less than 2 x --jwks-max-age (600 s)" in error_line(capsys)
    assert len(rows(capsys)) == 1

    assert run(["keys", "rotate", "--activate-after", "30", "--jwks-max-age", "15"]) == 0
    assert [r["state"] for r in rows(capsys)] == ["next", "current"]


def test_keys_revoke_of_the_current_key_replaces_it(
    env: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert run(["keys", "rotate"]) == 0
    [old] = rows(capsys)

    assert run(["keys", "revoke", str(old["kid"])]) == 0

    out = capsys.readouterr().out
    after = {r["kid"]: r for r in rows(capsys)}
    [new] = [kid for kid, r in after.items() if r["state"] == "current"]
    assert f"revoked key {old['kid']}; key {new} (RS256) signs now" in out
    assert after[old["kid"]]["state"] == "revoked"
    assert run(["keys", "revoke", str(old["kid"])]) == 0
    assert "already revoked" in capsys.readouterr().out


def dashed_thumbprints(monkeypatch: pytest.MonkeyPatch) -> None:
    """Make every new key's kid start with "-", as one real thumbprint in 64 does."""
    real = jwk.jwk_thumbprint

    def dashed(key: Mapping[str, Any]) -> str:
        return "-" + real(key)[1:]

    monkeypatch.setattr(jwk, "jwk_thumbprint", dashed)
    monkeypatch.setattr(_keyrows, "jwk_thumbprint", dashed)


@pytest.mark.parametrize(
    "where",
    [
        pytest.param(lambda kid, data: [kid], id="alone"),
        pytest.param(lambda kid, data: [kid, "--data-dir", data], id="before-an-option"),
        pytest.param(lambda kid, data: ["--data-dir", data, kid], id="after-an-option"),
        pytest.param(lambda kid, data: ["--data-dir", data, "--", kid], id="after-double-dash"),
    ],
)
def test_keys_revoke_takes_a_kid_that_starts_with_a_dash(
    env: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    where: Callable[[str, str], list[str]],
) -> None:
    dashed_thumbprints(monkeypatch)
    assert run(["keys", "rotate"]) == 0
    [old] = rows(capsys)
    kid = str(old["kid"])
    assert kid.startswith("-")

    assert run(["keys", "revoke", *where(kid, str(env))]) == 0

    assert f"revoked key {kid};" in capsys.readouterr().out
    assert {r["kid"]: r["state"] for r in rows(capsys)}[kid] == "revoked"


def test_keys_revoke_of_an_unknown_dashed_kid_is_the_unknown_kid_line(
    env: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert run(["keys", "rotate"]) == 0
    capsys.readouterr()

    assert run(["keys", "revoke", "-no-such-kid"]) == 1

    assert error_line(capsys).startswith("ssot-auth: error: unknown kid '-no-such-kid'")


def test_keys_revoke_of_an_unknown_kid_is_one_clear_line(
    env: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert run(["keys", "rotate"]) == 0
    capsys.readouterr()

    assert run(["keys", "revoke", "no-such-kid"]) == 1

    assert error_line(capsys) == (
        "ssot-auth: error: unknown kid 'no-such-kid': `ssot-auth keys list` shows the stored keys"
    )


def test_a_corrupted_current_key_stops_the_server_until_it_is_revoked(
    env: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert run(["keys", "rotate"]) == 0
    [bad] = rows(capsys)
    corrupt(env, bad["kid"])

    assert serve() == 1
    assert error_line(capsys) == "ssot-auth: error: cannot decrypt signing key: wrong passphrase?"

    assert run(["keys", "revoke", str(bad["kid"])]) == 0
    # No other key proves the passphrase, so the CLI makes no replacement; the
    # server makes the first good key when it starts.
    assert [r["state"] for r in rows(capsys)] == ["revoked"]
    components = build_components(make_config(env, sqlite_url_for(env)))
    try:
        assert components.keys.current().kid != bad["kid"]
    finally:
        components.database.dispose()
    assert sorted(r["state"] for r in rows(capsys)) == ["current", "revoked"]


def test_keys_rewrap_moves_every_key_to_the_new_passphrase(
    env: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    assert run(["keys", "rotate"]) == 0
    assert run(["keys", "rotate"]) == 0
    new = tmp_path / "new-passphrase"
    new.write_text("a brand new passphrase 0123\n")
    capsys.readouterr()

    assert run(["keys", "rewrap", "--new-passphrase-file", str(new)]) == 0

    assert "re-encrypted 2 signing keys" in capsys.readouterr().out
    assert serve() == 1  # the old passphrase decrypts nothing any more
    assert "wrong passphrase" in error_line(capsys)
    monkeypatch.setenv("SSOT_KEY_PASSPHRASE", "a brand new passphrase 0123")
    assert run(["keys", "rotate"]) == 0


def test_keys_rewrap_refuses_a_short_passphrase(
    env: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert run(["keys", "rotate"]) == 0
    capsys.readouterr()

    assert run(["keys", "rewrap", "--new-passphrase-stdin"], stdin="short\n") == 1

    assert error_line(capsys) == (
        "ssot-auth: error: the new passphrase must be at least 16 characters"
        " (--allow-short-passphrase accepts a shorter one)"
    )


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        pytest.param(
            ["--jwks-max-age", "600"],
            "--key-activate-after is 900 s but must be at least 2 x --jwks-max-age = 1200 s",
            id="max-age-vs-explicit-pre-publication",
        ),
        pytest.param(
            ["--access-token-ttl", "3600"],
            "--key-retire-after is 930 s but must be at least --access-token-ttl + 30 s",
            id="ttl-vs-explicit-retirement",
        ),
        pytest.param(
            ["--key-rotation-interval", "10m"],
            "--key-rotation-interval is 600 s, shorter than --key-activate-after (900 s)",
            id="interval",
        ),
    ],
)
def test_serve_refuses_an_unsafe_schedule_naming_the_setting(
    env: Path, capsys: pytest.CaptureFixture[str], flags: list[str], message: str
) -> None:
    assert serve("--key-activate-after", "15m", "--key-retire-after", "930", *flags) == 1

    assert message in error_line(capsys)
