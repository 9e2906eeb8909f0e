"""The token managers' service-identity mode against the real auth service on loopback.

``TokenManager.for_service`` / ``AsyncTokenManager.for_service`` obtain client-credentials
tokens through the ``Token`` RPC, with a private_key_jwt assertion or a secret, renew
them ahead of expiry, share one request between threads or tasks, and surface a
refusal as ``TokenRequestError`` carrying the ``oauth-error`` code.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import grpc
import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from grpc import aio

from auth_server.clients import ClientStore
from auth_server.jwk import public_jwk
from helpers import (
    AUDIENCE,
    ISSUER,
    AuthHarness,
    Clock,
    EventLoopThread,
    make_config,
    run_concurrently,
    running_resource,
    start_harness,
)
from interceptors import (
    AsyncTokenManager,
    ClientSecret,
    PrivateKeyJwt,
    TokenManager,
    TokenRequestError,
)
from protos import resource_pb2, resource_pb2_grpc

ORDERS = "orders-api"
TOKEN_METHOD = "/ssot.auth.v1.AuthService/Token"


@pytest.fixture(scope="module")
def rsa_key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


@pytest.fixture
def clock() -> Clock:
    return Clock(time.time())


@pytest.fixture
def auth(
    loop_thread: EventLoopThread, tmp_path: Path, database_url: str, clock: Clock
) -> Iterator[AuthHarness]:
    config = make_config(tmp_path, database_url, additional_audiences=(ORDERS,))
    harness = start_harness(loop_thread, config, now=clock)
    yield harness
    harness.channel.close()
    harness.stop()


def store(auth: AuthHarness) -> ClientStore:
    return auth.server.components.client_side.clients


def add_key_client(auth: AuthHarness, key: Any, name: str = "billing", alg: str = "RS256") -> None:
    store(auth).add(
        name,
        jwks={"keys": [public_jwk(key, alg)]},
        scopes=["orders.read", "orders.write"],
        audiences=[AUDIENCE, ORDERS],
    )


def add_secret_client(auth: AuthHarness, name: str = "cron") -> str:
    _, secret = store(auth).add(name, secret=True, scopes=["orders.read"], audiences=[AUDIENCE])
    assert secret is not None
    return secret


def claims_of(token: str) -> dict[str, Any]:
    return dict(jwt.decode(token, options={"verify_signature": False}))


class _Counter(grpc.UnaryUnaryClientInterceptor):
    """Counts the Token RPCs a channel sends (and lets a test slow them down)."""

    def __init__(self, delay: float = 0.0) -> None:
        self.calls = 0
        self._delay = delay
        self._lock = threading.Lock()

    def intercept_unary_unary(self, continuation: Any, details: Any, request: Any) -> Any:
        if details.method == TOKEN_METHOD:
            with self._lock:
                self.calls += 1
            time.sleep(self._delay)
        return continuation(details, request)


class _AsyncCounter(aio.UnaryUnaryClientInterceptor):
    def __init__(self, delay: float = 0.0) -> None:
        self.calls = 0
        self._delay = delay

    async def intercept_unary_unary(self, continuation: Any, details: Any, request: Any) -> Any:
        if details.method in (TOKEN_METHOD, TOKEN_METHOD.encode()):  # grpc.aio passes bytes
            self.calls += 1
            await asyncio.sleep(self._delay)
        return await continuation(details, request)


def counted_channel(auth: AuthHarness, delay: float = 0.0) -> tuple[grpc.Channel, _Counter]:
    counter = _Counter(delay)
    return grpc.intercept_channel(grpc.insecure_channel(auth.target), counter), counter


def key_identity(key: Any, **changes: Any) -> PrivateKeyJwt:
    fields: dict[str, Any] = {"client_id": "billing", "key": key, "issuer": ISSUER}
    fields.update(changes)
    return PrivateKeyJwt(**fields)


# -- sync face ------------------------------------------------------------------------------


def test_private_key_jwt_token_reaches_the_protected_rpc(
    auth: AuthHarness, rsa_key: Any, loop_thread: EventLoopThread, tmp_path: Path
) -> None:
    add_key_client(auth, rsa_key)
    pem = tmp_path / "billing.pem"
    pem.write_bytes(
        rsa_key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    tokens = TokenManager.for_service(auth.channel, key_identity(str(pem), scope="orders.read"))
    claims = claims_of(tokens.token())
    assert claims["sub"] == claims["client_id"] == "billing"
    assert claims["aud"] == AUDIENCE and claims["scope"] == "orders.read"
    assert "billing" in repr(tokens) and "BEGIN" not in repr(tokens)
    with running_resource(loop_thread, auth, aio=False) as resource:
        channel = grpc.intercept_channel(resource.channel, tokens.interceptor())
        stub = resource_pb2_grpc.ResourceServiceStub(channel)
        reply = stub.GetProtectedResource(resource_pb2.GetProtectedResourceRequest(), timeout=10)
        assert reply.message == "This is a protected resource"


def test_audience_and_other_key_types(auth: AuthHarness) -> None:
    p256 = ec.generate_private_key(ec.SECP256R1())
    add_key_client(auth, p256, name="reports", alg="ES256")
    tokens = TokenManager.for_service(
        auth.channel, key_identity(p256, client_id="reports", audience=ORDERS)
    )
    claims = claims_of(tokens.token())
    assert claims["aud"] == ORDERS and claims["sub"] == "reports"


def test_secret_client_gets_a_token(auth: AuthHarness) -> None:
    secret = add_secret_client(auth)
    identity = ClientSecret(client_id="cron", secret=secret)
    assert secret not in repr(identity)
    claims = claims_of(TokenManager.for_service(auth.channel, identity).token())
    assert claims["sub"] == "cron" and claims["scope"] == "orders.read"


def test_renewed_ahead_of_expiry_with_a_new_assertion(
    auth: AuthHarness, rsa_key: Any, clock: Clock
) -> None:
    add_key_client(auth, rsa_key)
    channel, counter = counted_channel(auth)
    tokens = TokenManager.for_service(channel, key_identity(rsa_key), refresh_margin=30, now=clock)
    first = tokens.token()
    lifetime = claims_of(first)["exp"] - claims_of(first)["iat"]
    clock.advance(lifetime - 31)  # still more than the margin left: kept
    assert tokens.token() == first and counter.calls == 1
    clock.advance(2)  # inside the margin: renewed, before it expires
    second = tokens.token()
    assert second != first and counter.calls == 2
    assert claims_of(second)["exp"] > claims_of(first)["exp"]
    # A new grant each time (each with a fresh, single-use jti): no refresh token involved.
    tokens.invalidate(second)
    assert tokens.token() != second and counter.calls == 3
    channel.close()


def test_threads_share_one_request(auth: AuthHarness, rsa_key: Any) -> None:
    add_key_client(auth, rsa_key)
    channel, counter = counted_channel(auth, delay=0.2)
    tokens = TokenManager.for_service(channel, key_identity(rsa_key))
    results = run_concurrently(lambda _: tokens.token(), range(20))
    assert len(set(results)) == 1 and counter.calls == 1
    channel.close()


def test_disabled_client_surfaces_invalid_client(auth: AuthHarness, rsa_key: Any) -> None:
    add_key_client(auth, rsa_key)
    tokens = TokenManager.for_service(auth.channel, key_identity(rsa_key))
    first = tokens.token()
    store(auth).set_disabled("billing", True)
    tokens.invalidate(first)
    with pytest.raises(TokenRequestError) as info:
        tokens.token()
    assert info.value.oauth_error == "invalid_client"
    assert info.value.code is grpc.StatusCode.UNAUTHENTICATED
    assert isinstance(info.value.__cause__, grpc.RpcError)
    store(auth).set_disabled("billing", False)
    assert tokens.token() != first


@pytest.mark.parametrize(
    ("changes", "error"),
    [
        ({"scope": "orders.admin"}, "invalid_scope"),
        ({"audience": "reports-api"}, "invalid_target"),
        ({"issuer": ISSUER + "/oauth2/token"}, "invalid_client"),
    ],
)
def test_refusals_name_their_oauth_error(
    auth: AuthHarness, rsa_key: Any, changes: dict[str, str], error: str
) -> None:
    add_key_client(auth, rsa_key)
    tokens = TokenManager.for_service(auth.channel, key_identity(rsa_key, **changes))
    with pytest.raises(TokenRequestError) as info:
        tokens.token()
    assert info.value.oauth_error == error
    assert error in str(info.value)


def test_wrong_secret_is_invalid_client(auth: AuthHarness) -> None:
    add_secret_client(auth)
    tokens = TokenManager.for_service(auth.channel, ClientSecret(client_id="cron", secret="nope"))
    with pytest.raises(TokenRequestError) as info:
        tokens.token()
    assert info.value.oauth_error == "invalid_client"
    assert "nope" not in str(info.value)


@pytest.mark.parametrize(
    "make",
    [
        lambda key: key_identity(key, issuer=""),
        lambda key: key_identity(key, assertion_lifetime=301),
        lambda key: key_identity(key, algorithm="ES256"),
        lambda key: key_identity("/nonexistent/key.pem"),
        lambda key: ClientSecret(client_id="cron", secret=""),
    ],
)
def test_unusable_credentials_fail_at_construction(
    rsa_key: Any, make: Callable[[Any], Any]
) -> None:
    with pytest.raises(ValueError):
        TokenManager.for_service(grpc.insecure_channel("127.0.0.1:1"), make(rsa_key))


# -- asyncio face ---------------------------------------------------------------------------


def test_async_manager_obtains_renews_and_shares(
    auth: AuthHarness, rsa_key: Any, clock: Clock, loop_thread: EventLoopThread
) -> None:
    add_key_client(auth, rsa_key)

    async def scenario() -> tuple[int, int, int, str, str]:
        counter = _AsyncCounter(delay=0.2)
        async with aio.insecure_channel(auth.target, interceptors=[counter]) as channel:
            tokens = AsyncTokenManager.for_service(
                channel, key_identity(rsa_key), refresh_margin=30, now=clock
            )
            shared = await asyncio.gather(*(tokens.token() for _ in range(20)))
            after_first = counter.calls
            first = shared[0]
            lifetime = claims_of(first)["exp"] - claims_of(first)["iat"]
            clock.advance(lifetime - 29)
            renewed = await asyncio.gather(*(tokens.token() for _ in range(5)))
            return len(set(shared)), after_first, counter.calls, first, renewed[0]

    distinct, after_first, calls, first, renewed = loop_thread.run(scenario())
    assert distinct == 1 and after_first == 1
    assert calls == 2 and renewed != first


def test_async_disabled_client_surfaces_invalid_client(
    auth: AuthHarness, rsa_key: Any, loop_thread: EventLoopThread
) -> None:
    add_key_client(auth, rsa_key)
    store(auth).set_disabled("billing", True)

    async def scenario() -> TokenRequestError:
        async with aio.insecure_channel(auth.target) as channel:
            tokens = AsyncTokenManager.for_service(channel, key_identity(rsa_key))
            try:
                await tokens.token()
            except TokenRequestError as exc:
                return exc
            raise AssertionError("a disabled client got a token")

    error = loop_thread.run(scenario())
    assert error.oauth_error == "invalid_client"
    assert error.code is grpc.StatusCode.UNAUTHENTICATED


def test_async_token_reaches_the_protected_rpc(
    auth: AuthHarness, loop_thread: EventLoopThread
) -> None:
    secret = add_secret_client(auth)
    with running_resource(loop_thread, auth, aio=True) as resource:

        async def scenario() -> str:
            async with aio.insecure_channel(auth.target) as auth_channel:
                tokens = AsyncTokenManager.for_service(
                    auth_channel, ClientSecret(client_id="cron", secret=secret)
                )
                async with aio.insecure_channel(
                    resource.target, interceptors=tokens.interceptors()
                ) as channel:
                    stub = resource_pb2_grpc.ResourceServiceStub(channel)
                    reply = await stub.GetProtectedResource(
                        resource_pb2.GetProtectedResourceRequest(), timeout=10
                    )
                    return reply.message

        assert loop_thread.run(scenario()) == "This is a protected resource"
