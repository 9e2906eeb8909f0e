"""Service identities end to end: the Token RPC and /oauth2/* over real servers on loopback."""

from __future__ import annotations

import base64
import json
import statistics
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp
import grpc
import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from auth_server.client_assertion import ASSERTION_TYPE
from auth_server.clients import ClientStore
from auth_server.jwk import public_jwk
from auth_server.sessions import SessionPolicy
from auth_server.throttle import ThrottlePolicy
from helpers import (
    AUDIENCE,
    ISSUER,
    AuthHarness,
    EventLoopThread,
    bearer,
    make_config,
    running_resource,
    start_harness,
)
from protos import auth_pb2, resource_pb2

ORDERS = "orders-api"


@pytest.fixture(scope="module")
def rsa_key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


@pytest.fixture(scope="module")
def other_key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


@pytest.fixture
def auth(loop_thread: EventLoopThread, tmp_path: Path, database_url: str) -> Iterator[AuthHarness]:
    config = make_config(
        tmp_path,
        database_url,
        additional_audiences=(ORDERS,),
        throttle=ThrottlePolicy(per_user_address=5, per_address=1000),
    )
    harness = start_harness(loop_thread, config)
    yield harness
    harness.channel.close()
    harness.stop()


def clients(auth: AuthHarness) -> ClientStore:
    return auth.server.components.client_side.clients


def add_key_client(auth: AuthHarness, key: Any, name: str = "billing", **kw: Any) -> str:
    jwks = {"keys": [public_jwk(key, "RS256")]}
    kw.setdefault("scopes", ["orders.read", "orders.write"])
    kw.setdefault("audiences", [AUDIENCE, ORDERS])
    clients(auth).add(name, jwks=jwks, **kw)
    return str(jwks["keys"][0]["kid"])


def assertion(key: Any, client_id: str = "billing", *, headers: Any = None, **changes: Any) -> str:
    now = int(time.time())
    claims: dict[str, Any] = {
        "iss": client_id,
        "sub": client_id,
        "aud": ISSUER,
        "iat": now,
        "exp": now + 60,
        "jti": uuid.uuid4().hex,
    }
    claims.update(changes)
    claims = {k: v for k, v in claims.items() if v is not None}
    head = {"kid": public_jwk(key, "RS256")["kid"], **(headers or {})}
    return jwt.encode(claims, key, algorithm="RS256", headers=head)


def grpc_token(auth: AuthHarness, **fields: Any) -> auth_pb2.TokenResponse:
    fields.setdefault("grant_type", "client_credentials")
    return auth.stub.Token(auth_pb2.TokenRequest(**fields), timeout=10)


def grpc_error(auth: AuthHarness, **fields: Any) -> tuple[grpc.StatusCode, str]:
    with pytest.raises(grpc.RpcError) as info:
        grpc_token(auth, **fields)
    call: Any = info.value
    return call.code(), dict(call.trailing_metadata())["oauth-error"]


def by_assertion(token: str) -> dict[str, str]:
    return {"client_assertion_type": ASSERTION_TYPE, "client_assertion": token}


def claims_of(token: str) -> dict[str, Any]:
    return dict(jwt.decode(token, options={"verify_signature": False}))


def http(
    auth: AuthHarness,
    path: str,
    body: str | bytes | dict[str, str] = b"",
    *,
    headers: dict[str, str] | None = None,
    method: str = "POST",
) -> tuple[int, Any, Any]:
    url = auth.server.http_base_url + path
    if isinstance(body, dict):
        body = "&".join(f"{k}={aiohttp.helpers.quote(v, safe='')}" for k, v in body.items())
    hdrs = {"Content-Type": "application/x-www-form-urlencoded", **(headers or {})}

    async def go() -> tuple[int, Any, Any]:
        async with (
            aiohttp.ClientSession() as session,
            session.request(method, url, data=body, headers=hdrs) as response,
        ):
            text = await response.read()
            data = json.loads(text) if text else None
            return response.status, response.headers, data

    return auth.loop_thread.run(go())


