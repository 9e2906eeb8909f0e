"""Login sessions and their refresh tokens (stored only as SHA-256 hashes).

A session starts at login with a random refresh token. ``Refresh`` spends it
and hands out its derived successor (:mod:`auth_server.refresh_tokens`), so a
repeat of the same spent token within the grace window gets the same successor
back (racing clients are not logged out: Zitadel#9631, hydra#1831). Outside the
window, or once the successor is spent too, a spent token revokes the whole
session (RFC 9700 §4.14).

Every change to a session runs in one transaction that locks its row
(``SELECT ... FOR UPDATE`` on PostgreSQL; SQLite write transactions are
exclusive), so concurrent refreshes cannot fork a session, and a crash leaves
either the old token or its successor spendable, never neither.

Revoking sessions by decision (an operator, an incident) and reading the
revocation list that verifiers follow are :mod:`auth_server.revocation_store`'s
job (:attr:`SessionStore.revocations`).
"""

from __future__ import annotations

import logging
import secrets
import time
import uuid
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any, TypeVar, cast

import sqlalchemy as sa
from sqlalchemy import exc

from auth_server import _revocationrows as revocationrows
from auth_server import _sessionrows as sessionrows
from auth_server._session_types import (
    EndedSession,
    NewSession,
    Rotation,
    SessionInfo,
    SessionTerms,
)
from auth_server._sessionrows import revoke_user_sessions
from auth_server.audit import audit_event
from auth_server.errors import InvalidRefreshToken, RefreshTokenReused, UserNotFound
from auth_server.refresh_tokens import (
    checked_hash,
    hash_refresh_token,
    new_refresh_token,
    successor_token,
)
from auth_server.revocation_store import REVOCATION_RETENTION, RevocationStore, audit_revoked
from auth_server.session_policy import SessionPolicy, classify_refresh
from auth_server.storage import Database, sessions, spent_refresh_tokens, users

_LOGGER = logging.getLogger(__name__)

_PURGE_BATCH = 1000
T = TypeVar("T")

__all__ = [
    "REVOCATION_RETENTION",
    "EndedSession",
    "NewSession",
    "RevocationStore",
    "Rotation",
    "SessionInfo",
    "SessionPolicy",
    "SessionStore",
    "SessionTerms",
    "audit_revoked",
    "revoke_user_sessions",
]


