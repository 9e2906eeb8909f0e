"""Rows of the revocation list: sequence stamps, watermark entries, and the publisher's reads.

Every transaction that revokes something takes the next number of the one-row
``revocation_counter`` and stamps it on what it revoked (``sessions.revoked_seq``,
``revocation_watermarks.seq``). The publisher keeps the highest number it has
read (its cursor) and asks only for rows past it, so a poll costs what changed,
not the size of the list.

Why a counter row and not ``revoked_at`` or a database sequence: a reader must
never skip a row that commits late. A PostgreSQL sequence (or a timestamp)
hands out numbers when a transaction *runs*, not when it *commits*: T1 takes 7,
T2 takes 8 and commits first, the reader sees 8 and moves its cursor past 7
before T1 commits, and T1's revocation is never read. A timestamp cursor has
the same hole plus the replicas' clock differences, and an overlap window only
narrows it (a transaction stuck on a lock for longer than the window still
slips through). ``UPDATE revocation_counter SET seq = seq + 1`` instead holds the
row's lock until commit, so the next revoking transaction gets its number only
after the previous one committed (PostgreSQL makes a commit visible before it
releases the transaction's locks; SQLite runs one writer at a time anyway).
Numbers are therefore visible in order, and the reader reads the counter
*first*: every row stamped with a number up to the one it read has committed.
The price is that revoking transactions commit one at a time across the
deployment; each holds the counter only for its last statements (it is always
the last lock taken, which also rules out deadlocks with row locks).
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import sqlalchemy as sa

from auth_server import notifications
from auth_server.storage import revocation_counter, revocation_watermarks, sessions

#: Ids per ``IN (...)`` list: SQLite's bound-parameter limit is 999 on older builds.
_IN_BATCH = 500


@dataclass(frozen=True, slots=True)
class Watermark:
    """Every access token of a subject (or of everyone) issued before a time is refused.

    Attributes:
        issued_before: Epoch seconds; a token whose ``iat`` is earlier is refused.
        expires_at: No token this refuses lives past it (epoch seconds); then
            (plus clock leeway) the entry can be forgotten.
    """

    issued_before: int
    expires_at: float


@dataclass(frozen=True, slots=True, kw_only=True)
class RevocationRead:
    """What one read of the revocation list found.

    Attributes:
        cursor: Read from the counter before the rows: every revocation stamped
            with a number up to it is included.
        sessions: ``{session id: exp of its last access token}``.
        watermarks: ``{subject: watermark}``; the subject ``""`` is everyone.
    """

    cursor: int
    sessions: dict[str, float]
    watermarks: dict[str, Watermark]


def next_seq(conn: sa.Connection) -> int:
    """Take the next revocation number; its row stays locked until the transaction ends.

    Call it after every other row the transaction changes is locked (see the module doc).
    On PostgreSQL it also tells every auth server to read the list again once the
    transaction commits (:mod:`auth_server.notifications`).
    """
    notifications.notify_change(conn, notifications.REVOCATIONS)
    conn.execute(
        revocation_counter.update()
        .where(revocation_counter.c.id == 1)
        .values(seq=revocation_counter.c.seq + 1)
    )
    seq: int = conn.execute(
        sa.select(revocation_counter.c.seq).where(revocation_counter.c.id == 1)
    ).scalar_one()
    return seq


def stamp_sessions(conn: sa.Connection, session_ids: Sequence[str]) -> None:
    """Stamp sessions this transaction has just revoked (their rows are locked) for the cursor."""
    if not session_ids:
        return
    seq = next_seq(conn)
    for batch in _batches(session_ids):
        conn.execute(sessions.update().where(sessions.c.id.in_(batch)).values(revoked_seq=seq))


def put_watermark(
    conn: sa.Connection, subject: str, *, issued_before: float, expires_at: float, now: float
) -> Watermark:
    """Record "refuse ``subject``'s tokens issued before ``issued_before``" (keeps a later one).

    ``issued_before`` is rounded up to a whole second: ``iat`` is whole seconds,
    so a token issued in the same second as the revocation is refused too
    (a false refusal at worst, never a token that slips through).

    Returns:
        The entry as stored (merged with an earlier one for the same subject).
    """
    seq = next_seq(conn)  # also serialises writers of the same subject's row
    wanted = Watermark(issued_before=math.ceil(issued_before), expires_at=expires_at)
    row = conn.execute(
        sa.select(revocation_watermarks).where(revocation_watermarks.c.subject == subject)
    ).first()
    if row is None:
        conn.execute(
            revocation_watermarks.insert().values(
                subject=subject,
                issued_before=wanted.issued_before,
                expires_at=wanted.expires_at,
                seq=seq,
                created_at=now,
            )
        )
        return wanted
    merged = Watermark(
        issued_before=max(int(row.issued_before), wanted.issued_before),
        expires_at=max(float(row.expires_at), wanted.expires_at),
    )
    conn.execute(
        revocation_watermarks.update()
        .where(revocation_watermarks.c.subject == subject)
        .values(issued_before=merged.issued_before, expires_at=merged.expires_at, seq=seq)
    )
    return merged


def read_all(conn: sa.Connection, *, since: float) -> RevocationRead:
    """The whole list: entries whose tokens may be unexpired at ``since`` (now minus retention)."""
    cursor = _counter(conn)
    rows = conn.execute(
        sa.select(sessions.c.id, sessions.c.access_expires_at).where(
            sessions.c.revoked_at.isnot(None),
            sessions.c.access_expires_at > since,
            sessions.c.watermarked.is_(None),
        )
    ).all()
    marks = conn.execute(
        sa.select(revocation_watermarks).where(revocation_watermarks.c.expires_at > since)
    ).all()
    return RevocationRead(
        cursor=cursor,
        sessions={row.id: float(row.access_expires_at) for row in rows},
        watermarks={row.subject: _watermark(row) for row in marks},
    )


def read_since(conn: sa.Connection, cursor: int, *, since: float) -> RevocationRead:
    """Entries stamped after ``cursor`` (two index range scans; usually empty)."""
    # The counter first: rows with numbers up to it have all committed (module doc).
    # A row numbered past it may be read now and again next time: harmless.
    new_cursor = _counter(conn)
    if new_cursor == cursor:
        return RevocationRead(cursor=cursor, sessions={}, watermarks={})
    rows = conn.execute(
        sa.select(sessions.c.id, sessions.c.access_expires_at).where(
            sessions.c.revoked_seq > cursor,
            sessions.c.watermarked.is_(None),
            sessions.c.access_expires_at > since,
        )
    ).all()
    marks = conn.execute(
        sa.select(revocation_watermarks).where(
            revocation_watermarks.c.seq > cursor, revocation_watermarks.c.expires_at > since
        )
    ).all()
    return RevocationRead(
        cursor=new_cursor,
        sessions={row.id: float(row.access_expires_at) for row in rows},
        watermarks={row.subject: _watermark(row) for row in marks},
    )


def _unstamped() -> sa.ColumnElement[bool]:
    # The predicate of ix_sessions_unstamped, spelled the same so both planners use it.
    return sa.and_(
        sessions.c.revoked_at.isnot(None),
        sessions.c.revoked_seq.is_(None),
        sessions.c.watermarked.is_(None),
    )


def has_unstamped(conn: sa.Connection) -> bool:
    """Whether revoked rows lack a sequence number (an older replica's, or inserted by hand)."""
    return conn.execute(sa.select(sessions.c.id).where(_unstamped()).limit(1)).first() is not None


def stamp_unstamped(conn: sa.Connection) -> int:
    """Give unstamped revoked rows a number, so the cursor reads them; return how many.

    During a rolling upgrade a replica of the previous version revokes without
    stamping; this is how its revocations still reach this replica's verifiers.
    """
    query = sa.select(sessions.c.id).where(_unstamped()).with_for_update()
    ids = list(conn.execute(query).scalars())
    stamp_sessions(conn, ids)
    return len(ids)


def delete_expired_watermarks(conn: sa.Connection, *, before: float) -> int:
    """Delete watermark entries no unexpired token needs; return how many went."""
    result = conn.execute(
        revocation_watermarks.delete().where(revocation_watermarks.c.expires_at <= before)
    )
    return int(result.rowcount or 0)


def _counter(conn: sa.Connection) -> int:
    seq: int = conn.execute(
        sa.select(revocation_counter.c.seq).where(revocation_counter.c.id == 1)
    ).scalar_one()
    return seq


def _watermark(row: sa.Row[tuple[object, ...]]) -> Watermark:
    mapping = row._mapping
    return Watermark(
        issued_before=int(mapping["issued_before"]), expires_at=float(mapping["expires_at"])
    )


def _batches(items: Sequence[str]) -> Iterator[Sequence[str]]:
    for start in range(0, len(items), _IN_BATCH):
        yield items[start : start + _IN_BATCH]
