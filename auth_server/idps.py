"""Upstream identity providers (OpenID Providers people sign in with): validation and storage.

A provider has an operator-chosen name (``corp``), its issuer URL (exactly as its
ID tokens carry it in ``iss``), our client id there, what to ask it for
(``scope``), which claim names a new user, the e-mail domains allowed (empty: any)
and the scopes of ours a user created at first sign-in gets.

The client credential at the provider (a secret, or a private key for
``private_key_jwt``) is needed again, in the clear, to run the device flow, so it
cannot be stored as a hash as our own clients' secrets are: it is sealed under
the deployment's key passphrase (:mod:`auth_server._envelope`, AES-256-GCM under
an argon2id-derived key, the provider's name as associated data) like the signing
keys, and re-wrapped with them by ``keys rewrap``. A public client (``none``)
stores nothing.
"""

from __future__ import annotations

import logging
import re
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa
from sqlalchemy import exc

from auth_server import _revocationrows as revocationrows
from auth_server._envelope import KeyEncryption, SealError
from auth_server.audit import audit_event
from auth_server.errors import IdpExists, IdpNotFound, InvalidRequest, KeyStoreError
from auth_server.revocation_store import audit_revoked
from auth_server.storage import Database, identity_providers, sessions, user_identities
from auth_server.upstream_auth import check_private_key
from auth_server.users import validate_scopes
from interceptors._http import check_url

_LOGGER = logging.getLogger(__name__)

NONE = "none"
CLIENT_SECRET = "client_secret"  # noqa: S105 - a method name, not a secret
PRIVATE_KEY_JWT = "private_key_jwt"
AUTH_METHODS = (NONE, CLIENT_SECRET, PRIVATE_KEY_JWT)
DEFAULT_SCOPE = "openid email profile"
DEFAULT_USERNAME_CLAIM = "preferred_username"
MAX_CREDENTIAL_BYTES = 16 * 1024

_NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
_CLAIM_RE = re.compile(r"[A-Za-z0-9_.:-]{1,64}")
_CLIENT_ID_RE = re.compile(r"[\x21-\x7E]{1,255}")
_DOMAIN_RE = re.compile(r"(?=.{1,253}$)([a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?\.)+[a-z]{2,63}")


@dataclass(frozen=True, kw_only=True)
class IdentityProvider:
    """A configured upstream provider, without its credential.

    Attributes:
        name: The operator's name for it (``ssot-auth idp ... NAME``, ``login --idp NAME``).
        issuer: Its issuer URL, compared exactly with ``iss``.
        client_id: Our client id at the provider: its ID tokens' ``aud`` must hold it.
        auth_method: How we authenticate there: one of :data:`AUTH_METHODS`.
        scope: What we ask the provider for (space-separated; holds ``openid``).
        username_claim: The claim that names a user created at first sign-in.
        allowed_domains: E-mail domains allowed (lower case); empty allows any.
        default_scopes: Our scopes a user created at first sign-in holds.
        disabled: A disabled provider's ID tokens are refused.
    """

    name: str
    issuer: str
    client_id: str
    auth_method: str = NONE
    scope: str = DEFAULT_SCOPE
    username_claim: str = DEFAULT_USERNAME_CLAIM
    allowed_domains: tuple[str, ...] = ()
    default_scopes: tuple[str, ...] = ()
    disabled: bool = False
    created_at: float = 0.0

    def as_json(self) -> dict[str, Any]:
        """What ``idp show``/``list --json`` print (no credential)."""
        return {
            "name": self.name,
            "issuer": self.issuer,
            "client_id": self.client_id,
            "auth_method": self.auth_method,
            "scope": self.scope,
            "username_claim": self.username_claim,
            "allowed_domains": list(self.allowed_domains),
            "default_scopes": list(self.default_scopes),
            "disabled": self.disabled,
            "created_at": self.created_at,
        }


