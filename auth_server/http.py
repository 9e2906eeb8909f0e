"""The HTTP face: the JWKS (RFC 7517) and discovery metadata (OIDC, RFC 8414), for HTTP clients.

The OAuth endpoints (``/oauth2/*``) are added by :mod:`auth_server.oauth_http`.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Any
from urllib.parse import urlsplit

from aiohttp import web

from auth_server.publisher import JwksPublisher
from auth_server.ratelimit import RateLimiter, RateLimits, client_key, route_group

JWKS_PATH = "/.well-known/jwks.json"
DISCOVERY_PATH = "/.well-known/openid-configuration"
AS_METADATA_PATH = "/.well-known/oauth-authorization-server"  # RFC 8414 §3
#: The largest request body read (the token endpoint's forms; assertions are <= 8 KiB).
MAX_BODY_SIZE = 16 * 1024
# RFC 5861. A cache may serve the set up to max-age + stale-while-revalidate old,
# which the next key's pre-publication (2 x max-age) covers; while the issuer is
# down it may serve it an hour longer, as the verifiers' own caches do.
STALE_IF_ERROR = 3600
_PUBLISHER = web.AppKey("publisher", JwksPublisher)
_DISCOVERY: web.AppKey[Mapping[str, Any]] = web.AppKey("discovery")
_CLOCK: web.AppKey[Callable[[], float]] = web.AppKey("clock")
_LIMITER = web.AppKey("rate_limiter", RateLimiter)


def _etag_matches(header: str | None, etag: str) -> bool:
    if header is None:
        return False
    if header.strip() == "*":
        return True
    # If-None-Match uses the weak comparison (RFC 9110 §13.1.2).
    candidates = (c.strip().removeprefix("W/") for c in header.split(","))
    return f'"{etag}"' in candidates


async def _jwks(request: web.Request) -> web.Response:
    snapshot = request.app[_PUBLISHER].snapshot
    max_age = snapshot.max_age_at(request.app[_CLOCK]())
    headers = {
        "Cache-Control": (
            f"public, max-age={max_age}, stale-while-revalidate={snapshot.max_age},"
            f" stale-if-error={STALE_IF_ERROR}"
        ),
        "ETag": f'"{snapshot.etag}"',
    }
    if _etag_matches(request.headers.get("If-None-Match"), snapshot.etag):
        return web.Response(status=304, headers=headers)
    return web.Response(
        body=snapshot.body, content_type="application/jwk-set+json", headers=headers
    )


async def _discovery(request: web.Request) -> web.Response:
    base: Mapping[str, Any] = request.app[_DISCOVERY]
    document = dict(base)
    # During an --algorithm migration the set holds keys of both algorithms.
    published = {k["alg"] for k in request.app[_PUBLISHER].snapshot.keys if "alg" in k}
    document["id_token_signing_alg_values_supported"] = sorted(
        published.union(document["id_token_signing_alg_values_supported"])
    )
    return web.Response(
        body=json.dumps(document, separators=(",", ":")).encode(),
        content_type="application/json",
        headers={"Cache-Control": "public, max-age=3600"},
    )


@web.middleware
async def _rate_limit(
    request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
) -> web.StreamResponse:
    group = route_group(request.path)
    if group is not None:
        wait = request.app[_LIMITER].check(group, client_key(request.remote))
        if wait > 0:
            # RFC 6585 §4; Retry-After in whole seconds, rounded up (RFC 9110 §10.2.3).
            retry_after = str(max(1, math.ceil(wait)))
            # OAuth clients read `error` as an RFC 6749 §5.2 code, and "rate_limited" is not
            # one; temporarily_unavailable is the registered code for "try again later".
            error = (
                "temporarily_unavailable"
                if request.path.startswith("/oauth2/")
                else ("rate_limited")
            )
            return web.Response(
                status=429,
                body=json.dumps(
                    {"error": error, "error_description": "too many requests"},
                    separators=(",", ":"),
                ).encode(),
                content_type="application/json",
                headers={"Retry-After": retry_after, "Cache-Control": "no-store"},
            )
    return await handler(request)


async def _drop_server_header(request: web.Request, response: web.StreamResponse) -> None:
    # Don't advertise the framework and Python version to scanners.
    response.headers.pop("Server", None)


def build_http_app(
    publisher: JwksPublisher,
    *,
    issuer: str,
    algorithms: Sequence[str],
    now: Callable[[], float] = time.time,
    rate_limits: RateLimits | None = None,
) -> web.Application:
    """The aiohttp application serving the well-known documents.

    ``now`` is the key schedule's clock, for the JWKS ``max-age``. Every route
    under a rate-limited prefix (:data:`auth_server.ratelimit.ROUTE_GROUPS`),
    including routes added to the app later, is limited per client address by
    ``rate_limits`` (the :class:`RateLimits` defaults if not given).
    """
    base = issuer.rstrip("/")
    discovery = {
        "issuer": issuer,
        "jwks_uri": base + JWKS_PATH,
        "id_token_signing_alg_values_supported": list(algorithms),
        "token_endpoint_auth_methods_supported": ["none"],
        "grant_types_supported": ["password", "refresh_token"],
        "response_types_supported": ["token"],
        "subject_types_supported": ["public"],
        "claims_supported": [
            "iss",
            "sub",
            "aud",
            "exp",
            "iat",
            "nbf",
            "jti",
            "sid",
            "scope",
            "username",
        ],
    }
    # The OAuth forms are the largest bodies served (16 KiB, see oauth_http).
    app = web.Application(client_max_size=MAX_BODY_SIZE, middlewares=[_rate_limit])
    app[_LIMITER] = RateLimiter(rate_limits or RateLimits())
    app[_PUBLISHER] = publisher
    app[_DISCOVERY] = discovery
    app[_CLOCK] = now
    app.on_response_prepare.append(_drop_server_header)
    app.router.add_get(JWKS_PATH, _jwks)
    app.router.add_get(DISCOVERY_PATH, _discovery)
    app.router.add_get(AS_METADATA_PATH, _discovery)
    path = urlsplit(issuer).path.rstrip("/")
    if path:
        # RFC 8414 §3.1: an issuer with a path has its metadata at well-known + path.
        app.router.add_get(AS_METADATA_PATH + path, _discovery)
    return app


def extend_discovery(app: web.Application, fields: Mapping[str, Any]) -> None:
    """Add or replace metadata fields of both discovery documents (before the app starts)."""
    base: Mapping[str, Any] = app[_DISCOVERY]
    document: Mapping[str, Any] = {**base, **fields}
    app[_DISCOVERY] = document
