"""AuthInterceptor and AsyncAuthInterceptor on real servers, for all four RPC kinds."""

from __future__ import annotations

import asyncio
import inspect
import json
import logging
from collections.abc import AsyncIterator, Callable, Iterator
from concurrent import futures
from types import SimpleNamespace
from typing import Any

import grpc
import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

import helpers
from helpers import EventLoopThread, bearer
from interceptors import (
    HEALTH_METHODS,
    REFLECTION_METHODS,
    AsyncAuthInterceptor,
    AuthInterceptor,
    KeyCache,
    KeysUnavailable,
    MalformedToken,
    MethodPolicy,
    MissingToken,
    StaticSource,
    TokenPolicy,
    TokenVerifier,
    bearer_token,
    current_principal,
)
from protos import resource_pb2, resource_pb2_grpc

ISSUER = "https://auth.example.test"
AUDIENCE = "ssot-resource"
NOW = 1_700_000_000
SERVICE = "/ssot.resource.v1.ResourceService/"
PUBLIC = SERVICE + "GetPublicInfo"
ADMIN = SERVICE + "GetAdminReport"
ADMIN_SCOPE = "resource.admin"
OFFLINE_KID = "offline-kid"
BUGGY_KID = "buggy-kid"
BUG_TEXT = "verifier bug text that must not reach the wire"
KINDS = ["unary", "server-stream", "client-stream", "bidi"]
FACES = pytest.mark.parametrize("aio", [False, True], ids=["sync", "aio"])
ALL_KINDS = pytest.mark.parametrize("kind", KINDS)


def _jwk(kid: str, algorithm: str, private: Any) -> dict[str, Any]:
    jwk = jwt.get_algorithm_by_name(algorithm).to_jwk(private.public_key(), as_dict=True)
    jwk.update(kid=kid, alg=algorithm, use="sig")
    return jwk


RSA_KEY = rsa.generate_private_key(public_exponent=65537, key_size=2048)
EC_KEY = ec.generate_private_key(ec.SECP256R1())
OTHER_KEY = rsa.generate_private_key(public_exponent=65537, key_size=2048)
JWKS = {"keys": [_jwk("rs-1", "RS256", RSA_KEY), _jwk("es-1", "ES256", EC_KEY)]}


def mint(
    *,
    kid: str = "rs-1",
    key: Any = RSA_KEY,
    algorithm: str = "RS256",
    **overrides: Any,
) -> str:
    return helpers.mint(
        key,
        kid=kid,
        algorithm=algorithm,
        now=NOW,
        issuer=ISSUER,
        audience=AUDIENCE,
        lifetime=900,
        **{"jti": "token-1", **overrides},
    )


# -- test service, sync and asyncio -----------------------------------------------------


def _user() -> resource_pb2.User:
    principal = current_principal()
    return resource_pb2.User(user_id=principal.subject, username=principal.username)


def _public_info() -> resource_pb2.GetPublicInfoResponse:
    try:
        leaked = current_principal().subject
    except LookupError:
        return resource_pb2.GetPublicInfoResponse(service="public", issuer=ISSUER)
    return resource_pb2.GetPublicInfoResponse(service=f"leaked {leaked}", issuer=ISSUER)


def _admin_report() -> resource_pb2.GetAdminReportResponse:
    scopes = " ".join(sorted(current_principal().scopes))
    return resource_pb2.GetAdminReportResponse(message="admin", user=_user(), scope=scopes)


class Servicer(resource_pb2_grpc.ResourceServiceServicer):
    """Every handler reads current_principal(); streams read it at every message."""

    def GetProtectedResource(self, request: Any, context: Any) -> Any:
        return resource_pb2.GetProtectedResourceResponse(message="protected", user=_user())

    def GetPublicInfo(self, request: Any, context: Any) -> Any:
        return _public_info()

    def GetAdminReport(self, request: Any, context: Any) -> Any:
        return _admin_report()

    def StreamEvents(self, request: Any, context: Any) -> Iterator[Any]:
        for sequence in range(1, request.count + 1):
            yield resource_pb2.Event(sequence=sequence, user=_user())

    def UploadNotes(self, request_iterator: Any, context: Any) -> Any:
        count = sum(1 for _ in request_iterator)
        return resource_pb2.UploadNotesResponse(count=count, user=_user())

    def EchoNotes(self, request_iterator: Any, context: Any) -> Iterator[Any]:
        for note in request_iterator:
            yield resource_pb2.Note(text=note.text, author=_user())


