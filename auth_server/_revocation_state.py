"""The revocation list as the publisher holds it: merged reads, a change log, expiry, full lists.

Private to :mod:`auth_server.revocations`. Everything here costs what changed,
not the size of the list, except building a full list for watchers that join,
which is done once per version and shared by every watcher that joins while it
is current (and only rebuilt once enough has changed since).
"""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

from auth_server._revocationrows import RevocationRead, Watermark

#: A message of a full list holds entries worth about this many bytes on the
#: wire; gRPC clients refuse messages over 4 MiB by default.
DEFAULT_CHUNK_BYTES = 512 * 1024
#: Changes kept for watchers that are behind; one further behind gets a full list.
DEFAULT_LOG_ENTRIES = 100_000
#: Entries leave the publisher's list in steps of this many seconds (verifiers
#: drop them on their own at their exact time).
_EXPIRY_STEP = 10.0
# Rough wire size of an entry beyond its id: tags, lengths, two varints.
_ENTRY_OVERHEAD = 16


@dataclass(frozen=True, slots=True)
class RevocationBatch:
    """One message of a WatchRevocations stream.

    Attributes:
        full: This message starts a full list (replaces what the verifier holds);
            otherwise its entries are new.
        sessions: ``{session id: exp of its last access token}``.
        watermarks: ``{subject: watermark}``; the subject ``""`` is everyone.
        continues: More of the same full list follows.
        memo: Scratch space for the wire encoding of a batch that many watchers
            are sent (the parts of a shared full list); not part of its value.
    """

    full: bool
    sessions: Mapping[str, float]
    watermarks: Mapping[str, Watermark] = field(default_factory=dict)
    continues: bool = False
    memo: dict[str, Any] = field(default_factory=dict, compare=False, repr=False)


@dataclass(frozen=True, slots=True)
class FullList:
    """The whole list at one version, cut into messages."""

    version: int
    batches: tuple[RevocationBatch, ...]


@dataclass(slots=True)
class _Changes:
    sessions: dict[str, float] = field(default_factory=dict)
    watermarks: dict[str, Watermark] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.sessions) + len(self.watermarks)


