"""KeyCache: single-flight fetches, cooldown, backoff, expiry, stale serving, push."""

from __future__ import annotations

import asyncio
import dataclasses
import itertools
import json
import logging
import math
import queue
import threading
import time
from collections.abc import Iterator
from typing import Any

import grpc
import pytest
from cryptography.hazmat.primitives.asymmetric import ec
from jwt.algorithms import ECAlgorithm

from helpers import Clock, FakeAuthService, jwk_set_message, serve_fake_auth, wait_until
from interceptors import (
    AuthError,
    AuthServiceSource,
    CacheSettings,
    CacheStats,
    FetchResult,
    HttpJwksSource,
    KeyCache,
    KeySetError,
    KeySourceError,
    KeysUnavailable,
    StaticSource,
    UnknownKey,
)
from protos import auth_pb2

_JWKS_BY_KID: dict[str, dict[str, Any]] = {}


def jwk(kid: str) -> dict[str, Any]:
    if kid not in _JWKS_BY_KID:
        public = ec.generate_private_key(ec.SECP256R1()).public_key()
        _JWKS_BY_KID[kid] = {
            **ECAlgorithm.to_jwk(public, as_dict=True),
            "kid": kid,
            "alg": "ES256",
            "use": "sig",
        }
        _JWKS_BY_KID[kid].pop("key_ops", None)
    return _JWKS_BY_KID[kid]


def jwks(*kids: str) -> dict[str, Any]:
    return {"keys": [jwk(kid) for kid in kids]}


@pytest.fixture
def clock() -> Clock:
    return Clock(1000.0)


# -- a real JWKS server on 127.0.0.1:0 -------------------------------------------------------


class JwksHttpServer:
    """Serves ``document`` at /jwks with ``cache_control``; counts requests server-side."""

    def __init__(self) -> None:
        from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

        self.document: Any = jwks("A")
        self.status = 200
        self.cache_control = "max-age=100"
        self.etag: str | None = None
        self.delay = 0.0
        self.hold = threading.Event()
        self.hold.set()
        self.requests = 0
        self.conditional = 0
        self._lock = threading.Lock()
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                with server._lock:
                    server.requests += 1
                server.hold.wait(10)
                time.sleep(server.delay)  # a slow issuer
                headers = {"Cache-Control": server.cache_control}
                if server.etag is not None:
                    headers["ETag"] = server.etag
                    if self.headers.get("If-None-Match") == server.etag:
                        with server._lock:
                            server.conditional += 1
                        self._send(304, b"", headers)
                        return
                self._send(server.status, json.dumps(server.document).encode(), headers)

            def _send(self, status: int, body: bytes, headers: dict[str, str]) -> None:
                self.send_response(status)
                for name, value in headers.items():
                    self.send_header(name, value)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self._httpd.server_address[1]}/jwks"
        threading.Thread(
            target=self._httpd.serve_forever, kwargs={"poll_interval": 0.01}, daemon=True
        ).start()

    def close(self) -> None:
        self.hold.set()
        self._httpd.shutdown()
        self._httpd.server_close()


@pytest.fixture
def server() -> Iterator[JwksHttpServer]:
    httpd = JwksHttpServer()
    yield httpd
    httpd.close()


@pytest.fixture
def http_cache(server: JwksHttpServer, clock: Clock) -> Iterator[KeyCache]:
    with KeyCache(HttpJwksSource(server.url), now=clock, background=False) as cache:
        yield cache


# -- scriptable sources ---------------------------------------------------------------------


class FakeSource:
    """Answers ``outcome`` (a FetchResult or a KeySetError to raise); counts calls."""

    def __init__(self, outcome: FetchResult | KeySetError, watch: Any = None) -> None:
        self.outcome = outcome
        self.calls = 0
        self.gate = threading.Event()
        self.gate.set()
        self._watch = watch

    def fetch(self, timeout: float) -> FetchResult:
        self.calls += 1
        self.gate.wait(10)
        if isinstance(self.outcome, KeySetError):
            raise self.outcome
        return self.outcome

    def watch(self) -> Any:
        return self._watch