class AsyncServicer(resource_pb2_grpc.ResourceServiceServicer):
    """The asyncio twin; EchoNotes uses the reader/writer API instead of a generator."""

    async def GetProtectedResource(self, request: Any, context: Any) -> Any:
        await asyncio.sleep(0)
        return resource_pb2.GetProtectedResourceResponse(message="protected", user=_user())

    async def GetPublicInfo(self, request: Any, context: Any) -> Any:
        return _public_info()

    async def GetAdminReport(self, request: Any, context: Any) -> Any:
        return _admin_report()

    async def StreamEvents(self, request: Any, context: Any) -> AsyncIterator[Any]:
        for sequence in range(1, request.count + 1):
            await asyncio.sleep(0)
            yield resource_pb2.Event(sequence=sequence, user=_user())

    async def UploadNotes(self, request_iterator: Any, context: Any) -> Any:
        count = 0
        async for _ in request_iterator:
            count += 1
        return resource_pb2.UploadNotesResponse(count=count, user=_user())

    async def EchoNotes(self, request_iterator: Any, context: Any) -> None:
        async for note in request_iterator:
            await context.write(resource_pb2.Note(text=note.text, author=_user()))


# -- servers -----------------------------------------------------------------------------


class Provider:
    """The real KeyCache, plus one kid whose issuer is down and one that trips a bug."""

    def __init__(self, cache: KeyCache) -> None:
        self._cache = cache

    def get_key(self, kid: str) -> Any:
        self._trouble(kid)
        return self._cache.get_key(kid)

    async def aget_key(self, kid: str) -> Any:
        self._trouble(kid)
        return await self._cache.aget_key(kid)

    def add_removal_listener(self, callback: Callable[[frozenset[str]], None]) -> None:
        self._cache.add_removal_listener(callback)

    @staticmethod
    def _trouble(kid: str) -> None:
        if kid == OFFLINE_KID:
            raise KeysUnavailable("issuer unreachable (test)")
        if kid == BUGGY_KID:
            raise RuntimeError(BUG_TEXT)


def make_verifier(cache: KeyCache) -> TokenVerifier:
    policy = TokenPolicy(issuer=ISSUER, audience=AUDIENCE)
    return TokenVerifier(Provider(cache), policy, now=lambda: NOW)


def method_policy() -> MethodPolicy:
    return MethodPolicy(
        public_methods=frozenset({PUBLIC}), required_scopes={ADMIN: frozenset({ADMIN_SCOPE})}
    )


class AioServer:
    """A grpc.aio server on its own event loop in a background thread."""

    def __init__(self, verifier: TokenVerifier) -> None:
        self._loop = EventLoopThread("aio-server")
        self.port = self._loop.run(self._start(verifier), 10)

    async def _start(self, verifier: TokenVerifier) -> int:
        interceptor = AsyncAuthInterceptor(verifier, method_policy())
        self._server = grpc.aio.server(interceptors=[interceptor])
        resource_pb2_grpc.add_ResourceServiceServicer_to_server(AsyncServicer(), self._server)
        health_pb2_grpc.add_HealthServicer_to_server(health.aio.HealthServicer(), self._server)
        port = self._server.add_insecure_port("127.0.0.1:0")
        await self._server.start()
        return port

    def stop(self) -> None:
        self._loop.run(self._server.stop(None), 10)
        self._loop.close()


class Servers:
    def __init__(self) -> None:
        self.cache = KeyCache(StaticSource(JWKS))
        self.cache.start()
        self.sync = grpc.server(
            futures.ThreadPoolExecutor(max_workers=4),
            interceptors=[AuthInterceptor(make_verifier(self.cache), method_policy())],
        )
        resource_pb2_grpc.add_ResourceServiceServicer_to_server(Servicer(), self.sync)
        health_pb2_grpc.add_HealthServicer_to_server(health.HealthServicer(), self.sync)
        sync_port = self.sync.add_insecure_port("127.0.0.1:0")
        self.sync.start()
        self.aio = AioServer(make_verifier(self.cache))
        self.channels = {
            False: grpc.insecure_channel(f"127.0.0.1:{sync_port}"),
            True: grpc.insecure_channel(f"127.0.0.1:{self.aio.port}"),
        }

    def close(self) -> None:
        for channel in self.channels.values():
            channel.close()
        self.sync.stop(None).wait(10)
        self.aio.stop()
        self.cache.close()


