"""Blocking calls run in worker threads, which a shutdown can wait for.

Cancelling a task that awaits :func:`asyncio.to_thread` does not stop the
thread: the call runs on, holding whatever it opened. A poll cancelled at
shutdown could so still be reading the database after ``stop()`` returned, and
open a connection on an engine that was disposed meanwhile (psycopg then warns
"connection deleted while still open"). :class:`ThreadCalls` remembers the
calls still running, so ``stop()`` can wait for them before storage closes.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any, TypeVar

_T = TypeVar("_T")


class ThreadCalls:
    """Runs blocking calls in worker threads and knows which are still running."""

    def __init__(self) -> None:
        self._running: set[asyncio.Future[Any]] = set()

    async def run(self, call: Callable[[], _T]) -> _T:
        """``await asyncio.to_thread(call)``, tracked until the thread is done.

        Cancelling the caller leaves the thread running (nothing can stop it),
        and still tracked: :meth:`drain` waits for it.
        """
        future: asyncio.Future[_T] = asyncio.ensure_future(asyncio.to_thread(call))
        self._running.add(future)
        future.add_done_callback(self._running.discard)
        return await asyncio.shield(future)

    async def drain(self) -> None:
        """Wait until every call started so far has returned (or raised)."""
        while self._running:
            await asyncio.wait(set(self._running))
