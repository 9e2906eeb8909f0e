"""``tls_client_auth`` (RFC 8705 §2.1) end to end: mutual TLS to the auth service, over gRPC
and HTTPS, a certificate-bound token (``cnf``), and a resource server that checks the binding.
"""

from __future__ import annotations

import contextlib
import json
import ssl
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp
import grpc
import jwt
import pytest

from auth_server.app import RunningAuthServer, start_auth_server
from auth_server.clients import ClientStore
from helpers import AUDIENCE, ISSUER, EventLoopThread, bearer, make_config, serving_resource
from interceptors import HttpJwksSource, KeyCache, TokenPolicy, TokenVerifier, cert_thumbprint
from pki import Identity, Pki, make_pki
from protos import auth_pb2, auth_pb2_grpc, resource_pb2, resource_pb2_grpc
from resource_server import ResourceServerConfig

CLIENT = "billing"


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    # Certificates with subjects CN=billing and CN=other, from the client CA.
    return make_pki(tmp_path_factory.mktemp("pki"), clients=(CLIENT, "other"))


@pytest.fixture
def server(loop_thread: EventLoopThread, tmp_path: Path, pki: Pki) -> Iterator[RunningAuthServer]:
    """The auth service over mutual TLS (gRPC requires a certificate, HTTPS asks for one)."""
    config = make_config(
        tmp_path, tls_cert=pki.server.cert, tls_key=pki.server.key, client_ca=pki.ca
    )
    running = loop_thread.run(start_auth_server(config))
    clients: ClientStore = running.components.client_side.clients
    clients.add(CLIENT, scopes=["resource.read"], audiences=[AUDIENCE], tls_subject=f"CN={CLIENT}")
    try:
        yield running
    finally:
        loop_thread.run(running.stop(0.5))


def grpc_credentials(pki: Pki, identity: Identity | None) -> grpc.ChannelCredentials:
    return grpc.ssl_channel_credentials(
        root_certificates=pki.ca_pem,
        private_key=identity.key_pem if identity else None,
        certificate_chain=identity.cert_pem if identity else None,
    )


def grpc_token(server: RunningAuthServer, pki: Pki, identity: Identity) -> Any:
    """The Token RPC as ``identity``: a response, or the failed call."""
    request = auth_pb2.TokenRequest(grant_type="client_credentials", client_id=CLIENT)
    with grpc.secure_channel(server.grpc_target, grpc_credentials(pki, identity)) as channel:
        try:
            return auth_pb2_grpc.AuthServiceStub(channel).Token(request, timeout=10)
        except grpc.RpcError as exc:
            return exc


def http_token(
    loop_thread: EventLoopThread, server: RunningAuthServer, pki: Pki, identity: Identity | None
) -> tuple[int, dict[str, Any]]:
    """``POST /oauth2/token`` over HTTPS, presenting ``identity``'s certificate (or none)."""
    context = ssl.create_default_context(cafile=str(pki.ca))
    if identity is not None:
        context.load_cert_chain(str(identity.cert), str(identity.key))
    body = f"grant_type=client_credentials&client_id={CLIENT}"

    async def go() -> tuple[int, dict[str, Any]]:
        async with (
            aiohttp.ClientSession() as session,
            session.post(
                f"{server.http_base_url}/oauth2/token",
                data=body,
                headers={"Content-Type": "application/x-www-form-urlencoded"},
                ssl=context,
            ) as response,
        ):
            return response.status, json.loads(await response.read())

    return loop_thread.run(go())


@contextlib.contextmanager
def bound_resource(
    loop_thread: EventLoopThread, server: RunningAuthServer, pki: Pki
) -> Iterator[str]:
    """A resource server over mutual TLS that requires ``cnf`` to name the caller's certificate."""
    jwks_url = f"{server.http_base_url}/.well-known/jwks.json"
    config = ResourceServerConfig(
        grpc_address="127.0.0.1:0",
        issuer=ISSUER,
        audience=AUDIENCE,
        jwks_url=jwks_url,
        tls_cert=pki.server.cert,
        tls_key=pki.server.key,
        client_ca=pki.ca,
        cert_binding="cnf",
        auth_ca_cert=pki.ca,
    )
    keys = KeyCache(HttpJwksSource(jwks_url, ca_cert=pki.ca))
    verifier = TokenVerifier(keys, TokenPolicy(issuer=ISSUER, audience=AUDIENCE))
    try:
        with serving_resource(loop_thread, config, verifier, aio=True) as port:
            yield f"127.0.0.1:{port}"
    finally:
        keys.close()


