"""Builds the example resource service from interceptors/ and protos/ only, sync or asyncio."""

from __future__ import annotations

import logging
from concurrent import futures
from dataclasses import dataclass

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from interceptors import (
    AsyncAuthInterceptor,
    AuthInterceptor,
    DiscoverySource,
    GrpcJwksSource,
    HttpJwksSource,
    KeyCache,
    KeySource,
    MethodPolicy,
    RevocationList,
    TokenPolicy,
    TokenVerifier,
)
from protos import resource_pb2_grpc
from resource_server.service import (
    PUBLIC_METHODS,
    REQUIRED_SCOPES,
    SERVICE_NAME,
    AsyncResourceServicer,
    ResourceLogic,
    ResourceServicer,
)

_LOGGER = logging.getLogger(__name__)
DEFAULT_GRPC_ADDRESS = "127.0.0.1:50052"


class StartupError(Exception):
    """The server cannot start; the message says which setting to fix."""


@dataclass(frozen=True, kw_only=True)
class ResourceServerConfig:
    """Settings of ``ssot-resource serve``: exactly one key source must be given.

    Attributes:
        jwks_url: Fetch keys over HTTP from this JWKS URL.
        auth_target: Fetch keys from the auth service's ``GetJwks`` and follow
            ``WatchJwks`` and ``WatchRevocations`` (push: key rotation and
            revoked sessions arrive at once).
        discover: Find the JWKS through OIDC discovery on the issuer URL.
    """

    grpc_address: str = DEFAULT_GRPC_ADDRESS
    issuer: str
    audience: str
    jwks_url: str | None = None
    auth_target: str | None = None
    discover: bool = False
    allow_insecure_http: bool = False
    reflection: bool = True
    cooldown: float = 30.0

    def __post_init__(self) -> None:
        chosen = [self.jwks_url is not None, self.auth_target is not None, self.discover]
        if sum(chosen) != 1:
            raise ValueError("give exactly one of --jwks-url, --auth-target, --discover")
        if not self.issuer or not self.audience:
            raise ValueError("--issuer and --audience are required")


def build_key_source(config: ResourceServerConfig) -> KeySource:
    if config.jwks_url is not None:
        return HttpJwksSource(config.jwks_url, allow_insecure_http=config.allow_insecure_http)
    if config.auth_target is not None:
        return GrpcJwksSource(config.auth_target)
    return DiscoverySource(config.issuer, allow_insecure_http=config.allow_insecure_http)


def resource_policy() -> MethodPolicy:
    return MethodPolicy(public_methods=PUBLIC_METHODS, required_scopes=REQUIRED_SCOPES)


def build_verifier(config: ResourceServerConfig) -> tuple[KeyCache, TokenVerifier]:
    """A started key cache and the verifier over it; release both with :func:`close_verifier`.

    With ``auth_target`` the verifier also follows the auth service's revoked
    sessions (a :class:`RevocationList` on the same channel), so a logged-out
    session's tokens are refused at once; other sources reject them at ``exp``.
    """
    source = build_key_source(config)
    keys = KeyCache(source, cooldown=config.cooldown)
    keys.start()
    revocations = None
    if isinstance(source, GrpcJwksSource):
        revocations = RevocationList(source)
        revocations.start()
    verifier = TokenVerifier(
        keys,
        TokenPolicy(issuer=config.issuer, audience=config.audience),
        revocations=revocations,
    )
    return keys, verifier


def close_verifier(keys: KeyCache, verifier: TokenVerifier) -> None:
    """Stop the background work of :func:`build_verifier`'s key cache and revocation list."""
    keys.close()
    if isinstance(verifier.revocations, RevocationList):
        verifier.revocations.close()


def _add_common_services(server: grpc.Server | grpc.aio.Server, with_reflection: bool) -> None:
    if with_reflection:
        reflection.enable_server_reflection(
            (SERVICE_NAME, health.SERVICE_NAME, reflection.SERVICE_NAME), server
        )


def _bind(server: grpc.Server | grpc.aio.Server, address: str) -> int:
    try:
        return server.add_insecure_port(address)
    except RuntimeError as exc:
        raise StartupError(f"cannot listen on {address} (--grpc)") from exc


def build_server(
    config: ResourceServerConfig, verifier: TokenVerifier, *, max_workers: int = 16
) -> tuple[grpc.Server, int]:
    """A started sync ``grpc.server`` with the auth interceptor, and its bound port."""
    server = grpc.server(
        futures.ThreadPoolExecutor(max_workers=max_workers, thread_name_prefix="resource"),
        interceptors=[AuthInterceptor(verifier, resource_policy())],
        options=[("grpc.so_reuseport", 0)],
    )
    resource_pb2_grpc.add_ResourceServiceServicer_to_server(
        ResourceServicer(ResourceLogic(issuer=config.issuer)), server
    )
    health_servicer = health.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    _add_common_services(server, config.reflection)
    port = _bind(server, config.grpc_address)
    server.start()
    health_servicer.set("", health_pb2.HealthCheckResponse.SERVING)
    health_servicer.set(SERVICE_NAME, health_pb2.HealthCheckResponse.SERVING)
    return server, port


async def start_aio_server(
    config: ResourceServerConfig, verifier: TokenVerifier
) -> tuple[grpc.aio.Server, int]:
    """A started ``grpc.aio`` server with the async auth interceptor, and its bound port."""
    server = grpc.aio.server(
        interceptors=[AsyncAuthInterceptor(verifier, resource_policy())],
        options=[("grpc.so_reuseport", 0)],
    )
    resource_pb2_grpc.add_ResourceServiceServicer_to_server(
        AsyncResourceServicer(ResourceLogic(issuer=config.issuer)), server
    )
    health_servicer = health.aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    _add_common_services(server, config.reflection)
    port = _bind(server, config.grpc_address)
    await server.start()
    await health_servicer.set("", health_pb2.HealthCheckResponse.SERVING)
    await health_servicer.set(SERVICE_NAME, health_pb2.HealthCheckResponse.SERVING)
    return server, port
