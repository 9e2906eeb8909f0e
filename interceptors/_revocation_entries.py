"""What a :class:`~interceptors.RevocationList` holds, and the full list it is receiving.

Three kinds of entry, each checked in O(1) on every call: revoked sessions
(``sid``), per-subject watermarks ("every token of ``sub`` issued before T") and
one watermark for everyone (``ssot-auth sessions revoke --all``). A full list
may arrive in several messages; it is assembled aside and only replaces the
entries once its last part is in, so a stream that breaks half-way leaves the
previous list in force.

Lookups take no lock: a delta is added to the live dicts in place (one dict
operation per entry, atomic under the GIL) and a full list is swapped in
whole, so a delta costs what it carries, not the size of the list.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

#: Expired entries are swept out at most this often (seconds); until then they
#: only cost memory, since the tokens they refuse have expired too.
_SWEEP_EVERY = 60.0


@dataclass(frozen=True, slots=True)
class Watermark:
    """Every access token of a subject (or of everyone) issued before a time is refused.

    Attributes:
        issued_before: Epoch seconds; a token whose ``iat`` is earlier is refused.
        expires_at: No token this refuses lives past it (epoch seconds).
    """

    issued_before: int
    expires_at: float


@dataclass(slots=True)
class _Held:
    sessions: dict[str, float] = field(default_factory=dict)  # sid -> forget at
    subjects: dict[str, tuple[int, float]] = field(default_factory=dict)  # (before, forget at)
    everyone: tuple[int, float] | None = None


class RevocationEntries:
    """Revoked sessions and watermarks; writers serialised by a lock, readers lock-free."""

    def __init__(self, *, keep_after_expiry: float, now: Callable[[], float]) -> None:
        self._keep = keep_after_expiry
        self._now = now
        self._lock = threading.Lock()
        self._held = _Held()
        self._pending: _Held | None = None
        self._next_sweep = 0.0

    # -- lookups (no lock) ------------------------------------------------------------

    def session_revoked(self, session_id: str) -> bool:
        """Whether tokens carrying ``sid`` = ``session_id`` must be refused."""
        return session_id in self._held.sessions

    def refuses(self, *, session_id: str | None, subject: str, issued_at: int) -> bool:
        """Whether a token of this session, subject and ``iat`` must be refused."""
        held = self._held
        if session_id is not None and session_id in held.sessions:
            return True
        everyone = held.everyone
        if everyone is not None and issued_at < everyone[0]:
            return True
        mark = held.subjects.get(subject)
        return mark is not None and issued_at < mark[0]

    def __len__(self) -> int:
        held = self._held
        return len(held.sessions) + len(held.subjects) + (held.everyone is not None)

    @property
    def sessions(self) -> int:
        """Revoked sessions held."""
        return len(self._held.sessions)

    @property
    def watermarks(self) -> int:
        """Watermark entries held (subjects, plus one for everyone if set)."""
        held = self._held
        return len(held.subjects) + (held.everyone is not None)

    # -- updates ------------------------------------------------------------------------

    def apply(
        self,
        *,
        full: bool,
        continues: bool,
        sessions: Mapping[str, float],
        watermarks: Mapping[str, Watermark],
    ) -> bool:
        """Take one message; return True when it completed a full list.

        A message that starts a full list (``full``) opens a new set aside;
        later messages add to it while one is open, and the one without
        ``continues`` swaps it in. Other messages add to the live entries.
        """
        now = self._now()
        with self._lock:
            if full:
                self._pending = _Held()
            target = self._pending if self._pending is not None else self._held
            self._add(target, sessions, watermarks, now)
            if self._pending is None or continues:
                self._sweep(now)
                return False
            self._held, self._pending = self._pending, None
            self._next_sweep = now + _SWEEP_EVERY
            return True

    def abandon_full_list(self) -> bool:
        """Drop a full list that will never complete (its stream broke); True if one was open."""
        with self._lock:
            had, self._pending = self._pending is not None, None
        return had

    def _add(
        self,
        held: _Held,
        sessions: Mapping[str, float],
        watermarks: Mapping[str, Watermark],
        now: float,
    ) -> None:
        keep = self._keep
        entries = held.sessions
        for sid, expires_at in sessions.items():
            forget_at = float(expires_at) + keep
            if forget_at > now and forget_at > entries.get(sid, 0.0):
                entries[sid] = forget_at
        for subject, mark in watermarks.items():
            forget_at = float(mark.expires_at) + keep
            if forget_at <= now:
                continue
            before = held.everyone if subject == "" else held.subjects.get(subject)
            if before is not None:
                merged = (max(before[0], mark.issued_before), max(before[1], forget_at))
            else:
                merged = (int(mark.issued_before), forget_at)
            if subject == "":
                held.everyone = merged
            else:
                held.subjects[subject] = merged

    def _sweep(self, now: float) -> None:
        if now < self._next_sweep:
            return
        self._next_sweep = now + _SWEEP_EVERY
        held = self._held
        # Rebuilt aside and swapped: readers never see a dict change size under them.
        self._held = _Held(
            sessions={sid: at for sid, at in held.sessions.items() if at > now},
            subjects={s: m for s, m in held.subjects.items() if m[1] > now},
            everyone=held.everyone if held.everyone is None or held.everyone[1] > now else None,
        )
