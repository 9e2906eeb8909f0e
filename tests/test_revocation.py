"""The verifier's side of revocation: RevocationList, its stream follower, TokenVerifier's check."""

from __future__ import annotations

import asyncio
import queue
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import rsa

from auth_server.sessions import SessionStore
from auth_server.storage import Database
from helpers import Clock, EventLoopThread, bearer, make_config, running_resource, start_harness
from interceptors import (
    InvalidToken,
    KeyCache,
    RevocationBatch,
    RevocationList,
    RevokedToken,
    StaticSource,
    TokenPolicy,
    TokenVerifier,
)
from protos import resource_pb2

ISSUER = "https://auth.example.test"
AUDIENCE = "ssot-resource"
NOW = 1_700_000_000.0
PRIVATE = rsa.generate_private_key(public_exponent=65537, key_size=2048)
JWK = {
    **jwt.get_algorithm_by_name("RS256").to_jwk(PRIVATE.public_key(), as_dict=True),
    "kid": "k1",
    "alg": "RS256",
    "use": "sig",
}


def token(sid: str | None, jti: str = "j1") -> str:
    claims: dict[str, Any] = {
        "iss": ISSUER,
        "sub": "user-1",
        "aud": AUDIENCE,
        "iat": int(NOW),
        "exp": int(NOW) + 900,
        "jti": jti,
    }
    if sid is not None:
        claims["sid"] = sid
    return jwt.encode(claims, PRIVATE, algorithm="RS256", headers={"kid": "k1", "typ": "at+jwt"})


@pytest.fixture
def verifier_and_list() -> Iterator[tuple[TokenVerifier, RevocationList]]:
    clock = Clock(NOW)
    revocations = RevocationList(now=clock)
    with KeyCache(StaticSource({"keys": [JWK]}), now=clock, background=False) as keys:
        yield (
            TokenVerifier(
                keys,
                TokenPolicy(issuer=ISSUER, audience=AUDIENCE),
                now=clock,
                revocations=revocations,
            ),
            revocations,
        )


@pytest.mark.parametrize("use_async", [False, True], ids=["verify", "averify"])
def test_a_revoked_session_is_refused_even_when_its_token_is_cached(
    verifier_and_list: tuple[TokenVerifier, RevocationList], use_async: bool
) -> None:
    verifier, revocations = verifier_and_list

    def check(value: str) -> str | None:
        if use_async:
            return asyncio.run(verifier.averify(value)).session_id
        return verifier.verify(value).session_id

    cached = token("s1")
    assert check(cached) == "s1"
    assert check(cached) == "s1"  # verified twice: now in the verified-token cache
    assert verifier.cache_lookups[0] == 0
    assert check(cached) == "s1"
    assert verifier.cache_lookups[0] == 1  # served from the cache

    revocations.revoke("s1", NOW + 900)

    with pytest.raises(RevokedToken) as raised:
        check(cached)
    assert isinstance(raised.value, InvalidToken)
    assert raised.value.code == grpc.StatusCode.UNAUTHENTICATED
    assert raised.value.message == "token revoked"
    with pytest.raises(RevokedToken):
        check(token("s1", jti="never-seen"))
    # Honest tokens of other sessions, and tokens without a session, still pass.
    assert check(token("s2")) == "s2"
    assert check(token(None)) is None


def test_a_full_list_replaces_a_delta_adds_and_expired_entries_go() -> None:
    clock = Clock(NOW)
    revocations = RevocationList(keep_after_expiry=60, now=clock)
    revocations.apply(RevocationBatch(full=True, sessions={"a": NOW + 100, "b": NOW + 100}))
    revocations.apply(RevocationBatch(full=False, sessions={"c": NOW + 500}))
    assert [s for s in "abcd" if revocations.is_revoked(s)] == ["a", "b", "c"]

    revocations.apply(RevocationBatch(full=True, sessions={"b": NOW + 100, "d": NOW + 100}))
    assert [s for s in "abcd" if revocations.is_revoked(s)] == ["b", "d"]

    clock.now = NOW + 161  # past exp + keep_after_expiry
    revocations.revoke("e", NOW + 1000)
    assert [s for s in "bde" if revocations.is_revoked(s)] == ["e"]
    assert len(revocations) == 1 and revocations.stats.revoked == 1


