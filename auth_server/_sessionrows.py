"""Rows of the sessions table: the reads a session change starts with, and shared updates.

Private to :mod:`auth_server.sessions` (and :mod:`auth_server.users`, through
:func:`revoke_user_sessions`); nothing here decides what a refresh means (that
is :func:`auth_server.session_policy.classify_refresh`).
"""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa

from auth_server._revocationrows import put_watermark
from auth_server._session_types import SessionInfo
from auth_server.storage import sessions, spent_refresh_tokens, users


def live(now: float, idle_timeout: float) -> sa.ColumnElement[bool]:
    """SQL for a session that is neither revoked, expired nor idle at ``now``."""
    return sa.and_(
        sessions.c.revoked_at.is_(None),
        sessions.c.expires_at > now,
        sa.func.coalesce(sessions.c.last_used_at, sessions.c.created_at) > now - idle_timeout,
    )


def end_reason(row: Any, now: float, idle_timeout: float) -> str | None:
    """Why the session ``row`` has ended (``"revoked"``, ``"expired"``, ``"idle"``), or None."""
    if row.revoked_at is not None:
        return "revoked"
    if now >= row.expires_at:
        return "expired"
    if now >= (row.last_used_at or row.created_at) + idle_timeout:
        return "idle"
    return None


def session_info(row: Any, now: float, idle_timeout: float) -> SessionInfo:
    last_used = float(row.last_used_at or row.created_at)
    reason = end_reason(row, now, idle_timeout)
    return SessionInfo(
        session_id=row.id,
        user_id=row.user_id,
        state="active" if reason is None else "revoked" if reason == "revoked" else "expired",
        created_at=float(row.created_at),
        last_used_at=last_used,
        ends_at=min(float(row.expires_at), last_used + idle_timeout),
        revoked_at=row.revoked_at,
        revoke_reason=row.revoke_reason,
    )


# The statements of every refresh, built once: SQLAlchemy then finds their compiled
# form by identity instead of building and hashing a new statement per call.
_SPENT_AT = sa.select(spent_refresh_tokens.c.spent_at).where(
    spent_refresh_tokens.c.token_hash == sa.bindparam("token_hash")
)
_SPENT_SESSION = sa.select(spent_refresh_tokens.c.session_id).where(
    spent_refresh_tokens.c.token_hash == sa.bindparam("token_hash")
)
# The user's columns a token needs, read in the statement that locks the session
# (one round trip fewer on PostgreSQL); labelled apart from the session's own
# columns (both tables have ``id`` and ``created_at``). Not the password hash.
_USER_COLUMNS = ("id", "username", "scopes", "disabled", "created_at")
_USER_LABELS = tuple(f"user__{name}" for name in _USER_COLUMNS)  # not user_id: a sessions column
# An outer join: a session whose user is gone is still found (and refused by the
# caller). ``FOR UPDATE OF sessions`` locks the session row only, as before; the
# user row is a plain read. On PostgreSQL it is the version the statement's
# snapshot saw before any wait for the session's lock (only the locked row is
# read again after the wait): a user disabled meanwhile ended its sessions in
# the same transaction, and the session row read after the wait shows that.
_WITH_USER = sa.select(
    sessions,
    *(users.c[name].label(label) for name, label in zip(_USER_COLUMNS, _USER_LABELS, strict=True)),
).select_from(sessions.outerjoin(users, users.c.id == sessions.c.user_id))
_BY_CURRENT_TOKEN = _WITH_USER.where(
    sessions.c.refresh_token_hash == sa.bindparam("token_hash")
).with_for_update(of=sessions)
_BY_ID = _WITH_USER.where(sessions.c.id == sa.bindparam("session_id")).with_for_update(of=sessions)
_SPEND = spent_refresh_tokens.insert()
_TOUCH = sessions.update().where(sessions.c.id == sa.bindparam("touched_id"))
# PostgreSQL: the spent token's INSERT and the session's UPDATE in one statement
# (a data-modifying CTE), one round trip instead of two. Both see the same
# snapshot and fail or commit together, as the two statements of one transaction
# did. SQLite has no INSERT inside WITH, and no round trips to save.
_SPEND_AND_TOUCH = _TOUCH.add_cte(
    spent_refresh_tokens.insert()
    .values(
        token_hash=sa.bindparam("spent_hash"),
        session_id=sa.bindparam("touched_id"),
        spent_at=sa.bindparam("spent_time"),
    )
    .cte("spent")
)


def spent_at(conn: sa.Connection, token_hash: str) -> float | None:
    """When the refresh token ``token_hash`` was spent, or None if it never was."""
    found: float | None = conn.execute(_SPENT_AT, {"token_hash": token_hash}).scalar()
    return found


