"""The database layer: schema, SQLite settings, transactions and error mapping.

Runs on SQLite, and on PostgreSQL too when SSOT_TEST_DATABASE_URL is set.
"""

from __future__ import annotations

import stat
import threading
from pathlib import Path

import grpc
import pytest
import sqlalchemy as sa
from sqlalchemy import exc

from auth_server.errors import (
    AuthServerError,
    InvalidCredentials,
    InvalidRequest,
    KeyStoreError,
    StorageError,
    UserExists,
    UserNotFound,
)
from auth_server.storage import Database, sessions, sqlite_url_for, users


def _add_user_row(conn: sa.Connection, user_id: str, username: str) -> None:
    conn.execute(
        users.insert().values(
            id=user_id,
            username=username,
            password_hash="x",
            scopes="",
            disabled=False,
            created_at=1.0,
            updated_at=1.0,
        )
    )


def test_sqlite_url_points_into_the_data_dir(tmp_path: Path) -> None:
    assert sqlite_url_for(tmp_path) == f"sqlite:///{tmp_path}/ssot-auth.db"


def test_plain_postgresql_url_uses_psycopg_3() -> None:
    db = Database("postgresql://postgres@127.0.0.1:1/none")
    try:
        assert db.engine.dialect.driver == "psycopg"
    finally:
        db.dispose()


def test_create_schema_is_idempotent_and_creates_every_table(database: Database) -> None:
    database.create_schema()

    names = set(sa.inspect(database.engine).get_table_names())
    assert {"users", "signing_keys", "sessions"} <= names


def test_sqlite_connections_use_wal_busy_timeout_and_foreign_keys(tmp_path: Path) -> None:
    db = Database(sqlite_url_for(tmp_path))
    try:
        with db.engine.connect() as conn:
            assert conn.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
            assert conn.exec_driver_sql("PRAGMA busy_timeout").scalar() == 5000
            assert conn.exec_driver_sql("PRAGMA foreign_keys").scalar() == 1
    finally:
        db.dispose()


def test_sqlite_hands_out_the_connection_that_committed_last(tmp_path: Path) -> None:
    # A connection that did not make the newest commit drops its page cache at its
    # next transaction (WAL): the pool must not rotate writes through its connections.
    db = Database(sqlite_url_for(tmp_path))
    db.create_schema()
    first, second = db.engine.connect(), db.engine.connect()
    first_driver = first.connection.driver_connection
    second_driver = second.connection.driver_connection
    first.close()
    second.close()  # returned last
    with db.transaction(write=True) as conn:
        assert conn.connection.driver_connection is second_driver
    with db.transaction(write=True) as conn:
        assert conn.connection.driver_connection is second_driver
    assert first_driver is not second_driver
    db.dispose()


