"""The device authorization grant (RFC 8628) against an upstream OpenID Provider.

What ``ssot-auth login --idp NAME`` runs at a person's terminal: read the
provider's discovery document, ask for a device code, show the verification URL
and user code, poll the token endpoint until the person has signed in, and hand
back the ID token (which :mod:`auth_server.federation` then exchanges for ours).

It is four HTTP requests, so it is written here over the verifier library's
hardened HTTP pieces (no redirects, short deadlines, size caps, TLS except on
loopback) rather than pulling an OAuth client library into the runtime.
Client authentication at the provider: none (a public client, the usual case
for a device), ``client_secret_basic`` (RFC 6749 §2.3.1), or ``private_key_jwt``
(RFC 7523 §2.2, the assertion signed with PyJWT).
"""

from __future__ import annotations

import base64
import http.client
import json
import logging
import time
import urllib.parse
import urllib.request
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.error import HTTPError, URLError

import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa

from auth_server.errors import InvalidRequest
from interceptors import KeySourceError
from interceptors._http import check_url, display_url, get_json, strict_opener

_LOGGER = logging.getLogger(__name__)

DEVICE_CODE_GRANT = "urn:ietf:params:oauth:grant-type:device_code"
JWT_BEARER = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"
_MAX_BYTES = 64 * 1024
_TIMEOUT = 10.0
_SLOW_DOWN = 5.0  # RFC 8628 §3.5: slow_down adds 5 seconds to the interval


class DeviceFlowError(Exception):
    """The device flow failed; the message is safe to show (no secret, no token)."""


@dataclass(frozen=True, kw_only=True)
class ProviderCredential:
    """How we authenticate at the provider's token endpoint.

    Attributes:
        client_id: Our client id there.
        secret: The client secret (``client_secret_basic``), or ``None``.
        private_key_pem: A PEM private key (``private_key_jwt``), or ``None``.
    """

    client_id: str
    secret: str | None = field(default=None, repr=False)
    private_key_pem: bytes | None = field(default=None, repr=False)


@dataclass(frozen=True, kw_only=True)
class DeviceAuthorization:
    """The provider's answer to the device authorization request (RFC 8628 §3.2)."""

    device_code: str = field(repr=False)
    user_code: str
    verification_uri: str
    verification_uri_complete: str | None
    expires_in: float
    interval: float


def check_private_key(pem: bytes) -> None:
    """Check a PEM private key usable for ``private_key_jwt`` (RSA >= 2048, P-256, Ed25519).

    Raises:
        InvalidRequest: Not such a key (the message holds no key material).
    """
    _signing_algorithm(_load_key(pem))


def _load_key(pem: bytes) -> Any:
    try:
        return serialization.load_pem_private_key(pem, password=None)
    except (ValueError, TypeError):
        raise InvalidRequest("not an unencrypted PEM private key") from None


def _signing_algorithm(key: Any) -> str:
    if isinstance(key, rsa.RSAPrivateKey) and key.key_size >= 2048:
        return "RS256"
    if isinstance(key, ec.EllipticCurvePrivateKey) and isinstance(key.curve, ec.SECP256R1):
        return "ES256"
    if isinstance(key, ed25519.Ed25519PrivateKey):
        return "EdDSA"
    raise InvalidRequest("the private key must be RSA (2048 bits or more), P-256 or Ed25519")


