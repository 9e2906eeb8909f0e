"""Shared fixtures: databases, a running auth service, resource servers (sync and aio), tokens."""

from __future__ import annotations

import asyncio
import contextlib
import os
import threading
import time
import uuid
from collections.abc import Callable, Coroutine, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import grpc
import jwt
import pytest
import sqlalchemy as sa

from auth_server.app import RunningAuthServer, start_auth_server
from auth_server.config import AuthServerConfig
from auth_server.passwords import Argon2Parameters
from auth_server.storage import Database
from interceptors import CacheSettings, KeyCache, RevocationList
from protos import auth_pb2, auth_pb2_grpc, resource_pb2_grpc
from resource_server import ResourceServerConfig, build_server, open_verifier, start_aio_server

T = TypeVar("T")

ISSUER = "http://127.0.0.1:8080"
AUDIENCE = "ssot-test"
PASSPHRASE = b"test-passphrase-0123456789"
# Cheap argon2 so a test suite full of logins stays fast; production uses the defaults.
FAST_ARGON2 = Argon2Parameters(time_cost=1, memory_cost=1024, parallelism=1)
PG_ENV = "SSOT_TEST_DATABASE_URL"


class EventLoopThread:
    """An asyncio loop on a background thread, so sync tests can host grpc.aio servers."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self._thread.start()

    def run(self, coro: Coroutine[Any, Any, T], timeout: float = 60) -> T:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def close(self) -> None:
        async def _cancel_rest() -> None:
            tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
            for t in tasks:
                t.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

        self.run(_cancel_rest())
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(10)
        self.loop.close()


@pytest.fixture(scope="session")
def loop_thread() -> Iterator[EventLoopThread]:
    lt = EventLoopThread()
    yield lt
    lt.close()


def _postgres_url() -> str | None:
    return os.environ.get(PG_ENV) or None


@contextlib.contextmanager
def postgres_schema(base_url: str) -> Iterator[str]:
    """A fresh schema on the test PostgreSQL server; yields a URL whose search_path is it."""
    name = "t_" + uuid.uuid4().hex[:16]
    admin = sa.create_engine(base_url)
    try:
        with admin.begin() as conn:
            conn.execute(sa.text(f'CREATE SCHEMA "{name}"'))
        sep = "&" if "?" in base_url else "?"
        yield f"{base_url}{sep}options=-csearch_path%3D{name}"
    finally:
        with admin.begin() as conn:
            conn.execute(sa.text(f'DROP SCHEMA IF EXISTS "{name}" CASCADE'))
        admin.dispose()


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """A database URL per backend: SQLite in tmp_path, and PostgreSQL when configured."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'ssot-auth.db'}"
        return
    base = _postgres_url()
    if base is None:
        pytest.skip(
            f"PostgreSQL tests need {PG_ENV} (e.g. postgresql+psycopg://postgres@127.0.0.1/test)"
        )
    with postgres_schema(base) as url:
        yield url


@pytest.fixture
def database(database_url: str) -> Iterator[Database]:
    """A fresh, empty database with the schema created, on each backend."""
    db = Database(database_url)
    db.create_schema()
    yield db
    db.dispose()


def make_config(
    tmp_path: Path, database_url: str | None = None, **changes: Any
) -> AuthServerConfig:
    settings: dict[str, Any] = {
        "grpc_address": "127.0.0.1:0",
        "http_address": "127.0.0.1:0",
        "data_dir": tmp_path,
        "database_url": database_url,
        "issuer": ISSUER,
        "audience": AUDIENCE,
        "key_passphrase": PASSPHRASE,
        "argon2": FAST_ARGON2,
        "key_poll_interval": 0.2,
    }
    settings.update(changes)
    return AuthServerConfig(**settings)


