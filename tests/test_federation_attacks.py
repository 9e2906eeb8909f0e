"""An attacker's review of the id_token sign-in grant (issue 16), through the public surface.

Real auth service and crafted providers on loopback (``fake_idp``), the ``Token``
RPC and ``POST /oauth2/token``. Each attack is refused as ``invalid_grant`` (or a
retryable ``temporarily_unavailable`` when a provider cannot be read), and the
honest token still passes afterwards. ``test_federation`` has the basic cases
(alg, key, aud, exp, iat, typ); these are the ones across providers, issuers,
e-mail domains, usernames, headers and discovery documents.
"""

from __future__ import annotations

import contextlib
import json
import logging
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from aiohttp import web
from fake_idp import FakeProvider, b64, new_rsa_key, serve_provider
from test_federation import World, claims_of

from auth_server.__main__ import main
from auth_server.federation import ID_TOKEN_TYPE
from auth_server.throttle import ThrottlePolicy
from auth_server.token_exchange import TOKEN_EXCHANGE
from helpers import (
    AUDIENCE,
    ISSUER,
    PASSPHRASE,
    EventLoopThread,
    make_config,
    protected_call,
    run_cli,
    running_resource,
    start_harness,
    wait_until,
)


@pytest.fixture
def world(loop_thread: EventLoopThread, tmp_path: Path) -> Iterator[World]:
    with serve_provider(loop_thread) as corp, serve_provider(loop_thread) as other:
        harness = start_harness(loop_thread, make_config(tmp_path))
        try:
            yield World(harness, corp, other)
        finally:
            harness.channel.close()
            harness.stop()


def _refused_for(world: World, token: str, reason: str, caplog: pytest.LogCaptureFixture) -> None:
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="auth_server.federation"):
        assert world.refused(token) == (grpc.StatusCode.UNAUTHENTICATED, "invalid_grant")
    logged = [r.getMessage() for r in caplog.records if "ID token refused" in r.getMessage()]
    assert len(logged) == 1 and reason in logged[0], logged
    assert token not in caplog.text


def _signed_raw(provider: FakeProvider, header: str, payload: str) -> str:
    """A JWS over exactly these JSON texts, signed RS256 with the provider's key."""
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.asymmetric import padding

    signing_input = f"{b64(header.encode())}.{b64(payload.encode())}"
    signature = provider.key.sign(signing_input.encode(), padding.PKCS1v15(), hashes.SHA256())
    return f"{signing_input}.{b64(signature)}"


# -- across providers -------------------------------------------------------------------------


def test_one_providers_token_never_passes_as_anothers(
    world: World, caplog: pytest.LogCaptureFixture
) -> None:
    world.idps.add("other", issuer=world.other.issuer, client_id=world.other.client_id)
    world.honest()  # corp's keys are cached now
    world.sign_in(world.other.id_token())  # and other's
    # other's key, naming corp as issuer: under corp's kid, or under other's own kid.
    _refused_for(
        world,
        world.other.id_token(iss=world.corp.issuer, kid=world.corp.kid),
        "bad signature",
        caplog,
    )
    _refused_for(world, world.other.id_token(iss=world.corp.issuer), "key:", caplog)
    # corp's key naming other as issuer (its kid is not in other's JWKS).
    _refused_for(world, world.corp.id_token(iss=world.other.issuer), "key:", caplog)
    world.honest()


def test_a_kid_both_providers_publish_selects_each_issuers_own_key(
    loop_thread: EventLoopThread, world: World, caplog: pytest.LogCaptureFixture
) -> None:
    # "twin" publishes its own key under corp's kid: a kid is only a name within one JWKS.
    twin = FakeProvider(client_id=world.corp.client_id)
    with serving(loop_thread, twin, jwks=lambda: {"keys": [{**twin.jwk, "kid": world.corp.kid}]}):
        world.idps.add("twin", issuer=twin.issuer, client_id=twin.client_id)
        world.honest()
        # twin's key under the shared kid, naming corp: corp's key is used, and it does not match.
        forged = twin.id_token(iss=world.corp.issuer, kid=world.corp.kid, sub="u-1001")
        _refused_for(world, forged, "bad signature", caplog)
        # twin's honest token under the shared kid: twin's key, a different user from corp's alice.
        own = claims_of(world.sign_in(twin.id_token(kid=world.corp.kid)).access_token)
        assert own["sub"] != world.honest()["sub"]


