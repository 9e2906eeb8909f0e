"""TLS for the auth service: the HTTPS context of its JWKS server.

The gRPC credentials and certificate helpers are shared with the verifier side
and live in :mod:`interceptors.tls`; they are re-exported here.
"""

from __future__ import annotations

import ssl
from pathlib import Path

from interceptors.tls import (
    TlsError,
    channel_credentials,
    client_cert_thumbprint,
    read_pem,
)
from interceptors.tls import server_credentials as grpc_server_credentials

__all__ = [
    "TlsError",
    "channel_credentials",
    "client_cert_thumbprint",
    "grpc_server_credentials",
    "http_server_context",
    "read_pem",
]


def http_server_context(cert: Path, key: Path) -> ssl.SSLContext:
    """An HTTPS server context (TLS 1.2+) for the JWKS and discovery documents.

    The documents are public, so no client certificate is asked for here even
    when the gRPC port requires one.

    Raises:
        TlsError: The certificate or key cannot be loaded.
    """
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    try:
        context.load_cert_chain(str(cert), str(key))
    except (OSError, ssl.SSLError) as exc:
        raise TlsError(
            "cannot load {cert} {cert_path} with {key} {key_path}", cert_path=cert, key_path=key
        ) from exc
    return context
