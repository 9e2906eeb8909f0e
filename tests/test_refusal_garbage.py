"""A refused call leaves no reference cycle behind: it ends when it is answered.

A cycle through a refused call's frames (an exception held by a frame on its own
traceback) kept the gRPC context and its HTTP/2 stream alive until a garbage
collection, and such streams count against ``max_concurrent_streams``: with the
collector's first threshold raised (as ``ssot-auth serve`` does, auth_server._gc)
an unknown-kid flood met ``REFUSED_STREAM`` (UNAVAILABLE) instead of
UNAUTHENTICATED. Here the collector is off while refusals of every kind are
sent, so nothing but reference counting frees them.
"""

from __future__ import annotations

import gc
import os
import uuid
from collections.abc import Iterator

import grpc
import pytest
from cryptography.hazmat.primitives.asymmetric import rsa

from helpers import EventLoopThread
from security.kit import REQUEST, Issuer, bearer, compact, issuer_from_key, static_targets

ROUNDS = 600  # several times the server's max_concurrent_streams
IN_FLIGHT = 64


@pytest.fixture(scope="module")
def issuer() -> Issuer:
    return issuer_from_key(rsa.generate_private_key(public_exponent=65537, key_size=2048), "RS256")


@pytest.fixture
def collector_off() -> Iterator[None]:
    gc.collect()
    gc.disable()
    try:
        yield
    finally:
        gc.enable()


@pytest.mark.parametrize("aio", [False, True], ids=["sync", "aio"])
def test_refused_calls_are_freed_without_a_collection(
    loop_thread: EventLoopThread, issuer: Issuer, aio: bool, collector_off: None
) -> None:
    with static_targets(loop_thread, [issuer], aio=aio) as targets:
        target = targets["RS256"]
        iss = target.issuer
        kinds = {
            "unknown kid": lambda: compact(
                iss.header(kid=uuid.uuid4().hex), iss.claims(), os.urandom(256)
            ),
            "bad signature": lambda: compact(iss.header(), iss.claims(), os.urandom(256)),
            "malformed": lambda: "not.a.token",
        }
        stub = target.stub
        for name, make in kinds.items():
            tokens = [make() for _ in range(ROUNDS)]
            for start in range(0, ROUNDS, IN_FLIGHT):
                calls = [
                    stub.GetProtectedResource.future(REQUEST, metadata=bearer(t), timeout=30)
                    for t in tokens[start : start + IN_FLIGHT]
                ]
                for call in calls:
                    with pytest.raises(grpc.RpcError) as info:
                        call.result()
                    code = info.value.code()  # type: ignore[attr-defined]
                    assert code == grpc.StatusCode.UNAUTHENTICATED, (name, info.value)
        # The honest case still passes.
        assert target.call(bearer(target.honest_token)).user.username
