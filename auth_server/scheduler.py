"""Runs the signing key lifecycle in the auth server: pre-publish, rotate, retire, destroy."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable

from auth_server.errors import AuthServerError
from auth_server.keys import MaintenanceReport, SigningKeyStore

_LOGGER = logging.getLogger(__name__)


class KeyScheduler:
    """Calls :meth:`SigningKeyStore.maintain` every ``interval`` seconds, in a worker thread.

    Every replica runs one; the store takes the replicas' shared lock before it
    changes anything, so they never both rotate. Transitions are decided on the
    store's clock (injectable), so a test moves time and calls :meth:`run_once`
    instead of sleeping; ``interval`` is real time, how soon a due change is made.
    """

    def __init__(
        self,
        keys: SigningKeyStore,
        *,
        interval: float = 1.0,
        on_change: Callable[[], Awaitable[object]] | None = None,
    ) -> None:
        """Create the scheduler (nothing runs until :meth:`start`).

        Args:
            keys: The store to maintain.
            interval: Seconds between passes.
            on_change: Awaited after a pass that changed keys (e.g. publish at once).
        """
        if interval <= 0:
            raise ValueError("interval must be positive")
        self._keys = keys
        self._interval = interval
        self._on_change = on_change
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        """Run a first pass now (a failure is logged, not raised), then one every interval."""
        await self._pass(quiet=False)
        self._task = asyncio.create_task(self._loop(), name="key-scheduler")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    async def run_once(self) -> MaintenanceReport:
        """One pass; returns once the change (if any) is published.

        Raises:
            AuthServerError: Storage or key material is unusable.
        """
        report = await asyncio.to_thread(self._keys.maintain)
        if report.changed and self._on_change is not None:
            await self._on_change()
        return report

    async def _loop(self) -> None:
        failing = False
        while True:
            await asyncio.sleep(self._interval)
            failing = not await self._pass(quiet=failing)

    async def _pass(self, *, quiet: bool) -> bool:
        try:
            await self.run_once()
        except Exception as exc:  # noqa: BLE001 - the schedule must outlive any failure
            # Nothing is lost by waiting: a late rotation is still pre-published
            # for the full activate_after, and keys retire by their stored times.
            if not quiet:
                reason = exc.message if isinstance(exc, AuthServerError) else type(exc).__name__
                _LOGGER.warning("key maintenance failed, will retry: %s", reason)
            return False
        return True
