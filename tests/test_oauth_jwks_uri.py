"""``private_key_jwt`` with a ``jwks_uri`` the client serves itself, and secrets over plain HTTP.

The client's key set is served by a small aiohttp server on loopback that counts
its fetches; the auth service fetches it with the verifiers' hardened fetcher.
"""

from __future__ import annotations

import base64
import contextlib
import functools
import socket
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import grpc
import jwt
import pytest
from aiohttp import web
from cryptography.hazmat.primitives.asymmetric import rsa

from auth_server import oauth_wiring
from auth_server.client_assertion import ASSERTION_TYPE, ClientKeys
from auth_server.clients import ClientStore
from auth_server.jwk import public_jwk
from helpers import AUDIENCE, ISSUER, AuthHarness, EventLoopThread, make_config, start_harness
from protos import auth_pb2

COOLDOWN = 0.3


@dataclass
class ClientJwks:
    """The client's own JWKS endpoint: the keys it publishes, and how often they were fetched."""

    keys: list[dict[str, Any]] = field(default_factory=list)
    fetches: int = 0
    url: str = ""

    async def handle(self, request: web.Request) -> web.Response:
        self.fetches += 1
        return web.json_response({"keys": self.keys}, headers={"Cache-Control": "max-age=300"})


@contextlib.contextmanager
def serve_jwks(loop_thread: EventLoopThread) -> Iterator[ClientJwks]:
    jwks = ClientJwks()
    app = web.Application()
    app.router.add_get("/jwks.json", jwks.handle)
    runner = web.AppRunner(app)

    async def start() -> int:
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        return int(runner.addresses[0][1])

    port = loop_thread.run(start())
    jwks.url = f"http://127.0.0.1:{port}/jwks.json"
    try:
        yield jwks
    finally:
        loop_thread.run(runner.cleanup())