class QueueWatch:
    """A push stream fed by the test: put FetchResults, an exception to break, None to end."""

    def __init__(self) -> None:
        self.queue: queue.Queue[Any] = queue.Queue()

    def __iter__(self) -> Iterator[FetchResult]:
        while True:
            item = self.queue.get()
            if item is None:
                return
            if isinstance(item, Exception):
                raise item
            yield item

    def cancel(self) -> None:
        self.queue.put(None)


def ok(*kids: str, max_age: float | None = 100.0) -> FetchResult:
    return FetchResult(document=jwks(*kids), max_age=max_age)


DOWN = KeySetError("issuer down")


# -- first load and the failure backoff -----------------------------------------------------


def test_first_lookup_loads_the_set_and_later_lookups_are_served_from_memory(
    http_cache: KeyCache, server: JwksHttpServer
) -> None:
    keys = [http_cache.get_key("A") for _ in range(100)]

    assert {key.kid for key in keys} == {"A"}
    assert server.requests == 1
    assert http_cache.key_set is not None and http_cache.key_set.kids == {"A"}


def test_never_loaded_and_source_down_is_unavailable_and_attempts_back_off(
    clock: Clock,
) -> None:
    source = FakeSource(DOWN)
    cache = KeyCache(source, now=clock, background=False)
    attempts_at: list[float] = []

    start = clock.now
    for _ in range(200):  # every 0.5 s for 100 s
        with pytest.raises(KeysUnavailable):
            before = source.calls
            cache.get_key("A")
        if source.calls > before:
            attempts_at.append(clock.now - start)
        clock.advance(0.5)

    gaps = [b - a for a, b in itertools.pairwise(attempts_at)]
    assert gaps[:6] == [1.0, 2.0, 4.0, 8.0, 16.0, 30.0]
    assert set(gaps[5:]) == {30.0}
    assert cache.stats.fetch_failures == len(attempts_at)
    assert cache.key_set is None


def test_first_load_recovers_once_the_backoff_has_passed(clock: Clock) -> None:
    source = FakeSource(DOWN)
    cache = KeyCache(source, now=clock, background=False)
    with pytest.raises(KeysUnavailable):
        cache.get_key("A")
    source.outcome = ok("A")

    with pytest.raises(KeysUnavailable):
        cache.get_key("A")  # still inside the 1 s backoff: no attempt
    clock.advance(1)
    key = cache.get_key("A")

    assert key.kid == "A"
    assert source.calls == 2
    assert cache.stats.last_success == clock.now


@pytest.mark.slow
def test_a_lookup_waits_at_most_the_fetch_timeout(clock: Clock) -> None:
    source = FakeSource(ok("A"))
    source.gate.clear()
    cache = KeyCache(source, CacheSettings(fetch_timeout=0.2), now=clock, background=False)
    started = time.monotonic()

    with pytest.raises(KeysUnavailable):
        cache.get_key("A")

    assert time.monotonic() - started < 1.0
    source.gate.set()
    assert cache.wait_until_loaded(5)
    assert cache.get_key("A").kid == "A"
    assert source.calls == 1


def test_an_async_lookup_that_times_out_leaves_the_shared_fetch_running(
    clock: Clock,
) -> None:
    source = FakeSource(ok("A"))
    source.gate.clear()
    cache = KeyCache(source, CacheSettings(fetch_timeout=0.2), now=clock, background=False)

    async def look() -> type[AuthError] | str:
        try:
            return (await cache.aget_key("A")).kid
        except AuthError as exc:
            return type(exc)

    assert asyncio.run(look()) is KeysUnavailable
    source.gate.set()
    assert cache.wait_until_loaded(5)
    assert asyncio.run(look()) == "A"
    assert source.calls == 1


def test_wait_until_loaded_reports_success_and_failure(clock: Clock) -> None:
    good = KeyCache(FakeSource(ok("A")), now=clock, background=False)
    bad = KeyCache(FakeSource(DOWN), now=clock, background=False)

    assert good.wait_until_loaded(5) is True
    assert bad.wait_until_loaded(5) is False


# -- unknown kids: cooldown, missing-kid memory, single flight ------------------------------


