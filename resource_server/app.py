"""Builds the example resource service from interceptors/ and protos/ only, sync or asyncio."""

from __future__ import annotations

import asyncio
import logging
from concurrent import futures
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from interceptors import (
    CERT_BINDINGS,
    AsyncAuthInterceptor,
    AuthInterceptor,
    AuthServiceSource,
    CacheSettings,
    CertBinding,
    ClientSecret,
    DiscoverySource,
    HttpJwksSource,
    KeySource,
    MethodPolicy,
    PrivateKeyJwt,
    TokenManager,
    TokenPolicy,
    TokenVerifier,
    VerifyObserver,
)
from interceptors._cli import SERVER_TLS_FLAGS
from interceptors._observe import Observers
from interceptors.tls import (
    TlsError,
    channel_credentials,
    is_loopback_address,
    server_credentials,
)
from protos import resource_pb2_grpc
from resource_server.downstream import DownstreamSettings, aio_downstream, sync_downstream
from resource_server.ops import (
    AsyncKeyedHealthServicer,
    KeyedHealthServicer,
    afollow_keys,
    follow_keys,
)
from resource_server.service import (
    PUBLIC_METHODS,
    REQUIRED_SCOPES,
    SERVICE_NAME,
    AsyncResourceServicer,
    ResourceLogic,
    ResourceServicer,
)

if TYPE_CHECKING:
    from interceptors.otel import Tracing

