"""PolledBroadcaster and the two publishers on it, without a server: value first, then changes."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Generic, TypeVar

import pytest

from auth_server.authority import JwksSnapshot
from auth_server.broadcast import PolledBroadcaster
from auth_server.errors import StorageError
from auth_server.publisher import JwksPublisher
from auth_server.revocations import RevocationBatch, RevocationPublisher, RevocationRead

T = TypeVar("T")


class Source(Generic[T]):
    """What ``load`` returns next; ``fail`` makes it raise."""

    def __init__(self, value: T) -> None:
        self.value = value
        self.fail = False
        self.reads = 0

    def __call__(self) -> T:
        self.reads += 1
        if self.fail:
            raise StorageError()
        return self.value


def run(test: Callable[[], Awaitable[None]]) -> None:
    asyncio.run(asyncio.wait_for(test(), 10))


async def next_of(stream: AsyncIterator[T]) -> T:
    return await asyncio.wait_for(anext(stream), 2)


async def nothing_yet(stream: AsyncIterator[T]) -> asyncio.Future[T]:
    """The stream's next item, checked not to be there yet (await it later)."""
    pending = asyncio.ensure_future(anext(stream))
    await asyncio.sleep(0.1)
    assert not pending.done()
    return pending


def snapshot(etag: str, next_change_at: float | None = None) -> JwksSnapshot:
    return JwksSnapshot(keys=(), max_age=300, body=b"{}", etag=etag, next_change_at=next_change_at)


def test_a_watcher_gets_the_value_then_each_change_with_what_it_had() -> None:
    async def test() -> None:
        source = Source("a")
        feed: PolledBroadcaster[str] = PolledBroadcaster(source, poll_interval=60)
        await feed.start()
        updates = feed.updates()
        assert await next_of(updates) == (None, "a")
        source.value = "b"
        assert await feed.refresh() == "b"
        assert await next_of(updates) == ("a", "b")
        await feed.refresh()  # unchanged: no message
        pending = await nothing_yet(updates)
        await feed.stop()
        with pytest.raises(StopAsyncIteration):
            await pending

    run(test)


def test_the_poll_picks_up_a_change_and_request_refresh_wakes_it_early() -> None:
    async def test() -> None:
        source = Source("a")
        feed: PolledBroadcaster[str] = PolledBroadcaster(source, poll_interval=0.05)
        await feed.start()
        updates = feed.updates()
        await next_of(updates)
        source.value = "b"
        assert await next_of(updates) == ("a", "b")
        await feed.stop()

        slow: PolledBroadcaster[str] = PolledBroadcaster(source, poll_interval=60)
        await slow.start()
        updates = slow.updates()
        await next_of(updates)
        source.value = "c"
        slow.request_refresh()
        assert await next_of(updates) == ("b", "c")
        await slow.stop()
        slow.request_refresh()  # after stop: a no-op, not an error

    run(test)


def test_a_failing_read_keeps_the_last_value() -> None:
    async def test() -> None:
        source = Source("a")
        feed: PolledBroadcaster[str] = PolledBroadcaster(source, poll_interval=0.02)
        await feed.start()
        source.fail = True
        reads = source.reads
        while source.reads < reads + 3:
            await asyncio.sleep(0.02)
        assert feed.value == "a"
        with pytest.raises(StorageError):
            await feed.refresh()
        source.fail = False
        source.value = "b"
        while feed.value != "b":
            await asyncio.sleep(0.02)
        await feed.stop()

    run(test)


def test_stop_ends_every_watch_stream() -> None:
    async def test() -> None:
        feed: PolledBroadcaster[str] = PolledBroadcaster(Source("a"), poll_interval=60)
        await feed.start()
        updates = feed.updates()
        await next_of(updates)
        waiting = asyncio.ensure_future(anext(updates))
        await asyncio.sleep(0)
        await feed.stop()
        with pytest.raises(StopAsyncIteration):
            await asyncio.wait_for(waiting, 2)

    run(test)


