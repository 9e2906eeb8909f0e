"""TokenVerifier.from_source: one owner that builds, starts and closes the verifier's parts."""

from __future__ import annotations

import asyncio
import math
import os
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from helpers import AuthHarness, wait_until
from interceptors import (
    AuthServiceSource,
    CacheSettings,
    FetchResult,
    HttpJwksSource,
    KeyCache,
    KeySourceError,
    RevocationList,
    RevocationStreamError,
    RevocationsUnavailable,
    StaticSource,
    TokenPolicy,
    TokenVerifier,
)

POLICY = TokenPolicy(issuer="https://auth.example.test", audience="orders")
EMPTY: dict[str, Any] = {"keys": []}


def _background_threads() -> set[threading.Thread]:
    return {t for t in threading.enumerate() if t.name.startswith("ssot-")}


def _connections_to(port: int) -> int | None:
    """Established TCP connections this process holds to ``port`` (None off Linux)."""
    if not Path("/proc/self/fd").is_dir():
        return None
    inodes = set()
    for fd in os.listdir("/proc/self/fd"):
        try:
            link = os.readlink(f"/proc/self/fd/{fd}")
        except OSError:
            continue
        if link.startswith("socket:["):
            inodes.add(link[len("socket:[") : -1])
    count = 0
    for table in ("/proc/self/net/tcp", "/proc/self/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            fields = line.split()
            remote_port = int(fields[2].rsplit(":", 1)[1], 16)
            established = fields[3] == "01"
            if remote_port == port and established and fields[9] in inodes:
                count += 1
    return count


class QuietWatch:
    """A push stream that never delivers; records whether it was cancelled."""

    def __init__(self) -> None:
        self.cancelled = threading.Event()

    def __iter__(self) -> Iterator[Any]:
        self.cancelled.wait()
        return iter(())

    def cancel(self) -> None:
        self.cancelled.set()


class RecordingSource:
    """A key source (and revocation source) that records what was opened and closed."""

    def __init__(self) -> None:
        self.closed = 0
        self.watches: list[QuietWatch] = []

    def fetch(self, timeout: float) -> FetchResult:
        return FetchResult(document=EMPTY, max_age=math.inf)

    def watch(self) -> QuietWatch:
        self.watches.append(QuietWatch())
        return self.watches[-1]

    def watch_revocations(self) -> QuietWatch:
        return self.watch()

    def close(self) -> None:
        self.closed += 1


# -- the auth service's channel -------------------------------------------------------------


def test_closing_the_verifier_closes_the_channel_its_source_opened(auth: AuthHarness) -> None:
    policy = TokenPolicy(issuer=auth.server.config.issuer, audience=auth.server.config.audience)
    port = auth.server.grpc_port
    before = _background_threads()
    source = AuthServiceSource(auth.target)

    verifier = TokenVerifier.from_source(source, policy)
    with verifier:
        keys, revocations = verifier.keys, verifier.revocations
        assert isinstance(keys, KeyCache) and isinstance(revocations, RevocationList)
        assert keys.wait_until_loaded(5)
        assert revocations.wait_until_synced(5)
        assert verifier.verify(auth.forge({})).username == "mallory"
        assert _connections_to(port) != 0

    with pytest.raises(KeySourceError) as fetch_failure:
        source.fetch(1)
    with pytest.raises(RevocationStreamError) as stream_failure:
        source.watch_revocations()
    assert "channel closed" in fetch_failure.value.log_detail
    assert "channel closed" in stream_failure.value.log_detail
    assert wait_until(lambda: _connections_to(port) in (0, None))
    # close() joins the followers; a one-shot key fetch already running (a daemon
    # thread, bounded by fetch_timeout) is not joined and ends with its fetch.
    assert wait_until(lambda: _background_threads() <= before), _background_threads() - before
    # What is in memory still answers; nothing reopens the channel.
    assert verifier.verify(auth.forge({})).username == "mallory"


def test_a_source_kept_by_its_caller_stays_open(auth: AuthHarness) -> None:
    policy = TokenPolicy(issuer=auth.server.config.issuer, audience=auth.server.config.audience)
    source = AuthServiceSource(auth.target)
    try:
        with TokenVerifier.from_source(source, policy, close_source=False) as verifier:
            assert isinstance(verifier.keys, KeyCache)
            assert verifier.keys.wait_until_loaded(5)

        assert source.fetch(5).document["keys"]
        stream = source.watch_revocations()
        stream.cancel()
    finally:
        source.close()


# -- what it owns, and what it does not ------------------------------------------------------


def test_close_stops_the_followers_before_closing_the_source_once() -> None:
    source = RecordingSource()
    before = _background_threads()

    verifier = TokenVerifier.from_source(source, POLICY)
    assert wait_until(lambda: len(source.watches) == 2)  # WatchJwks and WatchRevocations
    verifier.close()
    verifier.close()

    assert all(w.cancelled.is_set() for w in source.watches)
    assert source.closed == 1
    # As above: the first load's fetch thread may still be returning under load.
    assert wait_until(lambda: _background_threads() <= before), _background_threads() - before


def test_a_verifier_built_from_parts_closes_none_of_them() -> None:
    source = RecordingSource()
    keys = KeyCache(source)
    revocations = RevocationList(source)
    keys.start()
    revocations.start()
    try:
        assert wait_until(lambda: len(source.watches) == 2)
        with TokenVerifier(keys, POLICY, revocations=revocations) as verifier:
            assert verifier.keys is keys and verifier.revocations is revocations

        assert not any(w.cancelled.is_set() for w in source.watches)
        assert source.closed == 0
    finally:
        keys.close()
        revocations.close()
    assert all(w.cancelled.is_set() for w in source.watches)


@pytest.mark.parametrize(
    ("make_source", "follow", "follows"),
    [
        pytest.param(RecordingSource, True, True, id="revocation-source"),
        pytest.param(RecordingSource, False, False, id="revocation-source-not-followed"),
        pytest.param(lambda: StaticSource(EMPTY), True, False, id="static"),
        pytest.param(
            lambda: HttpJwksSource("http://127.0.0.1:9/jwks"), True, False, id="http-jwks"
        ),
    ],
)
def test_revocations_are_followed_only_when_the_source_serves_them(
    make_source: Callable[[], Any], follow: bool, follows: bool
) -> None:
    with TokenVerifier.from_source(make_source(), POLICY, follow_revocations=follow) as verifier:
        assert isinstance(verifier.revocations, RevocationList) is follows


def test_fail_closed_reaches_the_revocation_list() -> None:
    with TokenVerifier.from_source(RecordingSource(), POLICY) as fail_open:
        assert isinstance(fail_open.revocations, RevocationList)
        assert not fail_open.revocations.refuses(session_id="s", subject="u", issued_at=1)
    with TokenVerifier.from_source(
        RecordingSource(), POLICY, revocations_fail_closed=30.0
    ) as fail_closed:
        assert isinstance(fail_closed.revocations, RevocationList)
        # Nothing synced yet (the stream never delivers): every token is refused.
        with pytest.raises(RevocationsUnavailable):
            fail_closed.revocations.refuses(session_id="s", subject="u", issued_at=1)


@pytest.mark.parametrize(
    ("make_source", "follow"),
    [
        pytest.param(lambda: StaticSource(EMPTY), True, id="no-revocation-source"),
        pytest.param(RecordingSource, False, id="revocations-not-followed"),
    ],
)
def test_fail_closed_without_revocations_to_follow_is_refused(
    make_source: Callable[[], Any], follow: bool
) -> None:
    before = _background_threads()
    with pytest.raises(ValueError, match="revocations_fail_closed"):
        TokenVerifier.from_source(
            make_source(), POLICY, follow_revocations=follow, revocations_fail_closed=5.0
        )
    assert _background_threads() <= before


def test_the_settings_reach_the_key_cache() -> None:
    settings = CacheSettings(cooldown=5.0, fetch_timeout=1.0)
    with TokenVerifier.from_source(StaticSource(EMPTY), POLICY, cache_settings=settings) as v:
        assert isinstance(v.keys, KeyCache)
        assert v.keys.settings is settings


def test_a_failed_build_leaves_nothing_running_and_closes_the_source() -> None:
    source = RecordingSource()
    before = _background_threads()

    with pytest.raises(ValueError):
        TokenVerifier.from_source(source, POLICY, cache_size=-1)

    assert source.closed == 1
    assert source.watches == []
    assert _background_threads() <= before


def test_the_asyncio_face_closes_without_blocking_the_loop() -> None:
    source = RecordingSource()

    async def main() -> bool:
        ticks = 0

        async def tick() -> None:
            nonlocal ticks
            while True:
                ticks += 1
                await asyncio.sleep(0)

        ticker = asyncio.create_task(tick())
        async with TokenVerifier.from_source(source, POLICY) as verifier:
            assert isinstance(verifier.revocations, RevocationList)
            while len(source.watches) < 2:
                await asyncio.sleep(0.01)
            seen = ticks
        ticker.cancel()
        return ticks > seen

    assert asyncio.run(main())
    assert source.closed == 1
    assert all(w.cancelled.is_set() for w in source.watches)
