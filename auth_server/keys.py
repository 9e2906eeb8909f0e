"""Signing keys: stored encrypted in the database, rotated, revoked and published.

A key's life: *next* (published, not yet signing) -> *current* (signs) ->
*previous* (a newer key signs; still published so its tokens verify) ->
*retired* (``retires_at`` passed; no longer published). *Revoked* keys leave
the published set at once, whatever their state.
"""

from __future__ import annotations

import json
import logging
import math
import threading
import time
import types
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, TypeAlias

import sqlalchemy as sa
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from sqlalchemy import exc

from auth_server.errors import InvalidRequest, KeyStoreError
from auth_server.jwk import (
    ALGORITHMS,
    PrivateKey,
    check_rsa_bits,
    generate_private_key,
    jwk_thumbprint,
    public_jwk,
)
from auth_server.storage import Database, signing_keys

_LOGGER = logging.getLogger(__name__)

# Key changes run one at a time across replicas (see Database.transaction).
_LOCK_NAME = "ssot-auth.signing_keys"
_WRONG_PASSPHRASE = "cannot decrypt signing key: wrong passphrase?"  # noqa: S105
_UNUSABLE = "signing key is unusable"
# How many stored keys to try when checking the passphrase before adding a key.
_PASSPHRASE_PROBES = 5
_PRIVATE_TYPES = (rsa.RSAPrivateKey, ec.EllipticCurvePrivateKey, ed25519.Ed25519PrivateKey)

# A row as read from signing_keys (column name -> value).
_Record: TypeAlias = Mapping[Any, Any]

_METADATA_COLUMNS = (
    signing_keys.c.kid,
    signing_keys.c.algorithm,
    signing_keys.c.created_at,
    signing_keys.c.activates_at,
    signing_keys.c.deactivated_at,
    signing_keys.c.retires_at,
    signing_keys.c.revoked_at,
)


@dataclass(frozen=True, kw_only=True)
class SigningKey:
    """A decrypted key that can sign tokens.

    Attributes:
        kid: The key id (RFC 7638 thumbprint of the public key).
        algorithm: The JWS algorithm, one of :data:`auth_server.jwk.ALGORITHMS`.
        private_key: The private key (never log or serialise it).
        public_jwk: The public JWK, as published.
    """

    kid: str
    algorithm: str
    private_key: PrivateKey
    public_jwk: Mapping[str, str]

    def __repr__(self) -> str:
        return f"SigningKey(kid={self.kid!r}, algorithm={self.algorithm!r})"


@dataclass(frozen=True, kw_only=True)
class KeyInfo:
    """A key's metadata, without key material.

    Attributes:
        kid: The key id.
        algorithm: The JWS algorithm.
        state: ``"next"``, ``"current"``, ``"previous"``, ``"retired"`` or ``"revoked"``.
        created_at: When the key was made, epoch seconds.
        activates_at: When it may start signing.
        deactivated_at: When a newer key took over, if one did.
        retires_at: When it leaves the published set, if decided.
        revoked_at: When it was revoked, if it was.
    """

    kid: str
    algorithm: str
    state: str
    created_at: float
    activates_at: float
    deactivated_at: float | None
    retires_at: float | None
    revoked_at: float | None


