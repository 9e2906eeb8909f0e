"""Replicas and the CLI are heard at once on PostgreSQL (LISTEN/NOTIFY), with the poll as fallback.

The PostgreSQL tests need ``SSOT_TEST_DATABASE_URL``; their polls are set far
slower than the bounds asserted, so only a notification can explain a pass.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import jwt
import pytest
import sqlalchemy as sa

from auth_server.keys import SigningKeyStore
from auth_server.sessions import SessionStore
from auth_server.storage import Database
from helpers import (
    FAST_KDF,
    PASSPHRASE,
    AuthHarness,
    EventLoopThread,
    make_config,
    postgres_schema,
    start_harness,
    wait_until,
)
from interceptors import AuthServiceSource, RevocationList

ROOT = Path(__file__).resolve().parent.parent
PG_ENV = "SSOT_TEST_DATABASE_URL"
SLOW_POLL = 5.0


def test_on_sqlite_nothing_listens_and_the_cli_is_heard_by_the_poll(
    auth_fresh: AuthHarness, tmp_path: Path
) -> None:
    assert auth_fresh.server.listener is None
    revocations = RevocationList(AuthServiceSource(auth_fresh.target))
    revocations.start()
    other = Database(auth_fresh.server.config.resolved_database_url)
    try:
        assert revocations.wait_until_synced(10)
        sid = _session(auth_fresh)
        assert SessionStore(other).revocations.revoke(sid)
        assert wait_until(lambda: revocations.is_revoked(sid), timeout=5)
    finally:
        revocations.close()
        other.dispose()


@pytest.fixture
def pg_url() -> Iterator[str]:
    base = os.environ.get(PG_ENV)
    if not base:
        pytest.skip(f"LISTEN/NOTIFY needs PostgreSQL: set {PG_ENV}")
    with postgres_schema(base) as url:
        yield url


def _start(loop_thread: EventLoopThread, tmp_path: Path, url: str, **changes: float) -> AuthHarness:
    settings = {
        "revocation_poll_interval": SLOW_POLL,
        "key_poll_interval": SLOW_POLL,
        "listening_poll_interval": SLOW_POLL,
    }
    settings.update(changes)
    harness = start_harness(loop_thread, make_config(tmp_path, url, **settings))
    listener = harness.server.listener
    assert listener is not None and listener.wait_connected(10)
    return harness


@pytest.fixture
def following(
    loop_thread: EventLoopThread, tmp_path: Path, pg_url: str
) -> Iterator[tuple[AuthHarness, RevocationList]]:
    harness = _start(loop_thread, tmp_path, pg_url)
    revocations = RevocationList(AuthServiceSource(harness.target))
    revocations.start()
    assert revocations.wait_until_synced(10)
    yield harness, revocations
    revocations.close()
    harness.channel.close()
    harness.stop()


def _session(harness: AuthHarness, name: str = "alice") -> str:
    harness.add_user(name, "correct horse battery")
    login = harness.login(name, "correct horse battery")
    sid: str = jwt.decode(login.access_token, options={"verify_signature": False})["sid"]
    return sid


def _cli(url: str, data_dir: Path, *args: str) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SSOT_")}
    env.update(PYTHONPATH=str(ROOT), SSOT_KEY_PASSPHRASE=PASSPHRASE.decode(), SSOT_DATABASE_URL=url)
    done = subprocess.run(
        [sys.executable, "-m", "auth_server", *args, "--data-dir", str(data_dir)],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
        check=False,
        cwd=ROOT,
    )
    assert done.returncode == 0, done.stderr


@pytest.mark.postgres
def test_a_revocation_by_the_cli_reaches_push_verifiers_well_within_the_poll(
    following: tuple[AuthHarness, RevocationList], pg_url: str, tmp_path: Path
) -> None:
    harness, revocations = following
    sid = _session(harness)
    _cli(pg_url, tmp_path, "sessions", "revoke", sid)
    exited = time.monotonic()
    assert wait_until(lambda: revocations.is_revoked(sid), timeout=SLOW_POLL)
    assert time.monotonic() - exited < 0.5


@pytest.mark.postgres
def test_a_revocation_by_another_replica_reaches_push_verifiers_at_once(
    following: tuple[AuthHarness, RevocationList], pg_url: str
) -> None:
    harness, revocations = following
    other = Database(pg_url)  # what another replica holds: its own connections
    try:
        for name in ("bob", "carol", "dave"):
            sid = _session(harness, name)
            started = time.monotonic()
            assert SessionStore(other).revocations.revoke(sid)
            assert wait_until(lambda sid=sid: revocations.is_revoked(sid), timeout=SLOW_POLL)
            assert time.monotonic() - started < 0.5
    finally:
        other.dispose()


@pytest.mark.postgres
def test_a_key_change_by_another_process_reaches_the_published_set_at_once(
    following: tuple[AuthHarness, RevocationList], pg_url: str
) -> None:
    harness, _ = following
    other = Database(pg_url)
    try:
        keys = SigningKeyStore(other, PASSPHRASE, kdf=FAST_KDF)
        kid = keys.rotate(activate_after=600).kid  # the key is generated before the commit
        started = time.monotonic()
        published = harness.server.publisher

        assert wait_until(
            lambda: any(k["kid"] == kid for k in published.snapshot.keys), timeout=SLOW_POLL
        )
        assert time.monotonic() - started < 0.5
    finally:
        other.dispose()


@pytest.mark.postgres
def test_the_poll_takes_over_when_the_listen_connection_is_killed_and_it_comes_back(
    loop_thread: EventLoopThread, tmp_path: Path, pg_url: str
) -> None:
    # Poll fast when not listening, never while listening: a revocation made while
    # the connection is down arrives by the poll, one made after it is back by NOTIFY.
    harness = _start(
        loop_thread, tmp_path, pg_url, revocation_poll_interval=0.2, listening_poll_interval=60
    )
    revocations = RevocationList(AuthServiceSource(harness.target))
    revocations.start()
    other = Database(pg_url)
    try:
        assert revocations.wait_until_synced(10)
        listener = harness.server.listener
        assert listener is not None
        killed = listener.backend_pid
        with other.engine.begin() as conn:
            conn.execute(sa.text("SELECT pg_terminate_backend(:pid)"), {"pid": killed})
        store = SessionStore(other).revocations
        sid = _session(harness)
        assert store.revoke(sid)
        assert wait_until(lambda: revocations.is_revoked(sid), timeout=3)

        assert wait_until(lambda: listener.connected and listener.backend_pid != killed, 10)
        sid = _session(harness, "bob")
        started = time.monotonic()
        assert store.revoke(sid)
        assert wait_until(lambda: revocations.is_revoked(sid), timeout=5)
        assert time.monotonic() - started < 0.5
    finally:
        revocations.close()
        other.dispose()
        harness.channel.close()
        harness.stop()
