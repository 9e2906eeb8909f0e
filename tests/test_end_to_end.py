"""The whole system over loopback sockets: log in at the auth service, call the resource service."""

from __future__ import annotations

import base64
import json
import time
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import grpc
import jwt
import pytest
from cryptography.hazmat.primitives import serialization

from helpers import (
    AUDIENCE,
    FACES,
    ISSUER,
    AuthHarness,
    EventLoopThread,
    ResourceHarness,
    bearer,
    running_resource,
    serving_resource,
)
from protos import auth_pb2, resource_pb2, resource_pb2_grpc

PASSWORD = "correct horse battery"


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _code(call: Callable[[], Any]) -> tuple[grpc.StatusCode, str]:
    with pytest.raises(grpc.RpcError) as info:
        call()
    err = info.value
    assert isinstance(err, grpc.Call)
    return err.code(), err.details() or ""


@pytest.fixture(scope="module")
def alice(auth: AuthHarness) -> str:
    """An access token of alice (resource.read), on the module's shared auth service."""
    auth.add_user("alice", PASSWORD, ("resource.read",))
    return auth.login("alice", PASSWORD).access_token


@pytest.fixture(scope="module")
def root(auth: AuthHarness) -> str:
    """An access token of root (resource.admin and resource.read), on the shared auth service."""
    auth.add_user("root", PASSWORD, ("resource.admin", "resource.read"))
    return auth.login("root", PASSWORD).access_token


def test_login_then_protected_call_succeeds(
    auth_fresh: AuthHarness, resource: ResourceHarness
) -> None:
    user_id = auth_fresh.add_user("alice", PASSWORD, ("resource.read",))
    response = auth_fresh.login("alice", PASSWORD)
    assert response.token_type == "Bearer"
    assert 0 < response.expires_in <= 900
    assert response.scope == "resource.read"

    reply = resource.stub.GetProtectedResource(
        resource_pb2.GetProtectedResourceRequest(),
        metadata=bearer(response.access_token),
        timeout=10,
    )
    assert reply.message == "This is a protected resource"
    assert reply.user.user_id == user_id
    assert reply.user.username == "alice"


def test_token_header_and_claims_follow_the_contract(auth_fresh: AuthHarness) -> None:
    user_id = auth_fresh.add_user("alice", PASSWORD, ("resource.read", "resource.admin"))
    token = auth_fresh.login("alice", PASSWORD, scope="resource.read").access_token
    header = jwt.get_unverified_header(token)
    assert header == {"alg": "RS256", "kid": header["kid"], "typ": "at+jwt"}
    claims = jwt.decode(token, options={"verify_signature": False})
    assert set(claims) == {
        "iss",
        "sub",
        "aud",
        "exp",
        "iat",
        "nbf",
        "jti",
        "sid",
        "username",
        "scope",
    }
    assert claims["iss"] == ISSUER and claims["aud"] == AUDIENCE and claims["sub"] == user_id
    assert claims["scope"] == "resource.read"  # asked-for subset of the user's scopes
    assert claims["exp"] - claims["iat"] == 900
    with urllib.request.urlopen(auth_fresh.jwks_url) as response:
        published = {k["kid"] for k in json.load(response)["keys"]}
    assert header["kid"] in published


def _hs256_with_public_key(auth: AuthHarness) -> str:
    # CVE-2015-9235 / CVE-2022-29217 shape: HMAC keyed with the public key's PEM.
    key = auth.signing_key()
    pem = key.private_key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    header = {"alg": "HS256", "kid": key.kid, "typ": "at+jwt"}
    now = int(time.time())
    claims = {"iss": ISSUER, "sub": "x", "aud": AUDIENCE, "exp": now + 60, "iat": now, "jti": "j"}
    import hashlib
    import hmac

    signing_input = f"{_b64(json.dumps(header).encode())}.{_b64(json.dumps(claims).encode())}"
    mac = hmac.new(pem, signing_input.encode(), hashlib.sha256).digest()
    return f"{signing_input}.{_b64(mac)}"


