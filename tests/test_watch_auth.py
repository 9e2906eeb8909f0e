"""``--watch-auth``: who may follow WatchJwks and WatchRevocations, and resource servers that can.

Real auth services on loopback, real resource servers (``open_verifier`` +
``serving_resource``), real client-credentials tokens and certificates. Each mode:
a subscriber without the credential is refused, one with it gets the key set and
a logout reaches it within a second; a token without the scope is refused; a
token's stream ends at its ``exp`` and the verifier comes back with a fresh one
without missing a revocation made meanwhile.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import grpc
import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from auth_server.__main__ import main as auth_main
from auth_server.cli import build_parser
from auth_server.clients import ClientStore
from auth_server.jwk import public_jwk
from auth_server.watch_auth import (
    WATCH_SCOPE,
    WatchGrant,
    WatchGuard,
    WatchTokenExpired,
    WatchUnauthenticated,
)
from helpers import (
    AUDIENCE,
    DROP,
    ISSUER,
    AuthHarness,
    EventLoopThread,
    bearer,
    make_config,
    protected_call,
    run_cli,
    serving_resource,
    start_harness,
    wait_until,
)
from interceptors import (
    AuthServiceSource,
    ClientSecret,
    KeyCache,
    PrivateKeyJwt,
    RevocationList,
    TokenManager,
    TokenPolicy,
    TokenVerifier,
    cert_thumbprint,
)
from pki import Pki, make_pki
from protos import auth_pb2, auth_pb2_grpc, resource_pb2, resource_pb2_grpc
from resource_server import ResourceServerConfig, open_verifier
from resource_server.__main__ import main as resource_main
from resource_server.cli import _config as resource_config
from resource_server.cli import build_parser as resource_parser

PASSWORD = "correct horse battery"
WATCHER = "jwks-follower"


@pytest.fixture(scope="module")
def rsa_key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return make_pki(tmp_path_factory.mktemp("pki"))


class ShiftedClock:
    """Real time plus an offset a test may move (the auth service's clock)."""

    def __init__(self) -> None:
        self.offset = 0.0

    def __call__(self) -> float:
        return time.time() + self.offset


def clients(auth: AuthHarness) -> ClientStore:
    return auth.server.components.client_side.clients


def add_watcher(auth: AuthHarness, key: Any, *, scopes: tuple[str, ...] = (WATCH_SCOPE,)) -> None:
    clients(auth).add(
        WATCHER, jwks={"keys": [public_jwk(key, "RS256")]}, scopes=scopes, audiences=[AUDIENCE]
    )


def key_file(tmp_path: Path, key: rsa.RSAPrivateKey) -> Path:
    path = tmp_path / "watcher.pem"
    path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return path


def stream_status(channel: grpc.Channel, method: str, token: str | None = None) -> grpc.StatusCode:
    """Open a watch stream and take its first message; the status it ends with, or OK."""
    stub = auth_pb2_grpc.AuthServiceStub(channel)
    metadata = bearer(token) if token is not None else None
    if method == "WatchJwks":
        call = stub.WatchJwks(auth_pb2.WatchJwksRequest(), metadata=metadata, timeout=5)
    else:
        call = stub.WatchRevocations(
            auth_pb2.WatchRevocationsRequest(watermarks=True), metadata=metadata, timeout=5
        )
    try:
        next(iter(call))
    except grpc.RpcError as exc:
        return exc.code()  # type: ignore[attr-defined,no-any-return]
    finally:
        call.cancel()
    return grpc.StatusCode.OK


@contextlib.contextmanager
def resource(
    loop_thread: EventLoopThread, auth_target: str, **changes: Any
) -> Iterator[tuple[TokenVerifier, grpc.Channel]]:
    """A push-following resource server (``ssot-resource serve --auth-target``)."""
    config = ResourceServerConfig(
        grpc_address="127.0.0.1:0",
        issuer=ISSUER,
        audience=AUDIENCE,
        auth_target=auth_target,
        **changes,
    )
    with (
        open_verifier(config) as verifier,
        serving_resource(loop_thread, config, verifier, aio=False) as port,
        grpc.insecure_channel(f"127.0.0.1:{port}") as channel,
    ):
        yield verifier, channel


def revocations_of(verifier: TokenVerifier) -> RevocationList:
    revocations = verifier.revocations
    assert isinstance(revocations, RevocationList)
    return revocations


def assert_logout_refused_within_a_second(
    auth: AuthHarness, verifier: TokenVerifier, channel: grpc.Channel
) -> None:
    """The honest path: keys arrived, a token works, its logout is refused within 1 s."""
    assert revocations_of(verifier).wait_until_synced(10), "the revocation stream never synced"
    keys = verifier.keys
    assert isinstance(keys, KeyCache)
    assert wait_until(lambda: keys.stats.pushes >= 1, 5), "no key set came by WatchJwks"
    grant = auth.login("alice", PASSWORD)
    assert protected_call(channel, grant.access_token) == grpc.StatusCode.OK
    auth.logout(grant.refresh_token)
    assert wait_until(
        lambda: protected_call(channel, grant.access_token) == grpc.StatusCode.UNAUTHENTICATED,
        1.0,
    ), "the logout did not reach the resource server within a second"


@pytest.fixture
def token_auth(
    loop_thread: EventLoopThread, tmp_path: Path, database_url: str, rsa_key: Any
) -> Iterator[AuthHarness]:
    harness = start_harness(loop_thread, make_config(tmp_path, database_url, watch_auth="token"))
    harness.add_user("alice", PASSWORD, ("resource.read",))
    add_watcher(harness, rsa_key)
    yield harness
    harness.channel.close()
    harness.stop()


# -- token ----------------------------------------------------------------------------------


@pytest.mark.parametrize("method", ["WatchJwks", "WatchRevocations"])
def test_token_mode_refuses_subscribers_without_a_watch_token(
    token_auth: AuthHarness, rsa_key: Any, method: str
) -> None:
    channel = token_auth.channel
    assert stream_status(channel, method) == grpc.StatusCode.UNAUTHENTICATED
    assert stream_status(channel, method, "not.a.token") == grpc.StatusCode.UNAUTHENTICATED
    forged = token_auth.forge({"scope": WATCH_SCOPE, "exp": int(time.time()) - 3600})
    assert stream_status(channel, method, forged) == grpc.StatusCode.UNAUTHENTICATED
    # A valid user token without the scope: known, but not allowed.
    user = token_auth.login("alice", PASSWORD).access_token
    assert stream_status(channel, method, user) == grpc.StatusCode.PERMISSION_DENIED
    # The watcher's own client-credentials token with the scope: let in.
    tokens = TokenManager.for_service(
        channel, PrivateKeyJwt(client_id=WATCHER, key=rsa_key, issuer=ISSUER, scope=WATCH_SCOPE)
    )
    assert stream_status(channel, method, tokens.token()) == grpc.StatusCode.OK
    # GetJwks stays public: the same keys /.well-known/jwks.json serves to anyone.
    stub = auth_pb2_grpc.AuthServiceStub(channel)
    assert stub.GetJwks(auth_pb2.GetJwksRequest(), timeout=5).keys


def test_a_client_token_without_the_watch_scope_is_permission_denied(
    loop_thread: EventLoopThread, tmp_path: Path, rsa_key: Any
) -> None:
    harness = start_harness(loop_thread, make_config(tmp_path, watch_auth="token"))
    try:
        add_watcher(harness, rsa_key, scopes=("resource.read",))
        tokens = TokenManager.for_service(
            harness.channel, PrivateKeyJwt(client_id=WATCHER, key=rsa_key, issuer=ISSUER)
        )
        for method in ("WatchJwks", "WatchRevocations"):
            status = stream_status(harness.channel, method, tokens.token())
            assert status == grpc.StatusCode.PERMISSION_DENIED
    finally:
        harness.channel.close()
        harness.stop()


def test_a_resource_server_with_a_watch_token_follows_keys_and_revocations(
    loop_thread: EventLoopThread, token_auth: AuthHarness, rsa_key: Any, tmp_path: Path
) -> None:
    identity = PrivateKeyJwt(
        client_id=WATCHER, key=key_file(tmp_path, rsa_key), issuer=ISSUER, scope=WATCH_SCOPE
    )
    with resource(loop_thread, token_auth.target, watch_identity=identity) as (verifier, channel):
        assert_logout_refused_within_a_second(token_auth, verifier, channel)


def test_a_resource_server_without_a_watch_token_gets_no_push(
    loop_thread: EventLoopThread, token_auth: AuthHarness
) -> None:
    with resource(loop_thread, token_auth.target) as (verifier, channel):
        # GetJwks is public, so tokens verify; the streams are refused.
        grant = token_auth.login("alice", PASSWORD)
        assert protected_call(channel, grant.access_token) == grpc.StatusCode.OK
        assert not revocations_of(verifier).wait_until_synced(1.5)
        keys = verifier.keys
        assert isinstance(keys, KeyCache) and keys.stats.pushes == 0
        token_auth.logout(grant.refresh_token)
        time.sleep(1.0)  # no push: the revoked token still passes until its exp
        assert protected_call(channel, grant.access_token) == grpc.StatusCode.OK


def test_the_stream_ends_at_token_expiry_and_resumes_with_a_fresh_token(
    loop_thread: EventLoopThread, tmp_path: Path
) -> None:
    clock = ShiftedClock()
    harness = start_harness(
        loop_thread, make_config(tmp_path, watch_auth="token", access_token_ttl=30), now=clock
    )
    try:
        harness.add_user("alice", PASSWORD, ("resource.read",))
        _, secret = clients(harness).add(
            WATCHER, secret=True, scopes=[WATCH_SCOPE], audiences=[AUDIENCE]
        )
        assert secret is not None
        grant = harness.login("alice", PASSWORD)  # exp in 30 s of real time
        identity = ClientSecret(client_id=WATCHER, secret=secret, scope=WATCH_SCOPE)
        # refresh_margin=0: the manager would hand out its token until the last second.
        tokens = TokenManager.for_service(harness.channel, identity, refresh_margin=0)
        first = tokens.token()
        # The auth service's clock moves on: that token has 2 s left when the streams open.
        clock.offset = 28.0
        source_config = ResourceServerConfig(
            grpc_address="127.0.0.1:0", issuer=ISSUER, audience=AUDIENCE, auth_target="-"
        )
        source = AuthServiceSource(harness.target, tokens=tokens)
        with (
            TokenVerifier.from_source(
                source, TokenPolicy(issuer=ISSUER, audience=AUDIENCE)
            ) as verifier,
            serving_resource(loop_thread, source_config, verifier, aio=False) as port,
            grpc.insecure_channel(f"127.0.0.1:{port}") as channel,
        ):
            revocations = revocations_of(verifier)
            assert revocations.wait_until_synced(10)
            assert protected_call(channel, grant.access_token) == grpc.StatusCode.OK
            # At the token's exp the server ends the stream (UNAUTHENTICATED) ...
            assert wait_until(lambda: not revocations.stats.synced, 5), "the stream outlived exp"
            # ... and a revocation made before the follower is back is not missed.
            harness.logout(grant.refresh_token)
            assert wait_until(
                lambda: revocations.stats.synced and revocations.stats.reconnects >= 1, 10
            ), "the follower did not come back"
            assert tokens.token() != first, "the reconnect did not use a fresh token"
            assert wait_until(
                lambda: (
                    protected_call(channel, grant.access_token) == grpc.StatusCode.UNAUTHENTICATED
                ),
                1.0,
            )
    finally:
        harness.channel.close()
        harness.stop()


@pytest.mark.parametrize(
    ("changes", "status"),
    [
        # Expired a moment ago: inside a verifier's usual leeway, still refused here.
        pytest.param({"exp": int(time.time()) - 5}, "UNAUTHENTICATED", id="just-expired"),
        pytest.param({"iss": "https://evil.test"}, "UNAUTHENTICATED", id="another-issuer"),
        pytest.param({"scope": DROP, "scp": [WATCH_SCOPE]}, "PERMISSION_DENIED", id="scp-list"),
        pytest.param({"scope": [WATCH_SCOPE]}, "UNAUTHENTICATED", id="scope-as-list"),
        pytest.param({"scope": "ssot.watch.all"}, "PERMISSION_DENIED", id="scope-prefix"),
        pytest.param({"scope": "x\tssot.watch"}, "PERMISSION_DENIED", id="scope-tab-joined"),
        pytest.param({"scope": "SSOT.WATCH"}, "PERMISSION_DENIED", id="scope-case"),
    ],
)
def test_a_watch_token_in_the_wrong_form_is_refused(
    token_auth: AuthHarness, changes: dict[str, Any], status: str
) -> None:
    for method in ("WatchJwks", "WatchRevocations"):
        token = token_auth.forge(changes)
        assert stream_status(token_auth.channel, method, token).name == status
        honest = token_auth.forge({"scope": f"resource.read {WATCH_SCOPE}"})
        assert stream_status(token_auth.channel, method, honest) == grpc.StatusCode.OK


def test_a_logged_out_or_refresh_token_cannot_watch(token_auth: AuthHarness) -> None:
    token_auth.add_user("viewer", PASSWORD, (WATCH_SCOPE,))
    grant = token_auth.login("viewer", PASSWORD)
    assert stream_status(token_auth.channel, "WatchJwks", grant.access_token).name == "OK"
    for method in ("WatchJwks", "WatchRevocations"):
        assert stream_status(token_auth.channel, method, grant.refresh_token).name == (
            "UNAUTHENTICATED"
        )
    token_auth.logout(grant.refresh_token)
    for method in ("WatchJwks", "WatchRevocations"):
        assert stream_status(token_auth.channel, method, grant.access_token).name == (
            "UNAUTHENTICATED"
        )
    fresh = token_auth.login("viewer", PASSWORD)
    assert stream_status(token_auth.channel, "WatchRevocations", fresh.access_token).name == "OK"


def test_a_watch_token_opens_no_other_door(
    loop_thread: EventLoopThread, token_auth: AuthHarness, rsa_key: Any
) -> None:
    tokens = TokenManager.for_service(
        token_auth.channel,
        PrivateKeyJwt(client_id=WATCHER, key=rsa_key, issuer=ISSUER, scope=WATCH_SCOPE),
    )
    watch = tokens.token()
    assert stream_status(token_auth.channel, "WatchJwks", watch) == grpc.StatusCode.OK
    # A method that needs a scope does not take ssot.watch for it (a method that needs
    # only "a token" of the audience takes any, this one's too, by the resource's policy).
    token_auth.add_user("boss", PASSWORD, ("resource.admin",))
    admin = token_auth.login("boss", PASSWORD).access_token

    def admin_report(channel: grpc.Channel, token: str) -> grpc.StatusCode:
        stub = resource_pb2_grpc.ResourceServiceStub(channel)
        try:
            stub.GetAdminReport(
                resource_pb2.GetAdminReportRequest(), metadata=bearer(token), timeout=10
            )
        except grpc.RpcError as exc:
            return exc.code()  # type: ignore[attr-defined,no-any-return]
        return grpc.StatusCode.OK

    with resource(loop_thread, token_auth.target) as (_, channel):
        assert admin_report(channel, watch) == grpc.StatusCode.PERMISSION_DENIED
        assert admin_report(channel, admin) == grpc.StatusCode.OK
    # Introspection takes client authentication, not a bearer token.
    request = urllib.request.Request(
        token_auth.server.http_base_url + "/oauth2/introspect",
        data=urllib.parse.urlencode({"token": watch}).encode(),
        headers={"Authorization": f"Bearer {watch}"},
    )
    with pytest.raises(urllib.error.HTTPError) as info:
        urllib.request.urlopen(request, timeout=5)
    info.value.close()
    assert info.value.code in (400, 401), info.value.code


def test_a_certificate_bound_watch_token_needs_its_certificate(token_auth: AuthHarness) -> None:
    # Plaintext: no certificate on the connection, so a cnf-bound token proves nothing.
    bound = token_auth.forge({"scope": WATCH_SCOPE, "cnf": {"x5t#S256": "A" * 43}})
    unbound = token_auth.forge({"scope": WATCH_SCOPE})
    for method in ("WatchJwks", "WatchRevocations"):
        assert stream_status(token_auth.channel, method, bound) == grpc.StatusCode.UNAUTHENTICATED
        assert stream_status(token_auth.channel, method, unbound) == grpc.StatusCode.OK


def test_a_watch_token_bound_to_one_certificate_is_refused_from_another(
    loop_thread: EventLoopThread, tmp_path: Path, pki: Pki
) -> None:
    config = make_config(
        tmp_path,
        tls_cert=pki.server.cert,
        tls_key=pki.server.key,
        client_ca=pki.ca,
        watch_auth="token",
    )
    harness = start_harness(loop_thread, config)
    alice, bob = pki.clients["alice"], pki.clients["bob"]

    def connect(identity: Any) -> grpc.Channel:
        creds = grpc.ssl_channel_credentials(pki.ca_pem, identity.key_pem, identity.cert_pem)
        return grpc.secure_channel(harness.target, creds)

    def login(channel: grpc.Channel) -> str:
        request = auth_pb2.LoginRequest(username="watcher", password=PASSWORD)
        token = auth_pb2_grpc.AuthServiceStub(channel).Login(request, timeout=10).access_token
        return str(token)

    try:
        harness.add_user("watcher", PASSWORD, (WATCH_SCOPE,))
        with connect(alice) as as_alice, connect(bob) as as_bob:
            # A login over mutual TLS binds the token to that certificate (RFC 8705).
            alices, bobs = login(as_alice), login(as_bob)
            cnf = jwt.decode(alices, options={"verify_signature": False})["cnf"]
            assert cnf == {"x5t#S256": cert_thumbprint(alice.cert_pem)}
            for method in ("WatchJwks", "WatchRevocations"):
                # Alice's token copied onto Bob's connection (same CA, valid) is refused ...
                assert stream_status(as_bob, method, alices) == grpc.StatusCode.UNAUTHENTICATED
                # ... and each token passes from its own certificate.
                assert stream_status(as_alice, method, alices) == grpc.StatusCode.OK
                assert stream_status(as_bob, method, bobs) == grpc.StatusCode.OK
    finally:
        harness.channel.close()
        harness.stop()


# -- mtls ------------------------------------------------------------------------------------


def test_mtls_mode_follows_with_a_certificate_and_refuses_without(
    loop_thread: EventLoopThread, tmp_path: Path, pki: Pki
) -> None:
    config = make_config(
        tmp_path,
        tls_cert=pki.server.cert,
        tls_key=pki.server.key,
        client_ca=pki.ca,
        watch_auth="mtls",
    )
    harness = start_harness(loop_thread, config)
    alice = pki.clients["alice"]
    try:
        harness.add_user("alice", PASSWORD, ("resource.read",))
        for identity in (None, pki.rogue):  # no certificate, or one the client CA did not sign
            creds = grpc.ssl_channel_credentials(
                pki.ca_pem,
                identity.key_pem if identity else None,
                identity.cert_pem if identity else None,
            )
            with grpc.secure_channel(harness.target, creds) as refused:
                assert stream_status(refused, "WatchRevocations") == grpc.StatusCode.UNAVAILABLE
        creds = grpc.ssl_channel_credentials(pki.ca_pem, alice.key_pem, alice.cert_pem)
        harness.channel.close()
        harness.channel = grpc.secure_channel(harness.target, creds)
        with resource(
            loop_thread,
            harness.target,
            auth_ca_cert=pki.ca,
            auth_client_cert=alice.cert,
            auth_client_key=alice.key,
        ) as (verifier, channel):
            assert_logout_refused_within_a_second(harness, verifier, channel)
    finally:
        harness.channel.close()
        harness.stop()


def test_the_mtls_guard_refuses_a_call_without_a_verified_certificate() -> None:
    # Behind --client-ca no such call reaches the servicer; the guard does not rely on it.
    guard = WatchGuard("mtls")
    with pytest.raises(WatchUnauthenticated):
        guard.admit((), {"transport_security_type": [b"ssl"]})
    assert guard.admit((), {"x509_pem_cert": [b"-----BEGIN CERTIFICATE-----"]}).expires_at is None


def test_mtls_mode_needs_a_client_ca(tmp_path: Path, pki: Pki) -> None:
    with pytest.raises(ValueError, match="--watch-auth mtls needs --client-ca"):
        make_config(tmp_path, tls_cert=pki.server.cert, tls_key=pki.server.key, watch_auth="mtls")
    with pytest.raises(ValueError, match="--watch-auth must be one of"):
        make_config(tmp_path, watch_auth="password")


# -- none, and the warning ------------------------------------------------------------------


def test_none_mode_lets_anyone_follow(auth: AuthHarness, loop_thread: EventLoopThread) -> None:
    assert stream_status(auth.channel, "WatchJwks") == grpc.StatusCode.OK
    assert stream_status(auth.channel, "WatchRevocations") == grpc.StatusCode.OK


def _watch_warnings(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [
        r.getMessage()
        for r in caplog.records
        if r.getMessage().startswith("SECURITY WARNING") and "--watch-auth" in r.getMessage()
    ]


@pytest.mark.parametrize(
    ("changes", "warned"),
    [
        pytest.param({}, True, id="plaintext-open-streams"),
        pytest.param({"watch_auth": "token"}, False, id="watch-token"),
        pytest.param({"grpc_address": "127.0.0.1:0"}, False, id="loopback"),
    ],
)
def test_open_streams_beyond_loopback_without_tls_log_a_security_warning(
    loop_thread: EventLoopThread,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
    changes: dict[str, Any],
    warned: bool,
) -> None:
    caplog.set_level(logging.WARNING)
    settings: dict[str, Any] = {"grpc_address": "0.0.0.0:0", **changes}
    harness = start_harness(loop_thread, make_config(tmp_path, **settings))
    harness.channel.close()
    harness.stop()
    warnings = _watch_warnings(caplog)
    if warned:
        assert len(warnings) == 1
        assert "WatchRevocations" in warnings[0] and "--watch-auth token" in warnings[0]
    else:
        assert warnings == []


# -- the command lines ----------------------------------------------------------------------


def test_serve_reads_watch_auth_from_its_variable_and_checks_it(
    env: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("SSOT_WATCH_AUTH", "token")
    ns = build_parser().parse_args(["serve", "--issuer", ISSUER, "--audience", AUDIENCE])
    assert ns.watch_auth == "token"
    argv = ["serve", "--issuer", ISSUER, "--audience", AUDIENCE, "--watch-auth", "mtls"]
    assert run_cli(auth_main, argv) == 1
    assert "--watch-auth mtls needs --client-ca" in capsys.readouterr().err


def test_resource_serve_watch_token_needs_a_client_identity(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, rsa_key: Any
) -> None:
    base = ["serve", "--auth-target", "127.0.0.1:9", "--issuer", ISSUER, "--audience", AUDIENCE]
    assert run_cli(resource_main, [*base, "--watch-token"]) == 1
    assert "--watch-token needs --client-id" in capsys.readouterr().err
    secret = tmp_path / "secret"
    secret.write_text("")
    argv = [*base, "--watch-token", "--client-id", WATCHER, "--client-secret-file", str(secret)]
    assert run_cli(resource_main, argv) == 1
    assert "--client-secret-file is empty" in capsys.readouterr().err
    key = key_file(tmp_path, rsa_key)
    ns = resource_parser().parse_args(
        [*base, "--watch-token", "--client-id", WATCHER, "--client-key-file", str(key)]
    )
    identity = resource_config(ns).watch_identity
    assert identity == PrivateKeyJwt(client_id=WATCHER, key=key, issuer=ISSUER, scope=WATCH_SCOPE)


# -- the stream's end at exp, without a network ----------------------------------------------


async def _items(ticks: asyncio.Queue[int]) -> AsyncIterator[int]:
    while True:
        yield await ticks.get()


def test_a_stream_ends_at_its_deadline_while_waiting_and_while_sending() -> None:
    guard = WatchGuard("none")

    async def run(slow_consumer: bool) -> tuple[list[int], float]:
        ticks: asyncio.Queue[int] = asyncio.Queue()
        for n in (1, 2):
            ticks.put_nowait(n)
        got: list[int] = []
        started = time.monotonic()
        grant = WatchGrant("svc", expires_at=time.time() + 0.3)
        with pytest.raises(WatchTokenExpired):
            async for item in guard.until_expiry(grant, _items(ticks)):
                got.append(item)
                if slow_consumer:
                    await asyncio.sleep(0.5)  # still "sending" when the deadline passes
        return got, time.monotonic() - started

    got, took = asyncio.run(run(slow_consumer=False))
    assert got == [1, 2] and 0.25 < took < 1.0
    got, took = asyncio.run(run(slow_consumer=True))
    assert got == [1] and 0.45 < took < 1.5  # no second item after the deadline


def test_a_cancelled_call_stays_cancelled_when_its_token_expires() -> None:
    guard = WatchGuard("none")

    async def run() -> None:
        grant = WatchGrant("svc", expires_at=time.time() + 60)

        async def follow() -> None:
            async for _ in guard.until_expiry(grant, _items(asyncio.Queue())):
                pass

        task = asyncio.create_task(follow())
        await asyncio.sleep(0.05)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    asyncio.run(run())
