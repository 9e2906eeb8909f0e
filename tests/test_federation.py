"""Signing in with an upstream ID token (RFC 8693, id_token subject), against crafted providers.

The providers here are real loopback HTTP servers serving discovery and a JWKS
of keys the test holds (``fake_idp``), so every attack a real provider would
never sign can be made; each refusal is followed by the honest token passing.
The real-provider end-to-end test (device flow) is ``test_federation_device``.
"""

from __future__ import annotations

import base64
import json
import logging
import time
import urllib.parse
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import jwt
import pytest
from fake_idp import FakeProvider, new_rsa_key, serve_provider

from auth_server.federation import ID_TOKEN_TYPE
from auth_server.identities import IdentityStore
from auth_server.idps import IdpStore
from auth_server.throttle import ThrottlePolicy
from auth_server.token_exchange import ACCESS_TOKEN_TYPE, TOKEN_EXCHANGE
from helpers import (
    AUDIENCE,
    ISSUER,
    AuthHarness,
    EventLoopThread,
    make_config,
    protected_call,
    running_resource,
    start_harness,
    wait_until,
)
from protos import auth_pb2


class World:
    """A running auth service that trusts provider ``corp``; ``other`` is a second provider."""

    def __init__(self, auth: AuthHarness, corp: FakeProvider, other: FakeProvider) -> None:
        self.auth = auth
        self.corp = corp
        self.other = other
        database = auth.server.components.database
        self.idps = IdpStore(database)
        self.identities = IdentityStore(database, auth.server.components.users)
        self.idps.add(
            "corp",
            issuer=corp.issuer,
            client_id=corp.client_id,
            default_scopes=["resource.read"],
        )

    def sign_in(self, id_token: str, **fields: Any) -> auth_pb2.TokenResponse:
        request = {
            "grant_type": TOKEN_EXCHANGE,
            "subject_token": id_token,
            "subject_token_type": ID_TOKEN_TYPE,
            **fields,
        }
        return self.auth.stub.Token(auth_pb2.TokenRequest(**request), timeout=10)

    def refused(self, id_token: str, **fields: Any) -> tuple[grpc.StatusCode, str]:
        with pytest.raises(grpc.RpcError) as info:
            self.sign_in(id_token, **fields)
        call: Any = info.value
        return call.code(), dict(call.trailing_metadata()).get("oauth-error", "")

    def honest(self, **changes: Any) -> dict[str, Any]:
        """The honest token passes; the claims of our access token."""
        response = self.sign_in(self.corp.id_token(**changes))
        assert response.refresh_token
        return claims_of(response.access_token)


def claims_of(token: str) -> dict[str, Any]:
    return dict(jwt.decode(token, options={"verify_signature": False}))


@pytest.fixture
def world(loop_thread: EventLoopThread, tmp_path: Path, database_url: str) -> Iterator[World]:
    with serve_provider(loop_thread) as corp, serve_provider(loop_thread) as other:
        harness = start_harness(loop_thread, make_config(tmp_path, database_url))
        try:
            yield World(harness, corp, other)
        finally:
            harness.channel.close()
            harness.stop()


def test_an_id_token_becomes_our_session(world: World) -> None:
    ours = world.honest()
    # Our issuer, our audience, our key; the user was created at first sign-in.
    assert ours["iss"] == ISSUER
    assert ours["aud"] == AUDIENCE
    assert ours["username"] == "alice"
    assert ours["scope"] == "resource.read"
    identity = world.identities.find("corp", "u-1001")
    assert identity is not None and identity.user_id == ours["sub"]
    assert identity.email == "alice@example.com"
    # The second sign-in is the same user, not a new one.
    assert world.honest()["sub"] == ours["sub"]


def test_the_session_refreshes_rotates_and_logs_out(world: World) -> None:
    first = world.sign_in(world.corp.id_token())
    second = world.auth.refresh(first.refresh_token)
    assert second.refresh_token != first.refresh_token
    assert claims_of(second.access_token)["sid"] == claims_of(first.access_token)["sid"]
    world.auth.logout(second.refresh_token)
    with pytest.raises(grpc.RpcError) as info:
        world.auth.refresh(second.refresh_token)
    assert info.value.code() == grpc.StatusCode.UNAUTHENTICATED  # type: ignore[attr-defined]


def _hs256_with_public_key(world: World) -> str:
    return world.corp.unsigned("HS256", world.corp.public_pem())


def _alg_none(world: World) -> str:
    return world.corp.unsigned("none")


def _foreign_key(world: World) -> str:
    return world.corp.id_token(key=new_rsa_key(), kid="not-in-the-jwks")


