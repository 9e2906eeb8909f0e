"""The key set a :class:`~interceptors.KeyCache` serves, how it ages, and who hears it change.

:class:`KeyHolder` is the bottom of the cache's three layers: it holds the
current set (immutable, swapped whole, so a lookup reads it without the lock),
installs a loaded set with its refresh, expiry and drop times, drops a set kept
``stale_for`` past its expiry, and tells the removal listeners which ``kid``s
left. It does not load anything: :class:`~interceptors._key_loader.KeyLoader`
fetches and follows pushes, and :class:`~interceptors.KeyCache` answers lookups.
"""

from __future__ import annotations

import logging
import math
import threading
from collections.abc import Callable
from dataclasses import dataclass

from interceptors._cache_settings import CacheSettings
from interceptors._keyset import KeySet, departed_kids
from interceptors._reconnect import Background

# The key cache's log lines keep the one logger name they had before it was split.
_LOGGER = logging.getLogger("interceptors._cache")


@dataclass(frozen=True, slots=True)
class _Entry:
    key_set: KeySet
    refresh_at: float
    expires_at: float
    drop_at: float


class KeyHolder(Background):
    """The current key set and its ages; ``self._lock`` guards the rest of the state."""

    def __init__(self, settings: CacheSettings, now: Callable[[], float]) -> None:
        super().__init__()
        self._settings = settings
        self._now = now
        # Read without the lock on the hot path: an immutable entry, replaced whole.
        self._entry: _Entry | None = None
        self._listeners: list[Callable[[frozenset[str]], None]] = []
        self._stale_serves = 0
        self._stale_warned = False
        self._last_success: float | None = None
        # Set when a set is installed or dropped (and when a fetch ends): the refresh
        # loop re-plans. _loaded is set while there is a set, for wait_until_loaded.
        self._wake = threading.Event()
        self._loaded = threading.Event()

    def _current(self, now: float) -> _Entry | None:
        entry = self._entry
        if entry is not None and now >= entry.drop_at:
            self._drop(entry)
            return None
        return entry

    def _note_stale(self) -> None:
        with self._lock:
            self._stale_serves += 1
            warn = not self._stale_warned
            self._stale_warned = True
        if warn:
            _LOGGER.warning(
                "signing keys are past their max-age and the key source is unreachable;"
                " serving the last good set for up to %.0f s",
                self._settings.stale_for,
            )

    def _lifetime(self, max_age: float | None) -> float:
        settings = self._settings
        if max_age is None or math.isnan(max_age):
            max_age = settings.default_max_age
        if max_age == math.inf:
            return math.inf
        return min(max(max_age, settings.min_max_age), settings.max_max_age)

    def _install_locked(self, key_set: KeySet, max_age: float | None, now: float) -> KeySet | None:
        """Make ``key_set`` current; return the set it replaced. Caller holds the lock."""
        lifetime = self._lifetime(max_age)
        old = self._entry
        self._entry = _Entry(
            key_set=key_set,
            refresh_at=now + lifetime * self._settings.refresh_ratio,
            expires_at=now + lifetime,
            drop_at=now + lifetime + self._settings.stale_for,
        )
        self._last_success = now
        self._stale_warned = False
        self._loaded.set()
        return old.key_set if old is not None else None

    def _installed(self, old: KeySet | None, new: KeySet) -> None:
        if old is not None and old is not new:
            self._notify(departed_kids(old, new))

    def _drop(self, entry: _Entry) -> None:
        with self._lock:
            if self._entry is not entry:
                return
            self._entry = None
            self._loaded.clear()
        _LOGGER.error(
            "dropping signing keys: the key source has been unreachable for %.0f s past"
            " their expiry; tokens are UNAVAILABLE until it answers",
            self._settings.stale_for,
        )
        self._notify(entry.key_set.kids)
        self._wake.set()

    def _notify(self, kids: frozenset[str]) -> None:
        if not kids:
            return
        with self._lock:
            listeners = list(self._listeners)
        for listener in listeners:
            try:
                listener(kids)
            except Exception:  # one bad listener must not stop the others
                _LOGGER.exception("key removal listener failed")
