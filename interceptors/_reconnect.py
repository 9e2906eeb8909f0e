"""Keep a push stream open: reopen it with backoff whenever it ends, until told to stop.

Shared by the key cache's ``WatchJwks`` follower and the revocation list's
``WatchRevocations`` follower, so both back off, reset and log alike, with the
same defaults, and start and close their background threads the same way
(:class:`Background`).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Sequence
from types import TracebackType
from typing import NamedTuple, Protocol, Self

#: First delay before reopening a broken stream, seconds (doubling from here).
RECONNECT_INITIAL = 1.0
#: Longest delay before reopening a broken stream, seconds.
RECONNECT_MAX = 30.0
#: How long :meth:`Background.close` waits for each background thread, seconds.
JOIN_TIMEOUT = 5.0
#: The details of the ``UNAVAILABLE`` status an auth service ends its push streams
#: with when it drains: the follower reconnects at once (to another replica).
SHUTTING_DOWN = "server shutting down"


class StreamEnd(NamedTuple):
    """How one opened stream ended.

    Attributes:
        delivered: It delivered anything before it ended (which resets the backoff).
        why: Why it ended, for the log line ("ended", "broke: ...").
        server_left: The server ended it because it is shutting down; reopen at once.
    """

    delivered: bool
    why: str
    server_left: bool = False


def server_left(exc: BaseException) -> bool:
    """Whether ``exc`` (or its cause) is the draining server's ``UNAVAILABLE`` status."""
    seen: BaseException | None = exc
    while seen is not None:
        details = getattr(seen, "details", None)
        if callable(details):
            try:
                return bool(details() == SHUTTING_DOWN)
            except Exception:  # noqa: BLE001 - a foreign error object: not the drain status
                return False
        seen = seen.__cause__
    return False


#: Follow one stream until it ends; ``None`` stops following for good.
FollowOnce = Callable[[bool], StreamEnd | None]


def check_reconnect(initial: float, maximum: float) -> None:
    """Raise ValueError unless ``0 < initial <= maximum``."""
    if not 0 < initial <= maximum:
        raise ValueError("need 0 < reconnect_initial <= reconnect_max")


def follow_with_backoff(
    follow_once: FollowOnce,
    closing: threading.Event,
    *,
    what: str,
    initial: float = RECONNECT_INITIAL,
    maximum: float = RECONNECT_MAX,
    logger: logging.Logger,
) -> None:
    """Call ``follow_once(reconnecting)`` until ``closing`` is set or it returns None.

    Between calls wait ``initial`` seconds, doubling up to ``maximum``; a stream
    that delivered anything resets the delay. The first failure of an outage is
    a warning, the rest debug lines, so a long outage does not flood the log.
    """
    delay = initial
    quiet = False
    reconnecting = False
    while not closing.is_set():
        end = follow_once(reconnecting)
        if end is None:
            return
        reconnecting = True
        if end.delivered:
            delay, quiet = initial, False
        if closing.is_set():
            return
        if end.server_left and end.delivered:
            # A replica draining: another one answers now, and every moment waited is
            # a moment of missed rotations and revocations. Only after a stream that
            # worked, so a server that says so at once cannot make us spin.
            logger.info("%s ended: server shutting down; reconnecting now", what)
            continue
        log = logger.debug if quiet else logger.warning
        log("%s %s; reconnecting in %.1f s", what, end.why, delay)
        quiet = True
        if closing.wait(delay):
            return
        delay = min(delay * 2, maximum)


class _Cancellable(Protocol):
    def cancel(self) -> None: ...


class Background:
    """The start/close lifecycle of an object that works on background threads.

    A subclass implements :meth:`start` (launching its threads with
    :meth:`_launch`) and may extend :meth:`_stopping`; it registers the stream
    it follows with :meth:`_hold_stream`, so that :meth:`close` can cancel it.
    ``self._lock`` guards the subclass's own state too.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._closed = False
        self._closing = threading.Event()
        self._threads: Sequence[threading.Thread] = ()
        self._stream: _Cancellable | None = None

    def start(self) -> None:
        """Start the background work. Idempotent."""
        raise NotImplementedError

    def close(self) -> None:
        """Stop the background threads (cancelling the stream they follow). Idempotent."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            stream, threads = self._stream, self._threads
        self._closing.set()
        self._stopping()
        if stream is not None:
            stream.cancel()
        current = threading.current_thread()
        for thread in threads:
            if thread is not current:
                thread.join(JOIN_TIMEOUT)

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()

    def _stopping(self) -> None:
        """Called once by :meth:`close`, after ``_closing`` is set: wake what waits."""

    def _launch(self, *threads: threading.Thread) -> bool:
        """Start ``threads`` as daemons, unless :meth:`close` came first; say whether."""
        with self._lock:
            if self._closed:
                return False
            self._threads = threads
        for thread in threads:
            thread.daemon = True
            thread.start()
        return True

    def _hold_stream(self, stream: _Cancellable) -> bool:
        """Make ``stream`` the one :meth:`close` cancels; False (and cancel it) if closed."""
        with self._lock:
            if self._closed:
                stream.cancel()
                return False
            self._stream = stream
            return True

    def _release_stream(self) -> None:
        with self._lock:
            self._stream = None