@pytest.mark.parametrize(
    "spell",
    [
        pytest.param(lambda i: i + "/", id="trailing-slash"),
        pytest.param(lambda i: i.upper(), id="upper-case"),
        pytest.param(lambda i: i.replace("http://", "HTTP://"), id="scheme-case"),
        pytest.param(lambda i: i.replace("127.0.0.1", "localhost"), id="other-host-name"),
        pytest.param(lambda i: i + " ", id="trailing-space"),
        pytest.param(lambda i: i + "\x00", id="trailing-nul"),
    ],
)
def test_an_issuer_spelled_differently_is_not_the_provider(
    world: World, spell: Any, caplog: pytest.LogCaptureFixture
) -> None:
    _refused_for(
        world,
        world.corp.id_token(iss=spell(world.corp.issuer)),
        "no provider has this issuer",
        caplog,
    )
    world.honest()


def test_our_own_tokens_are_no_id_tokens_even_if_our_issuer_is_a_provider(
    world: World, caplog: pytest.LogCaptureFixture
) -> None:
    grant = world.sign_in(world.corp.id_token())
    _refused_for(world, grant.access_token, "typ", caplog)
    # An operator registers our own issuer with our audience as "client id": our
    # access tokens (typ at+jwt) still do not parse as ID tokens; refresh tokens are opaque.
    world.idps.add("self", issuer=ISSUER, client_id=AUDIENCE)
    _refused_for(world, grant.access_token, "typ", caplog)
    _refused_for(world, grant.refresh_token, "malformed", caplog)
    world.honest()


# -- claims ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("changes", "reason"),
    [
        pytest.param(
            {"aud": ["someone-else", "ssot-test-client"], "azp": "someone-else"},
            "azp",
            id="azp-of-another-client",
        ),
        pytest.param({"aud": "someone-else", "azp": "ssot-test-client"}, "aud", id="azp-only"),
        pytest.param({"aud": "ssot-test-client", "azp": "someone-else"}, "azp", id="azp-mismatch"),
        pytest.param({"aud": []}, "aud", id="aud-empty"),
        pytest.param({"aud": ["ssot-test-client", 7]}, "aud", id="aud-not-strings"),
        pytest.param({"aud": {"ssot-test-client": True}}, "aud", id="aud-object"),
        pytest.param({"aud": "SSOT-TEST-CLIENT"}, "aud", id="aud-case"),
        pytest.param({"exp": "9999999999"}, "expired", id="exp-string"),
        pytest.param({"exp": True}, "expired", id="exp-bool"),
        pytest.param({"iat": None}, "iat", id="iat-null"),
        pytest.param({"sub": ""}, "sub", id="sub-empty"),
        pytest.param({"sub": 1001}, "sub", id="sub-number"),
        pytest.param({"sub": "x" * 256}, "sub", id="sub-too-long"),
        pytest.param({"sub": "u-1001\n"}, "subject", id="sub-control-char"),
        pytest.param({"sub": "u-1001\u200b"}, "subject", id="sub-zero-width"),
        pytest.param({"sub": "\uff55-1001"}, "subject", id="sub-fullwidth"),
        pytest.param({"nbf": int(time.time()) + 3600}, "not yet valid", id="nbf-future"),
        pytest.param({"nbf": "0"}, "not yet valid", id="nbf-string"),
    ],
)
def test_malformed_or_foreign_claims_are_refused(
    world: World, changes: dict[str, Any], reason: str, caplog: pytest.LogCaptureFixture
) -> None:
    _refused_for(world, world.corp.id_token(**changes), reason, caplog)
    world.honest()


