"""Refresh over gRPC with concurrent clients, against the raw RS256 signing rate of the same run.

    python benchmarks/bench_refresh.py [--clients 16] [--seconds 4] [--repeats 5]
        [--postgres postgresql+psycopg://postgres@127.0.0.1:5432/test]

The auth service runs in this process; the load generator runs in a child process
with ``--clients`` threads, each chaining its own session's refresh tokens (every
call spends the token the previous one returned). Each round measures, in turn:

  * the baseline: RS256 signatures per second on one core (``cryptography``, the
    service's own key size, this process's thread CPU time), the cost every
    Refresh pays once;
  * Refresh calls per second over the whole run (wall clock, the 2 cores shared by
    server and clients), and the auth process's CPU time per Refresh, split into
    user and system time (``os.times``);
  * the floor: the same load generator calling ``GetJwks``, the cheapest unary RPC
    of the same server stack (interceptor, servicer, aio server), for its server
    CPU per call. The cheapest conceivable token-issuing RPC costs that plus one
    signature, so ``GetJwks`` CPU + 1 / signatures per second is the least server
    CPU a Refresh could cost in this process, with no database at all.

Printed: medians over ``--repeats`` rounds, and the goal row as ratios: Refresh/s
divided by signatures/s on one core (throughput, the load generator sharing the
cores), and per core from CPU time, the signature's CPU over the Refresh's CPU
(goal >= 0.5, that is a Refresh costing at most two signatures of server CPU),
beside the same ratio for the floor and Refresh against the floor; on SQLite and,
with ``--postgres`` (or ``SSOT_TEST_DATABASE_URL``), on PostgreSQL.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Coroutine, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import grpc
import sqlalchemy as sa
from cryptography.hazmat.primitives.asymmetric import rsa

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from _common import signing_rate  # noqa: E402

from auth_server.app import RunningAuthServer, start_auth_server  # noqa: E402
from auth_server.config import AuthServerConfig  # noqa: E402
from auth_server.passwords import Argon2Parameters  # noqa: E402
from auth_server.throttle import ThrottlePolicy  # noqa: E402
from protos import auth_pb2, auth_pb2_grpc  # noqa: E402

ISSUER = "http://127.0.0.1:8080"
AUDIENCE = "bench"
PASSWORD = "bench-password"
T = TypeVar("T")


class Loop:
    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        threading.Thread(target=self.loop.run_forever, daemon=True).start()

    def run(self, coro: Coroutine[Any, Any, T]) -> T:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(120)


@contextlib.contextmanager
def postgres_schema(base_url: str) -> Iterator[str]:
    name = "bench_" + uuid.uuid4().hex[:12]
    admin = sa.create_engine(base_url)
    with admin.begin() as conn:
        conn.execute(sa.text(f'CREATE SCHEMA "{name}"'))
    try:
        sep = "&" if "?" in base_url else "?"
        yield f"{base_url}{sep}options=-csearch_path%3D{name}"
    finally:
        with admin.begin() as conn:
            conn.execute(sa.text(f'DROP SCHEMA IF EXISTS "{name}" CASCADE'))
        admin.dispose()


def drive(target: str, tokens: list[str], seconds: float, method: str = "Refresh") -> int:
    """Child process: one thread per token chain, refreshing until ``seconds`` pass.

    With ``method="GetJwks"`` each thread calls ``GetJwks`` instead (the floor).
    """
    channel = grpc.insecure_channel(target)
    stub = auth_pb2_grpc.AuthServiceStub(channel)
    counts = [0] * len(tokens)
    failures: list[Exception] = []
    start = threading.Barrier(len(tokens) + 1)
    floor = method == "GetJwks"
    jwks_request = auth_pb2.GetJwksRequest()

    def chain(index: int) -> None:
        token = tokens[index]
        start.wait()
        deadline = time.perf_counter() + seconds
        try:
            while time.perf_counter() < deadline:
                if floor:
                    stub.GetJwks(jwks_request, timeout=30)
                else:
                    request = auth_pb2.RefreshRequest(refresh_token=token)
                    token = stub.Refresh(request, timeout=30).refresh_token
                counts[index] += 1
        except Exception as exc:  # reported to the parent
            failures.append(exc)
        tokens[index] = token

    threads = [threading.Thread(target=chain, args=(i,)) for i in range(len(tokens))]
    for thread in threads:
        thread.start()
    start.wait()
    started = time.perf_counter()
    for thread in threads:
        thread.join()
    elapsed = time.perf_counter() - started
    channel.close()
    print(json.dumps({"count": sum(counts), "elapsed": elapsed, "tokens": tokens}))
    if failures:
        print(f"{len(failures)} chains failed: {failures[0]!r}", file=sys.stderr)
        return 1
    return 0


@dataclass(frozen=True)
class Round:
    """One load-generator run: calls per second, and the auth process's CPU per call."""

    rate: float
    user_ms: float
    system_ms: float

    @property
    def cpu_ms(self) -> float:
        return self.user_ms + self.system_ms


