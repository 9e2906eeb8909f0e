"""Under a login flood the auth service keeps its promises (issue 15).

A flood of concurrent logins for unknown users (each a full argon2 verification,
by design) comes from its own process (``tests/login_flood.py``), with the
per-address throttle raised out of the way, as when a flood comes from many
addresses. The auth service runs in this process; an honest client refreshes
its token and logs out, and a resource server follows ``WatchRevocations``.
argon2 is cheaper here than in production (32 MiB, one pass: ~25 ms) and the
queue bound short (0.1 s), so that the flood saturates the password-check pool
within a second and sheds; yet dear enough that Refresh queued behind the
flood's hashes, as before the pool, would wait ~0.5 s.

A shed flood client waits 0.1 s before it tries again (a client library's
minimum backoff), short of the ``retry-after`` it was given. One that retries
at once turns a login flood into a flood of cheap RPCs, whose cost is the gRPC
layer's own and no password pool can shed; ``benchmarks/bench_overload.py``
measures that case too.
"""

from __future__ import annotations

import contextlib
import json
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from concurrent.futures import Future
from pathlib import Path
from typing import Any

import grpc
import pytest

from auth_server.hashing import HashingPolicy
from auth_server.passwords import Argon2Parameters
from auth_server.throttle import ThrottlePolicy
from helpers import (
    AuthHarness,
    EventLoopThread,
    bearer,
    make_config,
    running_resource,
    start_harness,
)
from protos import auth_pb2, resource_pb2

FLOOD_SCRIPT = Path(__file__).resolve().parent / "login_flood.py"
SHED_PAUSE = 0.1
PASSWORD = "honest client password"
FLOOD_ARGON2 = Argon2Parameters(time_cost=1, memory_cost=32 * 1024, parallelism=1)
# Out of the way: a flood from many addresses never trips the per-address layers.
RAISED_THROTTLE = ThrottlePolicy(per_address=10**9, per_user_address=10**9)
SAMPLES = 60
# The bound: Refresh's p99 during the flood is at most this multiple of its p99
# measured quiet in the same test, or quiet + 200 ms, whichever is larger (a quiet
# p99 of a few ms would otherwise make the bound a coin toss on a shared 2-CPU
# machine, where two hashing threads fill both CPUs). Reached here: 60-150 ms under
# the flood against 12-60 ms quiet. Before the pool it was ~500x (8 ms quiet, ~4 s
# under 40 logins with production argon2).
P99_FACTOR = 5
P99_SLACK = 0.2


def _p99(values: list[float]) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(0.99 * (len(ordered) - 1)))]


@contextlib.contextmanager
def login_flood(target: str, concurrency: int) -> Iterator[dict[str, int]]:
    """A login flood from another process; yields the dict its counts land in when it stops."""
    counts: dict[str, int] = {}
    with subprocess.Popen(
        [
            *(sys.executable, str(FLOOD_SCRIPT), target),
            *("--concurrency", str(concurrency), "--shed-pause", str(SHED_PAUSE)),
        ],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    ) as proc:
        assert proc.stdin is not None and proc.stdout is not None
        try:
            assert "started" in proc.stdout.readline()
            yield counts
        finally:
            proc.stdin.close()  # the stop signal
            out = proc.stdout.read()
            proc.wait(60)
            counts.update(json.loads(out.strip().splitlines()[-1]))