@pytest.mark.parametrize(
    ("header", "reason"),
    [
        pytest.param({"crit": ["exp"], "exp": 1}, "crit", id="crit"),
        pytest.param({"typ": "AT+JWT"}, "typ", id="typ-at+jwt-upper"),
        pytest.param({"typ": "application/at+jwt"}, "typ", id="typ-application-at+jwt"),
        pytest.param({"typ": "logout+jwt"}, "typ", id="typ-logout"),
        pytest.param({"typ": 1}, "typ", id="typ-number"),
        pytest.param({"b64": False}, "malformed", id="b64-false"),
        pytest.param({"kid": ""}, "kid", id="kid-empty"),
        pytest.param({"jku": "http://127.0.0.1:1/keys"}, "", id="jku-ignored-key-not-found"),
    ],
)
def test_hostile_headers_are_refused(
    world: World, header: dict[str, Any], reason: str, caplog: pytest.LogCaptureFixture
) -> None:
    token = world.corp.id_token(header=header)
    if reason:
        _refused_for(world, token, reason, caplog)
    else:
        # A jku/x5u header is never followed: the key comes from the provider's JWKS, so
        # this (honestly signed) token passes on the provider's key alone.
        world.sign_in(token)
    world.honest()


def test_duplicate_json_members_are_refused(world: World, caplog: pytest.LogCaptureFixture) -> None:
    claims = world.corp.claims()
    body = json.dumps(claims)[:-1] + ', "sub": "u-admin"}'
    header = json.dumps({"alg": "RS256", "kid": world.corp.kid, "typ": "JWT"})
    # Signed by the provider itself (one that echoes user input into claims, say).
    _refused_for(world, _signed_raw(world.corp, header, body), "repeats", caplog)
    twice = header[:-1] + ', "alg": "none"}'
    _refused_for(world, _signed_raw(world.corp, twice, json.dumps(claims)), "repeats", caplog)
    world.honest()


def test_huge_and_deep_tokens_are_refused_cheaply(
    world: World, caplog: pytest.LogCaptureFixture
) -> None:
    _refused_for(world, world.corp.id_token(pad="x" * 20_000), "malformed", caplog)
    deep: Any = "x"
    for _ in range(40):
        deep = [deep]
    _refused_for(world, world.corp.id_token(deep=deep), "malformed", caplog)
    # Over HTTP a megabyte of subject token is a 4xx answer, not a crash or a hang.
    form = urllib.parse.urlencode(
        {
            "grant_type": TOKEN_EXCHANGE,
            "subject_token": "a" * (1 << 20),
            "subject_token_type": ID_TOKEN_TYPE,
        }
    ).encode()
    base = world.auth.server.http_base_url
    with pytest.raises(urllib.error.HTTPError) as info:
        urllib.request.urlopen(base + "/oauth2/token", data=form, timeout=10)
    info.value.close()
    assert 400 <= info.value.code < 500
    world.honest()


