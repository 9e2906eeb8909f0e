"""The client-side token helpers against real gRPC servers on loopback.

A fake AuthService issues numbered tokens and counts Login/Refresh calls; an echo
ResourceService records the metadata it receives and rejects tokens the fake did not
issue (or has revoked) with UNAUTHENTICATED.
"""

from __future__ import annotations

import asyncio
import datetime
import ipaddress
import itertools
import threading
from collections.abc import Callable, Iterator
from concurrent import futures
from dataclasses import dataclass, field
from typing import Any

import grpc
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from helpers import Clock
from interceptors import (
    AsyncTokenManager,
    AuthError,
    BearerClientInterceptor,
    TokenClientError,
    TokenManager,
    TokenRequestError,
)
from protos import auth_pb2, auth_pb2_grpc, resource_pb2, resource_pb2_grpc

USERNAME = "alice"
PASSWORD = "correct horse battery staple"
T0 = 1_700_000_000.0

KINDS = ["unary_unary", "unary_stream", "stream_unary", "stream_stream"]


class Arrivals:
    """Counts threads that are about to ask for a token, so Login can wait for all of them."""

    def __init__(self) -> None:
        self.count = 0
        self._cond = threading.Condition()

    def arrive(self) -> None:
        with self._cond:
            self.count += 1
            self._cond.notify_all()

    def wait_for(self, count: int) -> None:
        with self._cond:
            self._cond.wait_for(lambda: self.count >= count, timeout=5.0)


@dataclass
class FakeAuth(auth_pb2_grpc.AuthServiceServicer):
    expires_in: int = 900
    login_code: grpc.StatusCode | None = None
    refresh_code: grpc.StatusCode | None = None
    issue_refresh_tokens: bool = True
    override: dict[str, Any] = field(default_factory=dict)
    login_gate: Callable[[], None] | None = None
    logins: int = 0
    refreshes: int = 0
    scopes: list[str] = field(default_factory=list)
    valid: set[str] = field(default_factory=set)
    refresh_tokens: set[str] = field(default_factory=set)
    lock: threading.Lock = field(default_factory=threading.Lock)
    counter: Iterator[int] = field(default_factory=lambda: itertools.count(1))

    def Login(self, request: auth_pb2.LoginRequest, context: Any) -> auth_pb2.TokenResponse:
        with self.lock:
            self.logins += 1
            self.scopes.append(request.scope)
        if self.login_gate is not None:
            self.login_gate()
        if self.login_code is not None:
            context.abort(self.login_code, "login refused")
        if request.username != USERNAME or request.password != PASSWORD:
            context.abort(grpc.StatusCode.UNAUTHENTICATED, "invalid credentials")
        return self._issue("login")

    def Refresh(self, request: auth_pb2.RefreshRequest, context: Any) -> auth_pb2.TokenResponse:
        with self.lock:
            self.refreshes += 1
        if self.refresh_code is not None:
            context.abort(self.refresh_code, "refresh refused")
        with self.lock:
            if request.refresh_token not in self.refresh_tokens:
                context.abort(grpc.StatusCode.UNAUTHENTICATED, "invalid refresh token")
            self.refresh_tokens.discard(request.refresh_token)
        return self._issue("refresh")

    def _issue(self, kind: str) -> auth_pb2.TokenResponse:
        with self.lock:
            n = next(self.counter)
            access, refresh = f"{kind}-access-{n}", f"refresh-{n}"
            self.valid.add(access)
            if self.issue_refresh_tokens:
                self.refresh_tokens.add(refresh)
        response = auth_pb2.TokenResponse(
            access_token=access,
            token_type="Bearer",
            expires_in=self.expires_in,
            refresh_token=refresh if self.issue_refresh_tokens else "",
            scope="resource.read",
        )
        for name, value in self.override.items():
            setattr(response, name, value)
        return response


