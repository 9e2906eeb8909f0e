"""The revocation list on the server: the cursor over storage, watermarks, chunked full lists.

Storage tests run on SQLite, and on PostgreSQL too when SSOT_TEST_DATABASE_URL is set.
"""

from __future__ import annotations

import asyncio
import threading
import time
import uuid

import pytest
import sqlalchemy as sa

from auth_server import _revocationrows as revocationrows
from auth_server._revocation_state import RevocationState
from auth_server.errors import InvalidRequest
from auth_server.passwords import Argon2Parameters, PasswordHasher
from auth_server.revocations import RevocationBatch, RevocationPublisher, RevocationRead, Watermark
from auth_server.sessions import REVOCATION_RETENTION, SessionStore
from auth_server.storage import Database, sessions
from auth_server.users import User, UserStore

T0 = 1_700_000_000.0
CHEAP = Argon2Parameters(time_cost=1, memory_cost=1024, parallelism=1)


class Clock:
    def __init__(self, t: float = T0) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def users(database: Database, clock: Clock) -> UserStore:
    return UserStore(database, PasswordHasher(CHEAP), now=clock)


@pytest.fixture
def store(database: Database, clock: Clock) -> SessionStore:
    return SessionStore(database, now=clock)


@pytest.fixture
def alice(users: UserStore) -> User:
    return users.add("alice", "correct horse battery", ["read"])


@pytest.fixture
def bob(users: UserStore) -> User:
    return users.add("bob", "correct horse battery", ["read"])


# -- storage: the cursor -----------------------------------------------------------


def test_an_idle_cursor_reads_nothing_and_each_revocation_is_read_once(
    store: SessionStore, alice: User, clock: Clock
) -> None:
    one = store.create(alice.id, access_ttl=900)
    two = store.create(alice.id, access_ttl=900)
    start = store.revocations.read()
    assert start.sessions == {} and start.watermarks == {}
    assert store.revocations.read(start.cursor) == RevocationRead(
        cursor=start.cursor, sessions={}, watermarks={}
    )

    store.logout(one.refresh_token)
    first = store.revocations.read(start.cursor)
    assert first.sessions == {one.session_id: T0 + 900}
    assert store.revocations.read(first.cursor).sessions == {}

    clock.t += 10
    assert store.revoke(two.session_id)
    second = store.revocations.read(first.cursor)
    assert second.sessions == {two.session_id: T0 + 900}
    assert store.revocations.read().sessions.keys() == {one.session_id, two.session_id}


def test_revoking_a_user_is_one_watermark_not_one_entry_per_session(
    store: SessionStore, alice: User, bob: User, clock: Clock
) -> None:
    for _ in range(5):
        store.create(alice.id, access_ttl=900)
    kept = store.create(bob.id, access_ttl=900)
    cursor = store.revocations.read().cursor
    clock.t += 0.5

    ended = store.revoke_user(alice.id)

    assert len(ended) == 5
    read = store.revocations.read(cursor)
    assert read.sessions == {}
    # iat is whole seconds: T is past the second of the last issue and past now.
    assert read.watermarks == {alice.id: Watermark(issued_before=int(T0) + 1, expires_at=T0 + 900)}
    assert store.revocations.read().watermarks.keys() == {alice.id}
    assert kept.session_id not in store.revocations.read().sessions
    assert {info.state for info in store.list_for_user(alice.id, include_ended=True)} == {"revoked"}


def test_disabling_a_user_or_a_new_password_is_a_watermark_too(
    store: SessionStore, users: UserStore, alice: User, clock: Clock
) -> None:
    store.create(alice.id, access_ttl=900)
    cursor = store.revocations.read().cursor
    clock.t += 100
    users.set_password("alice", "a brand new password")
    read = store.revocations.read(cursor)
    assert read.sessions == {}
    assert read.watermarks[alice.id].issued_before == int(T0) + 100
    clock.t += 100
    users.disable("alice")  # no live session left: nothing new to refuse
    assert store.revocations.read(read.cursor).watermarks == {}