def is_valid_idp_name(name: object) -> bool:
    """Whether ``name`` could name a provider (cheap; no database)."""
    return isinstance(name, str) and _NAME_RE.fullmatch(name) is not None


def validate_idp_name(name: str) -> str:
    """Check a provider name: 1-64 of ``A-Z a-z 0-9 . _ -``, starting with a letter or digit."""
    if not is_valid_idp_name(name):
        raise InvalidRequest(
            "provider name must be 1 to 64 letters, digits, '.', '_' or '-',"
            " starting with a letter or digit"
        )
    return name


def validate_issuer(issuer: str) -> str:
    """Check an issuer URL: https (http only on loopback), no query or fragment."""
    if len(issuer) > 2048:
        raise InvalidRequest("issuer is longer than 2048 characters")
    try:
        check_url(issuer, allow_insecure_http=False)
    except ValueError as err:
        raise InvalidRequest(f"issuer is not acceptable: {err}") from None
    if "?" in issuer or "#" in issuer:
        raise InvalidRequest("issuer must not have a query or fragment (OpenID Discovery §3)")
    return issuer


def validate_domains(domains: Iterable[str]) -> tuple[str, ...]:
    """Check e-mail domains (``example.com``), lower-cased, deduplicated, in order."""
    result: list[str] = []
    for domain in domains:
        value = domain.strip().lower()
        if not _DOMAIN_RE.fullmatch(value):
            raise InvalidRequest(f"not a domain name: {domain!r}")
        if value not in result:
            result.append(value)
    return tuple(result)


def _validate_scope(scope: str) -> str:
    words = validate_scopes(scope.split())
    if "openid" not in words:
        raise InvalidRequest("the provider scope must include openid")
    # Keep the operator's order: some providers care about it in consent screens.
    return " ".join(dict.fromkeys(scope.split()))


