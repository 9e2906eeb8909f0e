"""Plain test helpers, imported by test modules; ``conftest.py`` holds only fixtures.

- time: :class:`Clock` (an injectable clock), :func:`wait_until` (poll a condition);
- concurrency: :func:`run_concurrently` (threads released at once by a barrier),
  :class:`EventLoopThread` (an asyncio loop for sync tests that host grpc.aio servers);
- tokens: :func:`claims` and :func:`mint` (the default access-token claims, signed with
  PyJWT), :func:`bearer` (the metadata that carries a token), :func:`kid_of`;
  :func:`b64url`, :func:`segments` and :func:`replace_segment` (compact JWS by hand);
  :func:`protected_call` (a token against a resource server: its status code);
- fakes: :class:`FakeAuthService` (GetJwks + WatchJwks only) and :func:`serve_fake_auth`;
- real servers: :func:`make_config`, :func:`start_harness` (:class:`AuthHarness`),
  :func:`running_resource` (:class:`ResourceHarness`) and :func:`serving_resource` (any
  config and verifier); :func:`postgres_schema`;
- the command line: :func:`run_cli` (a command's ``main`` with a given standard input).
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import io
import sys
import threading
import time
import uuid
from collections.abc import Callable, Coroutine, Iterable, Iterator, Mapping
from concurrent import futures
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import grpc
import jwt
import pytest
import sqlalchemy as sa

from auth_server.app import RunningAuthServer, start_auth_server
from auth_server.config import AuthServerConfig
from auth_server.kdf import KdfParameters
from auth_server.passwords import Argon2Parameters
from interceptors import CacheSettings, KeyCache, RevocationList, TokenVerifier
from protos import auth_pb2, auth_pb2_grpc, resource_pb2, resource_pb2_grpc
from resource_server import ResourceServerConfig, build_server, open_verifier, start_aio_server

T = TypeVar("T")
R = TypeVar("R")

ISSUER = "http://127.0.0.1:8080"
AUDIENCE = "ssot-test"
PASSPHRASE = b"test-passphrase-0123456789"
# Cheap argon2 so a test suite full of logins stays fast; production uses the defaults.
FAST_ARGON2 = Argon2Parameters(time_cost=1, memory_cost=1024, parallelism=1)
# Likewise for the key-encryption KDF (production: 3 passes over 64 MiB).
FAST_KDF = KdfParameters(time_cost=1, memory_cost=1024, parallelism=1)
PG_ENV = "SSOT_TEST_DATABASE_URL"
#: Both server faces, for ``@pytest.mark.parametrize("aio", FACES)``.
FACES = [pytest.param(False, id="sync"), pytest.param(True, id="aio")]
#: A claim or header member to leave out of a token: ``claims(scope=DROP)``.
DROP: Any = object()

# -- the command line ---------------------------------------------------------------------


def run_cli(main: Callable[[list[str]], int], argv: Iterable[str], stdin: str = "") -> int:
    """Run a command's ``main(argv)`` in this process, reading ``stdin`` as standard input."""
    sys.stdin = io.StringIO(stdin)
    try:
        return main(list(argv))
    finally:
        sys.stdin = sys.__stdin__


# -- time ---------------------------------------------------------------------------------


class Clock:
    """An injectable clock (``now=clock``) that moves only when a test moves it.

    Set ``clock.now`` or call :meth:`advance`; reading is safe from any thread.
    """

    def __init__(self, now: float = 1_700_000_000.0) -> None:
        self._lock = threading.Lock()
        self._now = now

    @property
    def now(self) -> float:
        with self._lock:
            return self._now

    @now.setter
    def now(self, value: float) -> None:
        with self._lock:
            self._now = value

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        with self._lock:
            self._now += seconds


def wait_until(condition: Callable[[], object], timeout: float = 5.0) -> bool:
    """Poll ``condition`` on the real clock until it is true; False if ``timeout`` passes.

    Use as ``assert wait_until(lambda: ...), "what did not happen"``.
    """
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.005)
    return True


# -- concurrency --------------------------------------------------------------------------


