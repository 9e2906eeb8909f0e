"""Every limit on both servers, crossed: metadata, message, concurrent streams, login request
size, and in the verifier token length, JSON depth and lifetime. Each has a flag too."""

from __future__ import annotations

import contextlib
import queue
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import pytest

from auth_server.app import RunningAuthServer, start_auth_server
from auth_server.cli import build_parser as auth_parser
from auth_server.commands.serve import server_config
from helpers import (
    AUDIENCE,
    FACES,
    ISSUER,
    AuthHarness,
    EventLoopThread,
    bearer,
    make_config,
    serving_resource,
    start_harness,
)
from protos import auth_pb2, auth_pb2_grpc, resource_pb2, resource_pb2_grpc
from resource_server import ResourceServerConfig, open_verifier
from resource_server.cli import _config as resource_config
from resource_server.cli import build_parser as resource_parser

PASSWORD = "correct horse battery"
REQUEST = resource_pb2.GetProtectedResourceRequest()
OWN_CONNECTION = [("grpc.use_local_subchannel_pool", 1)]


def _code(call: Callable[[], Any]) -> grpc.StatusCode:
    with pytest.raises(grpc.RpcError) as info:
        call()
    code: grpc.StatusCode = info.value.code()  # type: ignore[attr-defined]
    return code