@dataclass
class EchoResource(resource_pb2_grpc.ResourceServiceServicer):
    auth: FakeAuth
    fail_code: grpc.StatusCode | None = None
    seen: list[tuple[tuple[str, str], ...]] = field(default_factory=list)

    def _check(self, context: Any) -> resource_pb2.User:
        metadata = tuple((m.key, m.value) for m in context.invocation_metadata())
        self.seen.append(metadata)
        if self.fail_code is not None:
            context.abort(self.fail_code, "refused by the test")
        values = [value for key, value in metadata if key == "authorization"]
        scheme, _, token = values[0].partition(" ") if len(values) == 1 else ("", "", "")
        if scheme != "Bearer" or token not in self.auth.valid:
            context.abort(grpc.StatusCode.UNAUTHENTICATED, "invalid token")
        return resource_pb2.User(user_id="u-1", username=USERNAME)

    def GetProtectedResource(self, request: Any, context: Any) -> Any:
        return resource_pb2.GetProtectedResourceResponse(
            message="This is a protected resource", user=self._check(context)
        )

    def StreamEvents(self, request: Any, context: Any) -> Any:
        user = self._check(context)
        for i in range(request.count):
            yield resource_pb2.Event(sequence=i + 1, user=user)

    def UploadNotes(self, request_iterator: Any, context: Any) -> Any:
        user = self._check(context)
        return resource_pb2.UploadNotesResponse(count=sum(1 for _ in request_iterator), user=user)

    def EchoNotes(self, request_iterator: Any, context: Any) -> Any:
        user = self._check(context)
        for note in request_iterator:
            yield resource_pb2.Note(text=note.text, author=user)

    def tokens_seen(self) -> list[str]:
        return [v for md in self.seen for k, v in md if k == "authorization"]


@dataclass
class Servers:
    auth: FakeAuth
    resource: EchoResource
    port: int
    tls_port: int
    cert_pem: bytes

    @property
    def target(self) -> str:
        return f"127.0.0.1:{self.port}"


@pytest.fixture(scope="module")
def tls_material() -> tuple[bytes, bytes]:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(hours=1))
        .add_extension(
            x509.SubjectAlternativeName(
                [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
            ),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    key_pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    return key_pem, cert.public_bytes(serialization.Encoding.PEM)


@pytest.fixture
def servers(tls_material: tuple[bytes, bytes]) -> Iterator[Servers]:
    # The fakes leave out RPCs these tests never call.
    auth = FakeAuth()  # type: ignore[abstract]
    resource = EchoResource(auth)  # type: ignore[abstract]
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=32))
    auth_pb2_grpc.add_AuthServiceServicer_to_server(auth, server)
    resource_pb2_grpc.add_ResourceServiceServicer_to_server(resource, server)
    port = server.add_insecure_port("127.0.0.1:0")
    tls_port = server.add_secure_port("127.0.0.1:0", grpc.ssl_server_credentials([tls_material]))
    server.start()
    try:
        yield Servers(auth, resource, port, tls_port, tls_material[1])
    finally:
        server.stop(None)


@pytest.fixture
def auth_channel(servers: Servers) -> Iterator[grpc.Channel]:
    with grpc.insecure_channel(servers.target) as channel:
        yield channel


@pytest.fixture
def clock() -> Clock:
    return Clock(T0)


def make_manager(channel: grpc.Channel, clock: Clock, **kwargs: Any) -> TokenManager:
    kwargs.setdefault("password", PASSWORD)
    return TokenManager(channel, USERNAME, now=clock, **kwargs)


NOTES = (resource_pb2.Note(text="a"), resource_pb2.Note(text="b"))


def call_kind(
    stub: resource_pb2_grpc.ResourceServiceStub,
    kind: str,
    notes: tuple[resource_pb2.Note, ...] = NOTES,
    **kwargs: Any,
) -> str:
    """Make one call of the given kind and return the user name the server saw.

    Failing calls pass ``notes=()``: a request stream still being written when the server
    aborts can end as INTERNAL instead of the server's status (a grpc client race).
    """
    if kind == "unary_unary":
        return stub.GetProtectedResource(
            resource_pb2.GetProtectedResourceRequest(), **kwargs
        ).user.username
    if kind == "unary_stream":
        events = list(stub.StreamEvents(resource_pb2.StreamEventsRequest(count=2), **kwargs))
        assert [e.sequence for e in events] == [1, 2]
        return events[0].user.username
    if kind == "stream_unary":
        response = stub.UploadNotes(iter(notes), **kwargs)
        assert response.count == 2
        return response.user.username
    echoed = list(stub.EchoNotes(iter(notes), **kwargs))
    assert [n.text for n in echoed] == ["a", "b"]
    return echoed[0].author.username


