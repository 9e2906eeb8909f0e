"""TLS helpers for gRPC servers and channels: PEM files, credentials, certificate thumbprints.

Shared by the resource server, the token helpers and the auth service, so that
every process reads certificates and reports bad files the same way.
"""

from __future__ import annotations

import base64
import hashlib
import ipaddress
import ssl
from collections.abc import Iterable, Mapping
from pathlib import Path

import grpc

__all__ = [
    "TlsError",
    "cert_thumbprint",
    "channel_credentials",
    "client_cert_thumbprint",
    "is_loopback_address",
    "is_loopback_host",
    "read_pem",
    "server_credentials",
]


#: How messages name each file a function here takes, by its parameter.
_ROLES: Mapping[str, str] = {
    "cert": "the certificate chain",
    "key": "the private key",
    "client_ca": "the client CA file",
    "ca_cert": "the CA file",
    "client_cert": "the client certificate",
    "client_key": "the client key",
}


class TlsError(ValueError):
    """A certificate or key file cannot be used.

    The message names the file and its role by the parameter it was given as ("cannot
    read the private key k.pem: ..."). A program that took the file from a setting of
    its own, such as a command-line flag, names that instead with :meth:`naming`.

    Attributes:
        template: The message, with each parameter as a ``{cert}``-style field.
        values: The other fields of ``template`` (the file names, the reason).
    """

    def __init__(self, template: str, **values: object) -> None:
        self.template = template
        self.values = values
        super().__init__(self.naming({}))

    def naming(self, names: Mapping[str, str]) -> str:
        """The message with each parameter called by ``names`` (e.g. ``{"key": "--tls-key"}``).

        A parameter ``names`` does not hold keeps its role ("the private key").
        """
        roles = {param: names.get(param, role) for param, role in _ROLES.items()}
        return self.template.format(**roles, **self.values)


def read_pem(path: Path | None, param: str) -> bytes | None:
    """The bytes of a PEM file, or ``None`` without a path.

    Args:
        path: The file.
        param: What it is, by parameter name (``"cert"``, ``"ca_cert"``, ...), for errors.

    Raises:
        TlsError: The file cannot be read or holds no PEM block.
    """
    if path is None:
        return None
    # The role goes in as a field, so that a caller can rename it (TlsError.naming).
    field = "{" + param + "}" if param in _ROLES else "{what}"
    try:
        data = Path(path).read_bytes()
    except OSError as exc:
        raise TlsError(
            f"cannot read {field} {{path}}: {{reason}}", what=param, path=path, reason=exc.strerror
        ) from None
    if b"-----BEGIN " not in data:
        raise TlsError(f"{field} {{path}} is not a PEM file", what=param, path=path)
    return data


def server_credentials(
    cert: Path, key: Path, client_ca: Path | None = None
) -> grpc.ServerCredentials:
    """Server TLS credentials; with ``client_ca``, clients must present a certificate it signed.

    Raises:
        TlsError: A file cannot be read.
    """
    cert_pem = read_pem(cert, "cert")
    key_pem = read_pem(key, "key")
    assert cert_pem is not None and key_pem is not None
    ca_pem = read_pem(client_ca, "client_ca")
    return grpc.ssl_server_credentials(
        [(key_pem, cert_pem)], root_certificates=ca_pem, require_client_auth=ca_pem is not None
    )


def channel_credentials(
    ca_cert: Path | None = None,
    client_cert: Path | None = None,
    client_key: Path | None = None,
) -> grpc.ChannelCredentials:
    """Client TLS credentials: trust ``ca_cert`` (or the system roots), present a cert if given.

    Raises:
        TlsError: A file cannot be read, or only one of the client cert and key is given.
    """
    if (client_cert is None) != (client_key is None):
        raise TlsError("give both {client_cert} and {client_key}, or neither")
    return grpc.ssl_channel_credentials(
        root_certificates=read_pem(ca_cert, "ca_cert"),
        private_key=read_pem(client_key, "client_key"),
        certificate_chain=read_pem(client_cert, "client_cert"),
    )


def cert_thumbprint(pem: bytes | str) -> str:
    """The RFC 8705 ``x5t#S256`` of a PEM certificate: base64url(SHA-256(DER)), unpadded."""
    text = pem.decode("ascii") if isinstance(pem, bytes) else pem
    digest = hashlib.sha256(ssl.PEM_cert_to_DER_cert(text)).digest()
    return base64.urlsafe_b64encode(digest).rstrip(b"=").decode("ascii")


def client_cert_thumbprint(auth_context: Mapping[str, Iterable[bytes]]) -> str | None:
    """The ``x5t#S256`` of a call's client certificate, or ``None`` without one.

    ``auth_context`` is the gRPC call's ``context.auth_context()``.
    """
    pems = list(auth_context.get("x509_pem_cert", ()))
    return cert_thumbprint(pems[0]) if pems else None


def is_loopback_host(host: str) -> bool:
    """Tell whether ``host`` names only this machine: the one loopback check of the project.

    ``localhost`` (any case), an address in 127.0.0.0/8, ``::1`` in any
    spelling, with or without brackets, and an IPv4-mapped loopback address
    (``::ffff:127.0.0.1``, which reaches 127.0.0.1; Python 3.13's
    ``is_loopback`` says so too, 3.11's not). Anything else is not loopback,
    including ``0.0.0.0`` and ``::`` (every interface) and names that merely
    start with ``127.``.
    """
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    if host.lower() == "localhost":
        return True
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return False
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped.is_loopback
    return address.is_loopback


def is_loopback_address(address: str) -> bool:
    """Tell whether a ``HOST:PORT`` listen address binds only this machine."""
    return is_loopback_host(address.rsplit(":", 1)[0])
