"""``ssot-auth serve``: run the auth service."""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import logging
from collections.abc import Callable, Coroutine, Sequence
from typing import Any

from auth_server._gc import tune_gc_for_streams
from auth_server.app import StartupError, start_auth_server
from auth_server.commands._common import CommandError
from auth_server.commands._keystore import pkcs11_settings
from auth_server.commands.serve_flags import add_server_arguments
from auth_server.commands.settings import (
    key_kdf,
    prepare_data_dir,
    resolve_passphrase,
)
from auth_server.config import (
    AuthServerConfig,
)
from auth_server.errors import AuthServerError
from auth_server.hashing import HashingPolicy
from auth_server.passwords import Argon2Parameters
from auth_server.ratelimit import RateLimit, RateLimits
from auth_server.sessions import SessionPolicy
from auth_server.throttle import ThrottlePolicy
from interceptors._cli import (
    SettingsError,
    run_until_signalled,
    start_tracing,
)
from interceptors._workers import (
    WorkerError,
    add_workers_argument,
    per_worker_address,
    run_workers,
    worker_index,
)

_LOGGER = logging.getLogger("ssot_auth")


def register(commands: Any) -> None:
    serve = commands.add_parser("serve", help="run the auth service")
    add_server_arguments(serve, required=True)
    add_workers_argument(serve)
    serve.set_defaults(run=_cmd_serve)


def audiences_of(ns: argparse.Namespace) -> list[str]:
    """The ``--audience`` values given (else ``SSOT_AUDIENCE``'s), the default first."""
    given: list[str] | None = ns.audience
    return list(given if given else (ns.env_audience or []))


def server_config(
    ns: argparse.Namespace, *, issuer: str, audience: str | Sequence[str]
) -> AuthServerConfig:
    data_dir = prepare_data_dir(ns.data_dir)
    audiences = [audience] if isinstance(audience, str) else list(audience)
    if not audiences:
        raise CommandError("give at least one --audience")
    pkcs11 = pkcs11_settings(ns)
    try:
        return AuthServerConfig(
            grpc_address=ns.grpc,
            http_address=ns.http,
            data_dir=data_dir,
            database_url=ns.database_url,
            issuer=issuer,
            audience=audiences[0],
            additional_audiences=tuple(audiences[1:]),
            algorithm=ns.algorithm,
            rsa_bits=ns.rsa_bits,
            access_token_ttl=ns.access_token_ttl,
            jwks_max_age=ns.jwks_max_age,
            key_passphrase=resolve_passphrase(ns, data_dir, create=True),
            allow_short_passphrase=ns.allow_short_passphrase,
            key_kdf=key_kdf(ns),
            key_store=ns.key_store,
            pkcs11=pkcs11,
            reflection=not ns.no_reflection,
            listen_for_changes=not ns.no_listen,
            key_rotation_interval=ns.key_rotation_interval,
            key_activate_after=ns.key_activate_after,
            key_retire_after=ns.key_retire_after,
            sessions=SessionPolicy(
                idle_timeout=ns.session_idle_ttl,
                max_lifetime=ns.session_max_lifetime,
                refresh_grace=ns.refresh_grace,
                max_per_user=ns.max_sessions_per_user,
            ),
            throttle=ThrottlePolicy(
                window=ns.throttle_window,
                per_user_address=ns.throttle_user_address,
                per_address=ns.throttle_address,
                per_user=ns.throttle_user,
                max_delay=ns.throttle_max_delay,
            ),
            argon2=Argon2Parameters(
                time_cost=ns.argon2_time_cost,
                memory_cost=ns.argon2_memory_cost,
                parallelism=ns.argon2_parallelism,
            ),
            hashing=HashingPolicy(workers=ns.hash_workers or None, max_wait=ns.hash_max_wait),
            watch_auth=ns.watch_auth,
            tls_cert=ns.tls_cert,
            tls_key=ns.tls_key,
            client_ca=ns.client_ca,
            max_metadata_size=ns.max_metadata_size,
            max_message_size=ns.max_message_size,
            max_concurrent_streams=ns.max_concurrent_streams,
            max_login_request_size=ns.max_login_request_size,
            allow_insecure_token_http=ns.allow_insecure_token_http,
            metrics_address=ns.metrics,
            shutdown_grace=ns.shutdown_grace,
            http_rate_limits=RateLimits(
                groups={
                    "documents": RateLimit(rate=ns.http_rate_limit, burst=ns.http_rate_burst),
                    "token": RateLimit(
                        rate=ns.http_token_rate_limit, burst=ns.http_token_rate_burst
                    ),
                },
                max_addresses=ns.http_rate_limit_addresses,
            ),
        )
    except ValueError as exc:
        raise CommandError(str(exc)) from None


def _cmd_serve(ns: argparse.Namespace) -> int:
    config = server_config(ns, issuer=ns.issuer, audience=audiences_of(ns))
    # A process of its own: thousands of push streams would otherwise see full
    # collections run in the middle of pushes (auth_server._gc). Not done in
    # start_auth_server, which also runs inside other programs (and tests).
    tune_gc_for_streams()
    if ns.workers == 1:
        return run_until_signalled(_serving(config, lambda: None))
    shared = dataclasses.replace(config, reuse_port=True)
    try:
        return run_workers(
            ns.workers,
            lambda ready: run_until_signalled(_serving(shared, ready)),
            prog="ssot-auth",
            errors=(CommandError, SettingsError, StartupError, AuthServerError),
            ports=[(config.grpc_address, "--grpc"), (config.http_address, "--http")],
        )
    except WorkerError as exc:
        raise CommandError(str(exc)) from None


def _serving(
    config: AuthServerConfig, ready: Callable[[], None]
) -> Callable[[asyncio.Event], Coroutine[Any, Any, None]]:
    # Per process: an exporter's threads do not survive the fork of --workers.
    tracing = start_tracing("ssot-auth")
    if worker_index() is not None:
        config = dataclasses.replace(
            config, metrics_address=per_worker_address(config.metrics_address)
        )

    async def serve(stop: asyncio.Event) -> None:
        server = await start_auth_server(
            config, span=None if tracing is None else tracing.server_span
        )
        print(
            f"ssot-auth serving gRPC on {server.grpc_target}, "
            f"JWKS on {server.http_base_url}/.well-known/jwks.json, "
            f"metrics on {server.metrics_url}",
            flush=True,
        )
        ready()
        await stop.wait()
        _LOGGER.info("shutting down: draining for up to %.1f s", config.shutdown_grace)
        await server.stop()
        _LOGGER.info("stopped")

    return serve