@pytest.fixture
def resource_stub(
    servers: Servers, auth_channel: grpc.Channel, clock: Clock
) -> Iterator[tuple[resource_pb2_grpc.ResourceServiceStub, TokenManager]]:
    manager = make_manager(auth_channel, clock)
    with grpc.insecure_channel(servers.target) as plain:
        channel = grpc.intercept_channel(plain, manager.interceptor())
        yield resource_pb2_grpc.ResourceServiceStub(channel), manager


# --- the sync manager ------------------------------------------------------------------------


def test_first_token_logs_in_and_later_calls_reuse_it(
    servers: Servers, auth_channel: grpc.Channel, clock: Clock
) -> None:
    manager = make_manager(auth_channel, clock, scope="resource.read")

    first = manager.token()
    second = manager.token()

    assert first == second == "login-access-1"
    assert (servers.auth.logins, servers.auth.refreshes) == (1, 0)
    assert servers.auth.scopes == ["resource.read"]


def test_metadata_is_one_bearer_authorization_pair(
    auth_channel: grpc.Channel, clock: Clock
) -> None:
    manager = make_manager(auth_channel, clock)

    assert manager.metadata() == (("authorization", "Bearer login-access-1"),)


@pytest.mark.parametrize("kind", KINDS)
def test_every_call_kind_sends_the_bearer_token(
    servers: Servers,
    resource_stub: tuple[resource_pb2_grpc.ResourceServiceStub, TokenManager],
    kind: str,
) -> None:
    stub, _ = resource_stub

    assert call_kind(stub, kind) == USERNAME
    assert servers.resource.tokens_seen() == ["Bearer login-access-1"]


@pytest.mark.parametrize("kind", KINDS)
def test_caller_metadata_is_kept_and_its_authorization_replaced(
    servers: Servers,
    resource_stub: tuple[resource_pb2_grpc.ResourceServiceStub, TokenManager],
    kind: str,
) -> None:
    stub, _ = resource_stub
    metadata = (("x-request-id", "r-1"), ("Authorization", "Bearer stale"))

    call_kind(stub, kind, metadata=metadata)

    (seen,) = servers.resource.seen
    assert ("x-request-id", "r-1") in seen
    assert servers.resource.tokens_seen() == ["Bearer login-access-1"]


@pytest.mark.parametrize(
    ("expires_in", "margin", "still_fresh_at"),
    [
        pytest.param(900, 60.0, 839.0, id="margin-when-smaller-than-20-percent"),
        pytest.param(100, 60.0, 79.0, id="20-percent-of-a-short-lifetime"),
    ],
)
def test_token_is_kept_until_the_renewal_point_then_refreshed(
    servers: Servers,
    auth_channel: grpc.Channel,
    clock: Clock,
    expires_in: int,
    margin: float,
    still_fresh_at: float,
) -> None:
    servers.auth.expires_in = expires_in
    manager = make_manager(auth_channel, clock, refresh_margin=margin)
    first = manager.token()

    clock.now = T0 + still_fresh_at
    assert manager.token() == first
    clock.now = T0 + still_fresh_at + 1.0
    renewed = manager.token()

    assert renewed == "refresh-access-2"
    assert (servers.auth.logins, servers.auth.refreshes) == (1, 1)
    assert renewed in servers.auth.valid


@pytest.mark.parametrize(
    "refresh_code",
    [
        pytest.param(grpc.StatusCode.UNIMPLEMENTED, id="refresh-unimplemented"),
        pytest.param(grpc.StatusCode.UNAUTHENTICATED, id="refresh-token-rejected"),
    ],
)
def test_renewal_logs_in_again_when_refresh_does_not_work(
    servers: Servers,
    auth_channel: grpc.Channel,
    clock: Clock,
    refresh_code: grpc.StatusCode,
) -> None:
    servers.auth.refresh_code = refresh_code
    manager = make_manager(auth_channel, clock)
    manager.token()

    clock.now = T0 + 900
    renewed = manager.token()

    assert renewed == "login-access-2"
    assert (servers.auth.logins, servers.auth.refreshes) == (2, 1)


