"""Identity propagation end to end: user -> service A -> service B on real loopback servers.

B accepts only its own audience; A reaches it with a token exchanged from the
user's (RFC 8693) by :class:`IdentityPropagator` / :class:`AsyncIdentityPropagator`.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from concurrent import futures
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from auth_server.jwk import public_jwk
from auth_server.token_exchange import ACCESS_TOKEN_TYPE, TOKEN_EXCHANGE
from helpers import (
    ISSUER,
    AuthHarness,
    EventLoopThread,
    bearer,
    make_config,
    run_concurrently,
    running_resource,
    start_harness,
)
from interceptors import (
    AsyncAuthInterceptor,
    AsyncIdentityPropagator,
    AuthInterceptor,
    IdentityPropagator,
    MethodPolicy,
    NoCallerToken,
    PrivateKeyJwt,
    TokenVerifier,
    current_principal,
)
from interceptors._service_identity import ClientAuth
from protos import auth_pb2, resource_pb2, resource_pb2_grpc
from resource_server.app import (
    ResourceServerConfig,
    build_server,
    open_verifier,
    start_aio_server,
)
from resource_server.downstream import DownstreamSettings
from resource_server.service import AsyncResourceServicer, ResourceLogic, ResourceServicer

SERVICE_A = "service-a"
SERVICE_B = "service-b"
PASSWORD = "correct horse battery"
GET = "/ssot.resource.v1.ResourceService/GetProtectedResource"


@pytest.fixture(scope="module")
def key_a() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


@pytest.fixture
def auth(loop_thread: EventLoopThread, tmp_path: Path, database_url: str) -> Iterator[AuthHarness]:
    config = make_config(tmp_path, database_url, additional_audiences=(SERVICE_A,))
    harness = start_harness(loop_thread, config)
    for name in ("alice", "bob"):
        harness.add_user(name, PASSWORD, ("resource.read",))
    yield harness
    harness.channel.close()
    harness.stop()


TOKEN_METHOD = "/ssot.auth.v1.AuthService/Token"


def credentials_of_a(key: Any) -> PrivateKeyJwt:
    """Service A's private_key_jwt identity (the kid: its key's RFC 7638 thumbprint)."""
    return PrivateKeyJwt(client_id=SERVICE_A, key=key, issuer=ISSUER)


class ExchangeCounter:
    """Counts the Token RPCs (the exchanges) service A sends to the auth service."""

    def __init__(self) -> None:
        self.calls = 0
        self._lock = threading.Lock()

    def count(self, method: str | bytes) -> None:
        if method in (TOKEN_METHOD, TOKEN_METHOD.encode()):  # grpc.aio passes bytes
            with self._lock:
                self.calls += 1


class _Counting(grpc.UnaryUnaryClientInterceptor):  # type: ignore[misc]
    def __init__(self, counter: ExchangeCounter) -> None:
        self._counter = counter

    def intercept_unary_unary(self, continuation: Any, details: Any, request: Any) -> Any:
        self._counter.count(details.method)
        return continuation(details, request)


class _AsyncCounting(grpc.aio.UnaryUnaryClientInterceptor):
    def __init__(self, counter: ExchangeCounter) -> None:
        self._counter = counter

    async def intercept_unary_unary(self, continuation: Any, details: Any, request: Any) -> Any:
        self._counter.count(details.method)
        return await continuation(details, request)


def register_a(auth: AuthHarness, key: Any) -> None:
    auth.server.components.client_side.clients.add(
        SERVICE_A,
        audiences=[SERVICE_B],
        jwks={"keys": [public_jwk(key, "RS256")]},
        exchange_audiences=[SERVICE_B],
    )


def verifier_for(auth: AuthHarness, audience: str) -> TokenVerifier:
    """A push verifier (keys and revocations over gRPC) for ``audience``."""
    config = ResourceServerConfig(
        grpc_address="127.0.0.1:0", issuer=ISSUER, audience=audience, auth_target=auth.target
    )
    verifier = open_verifier(config)
    assert verifier.revocations is not None and verifier.revocations.wait_until_synced(10)
    return verifier


class Relay(resource_pb2_grpc.ResourceServiceServicer):
    """Service A (sync): answers GetProtectedResource by asking B for the caller."""

    def __init__(self, stub_b: resource_pb2_grpc.ResourceServiceStub) -> None:
        self._b = stub_b

    def GetProtectedResource(self, request: Any, context: Any) -> Any:
        try:
            answer = self._b.GetProtectedResource(request, timeout=10)
        except grpc.RpcError as exc:  # B's refusal, passed on as is
            context.abort(exc.code(), exc.details())  # type: ignore[attr-defined]
        # B must have answered for the very user that called A.
        assert answer.user.user_id == current_principal().subject
        return answer


class AsyncRelay(resource_pb2_grpc.ResourceServiceServicer):
    """Service A (asyncio)."""

    def __init__(self, stub_b: resource_pb2_grpc.ResourceServiceStub) -> None:
        self._b = stub_b

    async def GetProtectedResource(self, request: Any, context: Any) -> Any:
        try:
            answer = await self._b.GetProtectedResource(request, timeout=10)
        except grpc.RpcError as exc:
            await context.abort(exc.code(), exc.details())  # type: ignore[attr-defined]
        assert answer.user.user_id == current_principal().subject
        return answer


@dataclass
class Chain:
    a: resource_pb2_grpc.ResourceServiceStub
    b: resource_pb2_grpc.ResourceServiceStub
    exchanges: ExchangeCounter
    token_for_b: Callable[[], str]  # the propagator's token(), outside any handler


@contextmanager
def running_chain(
    loop_thread: EventLoopThread,
    auth: AuthHarness,
    key: Any,
    *,
    aio: bool,
    policy_b: MethodPolicy | None = None,
) -> Iterator[Chain]:
    register_a(auth, key)
    counting = ExchangeCounter()
    with verifier_for(auth, SERVICE_B) as verifier_b, verifier_for(auth, SERVICE_A) as verifier_a:
        stops: list[Callable[[], object]] = []
        try:
            if aio:
                port_b, port_a, propagator_token, close = loop_thread.run(
                    _start_aio(auth, verifier_a, verifier_b, counting, policy_b, key)
                )
                stops.append(lambda: loop_thread.run(close()))

                def token_for_b() -> str:
                    return loop_thread.run(propagator_token())
            else:
                port_b, port_a, token_for_b = _start_sync(
                    auth, verifier_a, verifier_b, counting, policy_b, stops, key
                )
            channel_a = grpc.insecure_channel(f"127.0.0.1:{port_a}")
            channel_b = grpc.insecure_channel(f"127.0.0.1:{port_b}")
            stops.append(channel_a.close)
            stops.append(channel_b.close)
            yield Chain(
                a=resource_pb2_grpc.ResourceServiceStub(channel_a),
                b=resource_pb2_grpc.ResourceServiceStub(channel_b),
                exchanges=counting,
                token_for_b=token_for_b,
            )
        finally:
            for stop in reversed(stops):
                stop()


def _start_sync(
    auth: AuthHarness,
    verifier_a: TokenVerifier,
    verifier_b: TokenVerifier,
    counting: ExchangeCounter,
    policy_b: MethodPolicy | None,
    stops: list[Callable[[], object]],
    key: Any,
) -> tuple[int, int, Callable[[], str]]:
    server_b = grpc.server(
        futures.ThreadPoolExecutor(8), interceptors=[AuthInterceptor(verifier_b, policy_b)]
    )
    resource_pb2_grpc.add_ResourceServiceServicer_to_server(
        ResourceServicer(ResourceLogic(issuer=ISSUER)), server_b
    )
    port_b = server_b.add_insecure_port("127.0.0.1:0")
    server_b.start()
    stops.append(lambda: server_b.stop(0.5).wait())
    auth_channel = grpc.insecure_channel(auth.target)
    stops.append(auth_channel.close)
    propagator = IdentityPropagator(
        grpc.intercept_channel(auth_channel, _Counting(counting)),
        audience=SERVICE_B,
        credentials=credentials_of_a(key),
    )
    to_b = grpc.intercept_channel(
        grpc.insecure_channel(f"127.0.0.1:{port_b}"), propagator.interceptor()
    )
    stops.append(to_b.close)
    server_a = grpc.server(
        futures.ThreadPoolExecutor(16), interceptors=[AuthInterceptor(verifier_a)]
    )
    resource_pb2_grpc.add_ResourceServiceServicer_to_server(
        Relay(resource_pb2_grpc.ResourceServiceStub(to_b)), server_a
    )
    port_a = server_a.add_insecure_port("127.0.0.1:0")
    server_a.start()
    stops.append(lambda: server_a.stop(0.5).wait())
    return port_b, port_a, propagator.token


async def _start_aio(
    auth: AuthHarness,
    verifier_a: TokenVerifier,
    verifier_b: TokenVerifier,
    counting: ExchangeCounter,
    policy_b: MethodPolicy | None,
    key: Any,
) -> tuple[int, int, Callable[[], Any], Callable[[], Any]]:
    server_b = grpc.aio.server(interceptors=[AsyncAuthInterceptor(verifier_b, policy_b)])
    resource_pb2_grpc.add_ResourceServiceServicer_to_server(
        AsyncResourceServicer(ResourceLogic(issuer=ISSUER)), server_b
    )
    port_b = server_b.add_insecure_port("127.0.0.1:0")
    await server_b.start()
    auth_channel = grpc.aio.insecure_channel(auth.target, interceptors=[_AsyncCounting(counting)])
    propagator = AsyncIdentityPropagator(
        auth_channel, audience=SERVICE_B, credentials=credentials_of_a(key)
    )
    to_b = grpc.aio.insecure_channel(f"127.0.0.1:{port_b}", interceptors=propagator.interceptors())
    server_a = grpc.aio.server(interceptors=[AsyncAuthInterceptor(verifier_a)])
    resource_pb2_grpc.add_ResourceServiceServicer_to_server(
        AsyncRelay(resource_pb2_grpc.ResourceServiceStub(to_b)), server_a
    )
    port_a = server_a.add_insecure_port("127.0.0.1:0")
    await server_a.start()

    async def close() -> None:
        await server_a.stop(0.5)
        await to_b.close()
        await auth_channel.close()
        await server_b.stop(0.5)

    return port_b, port_a, propagator.token, close


def login_for_a(auth: AuthHarness, name: str) -> auth_pb2.TokenResponse:
    return auth.stub.Login(
        auth_pb2.LoginRequest(username=name, password=PASSWORD, audience=SERVICE_A), timeout=10
    )


def request() -> resource_pb2.GetProtectedResourceRequest:
    return resource_pb2.GetProtectedResourceRequest()


@pytest.mark.parametrize("aio", [False, True])
def test_b_sees_the_user_as_subject_and_a_as_actor(
    loop_thread: EventLoopThread, auth: AuthHarness, key_a: Any, aio: bool
) -> None:
    alice = login_for_a(auth, "alice")
    with running_chain(loop_thread, auth, key_a, aio=aio) as chain:
        # B accepts only its own audience: alice's token for A is refused there.
        with pytest.raises(grpc.RpcError) as info:
            chain.b.GetProtectedResource(request(), metadata=bearer(alice.access_token))
        assert info.value.code() == grpc.StatusCode.UNAUTHENTICATED  # type: ignore[attr-defined]

        answer = chain.a.GetProtectedResource(request(), metadata=bearer(alice.access_token))
        assert (answer.user.username, answer.user.kind) == ("alice", "user")
        assert list(answer.user.actors) == [SERVICE_A]
        # The second call is served from the cache: still one exchange.
        chain.a.GetProtectedResource(request(), metadata=bearer(alice.access_token))
        assert chain.exchanges.calls == 1


@pytest.mark.parametrize("aio", [False, True])
def test_outside_a_handler_the_propagator_fails_closed(
    loop_thread: EventLoopThread, auth: AuthHarness, key_a: Any, aio: bool
) -> None:
    with (
        running_chain(loop_thread, auth, key_a, aio=aio) as chain,
        pytest.raises(NoCallerToken, match="no authenticated caller"),
    ):
        chain.token_for_b()
    assert chain.exchanges.calls == 0


@pytest.mark.parametrize("aio", [False, True])
def test_logout_makes_b_refuse_the_derived_token_within_a_second(
    loop_thread: EventLoopThread, auth: AuthHarness, key_a: Any, aio: bool
) -> None:
    alice = login_for_a(auth, "alice")
    with running_chain(loop_thread, auth, key_a, aio=aio) as chain:
        chain.a.GetProtectedResource(request(), metadata=bearer(alice.access_token))
        derived = exchange_by_a(auth, key_a, alice.access_token)
        chain.b.GetProtectedResource(request(), metadata=bearer(derived))

        auth.logout(alice.refresh_token)
        started = time.monotonic()
        while True:
            try:
                chain.b.GetProtectedResource(request(), metadata=bearer(derived))
            except grpc.RpcError as exc:
                assert exc.code() == grpc.StatusCode.UNAUTHENTICATED  # type: ignore[attr-defined]
                break
            assert time.monotonic() - started < 1.0, "B still accepts the derived token"
            time.sleep(0.02)
        # And through A: its push verifier refuses alice too.
        with pytest.raises(grpc.RpcError) as info:
            chain.a.GetProtectedResource(request(), metadata=bearer(alice.access_token))
        assert info.value.code() == grpc.StatusCode.UNAUTHENTICATED  # type: ignore[attr-defined]


def exchange_by_a(auth: AuthHarness, key: Any, subject: str) -> str:
    request = auth_pb2.TokenRequest(
        grant_type=TOKEN_EXCHANGE,
        subject_token=subject,
        subject_token_type=ACCESS_TOKEN_TYPE,
        audience=SERVICE_B,
    )
    ClientAuth(credentials_of_a(key)).apply(request, time.time())
    return str(auth.stub.Token(request, timeout=10).access_token)


@pytest.mark.parametrize("aio", [False, True])
def test_concurrent_calls_of_two_users_never_get_each_others_tokens(
    loop_thread: EventLoopThread, auth: AuthHarness, key_a: Any, aio: bool
) -> None:
    tokens = {name: login_for_a(auth, name).access_token for name in ("alice", "bob")}
    with running_chain(loop_thread, auth, key_a, aio=aio) as chain:
        names = ["alice", "bob"] * 40

        def call(name: str) -> str:
            answer = chain.a.GetProtectedResource(request(), metadata=bearer(tokens[name]))
            assert list(answer.user.actors) == [SERVICE_A]
            return str(answer.user.username)

        answers = run_concurrently(call, names)
        assert answers == names
        # One exchange per user, shared by all of that user's concurrent calls.
        assert chain.exchanges.calls == 2


@pytest.mark.parametrize("aio", [False, True])
def test_b_can_refuse_delegated_tokens_or_accept_only_named_actors(
    loop_thread: EventLoopThread, auth: AuthHarness, key_a: Any, aio: bool
) -> None:
    alice = login_for_a(auth, "alice")
    never = MethodPolicy(delegated_actors={GET: frozenset()})
    with running_chain(loop_thread, auth, key_a, aio=aio, policy_b=never) as chain:
        with pytest.raises(grpc.RpcError) as info:
            chain.a.GetProtectedResource(request(), metadata=bearer(alice.access_token))
        refusal: Any = info.value
        assert (refusal.code(), refusal.details()) == (
            grpc.StatusCode.PERMISSION_DENIED,
            "delegated token not accepted",
        )


def test_a_named_actor_passes_and_another_is_refused(
    loop_thread: EventLoopThread, auth: AuthHarness, key_a: Any
) -> None:
    alice = login_for_a(auth, "alice")
    only_a = MethodPolicy(delegated_actors={GET: frozenset({SERVICE_A})})
    only_c = MethodPolicy(delegated_actors={GET: frozenset({"service-c"})})
    with running_chain(loop_thread, auth, key_a, aio=False, policy_b=only_a) as chain:
        answer = chain.a.GetProtectedResource(request(), metadata=bearer(alice.access_token))
        assert list(answer.user.actors) == [SERVICE_A]
        # Direct (non-delegated) calls are unaffected by the actor rule.
        derived_claims = jwt.decode(
            exchange_by_a(auth, key_a, alice.access_token), options={"verify_signature": False}
        )
        assert derived_claims["act"] == {"sub": SERVICE_A}
    auth.server.components.client_side.clients.remove(SERVICE_A)
    with running_chain(loop_thread, auth, key_a, aio=False, policy_b=only_c) as chain:
        with pytest.raises(grpc.RpcError) as info:
            chain.a.GetProtectedResource(request(), metadata=bearer(alice.access_token))
        refusal: Any = info.value
        assert (refusal.code(), refusal.details()) == (
            grpc.StatusCode.PERMISSION_DENIED,
            "delegated token not accepted",
        )


# -- the example: ssot-resource's GetResourceOnBehalf ------------------------------------------


@pytest.mark.parametrize("aio", [False, True])
def test_the_example_service_calls_downstream_on_behalf_of_the_user(
    loop_thread: EventLoopThread, auth: AuthHarness, key_a: Any, tmp_path: Path, aio: bool
) -> None:
    register_a(auth, key_a)
    key_file = tmp_path / "service-a.pem"
    key_file.write_bytes(
        key_a.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    alice = login_for_a(auth, "alice")
    config_b = ResourceServerConfig(
        grpc_address="127.0.0.1:0", issuer=ISSUER, audience=SERVICE_B, auth_target=auth.target
    )
    with open_verifier(config_b) as verifier_b:
        server_b, port_b = build_server(config_b, verifier_b)
        config_a = ResourceServerConfig(
            grpc_address="127.0.0.1:0",
            issuer=ISSUER,
            audience=SERVICE_A,
            auth_target=auth.target,
            downstream=DownstreamSettings(
                target=f"127.0.0.1:{port_b}",
                audience=SERVICE_B,
                auth_target=auth.target,
                client_id=SERVICE_A,
                client_key_file=key_file,
            ),
        )
        with open_verifier(config_a) as verifier_a:
            if aio:
                server_a, port_a = loop_thread.run(start_aio_server(config_a, verifier_a))
                stop_a: Callable[[], object] = lambda: loop_thread.run(server_a.stop(0.5))  # noqa: E731
            else:
                sync_a, port_a = build_server(config_a, verifier_a)
                stop_a = lambda: sync_a.stop(0.5).wait()  # noqa: E731
            try:
                with grpc.insecure_channel(f"127.0.0.1:{port_a}") as channel:
                    stub = resource_pb2_grpc.ResourceServiceStub(channel)
                    answer = stub.GetResourceOnBehalf(
                        request(), metadata=bearer(alice.access_token), timeout=10
                    )
                    assert (answer.user.username, list(answer.user.actors)) == (
                        "alice",
                        [SERVICE_A],
                    )
                    # Without a token: refused by A before anything is exchanged.
                    with pytest.raises(grpc.RpcError) as info:
                        stub.GetResourceOnBehalf(request(), timeout=10)
                    assert info.value.code() == grpc.StatusCode.UNAUTHENTICATED  # type: ignore[attr-defined]
            finally:
                stop_a()
        server_b.stop(0.5).wait()


def test_without_a_downstream_the_method_is_a_failed_precondition(
    loop_thread: EventLoopThread, auth: AuthHarness
) -> None:
    alice = auth.login("alice", PASSWORD)
    with (
        running_resource(loop_thread, auth, aio=False) as resource,
        pytest.raises(grpc.RpcError) as info,
    ):
        resource.stub.GetResourceOnBehalf(request(), metadata=bearer(alice.access_token))
    assert info.value.code() == grpc.StatusCode.FAILED_PRECONDITION  # type: ignore[attr-defined]


def test_the_downstream_client_id_must_be_the_service_audience(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="--client-id must equal --audience"):
        ResourceServerConfig(
            issuer=ISSUER,
            audience=SERVICE_A,
            auth_target="127.0.0.1:1",
            downstream=DownstreamSettings(
                target="127.0.0.1:2",
                audience=SERVICE_B,
                auth_target="127.0.0.1:1",
                client_id="someone-else",
                client_key_file=tmp_path / "k.pem",
            ),
        )
