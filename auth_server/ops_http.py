"""``/metrics``, ``/healthz`` and ``/readyz``: the HTTP face of metrics and health.

They are served on the ``--http`` listener, or on a ``--metrics HOST:PORT``
listener of their own (recommended when ``--http`` faces the internet: the
metrics are for the operator, not the world). ``/readyz`` answers from the last
readiness probe and never starts one, so any number of load balancers asking
cannot make probes overlap.
"""

from __future__ import annotations

from collections.abc import Callable

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

METRICS_PATH = "/metrics"
HEALTHZ_PATH = "/healthz"
READYZ_PATH = "/readyz"


def add_ops_routes(
    app: web.Application,
    *,
    registry: CollectorRegistry | None,
    not_ready: Callable[[], str | None],
) -> None:
    """Add the health routes, and ``/metrics`` when ``registry`` is given.

    Args:
        app: The application to extend.
        registry: The server's metrics; ``None`` leaves ``/metrics`` out (served elsewhere).
        not_ready: Why the server is not ready now, or ``None`` when it is.
    """

    async def healthz(request: web.Request) -> web.Response:
        return web.Response(text="ok\n", headers={"Cache-Control": "no-store"})

    async def readyz(request: web.Request) -> web.Response:
        reason = not_ready()
        if reason is None:
            return web.Response(text="ready\n", headers={"Cache-Control": "no-store"})
        return web.Response(
            status=503, text=f"not ready: {reason}\n", headers={"Cache-Control": "no-store"}
        )

    app.router.add_get(HEALTHZ_PATH, healthz)
    app.router.add_get(READYZ_PATH, readyz)
    if registry is not None:
        scraped = registry

        async def metrics(request: web.Request) -> web.Response:
            # Collectors read in-memory counters only: cheap enough for the event loop.
            return web.Response(
                body=generate_latest(scraped),
                headers={"Content-Type": CONTENT_TYPE_LATEST, "Cache-Control": "no-store"},
            )

        app.router.add_get(METRICS_PATH, metrics)


def metrics_app(
    registry: CollectorRegistry, not_ready: Callable[[], str | None]
) -> web.Application:
    """The application of the separate ``--metrics`` listener."""
    app = web.Application()
    add_ops_routes(app, registry=registry, not_ready=not_ready)
    return app
