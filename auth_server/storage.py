"""Database engine setup, transactions and locking (SQLAlchemy Core) for SQLite and PostgreSQL.

The tables are defined in :mod:`auth_server.schema` and re-exported here, so
callers keep importing them from this module.
"""

from __future__ import annotations

import hashlib
import logging
import os
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from sqlalchemy import event, exc

from auth_server.audit import notify_listener
from auth_server.errors import StorageError
from auth_server.schema import (
    client_assertions,
    clients,
    deployment_secrets,
    identity_providers,
    login_throttle,
    metadata,
    revocation_counter,
    revocation_watermarks,
    sessions,
    signing_keys,
    spent_refresh_tokens,
    user_identities,
    users,
)

__all__ = [
    "Database",
    "client_assertions",
    "clients",
    "deployment_secrets",
    "identity_providers",
    "login_throttle",
    "metadata",
    "revocation_counter",
    "revocation_watermarks",
    "sessions",
    "signing_keys",
    "spent_refresh_tokens",
    "sqlite_url_for",
    "user_identities",
    "users",
]

_LOGGER = logging.getLogger(__name__)

_SQLITE_FILE_NAME = "ssot-auth.db"
_BEGIN_IMMEDIATE = "ssot_sqlite_begin_immediate"
# SQLite's busy_timeout (set on every connection below), in seconds.
_SQLITE_BUSY_SECONDS = 5.0


def sqlite_url_for(data_dir: Path) -> str:
    """Return the URL of the embedded SQLite database inside ``data_dir``.

    Args:
        data_dir: The service's data directory.

    Returns:
        ``sqlite:///<data_dir>/ssot-auth.db`` (with an absolute path).
    """
    return f"sqlite:///{(Path(data_dir).absolute() / _SQLITE_FILE_NAME).as_posix()}"