def basic(client_id: str, secret: str) -> dict[str, str]:
    raw = base64.b64encode(f"{client_id}:{secret}".encode()).decode()
    return {"Authorization": f"Basic {raw}"}


# -- private_key_jwt ---------------------------------------------------------------------


ATTACKS = [
    pytest.param(lambda k, o: {"aud": ISSUER + "/oauth2/token"}, id="aud-token-endpoint"),
    pytest.param(lambda k, o: {"aud": [ISSUER]}, id="aud-list"),
    pytest.param(lambda k, o: {"aud": "https://other-issuer.example"}, id="aud-other-issuer"),
    pytest.param(lambda k, o: {"exp": int(time.time()) - 120}, id="expired"),
    pytest.param(lambda k, o: {"exp": int(time.time()) + 3600}, id="exp-far-future"),
    pytest.param(lambda k, o: {"exp": None}, id="no-exp"),
    pytest.param(lambda k, o: {"jti": None}, id="no-jti"),
    pytest.param(lambda k, o: {"iss": "someone-else"}, id="iss-not-sub"),
]


@pytest.mark.parametrize("changes", ATTACKS)
def test_bad_assertions_are_invalid_client_and_the_honest_one_still_passes(
    auth: AuthHarness, rsa_key: Any, other_key: Any, changes: Any
) -> None:
    add_key_client(auth, rsa_key)

    code, error = grpc_error(
        auth, **by_assertion(assertion(rsa_key, **changes(rsa_key, other_key)))
    )

    assert (code, error) == (grpc.StatusCode.UNAUTHENTICATED, "invalid_client")
    response = grpc_token(auth, **by_assertion(assertion(rsa_key)))
    assert claims_of(response.access_token)["sub"] == "billing"


def _unsigned(claims: dict[str, Any]) -> str:
    def b64(data: bytes) -> str:
        return base64.urlsafe_b64encode(data).rstrip(b"=").decode()

    header = b64(json.dumps({"alg": "none", "typ": "JWT"}).encode())
    return f"{header}.{b64(json.dumps(claims).encode())}."


def _hs256_with_public_key(key: Any, claims: dict[str, Any]) -> str:
    pem = key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    header = {"alg": "HS256", "kid": public_jwk(key, "RS256")["kid"]}
    # PyJWT refuses a PEM as an HMAC secret, so the MAC is built by hand.
    import hashlib
    import hmac

    def b64(data: bytes) -> str:
        return base64.urlsafe_b64encode(data).rstrip(b"=").decode()

    signing_input = f"{b64(json.dumps(header).encode())}.{b64(json.dumps(claims).encode())}"
    mac = hmac.new(pem, signing_input.encode(), hashlib.sha256).digest()
    return f"{signing_input}.{b64(mac)}"


def test_algorithm_attacks_and_foreign_keys_are_refused(
    auth: AuthHarness, rsa_key: Any, other_key: Any
) -> None:
    kid = add_key_client(auth, rsa_key)
    claims = claims_of(assertion(rsa_key))
    forged = [
        _unsigned(claims),
        _hs256_with_public_key(rsa_key, claims),
        # Another client's key, signed under this client's kid.
        assertion(other_key, headers={"kid": kid}),
        # An access token of this issuer is not an assertion.
        assertion(rsa_key, headers={"typ": "at+jwt"}),
    ]
    for token in forged:
        assert grpc_error(auth, **by_assertion(token))[1] == "invalid_client"
        assert grpc_token(auth, **by_assertion(assertion(rsa_key))).access_token


