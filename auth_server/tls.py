"""TLS material for the auth service: gRPC and HTTPS server credentials, and client channels."""

from __future__ import annotations

import base64
import hashlib
import ssl
from collections.abc import Iterable, Mapping
from pathlib import Path

import grpc


class TlsError(ValueError):
    """A certificate or key file cannot be used; the message names the flag."""


def read_pem(path: Path | None, flag: str) -> bytes | None:
    """The bytes of a PEM file, or ``None`` without a path.

    Raises:
        TlsError: The file cannot be read or holds no PEM block (message names ``flag``).
    """
    if path is None:
        return None
    try:
        data = Path(path).read_bytes()
    except OSError as exc:
        raise TlsError(f"cannot read {flag} {path}: {exc.strerror}") from None
    if b"-----BEGIN " not in data:
        raise TlsError(f"{flag} {path} is not a PEM file")
    return data


def grpc_server_credentials(
    cert: Path, key: Path, client_ca: Path | None = None
) -> grpc.ServerCredentials:
    """gRPC server credentials; with ``client_ca`` every client must present a certificate.

    Raises:
        TlsError: A file cannot be read.
    """
    cert_pem = read_pem(cert, "--tls-cert")
    key_pem = read_pem(key, "--tls-key")
    assert cert_pem is not None and key_pem is not None
    ca_pem = read_pem(client_ca, "--client-ca")
    return grpc.ssl_server_credentials(
        [(key_pem, cert_pem)], root_certificates=ca_pem, require_client_auth=ca_pem is not None
    )


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
        raise TlsError(f"cannot load --tls-cert {cert} with --tls-key {key}") from exc
    return context


def client_cert_thumbprint(auth_context: Mapping[str, Iterable[bytes]]) -> str | None:
    """The RFC 8705 ``x5t#S256`` of the call's client certificate, or ``None`` without one.

    ``auth_context`` is the gRPC call's ``context.auth_context()``.
    """
    pems = list(auth_context.get("x509_pem_cert", ()))
    if not pems:
        return None
    der = ssl.PEM_cert_to_DER_cert(pems[0].decode("ascii"))
    return base64.urlsafe_b64encode(hashlib.sha256(der).digest()).rstrip(b"=").decode("ascii")


def channel_credentials(
    ca_cert: Path | None = None, client_cert: Path | None = None, client_key: Path | None = None
) -> grpc.ChannelCredentials:
    """Client TLS credentials: trust ``ca_cert`` (or the system roots), present a cert if given.

    Raises:
        TlsError: A file cannot be read, or only one of the client cert and key is given.
    """
    if (client_cert is None) != (client_key is None):
        raise TlsError("give both --client-cert and --client-key, or neither")
    return grpc.ssl_channel_credentials(
        root_certificates=read_pem(ca_cert, "--ca-cert"),
        private_key=read_pem(client_key, "--client-key"),
        certificate_chain=read_pem(client_cert, "--client-cert"),
    )