class ScriptedStream:
    """A revocation stream that yields given batches, then breaks or blocks until cancelled."""

    def __init__(self, batches: list[RevocationBatch], *, block: bool = False) -> None:
        self._batches = batches
        self._block = block
        self.cancelled = threading.Event()

    def __iter__(self) -> Iterator[RevocationBatch]:
        yield from self._batches
        if self._block:
            self.cancelled.wait(30)
            return
        raise ConnectionError("stream broke")

    def cancel(self) -> None:
        self.cancelled.set()


class ScriptedSource:
    def __init__(self, *streams: ScriptedStream | Exception) -> None:
        self._streams: queue.Queue[ScriptedStream | Exception] = queue.Queue()
        for stream in streams:
            self._streams.put(stream)
        self.opened: list[float] = []

    def watch_revocations(self) -> ScriptedStream:
        self.opened.append(time.monotonic())
        try:
            item = self._streams.get_nowait()
        except queue.Empty:
            item = ConnectionRefusedError("no more streams")
        if isinstance(item, Exception):
            raise item
        return item


def test_the_follower_reconnects_and_takes_the_full_list_after_a_reconnect() -> None:
    last = ScriptedStream([RevocationBatch(full=True, sessions={"b": NOW + 100})], block=True)
    source = ScriptedSource(
        ScriptedStream(
            [
                RevocationBatch(full=True, sessions={"a": NOW + 100}),
                RevocationBatch(full=False, sessions={"x": NOW + 100}),
            ]
        ),
        ConnectionRefusedError("auth service down"),
        last,
    )
    revocations = RevocationList(source, reconnect_initial=0.01, now=Clock(NOW))
    with revocations:
        deadline = time.monotonic() + 10
        while not revocations.is_revoked("b") and time.monotonic() < deadline:
            time.sleep(0.01)

        assert revocations.is_revoked("b")
        assert not revocations.is_revoked("a") and not revocations.is_revoked("x")
        assert revocations.stats.reconnects == 2 and revocations.stats.synced
    assert last.cancelled.is_set()  # close() ended the open stream


def test_reconnect_delays_double_up_to_the_cap() -> None:
    source = ScriptedSource()  # every attempt fails
    revocations = RevocationList(source, reconnect_initial=0.05, reconnect_max=0.2, now=Clock(NOW))
    with revocations:
        deadline = time.monotonic() + 10
        while len(source.opened) < 6 and time.monotonic() < deadline:
            time.sleep(0.01)
    gaps = [b - a for a, b in zip(source.opened, source.opened[1:], strict=False)][:5]
    expected = [0.05, 0.1, 0.2, 0.2, 0.2]
    assert len(gaps) == 5
    for gap, want in zip(gaps, expected, strict=True):
        assert want * 0.9 <= gap < want + 0.15, (gaps, expected)


@pytest.mark.slow
def test_close_returns_promptly_while_the_stream_is_quiet() -> None:
    stream = ScriptedStream([RevocationBatch(full=True, sessions={})], block=True)
    revocations = RevocationList(ScriptedSource(stream), now=Clock(NOW))
    revocations.start()
    assert revocations.wait_until_synced(5)

    started = time.monotonic()
    revocations.close()

    assert time.monotonic() - started < 1.0 and stream.cancelled.is_set()


def test_a_resource_server_resyncs_after_the_auth_service_restarts(
    loop_thread: EventLoopThread, tmp_path: Path
) -> None:
    first = start_harness(loop_thread, make_config(tmp_path))
    first.add_user("alice", "correct horse battery", ("resource.read",))
    login = first.login("alice", "correct horse battery")
    address = first.target
    with running_resource(loop_thread, first, aio=False, push=True) as resource:
        assert resource.revocations is not None
        first.channel.close()
        first.stop()
        # Revoked while no auth service runs (as `ssot-auth sessions revoke` would).
        sid = jwt.decode(login.access_token, options={"verify_signature": False})["sid"]
        database = Database(first.server.config.resolved_database_url)
        try:
            assert SessionStore(database).revoke(sid)
        finally:
            database.dispose()

        second = start_harness(loop_thread, make_config(tmp_path, grpc_address=address))
        try:
            deadline = time.monotonic() + 10
            while time.monotonic() < deadline and not resource.revocations.is_revoked(sid):
                time.sleep(0.02)
            with pytest.raises(grpc.RpcError) as refused:
                resource.stub.GetProtectedResource(
                    resource_pb2.GetProtectedResourceRequest(),
                    metadata=bearer(login.access_token),
                    timeout=10,
                )
            assert refused.value.details() == "token revoked"  # type: ignore[attr-defined]
            assert resource.revocations.stats.reconnects >= 1
        finally:
            second.channel.close()
            second.stop()