def _alg_none(auth: AuthHarness) -> str:
    token = auth.forge({})
    _, payload, _ = token.split(".")
    fake = _b64(
        json.dumps({"alg": "none", "kid": auth.signing_key().kid, "typ": "at+jwt"}).encode()
    )
    return f"{fake}.{payload}."


def _tampered(auth: AuthHarness) -> str:
    header, payload, sig = auth.forge({}).split(".")
    claims = json.loads(base64.urlsafe_b64decode(payload + "=="))
    claims["scope"] = "resource.read resource.admin"
    return f"{header}.{_b64(json.dumps(claims).encode())}.{sig}"


BAD_TOKENS: list[Any] = [
    pytest.param(lambda a: "not-a-jwt", "malformed token", id="garbage"),
    pytest.param(_tampered, "invalid signature", id="tampered"),
    pytest.param(
        lambda a: a.forge(
            {
                "exp": int(time.time()) - 3600,
                "iat": int(time.time()) - 4000,
                "nbf": int(time.time()) - 4000,
            }
        ),
        "token expired",
        id="expired",
    ),
    pytest.param(
        lambda a: a.forge({"nbf": int(time.time()) + 3600}),
        "token not yet valid",
        id="not-yet-valid",
    ),
    pytest.param(
        lambda a: a.forge({"aud": "someone-else"}), "invalid token claims", id="wrong-audience"
    ),
    pytest.param(
        lambda a: a.forge({"iss": "https://evil.example"}),
        "invalid token claims",
        id="wrong-issuer",
    ),
    pytest.param(lambda a: a.forge({}, {"typ": "JWT"}), None, id="wrong-typ"),
    pytest.param(_alg_none, None, id="alg-none"),
    pytest.param(_hs256_with_public_key, None, id="hs256-with-public-key"),
    pytest.param(
        lambda a: a.forge({}, {"kid": "unknown-" + uuid.uuid4().hex}),
        "unknown signing key",
        id="unknown-kid",
    ),
]


@pytest.mark.parametrize(("make_token", "message"), BAD_TOKENS)
def test_bad_tokens_are_unauthenticated(
    auth: AuthHarness,
    resource: ResourceHarness,
    alice: str,
    make_token: Callable[[AuthHarness], str],
    message: str | None,
) -> None:
    token = make_token(auth)
    code, details = _code(
        lambda: resource.stub.GetProtectedResource(
            resource_pb2.GetProtectedResourceRequest(), metadata=bearer(token), timeout=10
        )
    )
    assert code == grpc.StatusCode.UNAUTHENTICATED
    if message is not None:
        assert details == message
    assert token not in details
    # The honest token still passes on the same server.
    ok = resource.stub.GetProtectedResource(
        resource_pb2.GetProtectedResourceRequest(), metadata=bearer(alice), timeout=10
    )
    assert ok.user.username == "alice"


def test_missing_token_is_unauthenticated(resource: ResourceHarness) -> None:
    code, details = _code(
        lambda: resource.stub.GetProtectedResource(
            resource_pb2.GetProtectedResourceRequest(), timeout=10
        )
    )
    assert (code, details) == (grpc.StatusCode.UNAUTHENTICATED, "missing bearer token")


def test_public_method_needs_no_token(resource: ResourceHarness) -> None:
    info = resource.stub.GetPublicInfo(resource_pb2.GetPublicInfoRequest(), timeout=10)
    assert info.issuer == ISSUER


def test_scope_is_enforced(resource: ResourceHarness, alice: str, root: str) -> None:
    code, details = _code(
        lambda: resource.stub.GetAdminReport(
            resource_pb2.GetAdminReportRequest(), metadata=bearer(alice), timeout=10
        )
    )
    assert (code, details) == (grpc.StatusCode.PERMISSION_DENIED, "insufficient scope")
    report = resource.stub.GetAdminReport(
        resource_pb2.GetAdminReportRequest(), metadata=bearer(root), timeout=10
    )
    assert report.user.username == "root" and "resource.admin" in report.scope.split()


