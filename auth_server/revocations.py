"""Keeps the revocation list current and pushes it to every WatchRevocations stream.

Sessions are revoked by this process (Logout, a reused refresh token), by
``ssot-auth sessions revoke`` / ``users disable`` run beside it, or by another
replica sharing the database. So storage is polled every ``poll_interval``
seconds, and :meth:`RevocationPublisher.refresh` polls at once after a local
revocation, before the RPC that caused it returns (the polling and waking is
:class:`auth_server.broadcast.PolledBroadcaster`).

A poll reads only what was revoked since the last one (a cursor over a
revocation sequence, :mod:`auth_server._revocationrows`), and entries leave the
list as their tokens expire without anything being read again
(:class:`auth_server._revocation_state.RevocationState`). With 100,000 or
1,000,000 entries in the window an idle poll is one indexed lookup. A watcher
that joins gets the full list in messages that each fit the gRPC size limits,
then only what is new.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Callable

from auth_server._revocation_state import (
    DEFAULT_CHUNK_BYTES,
    DEFAULT_LOG_ENTRIES,
    FullList,
    RevocationBatch,
    RevocationState,
)
from auth_server._revocationrows import RevocationRead, Watermark
from auth_server.broadcast import (
    DEFAULT_LISTENING_POLL_INTERVAL,
    DEFAULT_POLL_INTERVAL,
    PolledBroadcaster,
)

__all__ = [
    "FullList",
    "RevocationBatch",
    "RevocationPublisher",
    "RevocationRead",
    "RevocationReader",
    "Watermark",
]

#: Reads the list: everything (``None``) or what was revoked after a cursor.
RevocationReader = Callable[[int | None], RevocationRead]


class RevocationPublisher(PolledBroadcaster[int]):
    """The revocation list, read incrementally from storage and pushed to watchers.

    The broadcast value is the list's version; the list itself is
    :attr:`state`. Each watcher gets the whole list first, then only what is new.
    """

    what = "revocation list"

    def __init__(
        self,
        read: RevocationReader,
        *,
        retention: float,
        poll_interval: float = DEFAULT_POLL_INTERVAL,
        listening_poll_interval: float = DEFAULT_LISTENING_POLL_INTERVAL,
        chunk_bytes: int = DEFAULT_CHUNK_BYTES,
        log_entries: int = DEFAULT_LOG_ENTRIES,
        now: Callable[[], float] = time.time,
    ) -> None:
        """Create the publisher (nothing is read until :meth:`start`).

        Args:
            read: Reads storage (blocking; run in a worker thread), e.g.
                :meth:`auth_server.revocation_store.RevocationStore.read`.
            retention: Seconds an entry stays on the list past its ``expires_at``.
            poll_interval: Seconds between reads.
            listening_poll_interval: Seconds between reads while changes are
                announced (:meth:`~PolledBroadcaster.set_listening`).
            chunk_bytes: Target size of one stream message.
            log_entries: Recent changes kept for watchers that fall behind.
            now: Clock, epoch seconds.
        """
        super().__init__(
            self._read_changes,
            poll_interval=poll_interval,
            listening_poll_interval=listening_poll_interval,
        )
        self._read = read
        self._cursor: int | None = None
        self.state = RevocationState(
            retention=retention, now=now, chunk_bytes=chunk_bytes, log_entries=log_entries
        )
        self._building: asyncio.Future[FullList] | None = None
        # The messages from one version to the newest, shared by every watcher
        # that had that version: a push to N streams cuts (and encodes) each
        # delta once, not N times. Only deltas to the newest version are kept.
        self._deltas: dict[int, list[RevocationBatch] | None] = {}
        self._deltas_upto = -1

    def _read_changes(self) -> int:
        # Runs in a worker thread, one read at a time (PolledBroadcaster).
        read = self._read(self._cursor)
        version = self.state.merge(read, full=self._cursor is None)
        self._cursor = read.cursor
        return version

    def _announce(self, value: int) -> None:
        pass

    async def watch(self) -> AsyncIterator[RevocationBatch]:
        """Yield the full list (in parts), then each batch of new entries, until stopped."""
        # aclosing: a stream that ends stops following at once, not when collected.
        async with contextlib.aclosing(self.updates()) as updates:
            async for sent, current in updates:
                batches = None if sent is None else self._changes(sent, current)
                while batches is None:
                    full = await self.full_list()
                    for batch in full.batches:
                        yield batch
                    # What changed while the full list was being built or sent.
                    batches = self.state.changes(full.version, current)
                for batch in batches:
                    yield batch

    def _changes(self, after: int, upto: int) -> list[RevocationBatch] | None:
        """``state.changes(after, upto)``, computed once per pair while ``upto`` is newest."""
        if upto != self._deltas_upto:
            if upto < self._deltas_upto:
                return self.state.changes(after, upto)  # a watcher behind: not shared
            self._deltas, self._deltas_upto = {}, upto
        if after not in self._deltas:
            self._deltas[after] = self.state.changes(after, upto)
        return self._deltas[after]

    async def full_list(self) -> FullList:
        """The whole list in parts: shared while current, otherwise built once (off the loop)."""
        full = self.state.current_full_list()
        if full is not None:
            return full
        if self._building is None or self._building.done():
            self._building = asyncio.ensure_future(asyncio.to_thread(self.state.build_full_list))
        return await asyncio.shield(self._building)
