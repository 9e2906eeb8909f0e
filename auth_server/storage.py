"""Database schema and engine setup (SQLAlchemy Core) for SQLite and PostgreSQL."""

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

from auth_server.errors import StorageError

_LOGGER = logging.getLogger(__name__)

_SQLITE_FILE_NAME = "ssot-auth.db"
_BEGIN_IMMEDIATE = "ssot_sqlite_begin_immediate"
# SQLite's busy_timeout (set on every connection below), in seconds.
_SQLITE_BUSY_SECONDS = 5.0

metadata = sa.MetaData()

users = sa.Table(
    "users",
    metadata,
    sa.Column("id", sa.String(36), primary_key=True),
    sa.Column("username", sa.String(256), nullable=False, unique=True),
    sa.Column("password_hash", sa.Text, nullable=False),
    sa.Column("scopes", sa.Text, nullable=False, default=""),
    sa.Column("disabled", sa.Boolean, nullable=False, default=False),
    sa.Column("created_at", sa.Float, nullable=False),
    sa.Column("updated_at", sa.Float, nullable=False),
)

signing_keys = sa.Table(
    "signing_keys",
    metadata,
    sa.Column("kid", sa.String(64), primary_key=True),
    sa.Column("algorithm", sa.String(16), nullable=False),
    sa.Column("private_key", sa.LargeBinary, nullable=False),
    sa.Column("public_jwk", sa.Text, nullable=False),
    sa.Column("created_at", sa.Float, nullable=False),
    sa.Column("activates_at", sa.Float, nullable=False),
    sa.Column("deactivated_at", sa.Float, nullable=True),
    sa.Column("retires_at", sa.Float, nullable=True),
    sa.Column("revoked_at", sa.Float, nullable=True),
)

# One row per login session. ``refresh_token_hash`` is the SHA-256 of the one
# refresh token that can be spent now; spent ones move to spent_refresh_tokens.
sessions = sa.Table(
    "sessions",
    metadata,
    sa.Column("id", sa.String(36), primary_key=True),
    sa.Column("user_id", sa.String(36), sa.ForeignKey("users.id"), nullable=False, index=True),
    sa.Column("created_at", sa.Float, nullable=False),
    sa.Column("expires_at", sa.Float, nullable=False),  # absolute end of the session
    sa.Column("revoked_at", sa.Float, nullable=True),
    sa.Column("refresh_token_hash", sa.String(64), nullable=True, unique=True),
    # Columns added with refresh and revocation (nullable, so older databases
    # gain them in place; see Database.create_schema).
    sa.Column("last_used_at", sa.Float, nullable=True),  # login or last refresh: idle expiry
    sa.Column("access_expires_at", sa.Float, nullable=True),  # exp of its last access token
    sa.Column("scope", sa.Text, nullable=True),  # the scopes granted at login
    sa.Column("revoke_reason", sa.String(32), nullable=True),
    # x5t#S256 of the client certificate of a login over mutual TLS (RFC 8705): the
    # session's refresh tokens then work only with that certificate.
    sa.Column("cert_thumbprint", sa.String(64), nullable=True),
    # The aud its access tokens carry (RFC 8707); NULL means the server's default.
    sa.Column("audience", sa.Text, nullable=True),
    # The revocation sequence number of the transaction that revoked it
    # (revocation_counter): the publisher's cursor reads only rows past it.
    sa.Column("revoked_seq", sa.BigInteger, nullable=True),
    # Ended together with a watermark entry ("every token of this subject issued
    # before T", revocation_watermarks): not listed one by one.
    sa.Column("watermarked", sa.Boolean, nullable=True),
)
# The revocation list that verifiers follow: revoked sessions whose access
# tokens may still be unexpired. Polled several times a second, so indexed.
sa.Index(
    "ix_sessions_revoked_access_expires_at",
    sessions.c.access_expires_at,
    sqlite_where=sessions.c.revoked_at.isnot(None),
    postgresql_where=sessions.c.revoked_at.isnot(None),
)

# What the publisher's poll reads: revocations past its cursor.
sa.Index("ix_sessions_revoked_seq", sessions.c.revoked_seq)
# Revoked rows nobody has stamped with a sequence number yet (written by an older
# version, or inserted by hand); empty in steady state, so probing it is free.
sa.Index(
    "ix_sessions_unstamped",
    sessions.c.revoked_at,
    sqlite_where=sa.and_(
        sessions.c.revoked_at.isnot(None),
        sessions.c.revoked_seq.is_(None),
        sessions.c.watermarked.is_(None),
    ),
    postgresql_where=sa.and_(
        sessions.c.revoked_at.isnot(None),
        sessions.c.revoked_seq.is_(None),
        sessions.c.watermarked.is_(None),
    ),
)

# One row, one number: bumped by every transaction that revokes something, and
# stamped on what it revoked. The UPDATE holds the row's lock until commit, so
# revoking transactions commit in sequence order (see auth_server._revocationrows).
revocation_counter = sa.Table(
    "revocation_counter",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=False),
    sa.Column("seq", sa.BigInteger, nullable=False),
)

