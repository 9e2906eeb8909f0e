"""The HTTP face of the OAuth endpoints: token (RFC 6749 §3.2), revoke (7009), introspect (7662).

Handlers only parse and render; :class:`~auth_server.oauth.OAuthEndpoint` decides.
Every bad input gets an RFC 6749 §5.2 JSON error, never a 500 or a traceback:
a content type other than ``application/x-www-form-urlencoded``, a body over
:data:`~auth_server.http.MAX_BODY_SIZE` (413), parameters in the query string or
repeated (§3.2), two client authentication methods (§2.3), a malformed Basic
header. Requests from beyond loopback over plain HTTP are refused (they carry
secrets or tokens) unless the operator allowed it.
"""

from __future__ import annotations

import base64
import binascii
import ipaddress
import json
import logging
from collections.abc import Awaitable, Callable, Mapping
from typing import Any
from urllib.parse import parse_qsl, unquote

from aiohttp import web

from auth_server.authority import TokenGrant
from auth_server.client_auth import BASIC, POST, ClientCredentials
from auth_server.client_tls import PeerCertificate, peer_certificate_from_der
from auth_server.clients import ASSERTION_ALGORITHMS
from auth_server.errors import (
    ClientAuthThrottled,
    OAuthError,
    OAuthInvalidRequest,
    OAuthServerError,
)
from auth_server.federation import ID_TOKEN_TYPE
from auth_server.http import MAX_BODY_SIZE, extend_discovery
from auth_server.oauth import GRANT_TYPES, OAuthEndpoint, TokenRequest
from auth_server.throttle import client_address
from auth_server.token_exchange import ACCESS_TOKEN_TYPE, TOKEN_EXCHANGE

_LOGGER = logging.getLogger(__name__)

TOKEN_PATH = "/oauth2/token"  # noqa: S105 - a URL path, not a secret
REVOKE_PATH = "/oauth2/revoke"
INTROSPECT_PATH = "/oauth2/introspect"
_FORM = "application/x-www-form-urlencoded"
_MAX_FIELDS = 32
_NO_STORE = {"Cache-Control": "no-store", "Pragma": "no-cache"}
_ENDPOINT: web.AppKey[OAuthEndpoint] = web.AppKey("oauth_endpoint", OAuthEndpoint)
_INSECURE: web.AppKey[bool] = web.AppKey("oauth_allow_insecure_http", bool)


class BodyTooLarge(OAuthInvalidRequest):
    """The request body is over the limit."""

    http_status = 413
    message = "request body too large"


class MethodNotAllowed(OAuthInvalidRequest):
    """Only POST is served here."""

    http_status = 405
    message = "use POST"


def add_oauth_routes(
    app: web.Application,
    endpoint: OAuthEndpoint,
    *,
    issuer: str,
    allow_insecure_http: bool = False,
    tls_client_auth: bool = False,
) -> None:
    """Serve the OAuth endpoints on ``app`` and list them in its discovery documents."""
    app[_ENDPOINT] = endpoint
    app[_INSECURE] = allow_insecure_http
    app.router.add_route("*", TOKEN_PATH, _token)
    app.router.add_route("*", REVOKE_PATH, _revoke)
    app.router.add_route("*", INTROSPECT_PATH, _introspect)
    base = issuer.rstrip("/")
    methods = ["private_key_jwt", "client_secret_basic", "client_secret_post"]
    if tls_client_auth:
        methods.append("tls_client_auth")
    algorithms = sorted(ASSERTION_ALGORITHMS)
    extend_discovery(
        app,
        {
            "token_endpoint": base + TOKEN_PATH,
            "revocation_endpoint": base + REVOKE_PATH,
            "introspection_endpoint": base + INTROSPECT_PATH,
            # RFC 9700 §2.4: the password grant is only the gRPC Login, never HTTP.
            "grant_types_supported": list(GRANT_TYPES),
            "token_endpoint_auth_methods_supported": methods,
            "token_endpoint_auth_signing_alg_values_supported": algorithms,
            "revocation_endpoint_auth_methods_supported": ["none", *methods],
            "revocation_endpoint_auth_signing_alg_values_supported": algorithms,
            "introspection_endpoint_auth_methods_supported": methods,
            "introspection_endpoint_auth_signing_alg_values_supported": algorithms,
            "tls_client_certificate_bound_access_tokens": True,
            # RFC 8693 subjects: our access tokens, and upstream ID tokens (sign-in).
            "ssot_subject_token_types_supported": [ACCESS_TOKEN_TYPE, ID_TOKEN_TYPE],
            "claims_supported": [
                *("iss", "sub", "aud", "exp", "iat", "nbf", "jti", "sid", "scope"),
                *("username", "client_id", "cnf"),
            ],
        },
    )