def _foreign_key_known_kid(world: World) -> str:
    return world.corp.id_token(key=new_rsa_key())  # the JWKS's kid, another key


def _tampered(world: World) -> str:
    header, _, signature = world.corp.id_token().split(".")
    payload = world.corp.claims(sub="u-admin")
    body = base64.urlsafe_b64encode(json.dumps(payload).encode()).rstrip(b"=").decode()
    return f"{header}.{body}.{signature}"


def _unconfigured_issuer(world: World) -> str:
    return world.other.id_token(aud=world.corp.client_id)


def _another_client(world: World) -> str:
    return world.corp.id_token(aud="someone-else")


def _several_audiences_without_azp(world: World) -> str:
    return world.corp.id_token(aud=[world.corp.client_id, "someone-else"])


def _expired(world: World) -> str:
    now = int(time.time())
    return world.corp.id_token(iat=now - 200, exp=now - 100)


def _too_old(world: World) -> str:
    now = int(time.time())
    return world.corp.id_token(iat=now - 900, exp=now + 300)


def _issued_in_the_future(world: World) -> str:
    now = int(time.time())
    return world.corp.id_token(iat=now + 600, exp=now + 900)


def _an_access_token_type(world: World) -> str:
    return world.corp.id_token(header={"typ": "at+jwt"})


REFUSED = [
    pytest.param(_unconfigured_issuer, "no provider has this issuer", id="unconfigured-issuer"),
    pytest.param(_another_client, "aud does not hold our client id", id="another-client-id"),
    pytest.param(_several_audiences_without_azp, "azp", id="several-audiences-no-azp"),
    pytest.param(_expired, "expired", id="expired"),
    pytest.param(_too_old, "iat too old", id="iat-too-old"),
    pytest.param(_issued_in_the_future, "in the future", id="iat-in-the-future"),
    pytest.param(_alg_none, "not allowed", id="alg-none"),
    pytest.param(_hs256_with_public_key, "not allowed", id="hs256-keyed-with-public-key"),
    pytest.param(_foreign_key, "key:", id="key-not-in-jwks"),
    pytest.param(_foreign_key_known_kid, "bad signature", id="other-key-same-kid"),
    pytest.param(_tampered, "bad signature", id="tampered-claim"),
    pytest.param(_an_access_token_type, "typ", id="typ-at+jwt"),
]


@pytest.mark.parametrize(("make", "reason"), REFUSED)
def test_a_bad_id_token_is_refused_and_the_honest_one_passes(
    world: World, make: Any, reason: str, caplog: pytest.LogCaptureFixture
) -> None:
    token = make(world)
    with caplog.at_level(logging.INFO, logger="auth_server.federation"):
        code, error = world.refused(token)
    assert (code, error) == (grpc.StatusCode.UNAUTHENTICATED, "invalid_grant")
    # Refused for the reason the case is about, and the token is never logged.
    logged = [r.getMessage() for r in caplog.records if "ID token refused" in r.getMessage()]
    assert len(logged) == 1 and reason in logged[0], logged
    assert token not in caplog.text
    world.honest()


def test_several_audiences_pass_with_our_azp(world: World) -> None:
    token = world.corp.id_token(aud=[world.corp.client_id, "other"], azp="other")
    assert world.refused(token)[1] == "invalid_grant"
    world.sign_in(
        world.corp.id_token(aud=[world.corp.client_id, "other"], azp=world.corp.client_id)
    )


def test_a_disabled_provider_is_refused_and_its_sessions_end(
    loop_thread: EventLoopThread, world: World
) -> None:
    live = world.sign_in(world.corp.id_token())
    with running_resource(loop_thread, world.auth, aio=True, push=True) as resource:
        assert protected_call(resource.channel, live.access_token) == grpc.StatusCode.OK
        world.idps.set_disabled("corp", True)
        # Push verifiers hear of the ended sessions at once, as for `users disable`.
        assert wait_until(
            lambda: (
                protected_call(resource.channel, live.access_token)
                == grpc.StatusCode.UNAUTHENTICATED
            ),
            timeout=1.0,
        )
    assert world.refused(world.corp.id_token())[1] == "invalid_grant"
    with pytest.raises(grpc.RpcError):
        world.auth.refresh(live.refresh_token)
    world.idps.set_disabled("corp", False)
    world.honest()


def test_a_disabled_user_is_refused_and_its_sessions_end(world: World) -> None:
    live = world.sign_in(world.corp.id_token())
    users = world.auth.server.components.users
    users.disable("alice")
    assert world.refused(world.corp.id_token())[1] == "invalid_grant"
    with pytest.raises(grpc.RpcError):
        world.auth.refresh(live.refresh_token)
    users.enable("alice")
    world.honest()


