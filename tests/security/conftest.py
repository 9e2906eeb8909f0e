"""Fixtures of the attack suite: real servers, shared per module (see ``kit`` for the rest).

One auth service per key type and one sync and one aio resource server in front of
it, so a family of fifty cases costs one start-up per face.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric import ec, ed25519

from helpers import AuthHarness, EventLoopThread, make_config, start_harness
from security.kit import (
    FACES,
    HONEST_USER,
    PASSWORD,
    Issuer,
    Target,
    auth_target,
    issuer_from_key,
    static_targets,
)


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