class RevocationState:
    """Revoked sessions and watermarks, with the changes of recent versions; thread-safe.

    :meth:`merge` runs in the publisher's read thread, the other methods on its
    event loop; each holds the lock only briefly (building a full list copies
    the two dicts under it and cuts them into messages outside it).
    """

    def __init__(
        self,
        *,
        retention: float,
        now: Callable[[], float],
        chunk_bytes: int = DEFAULT_CHUNK_BYTES,
        log_entries: int = DEFAULT_LOG_ENTRIES,
    ) -> None:
        """Create an empty list.

        Args:
            retention: Seconds an entry is kept past its ``expires_at``.
            now: Clock, epoch seconds.
            chunk_bytes: Target wire size of one message of a full list or a delta.
            log_entries: Entries of recent changes kept for watchers that are behind.
        """
        self._retention = retention
        self._now = now
        self._chunk_bytes = chunk_bytes
        self._log_limit = log_entries
        self._lock = threading.Lock()
        self.version = 0
        self._sessions: dict[str, float] = {}
        self._watermarks: dict[str, Watermark] = {}
        # Expiry buckets: step index -> keys whose entry may be forgotten in that step.
        self._session_buckets: dict[int, list[str]] = {}
        self._watermark_buckets: dict[int, list[str]] = {}
        self._expired_through = int(now() // _EXPIRY_STEP) - 1
        # (version, what that version added); every change after _log_floor is in it.
        self._log: deque[tuple[int, _Changes]] = deque()
        self._log_size = 0
        self._log_floor = 0
        self._full: FullList | None = None

    def __len__(self) -> int:
        return len(self._sessions) + len(self._watermarks)

    @property
    def sessions(self) -> Mapping[str, float]:
        """The revoked sessions held (live view; for tests and stats)."""
        return self._sessions

    @property
    def watermarks(self) -> Mapping[str, Watermark]:
        """The watermark entries held (live view; for tests and stats)."""
        return self._watermarks

    # -- the read thread -------------------------------------------------------------

    def merge(self, read: RevocationRead, *, full: bool) -> int:
        """Take a read: a full one replaces the list, otherwise only what is new counts.

        Returns:
            The version after the merge; it grows only when watchers must hear of something.
        """
        now = self._now()
        with self._lock:
            self._expire(now)
            if full:
                self._replace(read, now)
                return self.version
            news = _Changes()
            for sid, exp in read.sessions.items():
                if exp > self._sessions.get(sid, float("-inf")) and self._keep(exp, now):
                    news.sessions[sid] = exp
            for subject, mark in read.watermarks.items():
                held = self._watermarks.get(subject)
                if (held is None or _later(mark, held)) and self._keep(mark.expires_at, now):
                    news.watermarks[subject] = mark if held is None else _merged(held, mark)
            if news:
                self._add(news)
                self.version += 1
                self._log.append((self.version, news))
                self._log_size += len(news)
                self._trim_log()
            return self.version

    def _replace(self, read: RevocationRead, now: float) -> None:
        self._sessions, self._watermarks = {}, {}
        self._session_buckets, self._watermark_buckets = {}, {}
        self._add(
            _Changes(
                sessions={s: e for s, e in read.sessions.items() if self._keep(e, now)},
                watermarks={
                    s: m for s, m in read.watermarks.items() if self._keep(m.expires_at, now)
                },
            )
        )
        self.version += 1
        self._log.clear()
        self._log_size = 0
        self._log_floor = self.version
        self._full = None

    def _add(self, changes: _Changes) -> None:
        self._sessions.update(changes.sessions)
        self._watermarks.update(changes.watermarks)
        for sid, exp in changes.sessions.items():
            self._session_buckets.setdefault(self._step(exp), []).append(sid)
        for subject, mark in changes.watermarks.items():
            self._watermark_buckets.setdefault(self._step(mark.expires_at), []).append(subject)

    def _keep(self, expires_at: float, now: float) -> bool:
        return expires_at + self._retention > now

    def _step(self, expires_at: float) -> int:
        return int((expires_at + self._retention) // _EXPIRY_STEP)

    def _expire(self, now: float) -> None:
        # Whole steps that have ended: each entry in them is checked against its
        # current expiry (a later one moved it to a later step too).
        last = int(now // _EXPIRY_STEP) - 1
        for step in range(self._expired_through + 1, last + 1):
            for sid in self._session_buckets.pop(step, ()):
                exp = self._sessions.get(sid)
                if exp is not None and not self._keep(exp, now):
                    del self._sessions[sid]
            for subject in self._watermark_buckets.pop(step, ()):
                mark = self._watermarks.get(subject)
                if mark is not None and not self._keep(mark.expires_at, now):
                    del self._watermarks[subject]
        self._expired_through = max(self._expired_through, last)

    def _trim_log(self) -> None:
        while self._log_size > self._log_limit and len(self._log) > 1:
            version, changes = self._log.popleft()
            self._log_size -= len(changes)
            self._log_floor = version
        if self._full is not None and self._full.version < self._log_floor:
            self._full = None  # no longer followed by the changes since it

    # -- watchers ----------------------------------------------------------------------

    def changes(self, after: int, upto: int) -> list[RevocationBatch] | None:
        """What versions ``after`` (exclusive) to ``upto`` added, as messages; None if forgotten."""
        with self._lock:
            if after < self._log_floor:
                return None
            merged = _Changes()
            for version, changes in reversed(self._log):
                if version <= after:
                    break
                if version > upto:
                    continue
                # Newest first: an older value never overwrites a newer one.
                for sid, exp in changes.sessions.items():
                    merged.sessions.setdefault(sid, exp)
                for subject, mark in changes.watermarks.items():
                    merged.watermarks.setdefault(subject, mark)
        if not merged:
            return []
        return list(self._cut(merged, full=False))

    def current_full_list(self) -> FullList | None:
        """The shared full list, if one is built and little has changed since."""
        with self._lock:
            full = self._full
            if full is None or full.version < self._log_floor:
                return None
            since = sum(len(c) for v, c in self._log if v > full.version)
            if since > max(1024, len(self) // 8):
                return None
            return full

    def build_full_list(self) -> FullList:
        """Cut the list as it is now into messages (O(size): call it off the event loop)."""
        with self._lock:
            version = self.version
            snapshot = _Changes(dict(self._sessions), dict(self._watermarks))
        full = FullList(version=version, batches=tuple(self._cut(snapshot, full=True)))
        with self._lock:
            if self._full is None or self._full.version < version:
                self._full = full
        return full

    def _cut(self, changes: _Changes, *, full: bool) -> Iterator[RevocationBatch]:
        """Messages of at most about ``chunk_bytes`` each; a full list has at least one."""
        pending: list[RevocationBatch] = []
        sessions: dict[str, float] = {}
        watermarks: dict[str, Watermark] = {}
        size = 0

        def flush() -> None:
            nonlocal sessions, watermarks, size
            pending.append(RevocationBatch(full=False, sessions=sessions, watermarks=watermarks))
            sessions, watermarks, size = {}, {}, 0

        for subject, mark in changes.watermarks.items():
            if size >= self._chunk_bytes:
                flush()
            watermarks[subject] = mark
            size += len(subject) + _ENTRY_OVERHEAD + 8
        for sid, exp in changes.sessions.items():
            if size >= self._chunk_bytes:
                flush()
            sessions[sid] = exp
            size += len(sid) + _ENTRY_OVERHEAD
        if sessions or watermarks or (full and not pending):
            flush()
        last = len(pending) - 1
        for index, batch in enumerate(pending):
            yield RevocationBatch(
                full=full and index == 0,
                sessions=batch.sessions,
                watermarks=batch.watermarks,
                continues=full and index < last,
            )


def _later(new: Watermark, held: Watermark) -> bool:
    return new.issued_before > held.issued_before or new.expires_at > held.expires_at


def _merged(held: Watermark, new: Watermark) -> Watermark:
    return Watermark(
        issued_before=max(held.issued_before, new.issued_before),
        expires_at=max(held.expires_at, new.expires_at),
    )