class SessionStore:
    """Creates, refreshes and ends sessions in the database; thread-safe.

    Attributes:
        revocations: Revocation by decision (one session, a user, everyone) and
            the list verifiers read (:class:`RevocationStore`).
    """

    def __init__(
        self,
        db: Database,
        *,
        policy: SessionPolicy | None = None,
        secret: bytes | None = None,
        previous_secrets: Sequence[bytes] = (),
        now: Callable[[], float] = time.time,
    ) -> None:
        """Create the store.

        Args:
            db: The database (schema already created).
            policy: Lifetimes, refresh grace and the per-user limit; the
                defaults of :class:`SessionPolicy` if not given.
            secret: Derives successor refresh tokens; every replica must use the
                same one (:mod:`auth_server.deployment_secrets`). Without it a
                random one is made, which is fine for a process that never
                refreshes (the CLI) or runs alone.
            previous_secrets: Secrets replicas used before ``secret``: a spent
                token repeated within the grace window gets the successor one
                of them derived, so a change of secret (an upgrade) logs no
                racing client out. Never used to make a new successor.
            now: Clock, epoch seconds.
        """
        self.policy = policy if policy is not None else SessionPolicy()
        self._db = db
        self._secret = secret if secret is not None else secrets.token_bytes(32)
        self._previous_secrets = tuple(previous_secrets)
        self._now = now
        self.revocations = RevocationStore(db, now=now)

    # -- login, refresh, logout ----------------------------------------------------

    def create(
        self,
        user_id: str,
        *,
        scope: Iterable[str] = (),
        access_ttl: int = 0,
        cert_thumbprint: str | None = None,
        audience: str | None = None,
        idp: str | None = None,
    ) -> NewSession:
        """Start a session for a user, with a new random refresh token.

        When the user already holds ``max_per_user`` live sessions, the oldest
        are ended (revoked) in the same transaction.

        Args:
            user_id: The user's id (``User.id``).
            scope: The scopes granted; later refreshes grant no more than these.
            access_ttl: Lifetime of the access token about to be issued, so the
                session knows until when a revocation must be remembered.
            cert_thumbprint: The client certificate of a login over mutual TLS;
                the session's refreshes then need that certificate (RFC 8705 §4).
            audience: The ``aud`` asked for at login (RFC 8707), which its refreshes
                keep; ``None`` for the server's default.

        Returns:
            The session id, its refresh token and its end.

        Raises:
            UserNotFound: No user has that id.
            StorageError: The database is unavailable.
        """
        session_id = str(uuid.uuid4())
        refresh_token = new_refresh_token()
        policy = self.policy
        try:
            with self._db.transaction(write=True) as conn:
                now = self._now()
                # Locks the user's row: concurrent logins of one user count one at a time.
                found = conn.execute(
                    sa.select(users.c.id).where(users.c.id == user_id).with_for_update()
                ).first()
                if found is None:
                    raise UserNotFound()
                live = conn.execute(
                    sa.select(sessions.c.id)
                    .where(
                        sessions.c.user_id == user_id,
                        self._live(now),
                    )
                    .order_by(sessions.c.created_at, sessions.c.id)
                    .with_for_update()
                ).all()
                ended = [row.id for row in live[: max(len(live) - policy.max_per_user + 1, 0)]]
                if ended:
                    conn.execute(
                        sessions.update()
                        .where(sessions.c.id.in_(ended))
                        .values(revoked_at=now, revoke_reason="session_limit")
                    )
                    revocationrows.stamp_sessions(conn, ended)
                conn.execute(
                    sessions.insert().values(
                        id=session_id,
                        user_id=user_id,
                        created_at=now,
                        expires_at=now + policy.max_lifetime,
                        revoked_at=None,
                        refresh_token_hash=hash_refresh_token(refresh_token),
                        last_used_at=now,
                        access_expires_at=int(now) + access_ttl,
                        scope=" ".join(scope),
                        cert_thumbprint=cert_thumbprint,
                        audience=audience,
                        idp=idp,
                    )
                )
        except exc.IntegrityError as err:
            raise UserNotFound() from err
        audit_revoked(ended, user_id=user_id, reason="session_limit")
        _LOGGER.info("session %s started for user id %s", session_id, user_id)
        return NewSession(
            session_id=session_id,
            refresh_token=refresh_token,
            expires_at=now + policy.max_lifetime,
            issued_at=now,
            ended=tuple(ended),
        )

    def refresh(
        self,
        refresh_token: str,
        *,
        access_ttl: int = 0,
        cert_thumbprint: str | None = None,
        check: Callable[[SessionTerms], None] | None = None,
    ) -> Rotation:
        """Spend a refresh token and return its successor.

        Args:
            refresh_token: The token the client presents.
            access_ttl: Lifetime of the access token about to be issued.
            cert_thumbprint: The certificate the client presents now, if any; a
                session bound at login refreshes only with the same one.
            check: Called with the session's terms once the token is known to be
                its current one (or a repeat within grace), before anything is
                written: whatever it raises refuses the refresh and spends nothing.
                A spent token outside the grace window revokes the session first.

        Raises:
            RefreshTokenReused: A spent token outside the grace window; the
                session is revoked (committed) before this is raised.
            InvalidRefreshToken: Malformed, unknown, expired or revoked.
            StorageError: The database is unavailable.
        """
        rotation, _ = self._refresh(refresh_token, access_ttl, cert_thumbprint, check, None)
        return rotation

    def refresh_loading(
        self,
        refresh_token: str,
        load: Callable[[sa.Connection, Mapping[str, Any] | None], T],
        *,
        access_ttl: int = 0,
        cert_thumbprint: str | None = None,
        check: Callable[[SessionTerms], None] | None = None,
    ) -> tuple[Rotation, T]:
        """:meth:`refresh`, also reading what the new access token needs in its transaction.

        ``load(conn, user)`` runs inside the rotation's transaction, after
        ``check`` and before anything is written (so whatever it raises spends
        nothing), and its result is returned with the rotation. ``user`` is the
        session's user as a row of the users table (``id``, ``username``,
        ``scopes``, ``disabled``, ``created_at``), read in the statement that
        locks the session, or ``None`` if the user is gone. One transaction per
        refresh instead of one for the session and one per later read: on
        SQLite each costs a begin and a commit under the writer lock, on
        PostgreSQL a round trip or two.
        """
        rotation, loaded = self._refresh(refresh_token, access_ttl, cert_thumbprint, check, load)
        return rotation, cast(T, loaded)

    def _refresh(
        self,
        refresh_token: str,
        access_ttl: int,
        cert_thumbprint: str | None,
        check: Callable[[SessionTerms], None] | None,
        load: Callable[[sa.Connection, Mapping[str, Any] | None], T] | None,
    ) -> tuple[Rotation, T | None]:
        token_hash = checked_hash(refresh_token)
        successor = successor_token(self._secret, refresh_token)
        successor_hash = hash_refresh_token(successor)
        with self._db.transaction(write=True) as conn:
            now = self._now()
            row = sessionrows.locked_session(conn, token_hash)
            if row is None or self._end_reason(row, now) is not None:
                if row is not None:
                    _LOGGER.info(
                        "refresh refused: session %s is %s",
                        row.id,
                        self._end_reason(row, now),
                    )
                raise InvalidRefreshToken()
            if row.cert_thumbprint is not None and row.cert_thumbprint != cert_thumbprint:
                # Not proof of theft (the client may have a new certificate), so the
                # session lives on; but this token is no use without its certificate.
                _LOGGER.info("refresh refused: session %s needs its client certificate", row.id)
                raise InvalidRefreshToken()
            session_id = row.id
            # Only a token that is not the current one needs its spending time.
            current = row.refresh_token_hash
            spent_at = None if current == token_hash else sessionrows.spent_at(conn, token_hash)
            verdict = classify_refresh(
                current_hash=current,
                token_hash=token_hash,
                successor_hash=successor_hash,
                spent_at=spent_at,
                now=now,
                grace=self.policy.refresh_grace,
            )
            if verdict == "reuse":
                # Spent by a replica that held an earlier secret (just before an
                # upgrade)? Then this is a repeat of that spend, not a reuse.
                for earlier in self._previous_secrets:
                    candidate = successor_token(earlier, refresh_token)
                    if (
                        classify_refresh(
                            current_hash=current,
                            token_hash=token_hash,
                            successor_hash=hash_refresh_token(candidate),
                            spent_at=spent_at,
                            now=now,
                            grace=self.policy.refresh_grace,
                        )
                        == "repeat"
                    ):
                        verdict, successor = "repeat", candidate
                        break
            if check is not None and verdict != "reuse":
                # Inside the transaction: raising here rolls back, the token stays good.
                check(SessionTerms(scope=tuple((row.scope or "").split()), audience=row.audience))
            loaded = (
                None
                if load is None or verdict == "reuse"
                else load(conn, sessionrows.session_user(row))
            )
            touch = {
                "last_used_at": now,
                "access_expires_at": max(row.access_expires_at or 0.0, int(now) + access_ttl),
            }
            if verdict == "spend":
                sessionrows.spend(
                    conn, token_hash, session_id, now, refresh_token_hash=successor_hash, **touch
                )
            elif verdict == "repeat":
                sessionrows.touch(conn, session_id, **touch)
            else:
                sessionrows.touch(conn, session_id, revoked_at=now, revoke_reason="reuse")
                revocationrows.stamp_sessions(conn, [session_id])
        if verdict == "reuse":
            _LOGGER.warning("spent refresh token presented again: session %s revoked", session_id)
            audit_event("refresh.reuse_detected", sid=session_id, user_id=row.user_id)
            audit_event("session.revoked", sid=session_id, user_id=row.user_id, reason="reuse")
            raise RefreshTokenReused(session_id)
        rotation = Rotation(
            session_id=session_id,
            user_id=row.user_id,
            scope=tuple((row.scope or "").split()),
            refresh_token=successor,
            issued_at=now,
            repeated=verdict == "repeat",
            cert_thumbprint=row.cert_thumbprint,
            audience=row.audience,
        )
        return rotation, loaded

    def logout(self, refresh_token: str) -> EndedSession:
        """End the session that issued ``refresh_token`` (spent or not). Idempotent.

        Raises:
            InvalidRefreshToken: Malformed or unknown token.
            StorageError: The database is unavailable.
        """
        token_hash = checked_hash(refresh_token)
        with self._db.transaction(write=True) as conn:
            now = self._now()
            row = sessionrows.locked_session(conn, token_hash)
            if row is None:
                raise InvalidRefreshToken()
            already = row.revoked_at is not None
            if not already:
                conn.execute(
                    sessions.update()
                    .where(sessions.c.id == row.id)
                    .values(revoked_at=now, revoke_reason="logout")
                )
                revocationrows.stamp_sessions(conn, [row.id])
        if not already:
            audit_event("session.logout", sid=row.id, user_id=row.user_id)
        return EndedSession(session_id=row.id, user_id=row.user_id, already_ended=already)

    # -- administration --------------------------------------------------------------

    def revoke(self, session_id: str, *, reason: str = "admin") -> bool:
        """Revoke one session by id: :meth:`RevocationStore.revoke`."""
        return self.revocations.revoke(session_id, reason=reason)

    def revoke_user(self, user_id: str, *, reason: str = "admin") -> list[str]:
        """Revoke every session of a user; return their ids: :meth:`RevocationStore.revoke_user`."""
        return self.revocations.revoke_user(user_id, reason=reason)

    def list_for_user(self, user_id: str, *, include_ended: bool = False) -> list[SessionInfo]:
        """The user's sessions, oldest first; only live ones unless ``include_ended``."""
        now = self._now()
        query = sa.select(sessions).where(sessions.c.user_id == user_id)
        if not include_ended:
            query = query.where(self._live(now))
        with self._db.transaction() as conn:
            rows = conn.execute(query.order_by(sessions.c.created_at, sessions.c.id)).all()
        return [sessionrows.session_info(row, now, self.policy.idle_timeout) for row in rows]

    def revoked_sessions(self) -> dict[str, float]:
        """``{sid: last exp}`` of revoked sessions: :meth:`RevocationStore.revoked_sessions`."""
        return self.revocations.revoked_sessions()

    def purge_expired(self, *, limit: int = _PURGE_BATCH) -> int:
        """Delete up to ``limit`` ended sessions no verifier needs to hear of any more.

        Returns:
            How many sessions were deleted (with their spent tokens).
        """
        now = self._now()
        ended = sa.or_(
            sessions.c.revoked_at.isnot(None),
            sessions.c.expires_at <= now,
            sa.func.coalesce(sessions.c.last_used_at, sessions.c.created_at)
            <= now - self.policy.idle_timeout,
        )
        forgotten = (
            sa.func.coalesce(sessions.c.access_expires_at, 0.0) <= now - REVOCATION_RETENTION
        )
        with self._db.transaction(write=True) as conn:
            ids = list(
                conn.execute(
                    sa.select(sessions.c.id).where(ended, forgotten).limit(limit)
                ).scalars()
            )
            if ids:
                conn.execute(
                    spent_refresh_tokens.delete().where(spent_refresh_tokens.c.session_id.in_(ids))
                )
                conn.execute(sessions.delete().where(sessions.c.id.in_(ids)))
            revocationrows.delete_expired_watermarks(conn, before=now - REVOCATION_RETENTION)
        if ids:
            _LOGGER.info("purged %d ended sessions", len(ids))
        return len(ids)

    # -- internals -----------------------------------------------------------------------

    def _live(self, now: float) -> sa.ColumnElement[bool]:
        return sessionrows.live(now, self.policy.idle_timeout)

    def _end_reason(self, row: Any, now: float) -> str | None:
        return sessionrows.end_reason(row, now, self.policy.idle_timeout)
