"""Revocation propagation and Refresh throughput, against same-run baselines.

    python benchmarks/bench_sessions.py [--samples 30] [--refreshes 500] [--repeats 5]
        [--postgres postgresql+psycopg://postgres@127.0.0.1:5432/test]

The process pins itself to one CPU (``sched_setaffinity``), so every figure is
"on one core", servers and client included. Prints medians:
  1. Logout -> rejection at a resource server that follows WatchRevocations (sync and
     aio interceptors): from Logout returning until a call with the session's (cached)
     access token is refused, probing with back-to-back RPCs; baseline: one protected RPC.
     Also a revocation made by another process (``ssot-auth sessions revoke``), which
     the auth service learns by polling the database every 0.25 s.
  2. Refresh throughput, one thread, on SQLite and (with --postgres) PostgreSQL:
     TokenAuthority.refresh (rotation transaction + access token), and the Refresh RPC;
     baseline: TokenIssuer.issue alone (the RS256 signature every refresh pays).
"""

from __future__ import annotations

import argparse
import contextlib
import os
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import TypeVar

import grpc
import jwt
from _common import (  # before ours: it puts the repository on sys.path
    ISSUER,
    Loop,
    auth_config,
    median_rate,
    postgres_schema,
)

from auth_server.app import RunningAuthServer, start_auth_server
from auth_server.sessions import SessionStore
from auth_server.storage import Database
from auth_server.throttle import ThrottlePolicy
from auth_server.tokens import TokenIssuer
from interceptors import (
    AuthServiceSource,
    RevocationList,
    TokenPolicy,
    TokenVerifier,
)
from protos import auth_pb2, auth_pb2_grpc, resource_pb2, resource_pb2_grpc
from resource_server import ResourceServerConfig, build_server, start_aio_server

AUDIENCE = "bench"
PASSWORD = "bench-password"
T = TypeVar("T")


def start(loop: Loop, data_dir: Path, database_url: str | None) -> RunningAuthServer:
    config = auth_config(
        data_dir,
        audience=AUDIENCE,
        passphrase=b"benchmark-passphrase-000",
        database_url=database_url,
        throttle=ThrottlePolicy(enabled=False),
    )
    return loop.run(start_auth_server(config))


def probe_until_refused(stub: resource_pb2_grpc.ResourceServiceStub, token: str) -> float:
    request = resource_pb2.GetProtectedResourceRequest()
    metadata = (("authorization", f"Bearer {token}"),)
    started = time.perf_counter()
    while time.perf_counter() - started < 10:
        try:
            stub.GetProtectedResource(request, metadata=metadata, timeout=5)
        except grpc.RpcError:
            return time.perf_counter() - started
    raise RuntimeError("the revoked token was still accepted after 10 s")


def measure_propagation(
    loop: Loop, auth: RunningAuthServer, samples: int
) -> list[tuple[str, float, float, float]]:
    rows = []
    auth_channel = grpc.insecure_channel(auth.grpc_target)
    auth_stub = auth_pb2_grpc.AuthServiceStub(auth_channel)
    other_process = SessionStore(Database(auth.config.resolved_database_url))
    for aio in (False, True):
        verifier = TokenVerifier.from_source(
            AuthServiceSource(auth.grpc_target), TokenPolicy(issuer=ISSUER, audience=AUDIENCE)
        )
        assert isinstance(verifier.revocations, RevocationList)
        verifier.revocations.wait_until_synced(10)
        rconfig = ResourceServerConfig(
            grpc_address="127.0.0.1:0", issuer=ISSUER, audience=AUDIENCE, auth_target="x:1"
        )
        if aio:
            aserver, port = loop.run(start_aio_server(rconfig, verifier))
        else:
            server, port = build_server(rconfig, verifier)
        channel = grpc.insecure_channel(f"127.0.0.1:{port}")
        stub = resource_pb2_grpc.ResourceServiceStub(channel)
        request = resource_pb2.GetProtectedResourceRequest()

        def session(
            stub: resource_pb2_grpc.ResourceServiceStub = stub,
            request: resource_pb2.GetProtectedResourceRequest = request,
        ) -> tuple[auth_pb2.TokenResponse, tuple[tuple[str, str]]]:
            login = auth_stub.Login(
                auth_pb2.LoginRequest(username="bench", password=PASSWORD), timeout=10
            )
            md = (("authorization", f"Bearer {login.access_token}"),)
            stub.GetProtectedResource(request, metadata=md, timeout=5)  # now a cache hit
            return login, md

        rpc, by_logout, by_cli = [], [], []
        for _ in range(samples):
            login, md = session()
            started = time.perf_counter()
            stub.GetProtectedResource(request, metadata=md, timeout=5)
            rpc.append(time.perf_counter() - started)
            auth_stub.Logout(auth_pb2.LogoutRequest(refresh_token=login.refresh_token), timeout=10)
            by_logout.append(probe_until_refused(stub, login.access_token))

            login, md = session()
            sid = jwt.decode(login.access_token, options={"verify_signature": False})["sid"]
            # At a random point of the poll cycle (the loop would otherwise lock onto it).
            time.sleep(random.uniform(0, 0.25))
            other_process.revoke(sid)
            by_cli.append(probe_until_refused(stub, login.access_token))
        kind = "aio " if aio else "sync"
        rows.append((kind, statistics.median(rpc), statistics.median(by_logout), max(by_logout)))
        rows.append(
            (
                kind + " (other process)",
                statistics.median(rpc),
                statistics.median(by_cli),
                max(by_cli),
            )
        )
        channel.close()
        if aio:
            loop.run(aserver.stop(0))
        else:
            server.stop(0)
        verifier.close()
    auth_channel.close()
    return rows