def test_renewal_without_a_refresh_token_logs_in(
    servers: Servers, auth_channel: grpc.Channel, clock: Clock
) -> None:
    servers.auth.issue_refresh_tokens = False
    manager = make_manager(auth_channel, clock)
    manager.token()

    clock.now = T0 + 900

    assert manager.token() == "login-access-2"
    assert (servers.auth.logins, servers.auth.refreshes) == (2, 0)


def test_manager_given_only_a_refresh_token_refreshes_first(
    servers: Servers, auth_channel: grpc.Channel, clock: Clock
) -> None:
    servers.auth.refresh_tokens.add("refresh-0")
    manager = make_manager(auth_channel, clock, password=None, refresh_token="refresh-0")

    assert manager.token() == "refresh-access-1"
    assert (servers.auth.logins, servers.auth.refreshes) == (0, 1)


def test_rejected_refresh_without_a_password_surfaces_unauthenticated(
    servers: Servers, auth_channel: grpc.Channel, clock: Clock
) -> None:
    manager = make_manager(auth_channel, clock, password=None, refresh_token="refresh-unknown")

    with pytest.raises(grpc.RpcError) as caught:
        manager.token()

    assert caught.value.code() is grpc.StatusCode.UNAUTHENTICATED
    assert servers.auth.logins == 0
    # The refresh token is spent for good: the next attempt does not send it again.
    with pytest.raises(TokenRequestError):
        manager.token()
    assert servers.auth.refreshes == 1


@pytest.mark.parametrize(
    ("login_code", "password"),
    [
        pytest.param(None, "wrong password", id="bad-credentials"),
        pytest.param(grpc.StatusCode.RESOURCE_EXHAUSTED, PASSWORD, id="throttled"),
        pytest.param(grpc.StatusCode.UNAVAILABLE, PASSWORD, id="unavailable"),
    ],
)
def test_login_failure_surfaces_the_auth_service_status(
    servers: Servers,
    auth_channel: grpc.Channel,
    clock: Clock,
    login_code: grpc.StatusCode | None,
    password: str,
) -> None:
    servers.auth.login_code = login_code
    manager = make_manager(auth_channel, clock, password=password)

    with pytest.raises(grpc.RpcError) as caught:
        manager.token()

    expected = login_code or grpc.StatusCode.UNAUTHENTICATED
    assert caught.value.code() is expected
    assert password not in str(caught.value) + repr(caught.value)
    assert servers.auth.logins == 1


@pytest.mark.parametrize(
    "override",
    [
        pytest.param({"expires_in": 0}, id="zero-expires-in"),
        pytest.param({"expires_in": -30}, id="negative-expires-in"),
        pytest.param({"access_token": ""}, id="no-access-token"),
        pytest.param({"token_type": "MAC"}, id="not-bearer"),
    ],
)
def test_unusable_token_response_is_an_error_not_a_loop(
    servers: Servers, auth_channel: grpc.Channel, clock: Clock, override: dict[str, Any]
) -> None:
    servers.auth.override = override
    manager = make_manager(auth_channel, clock)

    with pytest.raises(TokenRequestError) as caught:
        manager.token()

    # A client-side failure: a server handler catching AuthError must not catch it.
    assert isinstance(caught.value, TokenClientError)
    assert not isinstance(caught.value, AuthError)
    assert caught.value.message == "token request failed"
    assert servers.auth.logins == 1


def test_twenty_threads_asking_at_once_share_one_login(
    servers: Servers, auth_channel: grpc.Channel, clock: Clock
) -> None:
    # Login is held until every thread is on its way into token(), so they overlap.
    arrivals = Arrivals()
    servers.auth.login_gate = lambda: arrivals.wait_for(20)
    manager = make_manager(auth_channel, clock)

    def ask(_: int) -> str:
        arrivals.arrive()
        return manager.token()

    with futures.ThreadPoolExecutor(max_workers=20) as pool:
        tokens = list(pool.map(ask, range(20)))

    assert set(tokens) == {"login-access-1"}
    assert servers.auth.logins == 1