@pytest.fixture
def auth(
    loop_thread: EventLoopThread, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[AuthHarness]:
    # A short unknown-kid cooldown, so a rotation is followed without a 30 s wait.
    monkeypatch.setattr(
        oauth_wiring, "ClientKeys", functools.partial(ClientKeys, cooldown=COOLDOWN)
    )
    harness = start_harness(loop_thread, make_config(tmp_path))
    yield harness
    harness.channel.close()
    harness.stop()


def new_key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


def assertion(key: Any, kid: str, client_id: str = "billing") -> str:
    now = int(time.time())
    claims = {
        "iss": client_id,
        "sub": client_id,
        "aud": ISSUER,
        "exp": now + 60,
        "iat": now,
        "jti": uuid.uuid4().hex,
    }
    return jwt.encode(claims, key, algorithm="RS256", headers={"kid": kid})


def token(auth: AuthHarness, signed: str) -> tuple[grpc.StatusCode, str]:
    """The Token RPC with a client assertion: ``(OK, "")`` or the status and ``oauth-error``."""
    request = auth_pb2.TokenRequest(
        grant_type="client_credentials",
        client_assertion_type=ASSERTION_TYPE,
        client_assertion=signed,
    )
    try:
        response = auth.stub.Token(request, timeout=10)
    except grpc.RpcError as exc:
        call: Any = exc
        return call.code(), dict(call.trailing_metadata())["oauth-error"]
    claims = jwt.decode(response.access_token, options={"verify_signature": False})
    assert claims["sub"] == claims["client_id"] == "billing"
    return grpc.StatusCode.OK, ""


OK = (grpc.StatusCode.OK, "")
REFUSED = (grpc.StatusCode.UNAUTHENTICATED, "invalid_client")


def test_a_jwks_uri_client_is_fetched_once_and_its_rotation_is_followed(
    loop_thread: EventLoopThread, auth: AuthHarness
) -> None:
    first, second = new_key(), new_key()
    first_jwk, second_jwk = public_jwk(first, "RS256"), public_jwk(second, "RS256")
    with serve_jwks(loop_thread) as jwks:
        jwks.keys = [first_jwk]
        clients: ClientStore = auth.server.components.client_side.clients
        clients.add("billing", scopes=["orders.read"], audiences=[AUDIENCE], jwks_uri=jwks.url)

        assert token(auth, assertion(first, first_jwk["kid"])) == OK
        assert token(auth, assertion(first, first_jwk["kid"])) == OK
        assert jwks.fetches == 1  # cached, as a verifier caches an issuer's keys

        # Made-up kids within the cooldown cost no fetch (and authenticate nobody).
        for _ in range(5):
            assert token(auth, assertion(first, uuid.uuid4().hex)) == REFUSED
        assert jwks.fetches == 1

        # The client rotates: it publishes the new key alone and signs with it. Its
        # first assertion names an unknown kid, which (past the cooldown) refetches.
        jwks.keys = [second_jwk]
        time.sleep(COOLDOWN + 0.1)
        assert token(auth, assertion(second, second_jwk["kid"])) == OK
        assert jwks.fetches == 2
        # The retired key left with the set that no longer holds it.
        assert token(auth, assertion(first, first_jwk["kid"])) == REFUSED
        # Another client's key under the new kid does not verify.
        assert token(auth, assertion(new_key(), second_jwk["kid"])) == REFUSED
        assert token(auth, assertion(second, second_jwk["kid"])) == OK


def test_an_unreachable_jwks_uri_is_invalid_client_not_an_error(auth: AuthHarness) -> None:
    with socket.socket() as sock:  # a port nobody listens on
        sock.bind(("127.0.0.1", 0))
        url = f"http://127.0.0.1:{sock.getsockname()[1]}/jwks.json"
    key = new_key()
    clients: ClientStore = auth.server.components.client_side.clients
    clients.add("billing", audiences=[AUDIENCE], jwks_uri=url)
    assert token(auth, assertion(key, public_jwk(key, "RS256")["kid"])) == REFUSED


# -- secrets over plain HTTP ---------------------------------------------------------------


def _non_loopback_address() -> str | None:
    """An address of this machine that is not loopback, if it has one we can listen on."""
    try:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
            probe.connect(("192.0.2.1", 9))  # no packet is sent: this only picks a route
            address = str(probe.getsockname()[0])
        with socket.socket() as sock:
            sock.bind((address, 0))
    except OSError:
        return None
    return None if address.startswith("127.") or address == "0.0.0.0" else address


def _post_token(auth: AuthHarness, base_url: str, secret: str) -> tuple[int, dict[str, Any]]:
    raw = base64.b64encode(f"cron:{secret}".encode()).decode()

    async def go() -> tuple[int, dict[str, Any]]:
        async with (
            aiohttp.ClientSession() as session,
            session.post(
                f"{base_url}/oauth2/token",
                data="grant_type=client_credentials",
                headers={
                    "Content-Type": "application/x-www-form-urlencoded",
                    "Authorization": f"Basic {raw}",
                },
            ) as response,
        ):
            return response.status, await response.json()

    return auth.loop_thread.run(go())


@pytest.mark.parametrize(
    "allowed", [pytest.param(False, id="refused"), pytest.param(True, id="flag")]
)
def test_a_secret_over_plain_http_from_beyond_loopback_needs_the_flag(
    loop_thread: EventLoopThread, tmp_path: Path, allowed: bool
) -> None:
    address = _non_loopback_address()
    if address is None:
        pytest.skip("this machine has no non-loopback address to call from")
    config = make_config(tmp_path, http_address=f"{address}:0", allow_insecure_token_http=allowed)
    auth = start_harness(loop_thread, config)
    try:
        clients: ClientStore = auth.server.components.client_side.clients
        _, secret = clients.add("cron", audiences=[AUDIENCE], secret=True)
        assert secret is not None
        # The connection comes from that address too: the server sees a non-loopback peer.
        status, body = _post_token(auth, auth.server.http_base_url, secret)
        if allowed:
            assert status == 200, body
            assert body["token_type"] == "Bearer"
        else:
            assert (status, body["error"]) == (400, "invalid_request")
            assert "https" in body["error_description"]
    finally:
        auth.channel.close()
        auth.stop()
