"""A propagated call chain (user -> A -> B, token exchange) against A forwarding the user's token.

    python benchmarks/bench_propagation.py [--calls 400] [--repeats 5]

Everything runs in this process on loopback: the auth service (SQLite), service A
(sync gRPC, verifying audience ``service-a``) and two copies of service B:

  * forwarded: B accepts A's audience and A passes the user's token on unchanged
    (what the token exchange replaces);
  * propagated: B accepts only ``service-b`` and A calls it through an
    :class:`~interceptors.IdentityPropagator` (RFC 8693 exchange, cached).

Both verifiers follow keys and revocations over gRPC (push). Each round makes
``--calls`` sequential user calls through A per mode, interleaved, and measures
wall time and this process's CPU time per call (client, A and B together; the
client's share is the same in both modes). The first call of a fresh user token
(the exchange itself) is measured separately. Printed: medians over the rounds,
and the cached path's overhead over forwarding (goal <= 5%).
"""

from __future__ import annotations

import argparse
import functools
import statistics
import tempfile
import time
from collections.abc import Callable
from concurrent import futures
from pathlib import Path
from typing import Any

import grpc
from _common import ISSUER, Loop, auth_config
from cryptography.hazmat.primitives.asymmetric import rsa

from auth_server.app import RunningAuthServer, start_auth_server
from auth_server.jwk import public_jwk
from interceptors import (
    AuthInterceptor,
    IdentityPropagator,
    PrivateKeyJwt,
    TokenVerifier,
)
from protos import auth_pb2, auth_pb2_grpc, resource_pb2, resource_pb2_grpc
from resource_server.app import ResourceServerConfig, open_verifier
from resource_server.service import ResourceLogic, ResourceServicer

PASSWORD = "benchmark password 1"
A, B = "service-a", "service-b"


class Forwarder(resource_pb2_grpc.ResourceServiceServicer):
    def __init__(self, stub: resource_pb2_grpc.ResourceServiceStub) -> None:
        self._b = stub

    def GetProtectedResource(self, request: Any, context: Any) -> Any:
        forwarded = [(k, v) for k, v in context.invocation_metadata() if k == "authorization"]
        return self._b.GetProtectedResource(request, metadata=forwarded, timeout=10)


class Propagator(resource_pb2_grpc.ResourceServiceServicer):
    def __init__(self, stub: resource_pb2_grpc.ResourceServiceStub) -> None:
        self._b = stub

    def GetProtectedResource(self, request: Any, context: Any) -> Any:
        return self._b.GetProtectedResource(request, timeout=10)


def serve(verifier: TokenVerifier, servicer: Any) -> tuple[grpc.Server, int]:
    server = grpc.server(futures.ThreadPoolExecutor(8), interceptors=[AuthInterceptor(verifier)])
    resource_pb2_grpc.add_ResourceServiceServicer_to_server(servicer, server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    return server, port


def verifier(auth: RunningAuthServer, audience: str) -> TokenVerifier:
    config = ResourceServerConfig(
        grpc_address="127.0.0.1:0", issuer=ISSUER, audience=audience, auth_target=auth.grpc_target
    )
    result = open_verifier(config)
    assert result.revocations is not None and result.revocations.wait_until_synced(10)
    return result


def per_call(call: Callable[[], object], calls: int) -> tuple[float, float]:
    wall, cpu = time.perf_counter(), time.process_time()
    for _ in range(calls):
        call()
    return (time.perf_counter() - wall) / calls, (time.process_time() - cpu) / calls


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=400)
    parser.add_argument("--repeats", type=int, default=5)
    ns = parser.parse_args()
    loop = Loop()
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    with tempfile.TemporaryDirectory() as data_dir:
        config = auth_config(
            Path(data_dir),
            audience=A,
            passphrase=b"benchmark-passphrase-000",
            additional_audiences=(B,),
        )
        auth: RunningAuthServer = loop.run(start_auth_server(config))
        try:
            components = auth.components
            components.users.add("bench", PASSWORD, ("resource.read",))
            jwk = public_jwk(key, "RS256")
            components.client_side.clients.add(
                A, audiences=[B], jwks={"keys": [jwk]}, exchange_audiences=[B]
            )
            auth_channel = grpc.insecure_channel(auth.grpc_target)
            stub = auth_pb2_grpc.AuthServiceStub(auth_channel)

            def login() -> str:
                request = auth_pb2.LoginRequest(username="bench", password=PASSWORD)
                return str(stub.Login(request, timeout=10).access_token)

            with verifier(auth, A) as va, verifier(auth, A) as vb_fwd, verifier(auth, B) as vb:
                b_fwd, port_fwd = serve(vb_fwd, ResourceServicer(ResourceLogic(issuer=ISSUER)))
                b_prop, port_prop = serve(vb, ResourceServicer(ResourceLogic(issuer=ISSUER)))
                propagator = IdentityPropagator(
                    auth_channel,
                    audience=B,
                    credentials=PrivateKeyJwt(client_id=A, key=key, issuer=ISSUER),
                )
                to_fwd = grpc.insecure_channel(f"127.0.0.1:{port_fwd}")
                to_prop = grpc.intercept_channel(
                    grpc.insecure_channel(f"127.0.0.1:{port_prop}"), propagator.interceptor()
                )
                a_fwd, pa_fwd = serve(va, Forwarder(resource_pb2_grpc.ResourceServiceStub(to_fwd)))
                a_prop, pa_prop = serve(
                    va, Propagator(resource_pb2_grpc.ResourceServiceStub(to_prop))
                )
                user_fwd = resource_pb2_grpc.ResourceServiceStub(
                    grpc.insecure_channel(f"127.0.0.1:{pa_fwd}")
                )
                user_prop = resource_pb2_grpc.ResourceServiceStub(
                    grpc.insecure_channel(f"127.0.0.1:{pa_prop}")
                )
                token = login()
                md = (("authorization", f"Bearer {token}"),)
                req = resource_pb2.GetProtectedResourceRequest()
                forward = lambda: user_fwd.GetProtectedResource(req, metadata=md)  # noqa: E731
                propagate = lambda: user_prop.GetProtectedResource(req, metadata=md)  # noqa: E731
                per_call(forward, 50)
                per_call(propagate, 50)
                rows: dict[str, list[tuple[float, float]]] = {"fwd": [], "prop": [], "first": []}
                for _ in range(ns.repeats):
                    rows["fwd"].append(per_call(forward, ns.calls))
                    rows["prop"].append(per_call(propagate, ns.calls))
                    fresh = (("authorization", f"Bearer {login()}"),)
                    rows["first"].append(
                        per_call(
                            functools.partial(user_prop.GetProtectedResource, req, metadata=fresh),
                            1,
                        )
                    )
                for server in (a_fwd, a_prop, b_fwd, b_prop):
                    server.stop(0.5).wait()
        finally:
            loop.run(auth.stop(0.5))

    def med(name: str, index: int) -> float:
        return statistics.median(r[index] for r in rows[name]) * 1e6

    print(f"{'mode':<28}{'wall us/call':>14}{'cpu us/call':>14}")
    for name, label in (
        ("fwd", "forwarded token"),
        ("prop", "propagated (cached)"),
        ("first", "propagated, first (exchange)"),
    ):
        print(f"{label:<28}{med(name, 0):>14.0f}{med(name, 1):>14.0f}")
    wall = med("prop", 0) / med("fwd", 0) - 1
    cpu = med("prop", 1) / med("fwd", 1) - 1
    print(f"cached overhead over forwarding: wall {wall:+.1%}, cpu {cpu:+.1%} (goal <= +5%)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