def test_an_assertion_is_good_once(auth: AuthHarness, rsa_key: Any) -> None:
    add_key_client(auth, rsa_key)
    token = assertion(rsa_key)

    grpc_token(auth, **by_assertion(token))

    assert grpc_error(auth, **by_assertion(token))[1] == "invalid_client"
    # Over HTTP too: the replay store is the database, not the face.
    status, _, body = http(
        auth, "/oauth2/token", {"grant_type": "client_credentials", **by_assertion(token)}
    )
    assert (status, body["error"]) == (401, "invalid_client")


def test_disabled_and_unknown_clients_get_the_same_answer(auth: AuthHarness, rsa_key: Any) -> None:
    add_key_client(auth, rsa_key)
    clients(auth).set_disabled("billing", True)

    assert grpc_error(auth, **by_assertion(assertion(rsa_key)))[1] == "invalid_client"
    assert grpc_error(auth, **by_assertion(assertion(rsa_key, "nobody")))[1] == "invalid_client"
    clients(auth).set_disabled("billing", False)
    assert grpc_token(auth, **by_assertion(assertion(rsa_key))).access_token


def test_client_credentials_token_claims_and_no_refresh_token(
    auth: AuthHarness, rsa_key: Any
) -> None:
    add_key_client(auth, rsa_key)

    response = grpc_token(auth, scope="orders.read", **by_assertion(assertion(rsa_key)))

    claims = claims_of(response.access_token)
    assert claims["sub"] == claims["client_id"] == "billing"
    assert claims["aud"] == AUDIENCE and claims["scope"] == "orders.read"
    assert "sid" not in claims and "username" not in claims
    assert response.refresh_token == "" and response.token_type == "Bearer"
    # Its access token is no refresh token either.
    code, error = grpc_error(auth, grant_type="refresh_token", refresh_token=response.access_token)
    assert (code, error) == (grpc.StatusCode.UNAUTHENTICATED, "invalid_grant")


def test_scope_escalation_and_audience_not_allowed(auth: AuthHarness, rsa_key: Any) -> None:
    add_key_client(auth, rsa_key)

    assert grpc_error(auth, scope="orders.admin", **by_assertion(assertion(rsa_key))) == (
        grpc.StatusCode.PERMISSION_DENIED,
        "invalid_scope",
    )
    assert grpc_error(auth, audience="reports-api", **by_assertion(assertion(rsa_key))) == (
        grpc.StatusCode.PERMISSION_DENIED,
        "invalid_target",
    )
    ok = grpc_token(auth, resource=ORDERS, **by_assertion(assertion(rsa_key)))
    assert claims_of(ok.access_token)["aud"] == ORDERS


def test_two_methods_at_once_and_unknown_grant(auth: AuthHarness, rsa_key: Any) -> None:
    add_key_client(auth, rsa_key)
    both = {"client_id": "billing", "client_secret": "x" * 40, **by_assertion(assertion(rsa_key))}

    assert grpc_error(auth, **both) == (grpc.StatusCode.INVALID_ARGUMENT, "invalid_request")
    assert grpc_error(auth, grant_type="password")[1] == "unsupported_grant_type"
    assert grpc_error(auth, grant_type="")[1] == "invalid_request"


# -- a token for one audience, refused by a service of another ------------------------------


@pytest.mark.parametrize("aio", [False, True])
def test_token_for_orders_is_refused_by_a_service_for_another_audience(
    auth: AuthHarness, loop_thread: EventLoopThread, rsa_key: Any, aio: bool
) -> None:
    add_key_client(auth, rsa_key)
    for_orders = grpc_token(auth, audience=ORDERS, **by_assertion(assertion(rsa_key)))
    for_resource = grpc_token(auth, **by_assertion(assertion(rsa_key)))

    with running_resource(loop_thread, auth, aio=aio) as resource:
        with pytest.raises(grpc.RpcError) as info:
            resource.stub.GetProtectedResource(
                _protected(), metadata=bearer(for_orders.access_token)
            )
        assert info.value.code() == grpc.StatusCode.UNAUTHENTICATED  # type: ignore[attr-defined]
        user = resource.stub.GetProtectedResource(
            _protected(), metadata=bearer(for_resource.access_token)
        ).user
    assert (user.kind, user.client_id, user.user_id) == ("service", "billing", "billing")