class SigningKeyStore:
    """The token authority's signing keys, shared through the database; thread-safe.

    Every method reads the database, so several stores (replicas) on one
    database agree on the current key and the published set. Decrypted
    private keys are cached in memory by ``kid``.
    """

    def __init__(
        self,
        db: Database,
        passphrase: bytes,
        *,
        algorithm: str = "RS256",
        rsa_bits: int = 2048,
        now: Callable[[], float] = time.time,
    ) -> None:
        """Create the store (no database access yet).

        Args:
            db: The database (schema already created).
            passphrase: Encrypts the private keys at rest. Must not be empty.
            algorithm: The algorithm of keys this store creates.
            rsa_bits: RSA modulus size for RS256/PS256 keys it creates.
            now: Clock, epoch seconds.

        Raises:
            ValueError: Empty passphrase, unknown algorithm or bad RSA size.
        """
        if algorithm not in ALGORITHMS:
            raise ValueError(f"unsupported algorithm {algorithm!r}")
        check_rsa_bits(rsa_bits)
        self._db = db
        self._passphrase = _check_passphrase_value(passphrase)
        self._algorithm = algorithm
        self._rsa_bits = rsa_bits
        self._now = now
        self._cache: dict[str, SigningKey] = {}
        self._cache_lock = threading.Lock()

    @property
    def algorithm(self) -> str:
        """The algorithm of the keys this store creates."""
        return self._algorithm

    def ensure_signing_key(self) -> SigningKey:
        """Make sure a key can sign now, creating the first one if there is none.

        Safe when several replicas start at once: key creation is serialised
        and re-checks for a key another replica just made.

        Returns:
            The current signing key, decrypted.

        Raises:
            KeyStoreError: The current key cannot be decrypted (wrong
                passphrase?) or is corrupted.
            StorageError: The database is unavailable.
        """
        now = self._now()
        with self._db.transaction() as conn:
            row = _pick_current(_select_live(conn, now), now)
        if row is not None:
            return self._load(row["kid"])
        private_key = generate_private_key(self._algorithm, rsa_bits=self._rsa_bits)
        try:
            with self._db.transaction(lock=_LOCK_NAME) as conn:
                now = self._now()
                if _pick_current(_select_live(conn, now), now) is None:
                    self._check_passphrase(conn)
                    key = self._insert(conn, private_key, created_at=now, activates_at=now)
                    _LOGGER.info("created signing key %s (%s)", key.kid, key.algorithm)
        except exc.IntegrityError:
            _LOGGER.info("another replica created the signing key first")
        return self.current()

    def current(self) -> SigningKey:
        """Return the key that signs now.

        That is the newest activated key that is neither revoked, retired nor
        replaced by a newer activated key.

        Raises:
            KeyStoreError: There is no such key, or it cannot be decrypted.
            StorageError: The database is unavailable.
        """
        now = self._now()
        with self._db.transaction() as conn:
            row = _pick_current(_select_live(conn, now), now)
        if row is None:
            raise KeyStoreError("no signing key is active")
        return self._load(row["kid"])

    def published_jwks(self) -> list[dict[str, str]]:
        """Return the public JWKs that verifiers must know now.

        Every key that is not revoked and not retired, including *next* keys
        that do not sign yet: the current key first, then by activation time,
        newest first. A row whose public key is unreadable is left out (and
        logged), so the set never holds a key that is not stored.

        Raises:
            StorageError: The database is unavailable.
        """
        now = self._now()
        with self._db.transaction() as conn:
            rows = conn.execute(
                sa.select(*_METADATA_COLUMNS, signing_keys.c.public_jwk).where(_live(now))
            ).all()
        records: list[_Record] = [row._mapping for row in rows]
        current = _pick_current(records, now)
        ordered = sorted(records, key=lambda r: (r is current, *_activation_order(r)), reverse=True)
        result = []
        for record in ordered:
            jwk = _parse_public_jwk(record["public_jwk"], record["kid"], record["algorithm"])
            if jwk is None:
                _LOGGER.error(
                    "signing key %s has an unreadable public key; not published", record["kid"]
                )
                continue
            result.append(jwk)
        return result

    def rotate(self, *, activate_after: float = 0.0) -> KeyInfo:
        """Create a new key that starts signing ``activate_after`` seconds from now.

        The new key is published at once. The key it replaces gets
        ``deactivated_at`` = the new key's activation time and stays published
        (until a later retirement) so its tokens keep verifying.

        Args:
            activate_after: Delay before the new key signs; publish it ahead
                (e.g. 2 x JWKS max-age) so no verifier meets an unknown kid.

        Returns:
            The new key's metadata.

        Raises:
            InvalidRequest: ``activate_after`` is negative or not finite.
            KeyStoreError: The passphrase does not decrypt the stored keys.
            StorageError: The database is unavailable.
        """
        if not isinstance(activate_after, int | float) or not (
            math.isfinite(activate_after) and activate_after >= 0
        ):
            raise InvalidRequest("activate_after must be a finite number of seconds >= 0")
        private_key = generate_private_key(self._algorithm, rsa_bits=self._rsa_bits)
        with self._db.transaction(lock=_LOCK_NAME) as conn:
            self._check_passphrase(conn)
            now = self._now()
            activates_at = now + activate_after
            replaced = _pick_current(_select_live(conn, now), activates_at)
            if replaced is not None and (
                replaced["deactivated_at"] is None or replaced["deactivated_at"] > activates_at
            ):
                conn.execute(
                    signing_keys.update()
                    .where(signing_keys.c.kid == replaced["kid"])
                    .values(deactivated_at=activates_at)
                )
            key = self._insert(conn, private_key, created_at=now, activates_at=activates_at)
        _LOGGER.info(
            "rotated signing keys: new key %s activates at %.0f, replacing %s",
            key.kid,
            activates_at,
            "none" if replaced is None else replaced["kid"],
        )
        return self._describe(key.kid)

    def revoke(self, kid: str) -> KeyInfo:
        """Revoke a key: it leaves the published set at once and never signs again.

        If it was the current key, a new key is created and signs at once.
        Revoking a revoked key changes nothing.

        Returns:
            The revoked key's metadata.

        Raises:
            KeyStoreError: No key has that kid, or the passphrase does not
                decrypt the stored keys (when a replacement is needed).
            StorageError: The database is unavailable.
        """
        now = self._now()
        with self._db.transaction() as conn:
            current = _pick_current(_select_live(conn, now), now)
        replacement: PrivateKey | None = None
        if current is not None and current["kid"] == kid:
            replacement = generate_private_key(self._algorithm, rsa_bits=self._rsa_bits)
        new_kid = None
        with self._db.transaction(lock=_LOCK_NAME) as conn:
            row = _select_one(conn, kid)
            if row is None:
                raise KeyStoreError("unknown signing key")
            now = self._now()
            if row["revoked_at"] is None:
                current = _pick_current(_select_live(conn, now), now)
                was_current = current is not None and current["kid"] == kid
                if was_current:
                    self._check_passphrase(conn)
                    if replacement is None:
                        replacement = generate_private_key(self._algorithm, rsa_bits=self._rsa_bits)
                conn.execute(
                    signing_keys.update().where(signing_keys.c.kid == kid).values(revoked_at=now)
                )
                if was_current and replacement is not None:
                    new_kid = self._insert(conn, replacement, created_at=now, activates_at=now).kid
                _LOGGER.warning(
                    "revoked signing key %s%s",
                    kid,
                    "" if new_kid is None else f"; new current key {new_kid}",
                )
        with self._cache_lock:
            self._cache.pop(kid, None)
        return self._describe(kid)

    def list_keys(self) -> list[KeyInfo]:
        """Return every stored key's metadata with its state now, newest activation first.

        Raises:
            StorageError: The database is unavailable.
        """
        now = self._now()
        with self._db.transaction() as conn:
            rows = conn.execute(sa.select(*_METADATA_COLUMNS)).all()
        records = sorted((row._mapping for row in rows), key=_activation_order, reverse=True)
        current = _pick_current([r for r in records if _is_live(r, now)], now)
        current_kid = None if current is None else current["kid"]
        return [_key_info(record, now, current_kid=current_kid) for record in records]

    def rewrap(self, new_passphrase: bytes) -> int:
        """Re-encrypt every stored private key under ``new_passphrase``, all or nothing.

        Other replicas must be restarted with the new passphrase before they
        next need to decrypt a key.

        Returns:
            The number of keys re-encrypted.

        Raises:
            ValueError: The new passphrase is empty.
            KeyStoreError: A key does not decrypt with the current passphrase
                (nothing is changed then).
            StorageError: The database is unavailable.
        """
        new_passphrase = _check_passphrase_value(new_passphrase)
        encryption = serialization.BestAvailableEncryption(new_passphrase)
        with self._db.transaction(lock=_LOCK_NAME) as conn:
            rows = conn.execute(sa.select(signing_keys.c.kid, signing_keys.c.private_key)).all()
            for kid, pem in rows:
                private_key = self._decrypt(kid, pem)
                conn.execute(
                    signing_keys.update()
                    .where(signing_keys.c.kid == kid)
                    .values(private_key=_encrypt(private_key, encryption))
                )
        self._passphrase = new_passphrase
        _LOGGER.info("re-encrypted %d signing keys under a new passphrase", len(rows))
        return len(rows)

    def _describe(self, kid: str) -> KeyInfo:
        now = self._now()
        with self._db.transaction() as conn:
            row = _select_one(conn, kid)
            current = _pick_current(_select_live(conn, now), now)
        if row is None:
            raise KeyStoreError("unknown signing key")
        return _key_info(row, now, current_kid=None if current is None else current["kid"])

    def _load(self, kid: str) -> SigningKey:
        with self._cache_lock:
            cached = self._cache.get(kid)
        if cached is not None:
            return cached
        with self._db.transaction() as conn:
            row = conn.execute(
                sa.select(
                    signing_keys.c.algorithm,
                    signing_keys.c.private_key,
                    signing_keys.c.public_jwk,
                ).where(signing_keys.c.kid == kid)
            ).first()
        if row is None:
            raise KeyStoreError("no signing key is active")
        algorithm, pem, stored_jwk = row
        private_key = self._decrypt(kid, pem)
        try:
            jwk = public_jwk(private_key, algorithm)
        except ValueError as err:
            _LOGGER.error("signing key %s does not fit its algorithm", kid)
            raise KeyStoreError(_UNUSABLE) from err
        if isinstance(private_key, rsa.RSAPrivateKey) and private_key.key_size < 2048:
            _LOGGER.error("signing key %s is too small", kid)
            raise KeyStoreError(_UNUSABLE)
        # Sign only with a key whose public half is exactly what is published.
        if jwk["kid"] != kid or _parse_public_jwk(stored_jwk, kid, algorithm) != jwk:
            _LOGGER.error("signing key %s does not match its stored public key", kid)
            raise KeyStoreError(_UNUSABLE)
        key = SigningKey(
            kid=kid,
            algorithm=algorithm,
            private_key=private_key,
            public_jwk=types.MappingProxyType(jwk),
        )
        with self._cache_lock:
            self._cache[kid] = key
        return key

    def _decrypt(self, kid: str, pem: bytes) -> PrivateKey:
        try:
            private_key = serialization.load_pem_private_key(pem, password=self._passphrase)
        except (ValueError, TypeError, UnsupportedAlgorithm) as err:
            _LOGGER.error("cannot decrypt signing key %s: wrong passphrase or corrupted row", kid)
            raise KeyStoreError(_WRONG_PASSPHRASE) from err
        if not isinstance(private_key, _PRIVATE_TYPES):
            _LOGGER.error("signing key %s has an unsupported key type", kid)
            raise KeyStoreError(_UNUSABLE)
        return private_key

    def _check_passphrase(self, conn: sa.Connection) -> None:
        # Before adding a key, make sure this store's passphrase is the one the
        # stored keys use: a replica started with a wrong one must not add a
        # current key that the others cannot decrypt.
        rows = conn.execute(
            sa.select(signing_keys.c.kid, signing_keys.c.private_key)
            .order_by(signing_keys.c.created_at.desc())
            .limit(_PASSPHRASE_PROBES)
        ).all()
        error: KeyStoreError | None = None
        for kid, pem in rows:
            try:
                self._decrypt(kid, pem)
            except KeyStoreError as err:
                error = err
            else:
                return
        if error is not None:
            raise error

    def _insert(
        self,
        conn: sa.Connection,
        private_key: PrivateKey,
        *,
        created_at: float,
        activates_at: float,
    ) -> SigningKey:
        jwk = public_jwk(private_key, self._algorithm)
        conn.execute(
            signing_keys.insert().values(
                kid=jwk["kid"],
                algorithm=self._algorithm,
                private_key=_encrypt(
                    private_key, serialization.BestAvailableEncryption(self._passphrase)
                ),
                public_jwk=json.dumps(jwk, separators=(",", ":")),
                created_at=created_at,
                activates_at=activates_at,
                deactivated_at=None,
                retires_at=None,
                revoked_at=None,
            )
        )
        key = SigningKey(
            kid=jwk["kid"],
            algorithm=self._algorithm,
            private_key=private_key,
            public_jwk=types.MappingProxyType(jwk),
        )
        # Cached before commit: harmless, as only kids read back from the
        # database are ever looked up.
        with self._cache_lock:
            self._cache[key.kid] = key
        return key


