"""Rotation as a non-event: scheduled rotations and an emergency revocation under live traffic.

One auth server runs on an injected clock that the test moves forward in steps;
two resource servers verify its tokens on the same clock, one subscribed by push
(``WatchJwks``, as ``--auth-target``) and one reading the HTTP JWKS. Client threads
keep logging in and calling both the whole time, each holding its token until
shortly before it expires, so tokens of the previous key keep arriving after
every rotation.
"""

from __future__ import annotations

import json
import math
import threading
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import grpc
import jwt
import pytest

from auth_server.app import RunningAuthServer, start_auth_server
from auth_server.keys import SigningKeyStore
from helpers import (
    AUDIENCE,
    ISSUER,
    PASSPHRASE,
    Clock,
    EventLoopThread,
    kid_of,
    make_config,
    protected_call,
)
from interceptors import (
    AuthServiceSource,
    CacheSettings,
    HttpJwksSource,
    KeyCache,
    TokenPolicy,
    TokenVerifier,
)
from protos import auth_pb2, auth_pb2_grpc
from resource_server import ResourceServerConfig, build_server

T0 = 1_800_000_000.0
MAX_AGE = 60
ACTIVATE_AFTER = 180  # > 2 x MAX_AGE: a revocation late in the window promotes a known key
TTL = 300
INTERVAL = 600
STEP = 10.0
PASSWORD = "rotation password"
OK = grpc.StatusCode.OK


@dataclass
class Call:
    verifier: str  # "push" or "http"
    kid: str
    code: grpc.StatusCode
    after_revocation: bool


@dataclass
class Traffic:
    """What the client threads did."""

    calls: list[Call] = field(default_factory=list)
    counts: dict[int, int] = field(default_factory=dict)
    revoked_kid: str | None = None
    revoking: bool = False
    errors: list[BaseException] = field(default_factory=list)
    lock: threading.Condition = field(default_factory=threading.Condition)

    def record(self, client: int, call: Call) -> None:
        with self.lock:
            self.calls.append(call)
            self.counts[client] = self.counts.get(client, 0) + 1
            self.lock.notify_all()

    def wait_for_calls(self, clients: int, each: int, timeout: float = 20.0) -> None:
        """Block until every client made ``each`` more calls (not a sleep: a condition)."""
        with self.lock:
            start = {c: self.counts.get(c, 0) for c in range(clients)}
            done = self.lock.wait_for(
                lambda: (
                    all(self.counts.get(c, 0) >= start[c] + each for c in range(clients))
                    or bool(self.errors)
                ),
                timeout,
            )
        assert done, "clients stopped calling"
        assert not self.errors, self.errors

    def unexpected_failures(self) -> list[Call]:
        # A token of the revoked key is the one thing allowed to fail, and only after.
        return [
            c
            for c in self.calls
            if c.code is not OK and not (c.after_revocation and c.kid == self.revoked_kid)
        ]


@dataclass
class Rig:
    clock: Clock
    server: RunningAuthServer
    loop_thread: EventLoopThread
    auth_channel: grpc.Channel
    push_target: str
    http_target: str
    push_keys: KeyCache
    http_keys: KeyCache
    database_url: str

    @property
    def store(self) -> SigningKeyStore:
        return self.server.components.keys

    def login(self) -> str:
        stub = auth_pb2_grpc.AuthServiceStub(self.auth_channel)
        reply = stub.Login(auth_pb2.LoginRequest(username="alice", password=PASSWORD), timeout=10)
        return reply.access_token

    def settle(self) -> None:
        """Let the server act on the clock now: one scheduler pass, then publish."""
        self.loop_thread.run(self.server.scheduler.run_once())
        self.loop_thread.run(self.server.publisher.refresh())

    def currentkid_of(self) -> str:
        return self.store.current().kid


def _call(target: str, token: str) -> grpc.StatusCode:
    with grpc.insecure_channel(target) as channel:
        return protected_call(channel, token)