def test_threads_waiting_on_a_failed_login_share_its_error(
    servers: Servers, auth_channel: grpc.Channel, clock: Clock
) -> None:
    servers.auth.login_code = grpc.StatusCode.UNAVAILABLE
    arrivals = Arrivals()
    servers.auth.login_gate = lambda: arrivals.wait_for(8)
    manager = make_manager(auth_channel, clock)

    def attempt(_: int) -> grpc.StatusCode:
        arrivals.arrive()
        try:
            manager.token()
        except grpc.RpcError as exc:
            return exc.code()
        raise AssertionError("token() should have failed")

    with futures.ThreadPoolExecutor(max_workers=8) as pool:
        codes = list(pool.map(attempt, range(8)))

    assert set(codes) == {grpc.StatusCode.UNAVAILABLE}
    assert servers.auth.logins == 1


def test_invalidate_forgets_only_the_current_token(
    servers: Servers, auth_channel: grpc.Channel, clock: Clock
) -> None:
    manager = make_manager(auth_channel, clock)
    current = manager.token()

    manager.invalidate("some-older-token")
    assert manager.token() == current
    manager.invalidate(current)

    assert manager.token() == "refresh-access-2"
    assert servers.auth.refreshes == 1


def test_unauthenticated_unary_call_is_retried_once_with_a_new_token(
    servers: Servers,
    resource_stub: tuple[resource_pb2_grpc.ResourceServiceStub, TokenManager],
) -> None:
    stub, manager = resource_stub
    servers.auth.valid.discard(manager.token())  # revoked server-side, still fresh client-side

    assert call_kind(stub, "unary_unary", timeout=5.0) == USERNAME
    assert servers.resource.tokens_seen() == [
        "Bearer login-access-1",
        "Bearer refresh-access-2",
    ]


def test_unauthenticated_unary_call_is_not_retried_a_second_time(
    servers: Servers,
    resource_stub: tuple[resource_pb2_grpc.ResourceServiceStub, TokenManager],
) -> None:
    stub, _ = resource_stub
    servers.resource.fail_code = grpc.StatusCode.UNAUTHENTICATED

    with pytest.raises(grpc.RpcError) as caught:
        call_kind(stub, "unary_unary")

    assert caught.value.code() is grpc.StatusCode.UNAUTHENTICATED
    assert len(servers.resource.seen) == 2
    assert (servers.auth.logins, servers.auth.refreshes) == (1, 1)


def test_unary_future_call_is_retried_too(
    servers: Servers,
    resource_stub: tuple[resource_pb2_grpc.ResourceServiceStub, TokenManager],
) -> None:
    stub, manager = resource_stub
    servers.auth.valid.discard(manager.token())

    future = stub.GetProtectedResource.future(resource_pb2.GetProtectedResourceRequest())

    assert future.result(timeout=5.0).user.username == USERNAME
    assert len(servers.resource.seen) == 2


@pytest.mark.parametrize(
    "code",
    [
        pytest.param(grpc.StatusCode.PERMISSION_DENIED, id="permission-denied"),
        pytest.param(grpc.StatusCode.UNAVAILABLE, id="unavailable"),
        pytest.param(grpc.StatusCode.INVALID_ARGUMENT, id="invalid-argument"),
    ],
)
def test_other_status_codes_are_not_retried(
    servers: Servers,
    resource_stub: tuple[resource_pb2_grpc.ResourceServiceStub, TokenManager],
    code: grpc.StatusCode,
) -> None:
    stub, _ = resource_stub
    servers.resource.fail_code = code

    with pytest.raises(grpc.RpcError) as caught:
        call_kind(stub, "unary_unary")

    assert caught.value.code() is code
    assert len(servers.resource.seen) == 1


@pytest.mark.parametrize("kind", KINDS[1:])
def test_streaming_calls_are_not_retried(
    servers: Servers,
    resource_stub: tuple[resource_pb2_grpc.ResourceServiceStub, TokenManager],
    kind: str,
) -> None:
    stub, _ = resource_stub
    servers.resource.fail_code = grpc.StatusCode.UNAUTHENTICATED

    with pytest.raises(grpc.RpcError) as caught:
        call_kind(stub, kind, notes=())

    assert caught.value.code() is grpc.StatusCode.UNAUTHENTICATED
    assert len(servers.resource.seen) == 1