@dataclass
class AuthHarness:
    """A running auth service plus the handles tests need."""

    server: RunningAuthServer
    loop_thread: EventLoopThread
    channel: grpc.Channel

    @property
    def stub(self) -> auth_pb2_grpc.AuthServiceStub:
        return auth_pb2_grpc.AuthServiceStub(self.channel)

    @property
    def target(self) -> str:
        return self.server.grpc_target

    @property
    def jwks_url(self) -> str:
        return f"{self.server.http_base_url}/.well-known/jwks.json"

    def add_user(self, name: str, password: str, scopes: tuple[str, ...] = ()) -> str:
        return self.server.components.users.add(name, password, scopes).id

    def login(self, name: str, password: str, scope: str = "") -> auth_pb2.TokenResponse:
        return self.stub.Login(
            auth_pb2.LoginRequest(username=name, password=password, scope=scope), timeout=10
        )

    def refresh(self, refresh_token: str) -> auth_pb2.TokenResponse:
        return self.stub.Refresh(auth_pb2.RefreshRequest(refresh_token=refresh_token), timeout=10)

    def logout(self, refresh_token: str) -> None:
        self.stub.Logout(auth_pb2.LogoutRequest(refresh_token=refresh_token), timeout=10)

    def signing_key(self) -> Any:
        """The current private key: only for crafting edge-case tokens in tests."""
        return self.server.components.keys.current()

    def forge(
        self,
        claims_changes: dict[str, Any],
        header_changes: dict[str, Any] | None = None,
        *,
        drop: tuple[str, ...] = (),
    ) -> str:
        """A token signed with the real current key, with claims/header changed."""
        key = self.signing_key()
        now = int(time.time())
        claims: dict[str, Any] = {
            "iss": ISSUER,
            "sub": "user-1",
            "aud": AUDIENCE,
            "exp": now + 300,
            "iat": now,
            "nbf": now,
            "jti": uuid.uuid4().hex,
            "sid": "s-1",
            "username": "mallory",
            "scope": "resource.read",
        }
        claims.update(claims_changes)
        for name in drop:
            claims.pop(name, None)
        headers: dict[str, Any] = {"kid": key.kid, "typ": "at+jwt"}
        headers.update(header_changes or {})
        return jwt.encode(claims, key.private_key, algorithm=key.algorithm, headers=headers)

    def stop(self) -> None:
        self.loop_thread.run(self.server.stop(0.5))


def start_harness(
    loop_thread: EventLoopThread,
    config: AuthServerConfig,
    now: Callable[[], float] = time.time,
) -> AuthHarness:
    server = loop_thread.run(start_auth_server(config, now=now))
    channel = grpc.insecure_channel(server.grpc_target)
    return AuthHarness(server=server, loop_thread=loop_thread, channel=channel)


@pytest.fixture
def auth(loop_thread: EventLoopThread, tmp_path: Path) -> Iterator[AuthHarness]:
    """A running auth service on SQLite, ports chosen by the OS."""
    harness = start_harness(loop_thread, make_config(tmp_path))
    yield harness
    harness.channel.close()
    harness.stop()


@pytest.fixture
def auth_any_db(
    loop_thread: EventLoopThread, tmp_path: Path, database_url: str
) -> Iterator[AuthHarness]:
    """The auth service on each database backend."""
    harness = start_harness(loop_thread, make_config(tmp_path, database_url))
    yield harness
    harness.channel.close()
    harness.stop()


@dataclass
class ResourceHarness:
    """A running resource server (sync or aio) and its key cache."""

    target: str
    keys: KeyCache
    aio: bool
    channel: grpc.Channel
    revocations: RevocationList | None = None

    @property
    def stub(self) -> resource_pb2_grpc.ResourceServiceStub:
        return resource_pb2_grpc.ResourceServiceStub(self.channel)


@contextlib.contextmanager
def running_resource(
    loop_thread: EventLoopThread, auth: AuthHarness, *, aio: bool, push: bool = False, **cache: Any
) -> Iterator[ResourceHarness]:
    """A resource server verifying ``auth``'s tokens, over HTTP JWKS (or gRPC push).

    With ``push`` it also follows the auth service's revoked sessions, as
    ``ssot-resource serve --auth-target`` does, and waits for the first full list.
    """
    config = ResourceServerConfig(
        grpc_address="127.0.0.1:0",
        issuer=ISSUER,
        audience=AUDIENCE,
        jwks_url=None if push else auth.jwks_url,
        auth_target=auth.target if push else None,
        key_cache=CacheSettings(**cache),
    )
    with open_verifier(config) as verifier:
        keys, revocations = verifier.keys, verifier.revocations
        assert isinstance(keys, KeyCache)
        assert revocations is None or isinstance(revocations, RevocationList)
        if push:
            assert revocations is not None and revocations.wait_until_synced(10)
        if aio:
            aserver, port = loop_thread.run(start_aio_server(config, verifier))
            stop: Callable[[], object] = lambda: loop_thread.run(aserver.stop(0.5))  # noqa: E731
        else:
            server, port = build_server(config, verifier)
            stop = lambda: server.stop(0.5).wait()  # noqa: E731
        channel = grpc.insecure_channel(f"127.0.0.1:{port}")
        try:
            yield ResourceHarness(
                target=f"127.0.0.1:{port}",
                keys=keys,
                aio=aio,
                channel=channel,
                revocations=revocations,
            )
        finally:
            channel.close()
            stop()


@pytest.fixture(params=[pytest.param(False, id="sync"), pytest.param(True, id="aio")])
def resource(
    request: pytest.FixtureRequest, loop_thread: EventLoopThread, auth: AuthHarness
) -> Iterator[ResourceHarness]:
    """The resource server, once as a sync grpc.server and once as a grpc.aio server."""
    with running_resource(loop_thread, auth, aio=request.param) as harness:
        yield harness


def bearer(token: str) -> tuple[tuple[str, str]]:
    return (("authorization", f"Bearer {token}"),)
