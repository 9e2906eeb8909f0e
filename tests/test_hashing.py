"""The password-check pool without a network: admission, shedding, deadlines, cancellation."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any, TypeVar

import pytest

from auth_server.cli import build_parser
from auth_server.commands._common import CommandError
from auth_server.commands.serve import server_config
from auth_server.errors import CallerGone, Overloaded, RetryLater
from auth_server.hashing import HashingPolicy, HashingPool
from auth_server.passwords import PasswordHasher
from helpers import AUDIENCE, FAST_ARGON2, ISSUER

T = TypeVar("T")


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def run(coro: Coroutine[Any, Any, T]) -> T:
    return asyncio.run(asyncio.wait_for(coro, 10))


class Gate:
    """Checks that block until released, recording which of them ran."""

    def __init__(self) -> None:
        self.release = threading.Event()
        self.started: list[int] = []
        self._lock = threading.Lock()

    def check(self, n: int) -> Callable[[], int]:
        def work() -> int:
            with self._lock:
                self.started.append(n)
            assert self.release.wait(10)
            return n

        return work


async def _until(predicate: Callable[[], bool]) -> None:
    while not predicate():
        await asyncio.sleep(0.005)


def test_a_check_runs_on_the_pool_and_returns_its_result() -> None:
    pool = HashingPool(HashingPolicy(workers=2), cost=lambda: 0.01)
    try:
        assert run(pool.run(lambda: threading.current_thread().name)).startswith("ssot-hashing")
        stats = pool.stats
        assert (stats.completed, stats.pending, stats.shed) == (1, 0, 0)
    finally:
        pool.close()


def test_errors_of_the_check_propagate_and_free_its_place() -> None:
    pool = HashingPool(HashingPolicy(workers=1), cost=lambda: 0.01)

    def fail() -> None:
        raise ValueError("bad password")

    try:
        with pytest.raises(ValueError):
            run(pool.run(fail))
        assert pool.stats.pending == 0
    finally:
        pool.close()


def test_checks_that_cannot_finish_within_max_wait_are_shed_at_once() -> None:
    # One thread, 1 s a check (the estimate's floor), 2.5 s allowed: the running
    # check and one queued behind it finish within 2 s; a third would take 3 s.
    pool = HashingPool(HashingPolicy(workers=1, max_wait=2.5), cost=lambda: 1.0, clock=FakeClock())
    gate = Gate()

    async def scenario() -> None:
        first = asyncio.ensure_future(pool.run(gate.check(1)))
        second = asyncio.ensure_future(pool.run(gate.check(2)))
        await _until(lambda: gate.started == [1])
        with pytest.raises(Overloaded) as shed:
            await pool.run(gate.check(3))
        assert isinstance(shed.value, RetryLater)
        assert shed.value.code.name == "RESOURCE_EXHAUSTED"
        # One check must finish before a new one fits: about one check's time.
        assert shed.value.retry_after == 1
        gate.release.set()
        assert await asyncio.gather(first, second) == [1, 2]
        # Drained: admitted again at once.
        assert await pool.run(lambda: 4) == 4

    try:
        run(scenario())
        assert gate.started == [1, 2]  # the shed check never ran
        assert pool.stats.shed == 1
    finally:
        gate.release.set()
        pool.close()


def test_retry_after_grows_with_the_queue_beyond_the_bound() -> None:
    pool = HashingPool(HashingPolicy(workers=2, max_wait=1.0), cost=lambda: 0.5, clock=FakeClock())
    gate = Gate()

    async def scenario() -> list[int]:
        # 1 s / 0.5 s per wave x 2 threads: four checks fit.
        admitted = [asyncio.ensure_future(pool.run(gate.check(n))) for n in range(4)]
        await _until(lambda: len(gate.started) == 2)
        waits = []
        for _ in range(2):
            with pytest.raises(Overloaded) as shed:
                await pool.run(gate.check(99))
            waits.append(shed.value.retry_after)
        gate.release.set()
        await asyncio.gather(*admitted)
        return waits

    try:
        assert run(scenario()) == [1, 1]
    finally:
        gate.release.set()
        pool.close()


def test_an_idle_thread_is_never_refused_even_past_max_wait() -> None:
    # A check dearer than max_wait still runs when nothing waits: no queue, nothing to shed.
    pool = HashingPool(HashingPolicy(workers=1, max_wait=0.1), cost=lambda: 1.0, clock=FakeClock())
    try:
        assert run(pool.run(lambda: "ok")) == "ok"
    finally:
        pool.close()


def test_a_caller_whose_deadline_is_too_near_is_refused_before_any_work() -> None:
    pool = HashingPool(HashingPolicy(workers=1, max_wait=10), cost=lambda: 1.0, clock=FakeClock())
    ran: list[int] = []
    try:
        with pytest.raises(Overloaded):
            run(pool.run(lambda: ran.append(1), time_left=0.5))
        assert ran == []
        assert run(pool.run(lambda: ran.append(2), time_left=5)) is None
        assert ran == [2]
    finally:
        pool.close()


def test_a_check_whose_caller_gave_up_while_queued_is_never_started() -> None:
    clock = FakeClock()
    pool = HashingPool(HashingPolicy(workers=1, max_wait=10), cost=lambda: 1.0, clock=clock)
    gate = Gate()

    async def scenario() -> None:
        first = asyncio.ensure_future(pool.run(gate.check(1)))
        await _until(lambda: gate.started == [1])
        late = asyncio.ensure_future(pool.run(gate.check(2), time_left=3))
        await asyncio.sleep(0.05)
        clock.now += 5  # its caller's deadline passes while it waits
        gate.release.set()
        assert await first == 1
        with pytest.raises(CallerGone):
            await late

    try:
        run(scenario())
        assert gate.started == [1]
        stats = pool.stats
        assert (stats.expired, stats.pending, stats.completed) == (1, 0, 1)
    finally:
        gate.release.set()
        pool.close()


def test_a_cancelled_call_leaves_the_queue_and_is_never_started() -> None:
    pool = HashingPool(HashingPolicy(workers=1, max_wait=10), cost=lambda: 1.0, clock=FakeClock())
    gate = Gate()

    async def scenario() -> None:
        first = asyncio.ensure_future(pool.run(gate.check(1)))
        await _until(lambda: gate.started == [1])
        queued = asyncio.ensure_future(pool.run(gate.check(2)))
        await asyncio.sleep(0.05)
        assert pool.stats.pending == 2
        queued.cancel()
        with pytest.raises(asyncio.CancelledError):
            await queued
        assert pool.stats.pending == 1  # its place is given back at once
        gate.release.set()
        assert await first == 1

    try:
        run(scenario())
        assert gate.started == [1]
        assert pool.stats.pending == 0
    finally:
        gate.release.set()
        pool.close()


def test_the_estimate_follows_slow_checks_but_never_drops_below_the_hash_cost() -> None:
    clock = FakeClock()
    pool = HashingPool(HashingPolicy(workers=1), cost=lambda: 0.2, clock=clock)

    def takes(seconds: float) -> Callable[[], None]:
        def work() -> None:
            clock.now += seconds

        return work

    try:
        for _ in range(20):
            run(pool.run(takes(0.001)))  # throttled attempts: a database round trip only
        assert pool.stats.estimate == pytest.approx(0.2)
        for _ in range(20):
            run(pool.run(takes(1.0)))  # a busy machine: each check takes longer
        assert pool.stats.estimate > 0.9
    finally:
        pool.close()


def test_the_estimate_follows_the_hash_cost_down_when_load_goes() -> None:
    hash_cost = [2.0]  # calibrated during a load spike
    pool = HashingPool(HashingPolicy(workers=1), cost=lambda: hash_cost[0], clock=FakeClock())
    try:
        assert pool.stats.estimate == 2.0
        hash_cost[0] = 0.05
        assert pool.stats.estimate == 0.05
    finally:
        pool.close()


def test_the_hasher_keeps_a_running_average_of_what_a_hash_costs() -> None:
    hasher = PasswordHasher(FAST_ARGON2)
    assert 0 < hasher.cost < 5
    hasher.cost = 100.0  # as if the first hash had met a load spike
    for _ in range(40):
        hasher.dummy_verify("whatever")
    assert hasher.cost < 1


@pytest.mark.parametrize(
    "changes",
    [
        pytest.param({"workers": 0}, id="no-workers"),
        pytest.param({"workers": True}, id="bool-workers"),
        pytest.param({"max_wait": 0}, id="zero-wait"),
        pytest.param({"max_wait": float("inf")}, id="infinite-wait"),
    ],
)
def test_unusable_policies_are_refused(changes: dict[str, Any]) -> None:
    with pytest.raises(ValueError):
        HashingPolicy(**changes)


def test_the_default_policy_uses_one_thread_per_cpu() -> None:
    assert HashingPolicy().resolved_workers >= 1
    assert HashingPolicy(workers=3).resolved_workers == 3


def _serve_config(tmp_path: Path, *flags: str) -> HashingPolicy:
    ns = build_parser().parse_args(
        ["serve", "--data-dir", str(tmp_path), "--issuer", ISSUER, "--audience", AUDIENCE, *flags]
    )
    return server_config(ns, issuer=ISSUER, audience=AUDIENCE).hashing


def test_the_pool_has_flags_and_environment_variables(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("SSOT_KEY_PASSPHRASE", "a-passphrase-of-enough-length")
    assert _serve_config(tmp_path) == HashingPolicy(workers=None, max_wait=3.0)
    assert _serve_config(tmp_path, "--hash-workers", "3", "--hash-max-wait", "0.5") == (
        HashingPolicy(workers=3, max_wait=0.5)
    )
    monkeypatch.setenv("SSOT_HASH_WORKERS", "4")
    monkeypatch.setenv("SSOT_HASH_MAX_WAIT", "1.5")
    assert _serve_config(tmp_path) == HashingPolicy(workers=4, max_wait=1.5)
    with pytest.raises(CommandError, match="--hash-max-wait"):
        _serve_config(tmp_path, "--hash-max-wait", "-1")