class IdpStore:
    """Creates, changes and reads identity providers in the database; thread-safe."""

    def __init__(
        self,
        db: Database,
        *,
        sealer: KeyEncryption | None = None,
        now: Callable[[], float] = time.time,
    ) -> None:
        """Create the store.

        Args:
            db: The database (schema already created).
            sealer: Seals and opens provider credentials (the key passphrase);
                needed only to add a provider with a credential or to read one.
            now: Clock, epoch seconds.
        """
        self._db = db
        self._sealer = sealer
        self._now = now

    def add(
        self,
        name: str,
        *,
        issuer: str,
        client_id: str,
        client_secret: str | None = None,
        private_key_pem: bytes | None = None,
        scope: str = DEFAULT_SCOPE,
        username_claim: str = DEFAULT_USERNAME_CLAIM,
        allowed_domains: Iterable[str] = (),
        default_scopes: Iterable[str] = (),
    ) -> IdentityProvider:
        """Register a provider (at most one of a secret or a private key).

        Raises:
            InvalidRequest: A value is not acceptable.
            IdpExists: The name, or the issuer, is taken.
            KeyStoreError: A credential is given but the store has no sealer.
        """
        validate_idp_name(name)
        validate_issuer(issuer)
        if not _CLIENT_ID_RE.fullmatch(client_id or ""):
            raise InvalidRequest("client id must be 1 to 255 printable ASCII characters")
        if not _CLAIM_RE.fullmatch(username_claim or ""):
            raise InvalidRequest("username claim must be a claim name")
        if client_secret is not None and private_key_pem is not None:
            raise InvalidRequest("give a client secret or a private key, not both")
        method, credential = NONE, None
        if client_secret is not None:
            if not client_secret or len(client_secret) > MAX_CREDENTIAL_BYTES:
                raise InvalidRequest("the client secret is empty or too long")
            method, credential = CLIENT_SECRET, client_secret.encode("utf-8")
        elif private_key_pem is not None:
            check_private_key(private_key_pem)
            method, credential = PRIVATE_KEY_JWT, private_key_pem
        sealed = None
        if credential is not None:
            if self._sealer is None:
                raise KeyStoreError("the key passphrase is needed to store a provider credential")
            sealed = self._sealer.seal(_aad(name), credential)
        now = self._now()
        row: dict[str, Any] = {
            "name": name,
            "issuer": issuer,
            "client_id": client_id,
            "auth_method": method,
            "sealed_credential": sealed,
            "scope": _validate_scope(scope),
            "username_claim": username_claim,
            "allowed_domains": " ".join(validate_domains(allowed_domains)),
            "default_scopes": " ".join(validate_scopes(default_scopes)),
            "disabled": False,
            "created_at": now,
            "updated_at": now,
        }
        try:
            with self._db.transaction(write=True) as conn:
                taken = conn.execute(
                    sa.select(identity_providers.c.name).where(
                        identity_providers.c.issuer == issuer
                    )
                ).first()
                if taken is not None:
                    raise IdpExists("another provider has that issuer")
                conn.execute(identity_providers.insert().values(**row))
        except exc.IntegrityError as err:
            raise IdpExists() from err
        _LOGGER.info("identity provider added: %s (%s)", name, issuer)
        audit_event("idp.created", idp=name, issuer=issuer, method=method)
        return _to_idp(row)

    def get(self, name: str) -> IdentityProvider | None:
        """The provider named ``name``, or ``None``."""
        if not is_valid_idp_name(name):
            return None
        with self._db.transaction() as conn:
            row = conn.execute(
                identity_providers.select().where(identity_providers.c.name == name)
            ).first()
        return None if row is None else _to_idp(row._mapping)

    def require(self, name: str) -> IdentityProvider:
        """Like :meth:`get`, but raises :class:`IdpNotFound`."""
        found = self.get(name)
        if found is None:
            raise IdpNotFound()
        return found

    def by_issuer(self, issuer: str) -> IdentityProvider | None:
        """The provider whose issuer is exactly ``issuer``, or ``None``."""
        if not isinstance(issuer, str) or not issuer or len(issuer) > 2048:
            return None
        with self._db.transaction() as conn:
            row = conn.execute(
                identity_providers.select().where(identity_providers.c.issuer == issuer)
            ).first()
        return None if row is None else _to_idp(row._mapping)

    def list(self) -> list[IdentityProvider]:
        """Every provider, ordered by name."""
        with self._db.transaction() as conn:
            rows = conn.execute(
                identity_providers.select().order_by(identity_providers.c.name)
            ).all()
        return [_to_idp(row._mapping) for row in rows]

    def credential(self, name: str) -> bytes | None:
        """The provider's credential in the clear (a secret or a PEM key), or ``None``.

        Raises:
            IdpNotFound: No such provider.
            KeyStoreError: No sealer, or the sealed value does not open (wrong passphrase).
        """
        if not is_valid_idp_name(name):
            raise IdpNotFound()
        with self._db.transaction() as conn:
            row = conn.execute(
                sa.select(identity_providers.c.sealed_credential).where(
                    identity_providers.c.name == name
                )
            ).first()
        if row is None:
            raise IdpNotFound()
        if row.sealed_credential is None:
            return None
        if self._sealer is None:
            raise KeyStoreError("the key passphrase is needed to read a provider credential")
        try:
            return self._sealer.open(_aad(name), bytes(row.sealed_credential))
        except SealError as err:
            raise KeyStoreError("cannot decrypt the provider credential") from err

    def set_disabled(self, name: str, disabled: bool) -> IdentityProvider:
        """Disable (its ID tokens refused, its sessions ended) or enable a provider.

        Raises:
            IdpNotFound: No such provider.
        """
        ended: list[str] = []
        if not is_valid_idp_name(name):
            raise IdpNotFound()
        with self._db.transaction(write=True) as conn:
            now = self._now()
            result = conn.execute(
                identity_providers.update()
                .where(identity_providers.c.name == name)
                .values(disabled=disabled, updated_at=now)
            )
            if result.rowcount == 0:
                raise IdpNotFound()
            if disabled:
                ended = end_idp_sessions(conn, name, now=now, reason="idp_disabled")
            row = conn.execute(
                identity_providers.select().where(identity_providers.c.name == name)
            ).one()
        if disabled:
            _LOGGER.info("identity provider %s disabled; %d sessions ended", name, len(ended))
            audit_event("idp.disabled", idp=name, sessions=len(ended))
            audit_revoked(ended, user_id=None, reason="idp_disabled")
        else:
            audit_event("idp.enabled", idp=name)
        return _to_idp(row._mapping)

    def remove(self, name: str) -> int:
        """Delete a provider, its identity links, and end the sessions signed in with it.

        Returns:
            How many identity links were removed (their users stay).

        Raises:
            IdpNotFound: No such provider.
        """
        if not is_valid_idp_name(name):
            raise IdpNotFound()
        with self._db.transaction(write=True) as conn:
            now = self._now()
            found = conn.execute(
                sa.select(identity_providers.c.name)
                .where(identity_providers.c.name == name)
                .with_for_update()
            ).first()
            if found is None:
                raise IdpNotFound()
            ended = end_idp_sessions(conn, name, now=now, reason="idp_removed")
            links = conn.execute(user_identities.delete().where(user_identities.c.idp == name))
            conn.execute(identity_providers.delete().where(identity_providers.c.name == name))
        unlinked = int(links.rowcount or 0)
        _LOGGER.info("identity provider removed: %s (%d links)", name, unlinked)
        audit_event("idp.removed", idp=name, links=unlinked, sessions=len(ended))
        audit_revoked(ended, user_id=None, reason="idp_removed")
        return unlinked


