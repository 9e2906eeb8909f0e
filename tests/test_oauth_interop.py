"""Interop: a third-party OAuth 2.0 client (authlib) against /oauth2/token and our metadata.

authlib's OAuth 2.0 client (``OAuth2Session``, its ``OAuth2Client`` for requests; the
httpx flavour warns that it is deprecated) gets a client-credentials token with
``client_secret_basic`` and with ``private_key_jwt``, and the token calls the
protected RPC. authlib's ``PrivateKeyJWT`` defaults put the token endpoint URL in
``aud`` and ``exp`` an hour ahead; the auth service refuses both by design (issue 9:
``aud`` must equal the issuer identifier, ``exp`` at most 5 minutes ahead), so the
documented ``claims`` override is used, and the default is shown refused. Needs the
``dev`` extra (authlib, requests); skipped without it.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from auth_server.clients import ClientStore
from auth_server.jwk import public_jwk
from helpers import (
    AUDIENCE,
    ISSUER,
    AuthHarness,
    EventLoopThread,
    bearer,
    make_config,
    running_resource,
    start_harness,
)
from protos import resource_pb2

authlib = pytest.importorskip("authlib")
requests = pytest.importorskip("requests")

from authlib.integrations.requests_client import OAuth2Session as OAuth2Client  # noqa: E402
from authlib.integrations.requests_client import OAuthError  # noqa: E402
from authlib.oauth2.rfc7523 import PrivateKeyJWT  # noqa: E402
from authlib.oauth2.rfc8414 import AuthorizationServerMetadata  # noqa: E402


@pytest.fixture(scope="module")
def rsa_key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


@pytest.fixture
def auth(loop_thread: EventLoopThread, tmp_path: Path) -> Iterator[AuthHarness]:
    harness = start_harness(loop_thread, make_config(tmp_path))
    yield harness
    harness.channel.close()
    harness.stop()


def store(auth: AuthHarness) -> ClientStore:
    return auth.server.components.client_side.clients


def token_url(auth: AuthHarness) -> str:
    return auth.server.http_base_url + "/oauth2/token"


def pem_of(key: rsa.RSAPrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def call_protected(loop_thread: EventLoopThread, auth: AuthHarness, token: str) -> str:
    with running_resource(loop_thread, auth, aio=False) as resource:
        reply = resource.stub.GetProtectedResource(
            resource_pb2.GetProtectedResourceRequest(), metadata=bearer(token), timeout=10
        )
        return reply.message


def key_client(auth: AuthHarness, key: rsa.RSAPrivateKey) -> str:
    jwk = public_jwk(key, "RS256")
    store(auth).add("billing", jwks={"keys": [jwk]}, scopes=["orders.read"], audiences=[AUDIENCE])
    return jwk["kid"]


def private_key_jwt(auth: AuthHarness, kid: str, claims: dict[str, Any]) -> PrivateKeyJWT:
    # authlib writes the first jti into the claims dict it was given and reuses it, so a
    # PrivateKeyJWT built once replays its jti on the next request (refused: jti is
    # single-use). One instance, with its own claims, per token request.
    return PrivateKeyJWT(token_url(auth), claims=dict(claims), headers={"kid": kid})


def test_client_secret_basic(auth: AuthHarness, loop_thread: EventLoopThread) -> None:
    _, secret = store(auth).add("cron", secret=True, scopes=["orders.read"], audiences=[AUDIENCE])
    with OAuth2Client(
        client_id="cron",
        client_secret=secret,
        token_endpoint_auth_method="client_secret_basic",
        scope="orders.read",
    ) as client:
        token = client.fetch_token(token_url(auth), grant_type="client_credentials")
        assert token["token_type"].lower() == "bearer" and token["scope"] == "orders.read"
        assert "refresh_token" not in token
        assert call_protected(loop_thread, auth, token["access_token"]).startswith("This is")
        client.client_secret = "wrong"
        with pytest.raises(OAuthError) as info:
            client.fetch_token(token_url(auth), grant_type="client_credentials")
        assert info.value.error == "invalid_client"


def test_private_key_jwt_with_issuer_audience(
    auth: AuthHarness, rsa_key: rsa.RSAPrivateKey, loop_thread: EventLoopThread
) -> None:
    kid = key_client(auth, rsa_key)
    for _ in range(2):  # a second request: a fresh assertion (new jti) is accepted too
        claims = {"aud": ISSUER, "exp": int(time.time()) + 60}
        with OAuth2Client(
            client_id="billing",
            client_secret=pem_of(rsa_key),
            token_endpoint_auth_method=private_key_jwt(auth, kid, claims),
        ) as client:
            token = client.fetch_token(token_url(auth), grant_type="client_credentials")
        assert call_protected(loop_thread, auth, token["access_token"]).startswith("This is")


SOON = "soon"  # replaced by a time a minute ahead when the test runs


@pytest.mark.parametrize(
    "claims",
    [
        pytest.param({"exp": SOON}, id="default-aud-token-endpoint"),
        pytest.param({"aud": ISSUER}, id="default-exp-one-hour"),
        pytest.param({"aud": [ISSUER], "exp": SOON}, id="aud-list"),
    ],
)
def test_private_key_jwt_defaults_are_refused(
    auth: AuthHarness, rsa_key: rsa.RSAPrivateKey, claims: dict[str, Any]
) -> None:
    kid = key_client(auth, rsa_key)
    claims = {k: int(time.time()) + 60 if v == SOON else v for k, v in claims.items()}
    with OAuth2Client(
        client_id="billing",
        client_secret=pem_of(rsa_key),
        token_endpoint_auth_method=private_key_jwt(auth, kid, claims),
    ) as client:
        with pytest.raises(OAuthError) as info:
            client.fetch_token(token_url(auth), grant_type="client_credentials")
        assert info.value.error == "invalid_client"
        # The honest request still passes afterwards.
        client.token_endpoint_auth_method = private_key_jwt(
            auth, kid, {"aud": ISSUER, "exp": int(time.time()) + 60}
        )
        client.register_client_auth_method(client.token_endpoint_auth_method)
        token = client.fetch_token(token_url(auth), grant_type="client_credentials")
        assert token["access_token"]


def test_reused_private_key_jwt_replays_its_jti(
    auth: AuthHarness, rsa_key: rsa.RSAPrivateKey
) -> None:
    kid = key_client(auth, rsa_key)
    method = PrivateKeyJWT(
        token_url(auth), claims={"aud": ISSUER, "exp": int(time.time()) + 60}, headers={"kid": kid}
    )
    with OAuth2Client(
        client_id="billing", client_secret=pem_of(rsa_key), token_endpoint_auth_method=method
    ) as client:
        assert client.fetch_token(token_url(auth), grant_type="client_credentials")
        with pytest.raises(OAuthError) as info:
            client.fetch_token(token_url(auth), grant_type="client_credentials")
        assert info.value.error == "invalid_client"


def test_metadata_validates_with_authlib(auth: AuthHarness) -> None:
    base = auth.server.http_base_url
    document = requests.get(base + "/.well-known/oauth-authorization-server", timeout=10).json()
    metadata = AuthorizationServerMetadata(document)
    metadata.validate()
    assert metadata["issuer"] == ISSUER
    assert "private_key_jwt" in metadata["token_endpoint_auth_methods_supported"]
    assert "client_credentials" in metadata["grant_types_supported"]


def test_grpc_refusal_matches_http(auth: AuthHarness, rsa_key: rsa.RSAPrivateKey) -> None:
    """The same default assertion over gRPC: UNAUTHENTICATED with oauth-error invalid_client."""
    from authlib.oauth2.rfc7523 import private_key_jwt_sign
    from joserfc.jwk import RSAKey

    from protos import auth_pb2

    kid = key_client(auth, rsa_key)
    assertion = private_key_jwt_sign(
        RSAKey.import_key(pem_of(rsa_key)),
        client_id="billing",
        token_endpoint=token_url(auth),
        header={"kid": kid},
        claims={"exp": int(time.time()) + 60},
    )
    request = auth_pb2.TokenRequest(
        grant_type="client_credentials",
        client_assertion_type="urn:ietf:params:oauth:client-assertion-type:jwt-bearer",
        client_assertion=assertion,
    )
    with pytest.raises(grpc.RpcError) as info:
        auth.stub.Token(request, timeout=10)
    call: Any = info.value
    assert call.code() is grpc.StatusCode.UNAUTHENTICATED
    assert dict(call.trailing_metadata())["oauth-error"] == "invalid_client"
