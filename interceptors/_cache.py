"""The verifier's key cache: one thread-safe core shared by sync and asyncio callers.

What it does that PyJWT's ``PyJWKClient`` does not (see DESIGN.md, "Key cache
behaviour"):

* the current :class:`KeySet` is immutable and swapped atomically, so a known
  ``kid`` is a lock-free dictionary lookup;
* every fetch is single flight: a burst of unknown ``kid``s from threads and
  tasks alike shares one request;
* the unknown-``kid`` cooldown counts from any attempt, failures back off
  (1 s doubling to 30 s), and ``kid``s found missing are remembered (a bounded
  LRU; a later load that has one still serves it), so neither an outage nor a
  flood of random ``kid``s becomes a fetch storm;
* routine refreshes happen in the background at ``refresh_ratio`` of max-age;
* when the source is down the last good set is served for ``stale_for`` past
  its expiry; an unknown ``kid`` meanwhile is ``UNAVAILABLE`` (the key may be
  new), never ``UNAUTHENTICATED``;
* a push source (``WatchJwks``) replaces the set the moment the issuer changes it.

No lock is held during network I/O, and every wait is bounded.

The cache is three layers, each in its own module: this one answers lookups
(:class:`KeyCache`, the public face, with the memory of missing ``kid``s);
:class:`~interceptors._key_loader.KeyLoader` fetches and follows pushes;
:class:`~interceptors._key_holder.KeyHolder` holds the set and its ages.
Settings and counters are plain values in :mod:`interceptors._cache_settings`.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import OrderedDict
from collections.abc import Callable

from interceptors._cache_settings import CacheSettings, CacheStats
from interceptors._errors import AuthError, KeysUnavailable, UnknownKey
from interceptors._key_loader import Flight, KeyLoader
from interceptors._keyset import KeySet, VerificationKey
from interceptors._sources import KeySource


class KeyCache(KeyLoader):
    """Holds the issuer's public keys and keeps them current.

    Use as a context manager, or call :meth:`start` and :meth:`close`.
    """

    def __init__(
        self,
        source: KeySource,
        settings: CacheSettings | None = None,
        *,
        now: Callable[[], float] = time.monotonic,
        background: bool = True,
    ) -> None:
        """Configure the cache; nothing is fetched until needed or :meth:`start`.

        Args:
            source: Where the keys come from (not closed by :meth:`close`).
            settings: Fetching, trust and ageing rules; the defaults when ``None``.
            now: The clock that drives expiry, cooldown and backoff.
            background: Whether :meth:`start` runs background threads; without
                them a fetch happens only when a lookup needs one.
        """
        super().__init__(
            source, settings if settings is not None else CacheSettings(), now, background
        )
        self._missing: OrderedDict[str, None] = OrderedDict()
        self._suppressed = 0

    # -- lookups ---------------------------------------------------------------------

    def get_key(self, kid: str) -> VerificationKey:
        """Return the key for ``kid``, fetching the set if that is warranted.

        Blocks at most ``fetch_timeout`` seconds.

        Raises:
            UnknownKey: The issuer's current set has no such key.
            KeysUnavailable: No set could be loaded, or the set could not be
                refreshed to look for a possibly new key.
        """
        step = self._decide(kid)
        if isinstance(step, VerificationKey):
            return step
        if isinstance(step, AuthError):
            # Deleted on the way out: a frame holding the exception it raises, on that
            # exception's own traceback, is a reference cycle. It kept the whole refused
            # call (the interceptor's frames, the gRPC context, its HTTP/2 stream, which
            # counts against max_concurrent_streams) alive until a garbage collection;
            # with the collector's first threshold raised (auth_server._gc), an
            # unknown-kid flood met REFUSED_STREAM.
            try:
                raise step
            finally:
                del step
        with contextlib.suppress(TimeoutError):
            step.result(timeout=self._settings.fetch_timeout)
        return self._resolve(kid, step)

    async def aget_key(self, kid: str) -> VerificationKey:
        """Like :meth:`get_key`, but waits for a fetch without blocking the event loop."""
        step = self._decide(kid)
        if isinstance(step, VerificationKey):
            return step
        if isinstance(step, AuthError):
            try:
                raise step
            finally:
                del step  # see get_key
        # The flight future is already running, so cancelling the asyncio
        # wrapper on timeout cannot cancel the fetch other callers share.
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(asyncio.wrap_future(step), self._settings.fetch_timeout)
        return self._resolve(kid, step)

    def add_removal_listener(self, callback: Callable[[frozenset[str]], None]) -> None:
        """Call ``callback(kids)`` whenever keys leave the set (or change material).

        It runs on whichever thread applied the change and should be quick.
        """
        with self._lock:
            self._listeners.append(callback)

    def wait_until_loaded(self, timeout: float) -> bool:
        """Wait up to ``timeout`` seconds for a usable key set; return whether there is one."""
        deadline = time.monotonic() + timeout
        if self.key_set is not None:
            return True
        if self._refreshing:
            self._loaded.wait(max(deadline - time.monotonic(), 0.0))
            return self.key_set is not None
        now = self._now()
        with self._lock:
            flight = self._inflight
            if flight is None and now >= self._retry_at:
                flight = self._begin_flight_locked()
        if flight is not None:
            with contextlib.suppress(TimeoutError):
                flight.result(timeout=max(deadline - time.monotonic(), 0.0))
        return self.key_set is not None

    @property
    def settings(self) -> CacheSettings:
        """The settings this cache runs with."""
        return self._settings

    @property
    def key_set(self) -> KeySet | None:
        """The set in use (possibly stale), or ``None`` if there is none."""
        entry = self._current(self._now())
        return entry.key_set if entry is not None else None

    @property
    def stats(self) -> CacheStats:
        """A snapshot of the counters."""
        with self._lock:
            return CacheStats(
                fetches=self._fetches,
                fetch_failures=self._fetch_failures,
                pushes=self._pushes,
                stale_serves=self._stale_serves,
                last_success=self._last_success,
                suppressed_refetches=self._suppressed,
            )

    @property
    def loads_in_background(self) -> bool:
        """Whether :meth:`start` loads keys ahead of calls (``background=True``)."""
        return self._background

    @property
    def serving_stale(self) -> bool:
        """Whether the set in use is past its max-age (kept because no fresh one came)."""
        entry = self._current(self._now())
        return entry is not None and self._now() >= entry.expires_at

    # -- lookup internals --------------------------------------------------------------

    def _decide(self, kid: str) -> VerificationKey | AuthError | Flight:
        """Answer from memory, or say which error to raise or which fetch to wait for."""
        # The error is returned, not raised, so that the sync and the async
        # lookup share this one decision, taken under one lock acquisition;
        # only the wait for a flight differs between them, and they do it
        # after the lock is released.
        now = self._now()
        entry = self._current(now)
        if entry is not None:
            key = entry.key_set.get(kid)
            if key is not None:
                if now >= entry.refresh_at and not self._refreshing:
                    flight = self._refresh_flight(now)
                    if flight is not None:
                        return flight
                if now >= entry.expires_at:
                    self._note_stale()
                return key
        with self._lock:
            if entry is not None and kid in self._missing:
                self._missing.move_to_end(kid)
                self._suppressed += 1
                return self._no_fetch_error()
            if self._inflight is not None:
                return self._inflight
            if now < self._retry_at:
                return KeysUnavailable("key source failing; next attempt after backoff")
            if (
                entry is not None
                and self._last_attempt_at is not None
                and now - self._last_attempt_at < self._settings.cooldown
            ):
                self._suppressed += 1
                return self._no_fetch_error()
            return self._begin_flight_locked()

    def _resolve(self, kid: str, flight: Flight) -> VerificationKey:
        """Answer after waiting for ``flight`` (which may still be running)."""
        now = self._now()
        entry = self._current(now)
        if entry is not None:
            key = entry.key_set.get(kid)
            if key is not None:
                if now >= entry.expires_at:
                    self._note_stale()
                return key
            if flight.done() and flight.result():
                self._remember_missing(kid)
                raise UnknownKey("kid not in the issuer's key set")
        raise KeysUnavailable("key set could not be loaded in time")

    def _no_fetch_error(self) -> AuthError:
        if self._last_attempt_ok:
            return UnknownKey("kid not in the issuer's key set")
        return KeysUnavailable("key source failing; the kid may be new")

    def _remember_missing(self, kid: str) -> None:
        memory = self._settings.missing_kid_memory
        if memory == 0:
            return
        with self._lock:
            self._missing[kid] = None
            self._missing.move_to_end(kid)
            while len(self._missing) > memory:
                self._missing.popitem(last=False)