# "Refuse every access token of this subject issued before issued_before"; the
# empty subject means every subject (``sessions revoke --all``).
revocation_watermarks = sa.Table(
    "revocation_watermarks",
    metadata,
    sa.Column("subject", sa.String(256), primary_key=True),
    sa.Column("issued_before", sa.BigInteger, nullable=False),  # epoch seconds
    sa.Column("expires_at", sa.Float, nullable=False),  # no token it refuses outlives this
    sa.Column("seq", sa.BigInteger, nullable=False, index=True),
    sa.Column("created_at", sa.Float, nullable=False),
)

# Every refresh token a session has spent (RFC 9700 §4.14: presenting one
# again outside the grace window revokes the session).
spent_refresh_tokens = sa.Table(
    "spent_refresh_tokens",
    metadata,
    sa.Column("token_hash", sa.String(64), primary_key=True),
    sa.Column(
        "session_id",
        sa.String(36),
        sa.ForeignKey("sessions.id", ondelete="CASCADE"),
        nullable=False,
        index=True,
    ),
    sa.Column("spent_at", sa.Float, nullable=False),
)

# Login throttling counters, shared by every replica. ``key`` is a hash of the
# layer and its subject (user, address or both), so names and addresses are
# not stored in the clear.
login_throttle = sa.Table(
    "login_throttle",
    metadata,
    sa.Column("key", sa.String(64), primary_key=True),
    sa.Column("failures", sa.Integer, nullable=False),
    sa.Column("window_start", sa.Float, nullable=False),
    sa.Column("last_failure_at", sa.Float, nullable=True),
    sa.Column("succeeded_at", sa.Float, nullable=True),
    sa.Column("updated_at", sa.Float, nullable=False, index=True),
)

# Secrets every replica must share, sealed under the key passphrase like the
# private keys (auth_server._envelope): today the refresh-token successor secret.
deployment_secrets = sa.Table(
    "deployment_secrets",
    metadata,
    sa.Column("name", sa.String(64), primary_key=True),
    sa.Column("sealed", sa.LargeBinary, nullable=False),
    sa.Column("created_at", sa.Float, nullable=False),
)


# Service identities (OAuth clients, auth_server/clients.py). Exactly one way to
# authenticate: public keys (``jwks`` or ``jwks_uri``), a TLS subject, or a secret
# stored only as a SHA-256 hash (it is 256 random bits, so no slow hash is needed).
clients = sa.Table(
    "clients",
    metadata,
    sa.Column("id", sa.String(64), primary_key=True),
    sa.Column("auth_method", sa.String(32), nullable=False),
    sa.Column("scopes", sa.Text, nullable=False, default=""),
    sa.Column("audiences", sa.Text, nullable=False, default=""),
    sa.Column("jwks", sa.Text, nullable=True),
    sa.Column("jwks_uri", sa.Text, nullable=True),
    sa.Column("tls_subject", sa.Text, nullable=True),
    sa.Column("secret_hash", sa.String(64), nullable=True),
    sa.Column("old_secret_hash", sa.String(64), nullable=True),
    sa.Column("old_secret_expires_at", sa.Float, nullable=True),
    sa.Column("disabled", sa.Boolean, nullable=False, default=False),
    sa.Column("created_at", sa.Float, nullable=False),
    sa.Column("updated_at", sa.Float, nullable=False),
    sa.Column("last_used_at", sa.Float, nullable=True),
    # Token exchange (RFC 8693) policy: the audiences the client may exchange a
    # user's token *to*, each optionally capped to scopes ("aud" or "aud=s1,s2",
    # space-separated); and whether a client-credentials token may be a subject.
    sa.Column("exchange_audiences", sa.Text, nullable=True),
    sa.Column("exchange_services", sa.Boolean, nullable=True),
)

# Client assertion ids already used (RFC 7523 §3 item 7), until their ``exp``:
# shared by every replica, so an assertion is good for one token, anywhere.
client_assertions = sa.Table(
    "client_assertions",
    metadata,
    sa.Column("key", sa.String(64), primary_key=True),  # SHA-256 of client id and jti
    sa.Column("expires_at", sa.Float, nullable=False, index=True),
)


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
            _prepare_sqlite_file(parsed.database)
            self.engine: sa.Engine = sa.create_engine(parsed)
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
            with self.engine.begin() as conn:
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
                index.create(self.engine, checkfirst=True)

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
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute(f"PRAGMA busy_timeout={int(_SQLITE_BUSY_SECONDS * 1000)}")
        cursor.execute("PRAGMA foreign_keys=ON")
    finally:
        cursor.close()


def _on_sqlite_begin(conn: sa.Connection) -> None:
    if conn.get_execution_options().get(_BEGIN_IMMEDIATE, False):
        conn.exec_driver_sql("BEGIN IMMEDIATE")
    else:
        conn.exec_driver_sql("BEGIN")