def call_resource(target: str, pki: Pki, identity: Identity, token: str) -> Any:
    with grpc.secure_channel(target, grpc_credentials(pki, identity)) as channel:
        stub = resource_pb2_grpc.ResourceServiceStub(channel)
        try:
            return stub.GetProtectedResource(
                resource_pb2.GetProtectedResourceRequest(), metadata=bearer(token), timeout=10
            )
        except grpc.RpcError as exc:
            return exc


def _claims(token: str) -> dict[str, Any]:
    return dict(jwt.decode(token, options={"verify_signature": False}))


def _oauth_error(call: Any) -> tuple[grpc.StatusCode, str]:
    assert isinstance(call, grpc.Call), call
    return call.code(), dict(call.trailing_metadata() or ())["oauth-error"]


REFUSED = (grpc.StatusCode.UNAUTHENTICATED, "invalid_client")


def test_grpc_the_registered_subject_gets_a_bound_token_the_resource_accepts(
    loop_thread: EventLoopThread, server: RunningAuthServer, pki: Pki
) -> None:
    billing, other = pki.clients[CLIENT], pki.clients["other"]

    response = grpc_token(server, pki, billing)
    assert isinstance(response, auth_pb2.TokenResponse), response
    claims = _claims(response.access_token)
    assert claims["cnf"] == {"x5t#S256": cert_thumbprint(billing.cert_pem)}
    assert (claims["sub"], claims["client_id"], claims["aud"]) == (CLIENT, CLIENT, AUDIENCE)
    assert response.refresh_token == ""

    # Another certificate of the same CA is not this client (one answer, no reason) ...
    assert _oauth_error(grpc_token(server, pki, other)) == REFUSED
    # ... and the honest request still passes after it.
    assert isinstance(grpc_token(server, pki, billing), auth_pb2.TokenResponse)

    with bound_resource(loop_thread, server, pki) as target:
        answer = call_resource(target, pki, billing, response.access_token)
        assert isinstance(answer, resource_pb2.GetProtectedResourceResponse), answer
        assert (answer.user.kind, answer.user.client_id) == ("service", CLIENT)
        # The same token from another certificate is refused by the resource server.
        stolen = call_resource(target, pki, other, response.access_token)
        assert isinstance(stolen, grpc.Call) and stolen.code() == grpc.StatusCode.UNAUTHENTICATED


def test_a_client_registered_by_secret_or_key_cannot_use_its_certificate_instead(
    server: RunningAuthServer, pki: Pki
) -> None:
    clients: ClientStore = server.components.client_side.clients
    clients.remove(CLIENT)
    clients.add(CLIENT, scopes=["resource.read"], audiences=[AUDIENCE], secret=True)
    assert _oauth_error(grpc_token(server, pki, pki.clients[CLIENT])) == REFUSED


def test_https_no_or_wrong_certificate_is_invalid_client_and_the_honest_one_passes(
    loop_thread: EventLoopThread, server: RunningAuthServer, pki: Pki
) -> None:
    billing, other = pki.clients[CLIENT], pki.clients["other"]
    for identity in (None, other):
        status, body = http_token(loop_thread, server, pki, identity)
        assert (status, body["error"]) == (401, "invalid_client"), identity
        status, body = http_token(loop_thread, server, pki, billing)
        assert status == 200, body
        bound = {"x5t#S256": cert_thumbprint(billing.cert_pem)}
        assert _claims(body["access_token"])["cnf"] == bound
        assert "refresh_token" not in body


def test_a_certificate_from_another_ca_never_reaches_the_token_endpoint(
    loop_thread: EventLoopThread, server: RunningAuthServer, pki: Pki
) -> None:
    # gRPC requires a certificate of the client CA: the handshake fails, no RPC runs.
    call = grpc_token(server, pki, pki.rogue)
    assert isinstance(call, grpc.Call) and call.code() == grpc.StatusCode.UNAVAILABLE
    # HTTPS only asks for one, but verifies what is sent: that handshake fails too.
    with pytest.raises(aiohttp.ClientError):
        http_token(loop_thread, server, pki, pki.rogue)