def rewrap_credentials(conn: sa.Connection, old: KeyEncryption, new: KeyEncryption) -> int:
    """Re-seal every provider credential under ``new`` (``keys rewrap``), in ``conn``'s transaction.

    Raises:
        KeyStoreError: ``old`` does not open one of them (nothing should be committed).
    """
    rows = conn.execute(
        sa.select(identity_providers.c.name, identity_providers.c.sealed_credential).where(
            identity_providers.c.sealed_credential.isnot(None)
        )
    ).all()
    for name, sealed in rows:
        try:
            moved = new.rewrap(_aad(name), bytes(sealed), old)
        except SealError as err:
            raise KeyStoreError("cannot open a provider credential: wrong passphrase?") from err
        conn.execute(
            identity_providers.update()
            .where(identity_providers.c.name == name)
            .values(sealed_credential=moved)
        )
    return len(rows)


def end_idp_sessions(conn: sa.Connection, idp: str, *, now: float, reason: str) -> list[str]:
    """Revoke every unrevoked session signed in with ``idp``, in the caller's transaction."""
    ids = list(
        conn.execute(
            sa.select(sessions.c.id)
            .where(sessions.c.idp == idp, sessions.c.revoked_at.is_(None))
            .with_for_update()
        ).scalars()
    )
    if ids:
        conn.execute(
            sessions.update()
            .where(sessions.c.id.in_(ids))
            .values(revoked_at=now, revoke_reason=reason)
        )
        revocationrows.stamp_sessions(conn, ids)
    return ids


def _aad(name: str) -> str:
    return f"idp-credential/{name}"


def _to_idp(record: Mapping[Any, Any]) -> IdentityProvider:
    return IdentityProvider(
        name=record["name"],
        issuer=record["issuer"],
        client_id=record["client_id"],
        auth_method=record["auth_method"],
        scope=record["scope"],
        username_claim=record["username_claim"],
        allowed_domains=tuple((record["allowed_domains"] or "").split()),
        default_scopes=tuple((record["default_scopes"] or "").split()),
        disabled=bool(record["disabled"]),
        created_at=float(record["created_at"]),
    )
