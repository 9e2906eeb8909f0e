"""Revocation in storage: ending sessions by decision, and reading what verifiers must refuse.

Two sides of one list. The writing side ends sessions for an operator or an
incident (one session, every session of a user, every session in the
deployment); each revoking transaction takes a revocation sequence number
(:mod:`auth_server._revocationrows`), and mass revocations are written as one
"issued before T" watermark rather than one entry per session. The reading
side is what :class:`auth_server.revocations.RevocationPublisher` polls: the
whole list, or only what was revoked after a cursor.

Sessions ended in the course of their own life (logout, a reused refresh
token, the per-user limit) are revoked by :class:`auth_server.sessions.SessionStore`,
in the transaction that ends them, and stamped the same way.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable

import sqlalchemy as sa

from auth_server import _revocationrows as revocationrows
from auth_server import _sessionrows as sessionrows
from auth_server._revocationrows import RevocationRead
from auth_server.audit import audit_event
from auth_server.errors import InvalidRequest
from auth_server.session_policy import MAX_ACCESS_TOKEN_TTL
from auth_server.storage import Database, sessions

_LOGGER = logging.getLogger(__name__)

#: How long past its last access token's ``exp`` a revoked session stays on the
#: revocation list: covers a verifier's clock leeway (30 s) and some clock skew.
REVOCATION_RETENTION = 120.0

__all__ = ["REVOCATION_RETENTION", "RevocationStore", "audit_revoked"]


class RevocationStore:
    """Revokes sessions (by id, by user, all at once) and reads the revocation list; thread-safe."""

    def __init__(self, db: Database, *, now: Callable[[], float] = time.time) -> None:
        """Create the store.

        Args:
            db: The database (schema already created).
            now: Clock, epoch seconds.
        """
        self._db = db
        self._now = now

    # -- revoking -------------------------------------------------------------------

    def revoke(self, session_id: str, *, reason: str = "admin") -> bool:
        """Revoke one session by id; False if there is no such live-or-expired session to end.

        Raises:
            StorageError: The database is unavailable.
        """
        with self._db.transaction(write=True) as conn:
            result = conn.execute(
                sessions.update()
                .where(sessions.c.id == session_id, sessions.c.revoked_at.is_(None))
                .values(revoked_at=self._now(), revoke_reason=reason)
            )
            if result.rowcount:
                revocationrows.stamp_sessions(conn, [session_id])
        if result.rowcount:
            audit_event("session.revoked", sid=session_id, reason=reason)
        return bool(result.rowcount)

    def revoke_user(self, user_id: str, *, reason: str = "admin") -> list[str]:
        """Revoke every session of a user; return their ids.

        Verifiers hear of it as one entry: every token of the user issued before now.

        Raises:
            StorageError: The database is unavailable.
        """
        with self._db.transaction(write=True) as conn:
            ids = sessionrows.revoke_user_sessions(conn, user_id, now=self._now(), reason=reason)
        audit_revoked(ids, user_id=user_id, reason=reason)
        return ids

    def revoke_all(
        self, *, before: float | None = None, reason: str = "revoke_all"
    ) -> tuple[int, float]:
        """End every session started before ``before`` and refuse every token issued before it.

        Incident response: one entry on the revocation list, whatever the number
        of sessions.

        Args:
            before: Epoch seconds; now if not given. Must not be in the future.
            reason: Recorded as each session's revoke reason.

        Returns:
            How many sessions ended, and the time used as ``before``.

        Raises:
            InvalidRequest: ``before`` is in the future.
            StorageError: The database is unavailable.
        """
        with self._db.transaction(write=True) as conn:
            now = self._now()
            cutoff = now if before is None else before
            if cutoff > now + 1:
                raise InvalidRequest("--before must not be in the future")
            count = sessionrows.revoke_all_sessions(
                conn,
                before=cutoff,
                now=now,
                reason=reason,
                token_lifetime=MAX_ACCESS_TOKEN_TTL,
            )
        audit_event("session.revoked_all", reason=reason, count=count, before=cutoff)
        _LOGGER.warning("ended %d sessions; refusing every token issued before %s", count, cutoff)
        return count, cutoff

    # -- reading the list -----------------------------------------------------------

    def revoked_sessions(self) -> dict[str, float]:
        """Revoked sessions whose access tokens may still be live: ``{sid: last exp}``.

        A session leaves this list :data:`REVOCATION_RETENTION` seconds after its
        last access token expired. Watermarks are not included: see :meth:`read`.
        """
        return dict(self.read().sessions)

    def read(self, cursor: int | None = None) -> RevocationRead:
        """The revocation list (``cursor`` None) or what was revoked after ``cursor``.

        This is what is pushed to verifiers. Entries whose tokens all expired
        :data:`REVOCATION_RETENTION` seconds ago are left out. Revoked rows
        nobody stamped yet (an older replica's) are stamped first, so the cursor
        finds them.

        Raises:
            StorageError: The database is unavailable.
        """
        # One transaction in the common case (nothing unstamped): a poll then
        # holds one connection, once, as it did before the cursor.
        with self._db.transaction() as conn:
            if not revocationrows.has_unstamped(conn):
                return self._read(conn, cursor)
        with self._db.transaction(write=True) as conn:
            adopted = revocationrows.stamp_unstamped(conn)
        _LOGGER.info("stamped %d revoked sessions for the revocation cursor", adopted)
        with self._db.transaction() as conn:
            return self._read(conn, cursor)

    def _read(self, conn: sa.Connection, cursor: int | None) -> RevocationRead:
        since = self._now() - REVOCATION_RETENTION
        if cursor is None:
            return revocationrows.read_all(conn, since=since)
        return revocationrows.read_since(conn, cursor, since=since)


def audit_revoked(session_ids: Iterable[str], *, user_id: str | None, reason: str) -> None:
    """Record ``session.revoked`` for each id (call after the revoking transaction committed)."""
    for sid in session_ids:
        audit_event("session.revoked", sid=sid, user_id=user_id, reason=reason)