def test_value_before_start_is_an_error_and_the_interval_must_be_positive() -> None:
    with pytest.raises(RuntimeError):
        _ = JwksPublisher(lambda: snapshot("a")).snapshot
    with pytest.raises(ValueError):
        RevocationPublisher(Reads({}), retention=120, poll_interval=0)


def test_a_new_schedule_with_the_same_keys_is_served_but_not_pushed() -> None:
    async def test() -> None:
        source = Source(snapshot("e1", next_change_at=100.0))
        publisher = JwksPublisher(source, poll_interval=60)
        await publisher.start()
        stream = publisher.watch()
        assert (await next_of(stream)).etag == "e1"
        source.value = snapshot("e1", next_change_at=200.0)
        await publisher.refresh()
        assert publisher.snapshot.next_change_at == 200.0
        pending = await nothing_yet(stream)
        source.value = snapshot("e2")
        await publisher.refresh()
        assert (await pending).etag == "e2"
        await publisher.stop()

    run(test)


class Reads:
    """A fake revocation store: ``sessions`` is the whole list, ``cursor`` its change count."""

    def __init__(self, sessions: dict[str, float]) -> None:
        self.sessions = dict(sessions)
        self.cursor = 1
        self.asked: list[int | None] = []

    def set(self, sessions: dict[str, float]) -> None:
        self.sessions = dict(sessions)
        self.cursor += 1

    def __call__(self, cursor: int | None) -> RevocationRead:
        self.asked.append(cursor)
        # A real store returns only rows stamped after the cursor; returning all of
        # them shows the publisher itself ignores what it already has.
        return RevocationRead(cursor=self.cursor, sessions=dict(self.sessions), watermarks={})


def test_revocations_are_pushed_as_the_full_list_then_only_what_is_new() -> None:
    async def test() -> None:
        source = Reads({"s1": 100.0})
        publisher = RevocationPublisher(source, retention=120, poll_interval=60, now=lambda: 0.0)
        await publisher.start()
        stream = publisher.watch()
        assert await next_of(stream) == RevocationBatch(full=True, sessions={"s1": 100.0})
        source.set({"s1": 100.0, "s2": 200.0})
        await publisher.refresh()
        # Handed to the watchers by the time refresh() returns (Logout relies on it).
        assert await next_of(stream) == RevocationBatch(full=False, sessions={"s2": 200.0})
        source.set({"s2": 200.0})  # s1 aged out: nothing to tell
        await publisher.refresh()
        pending = await nothing_yet(stream)
        source.set({"s2": 300.0})  # a later token of a revoked session
        await publisher.refresh()
        assert await pending == RevocationBatch(full=False, sessions={"s2": 300.0})
        # One full read at start, then only reads from the cursor.
        assert source.asked == [None, 1, 2, 3]
        await publisher.stop()

    run(test)


def test_stop_returns_only_once_a_read_still_running_in_its_thread_is_done() -> None:
    # A poll cancelled at shutdown leaves its worker thread reading; stop() must
    # wait for it, or the engine is disposed under it (issue 14: psycopg's
    # "connection deleted while still open").
    async def test() -> None:
        entered, release = threading.Event(), threading.Event()
        reading = [False]
        reads = 0

        def load() -> int:
            nonlocal reads
            reads += 1
            if reads > 1:  # the first read is start()'s
                entered.set()
                reading[0] = True
                release.wait(5)
                reading[0] = False
            return reads

        feed: PolledBroadcaster[int] = PolledBroadcaster(load, poll_interval=0.01)
        await feed.start()
        assert await asyncio.to_thread(entered.wait, 5)
        stopping = asyncio.ensure_future(feed.stop())
        await asyncio.sleep(0.1)
        assert reading[0] and not stopping.done()
        release.set()
        await asyncio.wait_for(stopping, 5)
        assert not reading[0]
        # Nothing is read after stop: storage may be closing.
        done = reads
        assert await feed.refresh() == feed.value
        assert reads == done

    run(test)
