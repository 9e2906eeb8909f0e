"""Revocations pushed by the auth service: sessions and watermarks, and their follower thread.

The auth service's ``WatchRevocations`` stream sends the whole list first (in
as many messages as it takes), then each revocation as it happens: a revoked
session (``sid``), or a watermark, "every token of this subject (or of
everyone) issued before T". Every entry carries the ``exp`` of the last token
it refuses, after which it is dropped, so the list stays small.
:class:`RevocationList` follows that stream on a background thread,
reconnects with backoff (1 s doubling to 30 s) and takes the full list sent
after every reconnect as the new truth, so nothing revoked while it was away
is missed; a full list counts only once its last part is in. While the stream
is down, tokens of sessions revoked meanwhile pass until their ``exp``, as they
would at a verifier without push, unless ``fail_closed_after`` is set: then
every token is refused with ``UNAVAILABLE`` until the list has synced, and
once the stream has been down for longer than that bound.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Protocol, runtime_checkable

from interceptors._errors import RevocationsUnavailable
from interceptors._reconnect import (
    RECONNECT_INITIAL,
    RECONNECT_MAX,
    Background,
    StreamEnd,
    check_reconnect,
    follow_with_backoff,
    server_left,
)
from interceptors._revocation_entries import RevocationEntries, Watermark

_LOGGER = logging.getLogger(__name__)

#: Seconds a revoked session is kept past its ``exp`` by default (above the usual 30 s leeway).
KEEP_AFTER_EXPIRY = 120.0


@dataclass(frozen=True, slots=True)
class RevocationBatch:
    """One message of the revocation stream.

    Attributes:
        full: This message starts a full list, which replaces the one held once
            complete; otherwise its entries are added.
        sessions: ``{session id: exp of its last access token}``.
        watermarks: ``{subject: watermark}``; the subject ``""`` is everyone.
        continues: More of the same full list follows.
    """

    full: bool
    sessions: Mapping[str, float]
    watermarks: Mapping[str, Watermark] = field(default_factory=dict)
    continues: bool = False


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
        watermarks: Watermark entries held (per subject, plus one for everyone).
    """

    revoked: int
    updates: int
    reconnects: int
    synced: bool
    watermarks: int = 0


class RevocationList(Background):
    """The revocations a verifier must honour; thread-safe, lookups lock-free and O(1).

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
        fail_closed_after: float | None = None,
        monotonic: Callable[[], float] = time.monotonic,
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
            fail_closed_after: ``None`` (the default): fail open, tokens pass on
                what the list holds whether or not it is in sync. Seconds: refuse
                every token with :class:`~interceptors.RevocationsUnavailable`
                (``UNAVAILABLE``) before the first full list has arrived, and once
                the stream has been out of sync for longer than this.
            monotonic: Clock for ``fail_closed_after``.

        Raises:
            ValueError: A setting is out of range.
        """
        if keep_after_expiry < 0:
            raise ValueError("keep_after_expiry must not be negative")
        check_reconnect(reconnect_initial, reconnect_max)
        if fail_closed_after is not None and not fail_closed_after >= 0:
            raise ValueError("fail_closed_after must not be negative")
        super().__init__()
        self._source = source
        self._keep = keep_after_expiry
        self._reconnect_initial = reconnect_initial
        self._reconnect_max = reconnect_max
        self._now = now
        self._entries = RevocationEntries(keep_after_expiry=keep_after_expiry, now=now)
        self._fail_closed_after = fail_closed_after
        self._monotonic = monotonic
        # When the list went out of sync (monotonic); None while in sync. Out of
        # sync from the start: nothing has been received yet.
        self._unsynced_since: float | None = monotonic()
        self._ever_synced = False
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
        return self._entries.session_revoked(session_id)

    def refuses(self, *, session_id: str | None, subject: str, issued_at: int) -> bool:
        """Tell whether a token of this ``sid``, ``sub`` and ``iat`` must be refused.

        Checks the session, the subject's watermark and the one for everyone.

        Raises:
            RevocationsUnavailable: Fail closed is on and the list is out of sync.
        """
        if self._fail_closed_after is not None:
            since = self._unsynced_since
            if since is not None and (
                not self._ever_synced or self._monotonic() - since > self._fail_closed_after
            ):
                raise RevocationsUnavailable("the revocation list is out of sync")
        return self._entries.refuses(session_id=session_id, subject=subject, issued_at=issued_at)

    def __len__(self) -> int:
        return len(self._entries)

    def revoke(self, session_id: str, expires_at: float) -> None:
        """Refuse ``session_id`` until ``expires_at`` (plus ``keep_after_expiry``)."""
        self.apply(RevocationBatch(full=False, sessions={session_id: expires_at}))

    def apply(self, batch: RevocationBatch) -> None:
        """Take a batch: a full list replaces the entries once complete, otherwise it adds."""
        completed = self._entries.apply(
            full=batch.full,
            continues=batch.continues,
            sessions=batch.sessions,
            watermarks=batch.watermarks,
        )
        with self._lock:
            self._updates += 1
            if completed:
                self._unsynced_since = None
                self._ever_synced = True
        if completed:
            self._synced.set()
            _LOGGER.info(
                "revocation list replaced: %d sessions, %d watermarks",
                self._entries.sessions,
                self._entries.watermarks,
            )
        elif not batch.full and (batch.sessions or batch.watermarks) and not batch.continues:
            _LOGGER.info(
                "revocation list grew: %d sessions, %d watermarks",
                len(batch.sessions),
                len(batch.watermarks),
            )

    def wait_until_synced(self, timeout: float) -> bool:
        """Wait up to ``timeout`` s for a full list on the open stream; return whether one came."""
        return self._synced.wait(timeout)

    @property
    def stats(self) -> RevocationStats:
        """A snapshot of the counters."""
        with self._lock:
            return RevocationStats(
                revoked=self._entries.sessions,
                updates=self._updates,
                reconnects=self._reconnects,
                synced=self._synced.is_set(),
                watermarks=self._entries.watermarks,
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
                self._out_of_sync()

        follow_with_backoff(
            follow_once,
            self._closing,
            what="revocation stream",
            initial=self._reconnect_initial,
            maximum=self._reconnect_max,
            logger=_LOGGER,
        )

    def _out_of_sync(self) -> None:
        # The stream ended: a full list half received is dropped (the entries held
        # stay in force) and the clock of fail_closed_after starts.
        if self._entries.abandon_full_list():
            _LOGGER.warning("revocation stream ended during a full list; keeping the previous one")
        with self._lock:
            if self._unsynced_since is None:
                self._unsynced_since = self._monotonic()
        self._synced.clear()

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
            return StreamEnd(
                delivered=delivered,
                why=f"broke ({type(exc).__name__})",
                server_left=server_left(exc),
            )
        finally:
            self._release_stream()
        return StreamEnd(delivered=delivered, why="ended")