def _exp(token: str) -> float:
    return float(jwt.decode(token, options={"verify_signature": False})["exp"])


@pytest.fixture
def rig(loop_thread: EventLoopThread, tmp_path: Path) -> Iterator[Rig]:
    clock = Clock(T0)
    database_url = f"sqlite:///{tmp_path / 'ssot-auth.db'}"
    config = make_config(
        tmp_path,
        database_url,
        jwks_max_age=MAX_AGE,
        access_token_ttl=TTL,
        key_activate_after=ACTIVATE_AFTER,
        key_rotation_interval=INTERVAL,
        # Real seconds: the test drives the scheduler itself; these are the background.
        key_check_interval=0.05,
        key_poll_interval=0.25,
    )
    server = loop_thread.run(start_auth_server(config, now=clock))
    server.components.users.add("alice", PASSWORD, ("resource.read",))
    policy = TokenPolicy(issuer=ISSUER, audience=AUDIENCE)
    rconfig = ResourceServerConfig(
        grpc_address="127.0.0.1:0", issuer=ISSUER, audience=AUDIENCE, auth_target="unused"
    )
    # Neither verifier refetches on an unknown kid (cooldown=inf): like Envoy, they
    # learn keys only by push or at their max-age refresh, so the key schedule alone
    # must keep them current (our verifiers would otherwise paper over a missing
    # pre-publication with a refetch).
    # The caches' background threads wait in real seconds, which mean nothing on a
    # clock the test moves by minutes. The push verifier learns every change by push,
    # so its backup refresh may sleep: its entries must just not expire on the fast
    # clock. The HTTP verifier refreshes when a lookup finds its set due, so it keeps
    # no verified-token cache: every call looks its key up, as a refresh thread would.
    push_keys = KeyCache(
        AuthServiceSource(server.grpc_target),
        CacheSettings(min_max_age=86400, cooldown=math.inf),
        now=clock,
    )
    http_keys = KeyCache(
        HttpJwksSource(f"{server.http_base_url}/.well-known/jwks.json"),
        CacheSettings(cooldown=math.inf),
        now=clock,
        background=False,
    )
    push_keys.start()
    http_keys.start()
    push_verifier = TokenVerifier(push_keys, policy, now=clock)
    http_verifier = TokenVerifier(http_keys, policy, now=clock, cache_size=0)
    push_server, push_port = build_server(rconfig, push_verifier)
    http_server, http_port = build_server(rconfig, http_verifier)
    auth_channel = grpc.insecure_channel(server.grpc_target)
    try:
        assert push_keys.wait_until_loaded(10) and http_keys.wait_until_loaded(10)
        yield Rig(
            clock=clock,
            server=server,
            loop_thread=loop_thread,
            auth_channel=auth_channel,
            push_target=f"127.0.0.1:{push_port}",
            http_target=f"127.0.0.1:{http_port}",
            push_keys=push_keys,
            http_keys=http_keys,
            database_url=database_url,
        )
    finally:
        auth_channel.close()
        push_server.stop(0.5).wait()
        http_server.stop(0.5).wait()
        push_keys.close()
        http_keys.close()
        loop_thread.run(server.stop(0.5))


def _client(rig: Rig, traffic: Traffic, index: int, stop: threading.Event) -> None:
    """An honest client: logs in, uses its token until shortly before it expires.

    Client 0 logs in before every call instead, so the first token of a new key
    reaches the verifiers the moment that key starts signing.
    """
    token: str | None = None
    try:
        while not stop.is_set():
            # Renew 2 steps before expiry, so a token never expires between two steps.
            if token is None or index == 0 or rig.clock() >= _exp(token) - 2 * STEP - 5:
                token = rig.login()
            for verifier, target in (("push", rig.push_target), ("http", rig.http_target)):
                after = traffic.revoking
                code = _call(target, token)
                traffic.record(index, Call(verifier, kid_of(token), code, after))
                if code is grpc.StatusCode.UNAUTHENTICATED:
                    token = None  # log in again, as the token helper would
                    break
    except BaseException as exc:
        with traffic.lock:
            traffic.errors.append(exc)
            traffic.lock.notify_all()


