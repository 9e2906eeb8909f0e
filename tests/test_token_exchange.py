"""The RFC 8693 token-exchange grant, over the Token RPC and /oauth2/token, on real servers."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import jwt
import pytest
from test_oauth_clients import http

from auth_server.clients import ClientStore
from auth_server.token_exchange import ACCESS_TOKEN_TYPE, TOKEN_EXCHANGE
from helpers import AuthHarness, EventLoopThread, make_config, start_harness
from protos import auth_pb2

SERVICE_A = "service-a"
SERVICE_B = "service-b"
SERVICE_C = "service-c"
PASSWORD = "correct horse battery"


@pytest.fixture
def auth(loop_thread: EventLoopThread, tmp_path: Path, database_url: str) -> Iterator[AuthHarness]:
    config = make_config(tmp_path, database_url, additional_audiences=(SERVICE_A,))
    harness = start_harness(loop_thread, config)
    yield harness
    harness.channel.close()
    harness.stop()


class World:
    """Alice, service A (may exchange to B, capped to resource.read) and its secret."""

    def __init__(self, auth: AuthHarness) -> None:
        self.auth = auth
        self.store: ClientStore = auth.server.components.client_side.clients
        self.alice_id = auth.add_user("alice", PASSWORD, ("resource.read", "resource.write"))
        _, secret = self.store.add(
            SERVICE_A,
            audiences=[SERVICE_B],
            secret=True,
            exchange_audiences=[f"{SERVICE_B}=resource.read,orders.read"],
        )
        assert secret is not None
        self.secret_a = secret
        self.login = auth.stub.Login(
            auth_pb2.LoginRequest(username="alice", password=PASSWORD, audience=SERVICE_A),
            timeout=10,
        )

    def exchange(self, **fields: Any) -> auth_pb2.TokenResponse:
        request: dict[str, Any] = {
            "grant_type": TOKEN_EXCHANGE,
            "subject_token": self.login.access_token,
            "subject_token_type": ACCESS_TOKEN_TYPE,
            "audience": SERVICE_B,
            "client_id": SERVICE_A,
            "client_secret": self.secret_a,
        }
        request.update(fields)
        return self.auth.stub.Token(auth_pb2.TokenRequest(**request), timeout=10)

    def refused(self, **fields: Any) -> tuple[grpc.StatusCode, str]:
        with pytest.raises(grpc.RpcError) as info:
            self.exchange(**fields)
        call: Any = info.value
        return call.code(), dict(call.trailing_metadata())["oauth-error"]


def claims_of(token: str) -> dict[str, Any]:
    return dict(jwt.decode(token, options={"verify_signature": False}))


def test_exchange_names_the_user_the_target_and_the_actor(auth: AuthHarness) -> None:
    world = World(auth)
    derived = world.exchange()
    subject, claims = claims_of(world.login.access_token), claims_of(derived.access_token)
    assert claims["sub"] == world.alice_id and claims["username"] == "alice"
    assert claims["aud"] == SERVICE_B
    assert claims["act"] == {"sub": SERVICE_A}
    assert claims["sid"] == subject["sid"]
    assert claims["exp"] <= subject["exp"]
    # The cap (resource.read, orders.read) ∩ the subject's scopes.
    assert claims["scope"] == "resource.read" == derived.scope
    assert derived.refresh_token == "" and 0 < derived.expires_in <= 900


def test_exchange_over_http_says_the_issued_token_type(auth: AuthHarness) -> None:
    world = World(auth)
    status, headers, body = http(
        auth,
        "/oauth2/token",
        {
            "grant_type": TOKEN_EXCHANGE,
            "subject_token": world.login.access_token,
            "subject_token_type": ACCESS_TOKEN_TYPE,
            "resource": SERVICE_B,
            "client_id": SERVICE_A,
            "client_secret": world.secret_a,
        },
    )
    assert status == 200, body
    assert body["issued_token_type"] == ACCESS_TOKEN_TYPE
    assert claims_of(body["access_token"])["act"] == {"sub": SERVICE_A}
    assert headers["Cache-Control"] == "no-store"
    status, _, body = http(
        auth,
        "/oauth2/token",
        {
            "grant_type": TOKEN_EXCHANGE,
            "subject_token": world.login.access_token,
            "subject_token_type": ACCESS_TOKEN_TYPE,
            "audience": SERVICE_C,
            "client_id": SERVICE_A,
            "client_secret": world.secret_a,
        },
    )
    assert (status, body["error"]) == (400, "invalid_target")


def _nested(depth: int) -> dict[str, Any]:
    act: dict[str, Any] = {"sub": f"svc-{depth}"}
    for level in range(depth - 1, 0, -1):
        act = {"sub": f"svc-{level}", "act": act}
    return act


REFUSALS = [
    pytest.param(
        lambda w: {"subject_token_type": "urn:ietf:params:oauth:token-type:jwt"},
        (grpc.StatusCode.INVALID_ARGUMENT, "invalid_request"),
        id="subject-token-type",
    ),
    pytest.param(
        lambda w: {"subject_token": ""},
        (grpc.StatusCode.INVALID_ARGUMENT, "invalid_request"),
        id="no-subject-token",
    ),
    pytest.param(
        lambda w: {"client_secret": "ssot_cs_wrong"},
        (grpc.StatusCode.UNAUTHENTICATED, "invalid_client"),
        id="bad-client-secret",
    ),
    pytest.param(
        lambda w: {"subject_token": w.auth.login("alice", PASSWORD).access_token},
        (grpc.StatusCode.UNAUTHENTICATED, "invalid_grant"),
        id="subject-for-another-audience",
    ),
    pytest.param(
        lambda w: {"subject_token": w.forge({"exp": int(time.time()) - 120})},
        (grpc.StatusCode.UNAUTHENTICATED, "invalid_grant"),
        id="subject-expired",
    ),
    pytest.param(
        lambda w: {"subject_token": w.forge({"act": _nested(4)})},
        (grpc.StatusCode.UNAUTHENTICATED, "invalid_grant"),
        id="chain-too-deep",
    ),
    pytest.param(
        lambda w: {"subject_token": "not.a.token"},
        (grpc.StatusCode.UNAUTHENTICATED, "invalid_grant"),
        id="subject-garbage",
    ),
    pytest.param(
        lambda w: {"audience": SERVICE_C},
        (grpc.StatusCode.PERMISSION_DENIED, "invalid_target"),
        id="target-not-allowed",
    ),
    pytest.param(
        lambda w: {"audience": ""},
        (grpc.StatusCode.PERMISSION_DENIED, "invalid_target"),
        id="no-target",
    ),
    pytest.param(
        lambda w: {"scope": "resource.write"},
        (grpc.StatusCode.PERMISSION_DENIED, "invalid_scope"),
        id="scope-beyond-the-cap",
    ),
    pytest.param(
        lambda w: {"scope": "orders.read"},
        (grpc.StatusCode.PERMISSION_DENIED, "invalid_scope"),
        id="scope-beyond-the-subject",
    ),
    pytest.param(
        lambda w: {"requested_token_type": "urn:ietf:params:oauth:token-type:refresh_token"},
        (grpc.StatusCode.INVALID_ARGUMENT, "invalid_request"),
        id="refresh-token-requested",
    ),
]


class ForgingWorld(World):
    def forge(self, changes: dict[str, Any]) -> str:
        """A token signed by the server's key for alice's session and service A."""
        real = claims_of(self.login.access_token)
        base = {k: real[k] for k in ("sub", "sid", "username", "scope", "iat", "exp")}
        base.update(aud=SERVICE_A, nbf=real["iat"], **changes)
        if changes.get("exp", 0) < time.time():
            base["iat"] = base["nbf"] = int(time.time()) - 600
        return self.auth.forge(base)


@pytest.mark.parametrize(("changes", "expected"), REFUSALS)
def test_each_refusal_has_its_rfc_error_and_the_honest_exchange_passes_after(
    auth: AuthHarness, changes: Any, expected: tuple[grpc.StatusCode, str]
) -> None:
    world = ForgingWorld(auth)
    assert world.refused(**changes(world)) == expected
    assert claims_of(world.exchange().access_token)["act"] == {"sub": SERVICE_A}


def test_a_chain_of_depth_four_passes_and_nests_act(auth: AuthHarness) -> None:
    world = ForgingWorld(auth)
    three = world.forge({"act": _nested(3)})
    claims = claims_of(world.exchange(subject_token=three).access_token)
    assert claims["act"] == {"sub": SERVICE_A, "act": _nested(3)}


def test_exchanging_an_exchanged_token_nests_the_earlier_actor(auth: AuthHarness) -> None:
    world = World(auth)
    _, secret_b = world.store.add(
        SERVICE_B, audiences=[SERVICE_C], secret=True, exchange_audiences=[SERVICE_C]
    )
    to_b = world.exchange()
    to_c = world.exchange(
        subject_token=to_b.access_token,
        audience=SERVICE_C,
        client_id=SERVICE_B,
        client_secret=secret_b,
    )
    claims = claims_of(to_c.access_token)
    assert claims["act"] == {"sub": SERVICE_B, "act": {"sub": SERVICE_A}}
    assert claims["sub"] == world.alice_id and claims["aud"] == SERVICE_C


def test_a_revoked_session_refuses_the_exchange(auth: AuthHarness) -> None:
    world = World(auth)
    world.exchange()
    auth.logout(world.login.refresh_token)
    assert world.refused() == (grpc.StatusCode.UNAUTHENTICATED, "invalid_grant")


def test_a_service_token_is_a_subject_only_when_the_policy_allows(auth: AuthHarness) -> None:
    world = World(auth)
    _, secret_x = world.store.add("svc-x", audiences=[SERVICE_A], secret=True)
    service_token = auth.stub.Token(
        auth_pb2.TokenRequest(
            grant_type="client_credentials",
            audience=SERVICE_A,
            client_id="svc-x",
            client_secret=secret_x,
        ),
        timeout=10,
    ).access_token
    assert world.refused(subject_token=service_token) == (
        grpc.StatusCode.UNAUTHENTICATED,
        "invalid_grant",
    )
    world.store.set_exchange(SERVICE_A, audiences=[SERVICE_B], services=True)
    claims = claims_of(world.exchange(subject_token=service_token).access_token)
    assert (claims["sub"], claims["client_id"], claims["act"]) == (
        "svc-x",
        "svc-x",
        {"sub": SERVICE_A},
    )
    assert "sid" not in claims
    # A disabled subject client ends its delegations too.
    world.store.set_disabled("svc-x", True)
    assert world.refused(subject_token=service_token)[1] == "invalid_grant"


def test_clients_show_lists_the_exchange_policy(auth: AuthHarness) -> None:
    world = World(auth)
    shown = world.store.require(SERVICE_A).as_json()["token_exchange"]
    assert shown == {
        "audiences": {SERVICE_B: ["orders.read", "resource.read"]},
        "client_credentials_subjects": False,
    }