def test_unknown_kid_refetches_at_most_once_per_cooldown(
    http_cache: KeyCache, server: JwksHttpServer, clock: Clock
) -> None:
    http_cache.get_key("A")

    with pytest.raises(UnknownKey):
        http_cache.get_key("B")  # the set was fetched just now
    assert server.requests == 1
    clock.advance(30)
    with pytest.raises(UnknownKey):
        http_cache.get_key("B")
    assert server.requests == 2
    with pytest.raises(UnknownKey):
        http_cache.get_key("C")
    assert server.requests == 2


def test_a_kid_found_missing_is_remembered_and_causes_no_further_fetch(
    http_cache: KeyCache, server: JwksHttpServer, clock: Clock
) -> None:
    http_cache.get_key("A")
    clock.advance(30)
    with pytest.raises(UnknownKey):
        http_cache.get_key("B")
    clock.advance(30)

    with pytest.raises(UnknownKey):
        http_cache.get_key("B")  # remembered: no fetch although the cooldown passed
    assert server.requests == 2
    with pytest.raises(UnknownKey):
        http_cache.get_key("C")  # not remembered: one fetch
    assert server.requests == 3
    clock.advance(80)  # a routine refresh, still without B
    http_cache.get_key("A")
    assert server.requests == 4
    clock.advance(30)
    with pytest.raises(UnknownKey):
        http_cache.get_key("B")
    assert server.requests == 4


def test_a_remembered_kid_is_served_once_a_later_load_has_it(
    http_cache: KeyCache, server: JwksHttpServer, clock: Clock
) -> None:
    http_cache.get_key("A")
    clock.advance(30)
    with pytest.raises(UnknownKey):
        http_cache.get_key("B")
    server.document = jwks("A", "B")

    clock.advance(80)
    http_cache.get_key("A")  # the routine refresh

    assert http_cache.get_key("B").kid == "B"


def test_missing_kid_memory_is_bounded(clock: Clock) -> None:
    source = FakeSource(ok("A", max_age=None))
    cache = KeyCache(source, CacheSettings(missing_kid_memory=2), now=clock, background=False)
    cache.get_key("A")
    for kid in ("X1", "X2", "X3"):
        clock.advance(30)
        with pytest.raises(UnknownKey):
            cache.get_key(kid)
    calls = source.calls
    clock.advance(30)

    with pytest.raises(UnknownKey):
        cache.get_key("X3")
    assert source.calls == calls
    with pytest.raises(UnknownKey):
        cache.get_key("X1")  # evicted, so it may cause a fetch again
    assert source.calls == calls + 1


def test_a_new_key_is_found_by_the_refetch_an_unknown_kid_causes(
    http_cache: KeyCache, server: JwksHttpServer, clock: Clock
) -> None:
    http_cache.get_key("A")
    server.document = jwks("A", "B")
    clock.advance(30)

    assert http_cache.get_key("B").kid == "B"
    assert server.requests == 2


def test_unknown_kid_while_the_source_is_down_is_unavailable_not_unauthenticated(
    http_cache: KeyCache, server: JwksHttpServer, clock: Clock
) -> None:
    http_cache.get_key("A")
    server.status = 500
    clock.advance(30)

    with pytest.raises(KeysUnavailable):
        http_cache.get_key("B")  # the refetch failed: the key may be new
    assert server.requests == 2
    with pytest.raises(KeysUnavailable):
        http_cache.get_key("C")  # within the cooldown of a failed attempt: no fetch
    assert server.requests == 2
    assert http_cache.get_key("A").kid == "A"


def test_cooldown_counts_from_a_failed_attempt_too(clock: Clock) -> None:
    source = FakeSource(ok("A"))
    cache = KeyCache(source, now=clock, background=False)
    cache.get_key("A")
    clock.advance(30)
    source.outcome = DOWN
    with pytest.raises(KeysUnavailable):
        cache.get_key("B")
    source.outcome = ok("A", "B")
    clock.advance(29)

    with pytest.raises(KeysUnavailable):
        cache.get_key("B")
    assert source.calls == 2
    clock.advance(1)
    assert cache.get_key("B").kid == "B"
    assert source.calls == 3