def _advance(rig: Rig, traffic: Traffic, clients: int, seconds: float) -> None:
    """Move the clock in steps, letting the server act and every client call at each one."""
    target = rig.clock() + seconds
    while rig.clock() < target:
        rig.clock.now = min(rig.clock.now + STEP, target)
        rig.settle()
        traffic.wait_for_calls(clients, each=2)


def _published_kids(rig: Rig) -> set[str]:
    return {k["kid"] for k in rig.server.publisher.snapshot.keys}


def _revoked_fails_on(rig: Rig, target: str, token: str, limit: float) -> float:
    """Seconds (real) until ``token`` is refused on ``target``; fails the test after ``limit``."""
    start = time.monotonic()
    while (elapsed := time.monotonic() - start) < limit:
        if _call(target, token) is grpc.StatusCode.UNAUTHENTICATED:
            return elapsed
    pytest.fail(f"a token of the revoked key still passed after {limit} s")


@pytest.mark.slow
def test_three_rotations_and_a_revocation_fail_no_honest_call(rig: Rig) -> None:
    traffic = Traffic()
    stop = threading.Event()
    clients = 3
    threads = [
        threading.Thread(target=_client, args=(rig, traffic, i, stop), daemon=True)
        for i in range(clients)
    ]
    for thread in threads:
        thread.start()
    try:
        first = rig.currentkid_of()
        signers = [first]
        # Three scheduled rotations: each key is pre-published ACTIVATE_AFTER before it signs.
        while len(signers) < 4:
            _advance(rig, traffic, clients, STEP)
            kid = rig.currentkid_of()
            if kid != signers[-1]:
                states = {k.kid: k.state for k in rig.store.list_keys()}
                assert states[signers[-1]] == "previous"
                signers.append(kid)
        assert rig.clock() == pytest.approx(T0 + 3 * INTERVAL, abs=STEP)
        # Old keys retire retire_after past their last use, and their private keys go.
        _advance(rig, traffic, clients, TTL + 30)
        infos = {k.kid: k for k in rig.store.list_keys()}
        assert [infos[k].state for k in signers] == ["retired", "retired", "retired", "current"]
        assert set(signers[:3]).isdisjoint(_published_kids(rig))

        # Emergency: move to late in the next key's pre-publication, then revoke the
        # current key from another process (as `ssot-auth keys revoke` does).
        _advance(rig, traffic, clients, INTERVAL - (TTL + 30) - 30)
        assert traffic.unexpected_failures() == []
        upcoming = [k.kid for k in rig.store.list_keys() if k.state == "next"]
        assert len(upcoming) == 1
        compromised = rig.currentkid_of()
        stolen = rig.login()
        assert kid_of(stolen) == compromised
        assert _call(rig.push_target, stolen) is OK and _call(rig.http_target, stolen) is OK
        cli_store = SigningKeyStore(rig.server.components.database, PASSPHRASE, now=rig.clock)
        traffic.revoked_kid = compromised
        traffic.revoking = True
        cli_store.revoke(compromised)
        # Push verifier: within 1 s, with no help from the test (the server polls).
        push_seconds = _revoked_fails_on(rig, rig.push_target, stolen, limit=1.0)
        # The pre-published key signs at once, and every verifier already knows it.
        assert rig.currentkid_of() == upcoming[0]
        traffic.wait_for_calls(clients, each=4)
        # HTTP verifier: at its next refresh, at most max-age later.
        _advance(rig, traffic, clients, MAX_AGE + STEP)
        assert _call(rig.http_target, stolen) is grpc.StatusCode.UNAUTHENTICATED
        assert _call(rig.push_target, stolen) is grpc.StatusCode.UNAUTHENTICATED
    finally:
        stop.set()
        for thread in threads:
            thread.join(20)

    assert not traffic.errors
    assert traffic.unexpected_failures() == []
    ok_kids = {(c.verifier, c.kid) for c in traffic.calls if c.code is OK}
    for kid in [*signers, upcoming[0]]:
        assert ("push", kid) in ok_kids and ("http", kid) in ok_kids
    assert push_seconds < 1.0
    print(f"\nrevoked key refused by the push verifier after {push_seconds * 1000:.0f} ms")


