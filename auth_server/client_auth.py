"""Client authentication at the token endpoint: one answer for every failure.

:class:`ClientAuthenticator` takes what a request presented
(:class:`ClientCredentials`) and returns the authenticated :class:`Client`, or
raises :class:`~auth_server.errors.InvalidClient`. An unknown client id, a wrong
secret, a bad assertion, a disabled client and a client using a method it is not
registered for all get the same error, and an unknown id does the same work as a
known one (a database read and a hash compare), so neither the answer nor the
time tells them apart. Failures are throttled per client id and address
(:mod:`auth_server.client_throttle`) and audited as ``client.auth_failed``.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import NoReturn

from auth_server.audit import audit_event
from auth_server.client_assertion import (
    ASSERTION_TYPE,
    AssertionRefused,
    AssertionVerifier,
    parse_assertion,
)
from auth_server.client_throttle import ClientThrottle
from auth_server.client_tls import PeerCertificate, subject_matches
from auth_server.clients import (
    CLIENT_SECRET,
    PRIVATE_KEY_JWT,
    TLS_CLIENT_AUTH,
    Client,
    ClientStore,
    hash_secret,
    is_valid_client_id,
)
from auth_server.errors import InvalidClient, OAuthInvalidRequest

_LOGGER = logging.getLogger(__name__)

MAX_SECRET_LENGTH = 256
# Compared against when the client is unknown, so that path costs what a known one does.
_DUMMY_HASH = hashlib.sha256(b"ssot-auth: no such client").hexdigest()

BASIC = "client_secret_basic"
POST = "client_secret_post"


@dataclass(frozen=True, kw_only=True)
class ClientCredentials:
    """What one token request presented to authenticate its client.

    Attributes:
        client_id: The ``client_id`` parameter (or the Basic user name).
        client_secret: The secret, from the Basic header or the body (never log it).
        secret_via: ``"client_secret_basic"`` or ``"client_secret_post"`` when a secret was sent.
        assertion_type: The ``client_assertion_type`` parameter.
        assertion: The ``client_assertion`` parameter (never log it).
        certificate: The verified client certificate of a mutual TLS connection.
    """

    client_id: str = ""
    client_secret: str = field(default="", repr=False)
    secret_via: str = ""
    assertion_type: str = ""
    assertion: str = field(default="", repr=False)
    certificate: PeerCertificate | None = None

    @property
    def presented(self) -> bool:
        """Whether the request tried to authenticate a client at all."""
        return bool(self.client_id or self.client_secret or self.assertion or self.assertion_type)


class ClientAuthenticator:
    """Authenticates clients by ``private_key_jwt``, ``tls_client_auth`` or a secret."""

    def __init__(
        self,
        clients: ClientStore,
        assertions: AssertionVerifier,
        throttle: ClientThrottle,
        *,
        now: Callable[[], float] = time.time,
    ) -> None:
        self._clients = clients
        self._assertions = assertions
        self._throttle = throttle
        self._now = now

    def authenticate(self, credentials: ClientCredentials, *, address: str) -> Client:
        """Authenticate the client the request names (blocking: database work).

        Raises:
            OAuthInvalidRequest: Two methods at once, or an unsupported assertion type
                (RFC 6749 §2.3: a client uses one method per request).
            ClientAuthThrottled: Too many recent failures for this client and address.
            InvalidClient: Authentication failed (one answer for every reason).
            StorageError: The database is unavailable.
        """
        creds = credentials
        if creds.assertion or creds.assertion_type:
            if creds.client_secret:
                raise OAuthInvalidRequest("use one client authentication method per request")
            if creds.assertion_type != ASSERTION_TYPE or not creds.assertion:
                raise OAuthInvalidRequest("unsupported client_assertion_type")
            return self._by_assertion(creds, address)
        if creds.client_secret:
            return self._by_secret(creds, address)
        if creds.client_id:
            return self._by_certificate(creds, address)
        self._fail("", address, "no_credentials")

    def _by_secret(self, creds: ClientCredentials, address: str) -> Client:
        client_id = creds.client_id
        self._throttle.check(client_id, address)
        client = self._clients.get(client_id)
        presented = hash_secret(creds.client_secret[: MAX_SECRET_LENGTH + 1])
        stored = _secret_hashes(client, self._now())
        # Every stored hash is compared (constant time), matching or not: one cost.
        matched = False
        for candidate in stored:
            matched |= hmac.compare_digest(presented, candidate)
        if client is None:
            self._fail(client_id, address, "unknown_client")
        if len(creds.client_secret) > MAX_SECRET_LENGTH or not matched:
            self._fail(client_id, address, "bad_secret")
        return self._usable(client, address, CLIENT_SECRET)

    def _by_certificate(self, creds: ClientCredentials, address: str) -> Client:
        client_id = creds.client_id
        self._throttle.check(client_id, address)
        client = self._clients.get(client_id)
        if client is None:
            self._fail(client_id, address, "unknown_client")
        if client.auth_method != TLS_CLIENT_AUTH:
            self._fail(client_id, address, "wrong_method")
        if not subject_matches(client.tls_subject, creds.certificate):
            self._fail(client_id, address, "certificate_mismatch")
        return self._usable(client, address, TLS_CLIENT_AUTH)

    def _by_assertion(self, creds: ClientCredentials, address: str) -> Client:
        try:
            parsed = parse_assertion(creds.assertion)
        except AssertionRefused as exc:
            self._fail(creds.client_id, address, exc.reason)
        client_id = creds.client_id or parsed.subject or ""
        if creds.client_id and parsed.subject != creds.client_id:
            self._fail(client_id, address, "wrong_issuer_or_subject")
        self._throttle.check(client_id, address)
        client = self._clients.get(client_id)
        if client is None:
            self._fail(client_id, address, "unknown_client")
        if client.auth_method != PRIVATE_KEY_JWT:
            self._fail(client_id, address, "wrong_method")
        try:
            self._assertions.verify(parsed, client)
        except AssertionRefused as exc:
            self._fail(client_id, address, exc.reason)
        return self._usable(client, address, PRIVATE_KEY_JWT)

    def _usable(self, client: Client, address: str, method: str) -> Client:
        if client.auth_method != method:
            self._fail(client.id, address, "wrong_method")
        if client.disabled:
            self._fail(client.id, address, "disabled")
        return client

    def _fail(self, client_id: str, address: str, reason: str) -> NoReturn:
        # A claimed id that could not exist is not written to the audit trail verbatim.
        shown = client_id if is_valid_client_id(client_id) else None
        _LOGGER.info("client authentication failed (%s) for %s", reason, shown)
        audit_event("client.auth_failed", client_id=shown, reason=reason, address=address)
        self._throttle.failed(client_id, address)
        raise InvalidClient()


def _secret_hashes(client: Client | None, now: float) -> tuple[str, ...]:
    if client is None or client.auth_method != CLIENT_SECRET or not client.secret_hashes:
        return (_DUMMY_HASH, _DUMMY_HASH)
    current, *old = client.secret_hashes
    # The previous secret works only inside the overlap `rotate-secret --keep-old` gave it.
    overlap = client.old_secret_expires_at
    if old and overlap is not None and now < overlap:
        return (current, old[0])
    return (current, _DUMMY_HASH)
