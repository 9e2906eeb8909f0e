"""Revocation at scale, end to end on loopback: big lists, watermarks, chunked full syncs.

The big lists are inserted straight into the sessions table (the API path would
take hours of argon2), as the issue measured them.
"""

from __future__ import annotations

import contextlib
import functools
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest

from auth_server.cli import main as auth_cli
from auth_server.storage import Database, sessions
from helpers import (
    AUDIENCE,
    ISSUER,
    AuthHarness,
    EventLoopThread,
    FakeAuthService,
    bearer,
    running_resource,
    serve_fake_auth,
    serving_resource,
    wait_until,
)
from interceptors import (
    AuthServiceSource,
    KeyCache,
    RevocationBatch,
    RevocationList,
    RevocationsUnavailable,
    RevokedToken,
    TokenPolicy,
    TokenVerifier,
)
from protos import auth_pb2, resource_pb2, resource_pb2_grpc
from resource_server import ResourceServerConfig, open_verifier

PASSWORD = "correct horse battery"


def _insert_revoked(db: Database, user_id: str, count: int) -> list[str]:
    now = time.time()
    ids = [str(uuid.uuid4()) for _ in range(count)]
    for start in range(0, count, 20_000):
        rows = [
            {
                "id": sid,
                "user_id": user_id,
                "created_at": now - 60,
                "expires_at": now + 86400,
                "revoked_at": now,
                "last_used_at": now - 60,
                "access_expires_at": now + 780,
                "revoke_reason": "logout",
            }
            for sid in ids[start : start + 20_000]
        ]
        with db.transaction(write=True) as conn:
            conn.execute(sessions.insert(), rows)
    return ids


@contextlib.contextmanager
def push_verifier(auth: AuthHarness, **options: Any) -> Iterator[TokenVerifier]:
    source = AuthServiceSource(auth.target)
    with KeyCache(source) as keys, RevocationList(source, **options) as revocations:
        yield TokenVerifier(
            keys,
            TokenPolicy(issuer=auth.server.config.issuer, audience=auth.server.config.audience),
            revocations=revocations,
        )
    source.close()


def _revocations(verifier: TokenVerifier) -> RevocationList:
    assert isinstance(verifier.revocations, RevocationList)
    return verifier.revocations


@pytest.mark.slow
def test_a_fresh_push_verifier_syncs_100000_revoked_sessions_and_refuses_the_revoked_token(
    auth_any_db: AuthHarness,
) -> None:
    auth = auth_any_db
    user_id = auth.add_user("alice", PASSWORD)
    revoked = auth.login("alice", PASSWORD)
    auth.logout(revoked.refresh_token)
    live = auth.login("alice", PASSWORD)
    _insert_revoked(auth.server.components.database, user_id, 100_000)
    publisher = auth.server.revocations
    assert publisher is not None
    assert wait_until(lambda: len(publisher.state.sessions) >= 100_001, 60)

    with push_verifier(auth) as verifier:
        assert _revocations(verifier).wait_until_synced(60)
        assert _revocations(verifier).stats.revoked == 100_001
        with pytest.raises(RevokedToken):
            verifier.verify(revoked.access_token)
        assert verifier.verify(live.access_token).subject == user_id


def _call(resource: Any, token: str) -> grpc.StatusCode | None:
    try:
        resource.stub.GetProtectedResource(
            resource_pb2.GetProtectedResourceRequest(), metadata=bearer(token), timeout=5
        )
    except grpc.RpcError as exc:
        return exc.code()  # type: ignore[no-any-return]
    return None


def _stream_messages(auth: AuthHarness) -> tuple[Any, list[auth_pb2.RevocationUpdate]]:
    call = auth.stub.WatchRevocations(auth_pb2.WatchRevocationsRequest(watermarks=True))
    received: list[auth_pb2.RevocationUpdate] = []
    first = next(call)
    assert first.full and not first.full_list_continues
    return call, received


