"""Certificate-bound tokens: the client certificate of a mutual-TLS call must match its token.

Two modes, chosen by the service:

* ``"subject"``: the certificate names the token's ``sub`` or ``username`` in a
  subjectAltName entry (or, for a certificate without any, its common name);
* ``"cnf"``: the token carries ``cnf: {"x5t#S256": ...}`` (RFC 8705 §3.1), the
  SHA-256 thumbprint of exactly this certificate.

Either way a token copied off one client cannot be replayed from another
client's TLS connection.
"""

from __future__ import annotations

import hmac
from collections.abc import Iterable, Mapping
from typing import Final, Literal, TypeAlias

from interceptors._claims import Principal
from interceptors._errors import CertificateMismatch
from interceptors.tls import cert_thumbprint

CertBinding: TypeAlias = Literal["subject", "cnf"]
#: The binding modes a server may require.
CERT_BINDINGS: Final[tuple[CertBinding, ...]] = ("subject", "cnf")

_PEM_CERT: Final = "x509_pem_cert"
_SAN: Final = "x509_subject_alternative_name"
_CN: Final = "x509_common_name"


def check_cert_binding(
    principal: Principal, auth_context: Mapping[str, Iterable[bytes]], mode: CertBinding
) -> None:
    """Raise unless the call's client certificate and ``principal``'s token belong together.

    Args:
        principal: The verified token.
        auth_context: ``context.auth_context()`` of the call (grpc fills in the
            peer certificate's names and PEM on a mutual-TLS connection).
        mode: ``"subject"`` or ``"cnf"``.

    Raises:
        CertificateMismatch: No client certificate, or it does not match.
        ValueError: ``mode`` is unknown.
    """
    if mode not in CERT_BINDINGS:
        raise ValueError(f"cert binding must be one of {CERT_BINDINGS}, not {mode!r}")
    pems = list(auth_context.get(_PEM_CERT, ()))
    if not pems:
        raise CertificateMismatch("no client certificate on the connection")
    if mode == "cnf":
        _check_thumbprint(principal, pems[0])
        return
    names = _values(auth_context, _SAN) or _values(auth_context, _CN)
    wanted = {principal.subject, principal.username} - {""}
    if not names & wanted:
        raise CertificateMismatch("client certificate names neither sub nor username")


def _check_thumbprint(principal: Principal, pem: bytes) -> None:
    cnf = principal.claims.get("cnf")
    bound = cnf.get("x5t#S256") if isinstance(cnf, Mapping) else None
    if not isinstance(bound, str) or not bound:
        raise CertificateMismatch("token has no cnf x5t#S256 claim")
    try:
        actual = cert_thumbprint(pem)
    except (ValueError, UnicodeDecodeError) as exc:
        raise CertificateMismatch("client certificate is not readable") from exc
    if not hmac.compare_digest(bound.encode("ascii", "replace"), actual.encode("ascii")):
        raise CertificateMismatch("token is bound to another certificate")


def _values(auth_context: Mapping[str, Iterable[bytes]], key: str) -> set[str]:
    return {value.decode("utf-8", "replace") for value in auth_context.get(key, ())}