def test_unknown_kids_cannot_make_us_hammer_the_providers_jwks(
    loop_thread: EventLoopThread, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    lenient = ThrottlePolicy(per_user_address=100, per_address=100, per_user=100)
    with serve_provider(loop_thread) as corp, serve_provider(loop_thread) as other:
        harness = start_harness(loop_thread, make_config(tmp_path, throttle=lenient))
        try:
            world = World(harness, corp, other)
            world.honest()
            fetched = corp.fetches
            for n in range(20):
                token = corp.id_token(key=new_rsa_key(), kid=f"k-{n}")
                _refused_for(world, token, "key:", caplog)
            # The unknown-kid refetch is single-flight behind a cooldown: one more fetch at most.
            assert corp.fetches - fetched <= 1, corp.fetches - fetched
            world.honest()
        finally:
            harness.channel.close()
            harness.stop()


# -- e-mail domains and names --------------------------------------------------------------


@pytest.mark.parametrize(
    "email",
    [
        pytest.param("mallory@evil.test", id="other-domain"),
        pytest.param("mallory@corp.test@evil.test", id="two-ats"),
        pytest.param("mallory@corp.test.evil.test", id="allowed-as-prefix"),
        pytest.param("mallory@evil-corp.test", id="allowed-as-suffix"),
        pytest.param("mallory@sub.corp.test", id="subdomain"),
        pytest.param("mallory@corp.test.", id="trailing-dot"),
        pytest.param("mallory@corp.t\u0435st", id="cyrillic-homograph"),
        pytest.param("mallory@\uff43\uff4f\uff52\uff50.test", id="fullwidth"),
        pytest.param("mallory@\u212acorp.test", id="kelvin-sign-lowercases-to-k"),
        pytest.param("mallory@kcorp.test\u0130", id="dotted-capital-i"),
        pytest.param("mallory", id="no-at"),
    ],
)
def test_the_domain_rule_holds_against_look_alike_domains(
    loop_thread: EventLoopThread, world: World, email: str, caplog: pytest.LogCaptureFixture
) -> None:
    with serve_provider(loop_thread) as strict:
        world.idps.add(
            "strict",
            issuer=strict.issuer,
            client_id=strict.client_id,
            allowed_domains=["kcorp.test", "corp.test"],
        )
        token = strict.id_token(email=email, sub="m-1")
        reason = "no verified e-mail" if "@" not in email else "domain not allowed"
        _refused_for(world, token, reason, caplog)
        # The honest address passes, in any case (domains are case-insensitive).
        world.sign_in(strict.id_token(email="bob@KCorp.Test", sub="b-1", preferred_username="bob"))


def test_a_new_users_name_never_looks_like_an_existing_one(
    loop_thread: EventLoopThread, tmp_path: Path, database_url: str
) -> None:
    with serve_provider(loop_thread) as corp, serve_provider(loop_thread) as other:
        harness = start_harness(loop_thread, make_config(tmp_path, database_url))
        try:
            world = World(harness, corp, other)
            world.idps.add("other", issuer=other.issuer, client_id=other.client_id)
            harness.add_user("admin", "correct horse battery", ("admin",))
            admin_id = harness.server.components.users.get("admin")
            assert admin_id is not None

            def name_of(provider: FakeProvider, sub: str, username: str) -> dict[str, Any]:
                token = provider.id_token(sub=sub, preferred_username=username)
                return claims_of(world.sign_in(token).access_token)

            # An existing name, in any case: a new user, named apart from every existing one
            # (no two names here differ only in case).
            names = ["admin"]
            for sub, claimed in (("a-1", "admin"), ("a-2", "Admin"), ("a-3", "ADMIN")):
                got = name_of(other, sub, claimed)
                assert got["sub"] != admin_id.id
                assert "admin" not in got["scope"].split()
                assert got["username"].lower() not in names, got
                names.append(got["username"].lower())
            assert names[1] == "other.admin"
            # A provider cannot take the names another provider's users get:
            # "corp.alice" from "other" is other's user, named as such.
            spoof = name_of(other, "o-9", "corp.alice")
            assert spoof["username"] == "other.corp.alice"
            world.idps.add("corp.eu", issuer=corp.issuer + "/eu", client_id=corp.client_id)
            assert name_of(other, "o-10", "Corp.EU.bob")["username"] == "other.Corp.EU.bob"
            # A free name the provider chooses is kept (the honest case).
            assert name_of(corp, "c-1", "carol")["username"] == "carol"
            assert name_of(corp, "c-2", "corp.dave")["username"] == "corp.dave"
        finally:
            harness.channel.close()
            harness.stop()


# -- provider state, replay ------------------------------------------------------------------


def test_re_enabling_a_provider_does_not_revive_its_old_sessions(
    loop_thread: EventLoopThread, world: World
) -> None:
    old = world.sign_in(world.corp.id_token())
    world.idps.set_disabled("corp", True)
    world.idps.set_disabled("corp", False)
    new = world.sign_in(world.corp.id_token())
    with running_resource(loop_thread, world.auth, aio=True, push=True) as resource:
        assert protected_call(resource.channel, new.access_token) == grpc.StatusCode.OK
        # The ended session reaches the push verifier as any revocation does (within 1 s).
        assert wait_until(
            lambda: (
                protected_call(resource.channel, old.access_token)
                == grpc.StatusCode.UNAUTHENTICATED
            ),
            timeout=1.0,
        )
    with pytest.raises(grpc.RpcError) as info:
        world.auth.refresh(old.refresh_token)
    assert info.value.code() == grpc.StatusCode.UNAUTHENTICATED  # type: ignore[attr-defined]
    world.auth.refresh(new.refresh_token)


def test_a_removed_and_re_added_provider_links_nobody_to_old_users(world: World) -> None:
    before = world.honest()
    world.idps.remove("corp")
    world.idps.add("corp", issuer=world.corp.issuer, client_id=world.corp.client_id)
    after = world.honest()
    assert after["sub"] != before["sub"]
    assert after["username"] == "corp.alice"


# -- the provider's discovery document ------------------------------------------------------


@contextlib.contextmanager
def serving(
    loop_thread: EventLoopThread,
    provider: FakeProvider,
    *,
    discovery: Any = None,
    jwks: Any = None,
) -> Iterator[FakeProvider]:
    """Serve ``provider`` on loopback with a crafted discovery document or JWKS."""

    async def discovery_handler(request: web.Request) -> web.StreamResponse:
        if discovery is None:
            return await provider.discovery(request)
        return discovery(provider)  # type: ignore[no-any-return]

    async def jwks_handler(request: web.Request) -> web.Response:
        return web.json_response(jwks() if jwks is not None else {"keys": [provider.jwk]})

    app = web.Application()
    app.router.add_get("/.well-known/openid-configuration", discovery_handler)
    app.router.add_get("/jwks.json", jwks_handler)
    runner = web.AppRunner(app)

    async def start() -> int:
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        return int(runner.addresses[0][1])

    provider.issuer = f"http://127.0.0.1:{loop_thread.run(start())}"
    try:
        yield provider
    finally:
        loop_thread.run(runner.cleanup())


def _unavailable(world: World, token: str) -> None:
    code, error = world.refused(token)
    assert (code, error) == (grpc.StatusCode.UNAVAILABLE, "temporarily_unavailable"), (code, error)


@pytest.mark.parametrize(
    "discovery",
    [
        pytest.param(
            lambda p, o: web.HTTPFound(o.issuer + "/.well-known/openid-configuration"),
            id="redirect-to-another-provider",
        ),
        pytest.param(
            lambda p, o: web.json_response(
                {"issuer": o.issuer, "jwks_uri": o.issuer + "/jwks.json"}
            ),
            id="another-issuer",
        ),
        pytest.param(
            lambda p, o: web.json_response(
                {"issuer": p.issuer + "/", "jwks_uri": p.issuer + "/jwks.json"}
            ),
            id="issuer-with-slash",
        ),
        pytest.param(
            lambda p, o: web.json_response(
                {"issuer": p.issuer, "jwks_uri": "http://203.0.113.9/jwks.json"}
            ),
            id="jwks-over-plain-http-beyond-loopback",
        ),
        pytest.param(lambda p, o: web.Response(text="{not json"), id="not-json"),
        pytest.param(lambda p, o: web.Response(status=503), id="503"),
        pytest.param(
            lambda p, o: web.json_response({"issuer": p.issuer, "jwks_uri": "x" * 100_000}),
            id="oversized",
        ),
    ],
)
def test_a_hostile_or_broken_discovery_document_is_retryable_never_success(
    loop_thread: EventLoopThread, world: World, discovery: Any
) -> None:
    # "odd" serves a crafted discovery document; its tokens are signed with corp's key,
    # which a redirect or a borrowed issuer would otherwise make acceptable.
    odd = FakeProvider(client_id=world.corp.client_id, key=world.corp.key)
    with serving(loop_thread, odd, discovery=lambda p: discovery(p, world.corp)):
        world.idps.add("odd", issuer=odd.issuer, client_id=odd.client_id)
        _unavailable(world, odd.id_token())
    world.honest()


def test_jwks_on_another_host_is_the_providers_own_choice(
    loop_thread: EventLoopThread, world: World, caplog: pytest.LogCaptureFixture
) -> None:
    # OpenID Discovery lets jwks_uri name another host (e.g. a CDN). A provider
    # pointing at corp's keys only makes corp-signed tokens with *its* iss its own users.
    odd = FakeProvider(client_id=world.corp.client_id, key=new_rsa_key())
    corp_jwks = world.corp.issuer + "/jwks.json"
    with serving(
        loop_thread,
        odd,
        discovery=lambda p: web.json_response({"issuer": p.issuer, "jwks_uri": corp_jwks}),
    ):
        world.idps.add("odd", issuer=odd.issuer, client_id=odd.client_id)
        alice = world.honest()
        _refused_for(world, odd.id_token(), "key:", caplog)  # its own key is not at that URL
        theirs = claims_of(world.sign_in(world.corp.id_token(iss=odd.issuer)).access_token)
        assert theirs["sub"] != alice["sub"] and theirs["username"] == "odd.alice"


def test_a_provider_that_is_down_is_retryable_and_uncounted(
    loop_thread: EventLoopThread, tmp_path: Path
) -> None:
    policy = ThrottlePolicy(per_user_address=2, per_address=2, per_user=2)
    with serve_provider(loop_thread) as corp, serve_provider(loop_thread) as other:
        harness = start_harness(loop_thread, make_config(tmp_path, throttle=policy))
        try:
            world = World(harness, corp, other)
            gone = FakeProvider(client_id="c")
            with serving(loop_thread, gone):
                world.idps.add("gone", issuer=gone.issuer, client_id="c")
            for _ in range(4):  # more than the throttle allows: an outage is nobody's failure
                _unavailable(world, gone.id_token())
            world.honest()
        finally:
            harness.channel.close()
            harness.stop()


# -- replay ---------------------------------------------------------------------------------


def test_replaying_one_id_token_opens_sessions_of_the_same_user_only(world: World) -> None:
    token = world.corp.id_token()
    first = claims_of(world.sign_in(token).access_token)
    again = claims_of(world.sign_in(token).access_token)
    assert again["sub"] == first["sub"] and again["sid"] != first["sid"]


# -- the provider's sealed client secret -------------------------------------------------------


def test_the_sealed_client_secret_never_shows(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    caplog: pytest.LogCaptureFixture,
) -> None:
    secret = "upstream-secret-Zq9pX2vL7mN4"
    storage = ["--database-url", f"sqlite:///{tmp_path / 'db.sqlite'}"]
    monkeypatch.setenv("SSOT_KEY_PASSPHRASE", PASSPHRASE.decode())
    add = ["idp", "add", "corp", "--issuer", "https://login.example.com", "--client-id", "ssot"]
    add += ["--client-secret-stdin", "--key-kdf-memory-cost", "1024", *storage]
    with caplog.at_level(logging.DEBUG):
        assert run_cli(main, add, secret + "\n") == 0
        # The same name again: an error, without the secret.
        assert run_cli(main, add, secret + "\n") == 1
        for argv in (["idp", "show", "corp"], ["idp", "list", "--json"], ["idp", "list"]):
            assert run_cli(main, [*argv, *storage]) == 0
    seen = capsys.readouterr()
    shown = json.loads(seen.out[seen.out.index("{") : seen.out.index("}\n") + 1])
    assert shown["auth_method"] == "client_secret" and shown["name"] == "corp"
    assert secret not in seen.out + seen.err + caplog.text
    for stored in tmp_path.glob("db.sqlite*"):  # the database and any WAL beside it
        assert secret.encode() not in stored.read_bytes(), stored
