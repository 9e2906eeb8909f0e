"""Fixtures of the attack suite: real servers, shared per module (see ``kit`` for the rest).

One auth service per key type and one sync and one aio resource server in front of
it, so a family of fifty cases costs one start-up per face.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import grpc
import pytest
from cryptography.hazmat.primitives.asymmetric import ec, ed25519

from conftest import (
    AUDIENCE,
    ISSUER,
    AuthHarness,
    EventLoopThread,
    make_config,
    running_resource,
    start_harness,
)
from interceptors import KeyCache, StaticSource, TokenPolicy, TokenVerifier
from interceptors._keyset import SUPPORTED_ALGORITHMS
from resource_server import ResourceServerConfig, build_server, start_aio_server
from security.kit import (
    HONEST_USER,
    PASSWORD,
    SENT_SECRETS,
    Issuer,
    Target,
    issuer_from_auth,
    issuer_from_key,
)

FACES = [pytest.param(False, id="sync"), pytest.param(True, id="aio")]


def _start_auth(
    loop_thread: EventLoopThread, tmp_path_factory: pytest.TempPathFactory, **changes: Any
) -> Iterator[AuthHarness]:
    harness = start_harness(loop_thread, make_config(tmp_path_factory.mktemp("auth"), **changes))
    harness.add_user(HONEST_USER, PASSWORD, ("resource.read",))
    try:
        yield harness
    finally:
        harness.channel.close()
        harness.stop()


@pytest.fixture(scope="module")
def auth_rs256(
    loop_thread: EventLoopThread, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[AuthHarness]:
    """The auth service with its default RS256 key, for one module."""
    yield from _start_auth(loop_thread, tmp_path_factory)


@pytest.fixture(scope="module")
def auth_es256(
    loop_thread: EventLoopThread, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[AuthHarness]:
    """The auth service signing with ES256 (P-256), for one module."""
    yield from _start_auth(loop_thread, tmp_path_factory, algorithm="ES256")


@contextlib.contextmanager
def auth_target(
    loop_thread: EventLoopThread, auth: AuthHarness, *, aio: bool, **cache: Any
) -> Iterator[Target]:
    """A resource server in front of ``auth`` (HTTP JWKS), with a logged-in honest user."""
    honest = auth.login(HONEST_USER, PASSWORD).access_token
    SENT_SECRETS.add(honest)
    with running_resource(loop_thread, auth, aio=aio, **cache) as resource:
        assert resource.keys.wait_until_loaded(10)
        target = Target(
            issuer=issuer_from_auth(auth),
            keys=resource.keys,
            channel=resource.channel,
            aio=aio,
            honest_token=honest,
            honest_name=HONEST_USER,
        )
        target.assert_serving()
        yield target


@pytest.fixture(scope="module", params=FACES)
def target(
    request: pytest.FixtureRequest, loop_thread: EventLoopThread, auth_rs256: AuthHarness
) -> Iterator[Target]:
    """The RS256 auth service's key behind a sync, then an aio, resource server."""
    with auth_target(loop_thread, auth_rs256, aio=request.param) as t:
        yield t


@pytest.fixture(scope="module", params=FACES)
def es_target(
    request: pytest.FixtureRequest, loop_thread: EventLoopThread, auth_es256: AuthHarness
) -> Iterator[Target]:
    """The ES256 auth service's key behind a sync, then an aio, resource server."""
    with auth_target(loop_thread, auth_es256, aio=request.param) as t:
        yield t


@contextlib.contextmanager
def serve_verifier(
    loop_thread: EventLoopThread,
    keys: KeyCache,
    policy: TokenPolicy,
    *,
    aio: bool,
    config: ResourceServerConfig | None = None,
) -> Iterator[grpc.Channel]:
    """A resource server over any key cache and policy; yields a channel to it."""
    config = config or ResourceServerConfig(
        grpc_address="127.0.0.1:0",
        issuer=policy.issuer,
        audience=policy.audience,
        jwks_url="http://127.0.0.1:9/unused",  # the key cache is given; no source is built
    )
    verifier = TokenVerifier(keys, policy)
    if aio:
        aserver, port = loop_thread.run(start_aio_server(config, verifier))
        stop: Callable[[], object] = lambda: loop_thread.run(aserver.stop(0.5))  # noqa: E731
    else:
        server, port = build_server(config, verifier)
        stop = lambda: server.stop(0.5).wait()  # noqa: E731
    channel = grpc.insecure_channel(f"127.0.0.1:{port}")
    try:
        yield channel
    finally:
        channel.close()
        stop()


@contextlib.contextmanager
def static_targets(
    loop_thread: EventLoopThread, issuers: Sequence[Issuer], *, aio: bool
) -> Iterator[dict[str, Target]]:
    """One resource server trusting a static set of ``issuers``; a Target per algorithm."""
    document = {"keys": [dict(i.jwk) for i in issuers]}
    keys = KeyCache(StaticSource(document), background=False)
    policy = TokenPolicy(issuer=ISSUER, audience=AUDIENCE, algorithms=SUPPORTED_ALGORITHMS)
    try:
        with serve_verifier(loop_thread, keys, policy, aio=aio) as channel:
            targets = {}
            for issuer in issuers:
                honest = issuer.token(sub="user-honest", username=HONEST_USER)
                targets[issuer.algorithm] = Target(
                    issuer=issuer,
                    keys=keys,
                    channel=channel,
                    aio=aio,
                    honest_token=honest,
                    honest_name=HONEST_USER,
                )
                targets[issuer.algorithm].assert_serving()
            yield targets
    finally:
        keys.close()


@pytest.fixture(scope="session")
def curve_issuers() -> list[Issuer]:
    """Keys for the curves our auth service does not sign with: P-384, P-521, Ed25519."""
    return [
        issuer_from_key(ec.generate_private_key(ec.SECP384R1()), "ES384"),
        issuer_from_key(ec.generate_private_key(ec.SECP521R1()), "ES512"),
        issuer_from_key(ed25519.Ed25519PrivateKey.generate(), "EdDSA"),
    ]


@pytest.fixture(scope="module", params=FACES)
def curve_targets(
    request: pytest.FixtureRequest, loop_thread: EventLoopThread, curve_issuers: list[Issuer]
) -> Iterator[dict[str, Target]]:
    """ES384, ES512 and EdDSA keys behind one static-set resource server (sync, then aio)."""
    with static_targets(loop_thread, curve_issuers, aio=request.param) as targets:
        yield targets
