"""``tls_client_auth`` (RFC 8705 §2.1): a client is the subject DN of its verified certificate."""

from __future__ import annotations

import hmac
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding

from auth_server.errors import InvalidRequest
from interceptors import cert_thumbprint


@dataclass(frozen=True, kw_only=True)
class PeerCertificate:
    """The client certificate a TLS handshake verified (chain checked by the server's CA).

    Attributes:
        subject: Its subject DN, RFC 4514 spelling.
        thumbprint: Its ``x5t#S256`` (RFC 8705 §3.1), for the token's ``cnf``.
    """

    subject: str
    thumbprint: str


def parse_subject(subject: str) -> str:
    """An RFC 4514 DN in the spelling certificates are compared in.

    Raises:
        InvalidRequest: Not a DN.
    """
    try:
        name = x509.Name.from_rfc4514_string(subject)
    except ValueError:
        raise InvalidRequest("the TLS subject is not an RFC 4514 distinguished name") from None
    if not len(name):
        raise InvalidRequest("the TLS subject is empty")
    return name.rfc4514_string()


def peer_certificate_from_pem(pem: bytes | str) -> PeerCertificate:
    """Describe a PEM certificate (the first one of a chain)."""
    data = pem.encode() if isinstance(pem, str) else pem
    cert = x509.load_pem_x509_certificate(data)
    return PeerCertificate(subject=cert.subject.rfc4514_string(), thumbprint=cert_thumbprint(data))


def peer_certificate_from_der(der: bytes) -> PeerCertificate:
    """Describe a DER certificate (as an ``ssl`` socket reports the peer's)."""
    cert = x509.load_der_x509_certificate(der)
    pem = cert.public_bytes(Encoding.PEM)
    return PeerCertificate(subject=cert.subject.rfc4514_string(), thumbprint=cert_thumbprint(pem))


def grpc_peer_certificate(auth_context: Mapping[str, Iterable[bytes]]) -> PeerCertificate | None:
    """The verified client certificate of a gRPC call over mutual TLS, or ``None``."""
    pems = list(auth_context.get("x509_pem_cert", ()))
    return peer_certificate_from_pem(pems[0]) if pems else None


def subject_matches(registered: str | None, peer: PeerCertificate | None) -> bool:
    """Whether the certificate's subject is the registered one (constant-time compare)."""
    if registered is None or peer is None:
        return False
    return hmac.compare_digest(registered.encode(), peer.subject.encode())
