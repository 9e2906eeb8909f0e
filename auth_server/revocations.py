"""Keeps the revocation list current and pushes it to every WatchRevocations stream.

Sessions are revoked by this process (Logout, a reused refresh token), by
``ssot-auth sessions revoke`` / ``users disable`` run beside it, or by another
replica sharing the database. So the list is re-read every ``poll_interval``
seconds (one indexed query), and :meth:`RevocationPublisher.refresh` re-reads
it at once after a local revocation, before the RPC that caused it returns.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Callable, Mapping
from dataclasses import dataclass

from auth_server.errors import AuthServerError

_LOGGER = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class RevocationBatch:
    """One message of a WatchRevocations stream.

    Attributes:
        full: The whole list (replaces what the verifier holds) or only new entries.
        sessions: ``{session id: exp of its last access token}``.
    """

    full: bool
    sessions: Mapping[str, float]


class RevocationPublisher:
    """The revoked-session list, loaded from storage and pushed to watchers."""

    def __init__(
        self, load: Callable[[], dict[str, float]], *, poll_interval: float = 0.25
    ) -> None:
        if poll_interval <= 0:
            raise ValueError("poll_interval must be positive")
        self._load = load
        self._poll_interval = poll_interval
        self._current: dict[str, float] | None = None
        self._changed = asyncio.Condition()
        self._reading = asyncio.Lock()  # one read at a time: an older read never lands last
        self._task: asyncio.Task[None] | None = None
        self._stopped = False

    @property
    def current(self) -> Mapping[str, float]:
        """The list as last read."""
        if self._current is None:
            raise RuntimeError("RevocationPublisher.start() has not run")
        return self._current

    async def start(self) -> None:
        """Read the list once (errors propagate), then poll in the background."""
        self._current = await asyncio.to_thread(self._load)
        self._task = asyncio.create_task(self._poll(), name="revocations-poll")

    async def stop(self) -> None:
        """Stop polling and end every watch stream."""
        self._stopped = True
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        async with self._changed:
            self._changed.notify_all()

    async def refresh(self) -> None:
        """Re-read the list now and wake the watchers if it changed.

        Raises:
            AuthServerError: The database could not be read.
        """
        async with self._reading:
            loaded = await asyncio.to_thread(self._load)
            async with self._changed:
                if loaded != self._current:
                    self._current = loaded
                    self._changed.notify_all()

    async def _poll(self) -> None:
        failing = False
        while True:
            await asyncio.sleep(self._poll_interval)
            try:
                await self.refresh()
            except Exception as exc:  # noqa: BLE001 - the poll loop must outlive any failure
                if not failing:
                    reason = exc.message if isinstance(exc, AuthServerError) else type(exc).__name__
                    _LOGGER.warning("cannot reload the revocation list: %s", reason)
                failing = True
            else:
                if failing:
                    _LOGGER.info("revocation list readable again")
                failing = False

    async def watch(self) -> AsyncIterator[RevocationBatch]:
        """Yield the full list, then each batch of newly revoked sessions, until stopped."""
        sent: dict[str, float] | None = None
        while True:
            async with self._changed:
                while not self._stopped and sent is not None and self._current is sent:
                    await self._changed.wait()
                if self._stopped:
                    return
                current = self._current
                assert current is not None, "start() has not run"
            if sent is None:
                yield RevocationBatch(full=True, sessions=dict(current))
            else:
                new = {sid: exp for sid, exp in current.items() if sent.get(sid, -1.0) < exp}
                if new:
                    yield RevocationBatch(full=False, sessions=new)
            sent = current