def test_call_credentials_send_the_token_over_tls(
    servers: Servers, auth_channel: grpc.Channel, clock: Clock
) -> None:
    manager = make_manager(auth_channel, clock)
    credentials = grpc.composite_channel_credentials(
        grpc.ssl_channel_credentials(root_certificates=servers.cert_pem),
        manager.call_credentials(),
    )

    with grpc.secure_channel(f"localhost:{servers.tls_port}", credentials) as channel:
        stub = resource_pb2_grpc.ResourceServiceStub(channel)
        for kind in KINDS:
            assert call_kind(stub, kind, timeout=5.0) == USERNAME

    assert servers.resource.tokens_seen() == ["Bearer login-access-1"] * 4
    assert servers.auth.logins == 1


def test_call_credentials_fail_the_call_when_login_fails(
    servers: Servers, auth_channel: grpc.Channel, clock: Clock
) -> None:
    manager = make_manager(auth_channel, clock, password="wrong password")
    credentials = grpc.composite_channel_credentials(
        grpc.ssl_channel_credentials(root_certificates=servers.cert_pem),
        manager.call_credentials(),
    )

    with grpc.secure_channel(f"localhost:{servers.tls_port}", credentials) as channel:
        stub = resource_pb2_grpc.ResourceServiceStub(channel)
        with pytest.raises(grpc.RpcError) as caught:
            call_kind(stub, "unary_unary", timeout=5.0)

    assert caught.value.code() is not grpc.StatusCode.OK
    assert "wrong password" not in str(caught.value)
    assert servers.resource.seen == []


def test_repr_hides_the_password_and_tokens(
    servers: Servers, auth_channel: grpc.Channel, clock: Clock
) -> None:
    servers.auth.refresh_tokens.add("refresh-0")
    manager = make_manager(auth_channel, clock, refresh_token="refresh-0")
    token = manager.token()

    text = repr(manager) + repr(manager._core) + repr(manager.interceptor())

    assert USERNAME in repr(manager)
    for secret in (PASSWORD, token, "refresh-0", "refresh-1"):
        assert secret not in text


@pytest.mark.parametrize(
    "kwargs",
    [
        pytest.param({"username": ""}, id="empty-username"),
        pytest.param({"password": None}, id="no-password-or-refresh-token"),
        pytest.param({"refresh_margin": -1.0}, id="negative-margin"),
        pytest.param({"timeout": 0.0}, id="zero-timeout"),
    ],
)
@pytest.mark.parametrize("cls", [TokenManager, AsyncTokenManager])
def test_constructor_rejects_unusable_arguments(
    auth_channel: grpc.Channel, kwargs: dict[str, Any], cls: type[Any]
) -> None:
    arguments: dict[str, Any] = {"username": USERNAME, "password": PASSWORD, **kwargs}
    username = arguments.pop("username")
    password = arguments.pop("password")

    with pytest.raises(ValueError):
        cls(auth_channel, username, password, **arguments)


def test_interceptor_is_the_public_class(auth_channel: grpc.Channel, clock: Clock) -> None:
    interceptor = make_manager(auth_channel, clock).interceptor()

    assert isinstance(interceptor, BearerClientInterceptor)
    assert isinstance(interceptor, grpc.StreamStreamClientInterceptor)


# --- the asyncio manager ---------------------------------------------------------------------


def make_async_manager(channel: grpc.aio.Channel, clock: Clock, **kwargs: Any) -> AsyncTokenManager:
    kwargs.setdefault("password", PASSWORD)
    return AsyncTokenManager(channel, USERNAME, now=clock, **kwargs)