def test_the_domain_rule_needs_a_verified_address_of_an_allowed_domain(
    loop_thread: EventLoopThread, world: World
) -> None:
    with serve_provider(loop_thread) as strict:
        world.idps.add(
            "strict",
            issuer=strict.issuer,
            client_id=strict.client_id,
            allowed_domains=["corp.test"],
        )
        # Not an allowed domain; an allowed one but unverified; verified as the string "true".
        for changes in (
            {"email": "mallory@evil.test"},
            {"email": "mallory@corp.test", "email_verified": False},
            {"email": "mallory@corp.test", "email_verified": "true"},
        ):
            assert world.refused(strict.id_token(**changes))[1] == "invalid_grant", changes
        world.sign_in(strict.id_token(email="bob@CORP.test".lower(), preferred_username="bob"))


def test_the_same_email_from_a_second_provider_is_a_new_identity(
    loop_thread: EventLoopThread, world: World
) -> None:
    alice = world.honest()
    with serve_provider(loop_thread) as second:
        world.idps.add("second", issuer=second.issuer, client_id=second.client_id)
        # Same e-mail, same username claim, even the same sub: a different person here.
        other = claims_of(world.sign_in(second.id_token()).access_token)
        assert other["sub"] != alice["sub"]
        assert other["username"] == "second.alice"
        # Linking is the operator's explicit act: then that subject is alice.
        world.identities.link("alice", "second", "u-2002")
        linked = claims_of(world.sign_in(second.id_token(sub="u-2002")).access_token)
        assert linked["sub"] == alice["sub"]


def test_the_exchange_over_http_names_the_issued_token_type(world: World) -> None:
    base = world.auth.server.http_base_url
    with urllib.request.urlopen(base + "/.well-known/openid-configuration", timeout=5) as r:
        discovery = json.load(r)
    assert ID_TOKEN_TYPE in discovery["ssot_subject_token_types_supported"]
    form = urllib.parse.urlencode(
        {
            "grant_type": TOKEN_EXCHANGE,
            "subject_token": world.corp.id_token(),
            "subject_token_type": ID_TOKEN_TYPE,
        }
    ).encode()
    with urllib.request.urlopen(base + "/oauth2/token", data=form, timeout=10) as r:
        body = json.load(r)
    assert body["issued_token_type"] == ACCESS_TOKEN_TYPE
    assert body["refresh_token"] and body["token_type"] == "Bearer"


def test_logout_reaches_a_push_verifier_within_a_second(
    loop_thread: EventLoopThread, world: World
) -> None:
    grant = world.sign_in(world.corp.id_token())
    with running_resource(loop_thread, world.auth, aio=False, push=True) as resource:
        assert protected_call(resource.channel, grant.access_token) == grpc.StatusCode.OK
        world.auth.logout(grant.refresh_token)
        started = time.monotonic()
        assert wait_until(
            lambda: (
                protected_call(resource.channel, grant.access_token)
                == grpc.StatusCode.UNAUTHENTICATED
            ),
            timeout=1.0,
        )
        assert time.monotonic() - started < 1.0


def test_failed_sign_ins_are_throttled_per_address(
    loop_thread: EventLoopThread, tmp_path: Path
) -> None:
    policy = ThrottlePolicy(per_user_address=3, per_address=3, per_user=3)
    with serve_provider(loop_thread) as corp, serve_provider(loop_thread) as other:
        harness = start_harness(loop_thread, make_config(tmp_path, throttle=policy))
        try:
            world = World(harness, corp, other)
            for _ in range(3):
                assert (
                    world.refused(corp.id_token(aud="nope"))[0] == grpc.StatusCode.UNAUTHENTICATED
                )
            code, error = world.refused(corp.id_token())
            assert (code, error) == (grpc.StatusCode.RESOURCE_EXHAUSTED, "temporarily_unavailable")
        finally:
            harness.channel.close()
            harness.stop()


def test_an_email_names_a_new_user_only_once_verified(
    loop_thread: EventLoopThread, world: World
) -> None:
    with serve_provider(loop_thread) as mail:
        world.idps.add("mail", issuer=mail.issuer, client_id=mail.client_id, username_claim="email")
        unverified = mail.id_token(sub="m-1", email="carol@example.com", email_verified=False)
        named = claims_of(world.sign_in(unverified).access_token)["username"]
        assert named.startswith("mail.") and "carol" not in named
        verified = mail.id_token(sub="m-2", email="dan@example.com")
        assert claims_of(world.sign_in(verified).access_token)["username"] == "dan@example.com"