def _check_passphrase_value(passphrase: bytes) -> bytes:
    if not isinstance(passphrase, bytes) or not passphrase:
        raise ValueError("the signing key passphrase must be non-empty bytes")
    return passphrase


def _encrypt(
    private_key: PrivateKey, encryption: serialization.KeySerializationEncryption
) -> bytes:
    return private_key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, encryption
    )


def _live(now: float) -> sa.ColumnElement[bool]:
    return sa.and_(
        signing_keys.c.revoked_at.is_(None),
        sa.or_(signing_keys.c.retires_at.is_(None), signing_keys.c.retires_at > now),
    )


def _is_live(record: _Record, now: float) -> bool:
    return record["revoked_at"] is None and (
        record["retires_at"] is None or record["retires_at"] > now
    )


def _select_live(conn: sa.Connection, now: float) -> list[_Record]:
    rows = conn.execute(sa.select(*_METADATA_COLUMNS).where(_live(now))).all()
    return [row._mapping for row in rows]


def _select_one(conn: sa.Connection, kid: str) -> _Record | None:
    row = conn.execute(sa.select(*_METADATA_COLUMNS).where(signing_keys.c.kid == kid)).first()
    return None if row is None else row._mapping


def _activation_order(record: _Record) -> tuple[float, float, str]:
    return (record["activates_at"], record["created_at"], record["kid"])