@pytest.fixture(scope="module")
def servers() -> Iterator[Servers]:
    running = Servers()
    yield running
    running.close()


@pytest.fixture
def channel(servers: Servers, aio: bool) -> grpc.Channel:
    return servers.channels[aio]


@pytest.fixture
def stub(channel: grpc.Channel) -> resource_pb2_grpc.ResourceServiceStub:
    return resource_pb2_grpc.ResourceServiceStub(channel)


def call(
    stub: resource_pb2_grpc.ResourceServiceStub,
    kind: str,
    metadata: list[tuple[str, Any]] | None,
) -> list[resource_pb2.User]:
    """Make one call of ``kind``; return the user each response names."""
    notes = [resource_pb2.Note(text="a"), resource_pb2.Note(text="b")]
    if kind == "unary":
        response = stub.GetProtectedResource(
            resource_pb2.GetProtectedResourceRequest(), metadata=metadata, timeout=10
        )
        return [response.user]
    if kind == "server-stream":
        events = stub.StreamEvents(
            resource_pb2.StreamEventsRequest(count=5), metadata=metadata, timeout=10
        )
        return [event.user for event in events]
    if kind == "client-stream":
        upload = stub.UploadNotes(iter(notes), metadata=metadata, timeout=10)
        assert upload.count == len(notes)
        return [upload.user]
    echoes = stub.EchoNotes(iter(notes), metadata=metadata, timeout=10)
    return [echo.author for echo in echoes]


EXPECTED_RESPONSES = {"unary": 1, "server-stream": 5, "client-stream": 1, "bidi": 2}


def rejection(stub: Any, kind: str, metadata: list[tuple[str, Any]] | None) -> grpc.RpcError:
    with pytest.raises(grpc.RpcError) as caught:
        call(stub, kind, metadata)
    return caught.value


# -- behaviour on both servers ------------------------------------------------------------


@FACES
@ALL_KINDS
def test_a_valid_token_reaches_the_handler_as_the_principal(
    stub: Any, kind: str, aio: bool
) -> None:
    users = call(stub, kind, bearer(mint()))

    assert len(users) == EXPECTED_RESPONSES[kind]
    assert all(user == resource_pb2.User(user_id="user-1", username="alice") for user in users)


@FACES
@ALL_KINDS
def test_a_missing_token_is_unauthenticated(stub: Any, kind: str, aio: bool) -> None:
    error = rejection(stub, kind, None)

    assert error.code() == grpc.StatusCode.UNAUTHENTICATED
    assert error.details() == "missing bearer token"


BAD_TOKENS = [
    pytest.param(lambda: "not-a-token", "malformed token", id="garbage"),
    pytest.param(lambda: mint(exp=NOW - 600, iat=NOW - 1200), "token expired", id="expired"),
    pytest.param(lambda: mint(key=OTHER_KEY), "invalid signature", id="bad-signature"),
    pytest.param(lambda: mint(aud="someone-else"), "invalid token claims", id="wrong-audience"),
    pytest.param(lambda: mint(kid="nobody"), "unknown signing key", id="unknown-kid"),
]


@FACES
@ALL_KINDS
@pytest.mark.parametrize(("make", "details"), BAD_TOKENS)
def test_a_bad_token_is_unauthenticated_with_its_category(
    stub: Any, kind: str, make: Callable[[], str], details: str, aio: bool
) -> None:
    token = make()

    error = rejection(stub, kind, bearer(token))

    assert error.code() == grpc.StatusCode.UNAUTHENTICATED
    assert error.details() == details
    assert token not in (error.debug_error_string() or "")


@FACES
def test_a_token_without_the_required_scope_is_permission_denied(stub: Any, aio: bool) -> None:
    with pytest.raises(grpc.RpcError) as caught:
        stub.GetAdminReport(
            resource_pb2.GetAdminReportRequest(), metadata=bearer(mint()), timeout=10
        )

    assert caught.value.code() == grpc.StatusCode.PERMISSION_DENIED
    assert caught.value.details() == "insufficient scope"