async def acall_kind(
    stub: resource_pb2_grpc.ResourceServiceAsyncStub,
    kind: str,
    notes: tuple[resource_pb2.Note, ...] = NOTES,
    **kwargs: Any,
) -> str:
    if kind == "unary_unary":
        response = await stub.GetProtectedResource(
            resource_pb2.GetProtectedResourceRequest(), **kwargs
        )
        return str(response.user.username)
    if kind == "unary_stream":
        call = stub.StreamEvents(resource_pb2.StreamEventsRequest(count=2), **kwargs)
        events = [event async for event in call]
        assert [e.sequence for e in events] == [1, 2]
        return str(events[0].user.username)
    if kind == "stream_unary":
        uploaded = await stub.UploadNotes(iter(notes), **kwargs)
        assert uploaded.count == 2
        return str(uploaded.user.username)
    echoed = [note async for note in stub.EchoNotes(iter(notes), **kwargs)]
    assert [n.text for n in echoed] == ["a", "b"]
    return str(echoed[0].author.username)


async def with_async_clients(
    servers: Servers,
    clock: Clock,
    body: Callable[[AsyncTokenManager, resource_pb2_grpc.ResourceServiceStub], Any],
    **kwargs: Any,
) -> Any:
    async with grpc.aio.insecure_channel(servers.target) as auth:
        manager = make_async_manager(auth, clock, **kwargs)
        async with grpc.aio.insecure_channel(
            servers.target, interceptors=manager.interceptors()
        ) as channel:
            return await body(manager, resource_pb2_grpc.ResourceServiceStub(channel))


def run_async(
    servers: Servers,
    clock: Clock,
    body: Callable[[AsyncTokenManager, resource_pb2_grpc.ResourceServiceStub], Any],
    **kwargs: Any,
) -> Any:
    return asyncio.run(with_async_clients(servers, clock, body, **kwargs))


def test_async_first_token_logs_in_and_later_calls_reuse_it(servers: Servers, clock: Clock) -> None:
    async def body(manager: AsyncTokenManager, _: Any) -> tuple[str, str, Any]:
        return await manager.token(), await manager.token(), await manager.metadata()

    first, second, metadata = run_async(servers, clock, body)

    assert first == second == "login-access-1"
    assert metadata == (("authorization", "Bearer login-access-1"),)
    assert (servers.auth.logins, servers.auth.refreshes) == (1, 0)


@pytest.mark.parametrize("kind", KINDS)
def test_async_every_call_kind_sends_the_bearer_token_and_keeps_caller_metadata(
    servers: Servers, clock: Clock, kind: str
) -> None:
    metadata = (("x-request-id", "r-1"), ("authorization", "Bearer stale"))

    async def body(_: AsyncTokenManager, stub: Any) -> str:
        return await acall_kind(stub, kind, metadata=metadata)

    assert run_async(servers, clock, body) == USERNAME
    (seen,) = servers.resource.seen
    assert ("x-request-id", "r-1") in seen
    assert servers.resource.tokens_seen() == ["Bearer login-access-1"]


@pytest.mark.parametrize(
    ("refresh_code", "expected", "counts"),
    [
        pytest.param(None, "refresh-access-2", (1, 1), id="refresh-works"),
        pytest.param(
            grpc.StatusCode.UNIMPLEMENTED, "login-access-2", (2, 1), id="refresh-unimplemented"
        ),
        pytest.param(
            grpc.StatusCode.UNAUTHENTICATED, "login-access-2", (2, 1), id="refresh-token-rejected"
        ),
    ],
)
def test_async_token_is_renewed_ahead_of_expiry(
    servers: Servers,
    clock: Clock,
    refresh_code: grpc.StatusCode | None,
    expected: str,
    counts: tuple[int, int],
) -> None:
    servers.auth.expires_in = 100
    servers.auth.refresh_code = refresh_code

    async def body(manager: AsyncTokenManager, _: Any) -> tuple[str, str, str]:
        first = await manager.token()
        clock.now = T0 + 79.0
        kept = await manager.token()
        clock.now = T0 + 80.0
        return first, kept, await manager.token()

    first, kept, renewed = run_async(servers, clock, body)

    assert kept == first == "login-access-1"
    assert renewed == expected
    assert (servers.auth.logins, servers.auth.refreshes) == counts


def test_async_twenty_tasks_asking_at_once_share_one_login(servers: Servers, clock: Clock) -> None:
    async def body(manager: AsyncTokenManager, _: Any) -> list[str]:
        return list(await asyncio.gather(*(manager.token() for _ in range(20))))

    tokens = run_async(servers, clock, body)

    assert set(tokens) == {"login-access-1"}
    assert servers.auth.logins == 1