def _protected() -> resource_pb2.GetProtectedResourceRequest:
    return resource_pb2.GetProtectedResourceRequest()


# -- client secrets --------------------------------------------------------------------------


def test_secret_over_basic_and_post_and_rotation_overlap(auth: AuthHarness) -> None:
    _, secret = clients(auth).add(
        "cron", scopes=["reports.read"], audiences=[AUDIENCE], secret=True
    )
    assert secret is not None

    status, headers, body = http(
        auth, "/oauth2/token", {"grant_type": "client_credentials"}, headers=basic("cron", secret)
    )
    assert status == 200 and body["token_type"] == "Bearer" and "refresh_token" not in body
    assert headers["Cache-Control"] == "no-store"
    posted = {"grant_type": "client_credentials", "client_id": "cron", "client_secret": secret}
    assert http(auth, "/oauth2/token", posted)[0] == 200

    _, new_secret = clients(auth).rotate_secret("cron", keep_old=3600)
    assert grpc_token(auth, client_id="cron", client_secret=secret).access_token
    assert grpc_token(auth, client_id="cron", client_secret=new_secret).access_token
    clients(auth).rotate_secret("cron")
    assert grpc_error(auth, client_id="cron", client_secret=new_secret)[1] == "invalid_client"


def test_wrong_secret_gets_401_with_www_authenticate(auth: AuthHarness) -> None:
    clients(auth).add("cron", audiences=[AUDIENCE], secret=True)

    status, headers, body = http(
        auth, "/oauth2/token", {"grant_type": "client_credentials"}, headers=basic("cron", "nope")
    )

    assert (status, body["error"]) == (401, "invalid_client")
    assert headers["WWW-Authenticate"].startswith("Basic")


@pytest.mark.slow  # a wall-clock bound
def test_unknown_client_answers_like_a_wrong_secret_in_comparable_time(auth: AuthHarness) -> None:
    clients(auth).add("cron", audiences=[AUDIENCE], secret=True)
    clients(auth).add("other", audiences=[AUDIENCE], secret=True)  # absorbs the throttle
    auth.server.components.client_side.authenticator._throttle.policy = ThrottlePolicy(
        enabled=False
    )

    def timed(client_id: str) -> float:
        start = time.perf_counter()
        assert grpc_error(auth, client_id=client_id, client_secret="ssot_cs_" + "A" * 43) == (
            grpc.StatusCode.UNAUTHENTICATED,
            "invalid_client",
        )
        return time.perf_counter() - start

    timed("cron"), timed("ghost")  # warm up both paths
    known: list[float] = []
    unknown: list[float] = []
    for i in range(30):  # alternate the order, so neither side is always second
        if i % 2:
            known.append(timed("cron"))
            unknown.append(timed("ghost"))
        else:
            unknown.append(timed("ghost"))
            known.append(timed("cron"))
    ratio = statistics.median(known) / statistics.median(unknown)
    assert 0.5 < ratio < 2, ratio


def test_secret_brute_force_is_throttled_then_the_honest_client_still_passes_elsewhere(
    auth: AuthHarness,
) -> None:
    _, secret = clients(auth).add("cron", audiences=[AUDIENCE], secret=True)
    for _ in range(5):
        assert grpc_error(auth, client_id="cron", client_secret="wrong")[1] == "invalid_client"

    with pytest.raises(grpc.RpcError) as info:
        grpc_token(auth, client_id="cron", client_secret=secret)
    call: Any = info.value
    trailers = dict(call.trailing_metadata())
    assert call.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert trailers["oauth-error"] == "temporarily_unavailable" and int(trailers["retry-after"]) > 0
    status, headers, body = http(
        auth, "/oauth2/token", {"grant_type": "client_credentials"}, headers=basic("cron", secret)
    )
    assert status == 429 and int(headers["Retry-After"]) > 0
    assert body["error"] == "temporarily_unavailable"
    # Throttled per client and address: another client from this address still gets in.
    _, other = clients(auth).add("other", audiences=[AUDIENCE], secret=True)
    assert grpc_token(auth, client_id="other", client_secret=other).access_token


