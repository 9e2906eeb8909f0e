"""Keeps the published key set current and wakes every WatchJwks stream when it changes."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Callable

from auth_server.authority import JwksSnapshot
from auth_server.errors import AuthServerError

_LOGGER = logging.getLogger(__name__)


class JwksPublisher:
    """The one place the server's gRPC and HTTP faces read the key set from.

    Key changes can come from this process, from ``ssot-auth keys ...`` run
    beside it, or from another replica sharing the database, so the set is
    re-read from storage every ``poll_interval`` seconds (one small query:
    an emergency revocation reaches ``WatchJwks`` subscribers well within a
    second); ``refresh()`` reads at once, and ``request_refresh()`` asks for
    that from any thread (the key store calls it after its own changes).
    """

    def __init__(self, load: Callable[[], JwksSnapshot], *, poll_interval: float = 0.25) -> None:
        self._load = load
        self._poll_interval = poll_interval
        self._snapshot: JwksSnapshot | None = None
        self._changed = asyncio.Condition()
        self._task: asyncio.Task[None] | None = None
        self._wake = asyncio.Event()
        self._loop: asyncio.AbstractEventLoop | None = None

    @property
    def snapshot(self) -> JwksSnapshot:
        if self._snapshot is None:
            raise RuntimeError("JwksPublisher.start() has not run")
        return self._snapshot

    async def start(self) -> None:
        """Load the first set (errors propagate: a server must not start without keys)."""
        self._snapshot = await asyncio.to_thread(self._load)
        self._loop = asyncio.get_running_loop()
        self._task = asyncio.create_task(self._poll(), name="jwks-poll")

    def request_refresh(self) -> None:
        """Re-read the key set soon; safe to call from any thread, even after stop()."""
        loop = self._loop
        if loop is None or loop.is_closed():
            return
        with contextlib.suppress(RuntimeError):  # the loop closed meanwhile
            loop.call_soon_threadsafe(self._wake.set)

    async def stop(self) -> None:
        self._loop = None
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        async with self._changed:
            # Wake the watchers so their streams can end with the server.
            self._changed.notify_all()

    async def refresh(self) -> JwksSnapshot:
        snapshot = await asyncio.to_thread(self._load)
        await self._publish(snapshot)
        return snapshot

    async def _publish(self, snapshot: JwksSnapshot) -> None:
        if self._snapshot is not None and snapshot.etag == self._snapshot.etag:
            # Same keys; only the schedule (HTTP max-age) may have moved: no push.
            if snapshot.next_change_at != self._snapshot.next_change_at:
                self._snapshot = snapshot
            return
        _LOGGER.info("key set changed etag=%s keys=%d", snapshot.etag, len(snapshot.keys))
        async with self._changed:
            self._snapshot = snapshot
            self._changed.notify_all()

    async def _poll(self) -> None:
        failing = False
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), self._poll_interval)
            self._wake.clear()
            try:
                await self.refresh()
            except Exception as exc:  # noqa: BLE001 - the poll loop must outlive any failure
                # Keep publishing the last good set; a verifier that loses its
                # keys is worse than one that learns of a change late.
                if not failing:
                    reason = exc.message if isinstance(exc, AuthServerError) else type(exc).__name__
                    _LOGGER.warning("cannot reload the key set, keeping the last one: %s", reason)
                failing = True
            else:
                failing = False

    async def watch(self) -> AsyncIterator[JwksSnapshot]:
        """Yield the current set, then every new one until the publisher stops."""
        last: JwksSnapshot | None = None
        while True:
            async with self._changed:
                while self._snapshot is None or (
                    last is not None and self._snapshot.etag == last.etag
                ):
                    if self._task is None and last is not None:
                        return
                    await self._changed.wait()
                last = self._snapshot
            yield last