# -- handlers ---------------------------------------------------------------------------------


async def _token(request: web.Request) -> web.Response:
    async def handle(form: dict[str, str], creds: ClientCredentials) -> web.Response:
        grant = await request.app[_ENDPOINT].token(
            TokenRequest(
                grant_type=form.get("grant_type", ""),
                scope=form.get("scope", ""),
                audience=form.get("audience", ""),
                resource=form.get("resource", ""),
                refresh_token=form.get("refresh_token", ""),
                subject_token=form.get("subject_token", ""),
                subject_token_type=form.get("subject_token_type", ""),
                requested_token_type=form.get("requested_token_type", ""),
                credentials=creds,
                address=_address(request),
            )
        )
        body = _token_body(grant)
        if form.get("grant_type") == TOKEN_EXCHANGE:
            body["issued_token_type"] = ACCESS_TOKEN_TYPE  # RFC 8693 §2.2.1: required
        return _json(200, body)

    return await _guarded(request, handle)


async def _revoke(request: web.Request) -> web.Response:
    async def handle(form: dict[str, str], creds: ClientCredentials) -> web.Response:
        await request.app[_ENDPOINT].revoke(
            form.get("token", ""),
            creds,
            address=_address(request),
            hint=form.get("token_type_hint", ""),
        )
        return web.Response(status=200, headers=_NO_STORE)

    return await _guarded(request, handle)


async def _introspect(request: web.Request) -> web.Response:
    async def handle(form: dict[str, str], creds: ClientCredentials) -> web.Response:
        body = await request.app[_ENDPOINT].introspect(
            form.get("token", ""), creds, address=_address(request)
        )
        return _json(200, body)

    return await _guarded(request, handle)


Handler = Callable[[dict[str, str], ClientCredentials], Awaitable[web.Response]]


async def _guarded(request: web.Request, handle: Handler) -> web.Response:
    try:
        if request.method != "POST":
            raise MethodNotAllowed()
        _check_transport(request)
        form = await _read_form(request)
        return await handle(form, _credentials(request, form))
    except OAuthError as exc:
        return _error(exc)
    except Exception as exc:  # a server_error, never a traceback
        _LOGGER.error("unexpected %s at %s", type(exc).__name__, request.path, exc_info=exc)
        return _error(OAuthServerError())


# -- parsing -----------------------------------------------------------------------------------


def _check_transport(request: web.Request) -> None:
    if request.secure or request.app[_INSECURE] or _is_loopback(request.remote):
        return
    raise OAuthInvalidRequest("credentials and tokens need https (or a loopback client)")


async def _read_form(request: web.Request) -> dict[str, str]:
    if request.query_string:
        # Credentials in a URL end up in logs and histories (RFC 6749 §3.2, RFC 9700 §4.4).
        raise OAuthInvalidRequest("parameters belong in the request body")
    if request.content_type != _FORM:
        raise OAuthInvalidRequest(f"the content type must be {_FORM}")
    charset = request.charset
    if charset is not None and charset.lower() not in ("utf-8", "utf8"):
        raise OAuthInvalidRequest("the form must be UTF-8")
    if request.content_length is not None and request.content_length > MAX_BODY_SIZE:
        raise BodyTooLarge()
    try:
        body = await request.read()
    except web.HTTPRequestEntityTooLarge:
        raise BodyTooLarge() from None
    try:
        pairs = parse_qsl(
            body.decode("ascii"),
            keep_blank_values=True,
            max_num_fields=_MAX_FIELDS,
            encoding="utf-8",
            errors="strict",
        )
    except (UnicodeDecodeError, ValueError):
        raise OAuthInvalidRequest("the body is not a well-formed form") from None
    names = [name for name, _ in pairs]
    if len(set(names)) != len(names):
        raise OAuthInvalidRequest("a parameter is repeated")
    # RFC 6749 §3.1: a parameter without a value is treated as omitted.
    return {name: value for name, value in pairs if value}


