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
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import logging
import math
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeAlias

from interceptors._errors import AuthError, KeySetError, KeySourceError, KeysUnavailable, UnknownKey
from interceptors._keyset import (
    SUPPORTED_ALGORITHMS,
    KeySet,
    VerificationKey,
    check_algorithms,
    departed_kids,
)
from interceptors._reconnect import (
    RECONNECT_INITIAL,
    RECONNECT_MAX,
    Background,
    StreamEnd,
    check_reconnect,
    follow_with_backoff,
    server_left,
)
from interceptors._sources import FetchResult, KeySource, KeyWatch

_LOGGER = logging.getLogger(__name__)

# Failure backoff for fetches, on the injected clock.
_BACKOFF_INITIAL = 1.0
_BACKOFF_MAX = 30.0
# The refresh thread re-reads the clock at least this often (real seconds).
_MAX_IDLE_WAIT = 60.0

_Flight: TypeAlias = concurrent.futures.Future[bool]  # True when the fetch succeeded


@dataclass(frozen=True, kw_only=True)
class CacheSettings:
    """How a :class:`KeyCache` fetches, trusts and ages the issuer's key set.

    Attributes:
        algorithms: The algorithms keys may verify (never HS* or ``none``).
        min_rsa_bits: The smallest RSA key accepted; a set with a smaller
            signature key is refused whole.
        cooldown: Seconds after any fetch attempt during which an unknown
            ``kid`` does not cause another fetch.
        default_max_age: The set's lifetime when the source gives no hint.
        min_max_age: The shortest lifetime honoured.
        max_max_age: The longest finite lifetime honoured.
        stale_for: How long past its expiry the last good set is still
            served while the source cannot be reached.
        fetch_timeout: The deadline of one fetch, and the longest a lookup waits.
        refresh_ratio: The fraction of the lifetime after which the set is
            refreshed in the background.
        missing_kid_memory: How many ``kid``s found missing are remembered.
        reconnect_initial: First delay before reopening a broken push stream,
            real seconds (doubling from there).
        reconnect_max: Longest such delay, real seconds.

    Raises:
        ValueError: A setting is out of range.
    """

    algorithms: frozenset[str] = SUPPORTED_ALGORITHMS
    min_rsa_bits: int = 2048
    cooldown: float = 30.0
    default_max_age: float = 300.0
    min_max_age: float = 1.0
    max_max_age: float = 86400.0
    stale_for: float = 3600.0
    fetch_timeout: float = 3.0
    refresh_ratio: float = 0.8
    missing_kid_memory: int = 4096
    reconnect_initial: float = RECONNECT_INITIAL
    reconnect_max: float = RECONNECT_MAX

    def __post_init__(self) -> None:
        object.__setattr__(self, "algorithms", check_algorithms(self.algorithms))
        _require(self.min_rsa_bits > 0, "min_rsa_bits must be positive")
        _require(self.cooldown >= 0, "cooldown must not be negative")
        _require(0 < self.min_max_age <= self.max_max_age, "need 0 < min_max_age <= max_max_age")
        _require(self.default_max_age > 0, "default_max_age must be positive")
        _require(self.stale_for >= 0, "stale_for must not be negative")
        _require(0 < self.fetch_timeout < math.inf, "fetch_timeout must be positive and finite")
        _require(0 < self.refresh_ratio <= 1, "refresh_ratio must be in (0, 1]")
        _require(self.missing_kid_memory >= 0, "missing_kid_memory must not be negative")
        check_reconnect(self.reconnect_initial, self.reconnect_max)


@dataclass(frozen=True, slots=True, kw_only=True)
class CacheStats:
    """Counters of a :class:`KeyCache`.

    Attributes:
        fetches: Fetch attempts completed, successful or not.
        fetch_failures: Fetch attempts that failed (including refused documents).
        pushes: Key sets applied from the push stream.
        stale_serves: Lookups answered from a set past its expiry.
        last_success: Clock time of the last set loaded (fetched or pushed), or ``None``.
        suppressed_refetches: Unknown-kid lookups refused without a fetch because the
            cooldown (or the memory of missing kids) holds the refetch back.
    """

    fetches: int
    fetch_failures: int
    pushes: int
    stale_serves: int
    last_success: float | None
    suppressed_refetches: int = 0


@dataclass(frozen=True, slots=True)
class _Entry:
    key_set: KeySet
    refresh_at: float
    expires_at: float
    drop_at: float


class KeyCache(Background):
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
        super().__init__()
        self._source = source
        self._settings = settings if settings is not None else CacheSettings()
        self._now = now
        self._background = background

        # Read without the lock on the hot path: an immutable entry, replaced whole.
        self._entry: _Entry | None = None
        self._inflight: _Flight | None = None
        self._push_seq = 0
        self._last_attempt_at: float | None = None
        self._last_attempt_ok = True
        self._failures = 0
        self._retry_at = -math.inf
        self._outage = False
        self._stale_warned = False
        self._missing: OrderedDict[str, None] = OrderedDict()
        self._listeners: list[Callable[[frozenset[str]], None]] = []
        self._fetches = 0
        self._fetch_failures = 0
        self._pushes = 0
        self._stale_serves = 0
        self._suppressed = 0
        self._last_success: float | None = None

        self._started = False
        self._refreshing = False  # a background thread owns routine refreshes
        self._wake = threading.Event()
        self._loaded = threading.Event()

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

    def _decide(self, kid: str) -> VerificationKey | AuthError | _Flight:
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

    def _resolve(self, kid: str, flight: _Flight) -> VerificationKey:
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

    def _refresh_flight(self, now: float) -> _Flight | None:
        with self._lock:
            if self._inflight is not None:
                return self._inflight
            if now < self._retry_at:
                return None
            return self._begin_flight_locked()

    def _remember_missing(self, kid: str) -> None:
        memory = self._settings.missing_kid_memory
        if memory == 0:
            return
        with self._lock:
            self._missing[kid] = None
            self._missing.move_to_end(kid)
            while len(self._missing) > memory:
                self._missing.popitem(last=False)

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

    # -- fetching ----------------------------------------------------------------------

    def _begin_flight_locked(self) -> _Flight:
        """Start the one shared fetch. Caller holds ``self._lock``."""
        flight: _Flight = concurrent.futures.Future()
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

    def _run_flight(self, flight: _Flight, push_seq: int) -> None:
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


def _require(condition: bool, message: str) -> None:
    if not condition:
        raise ValueError(message)
