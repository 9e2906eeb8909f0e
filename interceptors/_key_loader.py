"""How a :class:`~interceptors.KeyCache` loads keys: fetch flights, the refresh loop, pushes.

:class:`KeyLoader` is the middle of the cache's three layers. Every fetch is one
shared flight (a future that all waiters, threads and tasks alike, wait on) run
on its own thread, so no lock is held during network I/O; a failed fetch backs
off (1 s doubling to 30 s, on the injected clock). With background threads, one
refreshes the set at ``refresh_ratio`` of its lifetime and one follows the
source's push stream (``WatchJwks``), reopening it with backoff and fetching
once after each reconnect. What it loads, it hands to
:class:`~interceptors._key_holder.KeyHolder` to install.
"""

from __future__ import annotations

import concurrent.futures
import logging
import math
import threading
from collections.abc import Callable
from typing import TypeAlias

from interceptors._cache_settings import CacheSettings
from interceptors._errors import KeySetError, KeySourceError
from interceptors._key_holder import KeyHolder
from interceptors._keyset import KeySet
from interceptors._reconnect import StreamEnd, follow_with_backoff, server_left
from interceptors._sources import FetchResult, KeySource, KeyWatch

# The key cache's log lines keep the one logger name they had before it was split.
_LOGGER = logging.getLogger("interceptors._cache")

# Failure backoff for fetches, on the injected clock.
_BACKOFF_INITIAL = 1.0
_BACKOFF_MAX = 30.0
# The refresh thread re-reads the clock at least this often (real seconds).
_MAX_IDLE_WAIT = 60.0

Flight: TypeAlias = concurrent.futures.Future[bool]  # True when the fetch succeeded


