"""Revoked sessions pushed by the auth service: a thread-safe ``sid`` set, and its follower thread.

The auth service's ``WatchRevocations`` stream sends the whole list first,
then each session as it is revoked; every entry carries the ``exp`` of the
session's last access token, after which it is dropped, so the set stays
small. :class:`RevocationList` follows that stream on a background thread,
reconnects with backoff (1 s doubling to 30 s) and takes the full list sent
after every reconnect as the new truth, so nothing revoked while it was away
is missed. While the stream is down, tokens of sessions revoked meanwhile
pass until their ``exp``, as they would at a verifier without push.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

from interceptors._reconnect import (
    RECONNECT_INITIAL,
    RECONNECT_MAX,
    Background,
    StreamEnd,
    check_reconnect,
    follow_with_backoff,
)

_LOGGER = logging.getLogger(__name__)

#: Seconds a revoked session is kept past its ``exp`` by default (above the usual 30 s leeway).
KEEP_AFTER_EXPIRY = 120.0


@dataclass(frozen=True, slots=True)
class RevocationBatch:
    """One message of the revocation stream.

    Attributes:
        full: ``sessions`` is the complete list and replaces the one held.
        sessions: ``{session id: exp of its last access token}``.
    """

    full: bool
    sessions: Mapping[str, float]


class RevocationStream(Protocol):
    """An open revocation stream."""

    def __iter__(self) -> Iterator[RevocationBatch]:
        """Yield batches as they arrive; end or raise when the stream breaks."""
        ...

    def cancel(self) -> None:
        """End the stream; safe to call from another thread."""
        ...


@runtime_checkable
class RevocationSource(Protocol):
    """Something that can open a revocation stream (:class:`AuthServiceSource` can)."""

    def watch_revocations(self) -> RevocationStream:
        """Open the stream; raise if that is impossible right now."""
        ...


@dataclass(frozen=True, slots=True, kw_only=True)
class RevocationStats:
    """Counters of a :class:`RevocationList`.

    Attributes:
        revoked: Sessions held now.
        updates: Batches applied.
        reconnects: Times the stream was opened again after it broke.
        synced: A full list arrived on the stream that is open now.
    """

    revoked: int
    updates: int
    reconnects: int
    synced: bool


class RevocationList(Background):
    """The revoked sessions a verifier must refuse; thread-safe, lookups lock-free.

    Use as a context manager, or call :meth:`start` and :meth:`close`. Give it to
    :class:`~interceptors.TokenVerifier` as ``revocations=``.
    """

    def __init__(
        self,
        source: RevocationSource | None = None,
        *,
        keep_after_expiry: float = KEEP_AFTER_EXPIRY,
        reconnect_initial: float = RECONNECT_INITIAL,
        reconnect_max: float = RECONNECT_MAX,
        now: Callable[[], float] = time.time,
    ) -> None:
        """Configure the list; nothing is opened until :meth:`start`.

        Args:
            source: Where revocations are pushed from; ``None`` for a list fed
                only by :meth:`revoke` / :meth:`apply`.
            keep_after_expiry: Seconds an entry is kept past its ``exp``; at least
                the verifier's clock leeway.
            reconnect_initial: First delay before reopening a broken stream, seconds.
            reconnect_max: Longest such delay, seconds.
            now: Clock (epoch seconds) that decides when entries are dropped.

        Raises:
            ValueError: A setting is out of range.
        """
        if keep_after_expiry < 0:
            raise ValueError("keep_after_expiry must not be negative")
        check_reconnect(reconnect_initial, reconnect_max)
        super().__init__()
        self._source = source
        self._keep = keep_after_expiry
        self._reconnect_initial = reconnect_initial
        self._reconnect_max = reconnect_max
        self._now = now
        # sid -> when to forget it. Replaced whole (copy on write): readers never lock.
        self._entries: dict[str, float] = {}
        self._updates = 0
        self._reconnects = 0
        self._synced = threading.Event()
        self._started = False

    # -- lifecycle ---------------------------------------------------------------------

    def start(self) -> None:
        """Start following the source on a background thread. Idempotent."""
        with self._lock:
            if self._source is None or self._started:
                return
            self._started = True
        self._launch(threading.Thread(target=self._follow_forever, name="ssot-revocations"))

    def close(self) -> None:
        """Stop following the stream. Idempotent; the entries held stay in force.

        The source stays open: whoever opened it closes it.
        """
        super().close()

    # -- lookups and updates -------------------------------------------------------------

    def is_revoked(self, session_id: str) -> bool:
        """Tell whether the session's tokens must be refused."""
        return session_id in self._entries

    def __len__(self) -> int:
        return len(self._entries)

    def revoke(self, session_id: str, expires_at: float) -> None:
        """Refuse ``session_id`` until ``expires_at`` (plus ``keep_after_expiry``)."""
        self.apply(RevocationBatch(full=False, sessions={session_id: expires_at}))

    def apply(self, batch: RevocationBatch) -> None:
        """Take a batch: a full list replaces the set, otherwise it is added."""
        now = self._now()
        with self._lock:
            entries = {} if batch.full else dict(self._entries)
            for sid, expires_at in batch.sessions.items():
                forget_at = float(expires_at) + self._keep
                entries[sid] = max(forget_at, entries.get(sid, forget_at))
            # Dropping what has expired here keeps the set small without a timer.
            self._entries = {sid: at for sid, at in entries.items() if at > now}
            self._updates += 1
        if batch.full:
            self._synced.set()
        if batch.sessions:
            _LOGGER.info(
                "revocation list %s: %d sessions",
                "replaced" if batch.full else "grew",
                len(batch.sessions),
            )

    def wait_until_synced(self, timeout: float) -> bool:
        """Wait up to ``timeout`` s for a full list on the open stream; return whether one came."""
        return self._synced.wait(timeout)

    @property
    def stats(self) -> RevocationStats:
        """A snapshot of the counters."""
        with self._lock:
            return RevocationStats(
                revoked=len(self._entries),
                updates=self._updates,
                reconnects=self._reconnects,
                synced=self._synced.is_set(),
            )

    # -- the background thread -------------------------------------------------------------

    def _follow_forever(self) -> None:
        source = self._source
        assert source is not None

        def follow_once(reconnecting: bool) -> StreamEnd:
            if reconnecting:
                with self._lock:
                    self._reconnects += 1
            try:
                return self._follow_once(source)
            finally:
                self._synced.clear()

        follow_with_backoff(
            follow_once,
            self._closing,
            what="revocation stream",
            initial=self._reconnect_initial,
            maximum=self._reconnect_max,
            logger=_LOGGER,
        )

    def _follow_once(self, source: RevocationSource) -> StreamEnd:
        """Open the stream and apply it until it ends."""
        try:
            stream = source.watch_revocations()
        except Exception as exc:  # noqa: BLE001 - any failure means: retry later
            return StreamEnd(delivered=False, why=f"could not be opened ({type(exc).__name__})")
        if not self._hold_stream(stream):
            return StreamEnd(delivered=False, why="closed")
        delivered = False
        try:
            for batch in stream:
                self.apply(batch)
                delivered = True
        except Exception as exc:  # noqa: BLE001 - keep following whatever the stream did
            return StreamEnd(delivered=delivered, why=f"broke ({type(exc).__name__})")
        finally:
            self._release_stream()
        return StreamEnd(delivered=delivered, why="ended")
