"""client_credentials grants over gRPC and HTTP, private_key_jwt and secret, against raw RS256.

    python benchmarks/bench_client_credentials.py [--clients 8] [--seconds 3] [--repeats 3]
        [--postgres postgresql+psycopg://postgres@127.0.0.1:5432/test]

The auth service runs in this process; the load generator runs in a child process
with ``--clients`` threads, each asking for a new client-credentials token again and
again: over gRPC (``AuthService.Token``) and over HTTP (``POST /oauth2/token``, one
keep-alive connection per thread), authenticating with a private_key_jwt assertion
(a fresh one, new ``jti``, signed in the child for every request) or with a secret
(``client_secret_post`` over gRPC, ``client_secret_basic`` over HTTP).

Each round measures, in turn:

  * the baseline: RS256 signatures per second on one core (``cryptography``, the
    service's own key, this thread's CPU time): every grant signs one token;
  * grants per second over the round (wall clock, the machine's cores shared by
    server and load generator), and the auth process's CPU time per grant. Its
    inverse, "grants/s per core", is what one core of the auth service sustains.

Printed: medians over ``--repeats`` rounds (after a warm-up round), with the ratio of
grants per core to signatures per core (issue 9's goal: >= 0.5; Keycloak's sizing
guide budgets 120 client-credentials grants/s per vCPU). Throttling and the HTTP
rate limiter are off, as for any load test.
"""

from __future__ import annotations

import argparse
import base64
import http.client
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.parse
from pathlib import Path
from typing import Any

import grpc
from _common import (  # before ours: it puts the repository on sys.path
    Loop,
    auth_config,
    postgres_schema,
    signing_rate,
)
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from auth_server.app import RunningAuthServer, start_auth_server
from auth_server.jwk import public_jwk
from auth_server.ratelimit import RateLimit, RateLimits
from auth_server.throttle import ThrottlePolicy
from interceptors._service_identity import ClientAuth, ClientSecret, PrivateKeyJwt
from protos import auth_pb2_grpc

ISSUER = "http://127.0.0.1:8080"
AUDIENCE = "bench"
MODES = (
    ("grpc", "private_key_jwt"),
    ("grpc", "secret"),
    ("http", "private_key_jwt"),
    ("http", "secret"),
)


def drive(spec: dict[str, Any], seconds: float) -> int:
    """Child process: ``clients`` threads asking for tokens until ``seconds`` pass."""
    if spec["method"] == "private_key_jwt":
        key = serialization.load_pem_private_key(spec["key_pem"].encode(), password=None)
        credentials: Any = PrivateKeyJwt(client_id=spec["client_id"], key=key, issuer=ISSUER)  # type: ignore[arg-type]
    else:
        credentials = ClientSecret(client_id=spec["client_id"], secret=spec["secret"])
    auth = ClientAuth(credentials)
    signed = isinstance(credentials, PrivateKeyJwt)
    clients = spec["clients"]
    counts = [0] * clients
    failures: list[str] = []
    start = threading.Barrier(clients + 1)
    channel = grpc.insecure_channel(spec["grpc_target"])
    stub = auth_pb2_grpc.AuthServiceStub(channel)
    host, port = spec["http_address"]

    def grpc_loop(index: int, deadline: float) -> None:
        while time.perf_counter() < deadline:
            stub.Token(auth.client_credentials_request(time.time()), timeout=30)
            counts[index] += 1

    def http_loop(index: int, deadline: float) -> None:
        conn = http.client.HTTPConnection(host, port, timeout=30)
        headers = {"Content-Type": "application/x-www-form-urlencoded"}
        if spec["method"] == "secret":
            raw = f"{spec['client_id']}:{spec['secret']}".encode()
            headers["Authorization"] = "Basic " + base64.b64encode(raw).decode()
        while time.perf_counter() < deadline:
            form = {"grant_type": "client_credentials"}
            if signed:
                request = auth.client_credentials_request(time.time())
                form["client_assertion_type"] = request.client_assertion_type
                form["client_assertion"] = request.client_assertion
            conn.request("POST", "/oauth2/token", urllib.parse.urlencode(form), headers)
            response = conn.getresponse()
            body = response.read()
            if response.status != 200:
                raise RuntimeError(f"HTTP {response.status}: {body[:200]!r}")
            counts[index] += 1
        conn.close()

    loop = grpc_loop if spec["transport"] == "grpc" else http_loop

    def run(index: int) -> None:
        start.wait()
        try:
            loop(index, time.perf_counter() + seconds)
        except Exception as exc:  # reported to the parent
            failures.append(repr(exc))

    threads = [threading.Thread(target=run, args=(i,)) for i in range(clients)]
    for thread in threads:
        thread.start()
    start.wait()
    started = time.perf_counter()
    for thread in threads:
        thread.join()
    elapsed = time.perf_counter() - started
    channel.close()
    print(json.dumps({"count": sum(counts), "elapsed": elapsed}))
    if failures:
        print(f"{len(failures)} clients failed: {failures[0]}", file=sys.stderr)
        return 1
    return 0