_LOGGER = logging.getLogger(__name__)
DEFAULT_GRPC_ADDRESS = "127.0.0.1:50052"
DEFAULT_MAX_METADATA_SIZE = 16 * 1024
DEFAULT_MAX_MESSAGE_SIZE = 1024 * 1024
DEFAULT_MAX_CONCURRENT_STREAMS = 256
DEFAULT_MAX_TOKEN_LENGTH = 8192
DEFAULT_MAX_JSON_DEPTH = 16
DEFAULT_MAX_TOKEN_LIFETIME = 86400
HEALTH_SERVICES = ("", SERVICE_NAME)
#: The scope a watch token asks for (the auth service's ``--watch-auth token``).
WATCH_SCOPE = "ssot.watch"


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
        key_cache: How the verifier's key cache fetches and ages keys.
        tls_cert, tls_key: Serve TLS with this certificate chain and key (PEM files).
        client_ca: Require client certificates signed by this CA (mutual TLS).
        cert_binding: Also require the client certificate to match the token:
            ``"subject"`` (it names ``sub`` or ``username``) or ``"cnf"`` (RFC 8705).
        auth_tls: Reach the key source (``auth_target``) over TLS; implied by the
            two settings below.
        auth_ca_cert: Trust this CA for the key source (gRPC or HTTPS) instead of
            the system roots.
        auth_client_cert, auth_client_key: Present this certificate to the auth
            service's gRPC port (when it requires mutual TLS).
        max_metadata_size: Largest request metadata (headers) accepted, bytes.
        max_message_size: Largest request message accepted, bytes.
        max_concurrent_streams: Most calls in flight on one client connection.
        max_token_length: Longest access token accepted, characters.
        max_json_depth: Deepest JSON nesting accepted in a token's header or claims.
        max_token_lifetime: Largest ``exp - iat`` accepted, seconds.
        revocations_fail_closed: With ``auth_target``: refuse every token with
            ``UNAVAILABLE`` until the revocation list has synced, and once it has
            been out of sync for longer than this many seconds. ``None`` (the
            default) fails open: tokens revoked while the stream is down pass
            until their ``exp``.
        downstream: Where ``GetResourceOnBehalf`` calls on the caller's behalf (token
            exchange), or ``None``.
        metrics_address: Serve Prometheus ``/metrics`` at this ``HOST:PORT``.
        shutdown_grace: Seconds in-flight calls get when the server stops.
        watch_identity: With ``auth_target``: the service identity whose
            client-credentials token (scope ``ssot.watch``, renewed ahead of expiry)
            opens ``WatchJwks`` and ``WatchRevocations`` at an auth service run with
            ``--watch-auth token``; ``None`` sends none. (For ``--watch-auth mtls``,
            ``auth_client_cert``/``auth_client_key`` are the credential.)
        reuse_port: Bind the port with ``SO_REUSEPORT``, so the workers of
            ``serve --workers N`` share it (:mod:`interceptors._workers`).
    """

    grpc_address: str = DEFAULT_GRPC_ADDRESS
    issuer: str
    audience: str
    jwks_url: str | None = None
    auth_target: str | None = None
    discover: bool = False
    allow_insecure_http: bool = False
    reflection: bool = True
    key_cache: CacheSettings = field(default_factory=CacheSettings)
    tls_cert: Path | None = None
    tls_key: Path | None = None
    client_ca: Path | None = None
    cert_binding: CertBinding | None = None
    auth_tls: bool = False
    auth_ca_cert: Path | None = None
    auth_client_cert: Path | None = None
    auth_client_key: Path | None = None
    max_metadata_size: int = DEFAULT_MAX_METADATA_SIZE
    max_message_size: int = DEFAULT_MAX_MESSAGE_SIZE
    max_concurrent_streams: int = DEFAULT_MAX_CONCURRENT_STREAMS
    max_token_length: int = DEFAULT_MAX_TOKEN_LENGTH
    max_json_depth: int = DEFAULT_MAX_JSON_DEPTH
    max_token_lifetime: int = DEFAULT_MAX_TOKEN_LIFETIME
    revocations_fail_closed: float | None = None
    downstream: DownstreamSettings | None = None
    metrics_address: str | None = None
    shutdown_grace: float = 5.0
    watch_identity: PrivateKeyJwt | ClientSecret | None = None
    reuse_port: bool = False

    def __post_init__(self) -> None:
        chosen = [self.jwks_url is not None, self.auth_target is not None, self.discover]
        if sum(chosen) != 1:
            raise ValueError("give exactly one of --jwks-url, --auth-target, --discover")
        if self.downstream is not None and self.downstream.client_id != self.audience:
            # The auth service exchanges only tokens addressed to the acting client.
            raise ValueError("--client-id must equal --audience (the tokens this service gets)")
        if self.watch_identity is not None and self.auth_target is None:
            raise ValueError("--watch-token needs --auth-target")
        if self.revocations_fail_closed is not None:
            if self.auth_target is None:
                raise ValueError("--revocations-fail-closed needs --auth-target")
            if not self.revocations_fail_closed >= 0:
                raise ValueError("--revocations-fail-closed must not be negative")
        if not self.issuer or not self.audience:
            raise ValueError("--issuer and --audience are required")
        if (self.tls_cert is None) != (self.tls_key is None):
            raise ValueError("give both --tls-cert and --tls-key, or neither")
        if self.client_ca is not None and self.tls_cert is None:
            raise ValueError("--client-ca needs --tls-cert and --tls-key")
        if self.cert_binding is not None:
            if self.cert_binding not in CERT_BINDINGS:
                raise ValueError(f"--require-cert-binding must be one of {CERT_BINDINGS}")
            if self.client_ca is None:
                raise ValueError("--require-cert-binding needs mutual TLS (--client-ca)")
        if (self.auth_client_cert is None) != (self.auth_client_key is None):
            raise ValueError("give both --auth-client-cert and --auth-client-key, or neither")
        for name in (
            "max_metadata_size",
            "max_message_size",
            "max_concurrent_streams",
            "max_token_length",
            "max_json_depth",
            "max_token_lifetime",
        ):
            if getattr(self, name) <= 0:
                raise ValueError(f"--{name.replace('_', '-')} must be positive")

    @property
    def tls(self) -> bool:
        """Whether the server speaks TLS."""
        return self.tls_cert is not None


def build_key_source(config: ResourceServerConfig) -> KeySource:
    """The key source the config names (TLS material is read now: TlsError if unreadable)."""
    ca_cert = config.auth_ca_cert
    if config.jwks_url is not None:
        return HttpJwksSource(
            config.jwks_url, allow_insecure_http=config.allow_insecure_http, ca_cert=ca_cert
        )
    if config.auth_target is not None:
        credentials = None
        if config.auth_tls or ca_cert is not None or config.auth_client_cert is not None:
            credentials = channel_credentials(
                ca_cert, config.auth_client_cert, config.auth_client_key
            )
        source = AuthServiceSource(config.auth_target, credentials=credentials)
        if config.watch_identity is not None:
            # Token requests ride the same channel; the manager renews ahead of expiry.
            source.use_tokens(TokenManager.for_service(source.channel, config.watch_identity))
        return source
    return DiscoverySource(
        config.issuer, allow_insecure_http=config.allow_insecure_http, ca_cert=ca_cert
    )


def resource_policy() -> MethodPolicy:
    return MethodPolicy(public_methods=PUBLIC_METHODS, required_scopes=REQUIRED_SCOPES)


def open_verifier(config: ResourceServerConfig) -> TokenVerifier:
    """The started verifier the config describes; close it (or use it in ``with``).

    With ``auth_target`` the verifier also follows the auth service's
    revocations (sessions and watermarks) on the same channel, so a logged-out
    session's tokens are refused at once; other sources reject them at
    ``exp``. With ``revocations_fail_closed`` it refuses every token while that
    list is out of sync for longer. Closing it closes the source too (the
    channel to the auth service).

    Raises:
        ValueError: The key source's settings are not acceptable (TlsError included).
    """
    return TokenVerifier.from_source(
        build_key_source(config),
        token_policy(config),
        cache_settings=config.key_cache,
        revocations_fail_closed=config.revocations_fail_closed,
    )


def token_policy(config: ResourceServerConfig) -> TokenPolicy:
    """What a token must satisfy on this server."""
    return TokenPolicy(
        issuer=config.issuer,
        audience=config.audience,
        max_token_length=config.max_token_length,
        max_json_depth=config.max_json_depth,
        max_lifetime=float(config.max_token_lifetime),
    )


def server_options(config: ResourceServerConfig) -> list[tuple[str, Any]]:
    """The gRPC channel arguments that carry the server's limits."""
    return [
        # Off unless the workers of `serve --workers N` share the port: a second
        # server started on a taken port by mistake must fail, not share it.
        ("grpc.so_reuseport", 1 if config.reuse_port else 0),
        ("grpc.max_receive_message_length", config.max_message_size),
        # Soft and hard limit alike: grpc otherwise refuses calls between the two at random.
        ("grpc.max_metadata_size", config.max_metadata_size),
        ("grpc.absolute_max_metadata_size", config.max_metadata_size),
        ("grpc.max_concurrent_streams", config.max_concurrent_streams),
    ]