def _notes(n: int) -> Iterator[resource_pb2.Note]:
    return (resource_pb2.Note(text=f"note {i}") for i in range(n))


RPC_KINDS: list[Any] = [
    pytest.param(
        lambda s, md: (
            s.GetProtectedResource(
                resource_pb2.GetProtectedResourceRequest(), metadata=md, timeout=10
            ).user.username
        ),
        id="unary-unary",
    ),
    pytest.param(
        lambda s, md: {
            e.user.username
            for e in s.StreamEvents(
                resource_pb2.StreamEventsRequest(count=5), metadata=md, timeout=10
            )
        }.pop(),
        id="unary-stream",
    ),
    pytest.param(
        lambda s, md: s.UploadNotes(_notes(3), metadata=md, timeout=10).user.username,
        id="stream-unary",
    ),
    pytest.param(
        lambda s, md: {
            n.author.username for n in s.EchoNotes(_notes(3), metadata=md, timeout=10)
        }.pop(),
        id="stream-stream",
    ),
]


@pytest.mark.parametrize("call", RPC_KINDS)
def test_every_rpc_kind_sees_the_principal_and_rejects_no_token(
    resource: ResourceHarness, alice: str, call: Callable[[Any, Any], str]
) -> None:
    assert call(resource.stub, bearer(alice)) == "alice"
    code, _ = _code(lambda: call(resource.stub, None))
    assert code == grpc.StatusCode.UNAUTHENTICATED
    code, _ = _code(lambda: call(resource.stub, bearer("garbage.token.here")))
    assert code == grpc.StatusCode.UNAUTHENTICATED


@pytest.mark.slow
@pytest.mark.parametrize("aio", FACES)
def test_cached_keys_keep_verifying_with_the_auth_server_stopped(
    loop_thread: EventLoopThread, auth_fresh: AuthHarness, aio: bool
) -> None:
    auth_fresh.add_user("alice", PASSWORD)
    token = auth_fresh.login("alice", PASSWORD).access_token
    with running_resource(loop_thread, auth_fresh, aio=aio, cooldown=0.0) as resource:
        first = resource.stub.GetProtectedResource(
            resource_pb2.GetProtectedResourceRequest(), metadata=bearer(token), timeout=10
        )
        auth_fresh.stop()
        fresh = auth_fresh.forge({"sub": first.user.user_id, "username": "alice"})
        for t in (token, fresh):  # fresh: not in the verified-token cache
            again = resource.stub.GetProtectedResource(
                resource_pb2.GetProtectedResourceRequest(), metadata=bearer(t), timeout=10
            )
            assert again.user.username == "alice"
        # A key the cache has never seen cannot be checked while the issuer is down: the
        # answer is retryable, never OK and never a hang.
        unknown = auth_fresh.forge({}, {"kid": "new-key-" + uuid.uuid4().hex})
        started = time.monotonic()
        code, _ = _code(
            lambda: resource.stub.GetProtectedResource(
                resource_pb2.GetProtectedResourceRequest(), metadata=bearer(unknown), timeout=10
            )
        )
        assert code == grpc.StatusCode.UNAVAILABLE
        assert time.monotonic() - started < 5


