"""Replicas and the CLI tell each other of changes through PostgreSQL ``LISTEN/NOTIFY``.

A transaction that revokes something or changes the key set calls
:func:`notify_change`, which queues a ``NOTIFY`` that PostgreSQL delivers when
(and only if) the transaction commits. Every auth server holds one dedicated
connection that ``LISTEN``s (:class:`ChangeListener`, a thread) and, on a
notification, asks the matching broadcaster to re-read storage at once, so a
revocation made by another replica or by ``ssot-auth sessions revoke`` reaches
the push streams in milliseconds instead of a poll interval. No broker beyond
the database (DESIGN.md, "Decisions taken").

The notification only says "read again": what changed is still read through
the broadcasters' cursors, so a lost notification costs latency, never
correctness. The poll stays as the fallback: while the listening connection is
healthy the broadcasters poll slowly; when it drops they poll at their own
interval again, and after reconnecting every broadcaster re-reads once (the
catch-up for anything committed while nobody listened).

Channels are per schema (``md5(current_schema())``): several deployments, or
parallel test runs, may share one PostgreSQL database, and channel names are
database-wide. SQLite has no such mechanism: there the CLI and other processes
are heard within the poll interval.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections.abc import Mapping, Sequence
from typing import Any, Protocol

import sqlalchemy as sa

_LOGGER = logging.getLogger(__name__)

#: Channel prefixes; the schema's md5 completes each name (63 bytes at most).
REVOCATIONS = "ssot_revocations_"
KEYS = "ssot_keys_"

#: Seconds between reconnection attempts (doubling up to the maximum).
_RETRY_MIN = 0.5
_RETRY_MAX = 10.0
#: Seconds without any notification after which the connection is probed, so a
#: connection that died silently (no FIN, a failover) is noticed.
_PROBE_AFTER = 10.0
#: How long one wait for notifications lasts; bounds how long stop() takes.
_WAIT = 0.2


def notify_change(conn: sa.Connection, channel: str) -> None:
    """Queue a notification on ``channel``, sent when ``conn``'s transaction commits.

    Does nothing on databases other than PostgreSQL. Several notifications of
    one channel in one transaction reach listeners as one (PostgreSQL folds
    identical ones), which is all a "read again" needs.
    """
    if conn.dialect.name != "postgresql":
        return
    conn.execute(
        sa.text("SELECT pg_notify(:prefix || md5(current_schema()), '')"), {"prefix": channel}
    )


class Listening(Protocol):
    """What a listener drives: :class:`auth_server.broadcast.PolledBroadcaster` has both."""

    def request_refresh(self) -> None: ...

    def set_listening(self, listening: bool) -> None: ...


class ChangeListener:
    """One ``LISTEN`` connection in a thread that wakes broadcasters on notifications.

    Reconnects (with backoff) when the connection is lost; while it is down the
    broadcasters poll at their own interval.
    """

    def __init__(
        self,
        engine: sa.Engine,
        targets: Mapping[str, Sequence[Listening]],
        *,
        probe_after: float = _PROBE_AFTER,
    ) -> None:
        """Create the listener (nothing connects until :meth:`start`).

        Args:
            engine: A PostgreSQL engine; its URL (search path included) is used
                for one connection outside its pool.
            targets: ``{channel prefix: broadcasters to wake}``.
            probe_after: Seconds of silence after which the connection is probed.
        """
        self._engine = engine
        self._targets = {prefix: tuple(found) for prefix, found in targets.items()}
        self._probe_after = probe_after
        self._stopping = threading.Event()
        self._connected = threading.Event()
        self._thread: threading.Thread | None = None
        self._conn: Any = None  # the psycopg connection, for backend_pid()
        self._lock = threading.Lock()

    @property
    def connected(self) -> bool:
        """Whether the ``LISTEN`` connection is up now."""
        return self._connected.is_set()

    @property
    def backend_pid(self) -> int | None:
        """The server process of the listening connection (for operators and tests)."""
        with self._lock:
            conn = self._conn
        if conn is None:
            return None
        with contextlib.suppress(Exception):
            return int(conn.info.backend_pid)
        return None

    def start(self) -> None:
        """Start listening in a daemon thread."""
        self._thread = threading.Thread(target=self._run, name="ssot-listen", daemon=True)
        self._thread.start()

    def wait_connected(self, timeout: float) -> bool:
        """Block until the connection listens; False after ``timeout`` seconds."""
        return self._connected.wait(timeout)

    def stop(self) -> None:
        """Stop listening and close the connection (blocks for a moment)."""
        self._stopping.set()
        if self._thread is not None:
            self._thread.join(timeout=5.0)
            self._thread = None

    def _run(self) -> None:
        delay = _RETRY_MIN
        failing = False
        while not self._stopping.is_set():
            try:
                self._listen()
            except Exception as exc:  # noqa: BLE001 - reconnect on any failure
                # One line per outage: when a listening connection drops, not per retry.
                if self._connected.is_set() or not failing:
                    _LOGGER.warning(
                        "LISTEN connection lost (%s); polling until it is back",
                        type(exc).__name__,
                    )
                failing = True
            else:
                delay = _RETRY_MIN
                continue
            finally:
                self._disconnected()
            if self._stopping.wait(delay):
                break
            delay = min(delay * 2, _RETRY_MAX)

    def _listen(self) -> None:
        import psycopg  # the PostgreSQL extra; only reached with a PostgreSQL URL
        import psycopg.sql

        cargs, cparams = self._engine.dialect.create_connect_args(self._engine.url)
        cparams = {k: v for k, v in cparams.items() if k != "context"}
        # TCP keepalives notice a peer that vanished without a FIN (and the probe below).
        cparams.setdefault("keepalives", 1)
        cparams.setdefault("keepalives_idle", 10)
        cparams.setdefault("keepalives_interval", 5)
        cparams.setdefault("keepalives_count", 3)
        with psycopg.connect(*cargs, **cparams, autocommit=True, connect_timeout=5) as conn:
            channels: dict[str, str] = {}
            for prefix in self._targets:
                row = conn.execute("SELECT %s || md5(current_schema())", (prefix,)).fetchone()
                assert row is not None
                name = str(row[0])
                conn.execute(psycopg.sql.SQL("LISTEN {}").format(psycopg.sql.Identifier(name)))
                channels[name] = prefix
            with self._lock:
                self._conn = conn
            self._connected.set()
            _LOGGER.info("listening for changes from other replicas and the CLI")
            # Anything committed while nobody listened: every broadcaster reads once
            # (its cursor makes that a catch-up, not a reload), then polls slowly.
            for found in self._targets.values():
                for target in found:
                    target.set_listening(True)
                    target.request_refresh()
            quiet_since = time.monotonic()
            while not self._stopping.is_set():
                heard = False
                for note in conn.notifies(timeout=_WAIT):
                    heard = True
                    for target in self._targets.get(channels.get(note.channel, ""), ()):
                        target.request_refresh()
                now = time.monotonic()
                if heard:
                    quiet_since = now
                elif now - quiet_since > self._probe_after:
                    conn.execute("SELECT 1")  # raises on a dead connection
                    quiet_since = now

    def _disconnected(self) -> None:
        was = self._connected.is_set()
        self._connected.clear()
        with self._lock:
            self._conn = None
        if not was or self._stopping.is_set():
            return
        # Back to the fast poll, and read at once: a notification may have been lost.
        for found in self._targets.values():
            for target in found:
                target.set_listening(False)
                target.request_refresh()
