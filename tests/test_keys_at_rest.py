"""Keys at rest: envelope encryption, migration from the PKCS#8 format, rewrap, passphrase rules.

Through the public surface (the ``keys`` CLI, a real server over gRPC) on SQLite
and PostgreSQL. The "before" state is built exactly as earlier versions wrote
it: PKCS#8 PEM under PBKDF2 (``BestAvailableEncryption``), no
``deployment_secrets`` table, and a successor secret that is scrypt of the
passphrase (``legacy_refresh_secret``, the function earlier versions called
``derive_refresh_secret``).
"""

from __future__ import annotations

import json
import logging
import os
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
import sqlalchemy as sa
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from auth_server import deployment_secrets as secrets_rows
from auth_server.__main__ import main as auth_main
from auth_server._envelope import KeyEncryption, SealError
from auth_server.app import build_components
from auth_server.errors import KeyStoreError
from auth_server.jwk import public_jwk
from auth_server.refresh_tokens import legacy_refresh_secret
from auth_server.sessions import SessionStore
from auth_server.storage import Database, deployment_secrets, metadata, signing_keys
from helpers import (
    FAST_KDF,
    PASSPHRASE,
    Clock,
    EventLoopThread,
    make_config,
    run_cli,
    start_harness,
)

OTHER = b"another passphrase, also long"
WRONG = b"not the passphrase at all!"


@pytest.fixture
def env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, database_url: str) -> str:
    for name in list(os.environ):
        if name.startswith("SSOT_") and name != "SSOT_TEST_DATABASE_URL":
            monkeypatch.delenv(name)
    monkeypatch.setenv("SSOT_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.setenv("SSOT_DATABASE_URL", database_url)
    monkeypatch.setenv("SSOT_KEY_PASSPHRASE", PASSPHRASE.decode())
    # Cheap key-encryption KDF through its variables, as FAST_KDF does for configs.
    for name, value in (("TIME_COST", 1), ("MEMORY_COST", 1024), ("PARALLELISM", 1)):
        monkeypatch.setenv(f"SSOT_KEY_KDF_{name}", str(value))
    return database_url


def run(argv: list[str], stdin: str = "") -> int:
    return run_cli(auth_main, ["--log-level", "ERROR", *argv], stdin)


def last_error(capsys: pytest.CaptureFixture[str]) -> str:
    err = capsys.readouterr().err.strip()
    assert "Traceback" not in err
    return err.splitlines()[-1]


def dump(url: str) -> dict[str, list[tuple[object, ...]]]:
    """Every row of every table: what an attacker with a database dump has."""
    engine = sa.create_engine(url)
    try:
        with engine.connect() as conn:
            present = set(sa.inspect(conn).get_table_names())
            return {
                table.name: [tuple(row) for row in conn.execute(sa.select(table)).all()]
                for table in metadata.sorted_tables
                if table.name in present
            }
    finally:
        engine.dispose()


def dump_bytes(url: str) -> bytes:
    out = bytearray()
    for rows in dump(url).values():
        for row in rows:
            for value in row:
                out += value if isinstance(value, bytes) else repr(value).encode()
    return bytes(out)


def stored_keys(url: str) -> dict[str, bytes]:
    return {row[0]: row[2] for row in dump(url)["signing_keys"]}


def legacy_deployment(url: str, passphrase: bytes = PASSPHRASE) -> list[rsa.RSAPrivateKey]:
    """A database as earlier versions left it: a current and a next key, PKCS#8 under PBKDF2."""
    engine = sa.create_engine(url)
    tables = [t for t in metadata.sorted_tables if t is not deployment_secrets]
    metadata.create_all(engine, tables=tables)
    now = time.time()
    keys = [rsa.generate_private_key(public_exponent=65537, key_size=2048) for _ in range(2)]
    with engine.begin() as conn:
        for key, activates_at in zip(keys, (now - 60, now + 3600), strict=True):
            jwk = public_jwk(key, "RS256")
            pem = key.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.BestAvailableEncryption(passphrase),
            )
            conn.execute(
                signing_keys.insert().values(
                    kid=jwk["kid"],
                    algorithm="RS256",
                    private_key=pem,
                    public_jwk=json.dumps(jwk, separators=(",", ":")),
                    created_at=activates_at,
                    activates_at=activates_at,
                    deactivated_at=None,
                    retires_at=None,
                    revoked_at=None,
                )
            )
    engine.dispose()
    return keys


def current_kid(tmp_path: Path, url: str, passphrase: bytes = PASSPHRASE) -> str:
    """Start the server's components as ``serve`` does; the kid that signs."""
    components = build_components(make_config(tmp_path, url, key_passphrase=passphrase))
    try:
        return components.keys.current().kid
    finally:
        components.database.dispose()


# -- a dump without the passphrase -------------------------------------------------------


