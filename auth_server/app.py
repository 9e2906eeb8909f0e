"""Runs the auth service's gRPC and HTTP servers in one event loop.

The plain objects behind them are built by :mod:`auth_server.components`
(``build_components``, ``Components`` and ``StartupError`` are re-exported here).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import ssl
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import grpc
from aiohttp import web
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from auth_server._threads import ThreadCalls
from auth_server.components import Components as Components
from auth_server.components import StartupError as StartupError
from auth_server.components import build_components as build_components
from auth_server.config import AuthServerConfig, split_address
from auth_server.errors import AuthServerError
from auth_server.hashing import HashingPool
from auth_server.http import build_http_app
from auth_server.metrics import AuthMetrics
from auth_server.notifications import KEYS, REVOCATIONS, ChangeListener
from auth_server.oauth_http import add_oauth_routes
from auth_server.oauth_wiring import build_oauth_endpoint, build_token_inspector
from auth_server.ops_http import add_ops_routes, metrics_app
from auth_server.publisher import JwksPublisher
from auth_server.readiness import Readiness
from auth_server.revocation_store import REVOCATION_RETENTION
from auth_server.revocations import RevocationPublisher
from auth_server.rpc_observer import ObservingInterceptor, SpanFactory
from auth_server.scheduler import KeyScheduler
from auth_server.service import AuthServicer
from auth_server.tls import TlsError, grpc_server_credentials, http_server_context
from auth_server.watch_auth import WatchGuard
from interceptors._cli import SERVER_TLS_FLAGS
from interceptors.audit import audit_listener
from interceptors.tls import is_loopback_host
from protos import auth_pb2, auth_pb2_grpc

_LOGGER = logging.getLogger(__name__)

AUTH_SERVICE_NAME = auth_pb2.DESCRIPTOR.services_by_name["AuthService"].full_name


@dataclass(kw_only=True)
class RunningAuthServer:
    """A started auth service. ``grpc_port``/``http_port`` are the bound ports."""

    config: AuthServerConfig
    components: Components
    grpc_server: grpc.aio.Server
    http_runner: web.AppRunner
    publisher: JwksPublisher
    scheduler: KeyScheduler
    health: health.aio.HealthServicer
    grpc_port: int
    http_port: int
    revocations: RevocationPublisher | None = None
    cleanup_task: asyncio.Task[None] | None = None
    cleanup_calls: ThreadCalls = field(default_factory=ThreadCalls)
    hashing: HashingPool | None = None
    listener: ChangeListener | None = None
    metrics: AuthMetrics = field(default_factory=AuthMetrics)
    readiness: Readiness | None = None
    metrics_runner: web.AppRunner | None = None
    metrics_port: int | None = None
    _stopped: asyncio.Event = field(default_factory=asyncio.Event)

    @property
    def grpc_target(self) -> str:
        return f"{split_address(self.config.grpc_address)[0]}:{self.grpc_port}"

    @property
    def http_base_url(self) -> str:
        host = split_address(self.config.http_address)[0]
        scheme = "https" if self.config.tls_cert is not None else "http"
        return f"{scheme}://{host}:{self.http_port}"

    @property
    def metrics_url(self) -> str:
        """Where ``/metrics`` is served (the ``--metrics`` listener, else ``--http``)."""
        if self.metrics_port is None or self.config.metrics_address is None:
            return f"{self.http_base_url}/metrics"
        return f"http://{split_address(self.config.metrics_address)[0]}:{self.metrics_port}/metrics"

    async def stop(self, grace: float | None = None) -> None:
        """Drain and stop: health says NOT_SERVING first, push streams end with
        ``UNAVAILABLE`` "server shutting down" (verifiers reopen them elsewhere at
        once), in-flight RPCs get ``grace`` seconds (default ``--shutdown-grace``).
        """
        if self._stopped.is_set():
            return
        self._stopped.set()
        grace = self.config.shutdown_grace if grace is None else grace
        if self.readiness is not None:
            await self.readiness.stop()
        await self.health.enter_graceful_shutdown()
        await self.scheduler.stop()
        if self.cleanup_task is not None:
            self.cleanup_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self.cleanup_task
        # A purge cancelled above may still run in its thread; the engine is disposed last.
        await self.cleanup_calls.drain()
        if self.listener is not None:
            await asyncio.to_thread(self.listener.stop)
        await self.publisher.stop()
        if self.revocations is not None:
            await self.revocations.stop()
        await self.grpc_server.stop(grace)
        if self.hashing is not None:
            await asyncio.to_thread(self.hashing.close)
        await self.http_runner.cleanup()
        if self.metrics_runner is not None:
            await self.metrics_runner.cleanup()
        self.components.client_side.close()
        await asyncio.to_thread(self.components.database.dispose)
        self.components.keys.close()

    async def wait_stopped(self) -> None:
        await self._stopped.wait()


async def start_auth_server(
    config: AuthServerConfig,
    *,
    now: Callable[[], float] = time.time,
    span: SpanFactory | None = None,
) -> RunningAuthServer:
    """Build everything and start serving; the ports in ``config`` may be 0.

    ``now`` is the server's clock (see :func:`build_components`). ``span`` wraps
    each call in a trace span (``Tracing().server_span`` of :mod:`interceptors.otel`);
    ``None``: no tracing.

    Raises:
        StartupError: an address cannot be bound.
        AuthServerError: storage or keys are unusable (wrong passphrase, ...).
    """
    metrics = AuthMetrics(now=now)
    metrics.expect_algorithm(config.algorithm)
    # Everything started from here (tasks, threads, the servers' handlers) inherits
    # this server's audit listener: its events count on its metrics only.
    with audit_listener(metrics.on_event):
        return await _start(config, now, metrics, span)


async def _start(
    config: AuthServerConfig,
    now: Callable[[], float],
    metrics: AuthMetrics,
    span: SpanFactory | None,
) -> RunningAuthServer:
    try:
        grpc_credentials, http_context = _tls_material(config)
    except TlsError as exc:
        raise StartupError(exc.naming(SERVER_TLS_FLAGS)) from None
    components = await asyncio.to_thread(build_components, config, now=now)
    publisher = JwksPublisher(
        components.authority.jwks,
        poll_interval=config.key_poll_interval,
        listening_poll_interval=config.listening_poll_interval,
    )
    await publisher.start()
    # Changes this process makes are published at once; others' within the poll interval.
    components.keys.subscribe(publisher.request_refresh)
    scheduler = KeyScheduler(
        components.keys, interval=config.key_check_interval, on_change=publisher.refresh
    )
    await scheduler.start()
    revocations = RevocationPublisher(
        components.sessions.revocations.read,
        retention=REVOCATION_RETENTION,
        poll_interval=config.revocation_poll_interval,
        listening_poll_interval=config.listening_poll_interval,
        now=now,
    )
    try:
        await revocations.start()
    except BaseException:
        await scheduler.stop()
        await publisher.stop()
        raise

    inspector = build_token_inspector(config, publisher=publisher, revocations=revocations, now=now)
    oauth = build_oauth_endpoint(
        authority=components.authority,
        issuer=components.issuer,
        sessions=components.sessions,
        client_side=components.client_side,
        inspector=inspector,
        revocations=revocations,
        database=components.database,
        users=components.users,
        throttle=components.throttle,
        now=now,
    )
    # Logins (argon2) run on their own bounded threads; everything else keeps
    # the default executor (issue 15).
    hasher = components.users.hasher
    hashing = HashingPool(config.hashing, cost=lambda: hasher.cost)
    health_servicer = health.aio.HealthServicer()

    async def health_follows(ready: bool) -> None:
        status = (
            health_pb2.HealthCheckResponse.SERVING
            if ready
            else health_pb2.HealthCheckResponse.NOT_SERVING
        )
        for service in ("", AUTH_SERVICE_NAME):
            await health_servicer.set(service, status)

    readiness = Readiness(
        components.keys,
        interval=config.readiness_interval,
        on_change=health_follows,
        next_set_change=lambda: publisher.snapshot.next_change_at,
        now=now,
    )
    metrics.sources.keys = lambda: readiness.figures
    metrics.sources.ready = lambda: readiness.ready
    metrics.sources.subscribers = lambda: {
        "jwks": publisher.watchers,
        "revocations": revocations.watchers,
    }
    metrics.sources.revocations = lambda: (
        len(revocations.state.sessions),
        len(revocations.state.watermarks),
    )
    server = grpc.aio.server(
        interceptors=[ObservingInterceptor(metrics, span)], options=grpc_server_options(config)
    )
    auth_pb2_grpc.add_AuthServiceServicer_to_server(
        AuthServicer(
            components.authority,
            publisher,
            revocations,
            hashing=hashing,
            max_login_request_size=config.max_login_request_size,
            oauth=oauth,
            watch_guard=WatchGuard(config.watch_auth, inspector=inspector, now=now),
        ),
        server,
    )
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    if config.reflection:
        reflection.enable_server_reflection(
            (AUTH_SERVICE_NAME, health.SERVICE_NAME, reflection.SERVICE_NAME), server
        )
    try:
        if grpc_credentials is not None:
            grpc_port = server.add_secure_port(config.grpc_address, grpc_credentials)
        else:
            _warn_if_exposed(config.grpc_address, "--grpc", "logins, passwords and tokens")
            grpc_port = server.add_insecure_port(config.grpc_address)
        _warn_if_watch_open(config)
    except RuntimeError as exc:
        await scheduler.stop()
        await publisher.stop()
        await revocations.stop()
        raise StartupError(f"cannot listen on {config.grpc_address} (--grpc)") from exc
    await server.start()

    app = build_http_app(
        publisher,
        issuer=config.issuer,
        algorithms=[config.algorithm],
        now=now,
        rate_limits=config.http_rate_limits,
    )
    add_ops_routes(
        app,
        registry=None if config.metrics_address else metrics.registry,
        not_ready=lambda: None if readiness.ready else readiness.reason,
    )
    add_oauth_routes(
        app,
        oauth,
        issuer=config.issuer,
        allow_insecure_http=config.allow_insecure_token_http,
        tls_client_auth=config.client_ca is not None,
    )
    runner = web.AppRunner(app, access_log=None, handle_signals=False)
    await runner.setup()
    host, port = split_address(config.http_address)
    if http_context is None:
        _warn_if_exposed(config.http_address, "--http", "the signing keys verifiers trust")
    site = web.TCPSite(runner, host, port, reuse_port=config.reuse_port, ssl_context=http_context)
    try:
        await site.start()
    except OSError as exc:
        await server.stop(0)
        await runner.cleanup()
        await scheduler.stop()
        await publisher.stop()
        await revocations.stop()
        raise StartupError(f"cannot listen on {config.http_address} (--http)") from exc
    http_port = runner.addresses[0][1]
    metrics_runner, metrics_port = None, None
    if config.metrics_address is not None:
        metrics_runner = web.AppRunner(
            metrics_app(metrics.registry, lambda: None if readiness.ready else readiness.reason),
            access_log=None,
            handle_signals=False,
        )
        await metrics_runner.setup()
        m_host, m_port = split_address(config.metrics_address)
        try:
            await web.TCPSite(metrics_runner, m_host, m_port, reuse_port=False).start()
        except OSError as exc:
            await server.stop(0)
            await runner.cleanup()
            await metrics_runner.cleanup()
            await scheduler.stop()
            await publisher.stop()
            await revocations.stop()
            raise StartupError(f"cannot listen on {config.metrics_address} (--metrics)") from exc
        metrics_port = metrics_runner.addresses[0][1]

    # Health follows the readiness probe from its first result on.
    await readiness.start()
    _LOGGER.info(
        "auth service ready grpc=%s http=%s issuer=%s",
        f"{host}:{grpc_port}",
        f"{host}:{http_port}",
        config.issuer,
    )
    listener = None
    if config.listen_for_changes and components.database.dialect_name == "postgresql":
        # Other replicas and the CLI are heard at once; the polls stay as the fallback.
        listener = ChangeListener(
            components.database.engine, {KEYS: (publisher,), REVOCATIONS: (revocations,)}
        )
        listener.start()
    cleanup_calls = ThreadCalls()
    return RunningAuthServer(
        config=config,
        components=components,
        grpc_server=server,
        http_runner=runner,
        publisher=publisher,
        scheduler=scheduler,
        health=health_servicer,
        grpc_port=grpc_port,
        http_port=http_port,
        revocations=revocations,
        hashing=hashing,
        listener=listener,
        metrics=metrics,
        readiness=readiness,
        metrics_runner=metrics_runner,
        metrics_port=metrics_port,
        cleanup_task=asyncio.create_task(
            _clean_up_periodically(components, config.cleanup_interval, cleanup_calls),
            name="cleanup",
        ),
        cleanup_calls=cleanup_calls,
    )


async def _clean_up_periodically(
    components: Components, interval: float, calls: ThreadCalls
) -> None:
    """Delete ended sessions and stale throttle counters (the database stays small)."""
    while True:
        await asyncio.sleep(interval)
        try:
            while await calls.run(components.sessions.purge_expired) > 0:
                pass
            await calls.run(components.throttle.purge)
            await calls.run(components.client_side.purge)
        except Exception as exc:  # noqa: BLE001 - retried next interval
            reason = exc.message if isinstance(exc, AuthServerError) else type(exc).__name__
            _LOGGER.warning("cleanup of ended sessions failed: %s", reason)


def grpc_server_options(config: AuthServerConfig) -> list[tuple[str, int]]:
    """The gRPC channel arguments that carry the server's limits."""
    return [
        ("grpc.max_receive_message_length", config.max_message_size),
        # Soft and hard limit alike: grpc otherwise refuses calls between the two at random.
        ("grpc.max_metadata_size", config.max_metadata_size),
        ("grpc.absolute_max_metadata_size", config.max_metadata_size),
        ("grpc.max_concurrent_streams", config.max_concurrent_streams),
        # Off unless the workers of `serve --workers N` share the port: a second
        # server started on a taken port by mistake must fail, not share it.
        ("grpc.so_reuseport", 1 if config.reuse_port else 0),
    ]