# -- HTTP input handling ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("body", "headers", "status", "error"),
    [
        pytest.param(
            b"grant_type=client_credentials",
            {"Content-Type": "application/json"},
            400,
            "invalid_request",
            id="content-type",
        ),
        pytest.param(
            b"grant_type=client_credentials&grant_type=refresh_token",
            {},
            400,
            "invalid_request",
            id="duplicate",
        ),
        pytest.param(b"grant_type=magic", {}, 400, "unsupported_grant_type", id="unknown-grant"),
        pytest.param(
            b"grant_type=password&username=a&password=b",
            {},
            400,
            "unsupported_grant_type",
            id="password-grant",
        ),
        pytest.param(b"a=" + b"x" * 20000, {}, 413, "invalid_request", id="oversized"),
        pytest.param(b"grant_type=%ff", {}, 400, "invalid_request", id="bad-utf8"),
        pytest.param(
            b"grant_type=client_credentials",
            {"Authorization": "Bearer x"},
            400,
            "invalid_request",
            id="bearer-auth",
        ),
        pytest.param(
            b"grant_type=client_credentials",
            {"Authorization": "Basic !!!"},
            400,
            "invalid_request",
            id="bad-basic",
        ),
    ],
)
def test_bad_http_input_gets_an_rfc_error(
    auth: AuthHarness, body: bytes, headers: dict[str, str], status: int, error: str
) -> None:
    _, secret = clients(auth).add("cron", audiences=[AUDIENCE], secret=True)

    got_status, got_headers, got = http(auth, "/oauth2/token", body, headers=headers)

    assert (got_status, got["error"]) == (status, error)
    assert got_headers["Content-Type"].startswith("application/json")
    ok = http(
        auth, "/oauth2/token", {"grant_type": "client_credentials"}, headers=basic("cron", secret)
    )
    assert ok[0] == 200


def test_basic_plus_body_secret_is_two_methods_and_get_is_405(auth: AuthHarness) -> None:
    _, secret = clients(auth).add("cron", audiences=[AUDIENCE], secret=True)
    assert secret is not None
    body = {"grant_type": "client_credentials", "client_secret": secret}

    status, _, got = http(auth, "/oauth2/token", body, headers=basic("cron", secret))
    assert (status, got["error"]) == (400, "invalid_request")
    status, headers, got = http(auth, "/oauth2/token", method="GET")
    assert status == 405 and headers["Allow"] == "POST"


def test_discovery_lists_the_oauth_endpoints(auth: AuthHarness) -> None:
    for path in ("/.well-known/oauth-authorization-server", "/.well-known/openid-configuration"):
        status, _, doc = http(auth, path, method="GET")
        assert status == 200
        assert doc["issuer"] == ISSUER
        assert doc["token_endpoint"] == ISSUER + "/oauth2/token"
        assert doc["revocation_endpoint"] == ISSUER + "/oauth2/revoke"
        assert doc["introspection_endpoint"] == ISSUER + "/oauth2/introspect"
        assert doc["grant_types_supported"] == [
            "client_credentials",
            "refresh_token",
            "urn:ietf:params:oauth:grant-type:token-exchange",
        ]
        assert "private_key_jwt" in doc["token_endpoint_auth_methods_supported"]
        assert "HS256" not in doc["token_endpoint_auth_signing_alg_values_supported"]


# -- refresh, revocation, introspection ----------------------------------------------------


