"""Signing in with an upstream ID token, against a refresh and raw RS256 in the same run.

    python benchmarks/bench_federation.py [--calls 200] [--repeats 5]
        [--postgres postgresql+psycopg://postgres@127.0.0.1:5432/test]

The token endpoint's core (what the ``Token`` RPC and ``/oauth2/token`` run in a
worker thread) is called in this thread, one call after another, so the numbers are
the work of one sign-in on one core, free of gRPC and of the load generator:

  * sign-in: the ID-token exchange of a returning person (the identity exists):
    strict parse, provider lookup, signature check with the provider's cached key
    (its JWKS is served by a loopback HTTP server, fetched once), claim checks,
    identity and user lookups, throttle admit + success, session insert, our token
    signed;
  * first sign-in: the same for a new person (the user is created just in time,
    with an argon2 hash of a random password: cheap parameters here);
  * refresh: the refresh grant of an existing session (the baseline a session
    pays anyway);
  * RS256: one signature with cryptography (the floor of any grant).

Printed: the median over ``--repeats`` rounds of CPU time per call (thread time)
and calls per second (wall clock), with ratios to refresh.
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import jwt
from _common import Loop, auth_config, postgres_schema, signing_rate  # puts the repo on sys.path
from aiohttp import web
from cryptography.hazmat.primitives.asymmetric import rsa

from auth_server.components import build_components
from auth_server.federation import ID_TOKEN_TYPE
from auth_server.idps import IdpStore
from auth_server.jwk import public_jwk
from auth_server.oauth import TokenRequest
from auth_server.oauth_wiring import build_oauth_endpoint
from auth_server.publisher import JwksPublisher
from auth_server.revocation_store import REVOCATION_RETENTION
from auth_server.revocations import RevocationPublisher
from auth_server.throttle import ThrottlePolicy
from auth_server.token_exchange import TOKEN_EXCHANGE

CLIENT_ID = "bench-client"


def serve_provider(loop: Loop, key: rsa.RSAPrivateKey) -> str:
    """Discovery + JWKS on loopback; returns the issuer."""
    jwk = dict(public_jwk(key.public_key(), "RS256"))
    app = web.Application()
    box: dict[str, str] = {}

    async def discovery(request: web.Request) -> web.Response:
        issuer = box["issuer"]
        return web.json_response({"issuer": issuer, "jwks_uri": issuer + "/jwks"})

    async def jwks(request: web.Request) -> web.Response:
        return web.json_response({"keys": [jwk]}, headers={"Cache-Control": "max-age=3600"})

    app.router.add_get("/.well-known/openid-configuration", discovery)
    app.router.add_get("/jwks", jwks)

    async def start() -> str:
        runner = web.AppRunner(app)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        return f"http://127.0.0.1:{runner.addresses[0][1]}"

    box["issuer"] = loop.run(start())
    return box["issuer"]


def id_token(key: rsa.RSAPrivateKey, issuer: str, sub: str) -> str:
    now = int(time.time())
    claims = {"iss": issuer, "aud": CLIENT_ID, "sub": sub, "iat": now, "exp": now + 300}
    claims |= {"email": f"{sub}@example.com", "email_verified": True, "preferred_username": sub}
    kid = public_jwk(key.public_key(), "RS256")["kid"]
    return jwt.encode(claims, key, algorithm="RS256", headers={"kid": kid, "typ": "JWT"})


def per_call(run: Callable[[int], None], calls: int) -> tuple[float, float]:
    """(CPU seconds per call on this thread, calls per wall second)."""
    cpu, wall = time.thread_time(), time.perf_counter()
    for i in range(calls):
        run(i)
    return (time.thread_time() - cpu) / calls, calls / (time.perf_counter() - wall)


def bench(database_url: str | None, calls: int, repeats: int) -> None:
    loop = Loop()
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    issuer = serve_provider(loop, key)
    with tempfile.TemporaryDirectory() as tmp:
        config = auth_config(
            Path(tmp),
            audience="bench",
            passphrase=b"bench-passphrase-0123456789",
            database_url=database_url,
            throttle=ThrottlePolicy(),  # on, as in production: a sign-in pays for it
        )
        components = build_components(config)
        publisher = JwksPublisher(components.authority.jwks, poll_interval=60)
        loop.run(publisher.start())
        revocations = RevocationPublisher(
            components.sessions.revocations.read, retention=REVOCATION_RETENTION
        )
        endpoint = build_oauth_endpoint(
            config,
            authority=components.authority,
            issuer=components.issuer,
            sessions=components.sessions,
            client_side=components.client_side,
            publisher=publisher,
            revocations=revocations,
            database=components.database,
            users=components.users,
            throttle=components.throttle,
        )
        IdpStore(components.database).add("corp", issuer=issuer, client_id=CLIENT_ID)

        def sign_in(token: str) -> Any:
            return endpoint.token_blocking(
                TokenRequest(
                    grant_type=TOKEN_EXCHANGE,
                    subject_token=token,
                    subject_token_type=ID_TOKEN_TYPE,
                    address="127.0.0.1",
                )
            )

        returning = [id_token(key, issuer, f"person-{i}") for i in range(calls)]
        for token in returning:
            sign_in(token)  # the identities exist from here on (and the JWKS is cached)
        refresh_token = [sign_in(returning[0]).refresh_token]

        def refresh(_: int) -> None:
            grant = components.authority.refresh(refresh_token[0])
            refresh_token[0] = grant.refresh_token

        rows: dict[str, list[tuple[float, float]]] = {"sign-in": [], "first": [], "refresh": []}
        for _ in range(repeats):
            fresh = [id_token(key, issuer, f"new-{uuid.uuid4().hex}") for _ in range(calls)]
            again = [id_token(key, issuer, f"person-{i}") for i in range(calls)]
            rows["sign-in"].append(per_call(lambda i, t=again: sign_in(t[i]), calls))
            rows["first"].append(per_call(lambda i, t=fresh: sign_in(t[i]), calls))
            rows["refresh"].append(per_call(refresh, calls))
        rsa_rate = signing_rate(key)
        loop.run(publisher.stop())
        components.keys.close()
        components.database.dispose()

    where = "PostgreSQL" if database_url else "SQLite"
    base_cpu = statistics.median(r[0] for r in rows["refresh"])
    print(f"\n{where}: {calls} calls x {repeats} rounds, medians (one thread, no network)")
    print(f"{'':22}{'CPU ms/call':>12}{'calls/s':>10}{'CPU vs refresh':>16}")
    for name, label in (
        ("sign-in", "ID token sign-in"),
        ("first", "first sign-in (JIT)"),
        ("refresh", "refresh (baseline)"),
    ):
        cpu = statistics.median(r[0] for r in rows[name])
        rate = statistics.median(r[1] for r in rows[name])
        print(f"{label:22}{cpu * 1000:12.2f}{rate:10.0f}{cpu / base_cpu:15.2f}x")
    print(f"{'RS256 sign (floor)':22}{1000 / rsa_rate:12.2f}{rsa_rate:10.0f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--calls", type=int, default=200)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--postgres", default=os.environ.get("SSOT_TEST_DATABASE_URL"))
    ns = parser.parse_args()
    bench(None, ns.calls, ns.repeats)
    if ns.postgres:
        with postgres_schema(ns.postgres) as url:
            bench(url, ns.calls, ns.repeats)


if __name__ == "__main__":
    main()