def _pick_current(records: Iterable[_Record], at: float) -> _Record | None:
    """The key that signs at ``at`` among live (not revoked, not retired) keys.

    The newest activated key wins, but one whose ``deactivated_at`` has passed
    yields to any that has not: a rotation at the same clock tick as the key it
    replaces must still take over.
    """
    candidates: Sequence[_Record] = [
        r for r in records if r["activates_at"] <= at and _is_live(r, at)
    ]
    if not candidates:
        return None
    return max(
        candidates,
        key=lambda r: (
            r["deactivated_at"] is None or r["deactivated_at"] > at,
            *_activation_order(r),
        ),
    )


def _key_info(record: _Record, now: float, *, current_kid: str | None = None) -> KeyInfo:
    if record["revoked_at"] is not None:
        state = "revoked"
    elif record["retires_at"] is not None and record["retires_at"] <= now:
        state = "retired"
    elif record["activates_at"] > now:
        state = "next"
    elif record["kid"] == current_kid:
        state = "current"
    else:
        state = "previous"
    return KeyInfo(
        kid=record["kid"],
        algorithm=record["algorithm"],
        state=state,
        created_at=record["created_at"],
        activates_at=record["activates_at"],
        deactivated_at=record["deactivated_at"],
        retires_at=record["retires_at"],
        revoked_at=record["revoked_at"],
    )


def _parse_public_jwk(text: str, kid: str, algorithm: str) -> dict[str, str] | None:
    try:
        jwk = json.loads(text)
    except ValueError:
        return None
    if (
        not isinstance(jwk, dict)
        or not all(isinstance(k, str) and isinstance(v, str) for k, v in jwk.items())
        or jwk.get("kid") != kid
        or jwk.get("alg") != algorithm
    ):
        return None
    try:
        thumbprint = jwk_thumbprint(jwk)
    except ValueError:
        return None
    return jwk if thumbprint == kid else None
