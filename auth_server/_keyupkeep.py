"""Key changes besides signing: the operator's revoke and rewrap, the scheduler's maintain pass.

Private to :mod:`auth_server.keys`; :class:`SigningKeyStore` documents each
(:meth:`~SigningKeyStore.revoke`, :meth:`~SigningKeyStore.maintain`,
:meth:`~SigningKeyStore.rewrap`) and delegates here. Each is one or two
transactions under the replicas' lock, run through :class:`KeyTransactions`.
"""

from __future__ import annotations

import logging
import threading

import sqlalchemy as sa

from auth_server import _keyrows as keyrows
from auth_server import deployment_secrets
from auth_server._envelope import KeyEncryption
from auth_server._keychanges import MaintenanceReport
from auth_server._keyrows import NewKey
from auth_server._keytxn import LOCK_NAME, KeyTransactions, announce
from auth_server.audit import audit_event
from auth_server.errors import KeyStoreError
from auth_server.idps import rewrap_credentials
from auth_server.lifecycle import (
    KeyRecord,
    is_live,
    needs_retirement,
    pick_current,
    rotation_due,
    rotation_reason,
)
from auth_server.storage import signing_keys

_LOGGER = logging.getLogger(__name__)


class KeyUpkeep:
    """Revocation, the maintenance pass and re-encryption for one store; thread-safe."""

    def __init__(self, tx: KeyTransactions) -> None:
        self._tx = tx
        self._lock = threading.Lock()  # guards the one below
        self._observed_current: str | None = None

    def revoke(self, kid: str) -> None:
        """Revoke ``kid`` and replace it if it signed (see :meth:`SigningKeyStore.revoke`)."""
        # Everything slow (decrypting, generating) happens before the locked
        # transaction, so the revocation commits moments after it is stamped.
        now = self._tx.now()
        with self._tx.db.transaction() as conn:
            live = keyrows.select_live(conn, now)
            current = pick_current(live, now)
            pending = [r for r in live if r.activates_at > now]
            passphrase_ok = self._tx.probe(conn) is not False
        replacement: NewKey | None = None
        # Decrypting the next keys now also caches them for the promotion below.
        usable_next = [r for r in pending if self._tx.material.is_usable(r.kid)]
        if current is not None and current.kid == kid and passphrase_ok and not usable_next:
            replacement = self._tx.generate()
        with self._tx.db.transaction(lock=LOCK_NAME) as conn:
            writer = self._tx.writer(conn)
            target = keyrows.select_one(conn, kid)
            if target is None:
                raise KeyStoreError("unknown signing key")
            if target.revoked_at is None:
                current = pick_current(writer.live(), writer.now)
                was_current = current is not None and current.kid == kid
                # The revocation itself never depends on the passphrase: it is the
                # emergency brake, and the key may be revoked for being corrupted.
                # A replacement does: it must be one the other replicas can decrypt.
                replace = was_current and passphrase_ok
                writer.revoke(target)
                successor = None
                if replace:
                    successor = writer.promote()
                    if successor is None:
                        replacement = replacement or self._tx.generate()
                        successor = writer.rotate(replacement, writer.now, "revocation")
                elif was_current:
                    _LOGGER.error(
                        "revoked the current key without a replacement: this passphrase"
                        " decrypts no stored key; a server started with the right one"
                        " creates the next key within a second"
                    )
                writer.changes.events.append(
                    (
                        "key.revoked",
                        {"kid": kid, "algorithm": target.algorithm, "replacement": successor},
                    )
                )
                _LOGGER.warning(
                    "revoked signing key %s%s",
                    kid,
                    "" if successor is None else f"; key {successor} signs now",
                )
                announce(writer)
        self._tx.committed(writer.changes, made=[] if replacement is None else [replacement])

    def maintain(self) -> MaintenanceReport:
        """Apply the lifecycle policy now (see :meth:`SigningKeyStore.maintain`)."""
        now = self._tx.now()
        with self._tx.db.transaction() as conn:
            records = keyrows.select_all(conn)
        activated = self._observe_current(records, now)
        unusable = self._unusable_pending(records, now)
        due = rotation_due(records, now, self._tx.lifecycle, self._tx.algorithm)
        if (
            due is None
            and not unusable
            and not any(needs_retirement(r, now, self._tx.lifecycle) for r in records)
            and not any(keyrows.is_spent(r, now) for r in records)
        ):
            return MaintenanceReport(activated=activated)
        new = self._tx.generate() if due is not None else None
        with (
            self._tx.discarding_on_error(lambda: new),
            self._tx.db.transaction(lock=LOCK_NAME) as conn,
        ):
            writer = self._tx.writer(conn)
            now = writer.now
            if unusable and self._tx.probe(conn, exclude=unusable):
                for record in writer.live():
                    if record.kid in unusable:
                        writer.withdraw(record, "unusable")
            elif unusable:
                # Not a corrupted row: this server cannot decrypt any key. Withdraw
                # nothing (the keys are fine for the others) and say so.
                raise KeyStoreError(keyrows.WRONG_PASSPHRASE)
            records = keyrows.select_all(conn)
            due = rotation_due(records, now, self._tx.lifecycle, self._tx.algorithm)
            if due is not None:
                self._tx.check_new_keys(conn)
                reason = rotation_reason(records, now, self._tx.algorithm)
                new = new or self._tx.generate()
                writer.rotate(new, due, reason)
                records = keyrows.select_all(conn)
            for record in records:
                retires_at = needs_retirement(record, now, self._tx.lifecycle)
                if retires_at is not None:
                    writer.extend_retirement(record.kid, retires_at)
            for record in keyrows.select_all(conn):
                if keyrows.is_spent(record, now):
                    writer.destroy(record)
            announce(writer)
        self._tx.committed(writer.changes, made=[] if new is None else [new])
        return writer.changes.report(activated)

    def rewrap(self, new_passphrase: bytes) -> int:
        """Re-encrypt every stored private key (see :meth:`SigningKeyStore.rewrap`)."""
        old = self._tx.material.sealer
        new = KeyEncryption(new_passphrase, old.kdf)
        new.prepare()  # the slow derivation, before the lock
        with self._tx.db.transaction(lock=LOCK_NAME) as conn:
            rows = conn.execute(
                sa.select(signing_keys.c.kid, signing_keys.c.private_key).where(
                    keyrows.HAS_PRIVATE_KEY
                )
            ).all()
            # A token's keys are not encrypted with the passphrase.
            found = [(kid, stored) for kid, stored in rows if self._tx.database.holds(stored)]
            legacy = sum(keyrows.is_legacy(stored) for _, stored in found)
            for kid, stored in found:
                keyrows.update(conn, kid, private_key=keyrows.reencrypt(kid, stored, old, new))
            deployment_secrets.rewrap_all(conn, old, new)
            rewrap_credentials(conn, old, new)  # upstream identity providers' credentials
        self._tx.material.rewrapped(new)
        _LOGGER.info(
            "re-encrypted %d signing keys (%d from the legacy format) under a new passphrase",
            len(found),
            legacy,
        )
        audit_event("key.rewrapped", count=len(found))
        return len(found)

    def _observe_current(self, records: list[KeyRecord], now: float) -> str | None:
        current = pick_current(records, now)
        kid = None if current is None else current.kid
        with self._lock:
            before, self._observed_current = self._observed_current, kid
        if kid is None or before is None or kid == before:
            return None
        assert current is not None
        audit_event("key.activated", kid=kid, algorithm=current.algorithm, replaces=before)
        _LOGGER.info("signing key %s is current now, replacing %s", kid, before)
        return kid

    def _unusable_pending(self, records: list[KeyRecord], now: float) -> frozenset[str]:
        # Decrypt next keys ahead of time: a corrupted one is found before it
        # should sign, and activation needs no decryption on the login path.
        bad = set()
        known_bad = self._tx.material.unusable()
        for record in records:
            if is_live(record, now) and record.activates_at > now:
                if record.kid in known_bad:  # already logged; no retry every tick
                    bad.add(record.kid)
                    continue
                if not self._tx.material.is_usable(record.kid):
                    bad.add(record.kid)
        return frozenset(bad)