def test_revoke_all_ends_every_session_as_one_entry_for_everyone(
    store: SessionStore, alice: User, bob: User, clock: Clock
) -> None:
    for user in (alice, bob, alice):
        store.create(user.id, access_ttl=900)
    cursor = store.revocations.read().cursor
    clock.t += 30

    count, before = store.revocations.revoke_all()

    assert (count, before) == (3, T0 + 30)
    read = store.revocations.read(cursor)
    assert read.sessions == {}
    assert read.watermarks == {
        "": Watermark(issued_before=int(T0) + 30, expires_at=T0 + 30 + 86400)
    }
    assert store.list_for_user(alice.id) == []
    with pytest.raises(InvalidRequest):
        store.revocations.revoke_all(before=clock.t + 60)


def test_revoke_all_before_a_time_keeps_later_sessions(
    store: SessionStore, alice: User, clock: Clock
) -> None:
    early = store.create(alice.id, access_ttl=900)
    clock.t += 60
    late = store.create(alice.id, access_ttl=900)
    count, _ = store.revocations.revoke_all(before=T0 + 30)
    assert count == 1
    assert [s.session_id for s in store.list_for_user(alice.id)] == [late.session_id]
    assert early.session_id not in {s.session_id for s in store.list_for_user(alice.id)}


def test_rows_revoked_without_a_stamp_are_adopted_by_the_cursor(
    database: Database, store: SessionStore, alice: User
) -> None:
    # An older replica (or a hand-made row) revokes without a sequence number.
    cursor = store.revocations.read().cursor
    with database.transaction(write=True) as conn:
        conn.execute(
            sessions.insert().values(
                id="legacy",
                user_id=alice.id,
                created_at=T0,
                expires_at=T0 + 1000,
                revoked_at=T0,
                access_expires_at=T0 + 900,
            )
        )
    read = store.revocations.read(cursor)
    assert read.sessions == {"legacy": T0 + 900}
    assert store.revocations.read(read.cursor).sessions == {}


def test_a_revocation_that_commits_late_is_not_skipped(
    database: Database, store: SessionStore, alice: User
) -> None:
    slow = store.create(alice.id, access_ttl=900)
    fast = store.create(alice.id, access_ttl=900)
    cursor = store.revocations.read().cursor
    holding = threading.Event()
    release = threading.Event()

    def slow_revocation() -> None:
        with database.transaction(write=True) as conn:
            conn.execute(
                sessions.update().where(sessions.c.id == slow.session_id).values(revoked_at=T0)
            )
            revocationrows.stamp_sessions(conn, [slow.session_id])
            holding.set()
            release.wait(10)

    first = threading.Thread(target=slow_revocation)
    first.start()
    assert holding.wait(10)
    # Started after the slow one took its number: it waits for it to commit.
    second = threading.Thread(target=store.revoke, args=(fast.session_id,))
    second.start()
    time.sleep(0.3)
    if database.dialect_name != "sqlite":  # SQLite's single writer also blocks readers here
        read = store.revocations.read(cursor)
        assert read.sessions == {} and read.cursor == cursor
    release.set()
    first.join(10)
    second.join(10)
    read = store.revocations.read(cursor)
    assert read.sessions.keys() == {slow.session_id, fast.session_id}


# -- the publisher's list ------------------------------------------------------------


def _read(cursor: int, sessions: dict[str, float], **marks: Watermark) -> RevocationRead:
    return RevocationRead(cursor=cursor, sessions=sessions, watermarks=dict(marks))


def test_a_full_list_comes_in_parts_that_each_fit_and_add_up_to_the_list() -> None:
    clock = Clock()
    state = RevocationState(retention=120, now=clock, chunk_bytes=4096)
    entries = {str(uuid.uuid4()): T0 + 900 for _ in range(1000)}
    mark = Watermark(issued_before=int(T0), expires_at=T0 + 900)
    state.merge(_read(1, entries, alice=mark), full=True)

    full = state.build_full_list()

    parts = full.batches
    assert len(parts) > 10
    assert [p.full for p in parts] == [True] + [False] * (len(parts) - 1)
    assert [p.continues for p in parts] == [True] * (len(parts) - 1) + [False]
    assert all(sum(len(s) + 16 for s in p.sessions) <= 4096 + 64 for p in parts)
    merged: dict[str, float] = {}
    for part in parts:
        merged.update(part.sessions)
    assert merged == entries
    assert {s for p in parts for s in p.watermarks} == {"alice"}
    # Shared while little changes; an empty list is one message.
    assert state.current_full_list() is full
    empty = RevocationState(retention=120, now=clock)
    assert empty.build_full_list().batches == (RevocationBatch(full=True, sessions={}),)