def locked_session(conn: sa.Connection, token_hash: str) -> Any:
    """The session that issued ``token_hash`` (current or spent), its row locked; or None.

    The row also carries its user's columns (see :func:`session_user`).
    """
    # The common case, a current token, in one statement. On PostgreSQL a
    # concurrent refresh that rotated the row while we waited for its lock
    # makes this find nothing (the WHERE is re-checked on the new version):
    # the token is then among the spent ones, committed by that refresh.
    row = conn.execute(_BY_CURRENT_TOKEN, {"token_hash": token_hash}).first()
    if row is not None:
        return row
    session_id = conn.execute(_SPENT_SESSION, {"token_hash": token_hash}).scalar()
    if session_id is None:
        return None
    return conn.execute(_BY_ID, {"session_id": session_id}).one()


def session_user(row: Any) -> dict[str, Any] | None:
    """The user columns of a :func:`locked_session` row, as the users table names them.

    ``None`` if the user no longer exists.
    """
    mapping = row._mapping
    if mapping[_USER_LABELS[0]] is None:
        return None
    return {name: mapping[label] for name, label in zip(_USER_COLUMNS, _USER_LABELS, strict=True)}


def spend(
    conn: sa.Connection, token_hash: str, session_id: str, now: float, **values: object
) -> None:
    """Record that ``token_hash`` was spent at ``now`` and set ``values`` on its session.

    A repeat of the spent token finds its session by it.
    """
    if conn.dialect.name == "postgresql":
        conn.execute(
            _SPEND_AND_TOUCH,
            {"spent_hash": token_hash, "spent_time": now, "touched_id": session_id, **values},
        )
        return
    conn.execute(_SPEND, {"token_hash": token_hash, "session_id": session_id, "spent_at": now})
    touch(conn, session_id, **values)


def touch(conn: sa.Connection, session_id: str, **values: object) -> None:
    """Set ``values`` (column: value) on the session ``session_id``."""
    conn.execute(_TOUCH, {"touched_id": session_id, **values})


def revoke_user_sessions(
    conn: sa.Connection, user_id: str, *, now: float, reason: str
) -> list[str]:
    """Revoke every unrevoked session of ``user_id`` inside the caller's transaction.

    The sessions end in the database as one at a time would, but verifiers hear
    of them as one watermark entry, "every token of this subject issued before
    T" (:func:`auth_server._revocationrows.put_watermark`), not one entry each.

    Used where ending the sessions must commit together with another change
    (disabling a user, setting a new password). The caller audits the ids
    (:func:`auth_server.sessions.audit_revoked`) once the transaction has committed.
    """
    # Locks the rows first: the revocation counter is always the last lock taken.
    rows = conn.execute(
        sa.select(
            sessions.c.id,
            sa.func.coalesce(sessions.c.last_used_at, sessions.c.created_at).label("issued"),
            sessions.c.access_expires_at,
        )
        .where(sessions.c.user_id == user_id, sessions.c.revoked_at.is_(None))
        .with_for_update()
    ).all()
    ids = [row.id for row in rows]
    if not ids:
        return []
    conn.execute(
        sessions.update()
        .where(sessions.c.user_id == user_id, sessions.c.revoked_at.is_(None))
        .values(revoked_at=now, revoke_reason=reason, watermarked=True)
    )
    # T covers every token these sessions issued: ``iat`` is the whole second of
    # the session's last issue (on the issuing replica's clock, which may run
    # ahead of ours), so T is past it as well as past now.
    last_issue = max(float(row.issued) for row in rows)
    put_watermark(
        conn,
        user_id,
        issued_before=max(now, int(last_issue) + 1),
        expires_at=max([now, *(float(row.access_expires_at or 0.0) for row in rows)]),
        now=now,
    )
    return ids


def revoke_all_sessions(
    conn: sa.Connection, *, before: float, now: float, reason: str, token_lifetime: float
) -> int:
    """End every session started before ``before``; refuse every token issued before it.

    One watermark entry for the whole deployment (the empty subject); it is kept
    until ``token_lifetime`` past ``before``, so it outlives every token it refuses,
    sessionless ones included. Returns how many sessions ended.
    """
    result = conn.execute(
        sessions.update()
        .where(sessions.c.revoked_at.is_(None), sessions.c.created_at < before)
        .values(revoked_at=now, revoke_reason=reason, watermarked=True)
    )
    latest_exp = conn.execute(sa.select(sa.func.max(sessions.c.access_expires_at))).scalar()
    put_watermark(
        conn,
        "",
        issued_before=before,
        expires_at=max(before + token_lifetime, float(latest_exp or 0.0)),
        now=now,
    )
    return int(result.rowcount or 0)