@pytest.mark.slow
def test_revoking_a_users_50_sessions_is_one_entry_refused_everywhere_within_a_second(
    auth_fresh: AuthHarness,
    loop_thread: EventLoopThread,
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
) -> None:
    auth = auth_fresh
    auth.add_user("alice", PASSWORD, ("resource.read",))
    auth.add_user("bob", PASSWORD, ("resource.read",))
    alice = [auth.login("alice", PASSWORD).access_token for _ in range(50)]
    bob = auth.login("bob", PASSWORD).access_token
    call, _ = _stream_messages(auth)
    with (
        running_resource(loop_thread, auth, aio=False, push=True) as sync,
        running_resource(loop_thread, auth, aio=True, push=True) as aio,
    ):
        for resource in (sync, aio):
            assert _call(resource, alice[0]) is None  # cached from here on

        monkeypatch.setenv("SSOT_DATA_DIR", str(auth.server.config.data_dir))
        assert auth_cli(["sessions", "revoke", "--user", "alice"]) == 0
        revoked_at = time.monotonic()

        for resource in (sync, aio):
            assert wait_until(lambda r=resource: _call(r, alice[-1]) is not None, 1.0)
            assert time.monotonic() - revoked_at < 1.0
            assert all(_call(resource, t) == grpc.StatusCode.UNAUTHENTICATED for t in alice)
            assert _call(resource, bob) is None
    update = next(call)
    call.cancel()
    assert (update.full, len(update.sessions), len(update.watermarks)) == (False, 0, 1)
    assert update.watermarks[0].subject == auth.server.components.users.get("alice").id  # type: ignore[union-attr]


@pytest.mark.slow
def test_revoke_all_refuses_every_token_issued_before_and_none_after(
    auth_fresh: AuthHarness, monkeypatch: pytest.MonkeyPatch
) -> None:
    auth = auth_fresh
    auth.add_user("alice", PASSWORD)
    auth.add_user("bob", PASSWORD)
    before = [auth.login(name, PASSWORD) for name in ("alice", "bob")]
    # T on a whole second, with every earlier token issued in an earlier one.
    time.sleep(1.05 - time.time() % 1)
    cutoff = int(time.time())
    after = auth.login("bob", PASSWORD)
    with push_verifier(auth) as verifier:
        assert _revocations(verifier).wait_until_synced(10)
        monkeypatch.setenv("SSOT_DATA_DIR", str(auth.server.config.data_dir))
        assert auth_cli(["sessions", "revoke", "--all", "--before", str(cutoff)]) == 0
        assert wait_until(lambda: _revocations(verifier).stats.watermarks == 1, 1.0)
        for login in before:
            with pytest.raises(RevokedToken):
                verifier.verify(login.access_token)
        assert verifier.verify(after.access_token).subject
        # Sessions started before T are over; the later one refreshes.
        assert auth.refresh(after.refresh_token).access_token
        with pytest.raises(grpc.RpcError):
            auth.refresh(before[0].refresh_token)


class BreakingSource:
    """A real source whose first stream breaks after ``messages`` messages."""

    def __init__(self, source: AuthServiceSource, messages: int) -> None:
        self.source = source
        self.messages = messages
        self.opened = 0

    def watch_revocations(self) -> Any:
        self.opened += 1
        stream = self.source.watch_revocations()
        if self.opened > 1:
            return stream
        return _Breaking(stream, self.messages)


class _Breaking:
    def __init__(self, stream: Any, messages: int) -> None:
        self.stream = stream
        self.messages = messages

    def __iter__(self) -> Iterator[RevocationBatch]:
        for index, batch in enumerate(self.stream):
            if index == self.messages:
                raise ConnectionError("broken mid-sync")
            yield batch

    def cancel(self) -> None:
        self.stream.cancel()