@pytest.mark.slow  # a wall-clock bound
def test_http_refresh_and_revoke_pushes_to_verifiers_within_a_second(
    auth: AuthHarness, loop_thread: EventLoopThread
) -> None:
    auth.add_user("alice", "correct horse battery", ("resource.read",))
    login = auth.login("alice", "correct horse battery")
    status, _, refreshed = http(
        auth, "/oauth2/token", {"grant_type": "refresh_token", "refresh_token": login.refresh_token}
    )
    assert status == 200 and refreshed["refresh_token"]

    with running_resource(loop_thread, auth, aio=True, push=True) as resource:
        metadata = bearer(refreshed["access_token"])
        resource.stub.GetProtectedResource(_protected(), metadata=metadata)
        status, _, _ = http(auth, "/oauth2/revoke", {"token": refreshed["refresh_token"]})
        assert status == 200
        deadline = time.monotonic() + 1.0
        while True:
            try:
                resource.stub.GetProtectedResource(_protected(), metadata=metadata)
            except grpc.RpcError as exc:
                assert exc.code() == grpc.StatusCode.UNAUTHENTICATED  # type: ignore[attr-defined]
                break
            assert time.monotonic() < deadline, "revocation not pushed within 1 s"
            time.sleep(0.02)
    # Unknown tokens are no error (RFC 7009 §2.2).
    assert http(auth, "/oauth2/revoke", {"token": "not-a-token"})[0] == 200


def test_introspection_needs_the_scope_and_reveals_nothing_for_inactive_tokens(
    auth: AuthHarness, rsa_key: Any
) -> None:
    add_key_client(auth, rsa_key)
    _, gateway = clients(auth).add(
        "gateway", scopes=["ssot.introspect"], audiences=[AUDIENCE], secret=True
    )
    _, plain = clients(auth).add("plain", audiences=[AUDIENCE], secret=True)
    token = grpc_token(auth, **by_assertion(assertion(rsa_key))).access_token
    assert gateway is not None and plain is not None

    status, _, body = http(
        auth, "/oauth2/introspect", {"token": token}, headers=basic("gateway", gateway)
    )
    assert status == 200 and body["active"] is True
    assert body["client_id"] == body["sub"] == "billing" and body["aud"] == AUDIENCE
    status, _, body = http(
        auth, "/oauth2/introspect", {"token": "garbage"}, headers=basic("gateway", gateway)
    )
    assert (status, body) == (200, {"active": False})
    status, _, body = http(
        auth, "/oauth2/introspect", {"token": token}, headers=basic("plain", plain)
    )
    assert status == 403
    assert http(auth, "/oauth2/introspect", {"token": token})[0] == 401
    clients(auth).set_disabled("billing", True)
    status, _, body = http(
        auth, "/oauth2/introspect", {"token": token}, headers=basic("gateway", gateway)
    )
    assert body == {"active": False}


def test_introspection_follows_watermarks_as_verifiers_do(auth: AuthHarness) -> None:
    # `sessions revoke --all` is one "issued before T" entry, not a list of sessions.
    _, gateway = clients(auth).add(
        "gateway", scopes=["ssot.introspect"], audiences=[AUDIENCE], secret=True
    )
    assert gateway is not None
    auth.add_user("alice", "correct horse battery", ("resource.read",))
    token = auth.login("alice", "correct horse battery").access_token

    def active() -> bool:
        status, _, body = http(
            auth, "/oauth2/introspect", {"token": token}, headers=basic("gateway", gateway)
        )
        assert status == 200
        return bool(body["active"])

    assert active()
    time.sleep(1.1)  # iat has whole seconds: the watermark must lie after it
    auth.server.components.sessions.revocations.revoke_all()
    auth.loop_thread.run(auth.server.revocations.refresh())
    assert not active()


# -- user logins and audiences ---------------------------------------------------------------


