"""Service identities (OAuth 2.0 clients): validation and storage.

A client has an operator-chosen id (``billing-worker``), the scopes and audiences
it may ask for, an enabled flag, and exactly one way to authenticate:

* ``private_key_jwt`` (RFC 7523 §2.2): its public keys, as a registered JWK Set
  or a ``jwks_uri``; the server holds no secret of the client;
* ``tls_client_auth`` (RFC 8705 §2.1): the subject DN of its certificate;
* ``client_secret`` (``client_secret_basic`` or ``client_secret_post``): a 256-bit
  secret the server generates, shows once and stores only as a SHA-256 hash.
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
import secrets
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import sqlalchemy as sa
from sqlalchemy import exc

from auth_server.audit import audit_event
from auth_server.client_tls import parse_subject
from auth_server.errors import ClientExists, ClientNotFound, InvalidRequest
from auth_server.storage import Database, clients
from auth_server.users import validate_scopes
from interceptors import HttpJwksSource, KeySet, KeySetError

_LOGGER = logging.getLogger(__name__)

PRIVATE_KEY_JWT = "private_key_jwt"
TLS_CLIENT_AUTH = "tls_client_auth"
CLIENT_SECRET = "client_secret"  # noqa: S105 - a method name, not a secret
AUTH_METHODS = (PRIVATE_KEY_JWT, TLS_CLIENT_AUTH, CLIENT_SECRET)
#: The algorithms a client's key may sign assertions with (never HS* or none).
ASSERTION_ALGORITHMS = frozenset({"RS256", "PS256", "ES256", "EdDSA"})
SECRET_PREFIX = "ssot_cs_"  # noqa: S105 - a format marker, not a secret
MAX_JWKS_BYTES = 64 * 1024

_CLIENT_ID_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
# User ids are UUIDs; a client id never looks like one, so a ``sub`` names one kind only.
_UUID_RE = re.compile(r"[0-9a-fA-F]{8}(-[0-9a-fA-F]{4}){3}-[0-9a-fA-F]{12}")
_AUDIENCE_RE = re.compile(r"[\x21\x23-\x5B\x5D-\x7E]{1,256}")
_LAST_USED_RESOLUTION = 60.0


@dataclass(frozen=True, kw_only=True)
class Client:
    """A registered client, without its credentials' secret parts.

    Attributes:
        id: The client id: the ``sub`` and ``client_id`` of its tokens.
        auth_method: One of :data:`AUTH_METHODS`.
        scopes: The scopes it may ask for, sorted.
        audiences: The audiences it may ask for; the first is its default.
        exchange_audiences: Token exchange (RFC 8693) policy: audience it may exchange a
            token *to* -> the scopes such a token may carry at most (``None``: no cap
            beyond the subject token's scopes).
        exchange_services: Whether a client-credentials token may be exchanged (the
            subject is then a service, not a user).
        jwks: Its registered public JWK Set (``private_key_jwt``), or ``None``.
        jwks_uri: Where its public keys are fetched (``private_key_jwt``), or ``None``.
        tls_subject: The certificate subject DN it must present (``tls_client_auth``).
        disabled: A disabled client gets no token.
        created_at: Creation time, epoch seconds.
        last_used_at: Last token issued (to a minute), or ``None``.
        old_secret_expires_at: Until when the previous secret still works, or ``None``.
    """

    id: str
    auth_method: str
    scopes: tuple[str, ...]
    audiences: tuple[str, ...]
    jwks: Mapping[str, Any] | None = field(default=None, repr=False)
    jwks_uri: str | None = None
    tls_subject: str | None = None
    disabled: bool = False
    created_at: float = 0.0
    last_used_at: float | None = None
    old_secret_expires_at: float | None = None
    secret_hashes: tuple[str, ...] = field(default=(), repr=False)
    exchange_audiences: Mapping[str, frozenset[str] | None] = field(default_factory=dict)
    exchange_services: bool = False

    def exchange_scope_cap(self, audience: str) -> frozenset[str] | None:
        """The scopes an exchange to ``audience`` may carry (``None``: no cap beyond the subject's).

        Raises:
            KeyError: The client may not exchange tokens to ``audience``.
        """
        return self.exchange_audiences[audience]

    def as_json(self) -> dict[str, Any]:
        """What ``clients show``/``list --json`` print: no secret or hash."""
        return {
            "client_id": self.id,
            "token_endpoint_auth_method": _public_method(self.auth_method),
            "scopes": list(self.scopes),
            "audiences": list(self.audiences),
            "jwks_uri": self.jwks_uri,
            "jwks_kids": sorted(k.get("kid", "") for k in (self.jwks or {}).get("keys", [])),
            "tls_subject": self.tls_subject,
            "disabled": self.disabled,
            "created_at": self.created_at,
            "last_used_at": self.last_used_at,
            "old_secret_expires_at": self.old_secret_expires_at,
            "token_exchange": {
                "audiences": {
                    aud: None if cap is None else sorted(cap)
                    for aud, cap in self.exchange_audiences.items()
                },
                "client_credentials_subjects": self.exchange_services,
            },
        }


def _public_method(method: str) -> str:
    return "client_secret_basic" if method == CLIENT_SECRET else method


def is_valid_client_id(client_id: object) -> bool:
    """Whether ``client_id`` could name a client (cheap; no database)."""
    return (
        isinstance(client_id, str)
        and _CLIENT_ID_RE.fullmatch(client_id) is not None
        and _UUID_RE.fullmatch(client_id) is None
    )


def validate_client_id(client_id: str) -> str:
    """Check a client id: 1-64 of ``A-Z a-z 0-9 . _ -``, not starting with a symbol, not a UUID.

    Raises:
        InvalidRequest: The id is not acceptable.
    """
    if not is_valid_client_id(client_id):
        raise InvalidRequest(
            "client id must be 1 to 64 letters, digits, '.', '_' or '-', start with a letter"
            " or digit, and not look like a UUID"
        )
    return client_id


def validate_audiences(audiences: Iterable[str]) -> tuple[str, ...]:
    """Check audience values (printable ASCII, no spaces, at most 256), keeping their order."""
    result: list[str] = []
    for audience in audiences:
        if not isinstance(audience, str) or not _AUDIENCE_RE.fullmatch(audience):
            raise InvalidRequest("each audience must be 1 to 256 printable ASCII characters")
        if audience not in result:
            result.append(audience)
    return tuple(result)


def parse_exchange_audiences(specs: Iterable[str]) -> dict[str, frozenset[str] | None]:
    """Parse token-exchange targets: ``AUD`` or ``AUD=scope1,scope2`` (scopes capped).

    Raises:
        InvalidRequest: An audience or scope is malformed.
    """
    result: dict[str, frozenset[str] | None] = {}
    for spec in specs:
        audience, sep, scope_list = spec.partition("=")
        validate_audiences([audience])
        if "=" in scope_list:
            raise InvalidRequest("an exchange audience is AUD or AUD=scope,scope")
        cap = frozenset(validate_scopes(scope_list.split(","))) if sep else None
        result[audience] = cap
    return result


def _exchange_text(policy: Mapping[str, frozenset[str] | None]) -> str | None:
    parts = [
        aud if cap is None else f"{aud}={','.join(sorted(cap))}" for aud, cap in policy.items()
    ]
    return " ".join(parts) or None


def validate_jwks(document: Mapping[str, Any]) -> dict[str, Any]:
    """Check a client's public JWK Set: signature keys only, each with a ``kid``, no private parts.

    Returns:
        The document, as plain JSON data.

    Raises:
        InvalidRequest: The set is unusable (the message says why, without key material).
    """
    try:
        KeySet.from_jwks(document, algorithms=ASSERTION_ALGORITHMS)
    except KeySetError as exc:
        raise InvalidRequest("the JWK Set is not usable: " + _key_set_problem(exc)) from None
    data: dict[str, Any] = json.loads(json.dumps(document))
    if len(json.dumps(data)) > MAX_JWKS_BYTES:
        raise InvalidRequest("the JWK Set is too large")
    return data


def _key_set_problem(exc: KeySetError) -> str:
    # The log text names the refused member or kid, never key material; the
    # operator registering the set is the one reading it. (str(exc) is only the
    # verifier's generic wire text.)
    return exc.log_detail or "invalid"


def hash_secret(secret: str) -> str:
    """The stored form of a client secret."""
    return hashlib.sha256(secret.encode("utf-8", "surrogatepass")).hexdigest()


def new_secret() -> str:
    """A fresh client secret: 256 random bits, URL-safe."""
    return SECRET_PREFIX + secrets.token_urlsafe(32)


class ClientStore:
    """Creates, changes and reads clients in the database; thread-safe."""

    def __init__(self, db: Database, *, now: Callable[[], float] = time.time) -> None:
        self._db = db
        self._now = now

    def add(
        self,
        client_id: str,
        *,
        scopes: Iterable[str] = (),
        audiences: Iterable[str],
        jwks: Mapping[str, Any] | None = None,
        jwks_uri: str | None = None,
        tls_subject: str | None = None,
        secret: bool = False,
        exchange_audiences: Iterable[str] = (),
        exchange_services: bool = False,
    ) -> tuple[Client, str | None]:
        """Register a client with exactly one way to authenticate.

        Returns:
            The client and, for a secret client, its secret (shown once, never stored).

        Raises:
            InvalidRequest: A value is not acceptable, or not exactly one method is given.
            ClientExists: The id is taken.
        """
        validate_client_id(client_id)
        allowed = validate_audiences(audiences)
        if not allowed:
            raise InvalidRequest("a client needs at least one audience")
        given = [m for m, v in ((1, jwks), (2, jwks_uri), (3, tls_subject)) if v is not None]
        if len(given) + bool(secret) != 1:
            raise InvalidRequest("give exactly one of a JWK Set, a jwks_uri, a TLS subject, secret")
        row: dict[str, Any] = {
            "id": client_id,
            "scopes": " ".join(validate_scopes(scopes)),
            "audiences": " ".join(allowed),
            "disabled": False,
            "exchange_audiences": _exchange_text(parse_exchange_audiences(exchange_audiences)),
            "exchange_services": bool(exchange_services),
        }
        issued: str | None = None
        if jwks is not None:
            row.update(auth_method=PRIVATE_KEY_JWT, jwks=json.dumps(validate_jwks(jwks)))
        elif jwks_uri is not None:
            row.update(auth_method=PRIVATE_KEY_JWT, jwks_uri=validate_jwks_uri(jwks_uri))
        elif tls_subject is not None:
            row.update(auth_method=TLS_CLIENT_AUTH, tls_subject=normalize_subject(tls_subject))
        else:
            issued = new_secret()
            row.update(auth_method=CLIENT_SECRET, secret_hash=hash_secret(issued))
        now = self._now()
        row.update(created_at=now, updated_at=now)
        try:
            with self._db.transaction(write=True) as conn:
                conn.execute(clients.insert().values(**row))
        except exc.IntegrityError as err:
            raise ClientExists() from err
        _LOGGER.info("client added: %s (%s)", client_id, row["auth_method"])
        audit_event("client.created", client_id=client_id, method=row["auth_method"])
        return _to_client(row), issued

    def get(self, client_id: str) -> Client | None:
        """The client with this id, or ``None`` (also for an id that could not exist)."""
        if not is_valid_client_id(client_id):
            return None
        with self._db.transaction() as conn:
            row = conn.execute(_BY_ID, {"client_id": client_id}).first()
        return None if row is None else _to_client(row._mapping)

    def require(self, client_id: str) -> Client:
        """Like :meth:`get`, but raises :class:`ClientNotFound`."""
        client = self.get(client_id)
        if client is None:
            raise ClientNotFound()
        return client

    def list(self) -> list[Client]:
        """Every client, ordered by id."""
        with self._db.transaction() as conn:
            rows = conn.execute(clients.select().order_by(clients.c.id)).all()
        return [_to_client(row._mapping) for row in rows]

    def set_disabled(self, client_id: str, disabled: bool) -> Client:
        """Disable (no more tokens) or enable a client.

        Raises:
            ClientNotFound: No client has that id.
        """
        client = self._update(client_id, disabled=disabled)
        if disabled:
            audit_event("client.disabled", client_id=client_id)
        return client

    def rotate_secret(self, client_id: str, *, keep_old: float = 0.0) -> tuple[Client, str]:
        """Give a secret client a new secret; the old one keeps working ``keep_old`` seconds.

        Raises:
            ClientNotFound: No client has that id.
            InvalidRequest: The client does not authenticate with a secret.
        """
        client = self.require(client_id)
        if client.auth_method != CLIENT_SECRET:
            raise InvalidRequest("the client does not authenticate with a secret")
        if keep_old < 0:
            raise InvalidRequest("the overlap must not be negative")
        secret = new_secret()
        values: dict[str, Any] = {"secret_hash": hash_secret(secret)}
        if keep_old > 0:
            values.update(
                old_secret_hash=client.secret_hashes[0],
                old_secret_expires_at=self._now() + keep_old,
            )
        else:
            values.update(old_secret_hash=None, old_secret_expires_at=None)
        updated = self._update(client_id, **values)
        audit_event("client.secret_rotated", client_id=client_id, overlap=keep_old)
        return updated, secret

    def set_keys(
        self,
        client_id: str,
        *,
        jwks: Mapping[str, Any] | None = None,
        jwks_uri: str | None = None,
    ) -> Client:
        """Replace a ``private_key_jwt`` client's keys (a JWK Set or a ``jwks_uri``).

        Raises:
            ClientNotFound: No client has that id.
            InvalidRequest: Not exactly one of the two, or the client uses another method.
        """
        if (jwks is None) == (jwks_uri is None):
            raise InvalidRequest("give either a JWK Set or a jwks_uri")
        if self.require(client_id).auth_method != PRIVATE_KEY_JWT:
            raise InvalidRequest("the client does not authenticate with private_key_jwt")
        if jwks is not None:
            return self._update(client_id, jwks=json.dumps(validate_jwks(jwks)), jwks_uri=None)
        return self._update(client_id, jwks=None, jwks_uri=validate_jwks_uri(jwks_uri or ""))

    def set_exchange(
        self, client_id: str, *, audiences: Iterable[str], services: bool = False
    ) -> Client:
        """Replace a client's token-exchange policy (``AUD`` or ``AUD=scope,scope`` each).

        Raises:
            ClientNotFound: No client has that id.
            InvalidRequest: A target is malformed.
        """
        text = _exchange_text(parse_exchange_audiences(audiences))
        return self._update(client_id, exchange_audiences=text, exchange_services=bool(services))

    def remove(self, client_id: str) -> None:
        """Delete a client.

        Raises:
            ClientNotFound: No client has that id.
        """
        if not is_valid_client_id(client_id):
            raise ClientNotFound()
        with self._db.transaction(write=True) as conn:
            result = conn.execute(clients.delete().where(clients.c.id == client_id))
        if result.rowcount == 0:
            raise ClientNotFound()
        _LOGGER.info("client removed: %s", client_id)
        audit_event("client.removed", client_id=client_id)

    def note_used(self, client: Client) -> None:
        """Record that ``client`` got a token (at most one write a minute per client)."""
        now = self._now()
        if client.last_used_at is not None and now - client.last_used_at < _LAST_USED_RESOLUTION:
            return
        with self._db.transaction(write=True) as conn:
            conn.execute(clients.update().where(clients.c.id == client.id).values(last_used_at=now))

    def _update(self, client_id: str, **values: Any) -> Client:
        if not is_valid_client_id(client_id):
            raise ClientNotFound()
        with self._db.transaction(write=True) as conn:
            result = conn.execute(
                clients.update()
                .where(clients.c.id == client_id)
                .values(updated_at=self._now(), **values)
            )
            if result.rowcount == 0:
                raise ClientNotFound()
            row = conn.execute(clients.select().where(clients.c.id == client_id)).one()
        _LOGGER.info("client changed: %s (%s)", client_id, ", ".join(sorted(values)))
        return _to_client(row._mapping)


# Built once: every client-credentials grant reads its client.
_BY_ID = clients.select().where(clients.c.id == sa.bindparam("client_id"))


def validate_jwks_uri(uri: str) -> str:
    """Check a ``jwks_uri``: https, or http on a loopback host (as the verifiers' fetcher)."""
    try:
        HttpJwksSource(uri)  # the verifiers' own URL rules
    except ValueError as exc:
        raise InvalidRequest(f"jwks_uri is not acceptable: {exc}") from None
    return uri


def normalize_subject(subject: str) -> str:
    """An RFC 4514 subject DN in the one spelling certificates are compared in."""
    return parse_subject(subject)


def _to_client(record: Mapping[Any, Any]) -> Client:
    hashes = [record.get("secret_hash")]
    old = record.get("old_secret_hash")
    if old is not None:
        hashes.append(old)
    jwks = record.get("jwks")
    return Client(
        id=record["id"],
        auth_method=record["auth_method"],
        scopes=tuple(record["scopes"].split()),
        audiences=tuple(record["audiences"].split()),
        jwks=json.loads(jwks) if jwks else None,
        jwks_uri=record.get("jwks_uri"),
        tls_subject=record.get("tls_subject"),
        disabled=bool(record["disabled"]),
        created_at=float(record["created_at"]),
        last_used_at=record.get("last_used_at"),
        old_secret_expires_at=record.get("old_secret_expires_at"),
        secret_hashes=tuple(h for h in hashes if h),
        exchange_audiences=_parse_stored_exchange(record.get("exchange_audiences")),
        exchange_services=bool(record.get("exchange_services")),
    )


def _parse_stored_exchange(text: str | None) -> dict[str, frozenset[str] | None]:
    result: dict[str, frozenset[str] | None] = {}
    for spec in (text or "").split():
        audience, sep, scope_list = spec.partition("=")
        result[audience] = frozenset(scope_list.split(",")) if sep else None
    return result