@pytest.mark.slow
def test_a_verifier_reconnecting_mid_way_through_a_full_sync_ends_with_the_servers_list(
    auth_fresh: AuthHarness,
) -> None:
    auth = auth_fresh
    user_id = auth.add_user("alice", PASSWORD)
    ids = _insert_revoked(auth.server.components.database, user_id, 40_000)
    publisher = auth.server.revocations
    assert publisher is not None
    assert wait_until(lambda: len(publisher.state.sessions) == 40_000, 30)
    source = AuthServiceSource(auth.target)
    breaking = BreakingSource(source, messages=1)
    with RevocationList(breaking, reconnect_initial=0.05, reconnect_max=0.05) as revocations:
        assert revocations.wait_until_synced(30)
        assert breaking.opened == 2
        assert revocations.stats.revoked == len(publisher.state.sessions) == 40_000
        assert all(revocations.is_revoked(sid) for sid in ids)
    source.close()


def test_a_half_received_full_list_is_never_taken_as_complete() -> None:
    revocations = RevocationList(now=lambda: 1_000.0)
    revocations.apply(RevocationBatch(full=True, sessions={"old": 5_000.0}))
    revocations.apply(RevocationBatch(full=True, sessions={"a": 5_000.0}, continues=True))
    revocations.apply(RevocationBatch(full=False, sessions={"b": 5_000.0}, continues=True))
    # Still the previous list: the new one is not complete.
    assert revocations.is_revoked("old") and not revocations.is_revoked("a")
    revocations.apply(RevocationBatch(full=False, sessions={"c": 5_000.0}))
    assert not revocations.is_revoked("old")
    assert all(revocations.is_revoked(s) for s in "abc")


def test_fail_closed_refuses_until_synced_and_after_the_bound() -> None:
    clock = [0.0]
    revocations = RevocationList(fail_closed_after=5.0, monotonic=lambda: clock[0])
    with pytest.raises(RevocationsUnavailable):
        revocations.refuses(session_id="s", subject="u", issued_at=1)
    revocations.apply(RevocationBatch(full=True, sessions={}))
    assert not revocations.refuses(session_id="s", subject="u", issued_at=1)
    revocations._out_of_sync()  # the stream broke
    clock[0] = 4.0
    assert not revocations.refuses(session_id="s", subject="u", issued_at=1)
    clock[0] = 6.0
    with pytest.raises(RevocationsUnavailable):
        revocations.refuses(session_id="s", subject="u", issued_at=1)
    # Fail open (the default) never raises.
    assert not RevocationList().refuses(session_id="s", subject="u", issued_at=1)


@pytest.mark.parametrize("aio", [False, True])
@pytest.mark.parametrize("fail_closed", [None, 60.0], ids=["fail-open", "fail-closed"])
def test_a_resource_server_told_to_fail_closed_refuses_while_revocations_never_synced(
    auth: AuthHarness, loop_thread: EventLoopThread, aio: bool, fail_closed: float | None
) -> None:
    # The real keys, from an auth service that serves no WatchRevocations (UNIMPLEMENTED).
    keys_only = FakeAuthService(auth.stub.GetJwks(auth_pb2.GetJwksRequest(), timeout=5))
    fake, fake_port = serve_fake_auth(keys_only)
    config = ResourceServerConfig(
        grpc_address="127.0.0.1:0",
        issuer=ISSUER,
        audience=AUDIENCE,
        auth_target=f"127.0.0.1:{fake_port}",
        revocations_fail_closed=fail_closed,
    )
    try:
        with open_verifier(config) as verifier:
            assert isinstance(verifier.keys, KeyCache) and verifier.keys.wait_until_loaded(5)
            with (
                serving_resource(loop_thread, config, verifier, aio=aio) as port,
                grpc.insecure_channel(f"127.0.0.1:{port}") as channel,
            ):
                stub = resource_pb2_grpc.ResourceServiceStub(channel)
                call = functools.partial(
                    stub.GetProtectedResource,
                    resource_pb2.GetProtectedResourceRequest(),
                    metadata=bearer(auth.forge({})),
                    timeout=5,
                )
                if fail_closed is None:
                    assert call().user.username == "mallory"
                else:
                    with pytest.raises(grpc.RpcError) as refused:
                        call()
                    assert refused.value.code() == grpc.StatusCode.UNAVAILABLE
                    assert refused.value.details() == "revocation list unavailable"
    finally:
        fake.stop(0.5).wait()
