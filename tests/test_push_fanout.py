"""Push streams at scale: every stream hears a revocation; a stalled one costs the rest nothing."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import jwt
import pytest

from auth_server.revocations import RevocationBatch, RevocationPublisher, RevocationRead
from helpers import AuthHarness, EventLoopThread, make_config, start_harness, wait_until
from protos import auth_pb2, auth_pb2_grpc

T0 = 1_700_000_000.0


def _read(cursor: int, sessions: dict[str, float]) -> RevocationRead:
    return RevocationRead(cursor=cursor, sessions=sessions, watermarks={})


def test_a_stalled_watcher_neither_delays_the_others_nor_queues_what_it_missed() -> None:
    async def test() -> None:
        reads = [_read(1, {})]
        publisher = RevocationPublisher(
            lambda cursor: reads[-1],
            retention=120,
            log_entries=20,
            now=lambda: T0,
            poll_interval=60,
        )
        await publisher.start()
        stalled = publisher.watch()
        assert (await anext(stalled)).full  # then never read again, like a blocked write
        others = [publisher.watch() for _ in range(50)]
        for stream in others:
            assert (await anext(stream)).full
        assert publisher.watchers == 51

        for n in range(2, 102):
            reads.append(_read(n, {f"s{n}": T0 + 900}))
            await publisher.refresh()
            for stream in others:
                got = await asyncio.wait_for(anext(stream), 2)
                assert got == RevocationBatch(full=False, sessions={f"s{n}": T0 + 900})
        # Nothing was kept for the stalled watcher beyond the bounded change log:
        # far behind, it resumes with one full list that holds everything.
        assert len(publisher.state._log) <= 20
        resumed = await asyncio.wait_for(anext(stalled), 2)
        assert resumed.full and not resumed.continues
        assert set(resumed.sessions) == {f"s{n}" for n in range(2, 102)}

        for stream in [stalled, *others]:
            await stream.aclose()
        assert publisher.watchers == 0
        await publisher.stop()

    asyncio.run(asyncio.wait_for(test(), 30))


def test_watchers_at_the_same_version_are_sent_the_same_message_object() -> None:
    async def test() -> None:
        reads = [_read(1, {})]
        publisher = RevocationPublisher(
            lambda cursor: reads[-1], retention=120, now=lambda: T0, poll_interval=60
        )
        await publisher.start()
        streams = [publisher.watch() for _ in range(20)]
        for stream in streams:
            await anext(stream)
        reads.append(_read(2, {"x": T0 + 900}))
        await publisher.refresh()
        got = [await anext(stream) for stream in streams]
        assert all(batch is got[0] for batch in got)  # cut once, encoded once
        for stream in streams:
            await stream.aclose()
        await publisher.stop()

    asyncio.run(asyncio.wait_for(test(), 10))


@pytest.fixture
def auth_server(loop_thread: EventLoopThread, tmp_path: Path) -> Iterator[AuthHarness]:
    harness = start_harness(loop_thread, make_config(tmp_path))
    yield harness
    harness.channel.close()
    harness.stop()


@pytest.mark.slow
def test_a_revocation_reaches_every_one_of_hundreds_of_streams_despite_a_silent_one(
    auth_server: AuthHarness,
) -> None:
    streams, per_channel = 300, 50
    client_loop = EventLoopThread("fanout-clients")
    received: dict[str, int] = {}
    synced = 0
    tasks: list[asyncio.Future[None]] = []

    async def follow(stub: auth_pb2_grpc.AuthServiceStub) -> None:
        nonlocal synced
        call = stub.WatchRevocations(auth_pb2.WatchRevocationsRequest(watermarks=True))
        first = True
        async for update in call:
            if first:
                synced += 1
                first = False
            for entry in update.sessions:
                received[entry.session_id] = received.get(entry.session_id, 0) + 1

    async def open_all() -> list[grpc.aio.Channel]:
        channels = []
        for _ in range(streams // per_channel):
            channel = grpc.aio.insecure_channel(
                auth_server.target, options=[("grpc.use_local_subchannel_pool", 1)]
            )
            channels.append(channel)
            stub = auth_pb2_grpc.AuthServiceStub(channel)
            for _ in range(per_channel):
                tasks.append(asyncio.ensure_future(follow(stub)))
        return channels

    # A subscriber that opens a stream and never reads from it.
    silent_channel = grpc.insecure_channel(auth_server.target)
    silent = auth_pb2_grpc.AuthServiceStub(silent_channel).WatchRevocations(
        auth_pb2.WatchRevocationsRequest(watermarks=True)
    )
    channels = client_loop.run(open_all())
    try:
        assert wait_until(lambda: synced == streams, timeout=30)
        publisher = auth_server.server.revocations
        assert publisher is not None
        assert wait_until(lambda: publisher.watchers == streams + 1, timeout=10)
        auth_server.add_user("alice", "correct horse battery")
        for _ in range(3):
            login = auth_server.login("alice", "correct horse battery")
            sid = jwt.decode(login.access_token, options={"verify_signature": False})["sid"]
            started = time.monotonic()
            auth_server.logout(login.refresh_token)
            assert wait_until(lambda sid=sid: received.get(sid) == streams, timeout=10)
            assert time.monotonic() - started < 5
    finally:
        silent.cancel()
        silent_channel.close()
        for channel in channels:
            client_loop.run(channel.close(None))
        client_loop.close()
