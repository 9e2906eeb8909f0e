"""Throughput of the verifying interceptor and TokenVerifier, against same-run baselines.

    python benchmarks/bench_verify.py [--calls 2000] [--repeats 5]

Prints medians over ``--repeats`` runs and ratios, so figures from a noisy shared
machine stay comparable:
  1. unary RPCs on one resource server (sync and aio): the public method (no
     token) vs the protected method with one reused token (verified-token cache
     hits) vs a fresh token per call (full signature check each time);
  2. TokenVerifier.verify on distinct tokens vs raw `cryptography` RSA
     verification of the same tokens' signatures (the floor any verifier pays).
"""

from __future__ import annotations

import argparse
import base64
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import grpc
from _common import (  # before ours: it puts the repository on sys.path
    ISSUER,
    Loop,
    auth_config,
    median_rate,
)
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import padding

from auth_server.app import start_auth_server
from auth_server.tokens import TokenIssuer
from interceptors import HttpJwksSource, KeyCache, TokenPolicy, TokenVerifier
from protos import resource_pb2, resource_pb2_grpc
from resource_server import ResourceServerConfig, build_server, start_aio_server

AUDIENCE = "bench"


def interleaved_rates(runs: tuple[Callable[[], int], ...], repeats: int) -> list[float]:
    """Median rate of each run, alternating them round by round so drift hits all alike."""
    rates: list[list[float]] = [[] for _ in runs]
    for _ in range(repeats):
        for i, run in enumerate(runs):
            started = time.perf_counter()
            n = run()
            rates[i].append(n / (time.perf_counter() - started))
    return [statistics.median(r) for r in rates]


def b64decode(segment: str) -> bytes:
    return base64.urlsafe_b64decode(segment + "=" * (-len(segment) % 4))


def measure_rpcs(
    stub: resource_pb2_grpc.ResourceServiceStub,
    reused: str,
    fresh: list[str],
    calls: int,
    repeats: int,
) -> tuple[float, float, float]:
    """Median rates of: the public method, protected with one token, protected with new tokens."""
    public_req = resource_pb2.GetPublicInfoRequest()
    prot_req = resource_pb2.GetProtectedResourceRequest()
    md = (("authorization", f"Bearer {reused}"),)
    fresh_iter = iter(fresh)

    def public() -> int:
        for _ in range(calls):
            stub.GetPublicInfo(public_req)
        return calls

    def protected_reused() -> int:
        for _ in range(calls):
            stub.GetProtectedResource(prot_req, metadata=md)
        return calls

    def protected_fresh() -> int:
        for _ in range(calls):
            token = next(fresh_iter)
            stub.GetProtectedResource(prot_req, metadata=(("authorization", f"Bearer {token}"),))
        return calls

    protected_fresh()  # warm-up: loads keys, opens the connection
    public_rate, reused_rate, fresh_rate = interleaved_rates(
        (public, protected_reused, protected_fresh), repeats
    )
    return public_rate, reused_rate, fresh_rate


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--calls", type=int, default=2000)
    parser.add_argument("--repeats", type=int, default=5)
    ns = parser.parse_args()
    calls, repeats = ns.calls, ns.repeats

    loop = Loop()
    on_loop = loop.run

    with tempfile.TemporaryDirectory() as tmp:
        config = auth_config(Path(tmp), audience=AUDIENCE, passphrase=b"benchmark-passphrase-000")
        auth = on_loop(start_auth_server(config))
        user = auth.components.users.add("bench", "bench-password", ("resource.read",))
        issuer = TokenIssuer(auth.components.keys, issuer=ISSUER, audience=AUDIENCE)
        mint = lambda: issuer.issue(user, scopes=("resource.read",), session_id="s").access_token  # noqa: E731
        reused = mint()
        fresh = [mint() for _ in range(calls * (repeats + 1))]
        jwks_url = f"{auth.http_base_url}/.well-known/jwks.json"

        print(f"calls per run: {calls}, runs: {repeats}, figures are medians\n")
        print("1. unary RPC throughput on one resource server (one client, sequential calls)")
        for aio in (False, True):
            keys = KeyCache(HttpJwksSource(jwks_url))
            keys.start()
            verifier = TokenVerifier(keys, TokenPolicy(issuer=ISSUER, audience=AUDIENCE))
            rconfig = ResourceServerConfig(
                grpc_address="127.0.0.1:0", issuer=ISSUER, audience=AUDIENCE, jwks_url=jwks_url
            )
            if aio:
                aserver, port = on_loop(start_aio_server(rconfig, verifier))
            else:
                server, port = build_server(rconfig, verifier)
            channel = grpc.insecure_channel(f"127.0.0.1:{port}")
            stub = resource_pb2_grpc.ResourceServiceStub(channel)
            r_public, r_reused, r_fresh = measure_rpcs(stub, reused, fresh, calls, repeats)
            kind = "aio " if aio else "sync"
            rows = [
                ("public method", r_public),
                ("protected, reused token", r_reused),
                ("protected, fresh token", r_fresh),
            ]
            for label, rate in rows:
                print(f"  {kind} {label:24} {rate:9.0f} rpc/s   {rate / r_public:.2f}")
            channel.close()
            if aio:
                on_loop(aserver.stop(0))
            else:
                server.stop(0)
            keys.close()

        print("\n2. signature checks per second, one thread (distinct tokens, no cache hits)")
        keys = KeyCache(HttpJwksSource(jwks_url))
        keys.start()
        verifier = TokenVerifier(keys, TokenPolicy(issuer=ISSUER, audience=AUDIENCE))
        public_key = auth.components.keys.current().private_key.public_key()
        tokens = fresh[:calls]
        parts = [t.split(".") for t in tokens]
        inputs = [(f"{h}.{p}".encode(), b64decode(s)) for h, p, s in parts]
        verifier.verify(tokens[0])

        def raw() -> int:
            for signing_input, signature in inputs:
                public_key.verify(signature, signing_input, padding.PKCS1v15(), hashes.SHA256())
            return len(inputs)

        def full() -> int:
            # A fresh verifier per run, so no token is a cache hit.
            v = TokenVerifier(keys, TokenPolicy(issuer=ISSUER, audience=AUDIENCE))
            for t in tokens:
                v.verify(t)
            return len(tokens)

        r_raw, r_full = interleaved_rates((raw, full), repeats)
        cached = TokenVerifier(keys, TokenPolicy(issuer=ISSUER, audience=AUDIENCE))
        cached.verify(reused)

        def hits() -> int:
            for _ in range(calls):
                cached.verify(reused)
            return calls

        r_hit = median_rate(hits, repeats)
        print(f"  raw cryptography RSA verify    {r_raw:9.0f} /s   1.00")
        print(f"  TokenVerifier.verify           {r_full:9.0f} /s   {r_full / r_raw:.2f}")
        print(f"  TokenVerifier.verify (cached)  {r_hit:9.0f} /s   {r_hit / r_raw:.2f}")
        keys.close()
        on_loop(auth.stop(0))
    loop.loop.call_soon_threadsafe(loop.loop.stop)
    return 0


if __name__ == "__main__":
    sys.exit(main())
