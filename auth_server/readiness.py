"""Readiness: whether this replica can answer logins and refreshes now.

One probe loop runs at a time (so probes never overlap, however often load
balancers ask): it reads the database (one short read transaction, never a write,
never held open between probes), loads the current signing key and signs a few
bytes with it (a PKCS#11 token that stopped answering fails here), and reads the
key states for the metrics. gRPC health and ``/readyz`` report its last result;
``/healthz`` only says the process is alive.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import Counter
from collections.abc import Callable, Sequence

from auth_server.errors import AuthServerError, KeyStoreUnavailable, StorageError
from auth_server.keys import KeyInfo, SigningKeyStore
from auth_server.metrics import KeyFigures

_LOGGER = logging.getLogger(__name__)

# What a failed probe reports (the /readyz body); categories, never internals.
DATABASE_DOWN = "database unreachable"
NO_SIGNING_KEY = "no usable signing key"
KEY_STORE_DOWN = "key store (PKCS#11) unreachable"
STOPPING = "shutting down"


class Readiness:
    """The last probe's verdict, and the loop that keeps it current."""

    def __init__(
        self,
        keys: SigningKeyStore,
        *,
        interval: float,
        on_change: Callable[[bool], object],
        next_set_change: Callable[[], float | None] = lambda: None,
        now: Callable[[], float] = time.time,
    ) -> None:
        self._keys = keys
        self._next_set_change = next_set_change
        self._interval = interval
        self._on_change = on_change
        self._now = now
        self.reason: str | None = None  # None: ready
        self.figures = KeyFigures()
        self._ready: bool | None = None
        self._task: asyncio.Task[None] | None = None
        self._stopping = False
        self._wake = asyncio.Event()

    @property
    def ready(self) -> bool:
        return self.reason is None and not self._stopping

    async def start(self) -> None:
        await self.probe()
        self._task = asyncio.create_task(self._loop(), name="readiness")

    async def stop(self) -> None:
        """Report not ready from now on (the first step of a shutdown) and stop probing."""
        self._stopping = True
        self.reason = STOPPING
        await self._set(False)
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    def probe_soon(self) -> None:
        """Probe now rather than at the next interval (after an error a call met)."""
        self._wake.set()

    async def probe(self) -> None:
        """Run one probe (in a thread: it does blocking I/O) and publish its verdict."""
        reason, figures = await asyncio.to_thread(self._check)
        if self._stopping:
            return
        if figures is not None:
            self.figures = figures
        if reason != self.reason:
            if reason is None:
                _LOGGER.info("ready again")
            else:
                _LOGGER.warning("not ready: %s", reason)
        self.reason = reason
        await self._set(reason is None)

    async def _set(self, ready: bool) -> None:
        if ready == self._ready:
            return
        self._ready = ready
        result = self._on_change(ready)
        if asyncio.iscoroutine(result):
            await result

    async def _loop(self) -> None:
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), self._interval)
            self._wake.clear()
            try:
                await self.probe()
            except Exception:  # a probe must never end the loop
                _LOGGER.exception("readiness probe failed unexpectedly")

    def _check(self) -> tuple[str | None, KeyFigures | None]:
        try:
            keys = self._keys.list_keys()
        except StorageError:
            return DATABASE_DOWN, None
        figures = _figures(keys, self._next_set_change(), self._now())
        try:
            self._keys.check_ready()
            key = self._keys.current()
            key.sign(b"readiness probe")
        except KeyStoreUnavailable:
            return KEY_STORE_DOWN, figures
        except StorageError:
            return DATABASE_DOWN, figures
        except AuthServerError:
            return NO_SIGNING_KEY, figures
        except Exception as exc:  # noqa: BLE001 - a key that cannot sign is not usable
            _LOGGER.warning("signing key check failed: %s", type(exc).__name__)
            return NO_SIGNING_KEY, figures
        return None, figures


def _figures(keys: Sequence[KeyInfo], next_set_change: float | None, now: float) -> KeyFigures:
    by_state = Counter(k.state for k in keys)
    current = next((k for k in keys if k.state == "current"), None)
    upcoming = [
        t
        for k in keys
        for t in (k.activates_at, k.deactivated_at, k.retires_at)
        if t is not None and t > now and k.state != "revoked"
    ]
    if next_set_change is not None and next_set_change > now:
        upcoming.append(next_set_change)
    return KeyFigures(
        by_state=dict(by_state),
        current_activated_at=None if current is None else current.activates_at,
        next_change_at=min(upcoming, default=None),
    )
