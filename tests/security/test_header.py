"""Header injection: keys, key URLs and certificates carried by the token; hostile ``kid``s.

A verifier must take keys only from its own configured source (RFC 8725 §3.10): a
``jwk``, ``jku``, ``x5u`` or ``x5c`` in the header is the attacker's, and a ``kid``
is an opaque lookup string, never a path, a query or a command. ``crit`` names
extensions the verifier must understand, and we understand none (RFC 7515 §4.1.11).
"""

from __future__ import annotations

import base64
import datetime
import http.server
import json
import threading
from collections.abc import Iterator
from typing import Any, ClassVar

import jwt
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.x509.oid import NameOID

from security.kit import ATTACKER, DROP, Attack, Issuer, Target, b64u

ATTACKER_KID = "attacker-key"


def _attacker_jwk() -> dict[str, Any]:
    jwk = json.loads(jwt.algorithms.RSAAlgorithm.to_jwk(ATTACKER.rsa.public_key()))
    jwk.update({"kid": ATTACKER_KID, "alg": "RS256", "use": "sig"})
    return jwk


def _attacker_cert() -> x509.Certificate:
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "auth.example")])
    now = datetime.datetime.now(datetime.UTC)
    return (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(ATTACKER.rsa.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + datetime.timedelta(days=1))
        .sign(ATTACKER.rsa, hashes.SHA256())
    )


ATTACKER_CERT = _attacker_cert()
ATTACKER_CERT_DER = ATTACKER_CERT.public_bytes(serialization.Encoding.DER)


class _AttackerSite(http.server.BaseHTTPRequestHandler):
    """Serves the attacker's JWKS and certificate, and counts every request."""

    hits: ClassVar[list[str]] = []

    def do_GET(self) -> None:
        type(self).hits.append(self.path)
        if self.path.startswith("/cert"):
            body = ATTACKER_CERT.public_bytes(serialization.Encoding.PEM)
        else:
            body = json.dumps({"keys": [_attacker_jwk()]}).encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        pass


@pytest.fixture(scope="module")
def attacker_site() -> Iterator[str]:
    """An attacker's key server on loopback; asserts at the end that nobody called it."""
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _AttackerSite)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
    assert _AttackerSite.hits == []


def _by_attacker(kid: Any = None, **header: Any) -> Attack:
    """Signed with the attacker's RSA key, ``kid`` the real one unless given."""

    def make(issuer: Issuer) -> str:
        members = {"alg": "RS256", "kid": issuer.kid if kid is None else kid, **header}
        return issuer.sign(issuer.header(**members), algorithm="RS256", key=ATTACKER.rsa)

    return make


def _kid(value: Any) -> Attack:
    """Signed by the real key, with ``kid`` replaced (a callable gets the real kid)."""

    def make(issuer: Issuer) -> str:
        kid = value(issuer.kid) if callable(value) else value
        return issuer.sign(issuer.header(kid=kid))

    return make


def _x5c() -> list[str]:
    return [base64.b64encode(ATTACKER_CERT_DER).decode()]


def _x5t256() -> str:
    return b64u(ATTACKER_CERT.fingerprint(hashes.SHA256()))


# (case, fetches allowed): an unknown kid may cost at most one JWKS fetch.
EMBEDDED_KEY_CASES = [
    pytest.param(_by_attacker(jwk=_attacker_jwk()), 0, id="jwk-attacker-key-real-kid"),
    pytest.param(_by_attacker(ATTACKER_KID, jwk=_attacker_jwk()), 1, id="jwk-attacker-kid"),
    pytest.param(_by_attacker(DROP, jwk=_attacker_jwk()), 0, id="jwk-and-no-kid"),
    pytest.param(_by_attacker(x5c=_x5c()), 0, id="x5c-attacker-cert-real-kid"),
    pytest.param(_by_attacker(DROP, x5c=_x5c()), 0, id="x5c-and-no-kid"),
    pytest.param(_by_attacker(**{"x5t#S256": _x5t256()}), 0, id="x5t-s256-of-attacker-cert"),
]


REMOTE_KEY_CASES = [
    pytest.param("jku", "/jwks.json", None, 0, id="jku-attacker-jwks-real-kid"),
    pytest.param("jku", "/jwks.json", ATTACKER_KID, 1, id="jku-attacker-jwks-attacker-kid"),
    pytest.param("x5u", "/cert.pem", None, 0, id="x5u-attacker-cert-real-kid"),
    pytest.param("x5u", "/cert.pem", ATTACKER_KID, 1, id="x5u-attacker-cert-attacker-kid"),
]

