"""Metrics and health of the example resource service.

Health is ``NOT_SERVING`` until the verifier holds a key set (a load balancer
must not send calls that could only fail with ``UNAVAILABLE``), and again if it
loses it (the last good set dropped after its stale bound). ``--metrics``
serves :mod:`interceptors.prometheus` on a listener of its own.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import grpc
from grpc_health.v1 import health, health_pb2

from interceptors import KeyCache, TokenVerifier, VerifyObserver

_FOLLOW_INTERVAL = 0.25
SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


@dataclass
class MetricsEndpoint:
    """A running ``/metrics`` listener and the observer to give the interceptor."""

    observer: VerifyObserver
    port: int
    close: Callable[[], None]


def start_metrics(verifier: TokenVerifier, address: str) -> MetricsEndpoint:
    """Serve the verifier's metrics at ``address`` (HOST:PORT; port 0 picks one)."""
    from prometheus_client import CollectorRegistry, start_http_server

    from interceptors.prometheus import VerifierMetrics

    registry = CollectorRegistry()
    metrics = VerifierMetrics(verifier, registry)
    host, port = split_host_port(address)
    httpd, thread = start_http_server(port, addr=host, registry=registry)

    def close() -> None:
        httpd.shutdown()
        httpd.server_close()
        thread.join(5)

    return MetricsEndpoint(observer=metrics, port=int(httpd.server_port), close=close)


def split_host_port(address: str) -> tuple[str, int]:
    """``HOST:PORT`` (IPv6 in brackets) -> ``(host, port)``.

    Raises:
        ValueError: Not of that form.
    """
    host, sep, port = address.rpartition(":")
    if not sep or not host or not port.isdigit():
        raise ValueError(f"--metrics must be HOST:PORT, not {address!r}")
    return host.strip("[]"), int(port)


def holds_keys(verifier: TokenVerifier) -> bool:
    """Whether the verifier can check a token now.

    A cache that loads only on demand (``background=False``) and a provider without
    a key set count as ready: nothing would load their keys before a call asks.
    """
    keys: Any = verifier.keys
    if isinstance(keys, KeyCache) and not keys.loads_in_background:
        return True
    return getattr(keys, "key_set", True) is not None


class KeyedHealthServicer(health.HealthServicer):
    """gRPC health (sync) whose ``Check`` looks at the key set as it answers.

    ``Watch`` streams follow through :func:`follow_keys` (within a quarter second).
    """

    def __init__(self, verifier: TokenVerifier, services: tuple[str, ...]) -> None:
        super().__init__()
        self._verifier = verifier
        self._services = services
        self._draining = False

    def enter_graceful_shutdown(self) -> None:
        self._draining = True
        super().enter_graceful_shutdown()

    def Check(self, request: Any, context: Any) -> Any:
        if not self._draining:
            ready = holds_keys(self._verifier)
            for service in self._services:
                self.set(service, SERVING if ready else NOT_SERVING)
        return super().Check(request, context)


class AsyncKeyedHealthServicer(health.aio.HealthServicer):
    """The ``grpc.aio`` face of :class:`KeyedHealthServicer`."""

    def __init__(self, verifier: TokenVerifier, services: tuple[str, ...]) -> None:
        super().__init__()
        self._verifier = verifier
        self._services = services
        self._draining = False

    async def enter_graceful_shutdown(self) -> None:
        self._draining = True
        await super().enter_graceful_shutdown()

    async def Check(self, request: Any, context: Any) -> Any:
        if not self._draining:
            ready = holds_keys(self._verifier)
            for service in self._services:
                await self.set(service, SERVING if ready else NOT_SERVING)
        return await super().Check(request, context)


def follow_keys(
    server: grpc.Server,
    servicer: health.HealthServicer,
    verifier: TokenVerifier,
    services: tuple[str, ...],
) -> threading.Thread:
    """Keep the sync server's health in step with the key set until the server stops."""

    def follow() -> None:
        state = None
        while True:
            ready = holds_keys(verifier)
            if ready != state:
                state = ready
                for service in services:
                    servicer.set(service, SERVING if ready else NOT_SERVING)
            # grpc returns True when the wait timed out, False once the server stopped.
            if not server.wait_for_termination(_FOLLOW_INTERVAL):
                return

    thread = threading.Thread(target=follow, name="resource-health", daemon=True)
    thread.start()
    return thread


async def afollow_keys(
    server: grpc.aio.Server,
    servicer: health.aio.HealthServicer,
    verifier: TokenVerifier,
    services: tuple[str, ...],
) -> None:
    """Keep the aio server's health in step with the key set until the server stops."""
    state = None
    while True:
        ready = holds_keys(verifier)
        if ready != state:
            state = ready
            for service in services:
                await servicer.set(service, SERVING if ready else NOT_SERVING)
        # grpc returns True when the wait timed out, False once the server stopped.
        if not await server.wait_for_termination(_FOLLOW_INTERVAL):
            return
