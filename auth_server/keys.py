"""Signing keys: kept encrypted in the database or in a PKCS#11 token, rotated, revoked, published.

A key's life: *next* (published, not yet signing) -> *current* (signs) ->
*previous* (a newer key signs; still published so its tokens verify) ->
*retired* (``retires_at`` passed: no longer published, private key destroyed).
*Revoked* keys leave the published set at once, whatever their state, and
their private key is destroyed. Every transition time is stored, so replicas
on one database compute the same states and publish the same set; the policy
that sets those times is :class:`auth_server.lifecycle.KeyLifecycle`. Where
the private keys live and how they sign is the custodian's business
(:mod:`auth_server.custody`).
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass

import sqlalchemy as sa
from sqlalchemy import exc

from auth_server import _keyrows as keyrows
from auth_server._keychanges import Changes, MaintenanceReport
from auth_server._keymaterial import DecryptedKeys
from auth_server._keyrows import KeyInfo, SigningKey
from auth_server._keytxn import LOCK_NAME, KeyTransactions, announce
from auth_server._keyupkeep import KeyUpkeep
from auth_server.custody import DatabaseCustody, KeyCustody
from auth_server.errors import InvalidRequest, KeyStoreError
from auth_server.jwk import ALGORITHMS, check_rsa_bits
from auth_server.kdf import KdfParameters
from auth_server.lifecycle import KeyLifecycle, activation_order, next_change_at, pick_current
from auth_server.storage import Database

__all__ = ["KeyInfo", "MaintenanceReport", "PublishedKeys", "SigningKey", "SigningKeyStore"]

_LOGGER = logging.getLogger(__name__)


@dataclass(frozen=True, kw_only=True)
class PublishedKeys:
    """The public keys verifiers must know now, and when that set next changes.

    Attributes:
        keys: Public JWKs, the current key first.
        next_change_at: The next scheduled time a key joins or leaves the set
            (epoch seconds), or ``None`` if none is scheduled.
    """

    keys: tuple[dict[str, str], ...]
    next_change_at: float | None


class SigningKeyStore:
    """The token authority's signing keys, shared through the database; thread-safe.

    Every method reads the database, so several stores (replicas) on one
    database agree on the current key and the published set. Loaded keys
    (decrypted, or handles to token objects) are cached in memory by ``kid``.
    """

    def __init__(
        self,
        db: Database,
        passphrase: bytes,
        *,
        algorithm: str = "RS256",
        rsa_bits: int = 2048,
        now: Callable[[], float] = time.time,
        lifecycle: KeyLifecycle | None = None,
        kdf: KdfParameters | None = None,
        custody: KeyCustody | None = None,
    ) -> None:
        """Create the store (no database access yet).

        Args:
            db: The database (schema already created).
            passphrase: Encrypts the private keys at rest. Must not be empty.
            algorithm: The algorithm of keys this store creates; when the newest
                stored key uses another, :meth:`maintain` migrates to it.
            rsa_bits: RSA modulus size for RS256/PS256 keys it creates.
            now: Clock, epoch seconds.
            lifecycle: When keys are pre-published, rotated and retired; the
                defaults of :class:`KeyLifecycle` if not given.
            kdf: The cost of deriving the key-encryption key for keys sealed from
                now on (the :class:`KdfParameters` defaults if not given).
            custody: Makes and holds new keys; the database (sealed with
                ``passphrase``) if not given. Keys already stored in the database
                stay readable with ``passphrase`` whatever the custodian.

        Raises:
            ValueError: Empty passphrase, unknown algorithm or bad RSA size.
        """
        if algorithm not in ALGORITHMS:
            raise ValueError(f"unsupported algorithm {algorithm!r}")
        check_rsa_bits(rsa_bits)
        self._db = db
        token = None if custody is None or custody.name == "db" else custody
        self._material = DecryptedKeys(db, passphrase, kdf=kdf, token=token)
        self._custody: KeyCustody = custody or DatabaseCustody(lambda: self._material.sealer)
        self._algorithm = algorithm
        self._rsa_bits = rsa_bits
        self._now = now
        self._lifecycle = lifecycle or KeyLifecycle()
        self._tx = KeyTransactions(
            db,
            self._material,
            self._custody,
            algorithm=algorithm,
            rsa_bits=rsa_bits,
            now=now,
            lifecycle=self._lifecycle,
        )
        self._upkeep = KeyUpkeep(self._tx)

    @property
    def algorithm(self) -> str:
        """The algorithm of the keys this store creates."""
        return self._algorithm

    @property
    def key_store(self) -> str:
        """Where new keys are kept: ``"db"`` or ``"pkcs11"``."""
        return self._custody.name

    def check_ready(self) -> None:
        """Raise if the key store is known unable to sign now (a PKCS#11 token is down).

        Callers check before changing state that only a signed token completes (a
        refresh token spent, a session opened), so a token outage does not spend a
        client's refresh token without an answer.

        Raises:
            KeyStoreUnavailable: The token does not answer.
        """
        self._custody.check_ready()

    def close(self) -> None:
        """Release the custodian's resources (PKCS#11 sessions); the store is unusable after."""
        self._custody.close()

    @property
    def lifecycle(self) -> KeyLifecycle:
        """The policy that sets transition times."""
        return self._lifecycle

    def subscribe(self, callback: Callable[[], None]) -> None:
        """Call ``callback()`` after this store commits a key change (on the changing thread).

        Changes made by other processes are not seen here: poll for those.
        """
        self._tx.subscribe(callback)

    # -- signing ---------------------------------------------------------------------

    def ensure_signing_key(self) -> SigningKey:
        """Make sure a key can sign now, creating the first one if there is none.

        Safe when several replicas start at once: key creation is serialised
        and re-checks for a key another replica just made.

        Returns:
            The current signing key, decrypted.

        Raises:
            KeyStoreError: The current key cannot be decrypted (wrong
                passphrase?) or is corrupted.
            KeyStoreUnavailable: The PKCS#11 token does not answer.
            StorageError: The database is unavailable.
        """
        now = self._now()
        with self._db.transaction() as conn:
            current = pick_current(keyrows.select_live(conn, now), now)
        if current is not None:
            return self._material.load(current.kid)
        new = self._tx.generate()
        changes = Changes()
        try:
            with (
                self._tx.discarding_on_error(lambda: new),
                self._db.transaction(lock=LOCK_NAME) as conn,
            ):
                writer = self._tx.writer(conn)
                if pick_current(writer.live(), writer.now) is None:
                    self._tx.check_new_keys(conn)
                    writer.rotate(new, writer.now, "first")
                    changes = writer.changes
                    announce(writer)
        except exc.IntegrityError:
            _LOGGER.info("another replica created the signing key first")
            changes = Changes()
        self._tx.committed(changes, made=[new])
        return self.current()

    def current(self, *, after_changes: bool = False) -> SigningKey:
        """Return the key that signs now.

        That is the newest activated key that is neither revoked, retired nor
        replaced by a newer activated key.

        Args:
            after_changes: Read under the key-change lock, after any change being
                committed right now: for the retry when the current key failed to sign
                because another replica is revoking it (its token object is destroyed
                inside the revoking transaction, just before the commit).

        Raises:
            KeyStoreError: There is no such key, or it cannot be decrypted.
            KeyStoreUnavailable: The PKCS#11 token holding it does not answer.
            StorageError: The database is unavailable.
        """
        with self._db.transaction(lock=LOCK_NAME if after_changes else None) as conn:
            kid = self.current_kid(conn)
        return self.load(kid)

    def current_kid(self, conn: sa.Connection) -> str:
        """The kid of the key that signs now, read in the caller's transaction.

        With :meth:`load` after the transaction: what :meth:`current` does, for a
        caller that reads other rows in the same transaction (a refresh).

        Raises:
            KeyStoreError: No key signs now.
        """
        now = self._now()
        current = pick_current(keyrows.select_live(conn, now), now)
        if current is None:
            raise KeyStoreError("no signing key is active")
        return current.kid

    def load(self, kid: str) -> SigningKey:
        """The signing key ``kid``, from memory once loaded (see :meth:`current_kid`).

        Raises:
            KeyStoreError: It cannot be decrypted.
            KeyStoreUnavailable: The PKCS#11 token holding it does not answer.
        """
        return self._material.load(kid)

    # -- publishing ------------------------------------------------------------------

    def published_jwks(self) -> list[dict[str, str]]:
        """Return the public JWKs that verifiers must know now (see :meth:`published_set`)."""
        return [dict(jwk) for jwk in self.published_set().keys]

    def published_set(self) -> PublishedKeys:
        """Return the public keys that verifiers must know now.

        Every key that is not revoked and not retired, including *next* keys
        that do not sign yet: the current key first, then by activation time,
        newest first. A row whose public key is unreadable is left out (and
        logged), and so is a *next* key this store found it cannot decrypt: the
        set never holds a key the server could not use.

        Raises:
            StorageError: The database is unavailable.
        """
        now = self._now()
        with self._db.transaction() as conn:
            found = keyrows.select_published(conn, now)
        records = [record for record, _ in found]
        current = pick_current(records, now)
        ordered = sorted(
            found, key=lambda pair: (pair[0] is current, *activation_order(pair[0])), reverse=True
        )
        unusable = self._material.unusable()
        keys = []
        for record, stored_jwk in ordered:
            kid = record.kid
            if record.activates_at > now and kid in unusable:
                continue
            jwk = keyrows.parse_public_jwk(stored_jwk, kid, record.algorithm)
            if jwk is None:
                _LOGGER.error("signing key %s has an unreadable public key; not published", kid)
                continue
            keys.append(jwk)
        return PublishedKeys(
            keys=tuple(keys), next_change_at=next_change_at(records, now, self._lifecycle)
        )

    # -- changes -----------------------------------------------------------------------

    def rotate(self, *, activate_after: float = 0.0) -> KeyInfo:
        """Create a new key that starts signing ``activate_after`` seconds from now.

        The new key is published at once. The key it replaces gets
        ``deactivated_at`` = the new key's activation time (and ``retires_at``
        ``retire_after`` later) and stays published so its tokens keep
        verifying. A *next* key that would have activated later is withdrawn.
        If no key signs now, the new key signs at once.

        Args:
            activate_after: Delay before the new key signs; publish it ahead
                (2 x JWKS max-age) so no verifier meets an unknown kid.

        Returns:
            The new key's metadata.

        Raises:
            InvalidRequest: ``activate_after`` is negative or not finite.
            KeyStoreError: The passphrase does not decrypt the stored keys.
            StorageError: The database is unavailable.
        """
        if (
            isinstance(activate_after, bool)
            or not isinstance(activate_after, int | float)
            or not (math.isfinite(activate_after) and activate_after >= 0)
        ):
            raise InvalidRequest("activate_after must be a finite number of seconds >= 0")
        new = self._tx.generate()
        with (
            self._tx.discarding_on_error(lambda: new),
            self._db.transaction(lock=LOCK_NAME) as conn,
        ):
            self._tx.check_new_keys(conn)
            writer = self._tx.writer(conn)
            kid = writer.rotate(new, writer.now + activate_after, "manual")
            announce(writer)
        self._tx.committed(writer.changes)
        return self._tx.describe(kid)

    def revoke(self, kid: str) -> KeyInfo:
        """Revoke a key: it leaves the published set at once, never signs again, is destroyed.

        If it was the current key, the earliest *next* key (already published,
        so verifiers know it) signs at once; if there is none, a new key does.
        Revoking a revoked key changes nothing. With a passphrase that decrypts
        no stored key, the key is still revoked, but no replacement is made here
        (the servers' scheduler makes one).

        Returns:
            The revoked key's metadata.

        Raises:
            KeyStoreError: No key has that kid.
            StorageError: The database is unavailable.
        """
        self._upkeep.revoke(kid)
        return self._tx.describe(kid)

    def maintain(self) -> MaintenanceReport:
        """Apply the lifecycle policy now; what the server's scheduler runs every tick.

        Creates the next key when the schedule (or an ``--algorithm`` change)
        calls for one, stores when replaced keys retire, destroys the private
        keys of retired and revoked keys, and withdraws a *next* key whose row
        cannot be used. Reads once without a lock; only when something is due
        does it take the replicas' shared lock and re-check, so replicas never
        both act.

        Raises:
            KeyStoreError: The passphrase does not decrypt the stored keys
                (when a key must be created, or a next key does not decrypt).
            StorageError: The database is unavailable.
        """
        return self._upkeep.maintain()

    def list_keys(self) -> list[KeyInfo]:
        """Return every stored key's metadata with its state now, newest activation first.

        Raises:
            StorageError: The database is unavailable.
        """
        now = self._now()
        with self._db.transaction() as conn:
            records = keyrows.select_all(conn)
        records.sort(key=activation_order, reverse=True)
        current = pick_current(records, now)
        current_kid = None if current is None else current.kid
        return [keyrows.key_info(record, now, current_kid=current_kid) for record in records]

    def rewrap(self, new_passphrase: bytes) -> int:
        """Re-encrypt every stored private key under ``new_passphrase``, all or nothing.

        Each key moves to the envelope format with this store's KDF parameters
        and a fresh salt: a legacy PKCS#8 row is decrypted and sealed anew, an
        envelope row only has its data key re-wrapped. The deployment secrets
        (:mod:`auth_server.deployment_secrets`) move with them. Giving the
        current passphrase again migrates the rows without changing it.

        Running servers keep signing with the keys they hold in memory; restart
        them with the new passphrase before they next need to decrypt or add a key.

        Returns:
            The number of keys re-encrypted (destroyed keys are skipped).

        Raises:
            ValueError: The new passphrase is empty.
            KeyStoreError: A key does not decrypt with the current passphrase
                (nothing is changed then).
            StorageError: The database is unavailable.
        """
        return self._upkeep.rewrap(new_passphrase)