@FACES
def test_a_token_with_the_required_scope_is_admitted(stub: Any, aio: bool) -> None:
    token = mint(scope=f"resource.read {ADMIN_SCOPE}")

    report = stub.GetAdminReport(
        resource_pb2.GetAdminReportRequest(), metadata=bearer(token), timeout=10
    )

    assert report.scope == f"{ADMIN_SCOPE} resource.read"
    assert report.user.user_id == "user-1"


@FACES
def test_a_public_method_needs_no_token(stub: Any, aio: bool) -> None:
    info = stub.GetPublicInfo(resource_pb2.GetPublicInfoRequest(), timeout=10)

    assert info.service == "public"


@FACES
def test_a_public_method_ignores_a_bad_token(stub: Any, aio: bool) -> None:
    info = stub.GetPublicInfo(
        resource_pb2.GetPublicInfoRequest(), metadata=bearer("garbage"), timeout=10
    )

    assert info.service == "public"


@FACES
def test_two_authorization_entries_are_rejected(stub: Any, aio: bool) -> None:
    metadata = bearer(mint()) + bearer(mint(jti="token-2"))

    error = rejection(stub, "unary", metadata)

    assert error.code() == grpc.StatusCode.UNAUTHENTICATED
    assert error.details() == "malformed token"


@FACES
@pytest.mark.parametrize("scheme", ["bearer", "BEARER", "Bearer", "bEaReR"])
def test_the_bearer_scheme_is_case_insensitive(stub: Any, scheme: str, aio: bool) -> None:
    users = call(stub, "unary", bearer(mint(), scheme))

    assert users[0].user_id == "user-1"


@FACES
def test_binary_authorization_metadata_is_rejected(stub: Any, aio: bool) -> None:
    metadata = [("authorization-bin", f"Bearer {mint()}".encode())]

    error = rejection(stub, "unary", metadata)

    assert error.code() == grpc.StatusCode.UNAUTHENTICATED
    assert error.details() == "malformed token"


@FACES
@ALL_KINDS
def test_unavailable_keys_make_the_call_unavailable(stub: Any, kind: str, aio: bool) -> None:
    error = rejection(stub, kind, bearer(mint(kid=OFFLINE_KID)))

    assert error.code() == grpc.StatusCode.UNAVAILABLE
    assert error.details() == "signing keys unavailable"


@FACES
def test_an_unexpected_verifier_failure_fails_closed(
    stub: Any, aio: bool, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="interceptors")

    error = rejection(stub, "unary", bearer(mint(kid=BUGGY_KID)))

    assert error.code() == grpc.StatusCode.UNAUTHENTICATED
    assert error.details() == "invalid token"
    assert "RuntimeError" in caplog.text
    assert BUG_TEXT not in caplog.text


