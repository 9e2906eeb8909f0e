"""A bounded pool for password checks, apart from the threads that serve everything else.

Issue 15 measured what happens without one: every blocking call of the auth
service (argon2 in ``Login``, the database work of ``Refresh`` and ``Logout``,
the revocation poll, key maintenance) went through the event loop's one
default executor, so a flood of 40 logins of unknown users (each a full argon2
verification, by design) put ``Refresh`` at a ~4 s median and ``Logout`` at
10-13 s, queued behind the hashes.

Here a login runs whole (throttle check, user lookup, argon2, session) on a
pool of its own: at most ``workers`` logins use a thread, a database
connection or a CPU at a time, whatever the flood, and the default executor
stays free for the rest. argon2-cffi releases the GIL while it hashes, so the
event loop keeps running beside it. The pool's queue is bounded by time, not
length: a new check is refused at once (:class:`~auth_server.errors.Overloaded`,
``RESOURCE_EXHAUSTED`` + ``retry-after``, before any hashing or database work)
when the checks already waiting would keep it from finishing within
``max_wait``, or within what is left of the caller's own deadline. A check
whose caller gave up (deadline passed, call cancelled) while it waited is
never started.

Nothing here knows about users: the pool runs any blocking credential check
(a client secret, later) under the same bound.
"""

from __future__ import annotations

import asyncio
import contextvars
import logging
import math
import os
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import TypeVar

from auth_server.errors import CallerGone, Overloaded

_LOGGER = logging.getLogger(__name__)
_T = TypeVar("_T")

DEFAULT_MAX_WAIT = 3.0
# Weight of the newest measured check in the running cost estimate.
_SMOOTHING = 0.2
# Shed checks are counted and logged at most this often, never one line each:
# a flood must not turn into a flood of log lines written from the event loop.
_SHED_LOG_INTERVAL = 10.0


