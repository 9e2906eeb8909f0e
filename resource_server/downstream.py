"""The example's downstream call: ``GetResourceOnBehalf`` reaches another service as the user.

``ssot-resource serve --downstream HOST:PORT --downstream-audience AUD --client-id ID
--client-key-file PEM`` makes this service an OAuth client of the auth service
(registered with ``ssot-auth clients add ID ... --exchange-audience AUD``): in
a handler, its calls to the downstream carry the caller's token exchanged for
``AUD`` (RFC 8693) by an :class:`~interceptors.IdentityPropagator`.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import grpc
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from cryptography.hazmat.primitives.serialization import load_pem_private_key

from interceptors import AsyncIdentityPropagator, IdentityPropagator, PrivateKeyJwt
from protos import resource_pb2_grpc

if TYPE_CHECKING:
    from interceptors.otel import Tracing

_MAX_KEY_FILE = 64 * 1024


@dataclass(frozen=True, kw_only=True)
class DownstreamSettings:
    """Where ``GetResourceOnBehalf`` goes, and how this service authenticates for the exchange.

    Attributes:
        target: The downstream service, ``HOST:PORT``.
        audience: Its audience: the exchanged token's ``aud``.
        auth_target: The auth service's gRPC ``HOST:PORT`` (the ``Token`` RPC).
        client_id: This service's client id (also the audience its callers' tokens name).
        client_key_file: PEM private key whose public half is registered for the client
            (the assertion names its RFC 7638 thumbprint as ``kid``).
    """

    target: str
    audience: str
    auth_target: str
    client_id: str
    client_key_file: Path

    def __post_init__(self) -> None:
        if not (self.target and self.audience and self.auth_target and self.client_id):
            raise ValueError(
                "--downstream needs --downstream-audience, --client-id, --client-key-file"
                " and --auth-target"
            )


def client_credentials(settings: DownstreamSettings, issuer: str) -> PrivateKeyJwt:
    """RFC 7523 assertions signed with the key in ``client_key_file``.

    Raises:
        ValueError: The file is unreadable, too large, or not a supported private key.
    """
    try:
        data = settings.client_key_file.read_bytes()[: _MAX_KEY_FILE + 1]
    except OSError as exc:
        raise ValueError(f"cannot read --client-key-file: {exc.strerror}") from None
    if len(data) > _MAX_KEY_FILE:
        raise ValueError("--client-key-file is too large")
    try:
        key = load_pem_private_key(data, password=None)
    except (ValueError, TypeError):
        raise ValueError("--client-key-file is not an unencrypted PEM private key") from None
    p256 = isinstance(key, ec.EllipticCurvePrivateKey) and key.curve.name == "secp256r1"
    if not (p256 or isinstance(key, rsa.RSAPrivateKey | ed25519.Ed25519PrivateKey)):
        raise ValueError("--client-key-file must hold an RSA, P-256 or Ed25519 key")
    assert isinstance(
        key, rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey | ed25519.Ed25519PrivateKey
    )
    # The kid is the key's RFC 7638 thumbprint: what `clients add --public-key-file` registers.
    return PrivateKeyJwt(client_id=settings.client_id, key=key, issuer=issuer)


def sync_downstream(
    settings: DownstreamSettings, issuer: str, tracing: Tracing | None = None
) -> resource_pb2_grpc.ResourceServiceStub:
    """A stub whose calls carry the current caller's exchanged token (sync channels).

    With ``tracing``, the exchange and the downstream call are client spans of the
    caller's trace, and send it on.
    """
    traced = () if tracing is None else (tracing.client_interceptor(),)
    propagator = IdentityPropagator(
        grpc.intercept_channel(grpc.insecure_channel(settings.auth_target), *traced),
        audience=settings.audience,
        credentials=client_credentials(settings, issuer),
    )
    channel = grpc.intercept_channel(
        grpc.insecure_channel(settings.target), *traced, propagator.interceptor()
    )
    return resource_pb2_grpc.ResourceServiceStub(channel)


def aio_downstream(
    settings: DownstreamSettings, issuer: str, tracing: Tracing | None = None
) -> resource_pb2_grpc.ResourceServiceStub:
    """The same on ``grpc.aio`` channels (call from the server's event loop)."""
    traced = [] if tracing is None else tracing.aio_client_interceptors()
    propagator = AsyncIdentityPropagator(
        grpc.aio.insecure_channel(settings.auth_target, interceptors=traced or None),
        audience=settings.audience,
        credentials=client_credentials(settings, issuer),
    )
    channel = grpc.aio.insecure_channel(
        settings.target, interceptors=[*traced, *propagator.interceptors()]
    )
    return resource_pb2_grpc.ResourceServiceStub(channel)