def test_sqlite_file_is_created_readable_by_the_owner_only(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    db = Database(sqlite_url_for(data_dir))
    try:
        db.create_schema()
        mode = stat.S_IMODE((data_dir / "ssot-auth.db").stat().st_mode)
        assert mode == 0o600
    finally:
        db.dispose()


def test_transaction_commits_on_success(database: Database) -> None:
    with database.transaction(write=True) as conn:
        _add_user_row(conn, "u1", "alice")

    with database.transaction() as conn:
        assert conn.execute(sa.select(users.c.username)).scalars().all() == ["alice"]


def test_transaction_rolls_back_on_error(database: Database) -> None:
    with pytest.raises(RuntimeError), database.transaction(write=True) as conn:
        _add_user_row(conn, "u1", "alice")
        raise RuntimeError("boom")

    with database.transaction() as conn:
        assert conn.execute(sa.select(users.c.username)).all() == []


def test_unique_violation_propagates_as_integrity_error(database: Database) -> None:
    with database.transaction(write=True) as conn:
        _add_user_row(conn, "u1", "alice")

    with pytest.raises(exc.IntegrityError), database.transaction(write=True) as conn:
        _add_user_row(conn, "u2", "alice")


def test_session_rows_need_an_existing_user(database: Database) -> None:
    with pytest.raises(exc.IntegrityError), database.transaction(write=True) as conn:
        conn.execute(
            sessions.insert().values(id="s1", user_id="nobody", created_at=1.0, expires_at=2.0)
        )


def test_refresh_token_hashes_are_unique(database: Database) -> None:
    with database.transaction(write=True) as conn:
        _add_user_row(conn, "u1", "alice")
        conn.execute(
            sessions.insert().values(
                id="s1", user_id="u1", created_at=1.0, expires_at=2.0, refresh_token_hash="h"
            )
        )

    with pytest.raises(exc.IntegrityError), database.transaction(write=True) as conn:
        conn.execute(
            sessions.insert().values(
                id="s2", user_id="u1", created_at=1.0, expires_at=2.0, refresh_token_hash="h"
            )
        )


def test_unusable_database_raises_storage_error(tmp_path: Path) -> None:
    # The "database file" is a directory: SQLite cannot open it.
    db = Database(f"sqlite:///{tmp_path}")
    try:
        with pytest.raises(StorageError) as raised:
            db.create_schema()
        assert raised.value.code == grpc.StatusCode.UNAVAILABLE
        with pytest.raises(StorageError), db.transaction() as conn:
            conn.execute(sa.select(users.c.id))
    finally:
        db.dispose()


def test_unreachable_postgresql_raises_storage_error() -> None:
    # Port 1 on loopback: nothing listens, the connection is refused at once.
    db = Database("postgresql+psycopg://postgres@127.0.0.1:1/none?connect_timeout=2")
    try:
        with pytest.raises(StorageError), db.transaction() as conn:
            conn.execute(sa.select(users.c.id))
    finally:
        db.dispose()


def test_locked_transactions_do_not_lose_concurrent_updates(database: Database) -> None:
    # Read-modify-write from several threads: the named lock (BEGIN IMMEDIATE
    # on SQLite, an advisory lock on PostgreSQL) must serialise them.
    with database.transaction(write=True) as conn:
        _add_user_row(conn, "u1", "alice")
    threads, rounds = 4, 10
    errors: list[BaseException] = []

    def bump() -> None:
        try:
            for _ in range(rounds):
                with database.transaction(lock="test-counter") as conn:
                    value = conn.execute(sa.select(users.c.updated_at)).scalar_one()
                    conn.execute(users.update().values(updated_at=value + 1))
        except BaseException as err:
            errors.append(err)

    workers = [threading.Thread(target=bump) for _ in range(threads)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()

    assert errors == []
    with database.transaction() as conn:
        assert conn.execute(sa.select(users.c.updated_at)).scalar_one() == 1.0 + threads * rounds


@pytest.mark.parametrize(
    ("error", "code", "message"),
    [
        pytest.param(
            InvalidRequest(), grpc.StatusCode.INVALID_ARGUMENT, "invalid request", id="invalid"
        ),
        pytest.param(
            InvalidRequest("username is too long"),
            grpc.StatusCode.INVALID_ARGUMENT,
            "username is too long",
            id="invalid-specific",
        ),
        pytest.param(
            InvalidCredentials(),
            grpc.StatusCode.UNAUTHENTICATED,
            "invalid username or password",
            id="credentials",
        ),
        pytest.param(
            UserExists(), grpc.StatusCode.ALREADY_EXISTS, "user already exists", id="exists"
        ),
        pytest.param(UserNotFound(), grpc.StatusCode.NOT_FOUND, "user not found", id="not-found"),
        pytest.param(
            KeyStoreError(),
            grpc.StatusCode.FAILED_PRECONDITION,
            "signing key unavailable",
            id="keys",
        ),
        pytest.param(
            StorageError(), grpc.StatusCode.UNAVAILABLE, "storage unavailable", id="storage"
        ),
    ],
)
def test_every_error_carries_its_status_and_safe_message(
    error: AuthServerError, code: grpc.StatusCode, message: str
) -> None:
    assert isinstance(error, AuthServerError)
    assert error.code == code
    assert error.message == message
    assert str(error) == message


def test_a_specific_message_does_not_change_the_class_default() -> None:
    InvalidRequest("something specific")

    assert InvalidRequest().message == "invalid request"


def test_an_older_database_gains_the_case_insensitive_username_index(database: Database) -> None:
    # A database made before the index existed: starting again adds it, and the
    # first-sign-in name lookup (lower(username) = ?) is then answered from it.
    with database.engine.begin() as conn:
        conn.exec_driver_sql("DROP INDEX ix_users_username_lower")
    database.create_schema()

    lookup = sa.select(users.c.id).where(sa.func.lower(users.c.username) == "admin")
    with database.engine.connect() as conn:
        if database.engine.dialect.name == "sqlite":
            compiled = lookup.compile(database.engine, compile_kwargs={"literal_binds": True})
            plan = " ".join(
                str(row[-1]) for row in conn.exec_driver_sql(f"EXPLAIN QUERY PLAN {compiled}")
            )
        else:
            # An empty table is scanned whatever its indexes; ask the planner not to.
            conn.exec_driver_sql("SET LOCAL enable_seqscan = off")
            compiled = lookup.compile(database.engine, compile_kwargs={"literal_binds": True})
            plan = " ".join(str(row[0]) for row in conn.exec_driver_sql(f"EXPLAIN {compiled}"))
    assert "ix_users_username_lower" in plan