def test_login_may_ask_for_a_configured_audience_and_refresh_keeps_it(auth: AuthHarness) -> None:
    auth.add_user("alice", "correct horse battery", ("resource.read",))

    response = auth.stub.Login(
        auth_pb2.LoginRequest(username="alice", password="correct horse battery", audience=ORDERS),
        timeout=10,
    )
    assert claims_of(response.access_token)["aud"] == ORDERS
    assert "client_id" not in claims_of(response.access_token)
    refreshed = auth.refresh(response.refresh_token)
    assert claims_of(refreshed.access_token)["aud"] == ORDERS
    with pytest.raises(grpc.RpcError) as info:
        auth.stub.Login(
            auth_pb2.LoginRequest(
                username="alice", password="correct horse battery", audience="reports-api"
            ),
            timeout=10,
        )
    call: Any = info.value
    assert call.code() == grpc.StatusCode.PERMISSION_DENIED
    assert dict(call.trailing_metadata())["oauth-error"] == "invalid_target"


def test_a_refused_refresh_spends_nothing(loop_thread: EventLoopThread, tmp_path: Path) -> None:
    # No grace window: had a refused request spent the token, the honest retry
    # would be a reuse and revoke the session.
    config = make_config(
        tmp_path, additional_audiences=(ORDERS,), sessions=SessionPolicy(refresh_grace=0)
    )
    auth = start_harness(loop_thread, config)
    try:
        auth.add_user("alice", "correct horse battery", ("resource.read", "resource.write"))
        login = auth.stub.Login(
            auth_pb2.LoginRequest(
                username="alice",
                password="correct horse battery",
                scope="resource.read",
                audience=ORDERS,
            ),
            timeout=10,
        )
        token = login.refresh_token
        refused = [
            ({"audience": AUDIENCE}, "invalid_target"),  # configured, but not the session's
            ({"resource": "reports-api"}, "invalid_target"),  # not configured at all
            ({"scope": "resource.write"}, "invalid_scope"),  # held, but not granted at login
        ]
        for extra, error in refused:
            fields = {"grant_type": "refresh_token", "refresh_token": token, **extra}
            assert grpc_error(auth, **fields)[1] == error, extra
            status, _, body = http(auth, "/oauth2/token", fields)
            assert (status, body["error"]) == (400, error), extra

        honest = grpc_token(auth, grant_type="refresh_token", refresh_token=token, audience=ORDERS)
        assert claims_of(honest.access_token)["aud"] == ORDERS
        # A spent token is a reuse whatever else it asks for: the session ends.
        fields = {"grant_type": "refresh_token", "refresh_token": token, "audience": AUDIENCE}
        assert grpc_error(auth, **fields)[1] == "invalid_grant"
        successor = {"grant_type": "refresh_token", "refresh_token": honest.refresh_token}
        assert grpc_error(auth, **successor)[1] == "invalid_grant"
    finally:
        auth.channel.close()
        auth.stop()


def test_es256_client_key_works_and_its_alg_comes_from_the_key(auth: AuthHarness) -> None:
    key = ec.generate_private_key(ec.SECP256R1())
    jwk = public_jwk(key, "ES256")
    clients(auth).add("edge", audiences=[AUDIENCE], jwks={"keys": [jwk]})
    now = int(time.time())
    claims = {"iss": "edge", "sub": "edge", "aud": ISSUER, "exp": now + 60, "jti": uuid.uuid4().hex}

    good = jwt.encode(claims, key, algorithm="ES256", headers={"kid": jwk["kid"]})
    assert grpc_token(auth, **by_assertion(good)).access_token
    claims["jti"] = uuid.uuid4().hex
    _, payload, signature = jwt.encode(claims, key, algorithm="ES256").split(".")
    for alg in ("RS256", "ES384", "HS256", "none"):
        header = base64.urlsafe_b64encode(
            json.dumps({"alg": alg, "kid": jwk["kid"]}).encode()
        ).rstrip(b"=")
        forged = f"{header.decode()}.{payload}.{signature}"
        assert grpc_error(auth, **by_assertion(forged))[1] == "invalid_client"