class Database:
    """An engine plus the schema, configured for safe concurrent use.

    SQLite gets WAL journaling, a 5 s busy timeout and enforced foreign keys;
    PostgreSQL (``postgresql+psycopg://...``) gets connection pre-ping so a
    restarted server does not fail the first request.

    Attributes:
        engine: The SQLAlchemy engine; thread-safe, pooled.
    """

    def __init__(self, url: str) -> None:
        """Create the engine (no connection is opened yet).

        Args:
            url: A SQLAlchemy database URL: ``sqlite:///PATH`` or
                ``postgresql+psycopg://...`` (``postgresql://`` means the same).
        """
        parsed = sa.make_url(url)
        if parsed.drivername == "postgresql":
            # psycopg 3 is the PostgreSQL driver we ship; SQLAlchemy's bare
            # "postgresql" would pick psycopg2.
            parsed = parsed.set(drivername="postgresql+psycopg")
        self._is_sqlite = parsed.get_backend_name() == "sqlite"
        self._is_postgresql = parsed.get_backend_name() == "postgresql"
        if self._is_sqlite:
            # The pool hands out the connection returned last (LIFO), not the one
            # idle longest: a connection whose last transaction was not the newest
            # finds the WAL changed and drops its whole page cache, so with writers
            # serialized and the pool rotating through its connections, every
            # Refresh re-read its pages from the file (~13 pread calls); the
            # connection that just committed still has them.
            _prepare_sqlite_file(parsed.database)
            self.engine: sa.Engine = sa.create_engine(parsed, pool_use_lifo=True)
            event.listen(self.engine, "connect", _on_sqlite_connect)
            event.listen(self.engine, "begin", _on_sqlite_begin)
        else:
            self.engine = sa.create_engine(parsed, pool_pre_ping=True)
        # Connections out of the pool right now: dispose() waits for them (see there).
        self._checked_out = 0
        self._all_in = threading.Condition()
        # Reentrant: a write transaction opened inside another on the same thread meets
        # SQLite's own lock, as it did before this one existed.
        self._sqlite_writer = threading.RLock()
        event.listen(self.engine, "checkout", self._on_checkout)
        event.listen(self.engine, "checkin", self._on_checkin)

    def _on_checkout(self, *_: Any) -> None:
        with self._all_in:
            self._checked_out += 1

    def _on_checkin(self, *_: Any) -> None:
        with self._all_in:
            self._checked_out -= 1
            self._all_in.notify_all()

    @property
    def dialect_name(self) -> str:
        """The backend name, e.g. ``"sqlite"`` or ``"postgresql"``."""
        return self.engine.dialect.name

    def create_schema(self) -> None:
        """Create any missing tables and indexes; safe to call on every start.

        Raises:
            StorageError: The database is unreachable or unusable.
        """
        try:
            metadata.create_all(self.engine)
            self._add_missing_columns()
            # A current schema needs no write: the CLI, run beside serving replicas,
            # must not wait for SQLite's write lock (busy timeout) just to start.
            with self.engine.connect() as conn:
                seeded = conn.execute(
                    sa.select(revocation_counter.c.id).where(revocation_counter.c.id == 1)
                ).first()
            if seeded is None:
                with self.transaction(write=True) as conn:
                    self.insert_ignoring_duplicates(conn, revocation_counter, [{"id": 1, "seq": 0}])
        except exc.SQLAlchemyError as err:
            _LOGGER.error("cannot create the database schema: %s", type(err).__name__)
            raise StorageError() from err

    def _add_missing_columns(self) -> None:
        # create_all() creates missing tables but never alters existing ones: a
        # database made by an older version gains its new nullable columns here.
        inspector = sa.inspect(self.engine)
        preparer = self.engine.dialect.identifier_preparer
        for table in metadata.sorted_tables:
            if not inspector.has_table(table.name):
                continue
            present = {column["name"] for column in inspector.get_columns(table.name)}
            for column in table.columns:
                if column.name in present or not column.nullable:
                    continue
                ddl = (
                    f"ALTER TABLE {preparer.format_table(table)} ADD COLUMN "
                    f"{preparer.format_column(column)} "
                    f"{column.type.compile(dialect=self.engine.dialect)}"
                )
                with self.engine.begin() as conn:
                    conn.exec_driver_sql(ddl)
                _LOGGER.info("added column %s.%s", table.name, column.name)
            for index in table.indexes:
                if self._is_postgresql:
                    index.create(self.engine, checkfirst=True)
                else:
                    # SQLAlchemy does not reflect SQLite's expression indexes (it warns
                    # and skips them), so checkfirst would miss one and create it twice.
                    # IF NOT EXISTS takes no write lock when the index is there (WAL).
                    with self.engine.begin() as conn:
                        conn.execute(sa.schema.CreateIndex(index, if_not_exists=True))

    def insert_ignoring_duplicates(
        self, conn: sa.Connection, table: sa.Table, rows: list[dict[str, Any]]
    ) -> None:
        """Insert ``rows``, skipping any whose primary key exists (no error, no abort)."""
        if not rows:
            return
        if self._is_postgresql:
            from sqlalchemy.dialects import postgresql

            conn.execute(postgresql.insert(table).on_conflict_do_nothing(), rows)
        else:
            from sqlalchemy.dialects import sqlite

            conn.execute(sqlite.insert(table).on_conflict_do_nothing(), rows)

    def dispose(self, timeout: float = 5.0) -> None:
        """Close every pooled connection, first waiting (bounded) for those in use.

        A worker thread may still be finishing a query when its server stops;
        ``engine.dispose()`` leaves a checked-out connection open, to be closed
        by the garbage collector later. Waiting for it to come back closes it here.
        """
        with self._all_in:
            if not self._all_in.wait_for(lambda: self._checked_out <= 0, timeout):
                _LOGGER.warning(
                    "disposing the database with %d connections in use", self._checked_out
                )
        self.engine.dispose()

    @contextmanager
    def transaction(
        self, *, write: bool = False, lock: str | None = None
    ) -> Iterator[sa.Connection]:
        """Run a block in one transaction, committed on success and rolled back on error.

        Database failures become :class:`StorageError`; an ``IntegrityError``
        propagates unchanged so callers can map a unique violation.

        Args:
            write: The block writes. On SQLite the transaction then takes the
                write lock up front (``BEGIN IMMEDIATE``): a deferred transaction
                that reads and then writes fails at once, busy timeout or not,
                when another writer committed in between.
            lock: The name of an application lock held until the transaction
                ends, so writers that must see each other's rows run one at a
                time (implies ``write``). SQLite write transactions are already
                exclusive; PostgreSQL takes ``pg_advisory_xact_lock``.

        Yields:
            The connection, inside the open transaction.

        Raises:
            StorageError: The database is unreachable or unusable.
        """
        write = write or lock is not None
        # SQLite admits one writer at a time, and a writer that finds the lock taken
        # polls for it with sleeps that grow to 100 ms (its busy handler), however soon
        # the lock is free: under concurrent Refresh calls most of the time went there.
        # Writers of this process queue on a lock of ours first and start the moment
        # the previous one commits; other processes (the CLI) still meet SQLite's own
        # lock and busy timeout, as before. Durability is unchanged: same transactions,
        # same commits, same journal settings.
        queued = write and self._is_sqlite
        if queued and not self._sqlite_writer.acquire(timeout=_SQLITE_BUSY_SECONDS):
            _LOGGER.warning("database error: %s", "timed out waiting for the write lock")
            raise StorageError()
        try:
            with self._transaction(write, lock) as conn:
                yield conn
        finally:
            if queued:
                self._sqlite_writer.release()

    @contextmanager
    def _transaction(self, write: bool, lock: str | None) -> Iterator[sa.Connection]:
        try:
            with self.engine.connect() as conn:
                if write and self._is_sqlite:
                    conn.execution_options(**{_BEGIN_IMMEDIATE: True})
                with conn.begin():
                    if lock is not None and self._is_postgresql:
                        conn.execute(
                            sa.text("SELECT pg_advisory_xact_lock(:key)"),
                            {"key": _advisory_key(lock)},
                        )
                    yield conn
        except exc.IntegrityError:
            raise
        except (exc.DBAPIError, exc.TimeoutError) as err:
            _LOGGER.warning("database error: %s", type(err).__name__)
            notify_listener("storage.error")
            raise StorageError() from err


