"""A service's own credentials for the client-credentials grant, and the requests they make.

:class:`PrivateKeyJwt` (RFC 7523 §2.2, the recommended way: the auth service
holds no secret of the client) signs a fresh client assertion for every token
request; :class:`ClientSecret` sends the secret the auth service generated.
They are the one pair of client credentials: a
:meth:`TokenManager.for_service <interceptors.TokenManager.for_service>` (the
client-credentials grant) and an :class:`~interceptors.IdentityPropagator` (token
exchange, where the service is the acting client) both take them, and both add
them to their ``TokenRequest`` through one :class:`ClientAuth`.
Nothing here performs I/O besides reading a key file once.
"""

from __future__ import annotations

import base64
import dataclasses
import hashlib
import json
import os
import secrets
from pathlib import Path
from typing import Any, TypeAlias

import jwt
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from cryptography.hazmat.primitives.serialization import load_pem_private_key
from jwt.algorithms import ECAlgorithm, OKPAlgorithm, RSAAlgorithm

from protos import auth_pb2

#: RFC 7523 §2.2: the ``client_assertion_type`` of a JWT client assertion.
ASSERTION_TYPE = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"
#: The grant a service identity uses (RFC 6749 §4.4).
CLIENT_CREDENTIALS = "client_credentials"

#: The private keys an assertion can be signed with.
PrivateKey: TypeAlias = rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey | ed25519.Ed25519PrivateKey

# The auth service refuses an assertion whose exp is more than 5 minutes ahead.
_MAX_ASSERTION_LIFETIME = 300.0
# RFC 7638 §3.2: the members that make up the thumbprint, per key type.
_REQUIRED_MEMBERS = {
    "RSA": ("e", "kty", "n"),
    "EC": ("crv", "kty", "x", "y"),
    "OKP": ("crv", "kty", "x"),
}
_RSA_ALGORITHMS = ("RS256", "PS256")


@dataclasses.dataclass(frozen=True, kw_only=True)
class PrivateKeyJwt:
    """Authenticate with an RFC 7523 assertion signed by the service's own private key.

    Every token request carries a new assertion: ``iss`` = ``sub`` = ``client_id``,
    ``aud`` = ``issuer`` (exactly the auth service's issuer identifier, a string: the
    auth service refuses a token-endpoint URL or a list there), a fresh random
    ``jti`` (the auth service accepts each only once), and ``exp`` =
    ``assertion_lifetime`` seconds ahead.

    Attributes:
        client_id: The client id registered with the auth service.
        key: The private key, or the path of an unencrypted PEM file holding it
            (read once, when the manager is built).
        issuer: The auth service's issuer identifier, the assertion's ``aud``.
        kid: The key id to name; default the key's RFC 7638 thumbprint, which is the
            ``kid`` ``ssot-auth clients add --jwks-file`` registers for a JWK without one.
        algorithm: RS256 or PS256 for an RSA key; default RS256, ES256 for a P-256
            key, EdDSA for an Ed25519 key. It must match the registered key.
        scope: Space-separated scopes to ask for; empty asks for every allowed scope.
        audience: The audience to ask for (RFC 8707); empty asks for the client's default.
        assertion_lifetime: Seconds an assertion is valid, at most 300.
    """

    client_id: str
    key: PrivateKey | str | os.PathLike[str] = dataclasses.field(repr=False)
    issuer: str
    kid: str | None = None
    algorithm: str | None = None
    scope: str = ""
    audience: str = ""
    assertion_lifetime: float = 60.0


@dataclasses.dataclass(frozen=True, kw_only=True)
class ClientSecret:
    """Authenticate with the secret the auth service generated (``client_secret_post``).

    Attributes:
        client_id: The client id registered with the auth service.
        secret: The client secret; never shown in a repr or an error.
        scope: Space-separated scopes to ask for; empty asks for every allowed scope.
        audience: The audience to ask for (RFC 8707); empty asks for the client's default.
    """

    client_id: str
    secret: str = dataclasses.field(repr=False)
    scope: str = ""
    audience: str = ""


#: How a service identity authenticates to the ``Token`` RPC.
ServiceCredentials: TypeAlias = PrivateKeyJwt | ClientSecret