def measure_refresh(auth: RunningAuthServer, n: int, repeats: int) -> tuple[float, float, float]:
    components = auth.components
    user = components.users.get("bench")
    assert user is not None
    issuer = TokenIssuer(components.keys, issuer=ISSUER, audience=AUDIENCE)
    authority = components.authority
    token = authority.login("bench", PASSWORD).refresh_token

    def issue() -> int:
        for _ in range(n):
            issuer.issue(user, scopes=(), session_id="s")
        return n

    def refresh_direct() -> int:
        nonlocal token
        for _ in range(n):
            token = authority.refresh(token).refresh_token
        return n

    with grpc.insecure_channel(auth.grpc_target) as channel:
        stub = auth_pb2_grpc.AuthServiceStub(channel)

        def refresh_rpc() -> int:
            nonlocal token
            for _ in range(n):
                token = stub.Refresh(auth_pb2.RefreshRequest(refresh_token=token)).refresh_token
            return n

        refresh_rpc()  # warm-up
        return (
            median_rate(issue, repeats),
            median_rate(refresh_direct, repeats),
            median_rate(refresh_rpc, repeats),
        )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--samples", type=int, default=30)
    parser.add_argument("--refreshes", type=int, default=500)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--postgres", default=os.environ.get("SSOT_TEST_DATABASE_URL"))
    ns = parser.parse_args()
    if hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, {min(os.sched_getaffinity(0))})
    loop = Loop()
    with tempfile.TemporaryDirectory() as tmp:
        auth = start(loop, Path(tmp), None)
        auth.components.users.add("bench", PASSWORD, ("resource.read",))
        print(f"one CPU; medians of {ns.samples} samples\n")
        print("1. revocation -> first refused call at a subscribed resource server")
        print("   (the probe is back-to-back RPCs: its resolution is one RPC)")
        for kind, rpc, median, worst in measure_propagation(loop, auth, ns.samples):
            print(
                f"  {kind:22} {median * 1000:7.1f} ms  (max {worst * 1000:6.1f} ms)"
                f"   one protected RPC {rpc * 1000:5.2f} ms   ratio {median / rpc:6.1f}"
            )
        loop.run(auth.stop(0))

        print(f"\n2. refreshes per second, one thread ({ns.refreshes} per run, {ns.repeats} runs)")
        backends: list[tuple[str, str | None]] = [("sqlite", None)]
        if ns.postgres:
            backends.append(("postgresql", ns.postgres))
        for name, base in backends:
            with contextlib.ExitStack() as stack:
                url = stack.enter_context(postgres_schema(base)) if base else None
                auth = start(loop, Path(tmp) / name, url)
                auth.components.users.add("bench", PASSWORD, ("resource.read",))
                r_issue, r_direct, r_rpc = measure_refresh(auth, ns.refreshes, ns.repeats)
                print(f"  {name:10} TokenIssuer.issue (baseline)  {r_issue:7.0f} /s   1.00")
                print(
                    f"  {name:10} TokenAuthority.refresh        {r_direct:7.0f} /s"
                    f"   {r_direct / r_issue:.2f}"
                )
                print(
                    f"  {name:10} Refresh RPC                   {r_rpc:7.0f} /s"
                    f"   {r_rpc / r_issue:.2f}"
                )
                loop.run(auth.stop(0))
    loop.loop.call_soon_threadsafe(loop.loop.stop)
    return 0


if __name__ == "__main__":
    sys.exit(main())