def test_200_threads_with_unknown_kids_cause_one_fetch(
    http_cache: KeyCache, server: JwksHttpServer, clock: Clock
) -> None:
    http_cache.get_key("A")
    clock.advance(30)
    server.hold.clear()
    barrier = threading.Barrier(201)
    outcomes: list[type[AuthError]] = []

    def look(i: int) -> None:
        barrier.wait()
        try:
            http_cache.get_key(f"random-{i}")
        except AuthError as exc:
            outcomes.append(type(exc))

    threads = [threading.Thread(target=look, args=(i,)) for i in range(200)]
    for thread in threads:
        thread.start()
    barrier.wait()
    assert wait_until(lambda: server.requests == 2)
    server.hold.set()
    for thread in threads:
        thread.join(10)

    assert outcomes == [UnknownKey] * 200
    assert server.requests == 2
    assert http_cache.stats.fetches == 2


def test_200_tasks_with_unknown_kids_cause_one_fetch_and_never_block_the_loop(
    http_cache: KeyCache, server: JwksHttpServer, clock: Clock
) -> None:
    http_cache.get_key("A")
    clock.advance(30)
    # A cache that blocked the loop on this fetch would show one gap of >= 1 s; the bound
    # below leaves 2x room for a busy machine's scheduling noise, which reached 0.2 s.
    server.delay = 1.0

    async def main() -> tuple[list[Any], list[float]]:
        loop = asyncio.get_running_loop()
        gaps: list[float] = []
        done = asyncio.Event()

        async def ticker() -> None:
            last = loop.time()
            while not done.is_set():
                await asyncio.sleep(0.005)
                gaps.append(loop.time() - last)
                last = loop.time()

        async def look(i: int) -> Any:
            try:
                return await http_cache.aget_key(f"random-{i}")
            except AuthError as exc:
                return type(exc)

        tick = asyncio.create_task(ticker())
        await asyncio.sleep(0)
        outcomes = await asyncio.gather(*(look(i) for i in range(200)))
        done.set()
        await tick
        return outcomes, gaps

    outcomes, gaps = asyncio.run(main())

    assert outcomes == [UnknownKey] * 200
    assert server.requests == 2
    assert len(gaps) > 50  # the loop kept ticking during the 1 s fetch
    assert max(gaps) < 0.5


def test_async_lookup_of_a_known_kid_returns_it(http_cache: KeyCache) -> None:
    async def main() -> list[str]:
        return [(await http_cache.aget_key("A")).kid for _ in range(3)]

    assert asyncio.run(main()) == ["A", "A", "A"]


# -- expiry, background refresh, stale serving ----------------------------------------------


@pytest.mark.parametrize(
    ("max_age", "lifetime"),
    [
        pytest.param(None, 300.0, id="no-hint-uses-default"),
        pytest.param(0.0, 1.0, id="zero-clamped-to-min"),
        pytest.param(50.0, 50.0, id="honoured"),
        pytest.param(1e9, 86400.0, id="clamped-to-max"),
    ],
)
def test_set_is_refreshed_at_the_refresh_ratio_of_its_clamped_max_age(
    clock: Clock, max_age: float | None, lifetime: float
) -> None:
    source = FakeSource(ok("A", max_age=max_age))
    cache = KeyCache(source, now=clock, background=False)
    cache.get_key("A")
    start = clock.now

    clock.now = start + 0.8 * lifetime - 0.01
    cache.get_key("A")
    assert source.calls == 1
    clock.now = start + 0.8 * lifetime
    cache.get_key("A")
    assert source.calls == 2


def test_a_static_set_never_expires(clock: Clock) -> None:
    cache = KeyCache(
        StaticSource(jwks("A")), CacheSettings(stale_for=0), now=clock, background=False
    )
    cache.get_key("A")

    clock.advance(1e12)

    assert cache.get_key("A").kid == "A"
    assert cache.stats == CacheStats(
        fetches=1, fetch_failures=0, pushes=0, stale_serves=0, last_success=clock.now - 1e12
    )