def run_concurrently(
    action: Callable[[T], R],
    items: Iterable[T],
    *,
    return_exceptions: bool = False,
    timeout: float = 60.0,
) -> list[Any]:
    """Call ``action(item)`` for every item, each on its own thread, all released at once.

    A barrier lines the threads up so the calls really race. Returns the results in
    the order of ``items``. An exception is re-raised (the first one), or with
    ``return_exceptions`` returned in its place, as :func:`asyncio.gather` does.
    """
    work = list(items)
    barrier = threading.Barrier(len(work))
    results: list[Any] = [None] * len(work)
    failed = threading.Event()

    def run(index: int, item: T) -> None:
        try:
            barrier.wait(timeout)
            results[index] = action(item)
        except BaseException as err:  # handed to the caller below
            results[index] = err
            failed.set()

    threads = [threading.Thread(target=run, args=(i, item)) for i, item in enumerate(work)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout)
    assert not any(thread.is_alive() for thread in threads), "a concurrent call hung"
    if failed.is_set() and not return_exceptions:
        raise next(r for r in results if isinstance(r, BaseException))
    return results


class EventLoopThread:
    """An asyncio loop on a background thread, so sync tests can host grpc.aio servers."""

    def __init__(self, name: str = "test-event-loop") -> None:
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, name=name, daemon=True)
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


# -- tokens -------------------------------------------------------------------------------


def without_dropped(base: Mapping[str, Any], changes: Mapping[str, Any]) -> dict[str, Any]:
    """``base`` updated with ``changes``; a change to :data:`DROP` removes the member."""
    result = dict(base)
    for name, value in changes.items():
        if value is DROP:
            result.pop(name, None)
        else:
            result[name] = value
    return result


def claims(
    *,
    now: float | None = None,
    issuer: str = ISSUER,
    audience: str = AUDIENCE,
    lifetime: float = 300,
    **changes: Any,
) -> dict[str, Any]:
    """The claims of a valid access token (DESIGN.md's list), changed as asked.

    ``now`` defaults to the wall clock (PyJWT-based checks read it); ``lifetime`` sets
    ``exp``. Any claim can be replaced, added, or left out with :data:`DROP`.
    """
    at = int(time.time()) if now is None else now
    base: dict[str, Any] = {
        "iss": issuer,
        "sub": "user-1",
        "aud": audience,
        "exp": at + lifetime,
        "iat": at,
        "nbf": at,
        "jti": uuid.uuid4().hex,
        "sid": "session-1",
        "username": "alice",
        "scope": "resource.read",
    }
    return without_dropped(base, changes)


def mint(
    key: Any,
    *,
    kid: str,
    algorithm: str,
    header: Mapping[str, Any] | None = None,
    **claim_changes: Any,
) -> str:
    """A token signed by PyJWT with ``key``: :func:`claims` (``claim_changes``), header changed.

    The header is ``{alg, kid, typ: "at+jwt"}``; ``header`` replaces or drops members.
    """
    headers = without_dropped({"kid": kid, "typ": "at+jwt"}, header or {})
    headers.setdefault("typ", None)  # PyJWT adds "typ": "JWT" unless told not to
    return jwt.encode(claims(**claim_changes), key, algorithm=algorithm, headers=headers)


def protected_call(channel: grpc.Channel, token: str) -> grpc.StatusCode:
    """Call ``GetProtectedResource`` with ``token``; its status (``OK`` when it passes)."""
    try:
        resource_pb2_grpc.ResourceServiceStub(channel).GetProtectedResource(
            resource_pb2.GetProtectedResourceRequest(), metadata=bearer(token), timeout=10
        )
    except grpc.RpcError as exc:
        assert isinstance(exc, grpc.Call)
        return exc.code()
    return grpc.StatusCode.OK


def kid_of(token: str) -> str:
    """The ``kid`` in a token's header, unverified."""
    return str(jwt.get_unverified_header(token)["kid"])


def b64url(raw: bytes) -> str:
    """Unpadded base64url (RFC 7515 §2), as a compact JWS spells its segments."""
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def segments(token: str) -> list[str]:
    """The dot-separated segments of a compact JWS."""
    return token.split(".")


def replace_segment(token: str, index: int, segment: str) -> str:
    """``token`` with segment ``index`` (0 header, 1 payload, 2 signature) replaced."""
    parts = segments(token)
    parts[index] = segment
    return ".".join(parts)


def bearer(token: str, scheme: str = "Bearer") -> tuple[tuple[str, str]]:
    """The gRPC metadata that carries ``token``."""
    return (("authorization", f"{scheme} {token}"),)


# -- a fake AuthService ------------------------------------------------------------------