def _add_common_services(server: grpc.Server | grpc.aio.Server, with_reflection: bool) -> None:
    if with_reflection:
        reflection.enable_server_reflection(
            (SERVICE_NAME, health.SERVICE_NAME, reflection.SERVICE_NAME), server
        )


def _bind(server: grpc.Server | grpc.aio.Server, config: ResourceServerConfig) -> int:
    address = config.grpc_address
    try:
        if config.tls_cert is not None and config.tls_key is not None:
            credentials = server_credentials(config.tls_cert, config.tls_key, config.client_ca)
            return server.add_secure_port(address, credentials)
        if not is_loopback_address(address):
            _LOGGER.warning(
                "SECURITY WARNING: serving %s WITHOUT TLS: bearer tokens cross the network in"
                " clear text and can be replayed by anyone who sees them; use --tls-cert and"
                " --tls-key",
                address,
            )
        return server.add_insecure_port(address)
    except TlsError as exc:
        raise StartupError(exc.naming(SERVER_TLS_FLAGS)) from None
    except RuntimeError as exc:
        raise StartupError(f"cannot listen on {address} (--grpc)") from exc


def _observer(observer: VerifyObserver | None, tracing: Tracing | None) -> VerifyObserver | None:
    if tracing is None:
        return observer
    return tracing if observer is None else Observers(observer, tracing)