def test_http_max_age_and_304_revalidation_drive_refreshes(
    http_cache: KeyCache, server: JwksHttpServer, clock: Clock
) -> None:
    server.etag = '"v1"'
    http_cache.get_key("A")
    server.cache_control = "max-age=200"

    clock.advance(79)
    http_cache.get_key("A")
    assert server.requests == 1
    clock.advance(1)  # 80% of max-age=100
    assert http_cache.get_key("A").kid == "A"
    assert (server.requests, server.conditional) == (2, 1)
    clock.advance(159)  # the 304 renewed the set for max-age=200
    http_cache.get_key("A")
    assert server.requests == 2
    clock.advance(1)
    http_cache.get_key("A")
    assert (server.requests, server.conditional) == (3, 2)


def test_source_down_serves_the_last_good_set_until_stale_for_then_drops_it(
    http_cache: KeyCache, server: JwksHttpServer, clock: Clock, caplog: pytest.LogCaptureFixture
) -> None:
    removed: list[frozenset[str]] = []
    http_cache.add_removal_listener(removed.append)
    http_cache.get_key("A")
    server.status = 503

    clock.advance(150)  # past max-age=100
    for _ in range(3):
        assert http_cache.get_key("A").kid == "A"
        clock.advance(1)
    stale = [r for r in caplog.records if "past their max-age" in r.getMessage()]
    assert len(stale) == 1 and stale[0].levelno == logging.WARNING
    assert http_cache.stats.stale_serves == 3
    assert http_cache.stats.fetch_failures >= 1

    clock.now += 100 + 3600 - 153 - 0.01
    assert http_cache.get_key("A").kid == "A"
    assert removed == []
    clock.advance(0.01)
    with pytest.raises(KeysUnavailable):
        http_cache.get_key("A")
    assert removed == [frozenset({"A"})]
    assert http_cache.key_set is None


def test_a_refused_document_counts_as_a_failure_and_keeps_the_last_good_set(
    http_cache: KeyCache, server: JwksHttpServer, clock: Clock
) -> None:
    http_cache.get_key("A")
    server.document = {"keys": [{**jwk("B"), "d": "c2VjcmV0"}]}

    clock.advance(80)
    key = http_cache.get_key("A")

    assert key.kid == "A"
    assert server.requests == 2
    assert http_cache.stats.fetch_failures == 1
    assert http_cache.key_set is not None and http_cache.key_set.kids == {"A"}


def test_removal_listeners_get_the_kids_that_left_the_set(
    http_cache: KeyCache, server: JwksHttpServer, clock: Clock
) -> None:
    removed: list[frozenset[str]] = []

    def broken(kids: frozenset[str]) -> None:
        raise RuntimeError("listener bug")

    http_cache.add_removal_listener(broken)
    http_cache.add_removal_listener(removed.append)
    server.document = jwks("A", "B")
    http_cache.get_key("A")
    server.document = jwks("B", "C")

    clock.advance(80)
    http_cache.get_key("B")

    assert removed == [frozenset({"A"})]
    with pytest.raises(UnknownKey):
        http_cache.get_key("A")


def test_background_refresh_happens_before_expiry_without_making_requests_wait(
    server: JwksHttpServer,
) -> None:
    server.cache_control = "max-age=1"  # refresh due after 0.8 s
    with KeyCache(HttpJwksSource(server.url)) as cache:
        assert cache.wait_until_loaded(5)
        server.hold.clear()
        assert wait_until(lambda: server.requests == 2)

        started = time.monotonic()
        key = cache.get_key("A")
        waited = time.monotonic() - started
        server.hold.set()
        assert wait_until(lambda: cache.stats.fetches == 2)

    assert key.kid == "A"
    # Waiting for the held refresh would take the 3 s fetch timeout; a busy machine's
    # noise stays far below this bound.
    assert waited < 1.0


# -- push -----------------------------------------------------------------------------------


def test_pushed_sets_replace_the_current_one_at_once(clock: Clock) -> None:
    watch = QueueWatch()
    source = FakeSource(ok("A"), watch=watch)
    removed: list[frozenset[str]] = []
    with KeyCache(source, now=clock) as cache:
        cache.add_removal_listener(removed.append)
        assert cache.wait_until_loaded(5)

        watch.queue.put(ok("B", max_age=50))
        assert wait_until(lambda: cache.stats.pushes == 1)

        assert removed == [frozenset({"A"})]
        assert cache.get_key("B").kid == "B"
        with pytest.raises(UnknownKey):
            cache.get_key("A")
        assert cache.stats.last_success == clock.now