def _advisory_key(name: str) -> int:
    return int.from_bytes(hashlib.sha256(name.encode()).digest()[:8], "big", signed=True)


def _prepare_sqlite_file(database: str | None) -> None:
    # The file holds password hashes and encrypted keys: create it 0600 before
    # SQLite does (SQLite gives its -wal/-shm files the main file's mode).
    if not database or database == ":memory:" or database.startswith("file:"):
        return
    path = Path(database)
    if path.exists():
        return
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    try:
        fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600)
    except FileExistsError:
        return
    os.close(fd)


def _on_sqlite_connect(dbapi_connection: Any, _record: Any) -> None:
    # Take transaction control away from the sqlite3 module (which would not
    # BEGIN before a SELECT) and emit BEGIN ourselves in _on_sqlite_begin.
    dbapi_connection.isolation_level = None
    cursor = dbapi_connection.cursor()
    try:
        # The busy timeout first: switching to WAL takes a lock too, and without it a
        # process opening the file while another does fails at once (workers starting).
        cursor.execute(f"PRAGMA busy_timeout={int(_SQLITE_BUSY_SECONDS * 1000)}")
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA foreign_keys=ON")
    finally:
        cursor.close()


def _on_sqlite_begin(conn: sa.Connection) -> None:
    # On the driver's connection, not through exec_driver_sql: a statement through
    # SQLAlchemy costs a cursor result and its events, and every transaction begins.
    immediate = conn.get_execution_options().get(_BEGIN_IMMEDIATE, False)
    conn.connection.driver_connection.execute(  # type: ignore[union-attr]
        "BEGIN IMMEDIATE" if immediate else "BEGIN"
    )