def jwk_set_message(
    jwks: Iterable[Mapping[str, Any]], *, max_age_seconds: int = 300, etag: str = ""
) -> auth_pb2.JwkSet:
    """A ``JwkSet`` message holding the members of each JWK that the proto has."""
    fields = auth_pb2.Jwk.DESCRIPTOR.fields_by_name
    keys = [auth_pb2.Jwk(**{k: v for k, v in jwk.items() if k in fields}) for jwk in jwks]
    return auth_pb2.JwkSet(keys=keys, max_age_seconds=max_age_seconds, etag=etag)


class FakeAuthService(auth_pb2_grpc.AuthServiceServicer):
    """An AuthService that serves only GetJwks and WatchJwks, of a set the test publishes."""

    def __init__(self, jwk_set: auth_pb2.JwkSet) -> None:
        self._changed = threading.Condition()
        self._version = 0
        self._set = jwk_set
        self.get_calls = 0

    def publish(self, jwk_set: auth_pb2.JwkSet) -> None:
        """Replace the set; every open WatchJwks stream sends it."""
        with self._changed:
            self._set = jwk_set
            self._version += 1
            self._changed.notify_all()

    def GetJwks(self, request: auth_pb2.GetJwksRequest, context: Any) -> auth_pb2.JwkSet:
        with self._changed:
            self.get_calls += 1
            return self._set

    def WatchJwks(
        self, request: auth_pb2.WatchJwksRequest, context: Any
    ) -> Iterator[auth_pb2.JwkSet]:
        seen = -1
        while context.is_active():
            with self._changed:
                if self._version == seen:
                    self._changed.wait(0.02)
                    continue
                seen, current = self._version, self._set
            yield current


def serve_fake_auth(servicer: FakeAuthService, port: int = 0) -> tuple[grpc.Server, int]:
    """A started grpc.server on 127.0.0.1 (``port`` 0: the OS picks); returns it and its port."""
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
    auth_pb2_grpc.add_AuthServiceServicer_to_server(servicer, server)
    port = server.add_insecure_port(f"127.0.0.1:{port}")
    server.start()
    return server, port


# -- real servers -------------------------------------------------------------------------


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


def make_config(
    tmp_path: Path, database_url: str | None = None, **changes: Any
) -> AuthServerConfig:
    """The auth service's test configuration: loopback port 0, cheap argon2, quick key polls."""
    settings: dict[str, Any] = {
        "grpc_address": "127.0.0.1:0",
        "http_address": "127.0.0.1:0",
        "data_dir": tmp_path,
        "database_url": database_url,
        "issuer": ISSUER,
        "audience": AUDIENCE,
        "key_passphrase": PASSPHRASE,
        "argon2": FAST_ARGON2,
        "key_kdf": FAST_KDF,
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
        changes: dict[str, Any] = {"sid": "s-1", "username": "mallory"}
        changes.update(claims_changes)
        changes.update(dict.fromkeys(drop, DROP))
        return mint(
            key.private_key,
            kid=key.kid,
            algorithm=key.algorithm,
            header=header_changes,
            **changes,
        )

    def stop(self) -> None:
        self.loop_thread.run(self.server.stop(0.5))


def start_harness(
    loop_thread: EventLoopThread,
    config: AuthServerConfig,
    now: Callable[[], float] = time.time,
) -> AuthHarness:
    """Start the auth service on ``loop_thread``; close ``channel``, then call ``stop()``."""
    server = loop_thread.run(start_auth_server(config, now=now))
    channel = grpc.insecure_channel(server.grpc_target)
    return AuthHarness(server=server, loop_thread=loop_thread, channel=channel)


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
        with serving_resource(loop_thread, config, verifier, aio=aio) as port:
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


@contextlib.contextmanager
def serving_resource(
    loop_thread: EventLoopThread,
    config: ResourceServerConfig,
    verifier: TokenVerifier,
    *,
    aio: bool,
    grace: float = 0.5,
) -> Iterator[int]:
    """Serve ``verifier`` as ``config``'s resource server, sync or aio; yield its port.

    The server stops (``grace`` seconds for calls in flight) when the block ends;
    the verifier stays with the caller.
    """
    if aio:
        aserver, port = loop_thread.run(start_aio_server(config, verifier))
        stop: Callable[[], object] = lambda: loop_thread.run(aserver.stop(grace))  # noqa: E731
    else:
        server, port = build_server(config, verifier)
        stop = lambda: server.stop(grace).wait()  # noqa: E731
    try:
        yield port
    finally:
        stop()