def test_a_push_renews_expiry(clock: Clock) -> None:
    watch = QueueWatch()
    source = FakeSource(ok("A", max_age=100), watch=watch)
    with KeyCache(source, CacheSettings(stale_for=0), now=clock) as cache:
        assert cache.wait_until_loaded(5)
        clock.advance(90)
        source.outcome = DOWN
        watch.queue.put(ok("A", max_age=100))
        assert wait_until(lambda: cache.stats.pushes == 1)
        clock.advance(90)  # 180 s after the fetch, 90 s after the push

        assert cache.get_key("A").kid == "A"
        assert cache.stats.stale_serves == 0


def test_a_refused_push_is_ignored(clock: Clock, caplog: pytest.LogCaptureFixture) -> None:
    watch = QueueWatch()
    with KeyCache(FakeSource(ok("A"), watch=watch), now=clock) as cache:
        assert cache.wait_until_loaded(5)
        watch.queue.put(FetchResult(document={"keys": []}, max_age=None))
        assert wait_until(lambda: "ignoring a pushed key set" in caplog.text)

        assert cache.key_set is not None and cache.key_set.kids == {"A"}
        assert cache.stats.pushes == 0


def test_a_fetch_answer_older_than_a_push_does_not_overwrite_it(clock: Clock) -> None:
    watch = QueueWatch()
    source = FakeSource(ok("OLD"), watch=watch)
    source.gate.clear()  # the first fetch is slow
    with KeyCache(source, now=clock) as cache:
        assert wait_until(lambda: source.calls == 1)
        watch.queue.put(ok("NEW"))
        assert wait_until(lambda: cache.stats.pushes == 1)
        source.gate.set()
        assert wait_until(lambda: cache.stats.fetches == 1)

        assert cache.key_set is not None and cache.key_set.kids == {"NEW"}


def test_a_broken_stream_is_reopened_with_a_full_fetch(clock: Clock) -> None:
    watches = [QueueWatch(), QueueWatch()]
    opened: list[QueueWatch] = []

    class Source(FakeSource):
        def watch(self) -> QueueWatch:
            opened.append(watches[len(opened)] if len(opened) < 2 else QueueWatch())
            return opened[-1]

    source = Source(ok("A"))
    with KeyCache(source, CacheSettings(reconnect_initial=0.01), now=clock) as cache:
        assert cache.wait_until_loaded(5)
        assert wait_until(lambda: len(opened) == 1)
        source.outcome = ok("A", "B")

        watches[0].queue.put(KeySourceError("stream broke"))

        assert wait_until(lambda: len(opened) == 2)
        assert wait_until(lambda: cache.stats.fetches == 2)
        assert cache.get_key("B").kid == "B"


def jwk_set(*kids: str) -> auth_pb2.JwkSet:
    return jwk_set_message([jwk(kid) for kid in kids])


def test_grpc_push_rotation_and_reconnect_after_a_server_restart() -> None:
    servicer = FakeAuthService(jwk_set("A"))
    server, port = serve_fake_auth(servicer)
    channel = grpc.insecure_channel(
        f"127.0.0.1:{port}",
        options=[
            ("grpc.initial_reconnect_backoff_ms", 50),
            ("grpc.min_reconnect_backoff_ms", 50),
            ("grpc.max_reconnect_backoff_ms", 200),
        ],
    )
    removed: list[frozenset[str]] = []
    cache = KeyCache(
        AuthServiceSource(channel=channel),
        CacheSettings(reconnect_initial=0.05, reconnect_max=0.2),
    )
    cache.add_removal_listener(removed.append)
    try:
        cache.start()
        assert cache.wait_until_loaded(5)
        assert cache.get_key("A").kid == "A"

        servicer.publish(jwk_set("A", "B"))  # a new key is published ...
        assert wait_until(lambda: cache.key_set is not None and "B" in cache.key_set)
        servicer.publish(jwk_set("B"))  # ... and the old one revoked
        assert wait_until(lambda: removed == [frozenset({"A"})])
        with pytest.raises(UnknownKey):
            cache.get_key("A")

        server.stop(0).wait()
        fetches = servicer.get_calls
        restarted = FakeAuthService(jwk_set("B", "C"))  # what changed while the stream was down
        server, _ = serve_fake_auth(restarted, port)
        assert wait_until(lambda: cache.key_set is not None and "C" in cache.key_set)
        assert wait_until(lambda: restarted.get_calls >= 1)  # the full fetch after reconnecting
        assert cache.get_key("C").kid == "C"
        assert fetches >= 1
        # The full fetch after reconnecting may deliver C before the new stream's
        # first push is counted, so wait for that push rather than assume it came first.
        assert wait_until(lambda: cache.stats.pushes >= 3)
    finally:
        cache.close()
        channel.close()
        server.stop(0).wait()