class AssertionSigner:
    """Signs RFC 7523 client assertions for one :class:`PrivateKeyJwt`.

    Raises:
        ValueError: An empty client id or issuer, a key file that cannot be read or holds
            no usable key, an algorithm that does not fit the key, or a lifetime outside
            ``(0, 300]``.
    """

    def __init__(self, credentials: PrivateKeyJwt) -> None:
        if not credentials.client_id:
            raise ValueError("client_id must not be empty")
        if not credentials.issuer:
            raise ValueError("issuer (the assertion's aud) must not be empty")
        if not 0 < credentials.assertion_lifetime <= _MAX_ASSERTION_LIFETIME:
            raise ValueError("assertion_lifetime must be in (0, 300] seconds")
        self._key = _load_key(credentials.key)
        self.algorithm = _algorithm_for(self._key, credentials.algorithm)
        self.kid = credentials.kid or jwk_thumbprint(self._key)
        self._credentials = credentials

    def __repr__(self) -> str:
        return f"AssertionSigner(client_id={self._credentials.client_id!r}, kid={self.kid!r})"

    def sign(self, now: float) -> str:
        """A new assertion issued at ``now`` (seconds since the epoch)."""
        issued = int(now)
        claims = {
            "iss": self._credentials.client_id,
            "sub": self._credentials.client_id,
            "aud": self._credentials.issuer,
            "iat": issued,
            "exp": issued + int(self._credentials.assertion_lifetime),
            "jti": secrets.token_urlsafe(18),
        }
        headers = {"kid": self.kid, "typ": "JWT"}
        return jwt.encode(claims, self._key, algorithm=self.algorithm, headers=headers)


class ClientAuth:
    """Adds one identity's client authentication to token requests (both token cores use it).

    Raises:
        TypeError: ``credentials`` is neither :class:`PrivateKeyJwt` nor :class:`ClientSecret`.
        ValueError: See :class:`AssertionSigner`; or an empty client id or secret.
    """

    def __init__(self, credentials: ServiceCredentials) -> None:
        self._signer: AssertionSigner | None = None
        if isinstance(credentials, PrivateKeyJwt):
            self._signer = AssertionSigner(credentials)
        elif not isinstance(credentials, ClientSecret):
            raise TypeError("credentials must be PrivateKeyJwt or ClientSecret")
        elif not credentials.client_id:
            raise ValueError("client_id must not be empty")
        elif not credentials.secret:
            raise ValueError("secret must not be empty")
        self.credentials = credentials

    def __repr__(self) -> str:
        return f"ClientAuth(client_id={self.credentials.client_id!r})"

    def apply(self, request: auth_pb2.TokenRequest, now: float) -> auth_pb2.TokenRequest:
        """Add the client fields to ``request`` (a new assertion issued at ``now``); return it."""
        request.client_id = self.credentials.client_id
        if self._signer is None:
            assert isinstance(self.credentials, ClientSecret)
            request.client_secret = self.credentials.secret
        else:
            request.client_assertion_type = ASSERTION_TYPE
            request.client_assertion = self._signer.sign(now)
        return request

    def client_credentials_request(self, now: float) -> auth_pb2.TokenRequest:
        """The client-credentials ``TokenRequest``, with the credentials' scope and audience."""
        request = auth_pb2.TokenRequest(
            grant_type=CLIENT_CREDENTIALS,
            scope=self.credentials.scope,
            audience=self.credentials.audience,
        )
        return self.apply(request, now)


def jwk_thumbprint(key: PrivateKey) -> str:
    """The RFC 7638 SHA-256 thumbprint of ``key``'s public half, base64url without padding."""
    jwk = _public_jwk(key)
    members = {name: jwk[name] for name in _REQUIRED_MEMBERS[jwk["kty"]]}
    canonical = json.dumps(members, separators=(",", ":"), sort_keys=True).encode()
    return base64.urlsafe_b64encode(hashlib.sha256(canonical).digest()).rstrip(b"=").decode()


def _public_jwk(key: PrivateKey) -> dict[str, Any]:
    if isinstance(key, rsa.RSAPrivateKey):
        return RSAAlgorithm.to_jwk(key.public_key(), as_dict=True)
    if isinstance(key, ec.EllipticCurvePrivateKey):
        return ECAlgorithm.to_jwk(key.public_key(), as_dict=True)
    return OKPAlgorithm.to_jwk(key.public_key(), as_dict=True)


def _load_key(key: PrivateKey | str | os.PathLike[str]) -> PrivateKey:
    if isinstance(key, str | os.PathLike):
        path = Path(key)
        try:
            loaded: object = load_pem_private_key(path.read_bytes(), password=None)
        except (OSError, ValueError, TypeError) as exc:
            # The exception text of a key parser never holds key material; the path is fine.
            raise ValueError(f"cannot load a private key from {path}: {exc}") from None
        key = loaded  # type: ignore[assignment]
    if not isinstance(
        key, rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey | ed25519.Ed25519PrivateKey
    ):
        raise ValueError("the key must be an RSA, EC P-256 or Ed25519 private key")
    return key


def _algorithm_for(key: PrivateKey, algorithm: str | None) -> str:
    if isinstance(key, rsa.RSAPrivateKey):
        chosen = algorithm or "RS256"
        if chosen not in _RSA_ALGORITHMS:
            raise ValueError("an RSA key signs with RS256 or PS256")
        return chosen
    if isinstance(key, ec.EllipticCurvePrivateKey):
        if not isinstance(key.curve, ec.SECP256R1) or algorithm not in (None, "ES256"):
            raise ValueError("an EC key must be P-256 and sign with ES256")
        return "ES256"
    if algorithm not in (None, "EdDSA"):
        raise ValueError("an Ed25519 key signs with EdDSA")
    return "EdDSA"