@pytest.mark.parametrize("aio", FACES)
def test_burst_of_unknown_kids_costs_at_most_one_fetch(
    loop_thread: EventLoopThread, auth_fresh: AuthHarness, aio: bool
) -> None:
    auth_fresh.add_user("alice", PASSWORD)
    token = auth_fresh.login("alice", PASSWORD).access_token
    with running_resource(loop_thread, auth_fresh, aio=aio, cooldown=30.0) as resource:
        resource.stub.GetProtectedResource(
            resource_pb2.GetProtectedResourceRequest(), metadata=bearer(token), timeout=10
        )
        before = resource.keys.stats.fetches
        futures = [
            resource.stub.GetProtectedResource.future(
                resource_pb2.GetProtectedResourceRequest(),
                metadata=bearer(auth_fresh.forge({}, {"kid": f"attacker-{i}"})),
                timeout=20,
            )
            for i in range(200)
        ]
        codes = []
        for f in futures:
            with pytest.raises(grpc.RpcError) as info:
                f.result()
            codes.append(info.value.code())  # type: ignore[attr-defined]
        assert set(codes) == {grpc.StatusCode.UNAUTHENTICATED}
        assert resource.keys.stats.fetches - before <= 1
        ok = resource.stub.GetProtectedResource(
            resource_pb2.GetProtectedResourceRequest(), metadata=bearer(token), timeout=10
        )
        assert ok.user.username == "alice"


def test_pyjwt_jwks_client_verifies_our_tokens(auth: AuthHarness, alice: str) -> None:
    client = jwt.PyJWKClient(auth.jwks_url)
    key = client.get_signing_key_from_jwt(alice)
    claims = jwt.decode(alice, key.key, algorithms=["RS256"], audience=AUDIENCE, issuer=ISSUER)
    assert claims["username"] == "alice"


def test_grpc_and_http_publish_the_same_key_set(auth: AuthHarness) -> None:
    over_grpc = auth.stub.GetJwks(auth_pb2.GetJwksRequest(), timeout=10)
    with urllib.request.urlopen(auth.jwks_url) as response:
        body = json.load(response)
        etag = response.headers["ETag"]
        assert response.headers["Cache-Control"] == (
            "public, max-age=300, stale-while-revalidate=300, stale-if-error=3600"
        )
        assert response.headers["Content-Type"] == "application/jwk-set+json"
        assert "Server" not in response.headers
    assert [k.kid for k in over_grpc.keys] == [k["kid"] for k in body["keys"]]
    assert etag == f'"{over_grpc.etag}"'
    assert over_grpc.max_age_seconds == 300
    for k in body["keys"]:
        assert set(k) >= {"kty", "kid", "use", "alg"} and "d" not in k
    request = urllib.request.Request(auth.jwks_url, headers={"If-None-Match": etag})
    with pytest.raises(urllib.error.HTTPError) as info:
        urllib.request.urlopen(request)
    info.value.close()
    assert info.value.code == 304


def test_discovery_document_points_at_the_jwks(auth: AuthHarness) -> None:
    url = f"{auth.server.http_base_url}/.well-known/openid-configuration"
    with urllib.request.urlopen(url) as response:
        doc = json.load(response)
    assert doc["issuer"] == ISSUER
    assert doc["jwks_uri"] == f"{ISSUER}/.well-known/jwks.json"
    assert "RS256" in doc["id_token_signing_alg_values_supported"]


def test_watch_jwks_sends_the_set_then_every_change(auth_fresh: AuthHarness) -> None:
    stream = auth_fresh.stub.WatchJwks(auth_pb2.WatchJwksRequest(), timeout=20)
    first = next(stream)
    assert len(first.keys) == 1
    new = auth_fresh.server.components.keys.rotate()
    second = next(stream)
    stream.cancel()
    assert new.kid in {k.kid for k in second.keys}
    assert second.etag != first.etag


@pytest.mark.parametrize(
    ("username", "password"),
    [
        pytest.param("alice", "wrong password", id="wrong-password"),
        pytest.param("nobody", PASSWORD, id="unknown-user"),
        pytest.param("carol", PASSWORD, id="disabled-user"),
    ],
)
def test_bad_credentials_get_one_answer(
    auth_fresh: AuthHarness, username: str, password: str
) -> None:
    auth_fresh.add_user("alice", PASSWORD)
    auth_fresh.add_user("carol", PASSWORD)
    auth_fresh.server.components.users.disable("carol")
    code, details = _code(lambda: auth_fresh.login(username, password))
    assert (code, details) == (grpc.StatusCode.UNAUTHENTICATED, "invalid username or password")