@pytest.mark.slow
def test_close_stops_the_threads_promptly_and_is_idempotent() -> None:
    servicer = FakeAuthService(jwk_set("A"))
    server, port = serve_fake_auth(servicer)
    source = AuthServiceSource(f"127.0.0.1:{port}")
    try:
        cache = KeyCache(source)
        cache.start()
        cache.start()
        assert cache.wait_until_loaded(5)
        names = {"ssot-keys-refresh", "ssot-keys-push"}
        assert {t.name for t in threading.enumerate()} >= names

        started = time.monotonic()
        cache.close()
        cache.close()

        assert time.monotonic() - started < 1.0
        assert not [t for t in threading.enumerate() if t.name in names]
        assert cache.get_key("A").kid == "A"  # memory still answers
    finally:
        source.close()
        server.stop(0).wait()


def test_background_false_starts_no_threads(clock: Clock) -> None:
    before = set(threading.enumerate())
    with KeyCache(FakeSource(ok("A"), watch=QueueWatch()), now=clock, background=False):
        assert set(threading.enumerate()) == before


# -- configuration --------------------------------------------------------------------------


@pytest.mark.parametrize(
    "settings",
    [
        pytest.param({"algorithms": {"HS256"}}, id="symmetric-algorithm"),
        pytest.param({"cooldown": -1}, id="negative-cooldown"),
        pytest.param({"min_max_age": 0}, id="zero-min-max-age"),
        pytest.param({"min_max_age": 10, "max_max_age": 5}, id="min-above-max"),
        pytest.param({"default_max_age": 0}, id="zero-default-max-age"),
        pytest.param({"stale_for": -1}, id="negative-stale-for"),
        pytest.param({"fetch_timeout": 0}, id="zero-fetch-timeout"),
        pytest.param({"fetch_timeout": math.inf}, id="infinite-fetch-timeout"),
        pytest.param({"refresh_ratio": 0}, id="zero-refresh-ratio"),
        pytest.param({"refresh_ratio": 1.5}, id="refresh-ratio-above-one"),
        pytest.param({"missing_kid_memory": -1}, id="negative-memory"),
        pytest.param({"min_rsa_bits": 0}, id="zero-rsa-bits"),
        pytest.param({"reconnect_initial": 0}, id="zero-reconnect-delay"),
        pytest.param({"reconnect_initial": 5, "reconnect_max": 1}, id="reconnect-above-max"),
    ],
)
def test_out_of_range_settings_are_refused(settings: dict[str, Any]) -> None:
    with pytest.raises(ValueError):
        CacheSettings(**settings)


def test_settings_are_frozen_and_keyword_only() -> None:
    settings = CacheSettings(cooldown=5)
    with pytest.raises(dataclasses.FrozenInstanceError):
        settings.cooldown = 1  # type: ignore[misc]
    with pytest.raises(TypeError):
        CacheSettings(["RS256"])  # type: ignore[misc]
    assert CacheSettings(algorithms=["RS256"]).algorithms == frozenset({"RS256"})  # type: ignore[arg-type]


def test_accepted_algorithms_and_rsa_size_reach_the_key_set_filter(clock: Clock) -> None:
    source = FakeSource(ok("A"))
    cache = KeyCache(source, CacheSettings(algorithms={"RS256"}), now=clock, background=False)

    with pytest.raises(KeysUnavailable):
        cache.get_key("A")  # the only key is ES256: the set is refused
    assert cache.stats.fetch_failures == 1