def build_server(
    config: ResourceServerConfig,
    verifier: TokenVerifier,
    *,
    max_workers: int = 16,
    observer: VerifyObserver | None = None,
    health_servicer: health.HealthServicer | None = None,
    tracing: Tracing | None = None,
) -> tuple[grpc.Server, int]:
    """A started sync ``grpc.server`` with the auth interceptor, and its bound port.

    Health is ``NOT_SERVING`` until the verifier holds a key set; ``observer``
    sees every token check (metrics). With ``tracing`` each call is a server span
    continuing the caller's trace, the check a span event, and the downstream
    calls (exchange included) client spans sending it on.
    """
    auth = AuthInterceptor(
        verifier,
        resource_policy(),
        cert_binding=config.cert_binding,
        observer=_observer(observer, tracing),
    )
    server = grpc.server(
        futures.ThreadPoolExecutor(max_workers=max_workers, thread_name_prefix="resource"),
        interceptors=[auth] if tracing is None else [tracing.interceptor(), auth],
        options=server_options(config),
    )
    resource_pb2_grpc.add_ResourceServiceServicer_to_server(
        ResourceServicer(
            ResourceLogic(issuer=config.issuer),
            None
            if config.downstream is None
            else sync_downstream(config.downstream, config.issuer, tracing),
        ),
        server,
    )
    health_servicer = health_servicer or KeyedHealthServicer(verifier, HEALTH_SERVICES)
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    _add_common_services(server, config.reflection)
    port = _bind(server, config)
    for service in HEALTH_SERVICES:
        health_servicer.set(service, health_pb2.HealthCheckResponse.NOT_SERVING)
    server.start()
    follow_keys(server, health_servicer, verifier, HEALTH_SERVICES)
    return server, port


async def start_aio_server(
    config: ResourceServerConfig,
    verifier: TokenVerifier,
    *,
    observer: VerifyObserver | None = None,
    health_servicer: health.aio.HealthServicer | None = None,
    tracing: Tracing | None = None,
) -> tuple[grpc.aio.Server, int]:
    """A started ``grpc.aio`` server with the async auth interceptor, and its bound port.

    As :func:`build_server`: health follows the key set; ``observer`` sees each check,
    ``tracing`` traces each call.
    """
    auth = AsyncAuthInterceptor(
        verifier,
        resource_policy(),
        cert_binding=config.cert_binding,
        observer=_observer(observer, tracing),
    )
    server = grpc.aio.server(
        interceptors=[auth] if tracing is None else [tracing.aio_interceptor(), auth],
        options=server_options(config),
    )
    resource_pb2_grpc.add_ResourceServiceServicer_to_server(
        AsyncResourceServicer(
            ResourceLogic(issuer=config.issuer),
            config.downstream and aio_downstream(config.downstream, config.issuer, tracing),
        ),
        server,
    )
    aio_health = health_servicer or AsyncKeyedHealthServicer(verifier, HEALTH_SERVICES)
    health_pb2_grpc.add_HealthServicer_to_server(aio_health, server)
    _add_common_services(server, config.reflection)
    port = _bind(server, config)
    for service in HEALTH_SERVICES:
        await aio_health.set(service, health_pb2.HealthCheckResponse.NOT_SERVING)
    await server.start()
    task = asyncio.create_task(
        afollow_keys(server, aio_health, verifier, HEALTH_SERVICES), name="resource-health"
    )
    _FOLLOWERS.add(task)
    task.add_done_callback(_FOLLOWERS.discard)
    return server, port


# The health followers of running aio servers (a task needs a strong reference).
_FOLLOWERS: set[asyncio.Task[None]] = set()