@pytest.mark.parametrize(
    "request_",
    [
        pytest.param(auth_pb2.LoginRequest(username="", password="x"), id="empty-username"),
        pytest.param(auth_pb2.LoginRequest(username="alice", password=""), id="empty-password"),
        pytest.param(auth_pb2.LoginRequest(username="a" * 300, password="x"), id="long-username"),
        pytest.param(
            auth_pb2.LoginRequest(username="alice", password="x" * 2000), id="long-password"
        ),
        pytest.param(
            auth_pb2.LoginRequest(username="alice", password="x", scope="bad\x01scope"),
            id="bad-scope",
        ),
    ],
)
def test_malformed_login_is_invalid_argument(
    auth: AuthHarness, request_: auth_pb2.LoginRequest
) -> None:
    code, _ = _code(lambda: auth.stub.Login(request_, timeout=10))
    assert code == grpc.StatusCode.INVALID_ARGUMENT


def test_login_works_on_every_database(auth_any_db: AuthHarness) -> None:
    user_id = auth_any_db.add_user("alice", PASSWORD, ("resource.read",))
    token = auth_any_db.login("alice", PASSWORD).access_token
    assert jwt.decode(token, options={"verify_signature": False})["sub"] == user_id


def test_health_and_reflection_answer_without_a_token(
    auth: AuthHarness, resource: ResourceHarness
) -> None:
    from grpc_health.v1 import health_pb2, health_pb2_grpc
    from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

    for channel in (auth.channel, resource.channel):
        status = health_pb2_grpc.HealthStub(channel).Check(
            health_pb2.HealthCheckRequest(), timeout=10
        )
        assert status.status == health_pb2.HealthCheckResponse.SERVING
        stub = reflection_pb2_grpc.ServerReflectionStub(channel)
        replies = stub.ServerReflectionInfo(
            iter([reflection_pb2.ServerReflectionRequest(list_services="")]), timeout=10
        )
        names = {s.name for r in replies for s in r.list_services_response.service}
        assert names & {"ssot.auth.v1.AuthService", "ssot.resource.v1.ResourceService"}


@pytest.mark.slow
@pytest.mark.parametrize("aio", FACES)
def test_a_verifier_that_never_loaded_keys_is_unavailable_not_hanging(
    loop_thread: EventLoopThread, auth: AuthHarness, aio: bool
) -> None:
    import socket

    from resource_server import ResourceServerConfig, open_verifier

    with socket.socket() as s:  # a port with nothing listening
        s.bind(("127.0.0.1", 0))
        dead = s.getsockname()[1]
    config = ResourceServerConfig(
        grpc_address="127.0.0.1:0",
        issuer=ISSUER,
        audience=AUDIENCE,
        jwks_url=f"http://127.0.0.1:{dead}/.well-known/jwks.json",
    )
    with (
        open_verifier(config) as verifier,
        serving_resource(loop_thread, config, verifier, aio=aio, grace=0) as port,
        grpc.insecure_channel(f"127.0.0.1:{port}") as channel,
    ):
        stub = resource_pb2_grpc.ResourceServiceStub(channel)
        started = time.monotonic()
        code, details = _code(
            lambda: stub.GetProtectedResource(
                resource_pb2.GetProtectedResourceRequest(),
                metadata=bearer(auth.forge({})),
                timeout=10,
            )
        )
        assert (code, details) == (grpc.StatusCode.UNAVAILABLE, "signing keys unavailable")
        assert time.monotonic() - started < 5
        # The public method still answers: only token checks depend on the keys.
        assert stub.GetPublicInfo(resource_pb2.GetPublicInfoRequest(), timeout=10).issuer