def test_entries_leave_when_their_tokens_expire_without_a_new_read() -> None:
    clock = Clock()
    state = RevocationState(retention=120, now=clock)
    state.merge(_read(1, {"old": T0 + 10, "new": T0 + 900}), full=True)
    state.merge(_read(2, {}, bob=Watermark(issued_before=int(T0), expires_at=T0 + 10)), full=False)
    clock.t = T0 + 10 + 120 + 20
    state.merge(_read(2, {}), full=False)
    assert dict(state.sessions) == {"new": T0 + 900}
    assert dict(state.watermarks) == {}


def test_a_watcher_too_far_behind_gets_a_full_list_again() -> None:
    state = RevocationState(retention=120, now=Clock(), log_entries=2)
    v1 = state.merge(_read(1, {"a": T0 + 900}), full=True)
    v2 = state.merge(_read(2, {"b": T0 + 900}), full=False)
    assert state.changes(v1, v2) == [RevocationBatch(full=False, sessions={"b": T0 + 900})]
    v3 = state.merge(_read(3, {"c": T0 + 900, "d": T0 + 900}), full=False)
    assert state.changes(v1, v3) is None
    assert state.changes(v2, v3) == [
        RevocationBatch(full=False, sessions={"c": T0 + 900, "d": T0 + 900})
    ]


def test_watchers_joining_together_share_one_full_list_then_hear_each_change() -> None:
    async def test() -> None:
        reads = [_read(1, {f"s{i}": T0 + 900 for i in range(500)})]
        publisher = RevocationPublisher(
            lambda cursor: reads[-1], retention=120, chunk_bytes=2048, now=Clock(), poll_interval=60
        )
        await publisher.start()
        streams = [publisher.watch() for _ in range(3)]
        received: list[list[RevocationBatch]] = [[] for _ in streams]
        for stream, got in zip(streams, received, strict=True):
            while not got or got[-1].continues:
                got.append(await asyncio.wait_for(anext(stream), 2))
        assert all(
            a is b for a, b in zip(received[0], received[1], strict=True)
        )  # one shared build
        reads.append(_read(2, {"late": T0 + 900}, carol=Watermark(int(T0), T0 + 900)))
        await publisher.refresh()
        for stream in streams:
            assert await asyncio.wait_for(anext(stream), 2) == RevocationBatch(
                full=False,
                sessions={"late": T0 + 900},
                watermarks={"carol": Watermark(int(T0), T0 + 900)},
            )
        await publisher.stop()

    asyncio.run(asyncio.wait_for(test(), 10))


def test_the_list_keeps_entries_for_the_retention_after_expiry(
    store: SessionStore, alice: User, clock: Clock
) -> None:
    ended = store.create(alice.id, access_ttl=900)
    store.logout(ended.refresh_token)
    clock.t = T0 + 900 + REVOCATION_RETENTION - 1
    assert ended.session_id in store.revocations.read().sessions
    clock.t = T0 + 900 + REVOCATION_RETENTION + 1
    assert store.revocations.read().sessions == {}


def test_purge_deletes_expired_watermarks(
    database: Database, store: SessionStore, alice: User, clock: Clock
) -> None:
    store.create(alice.id, access_ttl=900)
    store.revoke_user(alice.id)
    clock.t = T0 + 900 + REVOCATION_RETENTION + 1
    store.purge_expired()
    with database.transaction() as conn:
        assert conn.execute(sa.text("SELECT count(*) FROM revocation_watermarks")).scalar() == 0