KID_CASES = [
    pytest.param(_kid("../../../../../../dev/null"), id="kid-path-traversal"),
    pytest.param(_kid("/dev/null"), id="kid-absolute-path"),
    pytest.param(_kid("file:///etc/passwd"), id="kid-file-url"),
    pytest.param(_kid("..\\..\\windows\\win.ini"), id="kid-windows-path"),
    pytest.param(_kid(lambda k: f"{k}/../{k}"), id="kid-real-kid-in-a-path"),
    pytest.param(_kid("' OR '1'='1"), id="kid-sql-or-true"),
    pytest.param(_kid("x' UNION SELECT 'secret' -- "), id="kid-sql-union"),
    pytest.param(_kid("1; DROP TABLE signing_keys"), id="kid-sql-drop"),
    pytest.param(_kid("$(id)"), id="kid-shell-substitution"),
    pytest.param(_kid("`id`"), id="kid-shell-backticks"),
    pytest.param(_kid("; cat /etc/passwd | nc 127.0.0.1 9"), id="kid-shell-pipe"),
    pytest.param(_kid("k" * 257), id="kid-257-chars"),
    pytest.param(_kid("k" * 5000), id="kid-5000-chars"),
    pytest.param(_kid("ключ-подписи"), id="kid-cyrillic"),
    pytest.param(_kid("\U0001f511"), id="kid-emoji"),
    pytest.param(_kid(lambda k: "\u202e" + k), id="kid-rtl-override-prefix"),
    pytest.param(_kid(lambda k: k + "\u0000"), id="kid-nul-suffix"),
    pytest.param(_kid(lambda k: k + " "), id="kid-trailing-space"),
    pytest.param(_kid(lambda k: k.upper() if k.upper() != k else k.lower()), id="kid-case-changed"),
    pytest.param(_kid(lambda k: [k]), id="kid-as-list"),
    pytest.param(_kid(lambda k: {"kid": k}), id="kid-as-object"),
    pytest.param(_kid(7), id="kid-number"),
    pytest.param(_kid(None), id="kid-null"),
    pytest.param(_kid(""), id="kid-empty"),
]

CRIT_CASES = [
    pytest.param(lambda i: i.sign(i.header(crit=["exp"], exp=1)), id="crit-exp"),
    pytest.param(lambda i: i.sign(i.header(crit=["urn:example:unknown"])), id="crit-unknown"),
    pytest.param(lambda i: i.sign(i.header(crit=[])), id="crit-empty-list"),
    pytest.param(lambda i: i.sign(i.header(crit="b64", b64=False)), id="crit-as-string"),
    pytest.param(lambda i: i.sign(i.header(crit=["b64"], b64=False)), id="crit-b64-false"),
    pytest.param(lambda i: i.sign(i.header(b64=False)), id="b64-false-without-crit"),
    pytest.param(lambda i: i.sign(i.header(b64="false")), id="b64-string-false"),
]


@pytest.mark.parametrize(("attack", "fetches"), EMBEDDED_KEY_CASES)
def test_keys_embedded_in_the_header_are_never_used(
    target: Target, attack: Attack, fetches: int, attacker_site: str
) -> None:
    target.refuse(attack(target.issuer), fetches=fetches)


@pytest.mark.parametrize(("member", "path", "kid", "fetches"), REMOTE_KEY_CASES)
def test_key_urls_in_the_header_are_never_contacted(
    target: Target, member: str, path: str, kid: str | None, fetches: int, attacker_site: str
) -> None:
    token = _by_attacker(kid, **{member: attacker_site + path})(target.issuer)
    target.refuse(token, fetches=fetches)
    assert _AttackerSite.hits == []


@pytest.mark.parametrize("attack", KID_CASES)
def test_hostile_kids_are_unauthenticated(target: Target, attack: Attack) -> None:
    target.refuse(attack(target.issuer), fetches=1)


@pytest.mark.parametrize("attack", CRIT_CASES)
def test_critical_extensions_are_unauthenticated(target: Target, attack: Attack) -> None:
    target.refuse(attack(target.issuer))