def test_async_cancelled_waiter_does_not_cancel_the_shared_login(
    servers: Servers, clock: Clock
) -> None:
    async def body(manager: AsyncTokenManager, _: Any) -> str:
        first = asyncio.ensure_future(manager.token())
        second = asyncio.ensure_future(manager.token())
        await asyncio.sleep(0)  # let both join the flight before one is cancelled
        first.cancel()
        return await second

    assert run_async(servers, clock, body) == "login-access-1"
    assert servers.auth.logins == 1


def test_async_unauthenticated_unary_call_is_retried_once_with_a_new_token(
    servers: Servers, clock: Clock
) -> None:
    async def body(manager: AsyncTokenManager, stub: Any) -> str:
        servers.auth.valid.discard(await manager.token())
        return await acall_kind(stub, "unary_unary", timeout=5.0)

    assert run_async(servers, clock, body) == USERNAME
    assert servers.resource.tokens_seen() == [
        "Bearer login-access-1",
        "Bearer refresh-access-2",
    ]


@pytest.mark.parametrize(
    ("code", "attempts"),
    [
        pytest.param(grpc.StatusCode.UNAUTHENTICATED, 2, id="unauthenticated-twice"),
        pytest.param(grpc.StatusCode.PERMISSION_DENIED, 1, id="permission-denied"),
        pytest.param(grpc.StatusCode.UNAVAILABLE, 1, id="unavailable"),
    ],
)
def test_async_unary_call_is_retried_at_most_once_and_only_on_unauthenticated(
    servers: Servers, clock: Clock, code: grpc.StatusCode, attempts: int
) -> None:
    servers.resource.fail_code = code

    async def body(_: AsyncTokenManager, stub: Any) -> grpc.StatusCode:
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await acall_kind(stub, "unary_unary")
        return caught.value.code()

    assert run_async(servers, clock, body) is code
    assert len(servers.resource.seen) == attempts


@pytest.mark.parametrize("kind", KINDS[1:])
def test_async_streaming_calls_are_not_retried(servers: Servers, clock: Clock, kind: str) -> None:
    servers.resource.fail_code = grpc.StatusCode.UNAUTHENTICATED

    async def body(_: AsyncTokenManager, stub: Any) -> grpc.StatusCode:
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await acall_kind(stub, kind, notes=())
        return caught.value.code()

    assert run_async(servers, clock, body) is grpc.StatusCode.UNAUTHENTICATED
    assert len(servers.resource.seen) == 1


def test_async_login_failure_surfaces_the_auth_service_status(
    servers: Servers, clock: Clock
) -> None:
    async def body(manager: AsyncTokenManager, _: Any) -> grpc.aio.AioRpcError:
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await manager.token()
        return caught.value

    error = run_async(servers, clock, body, password="wrong password")

    assert error.code() is grpc.StatusCode.UNAUTHENTICATED
    assert "wrong password" not in str(error) + repr(error)


@pytest.mark.parametrize(
    "override",
    [
        pytest.param({"expires_in": 0}, id="zero-expires-in"),
        pytest.param({"access_token": ""}, id="no-access-token"),
    ],
)
def test_async_unusable_token_response_is_an_error_not_a_loop(
    servers: Servers, clock: Clock, override: dict[str, Any]
) -> None:
    servers.auth.override = override

    async def body(manager: AsyncTokenManager, _: Any) -> None:
        with pytest.raises(TokenRequestError):
            await manager.token()

    run_async(servers, clock, body)
    assert servers.auth.logins == 1


def test_async_invalidate_and_repr(servers: Servers, clock: Clock) -> None:
    async def body(manager: AsyncTokenManager, _: Any) -> tuple[str, str, str]:
        token = await manager.token()
        manager.invalidate("some-older-token")
        assert await manager.token() == token
        manager.invalidate(token)
        return token, await manager.token(), repr(manager)

    token, renewed, text = run_async(servers, clock, body)

    assert renewed == "refresh-access-2"
    assert USERNAME in text
    for secret in (PASSWORD, token, renewed, "refresh-1", "refresh-2"):
        assert secret not in text
