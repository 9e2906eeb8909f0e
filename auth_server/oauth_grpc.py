"""The gRPC face of the token endpoint: a ``TokenRequest`` in, a token or an OAuth error out.

The RFC 6749 §5.2 error code travels as the ``oauth-error`` trailing metadata
entry beside the status code the error class names (see ``protos/auth.proto``).
"""

from __future__ import annotations

from typing import Any

import grpc

from auth_server.client_auth import POST, ClientCredentials
from auth_server.client_tls import grpc_peer_certificate
from auth_server.errors import ClientAuthThrottled, OAuthError
from auth_server.oauth import TokenRequest
from auth_server.throttle import client_address
from protos import auth_pb2

#: The trailing metadata key that carries the RFC 6749 §5.2 error code.
OAUTH_ERROR_KEY = "oauth-error"


def token_request(
    request: auth_pb2.TokenRequest, context: grpc.aio.ServicerContext[Any, Any]
) -> TokenRequest:
    """The core's view of a gRPC ``TokenRequest`` (with the peer's address and certificate)."""
    credentials = ClientCredentials(
        client_id=request.client_id,
        client_secret=request.client_secret,
        secret_via=POST if request.client_secret else "",
        assertion_type=request.client_assertion_type,
        assertion=request.client_assertion,
        certificate=grpc_peer_certificate(context.auth_context()),
    )
    return TokenRequest(
        grant_type=request.grant_type,
        scope=request.scope,
        audience=request.audience,
        resource=request.resource,
        refresh_token=request.refresh_token,
        subject_token=request.subject_token,
        subject_token_type=request.subject_token_type,
        requested_token_type=request.requested_token_type,
        credentials=credentials,
        address=client_address(context.peer()),
    )


def oauth_trailers(exc: OAuthError) -> tuple[tuple[str, str], ...]:
    """The trailing metadata of an OAuth error: its code, and ``retry-after`` when throttled."""
    trailers: list[tuple[str, str]] = [(OAUTH_ERROR_KEY, exc.error)]
    if isinstance(exc, ClientAuthThrottled):
        trailers.append(("retry-after", str(exc.retry_after)))
    return tuple(trailers)
