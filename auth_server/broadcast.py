"""One value read from storage, kept current by polling, and broadcast to every watcher.

The shape both server-side push streams share (:class:`auth_server.publisher.JwksPublisher`
for ``WatchJwks``, :class:`auth_server.revocations.RevocationPublisher` for
``WatchRevocations``). Changes can come from this process, from the CLI run
beside it, or from another replica sharing the database, so the value is re-read
every ``poll_interval`` seconds (one small query); :meth:`PolledBroadcaster.refresh`
re-reads it at once (awaitable: a change this process made is handed to the
watchers before the RPC that made it returns), and
:meth:`PolledBroadcaster.request_refresh` asks for that from any thread.

Watchers wait on one :class:`asyncio.Condition`; each sees the value first, then
every change, and a slow watcher skips intermediate versions rather than
queueing them. A subclass says what counts as a change (:meth:`~PolledBroadcaster._is_news`)
and turns ``(what this watcher had, what is current)`` into its stream's
messages (:meth:`PolledBroadcaster.updates`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncGenerator, Callable
from typing import ClassVar, Generic, TypeVar

from auth_server._threads import ThreadCalls
from auth_server.errors import AuthServerError

_LOGGER = logging.getLogger(__name__)

T = TypeVar("T")

DEFAULT_POLL_INTERVAL = 0.25
#: Seconds between reads while a LISTEN connection wakes the broadcaster on every
#: change (:mod:`auth_server.notifications`): the poll is then only the safety net.
DEFAULT_LISTENING_POLL_INTERVAL = 2.0


class PolledBroadcaster(Generic[T]):
    """Holds the last value ``load()`` returned and wakes watchers when it changes.

    Subclasses set :attr:`what` (for log lines) and may override :meth:`_is_news`
    and :meth:`_announce`.
    """

    #: What the value is, for log lines.
    what: ClassVar[str] = "value"

    def __init__(
        self,
        load: Callable[[], T],
        *,
        poll_interval: float = DEFAULT_POLL_INTERVAL,
        listening_poll_interval: float = DEFAULT_LISTENING_POLL_INTERVAL,
    ) -> None:
        """Create the broadcaster (nothing is read until :meth:`start`).

        Args:
            load: Reads the value from storage (blocking; run in a worker thread).
                It may raise; the poll loop then keeps the last value.
            poll_interval: Seconds between reads.
            listening_poll_interval: Seconds between reads while
                :meth:`set_listening` says changes are announced (never
                shorter than ``poll_interval``).

        Raises:
            ValueError: ``poll_interval`` is not positive.
        """
        if not poll_interval > 0:
            raise ValueError("poll_interval must be positive")
        self._load = load
        self._poll_interval = poll_interval
        self._listening_poll_interval = max(poll_interval, listening_poll_interval)
        self._listening = False
        self._watchers = 0
        self._value: T | None = None
        # Bumped on every change watchers must hear of; a watcher remembers the last it saw.
        self._version = 0
        self._changed = asyncio.Condition()
        self._reading = asyncio.Lock()  # one read at a time: an older read never lands last
        self._wake = asyncio.Event()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._task: asyncio.Task[None] | None = None
        self._stopped = False
        self._reads = ThreadCalls()  # stop() waits for a read still running in its thread

    @property
    def value(self) -> T:
        """The value as last read.

        Raises:
            RuntimeError: :meth:`start` has not run.
        """
        if self._value is None:
            raise RuntimeError(f"{type(self).__name__}.start() has not run")
        return self._value

    @property
    def watchers(self) -> int:
        """How many watch streams follow the value now."""
        return self._watchers

    def set_listening(self, listening: bool) -> None:
        """Say whether every change is announced (poll slowly) or not (poll at the interval).

        Safe from any thread; :class:`auth_server.notifications.ChangeListener` calls it.
        """
        self._listening = listening

    async def start(self) -> None:
        """Read the first value (errors propagate), then poll in the background."""
        self._value = await self._reads.run(self._load)
        self._loop = asyncio.get_running_loop()
        self._task = asyncio.create_task(self._poll(), name=f"{type(self).__name__}.poll")

    def request_refresh(self) -> None:
        """Re-read the value soon; safe to call from any thread, even after :meth:`stop`."""
        loop = self._loop
        if loop is None or loop.is_closed():
            return
        with contextlib.suppress(RuntimeError):  # the loop closed meanwhile
            loop.call_soon_threadsafe(self._wake.set)

    async def stop(self) -> None:
        """Stop polling and end every watch stream; no read of storage is running when it returns.

        So storage can be closed right after (a read left running in its worker
        thread would otherwise go on using a disposed engine).
        """
        self._stopped = True
        self._loop = None
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        await self._reads.drain()
        async with self._changed:
            # Wake the watchers so their streams can end with the server.
            self._changed.notify_all()

    async def refresh(self) -> T:
        """Re-read the value now; the watchers have been woken when this returns.

        After :meth:`stop` nothing is read (storage may be closing, and no
        stream is left to tell): the last value is returned.

        Raises:
            AuthServerError: Storage could not be read.
        """
        async with self._reading:
            if self._stopped:
                return self.value
            # What changed since the last read is worked out from whole values
            # (:meth:`_is_news`, and each stream's own diff). An incremental read
            # (a cursor) would plug in here: load the changes, merge them.
            loaded = await self._reads.run(self._load)
            async with self._changed:
                before, self._value = self._value, loaded
                if before is None or self._is_news(before, loaded):
                    self._version += 1
                    self._announce(loaded)
                    self._changed.notify_all()
        return loaded

    def _is_news(self, before: T, after: T) -> bool:
        """Whether watchers must hear of ``after``; if not, it replaces ``before`` silently."""
        return before != after

    def _announce(self, value: T) -> None:
        """Log a change that is about to be pushed (nothing by default)."""

    async def updates(self) -> AsyncGenerator[tuple[T | None, T], None]:
        """Yield ``(None, value)`` now, then ``(last yielded, value)`` after each change.

        Ends once the broadcaster stops; a watcher that has been sent nothing
        yet still gets the current value first.
        """
        sent: T | None = None
        seen = -1
        self._watchers += 1
        try:
            while True:
                async with self._changed:
                    while self._value is None or self._version == seen:
                        if self._stopped and (sent is not None or self._value is None):
                            return
                        await self._changed.wait()
                    current, seen = self._value, self._version
                yield sent, current
                sent = current
        finally:
            self._watchers -= 1

    async def _poll(self) -> None:
        failing = False
        # Python 3.11's wait_for can swallow a cancellation that lands as the wake
        # fires (gh-86296), so the loop also ends on the flag stop() sets first.
        while not self._stopped:
            with contextlib.suppress(TimeoutError):
                interval = self._listening_poll_interval if self._listening else self._poll_interval
                await asyncio.wait_for(self._wake.wait(), interval)
            self._wake.clear()
            try:
                await self.refresh()
            except Exception as exc:  # noqa: BLE001 - the poll loop must outlive any failure
                # Keep publishing the last good value: a verifier that loses its
                # keys (or revocations) is worse than one that learns of a change late.
                if not failing:
                    reason = exc.message if isinstance(exc, AuthServerError) else type(exc).__name__
                    _LOGGER.warning(
                        "cannot reload the %s, keeping the last one: %s", self.what, reason
                    )
                failing = True
            else:
                if failing:
                    _LOGGER.info("%s readable again", self.what)
                failing = False
