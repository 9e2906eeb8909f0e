"""How fast key changes reach verifiers, and what watching for them costs, on real clocks.

    python benchmarks/bench_rotation.py [--trials 15] [--max-age 2]

Prints medians (and the worst trial) over ``--trials``, with ratios against a
same-run baseline:
  1. emergency revocation -> a token of the revoked key is refused, timed from
     the revoking commit:
       a. push verifier (AuthServiceSource), revoked by another process's store
          (what `ssot-auth keys revoke` does: the server learns it by polling);
       b. push verifier, revoked by the server's own store (published at once);
       c. HTTP verifier (HttpJwksSource) with ``--max-age``;
  2. the server's key poll: one published_set() + snapshot per 0.25 s, against
     a bare one-row SELECT on the same database (the floor of any poll).
"""

from __future__ import annotations

import argparse
import logging
import random
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from _common import ISSUER, Loop, auth_config  # before ours: it puts the repository on sys.path

from auth_server.app import RunningAuthServer, start_auth_server
from auth_server.authority import make_jwks_snapshot
from auth_server.keys import SigningKeyStore
from interceptors import (
    AuthError,
    AuthServiceSource,
    HttpJwksSource,
    KeyCache,
    TokenPolicy,
    TokenVerifier,
)
from protos import auth_pb2, auth_pb2_grpc

AUDIENCE = "bench"
PASSPHRASE = b"bench passphrase 0123456789"
PASSWORD = "bench password"


def refused_after(verifier: TokenVerifier, token: str, started: float, limit: float) -> float:
    """Seconds from ``started`` (epoch) until ``token`` stops verifying."""
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        try:
            verifier.verify(token)
        except AuthError:
            return time.time() - started
        time.sleep(0.001)
    raise SystemExit(f"a revoked key's token still verified after {limit} s")


def revocation_trials(
    server: RunningAuthServer,
    verifier: TokenVerifier,
    revoke: Callable[[str], None],
    trials: int,
    limit: float,
) -> list[float]:
    stub = auth_pb2_grpc.AuthServiceStub(channel := _channel(server))
    store = server.components.keys
    times = []
    try:
        for _ in range(trials):
            token = stub.Login(
                auth_pb2.LoginRequest(username="bench", password=PASSWORD), timeout=10
            ).access_token
            deadline = time.monotonic() + 10
            while True:  # the verifier learns the new key (pushed or refetched)
                try:
                    verifier.verify(token)
                    break
                except AuthError:
                    if time.monotonic() > deadline:
                        raise
                    time.sleep(0.01)
            kid = store.current().kid
            # Each trial starts right after a poll (that is how the verifier learned
            # the new key): revoke at a random phase of the poll cycle instead.
            time.sleep(random.uniform(0, server.config.key_poll_interval))
            revoke(kid)
            revoked_at = next(k.revoked_at for k in store.list_keys() if k.kid == kid)
            assert revoked_at is not None
            times.append(refused_after(verifier, token, revoked_at, limit))
    finally:
        channel.close()
    return times


def _channel(server: RunningAuthServer) -> Any:
    import grpc

    return grpc.insecure_channel(server.grpc_target)


def summary(times: list[float]) -> str:
    return f"median {statistics.median(times) * 1000:7.1f} ms   worst {max(times) * 1000:7.1f} ms"


def poll_cost(server: RunningAuthServer, repeats: int) -> tuple[float, float]:
    store = server.components.keys
    db = server.components.database

    def poll() -> None:
        published = store.published_set()
        make_jwks_snapshot(published.keys, 300, next_change_at=published.next_change_at)

    def floor() -> None:
        with db.transaction() as conn:
            conn.execute(sa.select(sa.literal(1))).scalar_one()

    def median_seconds(run: Callable[[], None]) -> float:
        samples = []
        for _ in range(repeats):
            started = time.perf_counter()
            for _ in range(100):
                run()
            samples.append((time.perf_counter() - started) / 100)
        return statistics.median(samples)

    return median_seconds(poll), median_seconds(floor)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=15)
    parser.add_argument("--max-age", type=int, default=2)
    args = parser.parse_args()
    logging.basicConfig(level=logging.ERROR)
    loop = Loop()
    with tempfile.TemporaryDirectory() as tmp:
        config = auth_config(
            Path(tmp),
            audience=AUDIENCE,
            passphrase=PASSPHRASE,
            algorithm="ES256",
            jwks_max_age=args.max_age,
        )
        server: RunningAuthServer = loop.run(start_auth_server(config))
        server.components.users.add("bench", PASSWORD, ())
        other = SigningKeyStore(server.components.database, PASSPHRASE, algorithm="ES256")
        policy = TokenPolicy(issuer=ISSUER, audience=AUDIENCE)
        push_keys = KeyCache(AuthServiceSource(server.grpc_target))
        http_keys = KeyCache(HttpJwksSource(f"{server.http_base_url}/.well-known/jwks.json"))
        push_keys.start()
        http_keys.start()
        push = TokenVerifier(push_keys, policy)
        http = TokenVerifier(http_keys, policy)
        try:
            print(f"trials: {args.trials}; key poll every {config.key_poll_interval} s")
            by_poll = revocation_trials(server, push, other.revoke, args.trials, 2.0)
            print(f"1a push, revoked by another process:  {summary(by_poll)}")
            at_once = revocation_trials(
                server, push, server.components.keys.revoke, args.trials, 2.0
            )
            print(f"1b push, revoked in the server:       {summary(at_once)}")
            over_http = revocation_trials(
                server, http, other.revoke, max(3, args.trials // 3), 3.0 * args.max_age + 2
            )
            print(f"1c HTTP, max-age {args.max_age} s:                 {summary(over_http)}")
            ratio = statistics.median(over_http) / statistics.median(by_poll)
            print(f"   HTTP / push (1c / 1a): {ratio:.1f}x")
            poll, floor = poll_cost(server, repeats=7)
            print(
                f"2  key poll {poll * 1e6:.0f} us vs bare SELECT {floor * 1e6:.0f} us"
                f" ({poll / floor:.1f}x); at 4 polls/s: {poll * 4 * 100:.2f}% of one core"
            )
        finally:
            push_keys.close()
            http_keys.close()
            loop.run(server.stop(0.5))


if __name__ == "__main__":
    main()