def _until(predicate: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, what
        time.sleep(0.02)


@pytest.fixture
def flood_auth(
    loop_thread: EventLoopThread, tmp_path: Path, database_url: str
) -> Iterator[AuthHarness]:
    config = make_config(
        tmp_path,
        database_url,
        argon2=FLOOD_ARGON2,
        throttle=RAISED_THROTTLE,
        hashing=HashingPolicy(workers=2, max_wait=0.1),
    )
    harness = start_harness(loop_thread, config)
    yield harness
    harness.channel.close()
    harness.stop()


def _refresh_latencies(harness: AuthHarness, token: str, n: int) -> tuple[list[float], str]:
    latencies = []
    for _ in range(n):
        started = time.perf_counter()
        token = harness.refresh(token).refresh_token
        latencies.append(time.perf_counter() - started)
        time.sleep(0.02)
    return latencies, token


def _shed_login(harness: AuthHarness, name: str, password: str) -> grpc.RpcError:
    """Log in until shed (the pool is saturated, not every attempt need be refused)."""
    for _ in range(200):
        try:
            harness.login(name, password)
        except grpc.RpcError as exc:
            if exc.code() == grpc.StatusCode.RESOURCE_EXHAUSTED:  # type: ignore[attr-defined]
                return exc
    pytest.fail(f"no login of {name} was shed during the flood")


@pytest.mark.slow
def test_a_login_flood_leaves_refresh_logout_and_revocation_on_time(
    loop_thread: EventLoopThread, flood_auth: AuthHarness
) -> None:
    auth = flood_auth
    auth.add_user("alice", PASSWORD, ("resource.read",))
    with running_resource(loop_thread, auth, aio=False, push=True) as resource:
        refreshing = auth.login("alice", PASSWORD).refresh_token
        ending = auth.login("alice", PASSWORD)
        request = resource_pb2.GetProtectedResourceRequest()
        resource.stub.GetProtectedResource(request, metadata=bearer(ending.access_token))

        _, refreshing = _refresh_latencies(auth, refreshing, 5)  # warm-up
        quiet, refreshing = _refresh_latencies(auth, refreshing, SAMPLES)
        hashing = auth.server.hashing
        assert hashing is not None
        with login_flood(auth.target, 40) as counts:
            _until(lambda: hashing.stats.shed > 0, 20, "the flood never saturated the pool")
            shed_before = hashing.stats.shed
            flooded, refreshing = _refresh_latencies(auth, refreshing, SAMPLES)

            # Revocation is never shed: Logout answers and the verifier refuses the
            # session's (cached) access token within a second.
            started = time.perf_counter()
            auth.logout(ending.refresh_token)
            while time.perf_counter() - started < 5:
                try:
                    resource.stub.GetProtectedResource(
                        request, metadata=bearer(ending.access_token), timeout=5
                    )
                except grpc.RpcError as exc:
                    assert exc.code() == grpc.StatusCode.UNAUTHENTICATED
                    break
            refused_after = time.perf_counter() - started

            # Known and unknown users are shed alike, before any password check.
            for name in ("alice", "nobody"):
                shed = _shed_login(auth, name, PASSWORD)
                assert shed.details() == "server busy, retry later"  # type: ignore[attr-defined]
                trailers = dict(shed.trailing_metadata())  # type: ignore[attr-defined]
                assert int(trailers["retry-after"]) >= 1
            # Still saturated while we measured.
            assert hashing.stats.shed > shed_before
        flood_stopped = time.perf_counter()
        # The flood is over: the next login is admitted at once.
        auth.login("alice", PASSWORD)
        first_login_after = time.perf_counter() - flood_stopped
        # Quiet again: a second baseline, so load from outside this test that came
        # or went meanwhile weighs on both sides of the comparison.
        quiet_after, refreshing = _refresh_latencies(auth, refreshing, SAMPLES)

    quiet_p99, flooded_p99 = max(_p99(quiet), _p99(quiet_after)), _p99(flooded)
    report = (
        f"Refresh quiet median {statistics.median(quiet) * 1000:.1f} ms p99 {quiet_p99 * 1000:.1f}"
        f" ms; flooded median {statistics.median(flooded) * 1000:.1f} ms p99"
        f" {flooded_p99 * 1000:.1f} ms; logout refused after {refused_after * 1000:.0f} ms;"
        f" first login after {first_login_after * 1000:.0f} ms; flood {counts}"
    )
    print(report)
    assert flooded_p99 <= max(P99_FACTOR * quiet_p99, quiet_p99 + P99_SLACK), report
    assert refused_after < 1.0, report
    assert counts.get("UNAUTHENTICATED", 0) > 0, report  # logins were checked throughout
    assert counts.get("RESOURCE_EXHAUSTED", 0) > 0, report
    assert counts.get("retry_after") == counts["RESOURCE_EXHAUSTED"], report
    assert set(counts) <= {"UNAUTHENTICATED", "RESOURCE_EXHAUSTED", "retry_after", "elapsed_ms"}
    assert first_login_after < 1.0, report


@pytest.fixture
def slow_auth(loop_thread: EventLoopThread, tmp_path: Path) -> Iterator[AuthHarness]:
    """One password-check thread and ~0.1-0.3 s a check: a queue is easy to build."""
    config = make_config(
        tmp_path,
        argon2=Argon2Parameters(time_cost=2, memory_cost=65536, parallelism=1),
        throttle=RAISED_THROTTLE,
        hashing=HashingPolicy(workers=1, max_wait=30),
    )
    harness = start_harness(loop_thread, config)
    yield harness
    harness.channel.close()
    harness.stop()


def _login_future(harness: AuthHarness, name: str, **kwargs: Any) -> Future[Any]:
    request = auth_pb2.LoginRequest(username=name, password=PASSWORD)
    return harness.stub.Login.future(request, **kwargs)  # type: ignore[no-any-return]


def test_a_caller_that_cancels_while_queued_is_never_checked(slow_auth: AuthHarness) -> None:
    hashing = slow_auth.server.hashing
    assert hashing is not None
    running = _login_future(slow_auth, "first", timeout=30)
    _until(lambda: hashing.stats.pending == 1, 10, "the first login never started")
    queued = _login_future(slow_auth, "second", timeout=30)
    _until(lambda: hashing.stats.pending == 2, 10, "the second login never queued")
    queued.cancel()
    _until(lambda: hashing.stats.pending == 1, 10, "the cancelled login kept its place")
    with pytest.raises(grpc.RpcError) as first:
        running.result(30)
    assert first.value.code() == grpc.StatusCode.UNAUTHENTICATED  # type: ignore[attr-defined]
    time.sleep(0.3)
    stats = hashing.stats
    assert (stats.completed, stats.pending) == (1, 0)  # the cancelled one never ran


@pytest.mark.slow
def test_a_caller_whose_deadline_cannot_be_met_is_refused_at_once(slow_auth: AuthHarness) -> None:
    hashing = slow_auth.server.hashing
    assert hashing is not None
    running = _login_future(slow_auth, "first", timeout=30)
    _until(lambda: hashing.stats.pending == 1, 10, "the first login never started")
    # Behind a running check, its answer could not come within its deadline.
    estimate = hashing.stats.estimate
    started = time.perf_counter()
    with pytest.raises(grpc.RpcError) as refused:
        slow_auth.stub.Login(
            auth_pb2.LoginRequest(username="second", password=PASSWORD), timeout=estimate * 1.5
        )
    assert refused.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED  # type: ignore[attr-defined]
    assert time.perf_counter() - started < estimate
    with pytest.raises(grpc.RpcError):
        running.result(30)
    assert hashing.stats.completed == 1


@pytest.mark.slow
def test_unknown_and_known_users_cost_one_check_alike_when_not_overloaded(
    slow_auth: AuthHarness,
) -> None:
    slow_auth.add_user("alice", PASSWORD)
    timings: dict[str, list[float]] = {"alice": [], "nobody": []}
    answers = set()
    for _ in range(5):
        for name in timings:  # interleaved: load from outside weighs on both alike
            started = time.perf_counter()
            with pytest.raises(grpc.RpcError) as failed:
                slow_auth.login(name, "wrong password")
            timings[name].append(time.perf_counter() - started)
            answers.add((failed.value.code(), failed.value.details()))  # type: ignore[attr-defined]
    assert answers == {(grpc.StatusCode.UNAUTHENTICATED, "invalid username or password")}
    known, unknown = (statistics.median(timings[n]) for n in ("alice", "nobody"))
    # Each is one full argon2 verification: a path that skipped it would be ~100x faster.
    assert 0.5 < unknown / known < 2, timings