def load(target: str, tokens: list[str], seconds: float, method: str) -> tuple[Round, list[str]]:
    """Run the load generator once against this process's server; its figures and tokens."""
    before = os.times()
    done = subprocess.run(
        [
            sys.executable,
            __file__,
            "--drive",
            target,
            "--method",
            method,
            "--seconds",
            str(seconds),
        ],
        input=json.dumps(tokens),
        capture_output=True,
        text=True,
        timeout=seconds * 10 + 60,
        check=False,
    )
    after = os.times()
    if done.returncode != 0:
        raise RuntimeError(f"load generator failed: {done.stderr.strip()[-300:]}")
    result = json.loads(done.stdout)
    count = result["count"]
    # os.times() of this process only (the load generator is a child whose times
    # are counted apart, in children_user/children_system).
    round_ = Round(
        rate=count / result["elapsed"],
        user_ms=(after.user - before.user) / count * 1e3,
        system_ms=(after.system - before.system) / count * 1e3,
    )
    return round_, result["tokens"]


def report(name: str, clients: int, sign: float, refresh: list[Round], floor: list[Round]) -> None:
    def med(rounds: list[Round], field: str) -> float:
        return float(statistics.median(getattr(r, field) for r in rounds))

    sign_ms = 1e3 / sign
    rate, cpu = med(refresh, "rate"), med(refresh, "cpu_ms")
    user, system = med(refresh, "user_ms"), med(refresh, "system_ms")
    floor_rpc = med(floor, "cpu_ms")
    floor_cpu = floor_rpc + sign_ms
    print(
        f"  {name:10} RS256 signatures, one core   {sign:7.0f} /s   1.00   ({sign_ms:.3f} ms each)"
    )
    print(
        f"  {name:10} Refresh RPC, {clients} clients     {rate:7.0f} /s   {rate / sign:.2f}"
        f"  (goal >= 0.5)   auth CPU {cpu:.2f} ms/refresh"
        f" ({sign_ms:.2f} ms of it the signature; user {user:.2f} + system {system:.2f})"
    )
    print(
        f"  {name:10} Refresh per core (CPU)      {1e3 / cpu:7.0f} /s   {sign_ms / cpu:.2f}"
        f"  (goal >= 0.5: at most {2 * sign_ms:.2f} ms of auth CPU per Refresh)"
    )
    print(
        f"  {name:10} floor: GetJwks + 1 signature"
        f" {1e3 / floor_cpu:6.0f} /s   {sign_ms / floor_cpu:.2f}"
        f"  per core; GetJwks auth CPU {floor_rpc:.3f} ms"
        f" (user {med(floor, 'user_ms'):.3f} + system {med(floor, 'system_ms'):.3f})"
        f" + {sign_ms:.3f} ms = {floor_cpu:.3f} ms"
    )
    print(f"  {name:10} Refresh vs the floor (CPU per call): {floor_cpu / cpu:.2f}")


def run_backend(
    name: str, database_url: str | None, clients: int, seconds: float, repeats: int
) -> None:
    loop = Loop()
    with tempfile.TemporaryDirectory() as tmp:
        config = AuthServerConfig(
            grpc_address="127.0.0.1:0",
            http_address="127.0.0.1:0",
            data_dir=Path(tmp),
            database_url=database_url,
            issuer=ISSUER,
            audience=AUDIENCE,
            key_passphrase=b"benchmark-passphrase-000",
            argon2=Argon2Parameters(time_cost=1, memory_cost=1024),
            throttle=ThrottlePolicy(enabled=False),
        )
        auth: RunningAuthServer = loop.run(start_auth_server(config))
        try:
            components = auth.components
            components.users.add("bench", PASSWORD, ("resource.read",))
            tokens = [
                components.authority.login("bench", PASSWORD).refresh_token for _ in range(clients)
            ]
            key = components.keys.current().private_key
            assert isinstance(key, rsa.RSAPrivateKey)
            signs: list[float] = []
            refresh: list[Round] = []
            floor: list[Round] = []
            for round_ in range(repeats + 1):
                signs.append(signing_rate(key))
                result, tokens = load(auth.grpc_target, tokens, seconds, "Refresh")
                jwks, _ = load(auth.grpc_target, tokens, seconds, "GetJwks")
                if round_ > 0:  # the first round warms up
                    refresh.append(result)
                    floor.append(jwks)
            report(name, clients, statistics.median(signs), refresh, floor)
        finally:
            loop.run(auth.stop(0))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument("--seconds", type=float, default=4.0)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--postgres", default=os.environ.get("SSOT_TEST_DATABASE_URL"))
    parser.add_argument("--no-sqlite", action="store_true")
    parser.add_argument("--drive", help=argparse.SUPPRESS)
    parser.add_argument("--method", default="Refresh", help=argparse.SUPPRESS)
    ns = parser.parse_args(argv)
    if ns.drive:
        return drive(ns.drive, json.loads(sys.stdin.read()), ns.seconds, ns.method)
    print(
        f"Refresh over gRPC, load generator in its own process; {ns.repeats} rounds of"
        f" {ns.seconds:g} s, medians; {os.cpu_count()} cores shared by server and clients"
    )
    if not ns.no_sqlite:
        run_backend("sqlite", None, ns.clients, ns.seconds, ns.repeats)
    if ns.postgres:
        with postgres_schema(ns.postgres) as url:
            run_backend("postgresql", url, ns.clients, ns.seconds, ns.repeats)
    else:
        print("  postgresql skipped (no --postgres / SSOT_TEST_DATABASE_URL)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