def available_cpus() -> int:
    """The number of CPUs this process may run on (its affinity mask where known)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not on Linux
        return max(1, os.cpu_count() or 1)


@dataclass(frozen=True, kw_only=True)
class HashingPolicy:
    """Size and queue bound of the password-check pool.

    Attributes:
        workers: Checks that run at once; ``None`` means one per available CPU
            (argon2 is CPU-bound: more threads only queue inside the OS).
        max_wait: Seconds a new check may expect to wait for its answer
            (queue plus its own hashing); beyond that it is shed at once.
    """

    workers: int | None = None
    max_wait: float = DEFAULT_MAX_WAIT

    def __post_init__(self) -> None:
        if self.workers is not None and (
            isinstance(self.workers, bool) or not isinstance(self.workers, int) or self.workers < 1
        ):
            raise ValueError("--hash-workers must be a positive integer")
        if not (math.isfinite(self.max_wait) and self.max_wait > 0):
            raise ValueError("--hash-max-wait must be a positive number of seconds")

    @property
    def resolved_workers(self) -> int:
        """``workers``, or the available CPUs when it is ``None``."""
        return self.workers if self.workers is not None else available_cpus()


@dataclass(frozen=True, kw_only=True)
class HashingStats:
    """A snapshot of the pool's counters (for benchmarks, tests and metrics).

    Attributes:
        workers: Threads in the pool.
        pending: Checks admitted and not yet finished (running or queued).
        estimate: The current cost estimate of one check, seconds.
        completed: Checks that ran (whatever their outcome).
        shed: Checks refused at admission.
        expired: Admitted checks dropped because their caller had given up.
    """

    workers: int
    pending: int
    estimate: float
    completed: int
    shed: int
    expired: int


@dataclass(slots=True)
class _Ticket:
    deadline: float | None  # on the pool's clock


class HashingPool:
    """Runs blocking credential checks on their own threads, shedding what cannot finish in time.

    Thread-safe; :meth:`run` is called from the event loop.
    """

    def __init__(
        self,
        policy: HashingPolicy | None = None,
        *,
        cost: Callable[[], float],
        what: str = "password checks",
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        """Create the pool (its threads start on first use).

        Args:
            policy: Workers and queue bound; the defaults suit a server.
            cost: Seconds the expensive part of one check takes now (e.g.
                ``lambda: hasher.cost``, argon2's running average). The pool's
                estimate of a whole check never drops below it, so cheap
                outcomes (a throttled attempt costs a database round trip only)
                cannot talk the pool into admitting more hashes than it can
                finish; and it follows the machine's load both ways.
            what: Names the checks in log lines.
            clock: Monotonic seconds; injectable for tests.
        """
        self.policy = policy or HashingPolicy()
        self.workers = self.policy.resolved_workers
        self._cost = cost
        self._smoothed = 0.0  # whole checks, database work included
        self._what = what
        self._clock = clock
        self._lock = threading.Lock()
        self._pending = 0
        self._completed = 0
        self._shed = 0
        self._expired = 0
        self._shed_unlogged = 0
        self._last_shed_log = -math.inf
        self._executor = ThreadPoolExecutor(
            max_workers=self.workers, thread_name_prefix="ssot-hashing"
        )

    @property
    def stats(self) -> HashingStats:
        with self._lock:
            return HashingStats(
                workers=self.workers,
                pending=self._pending,
                estimate=self._estimate(),
                completed=self._completed,
                shed=self._shed,
                expired=self._expired,
            )

    async def run(self, check: Callable[[], _T], *, time_left: float | None = None) -> _T:
        """Run ``check`` on a pool thread, or refuse it at once.

        Args:
            check: The blocking work (a whole login: throttle, lookup, argon2, session).
            time_left: Seconds until the caller's deadline, ``None`` for none.

        Returns:
            What ``check`` returns; its exceptions propagate.

        Raises:
            Overloaded: Too many checks are waiting to finish this one within
                ``max_wait`` (or ``time_left``); nothing was started.
            CallerGone: The caller's deadline passed while the check waited in
                the queue; it was never started.
        """
        ticket = self._admit(time_left)
        try:
            # The caller's context goes along: the server's audit listener counts
            # what the check records (a throttled login, the hash's duration).
            future = self._executor.submit(
                contextvars.copy_context().run, self._work, ticket, check
            )
        except BaseException:
            self._finished(None)
            raise
        try:
            return await asyncio.wrap_future(future)
        except asyncio.CancelledError:
            # The call was cancelled (client gone, server stopping). A check still
            # in the queue never starts; its place is given back here. One that is
            # running finishes on its thread and gives its place back itself.
            if future.cancel():
                self._finished(None)
            raise

    def close(self) -> None:
        """Drop queued checks and wait for running ones (they hold database connections)."""
        self._executor.shutdown(wait=True, cancel_futures=True)

    def _admit(self, time_left: float | None) -> _Ticket:
        now = self._clock()
        with self._lock:
            pending, estimate = self._pending, self._estimate()
            # The new check starts once a thread is free: it finishes with the
            # wave of checks it joins.
            finish = math.ceil((pending + 1) / self.workers) * estimate
            over = pending >= self.workers and finish > self.policy.max_wait
            late = time_left is not None and finish > time_left
            if not (over or late):
                self._pending += 1
                return _Ticket(deadline=None if time_left is None else now + time_left)
            self._shed += 1
            self._shed_unlogged += 1
            log_now = now - self._last_shed_log >= _SHED_LOG_INTERVAL
            if log_now:
                shed, self._shed_unlogged, self._last_shed_log = self._shed_unlogged, 0, now
        if log_now:
            _LOGGER.warning(
                "%s overloaded: %d waiting for %d threads at ~%.0f ms each; shed %d since the"
                " last report",
                self._what,
                pending,
                self.workers,
                estimate * 1000,
                shed,
            )
        # When enough of the queue has drained for a new check to be admitted again.
        admitted = max(self.workers, math.floor(self.policy.max_wait / estimate) * self.workers)
        raise Overloaded(max(0, pending + 1 - admitted) / self.workers * estimate)

    def _estimate(self) -> float:
        # Never zero: argon2 cannot be free, and the divisions below need it positive.
        return max(self._cost(), self._smoothed, 1e-6)

    def _work(self, ticket: _Ticket, check: Callable[[], _T]) -> _T:
        started = self._clock()
        if ticket.deadline is not None and started >= ticket.deadline:
            with self._lock:
                self._expired += 1
            self._finished(None)
            raise CallerGone()
        try:
            return check()
        finally:
            self._finished(self._clock() - started)

    def _finished(self, took: float | None) -> None:
        with self._lock:
            self._pending -= 1
            if took is not None:
                self._completed += 1
                if self._completed == 1:
                    self._smoothed = took
                else:
                    self._smoothed = (1 - _SMOOTHING) * self._smoothed + _SMOOTHING * took