def test_jwks_max_age_never_outlives_the_next_scheduled_change(rig: Rig) -> None:
    def max_age() -> int:
        with urllib.request.urlopen(f"{rig.server.http_base_url}/.well-known/jwks.json") as r:
            header = r.headers["Cache-Control"]
        directives = dict(d.strip().partition("=")[::2] for d in header.split(","))
        assert directives["stale-while-revalidate"] == str(MAX_AGE)
        assert directives["stale-if-error"] == "3600"
        return int(directives["max-age"])

    prepublish = T0 + INTERVAL - ACTIVATE_AFTER
    assert max_age() == MAX_AGE
    rig.clock.now = prepublish - 25.5
    assert max_age() == 25
    rig.clock.now = prepublish - 0.5
    assert max_age() == 1  # never 0: that would make every verifier refetch on every call
    rig.clock.now = prepublish
    rig.settle()
    assert len(_published_kids(rig)) == 2
    # Next scheduled change: none until the following pre-publication.
    assert max_age() == MAX_AGE
    rig.clock.now = T0 + INTERVAL
    rig.settle()
    # The old key retires TTL + 30 s after its last signature: that caps max-age now.
    rig.clock.now += TTL + 30 - 7
    assert max_age() == 7


def test_changing_the_algorithm_migrates_with_both_accepted_meanwhile(
    loop_thread: EventLoopThread, tmp_path: Path
) -> None:
    clock = Clock(T0)
    database_url = f"sqlite:///{tmp_path / 'ssot-auth.db'}"

    def start(algorithm: str) -> RunningAuthServer:
        config = make_config(tmp_path, database_url, algorithm=algorithm, key_poll_interval=0.05)
        return loop_thread.run(start_auth_server(config, now=clock))

    first = start("RS256")
    first.components.users.add("alice", PASSWORD, ("resource.read",))
    loop_thread.run(first.stop(0.5))
    server = start("EdDSA")  # restarted with a new --algorithm
    keys = KeyCache(
        AuthServiceSource(server.grpc_target), CacheSettings(cooldown=math.inf), now=clock
    )
    keys.start()
    verifier = TokenVerifier(keys, TokenPolicy(issuer=ISSUER, audience=AUDIENCE), now=clock)
    channel = grpc.insecure_channel(server.grpc_target)
    stub = auth_pb2_grpc.AuthServiceStub(channel)

    def login() -> str:
        request = auth_pb2.LoginRequest(username="alice", password=PASSWORD)
        return str(stub.Login(request, timeout=10).access_token)

    try:
        assert keys.wait_until_loaded(10)
        old = login()
        assert jwt.get_unverified_header(old)["alg"] == "RS256"  # no key is switched at once
        assert {k["alg"] for k in server.publisher.snapshot.keys} == {"RS256", "EdDSA"}
        with urllib.request.urlopen(
            f"{server.http_base_url}/.well-known/openid-configuration"
        ) as response:
            discovery = json.load(response)
        assert discovery["id_token_signing_alg_values_supported"] == ["EdDSA", "RS256"]

        clock.now += 600  # 2 x the default max-age later, the EdDSA key signs
        new = login()
        assert jwt.get_unverified_header(new)["alg"] == "EdDSA"
        assert verifier.verify(old).username == verifier.verify(new).username == "alice"
    finally:
        channel.close()
        keys.close()
        loop_thread.run(server.stop(0.5))