def _tls_material(
    config: AuthServerConfig,
) -> tuple[grpc.ServerCredentials | None, ssl.SSLContext | None]:
    if config.tls_cert is None or config.tls_key is None:
        return None, None
    return (
        grpc_server_credentials(config.tls_cert, config.tls_key, config.client_ca),
        http_server_context(config.tls_cert, config.tls_key, config.client_ca),
    )


def _warn_if_exposed(address: str, flag: str, what: str) -> None:
    host = split_address(address)[0]
    if not is_loopback_host(host):
        _LOGGER.warning(
            "SECURITY WARNING: %s %s listens beyond this machine WITHOUT TLS: %s cross the"
            " network in clear text; use --tls-cert and --tls-key",
            flag,
            address,
            what,
        )


def _warn_if_watch_open(config: AuthServerConfig) -> None:
    """Warn when a plaintext listener beyond loopback lets anyone follow the push streams."""
    if config.watch_auth != "none" or config.tls_cert is not None:
        return
    if is_loopback_host(split_address(config.grpc_address)[0]):
        return
    _LOGGER.warning(
        "SECURITY WARNING: --grpc %s listens beyond this machine without TLS or --watch-auth:"
        " anyone who reaches it may hold WatchJwks and WatchRevocations streams open (each one"
        " costs the server) and read the revoked session ids; use --watch-auth token (a token"
        " with the ssot.watch scope), or TLS and --watch-auth mtls with --client-ca",
        config.grpc_address,
    )