class KeyLoader(KeyHolder):
    """Fetches the key set on demand and on schedule, and applies pushed sets."""

    def __init__(
        self,
        source: KeySource,
        settings: CacheSettings,
        now: Callable[[], float],
        background: bool,
    ) -> None:
        super().__init__(settings, now)
        self._source = source
        self._background = background
        self._inflight: Flight | None = None
        self._push_seq = 0
        self._last_attempt_at: float | None = None
        self._last_attempt_ok = True
        self._failures = 0
        self._retry_at = -math.inf
        self._outage = False
        self._fetches = 0
        self._fetch_failures = 0
        self._pushes = 0
        self._started = False
        self._refreshing = False  # a background thread owns routine refreshes

    # -- lifecycle -------------------------------------------------------------------

    def start(self) -> None:
        """Start the background refresh (and push) threads; they begin the first load.

        Idempotent. With ``background=False`` nothing is started.
        """
        with self._lock:
            if self._started or self._closed:
                return
            self._started = True
            if not self._background:
                return
            self._refreshing = True
        push = False
        watch: KeyWatch | None = None
        try:
            watch = self._source.watch()
            push = watch is not None
        except KeySourceError as exc:
            _LOGGER.warning("cannot open the key push stream yet: %s", exc.log_detail)
            push = True
        threads = [threading.Thread(target=self._refresh_loop, name="ssot-keys-refresh")]
        if push:
            threads.append(
                threading.Thread(target=self._push_loop, args=(watch,), name="ssot-keys-push")
            )
        if not self._launch(*threads) and watch is not None:
            watch.cancel()

    def close(self) -> None:
        """Stop the background threads (cancelling the push stream). Idempotent.

        Lookups keep working afterwards from memory and with on-demand fetches.
        The source stays open: whoever opened it closes it.
        """
        super().close()

    def _stopping(self) -> None:
        self._refreshing = False
        self._wake.set()

    # -- fetching ----------------------------------------------------------------------

    def _begin_flight_locked(self) -> Flight:
        """Start the one shared fetch. Caller holds ``self._lock``."""
        flight: Flight = concurrent.futures.Future()
        # Running futures cannot be cancelled, so no waiter can cancel it for the others.
        flight.set_running_or_notify_cancel()
        self._inflight = flight
        thread = threading.Thread(
            target=self._run_flight,
            args=(flight, self._push_seq),
            name="ssot-keys-fetch",
            daemon=True,
        )
        try:
            thread.start()
        except RuntimeError:
            _LOGGER.exception("cannot start a key fetch thread")
            self._inflight = None
            flight.set_result(False)
        return flight

    def _run_flight(self, flight: Flight, push_seq: int) -> None:
        key_set: KeySet | None = None
        max_age: float | None = None
        problem = ""
        try:
            result = self._source.fetch(self._settings.fetch_timeout)
            key_set = self._build(result)
            max_age = result.max_age
        except KeySourceError as exc:  # KeySetError too: a refused document
            problem = exc.log_detail
        except Exception:  # a broken source must not break the cache
            _LOGGER.exception("key source raised an unexpected error")
            problem = "key source raised an unexpected error"
        now = self._now()
        old: KeySet | None = None
        installed = False
        with self._lock:
            self._fetches += 1
            self._last_attempt_at = now
            if self._inflight is flight:
                self._inflight = None
            was_outage = self._outage
            if key_set is not None:
                self._last_attempt_ok = True
                self._failures = 0
                self._retry_at = -math.inf
                self._outage = False
                # A push that arrived while we fetched is newer than our answer.
                if self._push_seq == push_seq:
                    old = self._install_locked(key_set, max_age, now)
                    installed = True
            else:
                self._last_attempt_ok = False
                self._fetch_failures += 1
                self._failures += 1
                delay = min(_BACKOFF_INITIAL * 2 ** (self._failures - 1), _BACKOFF_MAX)
                self._retry_at = now + delay
                self._outage = True
        if key_set is None:
            log = _LOGGER.debug if was_outage else _LOGGER.warning
            log("cannot load signing keys: %s; retrying with backoff", problem)
        elif was_outage:
            _LOGGER.info("signing keys loaded again after an outage")
        if installed and key_set is not None:
            self._installed(old, key_set)
        flight.set_result(key_set is not None)
        self._wake.set()

    def _build(self, result: FetchResult) -> KeySet:
        settings = self._settings
        return KeySet.from_jwks(
            result.document, algorithms=settings.algorithms, min_rsa_bits=settings.min_rsa_bits
        )

    def _refresh_flight(self, now: float) -> Flight | None:
        """The flight of a refresh due now: one running, a new one, or None while backing off."""
        with self._lock:
            if self._inflight is not None:
                return self._inflight
            if now < self._retry_at:
                return None
            return self._begin_flight_locked()

    # -- background threads ----------------------------------------------------------

    def _refresh_loop(self) -> None:
        while not self._closing.is_set():
            self._wake.clear()  # before reading state, so no wake-up is lost
            now = self._now()
            entry = self._current(now)
            with self._lock:
                busy = self._inflight is not None
                due = self._retry_at if entry is None else max(entry.refresh_at, self._retry_at)
                if not busy and now >= due and not self._closed:
                    self._begin_flight_locked()
                    busy = True
            if busy:
                delay = self._settings.fetch_timeout  # the flight's end wakes us earlier
            else:
                delay = due - now
                if entry is not None:
                    delay = min(delay, entry.drop_at - now)
            self._wake.wait(min(max(delay, 0.0), _MAX_IDLE_WAIT))

    def _push_loop(self, watch: KeyWatch | None) -> None:
        first = watch  # opened by start(); later streams are opened here

        def follow_once(reconnecting: bool) -> StreamEnd | None:
            nonlocal first
            opened, first = first, None
            if opened is None:
                try:
                    opened = self._source.watch()
                except KeySourceError as exc:
                    return StreamEnd(delivered=False, why=f"could not be opened: {exc.log_detail}")
                if opened is None:
                    _LOGGER.warning("key source no longer offers a push stream")
                    return None
            if not self._hold_stream(opened):
                return None
            try:
                if reconnecting:
                    self._fetch_after_reconnect()
                return self._follow(opened)
            finally:
                self._release_stream()

        follow_with_backoff(
            follow_once,
            self._closing,
            what="key push stream",
            initial=self._settings.reconnect_initial,
            maximum=self._settings.reconnect_max,
            logger=_LOGGER,
        )

    def _follow(self, watch: KeyWatch) -> StreamEnd:
        """Apply pushed sets until the stream ends."""
        got_any = False
        try:
            for result in watch:
                got_any = True
                self._apply_push(result)
        except KeySourceError as exc:
            return StreamEnd(
                delivered=got_any, why=f"broke: {exc.log_detail}", server_left=server_left(exc)
            )
        except Exception:  # keep following the issuer whatever the stream did
            _LOGGER.exception("key push stream failed unexpectedly")
            return StreamEnd(delivered=got_any, why="failed")
        return StreamEnd(delivered=got_any, why="ended")

    def _fetch_after_reconnect(self) -> None:
        # Changes made while the stream was down may not be pushed again.
        with self._lock:
            if self._inflight is None and not self._closed:
                self._begin_flight_locked()

    def _apply_push(self, result: FetchResult) -> None:
        try:
            key_set = self._build(result)
        except KeySetError as exc:
            _LOGGER.warning("ignoring a pushed key set: %s", exc.log_detail)
            return
        now = self._now()
        with self._lock:
            self._pushes += 1
            self._push_seq += 1
            self._failures = 0
            self._retry_at = -math.inf
            self._outage = False
            old = self._install_locked(key_set, result.max_age, now)
        self._installed(old, key_set)
        self._wake.set()
