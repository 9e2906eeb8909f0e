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


def http_server_context(cert: Path, key: Path, client_ca: Path | None = None) -> ssl.SSLContext:
    """An HTTPS server context (TLS 1.2+) for the public documents and the OAuth endpoints.

    The documents are public, so a client certificate is never required here.
    With ``client_ca`` one is *asked for* (and verified when sent), so the token
    endpoint can offer ``tls_client_auth`` (RFC 8705 §2).

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
    if client_ca is not None:
        try:
            context.load_verify_locations(cafile=str(client_ca))
        except (OSError, ssl.SSLError) as exc:
            raise TlsError("cannot load {client_ca} {ca_path}", ca_path=client_ca) from exc
        context.verify_mode = ssl.CERT_OPTIONAL
    return context