def test_a_database_dump_with_a_wrong_passphrase_yields_no_key_material(
    env: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    components = build_components(make_config(tmp_path, env))
    try:
        private_key = components.keys.current().private_key
        secret = secrets_rows.load_or_create(
            components.database, KeyEncryption(PASSPHRASE), secrets_rows.REFRESH_SUCCESSOR
        )
    finally:
        components.database.dispose()
    assert run(["keys", "rotate"]) == 0
    leaked = dump_bytes(env)

    der = private_key.private_bytes(
        serialization.Encoding.DER, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    assert isinstance(private_key, rsa.RSAPrivateKey)
    d = private_key.private_numbers().d
    for material in (der, d.to_bytes((d.bit_length() + 7) // 8, "big"), secret, PASSPHRASE):
        assert material not in leaked
    assert b"PRIVATE KEY" not in leaked
    # Every sealed value is an argon2id envelope, and none opens without the passphrase.
    sealed = [*stored_keys(env).items()]
    sealed += [(row[0], row[1]) for row in dump(env)["deployment_secrets"]]
    assert len(sealed) == 3
    for name, value in sealed:
        assert json.loads(value)["kdf"]["name"] == "argon2id"
        with pytest.raises(SealError):
            KeyEncryption(WRONG, FAST_KDF).open(name, value)
        assert KeyEncryption(PASSPHRASE).open(name, value)  # the right one does
    # Nor does the server start, or a rewrap run, with the wrong one; nothing changes.
    with pytest.raises(KeyStoreError, match="wrong passphrase"):
        current_kid(tmp_path, env, WRONG)
    os.environ["SSOT_KEY_PASSPHRASE"] = WRONG.decode()
    capsys.readouterr()
    assert run(["keys", "rewrap", "--keep-passphrase"]) == 1
    assert "wrong passphrase" in last_error(capsys)
    assert dump_bytes(env) == leaked


def test_new_keys_use_the_default_kdf_cost_unless_told_otherwise(env: str) -> None:
    for name in ("TIME_COST", "MEMORY_COST", "PARALLELISM"):
        del os.environ[f"SSOT_KEY_KDF_{name}"]
    assert run(["keys", "rotate"]) == 0
    os.environ["SSOT_KEY_KDF_MEMORY_COST"] = "2048"
    assert run(["keys", "rotate"]) == 0

    costs = sorted(
        (kdf["t"], kdf["m"], kdf["p"])
        for kdf in (json.loads(value)["kdf"] for value in stored_keys(env).values())
    )
    assert costs == [(3, 2048, 4), (3, 65536, 4)]  # the default: RFC 9106 §4, option 2


# -- migration from the PKCS#8 format --------------------------------------------------------


def test_legacy_rows_are_read_then_moved_to_the_envelope_by_rewrap(
    env: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    keys = legacy_deployment(env)
    kids = [public_jwk(key, "RS256")["kid"] for key in keys]
    before = stored_keys(env)
    assert all(value.startswith(b"-----BEGIN ENCRYPTED PRIVATE KEY") for value in before.values())

    # Read until the rewrap: a server starts and signs with the legacy current key.
    assert current_kid(tmp_path, env) == kids[0]
    assert stored_keys(env) == before  # reading migrates nothing
    capsys.readouterr()

    assert run(["keys", "rewrap", "--keep-passphrase"]) == 0

    assert "re-encrypted 2 signing keys" in capsys.readouterr().out
    after = stored_keys(env)
    assert sorted(after) == sorted(kids)
    assert all(json.loads(value)["v"] == 1 for value in after.values())
    assert current_kid(tmp_path, env) == kids[0]
    with pytest.raises(KeyStoreError, match="wrong passphrase"):
        current_kid(tmp_path, env, WRONG)
    # The same private keys, now sealed: the next key opens and matches too.
    opened = serialization.load_der_private_key(
        KeyEncryption(PASSPHRASE).open(kids[1], after[kids[1]]), None
    )
    assert isinstance(opened, rsa.RSAPrivateKey)
    assert opened.private_numbers() == keys[1].private_numbers()


# -- rewrap round trips -------------------------------------------------------------------------


def test_rewrap_round_trips_and_sessions_survive_it(
    env: str, tmp_path: Path, loop_thread: EventLoopThread, capsys: pytest.CaptureFixture[str]
) -> None:
    harness = start_harness(loop_thread, make_config(tmp_path, env))
    try:
        harness.add_user("alice", "correct horse battery")
        refresh_token = harness.login("alice", "correct horse battery").refresh_token
        kid = harness.signing_key().kid
    finally:
        harness.channel.close()
        harness.stop()
    assert run(["keys", "rotate"]) == 0
    first = {kid_: json.loads(value) for kid_, value in stored_keys(env).items()}
    new_file = tmp_path / "new-passphrase"
    new_file.write_bytes(OTHER + b"\n")

    assert run(["keys", "rewrap", "--new-passphrase-file", str(new_file)]) == 0
    with pytest.raises(KeyStoreError, match="wrong passphrase"):
        current_kid(tmp_path, env, PASSPHRASE)
    assert current_kid(tmp_path, env, OTHER) == kid
    os.environ["SSOT_KEY_PASSPHRASE"] = OTHER.decode()
    assert run(["keys", "rewrap", "--new-passphrase-stdin"], stdin=PASSPHRASE.decode() + "\n") == 0
    with pytest.raises(KeyStoreError, match="wrong passphrase"):
        current_kid(tmp_path, env, OTHER)

    back = {kid_: json.loads(value) for kid_, value in stored_keys(env).items()}
    assert back.keys() == first.keys()
    for kid_ in first:
        # Only the data key was re-wrapped (a new salt each time); the sealed key is untouched.
        assert back[kid_]["data"] == first[kid_]["data"]
        assert back[kid_]["kdf"]["salt"] != first[kid_]["kdf"]["salt"]
    # The successor secret moved with the keys: the session refreshes after the round trip.
    harness = start_harness(loop_thread, make_config(tmp_path, env))
    try:
        assert harness.signing_key().kid == kid
        assert harness.refresh(refresh_token).refresh_token
    finally:
        harness.channel.close()
        harness.stop()


# -- the successor secret changes without breaking sessions ---------------------------------


@pytest.fixture
def upgraded(
    env: str, tmp_path: Path, loop_thread: EventLoopThread
) -> Iterator[tuple[Clock, Database, str, str]]:
    """A session refreshed once by a replica of the earlier version, at the clock's time."""
    legacy_deployment(env)
    clock = Clock(time.time())
    harness = start_harness(loop_thread, make_config(tmp_path, env), now=clock)
    try:
        harness.add_user("alice", "correct horse battery")
        spent = harness.login("alice", "correct horse battery").refresh_token
    finally:
        harness.channel.close()
        harness.stop()
    db = Database(env)
    yield clock, db, spent, env
    db.dispose()


def test_a_grace_repeat_across_the_secret_change_gets_the_same_successor(
    upgraded: tuple[Clock, Database, str, str], tmp_path: Path, loop_thread: EventLoopThread
) -> None:
    clock, db, spent, url = upgraded
    old_replica = SessionStore(db, secret=legacy_refresh_secret(PASSPHRASE), now=clock)
    successor = old_replica.refresh(spent).refresh_token  # its response is lost on the way

    clock.advance(1)  # within the grace window, the client retries on an upgraded replica
    harness = start_harness(loop_thread, make_config(tmp_path, url), now=clock)
    try:
        repeated = harness.refresh(spent)
        assert repeated.refresh_token == successor
        after = harness.refresh(successor)  # and the session goes on, under the new secret
        assert after.refresh_token not in (spent, successor)
        assert harness.refresh(after.refresh_token).refresh_token
    finally:
        harness.channel.close()
        harness.stop()


def test_a_repeat_after_the_grace_window_still_revokes_the_session(
    upgraded: tuple[Clock, Database, str, str], tmp_path: Path, loop_thread: EventLoopThread
) -> None:
    clock, db, spent, url = upgraded
    old_replica = SessionStore(db, secret=legacy_refresh_secret(PASSPHRASE), now=clock)
    successor = old_replica.refresh(spent).refresh_token

    clock.advance(old_replica.policy.refresh_grace + 1)
    harness = start_harness(loop_thread, make_config(tmp_path, url), now=clock)
    try:
        for token in (spent, successor):  # reuse: the session is revoked, its successor too
            with pytest.raises(grpc.RpcError) as refused:
                harness.refresh(token)
            assert refused.value.code() == grpc.StatusCode.UNAUTHENTICATED
    finally:
        harness.channel.close()
        harness.stop()


# -- passphrase length -------------------------------------------------------------------------


@pytest.mark.parametrize(
    "passphrase",
    [pytest.param("fifteen chars!!", id="15-ascii"), pytest.param("é" * 9, id="9-chars-18-bytes")],
)
def test_a_new_deployment_refuses_a_passphrase_under_16_characters(
    env: str, passphrase: str, capsys: pytest.CaptureFixture[str]
) -> None:
    os.environ["SSOT_KEY_PASSPHRASE"] = passphrase

    assert run(["keys", "rotate"]) == 1
    assert last_error(capsys) == (
        "ssot-auth: error: the key passphrase must be at least 16 characters for a new"
        " deployment (--allow-short-passphrase accepts a shorter one, e.g. for a test rig)"
    )
    assert stored_keys(env) == {}

    assert run(["keys", "rotate", "--allow-short-passphrase"]) == 0
    assert run(["keys", "rotate"]) == 0  # no longer new: it keeps working


def test_sixteen_characters_are_enough(env: str) -> None:
    os.environ["SSOT_KEY_PASSPHRASE"] = "sixteen chars!!!"
    assert run(["keys", "rotate"]) == 0


def test_an_existing_deployment_keeps_starting_with_a_short_passphrase(
    env: str, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    short = "é" * 9  # 18 bytes: earlier versions counted bytes and accepted it
    legacy_deployment(env, short.encode())
    with pytest.raises(KeyStoreError, match="at least 16 characters for a new deployment"):
        current_kid(tmp_path / "elsewhere", f"sqlite:///{tmp_path / 'new.db'}", short.encode())

    with caplog.at_level(logging.WARNING):
        assert current_kid(tmp_path, env, short.encode())
    assert "SECURITY WARNING: the key passphrase is shorter than 16 characters" in caplog.text