@FACES
def test_a_rejection_is_logged_with_category_and_method_but_not_the_token(
    stub: Any, aio: bool, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    token = mint(exp=NOW - 600, iat=NOW - 1200)

    rejection(stub, "server-stream", bearer(token))

    # One structured audit line per refusal (the detail goes to DEBUG only).
    audit = [json.loads(r.getMessage()) for r in caplog.records if r.name == "ssot.audit"]
    assert len(audit) == 1
    peer = audit[0].pop("peer")
    assert peer.startswith(("ipv4:127.0.0.1:", "ipv6:[::1]:"))
    assert audit == [
        {"event": "token.rejected", "reason": "expired", "method": SERVICE + "StreamEvents"}
    ]
    info = [r for r in caplog.records if r.levelno >= logging.INFO and r.name != "ssot.audit"]
    assert not [r for r in info if r.name.startswith("interceptors")]
    assert token not in caplog.text


@FACES
def test_the_health_check_needs_no_token(channel: grpc.Channel, aio: bool) -> None:
    response = health_pb2_grpc.HealthStub(channel).Check(
        health_pb2.HealthCheckRequest(), timeout=10
    )

    assert response.status == health_pb2.HealthCheckResponse.SERVING


@FACES
def test_an_unknown_method_stays_unimplemented(channel: grpc.Channel, aio: bool) -> None:
    method = channel.unary_unary(SERVICE + "NoSuchMethod")

    with pytest.raises(grpc.RpcError) as caught:
        method(b"", metadata=bearer(mint()), timeout=10)

    assert caught.value.code() == grpc.StatusCode.UNIMPLEMENTED


# -- the wrapped handlers, called directly -------------------------------------------------
# grpc runs every call in a fresh contextvars.Context, so a server cannot show a principal
# leaking out of a handler; calling the wrapped behaviour in this thread can.


class Aborted(Exception):
    pass


class FakeContext:
    def __init__(self, metadata: list[tuple[str, Any]] | None) -> None:
        self._metadata = metadata
        self.aborted: tuple[grpc.StatusCode, str] | None = None
        self.written: list[Any] = []

    def invocation_metadata(self) -> list[tuple[str, Any]] | None:
        return self._metadata

    def abort(self, code: grpc.StatusCode, details: str) -> None:
        self.aborted = (code, details)
        raise Aborted(details)


class AsyncFakeContext(FakeContext):
    async def abort(self, code: grpc.StatusCode, details: str) -> None:  # type: ignore[override]
        self.aborted = (code, details)
        raise Aborted(details)

    async def write(self, message: Any) -> None:
        self.written.append(message)


HANDLER_FACTORIES = {
    "unary": grpc.unary_unary_rpc_method_handler,
    "server-stream": grpc.unary_stream_rpc_method_handler,
    "client-stream": grpc.stream_unary_rpc_method_handler,
    "bidi": grpc.stream_stream_rpc_method_handler,
}
BEHAVIOURS = {
    "unary": "unary_unary",
    "server-stream": "unary_stream",
    "client-stream": "stream_unary",
    "bidi": "stream_stream",
}


@pytest.fixture(scope="module")
def verifier() -> Iterator[TokenVerifier]:
    cache = KeyCache(StaticSource(JWKS))
    cache.start()
    yield make_verifier(cache)
    cache.close()


def behaviour_for(kind: str, aio: bool, seen: list[str]) -> Callable[[Any, Any], Any]:
    """A handler of ``kind`` that records who it ran as, at every step."""

    def record() -> str:
        seen.append(current_principal().subject)
        return seen[-1]

    if kind in ("unary", "client-stream"):
        if aio:

            async def unary_async(request: Any, context: Any) -> str:
                await asyncio.sleep(0)
                return record()

            return unary_async

        return lambda request, context: record()
    if aio:

        async def stream_async(request: Any, context: Any) -> AsyncIterator[str]:
            for _ in range(3):
                await asyncio.sleep(0)
                yield record()

        return stream_async

    def stream_sync(request: Any, context: Any) -> Iterator[str]:
        for _ in range(3):
            yield record()

    return stream_sync


def wrapped(verifier: TokenVerifier, kind: str, aio: bool, seen: list[str]) -> Any:
    handler = HANDLER_FACTORIES[kind](behaviour_for(kind, aio, seen))
    details = SimpleNamespace(method=SERVICE + "Whatever", invocation_metadata=())
    if aio:

        async def continuation(_: Any) -> Any:
            return handler

        interceptor = AsyncAuthInterceptor(verifier)
        result = asyncio.run(interceptor.intercept_service(continuation, details))
    else:
        result = AuthInterceptor(verifier).intercept_service(lambda _: handler, details)
    assert result is not handler
    return getattr(result, BEHAVIOURS[kind])


def run_wrapped(behaviour: Any, kind: str, aio: bool, context: FakeContext) -> list[Any]:
    """Run a wrapped behaviour; check between and after steps that no principal leaks."""
    streams_out = kind in ("server-stream", "bidi")
    if aio:

        async def main() -> list[Any]:
            result = await behaviour(None, context)
            with pytest.raises(LookupError):
                current_principal()
            return context.written if streams_out else [result]

        return asyncio.run(main())
    if not streams_out:
        result = [behaviour(None, context)]
        with pytest.raises(LookupError):
            current_principal()
        return result
    responses = []
    for response in behaviour(None, context):
        with pytest.raises(LookupError):
            current_principal()
        responses.append(response)
    return responses


@FACES
@ALL_KINDS
def test_the_handler_runs_only_after_authentication(
    verifier: TokenVerifier, kind: str, aio: bool
) -> None:
    seen: list[str] = []
    context = AsyncFakeContext(None) if aio else FakeContext(None)

    with pytest.raises(Aborted):
        run_wrapped(wrapped(verifier, kind, aio, seen), kind, aio, context)

    assert context.aborted == (grpc.StatusCode.UNAUTHENTICATED, "missing bearer token")
    assert seen == []


@FACES
@ALL_KINDS
def test_the_principal_is_set_only_while_the_handler_runs(
    verifier: TokenVerifier, kind: str, aio: bool
) -> None:
    seen: list[str] = []
    context = AsyncFakeContext(bearer(mint())) if aio else FakeContext(bearer(mint()))

    responses = run_wrapped(wrapped(verifier, kind, aio, seen), kind, aio, context)

    assert responses == seen
    assert seen == ["user-1"] * (3 if kind in ("server-stream", "bidi") else 1)
    assert context.aborted is None


@ALL_KINDS
def test_the_asyncio_interceptor_keeps_a_sync_handler_sync(
    verifier: TokenVerifier, kind: str
) -> None:
    # grpc.aio runs a sync handler in its thread pool only if the wrapper is sync too.
    seen: list[str] = []
    handler = HANDLER_FACTORIES[kind](behaviour_for(kind, False, seen))
    details = SimpleNamespace(method=SERVICE + "Whatever", invocation_metadata=())

    async def continuation(_: Any) -> Any:
        return handler

    result = asyncio.run(AsyncAuthInterceptor(verifier).intercept_service(continuation, details))
    behaviour = getattr(result, BEHAVIOURS[kind])

    assert not inspect.iscoroutinefunction(behaviour)
    assert not inspect.isasyncgenfunction(behaviour)
    responses = run_wrapped(behaviour, kind, False, FakeContext(bearer(mint())))
    assert responses == seen
    assert seen and set(seen) == {"user-1"}


class CountingContext(AsyncFakeContext):
    def __init__(self, metadata: Any) -> None:
        super().__init__(metadata)
        self.metadata_asked = 0

    def invocation_metadata(self) -> Any:
        self.metadata_asked += 1
        return super().invocation_metadata()


async def _intercepted(verifier: TokenVerifier, kind: str, details_metadata: Any) -> Any:
    """intercept_service as grpc.aio calls it, in the current task; the wrapped behaviour."""
    handler = HANDLER_FACTORIES[kind](behaviour_for(kind, True, []))

    async def continuation(_: Any) -> Any:
        return handler

    details = SimpleNamespace(method=SERVICE + "Whatever", invocation_metadata=details_metadata)
    result = await AsyncAuthInterceptor(verifier).intercept_service(continuation, details)
    return getattr(result, BEHAVIOURS[kind])


@ALL_KINDS
def test_the_asyncio_handler_takes_the_metadata_intercept_service_saw(
    verifier: TokenVerifier, kind: str
) -> None:
    # grpc.aio runs intercept_service and the handler in the call's task: the metadata
    # it already converted for intercept_service is not converted again.
    metadata = bearer(mint())
    context = CountingContext(metadata)

    async def call() -> None:
        behaviour = await _intercepted(verifier, kind, metadata)
        await behaviour(None, context)

    asyncio.run(call())

    assert context.aborted is None
    assert context.metadata_asked == 0


@ALL_KINDS
def test_the_asyncio_handler_never_takes_metadata_handed_off_in_another_task(
    verifier: TokenVerifier, kind: str
) -> None:
    # A task created after intercept_service inherits its context: if grpc ever ran
    # intercept_service outside the call's own task, one call's token must not admit
    # another call. The handler then reads its own context's metadata (here: none).
    context = CountingContext(None)

    async def call() -> None:
        behaviour = await _intercepted(verifier, kind, bearer(mint()))
        await asyncio.create_task(behaviour(None, context))

    with pytest.raises(Aborted):
        asyncio.run(call())

    assert context.aborted == (grpc.StatusCode.UNAUTHENTICATED, "missing bearer token")
    assert context.metadata_asked == 1


# -- the pieces, without a network ----------------------------------------------------------


@pytest.mark.parametrize(
    ("metadata", "expected"),
    [
        pytest.param([("authorization", "Bearer abc.def.ghi")], "abc.def.ghi", id="bearer"),
        pytest.param([("authorization", "bearer abc")], "abc", id="lower-case-scheme"),
        pytest.param([("x-other", "1"), ("authorization", "BEARER abc")], "abc", id="among"),
        pytest.param((("authorization", "Bearer abc"),), "abc", id="tuple"),
    ],
)
def test_bearer_token_extracts_the_token(metadata: Any, expected: str) -> None:
    assert bearer_token(metadata) == expected


@pytest.mark.parametrize(
    ("metadata", "error"),
    [
        pytest.param(None, MissingToken, id="no-metadata"),
        pytest.param([], MissingToken, id="empty"),
        pytest.param([("x-other", "Bearer abc")], MissingToken, id="other-keys-only"),
        pytest.param(
            [("authorization", "Bearer a"), ("authorization", "Bearer a")],
            MalformedToken,
            id="two-entries",
        ),
        pytest.param([("authorization", b"Bearer abc")], MalformedToken, id="bytes-value"),
        pytest.param([("authorization-bin", b"Bearer abc")], MalformedToken, id="binary-key"),
        pytest.param([("authorization", "Basic dXNlcjpw")], MalformedToken, id="basic-scheme"),
        pytest.param([("authorization", "Bearer")], MalformedToken, id="scheme-only"),
        pytest.param([("authorization", "Bearer ")], MalformedToken, id="empty-token"),
        pytest.param([("authorization", "Bearer  abc")], MalformedToken, id="two-spaces"),
        pytest.param([("authorization", "Bearer a b")], MalformedToken, id="two-tokens"),
        pytest.param([("authorization", "abc")], MalformedToken, id="no-scheme"),
        pytest.param([("authorization", "")], MalformedToken, id="empty-value"),
    ],
)
def test_bearer_token_refuses_bad_metadata(metadata: Any, error: type[Exception]) -> None:
    with pytest.raises(error):
        bearer_token(metadata)


def test_health_and_reflection_are_public_by_default() -> None:
    policy = MethodPolicy()

    assert all(policy.is_public(method) for method in HEALTH_METHODS | REFLECTION_METHODS)
    assert "/grpc.health.v1.Health/Check" in HEALTH_METHODS
    assert not policy.is_public(PUBLIC)


def test_health_and_reflection_can_be_made_protected() -> None:
    policy = MethodPolicy(public_health=False, public_reflection=False)

    assert not any(policy.is_public(method) for method in HEALTH_METHODS | REFLECTION_METHODS)


def test_a_method_policy_reports_public_methods_and_scopes() -> None:
    policy = method_policy()

    assert policy.is_public(PUBLIC)
    assert not policy.is_public(ADMIN)
    assert policy.scopes_for(ADMIN) == {ADMIN_SCOPE}
    assert policy.scopes_for(SERVICE + "GetProtectedResource") == frozenset()


@pytest.mark.parametrize(
    "kwargs",
    [
        pytest.param({"public_methods": frozenset({"GetPublicInfo"})}, id="bare-name"),
        pytest.param({"public_methods": frozenset({"/pkg.Service"})}, id="no-method"),
        pytest.param({"public_methods": frozenset({"pkg.Service/Method"})}, id="no-slash"),
        pytest.param({"required_scopes": {"/x.Y/Z/": frozenset({"a"})}}, id="trailing-slash"),
        pytest.param({"required_scopes": {"/x.Y/Z": "a"}}, id="scopes-as-string"),
        pytest.param({"required_scopes": {"/x.Y/Z": frozenset({"a b"})}}, id="scope-with-space"),
        pytest.param(
            {"public_methods": frozenset({"/x.Y/Z"}), "required_scopes": {"/x.Y/Z": {"a"}}},
            id="public-and-scoped",
        ),
        pytest.param(
            {"required_scopes": {"/grpc.health.v1.Health/Check": frozenset({"a"})}},
            id="public-health-scoped",
        ),
    ],
)
def test_a_method_policy_refuses_bad_settings(kwargs: dict[str, Any]) -> None:
    with pytest.raises(ValueError):
        MethodPolicy(**kwargs)


def test_current_principal_outside_a_call_is_a_lookup_error() -> None:
    with pytest.raises(LookupError, match="no authenticated principal in this context"):
        current_principal()
