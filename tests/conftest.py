"""Shared fixtures: databases, a running auth service, resource servers (sync and aio).

Plain helpers (the clock, token factory, harnesses) live in ``helpers``; test modules
import them from there, never from this file.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from auth_server.storage import Database
from helpers import (
    FACES,
    PASSPHRASE,
    PG_ENV,
    AuthHarness,
    EventLoopThread,
    ResourceHarness,
    make_config,
    postgres_schema,
    running_resource,
    start_harness,
)


@pytest.fixture(scope="session")
def loop_thread() -> Iterator[EventLoopThread]:
    lt = EventLoopThread()
    yield lt
    lt.close()


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """A database URL per backend: SQLite in tmp_path, and PostgreSQL when configured."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'ssot-auth.db'}"
        return
    base = os.environ.get(PG_ENV) or None
    if base is None:
        pytest.skip(
            f"PostgreSQL tests need {PG_ENV} (e.g. postgresql+psycopg://postgres@127.0.0.1/test)"
        )
    with postgres_schema(base) as url:
        yield url


@pytest.fixture
def database(database_url: str) -> Iterator[Database]:
    """A fresh, empty database with the schema created, on each backend."""
    db = Database(database_url)
    db.create_schema()
    yield db
    db.dispose()


def _running_auth(
    loop_thread: EventLoopThread, data_dir: Path, database_url: str | None = None
) -> Iterator[AuthHarness]:
    harness = start_harness(loop_thread, make_config(data_dir, database_url))
    yield harness
    harness.channel.close()
    harness.stop()


@pytest.fixture(scope="module")
def auth(
    loop_thread: EventLoopThread, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[AuthHarness]:
    """A running auth service on SQLite, shared by the tests of one module.

    Only for tests that leave its state as they found it: a test that adds users,
    rotates keys, starts or ends sessions it then counts, fails logins (throttling)
    or stops the server takes ``auth_fresh`` instead.
    """
    yield from _running_auth(loop_thread, tmp_path_factory.mktemp("auth"))


@pytest.fixture
def auth_fresh(loop_thread: EventLoopThread, tmp_path: Path) -> Iterator[AuthHarness]:
    """A running auth service on SQLite of the test's own, ports chosen by the OS."""
    yield from _running_auth(loop_thread, tmp_path)


@pytest.fixture
def auth_any_db(
    loop_thread: EventLoopThread, tmp_path: Path, database_url: str
) -> Iterator[AuthHarness]:
    """The auth service on each database backend, of the test's own."""
    yield from _running_auth(loop_thread, tmp_path, database_url)


@pytest.fixture(params=FACES)
def resource(
    request: pytest.FixtureRequest, loop_thread: EventLoopThread
) -> Iterator[ResourceHarness]:
    """The resource server, once as a sync grpc.server and once as a grpc.aio server.

    It verifies the tokens of the test's auth service: ``auth_fresh`` if the test
    asked for it, the shared ``auth`` otherwise.
    """
    name = "auth_fresh" if "auth_fresh" in request.fixturenames else "auth"
    auth: AuthHarness = request.getfixturevalue(name)
    with running_resource(loop_thread, auth, aio=request.param) as harness:
        yield harness


@pytest.fixture
def env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    """A clean ``SSOT_*`` environment for an in-process CLI run; returns its data directory.

    Every ``SSOT_*`` variable but the test database's is removed, ``SSOT_DATA_DIR``
    points into ``tmp_path`` and ``SSOT_KEY_PASSPHRASE`` holds the test passphrase.
    """
    for name in list(os.environ):
        if name.startswith("SSOT_") and name != PG_ENV:
            monkeypatch.delenv(name)
    monkeypatch.setenv("SSOT_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.setenv("SSOT_KEY_PASSPHRASE", PASSPHRASE.decode())
    return tmp_path / "data"