def run_backend(
    name: str, database_url: str | None, clients: int, seconds: float, repeats: int
) -> None:
    loop = Loop()
    with tempfile.TemporaryDirectory() as tmp:
        off = RateLimit(rate=0, burst=1)
        config = auth_config(
            Path(tmp),
            audience=AUDIENCE,
            passphrase=b"benchmark-passphrase-000",
            database_url=database_url,
            throttle=ThrottlePolicy(enabled=False),
            http_rate_limits=RateLimits(groups={"documents": off, "token": off}),
        )
        auth: RunningAuthServer = loop.run(start_auth_server(config))
        try:
            store = auth.components.client_side.clients
            client_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
            store.add(
                "bench-key",
                jwks={"keys": [public_jwk(client_key, "RS256")]},
                scopes=["resource.read"],
                audiences=[AUDIENCE],
            )
            _, secret = store.add("bench-secret", secret=True, audiences=[AUDIENCE])
            pem = client_key.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption(),
            ).decode()
            signing_key = auth.components.keys.current().private_key
            assert isinstance(signing_key, rsa.RSAPrivateKey)
            signs: list[float] = []
            results: dict[tuple[str, str], list[tuple[float, float]]] = {m: [] for m in MODES}
            for round_ in range(repeats + 1):
                signs.append(signing_rate(signing_key))
                for transport, method in MODES:
                    spec = {
                        "transport": transport,
                        "method": method,
                        "clients": clients,
                        "client_id": "bench-key" if method == "private_key_jwt" else "bench-secret",
                        "key_pem": pem,
                        "secret": secret,
                        "grpc_target": auth.grpc_target,
                        "http_address": ["127.0.0.1", auth.http_port],
                    }
                    cpu0 = time.process_time()
                    done = subprocess.run(
                        [sys.executable, __file__, "--drive", "--seconds", str(seconds)],
                        input=json.dumps(spec),
                        capture_output=True,
                        text=True,
                        timeout=seconds * 10 + 60,
                        check=False,
                    )
                    cpu = time.process_time() - cpu0
                    if done.returncode != 0:
                        raise RuntimeError(f"load generator failed: {done.stderr.strip()[-300:]}")
                    result = json.loads(done.stdout)
                    if round_ == 0:
                        continue  # warm-up
                    results[(transport, method)].append(
                        (result["count"] / result["elapsed"], cpu / result["count"])
                    )
            sign = statistics.median(signs)
            print(f"  {name:10} RS256 signatures, one core          {sign:7.0f} /s")
            for (transport, method), rows in results.items():
                rate = statistics.median(r for r, _ in rows)
                cpu_per = statistics.median(c for _, c in rows)
                per_core = 1 / cpu_per
                print(
                    f"  {name:10} {transport:4} {method:15}  {rate:5.0f} grants/s wall,"
                    f" auth CPU {cpu_per * 1e3:5.2f} ms/grant = {per_core:5.0f} grants/s per core"
                    f"  ratio {per_core / sign:.2f}"
                )
        finally:
            loop.run(auth.stop(0))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--seconds", type=float, default=3.0)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--postgres", default=os.environ.get("SSOT_TEST_DATABASE_URL"))
    parser.add_argument("--no-sqlite", action="store_true")
    parser.add_argument("--drive", action="store_true", help=argparse.SUPPRESS)
    ns = parser.parse_args(argv)
    if ns.drive:
        return drive(json.loads(sys.stdin.read()), ns.seconds)
    print(
        f"client_credentials grants, load generator in its own process ({ns.clients} threads);"
        f" {ns.repeats} rounds of {ns.seconds:g} s, medians; {os.cpu_count()} cores shared"
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