def _credentials(request: web.Request, form: Mapping[str, str]) -> ClientCredentials:
    headers = request.headers.getall("Authorization", [])
    if len(headers) > 1:
        raise OAuthInvalidRequest("one Authorization header at most")
    certificate = _peer_certificate(request)
    if not headers:
        secret = form.get("client_secret", "")
        return ClientCredentials(
            client_id=form.get("client_id", ""),
            client_secret=secret,
            secret_via=POST if secret else "",
            assertion_type=form.get("client_assertion_type", ""),
            assertion=form.get("client_assertion", ""),
            certificate=certificate,
        )
    client_id, secret = _basic(headers[0])
    # RFC 6749 §2.3: one authentication method per request.
    if "client_secret" in form or "client_assertion" in form or "client_assertion_type" in form:
        raise OAuthInvalidRequest("use one client authentication method per request")
    if form.get("client_id", client_id) != client_id:
        raise OAuthInvalidRequest("client_id does not match the Authorization header")
    return ClientCredentials(
        client_id=client_id, client_secret=secret, secret_via=BASIC, certificate=certificate
    )


def _basic(header: str) -> tuple[str, str]:
    scheme, _, value = header.strip().partition(" ")
    if scheme.lower() != "basic":
        raise OAuthInvalidRequest("the Authorization scheme must be Basic")
    try:
        decoded = base64.b64decode(value.strip(), validate=True).decode("utf-8")
    except (binascii.Error, ValueError):
        raise OAuthInvalidRequest("malformed Basic credentials") from None
    user, sep, password = decoded.partition(":")
    if not sep or not user or not password:
        raise OAuthInvalidRequest("malformed Basic credentials")
    # RFC 6749 §2.3.1: both parts are form-urlencoded before Basic encoding.
    return unquote(user.replace("+", " ")), unquote(password.replace("+", " "))


def _peer_certificate(request: web.Request) -> PeerCertificate | None:
    transport = request.transport
    ssl_object = transport.get_extra_info("ssl_object") if transport is not None else None
    if ssl_object is None:
        return None
    der = ssl_object.getpeercert(binary_form=True)
    return peer_certificate_from_der(der) if der else None


def _address(request: web.Request) -> str:
    remote = request.remote or ""
    try:
        ip = ipaddress.ip_address(remote)
    except ValueError:
        return remote
    return client_address(f"ipv{ip.version}:{'[' + remote + ']' if ip.version == 6 else remote}:0")


def _is_loopback(remote: str | None) -> bool:
    try:
        return remote is not None and ipaddress.ip_address(remote).is_loopback
    except ValueError:
        return False


# -- rendering ---------------------------------------------------------------------------------


def _json(
    status: int, body: Mapping[str, Any], headers: Mapping[str, str] | None = None
) -> web.Response:
    return web.Response(
        status=status,
        body=json.dumps(body, separators=(",", ":")).encode(),
        content_type="application/json",
        headers={**_NO_STORE, **(headers or {})},
    )


def _token_body(grant: TokenGrant) -> dict[str, Any]:
    body: dict[str, Any] = {
        "access_token": grant.access_token,
        "token_type": grant.token_type,
        "expires_in": grant.expires_in,
        "scope": grant.scope,
    }
    if grant.refresh_token:
        body["refresh_token"] = grant.refresh_token
    return body


def _error(exc: OAuthError) -> web.Response:
    headers: dict[str, str] = {}
    if exc.http_status == 401:
        # RFC 6749 §5.2 (MUST after Basic); RFC 9110 §15.5.2 for any 401.
        headers["WWW-Authenticate"] = 'Basic realm="ssot-auth"'
    if isinstance(exc, ClientAuthThrottled):
        headers["Retry-After"] = str(exc.retry_after)
    if exc.http_status == 405:
        headers["Allow"] = "POST"
    body = {"error": exc.error, "error_description": exc.message}
    return _json(exc.http_status, body, headers)