@pytest.fixture(scope="module")
def auth(
    loop_thread: EventLoopThread, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[AuthHarness]:
    harness = start_harness(loop_thread, make_config(tmp_path_factory.mktemp("auth")))
    harness.add_user("alice", PASSWORD, ("resource.read",))
    yield harness
    harness.channel.close()
    harness.stop()


@dataclass
class Served:
    channel: grpc.Channel
    address: str

    @property
    def stub(self) -> resource_pb2_grpc.ResourceServiceStub:
        return resource_pb2_grpc.ResourceServiceStub(self.channel)


@contextlib.contextmanager
def resource(
    loop_thread: EventLoopThread, auth: AuthHarness, *, aio: bool, **limits: Any
) -> Iterator[Served]:
    """A resource server built from its config the way ``ssot-resource serve`` builds it."""
    config = ResourceServerConfig(
        grpc_address="127.0.0.1:0",
        issuer=ISSUER,
        audience=AUDIENCE,
        jwks_url=auth.jwks_url,
        **limits,
    )
    with (
        open_verifier(config) as verifier,
        serving_resource(loop_thread, config, verifier, aio=aio, grace=0) as port,
    ):
        channel = grpc.insecure_channel(f"127.0.0.1:{port}", options=OWN_CONNECTION)
        try:
            yield Served(channel=channel, address=f"127.0.0.1:{port}")
        finally:
            channel.close()


def _stub(channel: grpc.Channel) -> resource_pb2_grpc.ResourceServiceStub:
    return resource_pb2_grpc.ResourceServiceStub(channel)


# -- transport limits on the resource server ------------------------------------------------


@pytest.mark.parametrize("aio", FACES)
def test_resource_metadata_over_the_limit_is_resource_exhausted(
    loop_thread: EventLoopThread, auth: AuthHarness, aio: bool
) -> None:
    token = auth.login("alice", PASSWORD).access_token
    with resource(loop_thread, auth, aio=aio, max_metadata_size=4096) as served:
        stub = served.stub
        small = (*bearer(token), ("x-pad", "p" * 2000))
        assert stub.GetProtectedResource(REQUEST, metadata=small, timeout=10).user.username
        big = (*bearer(token), ("x-pad", "p" * 5000))
        code = _code(lambda: stub.GetProtectedResource(REQUEST, metadata=big, timeout=10))
        assert code == grpc.StatusCode.RESOURCE_EXHAUSTED


@pytest.mark.parametrize("aio", FACES)
def test_resource_messages_over_the_limit_are_resource_exhausted(
    loop_thread: EventLoopThread, auth: AuthHarness, aio: bool
) -> None:
    token = bearer(auth.login("alice", PASSWORD).access_token)
    with resource(loop_thread, auth, aio=aio, max_message_size=4096) as served:
        stub = served.stub

        def upload(size: int) -> Any:
            notes = iter([resource_pb2.Note(text="n" * size)])
            return stub.UploadNotes(notes, metadata=token, timeout=10)

        assert upload(4000).count == 1
        assert _code(lambda: upload(5000)) == grpc.StatusCode.RESOURCE_EXHAUSTED


class _HeldStream:
    """A bidi EchoNotes call kept open until closed."""

    def __init__(self, stub: resource_pb2_grpc.ResourceServiceStub, token: str) -> None:
        self._notes: queue.Queue[resource_pb2.Note | None] = queue.Queue()
        self._notes.put(resource_pb2.Note(text="hold"))
        self._call = stub.EchoNotes(iter(self._notes.get, None), metadata=bearer(token))
        assert next(self._call).text == "hold"

    def close(self) -> None:
        self._notes.put(None)
        assert list(self._call) == []


@pytest.mark.parametrize("aio", FACES)
def test_resource_streams_over_the_limit_wait_for_a_free_slot(
    loop_thread: EventLoopThread, auth: AuthHarness, aio: bool
) -> None:
    token = auth.login("alice", PASSWORD).access_token
    with resource(loop_thread, auth, aio=aio, max_concurrent_streams=2) as served:
        stub = served.stub
        held = [_HeldStream(stub, token), _HeldStream(stub, token)]
        # A third call on the same connection is not started while two are open...
        public = resource_pb2.GetPublicInfoRequest()
        code = _code(lambda: stub.GetPublicInfo(public, timeout=0.5))
        assert code == grpc.StatusCode.DEADLINE_EXCEEDED
        # ...another connection is not affected, and a freed slot is used at once.
        with grpc.insecure_channel(served.address, options=OWN_CONNECTION) as other:
            assert _stub(other).GetPublicInfo(public, timeout=5).issuer == ISSUER
        held.pop().close()
        assert stub.GetPublicInfo(public, timeout=5).issuer == ISSUER
        held.pop().close()


# -- verifier limits ------------------------------------------------------------------------


def _length_token(auth: AuthHarness, at_least: int) -> str:
    token = auth.forge({})
    return auth.forge({"pad": "p" * max(0, (at_least - len(token)) * 3 // 4 + 4)})


@pytest.mark.parametrize("aio", FACES)
def test_tokens_longer_than_the_limit_are_unauthenticated(
    loop_thread: EventLoopThread, auth: AuthHarness, aio: bool
) -> None:
    fits = _length_token(auth, 1500)
    longer = _length_token(auth, len(fits) + 1)
    assert len(longer) > len(fits)
    with resource(loop_thread, auth, aio=aio, max_token_length=len(fits)) as served:
        stub = served.stub
        assert stub.GetProtectedResource(REQUEST, metadata=bearer(fits), timeout=10).user
        with pytest.raises(grpc.RpcError) as info:
            stub.GetProtectedResource(REQUEST, metadata=bearer(longer), timeout=10)
        assert info.value.code() == grpc.StatusCode.UNAUTHENTICATED  # type: ignore[attr-defined]
        assert info.value.details() == "malformed token"  # type: ignore[attr-defined]


def _nested(depth: int) -> Any:
    value: Any = 1
    for _ in range(depth):
        value = [value]
    return value


@pytest.mark.parametrize("aio", FACES)
def test_claims_nested_deeper_than_the_limit_are_unauthenticated(
    loop_thread: EventLoopThread, auth: AuthHarness, aio: bool
) -> None:
    # The claims object is level 1, so "x" may hold limit - 1 nested lists.
    fits, deeper = auth.forge({"x": _nested(3)}), auth.forge({"x": _nested(4)})
    with resource(loop_thread, auth, aio=aio, max_json_depth=4) as served:
        stub = served.stub
        assert stub.GetProtectedResource(REQUEST, metadata=bearer(fits), timeout=10).user
        code = _code(
            lambda: stub.GetProtectedResource(REQUEST, metadata=bearer(deeper), timeout=10)
        )
        assert code == grpc.StatusCode.UNAUTHENTICATED


@pytest.mark.parametrize("aio", FACES)
def test_tokens_living_longer_than_the_limit_are_unauthenticated(
    loop_thread: EventLoopThread, auth: AuthHarness, aio: bool
) -> None:
    now = int(time.time())
    fits = auth.forge({"iat": now, "exp": now + 600})
    longer = auth.forge({"iat": now, "exp": now + 601})
    with resource(loop_thread, auth, aio=aio, max_token_lifetime=600) as served:
        stub = served.stub
        assert stub.GetProtectedResource(REQUEST, metadata=bearer(fits), timeout=10).user
        code = _code(
            lambda: stub.GetProtectedResource(REQUEST, metadata=bearer(longer), timeout=10)
        )
        assert code == grpc.StatusCode.UNAUTHENTICATED


# -- the auth service ---------------------------------------------------------------------------


@contextlib.contextmanager
def auth_service(
    loop_thread: EventLoopThread, tmp_path: Path, **limits: Any
) -> Iterator[tuple[RunningAuthServer, grpc.Channel]]:
    server = loop_thread.run(start_auth_server(make_config(tmp_path, **limits)))
    server.components.users.add("alice", PASSWORD, ("resource.read",))
    channel = grpc.insecure_channel(server.grpc_target, options=OWN_CONNECTION)
    try:
        yield server, channel
    finally:
        channel.close()
        loop_thread.run(server.stop(0))


def _login_request(size: int) -> auth_pb2.LoginRequest:
    """Alice's credentials, padded with an unknown field to exactly ``size`` bytes."""
    base = auth_pb2.LoginRequest(username="alice", password=PASSWORD).SerializeToString()
    for length in range(size, -1, -1):  # field 15, wire type 2: tag, varint length, bytes
        field = b"\x7a" + _varint(length) + b"u" * length
        if len(base) + len(field) == size:
            return auth_pb2.LoginRequest.FromString(base + field)
    raise AssertionError(f"cannot pad a login request to {size} bytes")


def _varint(value: int) -> bytes:
    out = bytearray()
    while True:
        byte, value = value & 0x7F, value >> 7
        out.append(byte | (0x80 if value else 0))
        if not value:
            return bytes(out)


def test_login_requests_over_the_size_limit_are_invalid_arguments(
    loop_thread: EventLoopThread, tmp_path: Path
) -> None:
    with auth_service(loop_thread, tmp_path, max_login_request_size=1024) as (_, channel):
        stub = auth_pb2_grpc.AuthServiceStub(channel)
        assert _login_request(1024).ByteSize() == 1024
        assert stub.Login(_login_request(1024), timeout=10).access_token
        with pytest.raises(grpc.RpcError) as info:
            stub.Login(_login_request(1025), timeout=10)
        assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT  # type: ignore[attr-defined]
        assert info.value.details() == "login request too large"  # type: ignore[attr-defined]


def test_auth_messages_and_metadata_over_the_limits_are_resource_exhausted(
    loop_thread: EventLoopThread, tmp_path: Path
) -> None:
    limits = {"max_message_size": 2048, "max_login_request_size": 2048, "max_metadata_size": 4096}
    with auth_service(loop_thread, tmp_path, **limits) as (_, channel):
        stub = auth_pb2_grpc.AuthServiceStub(channel)
        assert stub.Login(_login_request(2048), timeout=10).access_token
        code = _code(lambda: stub.Login(_login_request(2049), timeout=10))
        assert code == grpc.StatusCode.RESOURCE_EXHAUSTED
        jwks = auth_pb2.GetJwksRequest()
        assert stub.GetJwks(jwks, metadata=(("x-pad", "p" * 2000),), timeout=10).keys
        code = _code(lambda: stub.GetJwks(jwks, metadata=(("x-pad", "p" * 5000),), timeout=10))
        assert code == grpc.StatusCode.RESOURCE_EXHAUSTED


def test_auth_streams_over_the_limit_wait_for_a_free_slot(
    loop_thread: EventLoopThread, tmp_path: Path
) -> None:
    with auth_service(loop_thread, tmp_path, max_concurrent_streams=2) as (server, channel):
        stub = auth_pb2_grpc.AuthServiceStub(channel)
        watches = [stub.WatchJwks(auth_pb2.WatchJwksRequest()) for _ in range(2)]
        for watch in watches:
            assert next(watch).keys
        code = _code(lambda: stub.GetJwks(auth_pb2.GetJwksRequest(), timeout=0.5))
        assert code == grpc.StatusCode.DEADLINE_EXCEEDED
        with grpc.insecure_channel(server.grpc_target, options=OWN_CONNECTION) as other:
            assert (
                auth_pb2_grpc.AuthServiceStub(other)
                .GetJwks(auth_pb2.GetJwksRequest(), timeout=5)
                .keys
            )
        watches[0].cancel()
        assert stub.GetJwks(auth_pb2.GetJwksRequest(), timeout=5).keys
        watches[1].cancel()


# -- the flags ------------------------------------------------------------------------------------


def test_every_resource_limit_has_a_flag_and_an_environment_variable(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("SSOT_MAX_TOKEN_LIFETIME", "1200")
    ns = resource_parser().parse_args(
        ["serve", "--jwks-url", "https://auth.example/jwks.json", "--issuer", ISSUER,
         "--audience", AUDIENCE, "--max-metadata-size", "1111", "--max-message-size", "2222",
         "--max-concurrent-streams", "33", "--max-token-length", "4444", "--max-json-depth", "5"]
    )  # fmt: skip
    config = resource_config(ns)
    assert (
        config.max_metadata_size,
        config.max_message_size,
        config.max_concurrent_streams,
        config.max_token_length,
        config.max_json_depth,
        config.max_token_lifetime,
    ) == (1111, 2222, 33, 4444, 5, 1200)
    default = resource_config(resource_parser().parse_args(
        ["serve", "--jwks-url", "https://a/j", "--issuer", ISSUER, "--audience", AUDIENCE]
    ))  # fmt: skip
    assert (default.max_metadata_size, default.max_token_length) == (16 * 1024, 8192)


def test_every_auth_limit_has_a_flag_and_an_environment_variable(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("SSOT_MAX_LOGIN_REQUEST_SIZE", "3000")
    monkeypatch.setenv("SSOT_KEY_PASSPHRASE", "a-passphrase-of-enough-length")
    ns = auth_parser().parse_args(
        ["serve", "--data-dir", str(tmp_path), "--issuer", ISSUER, "--audience", AUDIENCE,
         "--max-metadata-size", "1111", "--max-message-size", "22222",
         "--max-concurrent-streams", "33"]
    )  # fmt: skip
    config = server_config(ns, issuer=ISSUER, audience=AUDIENCE)
    assert (
        config.max_metadata_size,
        config.max_message_size,
        config.max_concurrent_streams,
        config.max_login_request_size,
    ) == (1111, 22222, 33, 3000)