class DeviceFlow:
    """Runs RFC 8628 against one provider; blocking."""

    def __init__(
        self,
        issuer: str,
        credential: ProviderCredential,
        *,
        scope: str = "openid email profile",
        sleep: Callable[[float], None] = time.sleep,
        now: Callable[[], float] = time.monotonic,
    ) -> None:
        """Prepare the flow; nothing is fetched yet.

        Raises:
            ValueError: The issuer URL is not https (or http on loopback).
        """
        check_url(issuer, allow_insecure_http=False)
        self._issuer = issuer
        self._credential = credential
        self._scope = scope
        self._sleep = sleep
        self._now = now
        self._metadata: Mapping[str, Any] | None = None

    def metadata(self) -> Mapping[str, Any]:
        """The provider's discovery document (fetched once; its issuer checked exactly).

        Raises:
            DeviceFlowError: It cannot be fetched, or it is not this issuer's.
        """
        if self._metadata is None:
            url = self._issuer.rstrip("/") + "/.well-known/openid-configuration"
            try:
                found = get_json(strict_opener(url), url, {}, _TIMEOUT, _MAX_BYTES).document
            except KeySourceError as err:  # its text names the URL, never a secret
                raise DeviceFlowError(
                    f"cannot read the provider's discovery document: {err.log_detail}"
                ) from None
            if found is None or found.get("issuer") != self._issuer:
                raise DeviceFlowError("the provider's discovery document names another issuer")
            for name in ("device_authorization_endpoint", "token_endpoint"):
                value = found.get(name)
                if not isinstance(value, str):
                    raise DeviceFlowError(f"the provider does not offer {name}")
                try:
                    check_url(value, allow_insecure_http=False)
                except ValueError as err:
                    raise DeviceFlowError(
                        f"the provider's {name} is not acceptable: {err}"
                    ) from None
            self._metadata = found
        return self._metadata

    def start(self) -> DeviceAuthorization:
        """Ask for a device code and a user code (RFC 8628 §3.1).

        Raises:
            DeviceFlowError: The provider refused or did not answer.
        """
        endpoint = self.metadata()["device_authorization_endpoint"]
        status, body = self._post(endpoint, {"scope": self._scope})
        if status != 200:
            raise DeviceFlowError(f"the provider refused the device request: {_error(body)}")
        try:
            return DeviceAuthorization(
                device_code=str(body["device_code"]),
                user_code=str(body["user_code"]),
                verification_uri=str(body["verification_uri"]),
                verification_uri_complete=body.get("verification_uri_complete"),
                expires_in=float(body.get("expires_in", 600)),
                interval=float(body.get("interval", 5)),
            )
        except (KeyError, TypeError, ValueError):
            raise DeviceFlowError("the provider's device answer is malformed") from None

    def poll(self, authorization: DeviceAuthorization) -> Mapping[str, Any]:
        """Poll the token endpoint until the person has signed in (RFC 8628 §3.4, §3.5).

        Returns:
            The provider's token response; it holds ``id_token``.

        Raises:
            DeviceFlowError: Denied, expired, or any other refusal.
        """
        endpoint = self.metadata()["token_endpoint"]
        interval = max(authorization.interval, 1.0)
        deadline = self._now() + authorization.expires_in
        while True:
            status, body = self._post(
                endpoint,
                {"grant_type": DEVICE_CODE_GRANT, "device_code": authorization.device_code},
            )
            if status == 200:
                if not isinstance(body.get("id_token"), str):
                    raise DeviceFlowError("the provider answered without an ID token")
                return body
            error = body.get("error")
            if error == "slow_down":
                interval += _SLOW_DOWN
            elif error != "authorization_pending":
                raise DeviceFlowError(f"sign-in at the provider failed: {_error(body)}")
            if self._now() + interval > deadline:
                raise DeviceFlowError("the device code expired before the sign-in finished")
            self._sleep(interval)

    def _post(self, url: str, form: dict[str, str]) -> tuple[int, Mapping[str, Any]]:
        headers = {
            "Content-Type": "application/x-www-form-urlencoded",
            "Accept": "application/json",
        }
        credential = self._credential
        fields = dict(form)
        if credential.secret is not None:
            # RFC 6749 §2.3.1: each part form-urlencoded before the Basic encoding.
            pair = ":".join(
                urllib.parse.quote(v, safe="") for v in (credential.client_id, credential.secret)
            )
            headers["Authorization"] = "Basic " + base64.b64encode(pair.encode()).decode()
        elif credential.private_key_pem is not None:
            fields.update(
                client_id=credential.client_id,
                client_assertion_type=JWT_BEARER,
                client_assertion=self._assertion(url),
            )
        else:
            fields["client_id"] = credential.client_id
        data = urllib.parse.urlencode(fields).encode()
        request = urllib.request.Request(url, data=data, headers=headers, method="POST")  # noqa: S310
        try:
            with strict_opener(url).open(request, timeout=_TIMEOUT) as response:
                return response.status, _json(response.read(_MAX_BYTES + 1))
        except HTTPError as err:
            try:
                return err.code, _json(err.read(_MAX_BYTES + 1))
            finally:
                err.close()
        except (URLError, OSError, http.client.HTTPException) as err:
            raise DeviceFlowError(f"cannot reach {display_url(url)}") from err

    def _assertion(self, audience: str) -> str:
        credential = self._credential
        assert credential.private_key_pem is not None
        key = _load_key(credential.private_key_pem)
        now = int(time.time())
        claims = {
            "iss": credential.client_id,
            "sub": credential.client_id,
            "aud": audience,
            "jti": str(uuid.uuid4()),
            "iat": now,
            "exp": now + 60,
        }
        return jwt.encode(claims, key, algorithm=_signing_algorithm(key))


def _json(raw: bytes) -> Mapping[str, Any]:
    if len(raw) > _MAX_BYTES:
        raise DeviceFlowError("the provider's answer is too large")
    try:
        value = json.loads(raw)
    except ValueError:
        raise DeviceFlowError("the provider did not answer JSON") from None
    if not isinstance(value, dict):
        raise DeviceFlowError("the provider did not answer a JSON object")
    return value


def _error(body: Mapping[str, Any]) -> str:
    # The provider's error code only (RFC 6749 §5.2): its description could hold anything.
    error = body.get("error")
    return error if isinstance(error, str) and error.isprintable() and len(error) < 64 else "error"
