"""What every signing-key change shares: key made first, one locked transaction, after-commit work.

Private to :mod:`auth_server.keys`. :class:`KeyTransactions` holds the store's
database, custodian and loaded keys, and gives each change (rotate, revoke,
maintain, rewrap) the same steps: make the key outside the lock (slow), run the
rows through a :class:`KeyWriter` under the replicas' lock, discard a token key
that was not stored, then update the key cache, audit and call the listeners.
"""

from __future__ import annotations

import contextlib
import logging
import threading
from collections.abc import Callable, Iterator, Sequence

import sqlalchemy as sa

from auth_server import _keyrows as keyrows
from auth_server import notifications
from auth_server._keychanges import Changes, KeyWriter
from auth_server._keymaterial import DecryptedKeys
from auth_server._keyrows import KeyInfo, NewKey
from auth_server.audit import audit_event
from auth_server.custody import DatabaseCustody, KeyCustody
from auth_server.errors import KeyStoreError, KeyStoreUnavailable
from auth_server.lifecycle import KeyLifecycle, pick_current
from auth_server.storage import Database, signing_keys

_LOGGER = logging.getLogger(__name__)

# Key changes run one at a time across replicas (see Database.transaction).
LOCK_NAME = "ssot-auth.signing_keys"


class KeyTransactions:
    """The shared steps of a key change for one :class:`SigningKeyStore`; thread-safe."""

    def __init__(
        self,
        db: Database,
        material: DecryptedKeys,
        custody: KeyCustody,
        *,
        algorithm: str,
        rsa_bits: int,
        now: Callable[[], float],
        lifecycle: KeyLifecycle,
    ) -> None:
        self.db = db
        self.material = material
        self.custody = custody
        self.algorithm = algorithm
        self.rsa_bits = rsa_bits
        self.now = now
        self.lifecycle = lifecycle
        self._lock = threading.Lock()  # guards the listeners
        self._listeners: list[Callable[[], None]] = []

    def subscribe(self, callback: Callable[[], None]) -> None:
        """Call ``callback()`` after a committed key change (see ``SigningKeyStore.subscribe``)."""
        with self._lock:
            self._listeners.append(callback)

    def writer(self, conn: sa.Connection) -> KeyWriter:
        """A row writer for ``conn``, a transaction holding :data:`LOCK_NAME`."""
        return KeyWriter(
            conn,
            now=self.now(),
            lifecycle=self.lifecycle,
            usable=self.material.is_usable,
            destroy=lambda kid: self._destroy_outside_row(conn, kid),
        )

    def _destroy_outside_row(self, conn: sa.Connection, kid: str) -> bool:
        stored = conn.execute(
            sa.select(signing_keys.c.private_key).where(signing_keys.c.kid == kid)
        ).scalar()
        if not stored or self.database.holds(stored):
            return True  # emptying the row destroys it
        try:
            self.custody.destroy(stored)
        except KeyStoreUnavailable:
            _LOGGER.warning(
                "cannot destroy the token object of signing key %s now (token unavailable);"
                " retrying at the next maintenance pass",
                kid,
            )
            return False
        return True

    @contextlib.contextmanager
    def discarding_on_error(self, new: Callable[[], NewKey | None]) -> Iterator[None]:
        """Discard the key ``new()`` returns if the block raises."""
        # A token key made for a change that did not commit must not stay in the token.
        try:
            yield
        except BaseException:
            made = new()
            if made is not None:
                self.custody.discard(made)
            raise

    @property
    def database(self) -> DatabaseCustody:
        """The database custodian, whatever makes new keys (it reads the stored ones)."""
        return DatabaseCustody(lambda: self.material.sealer)

    def check_new_keys(self, conn: sa.Connection) -> None:
        """Raise KeyStoreError if a key made now could not be decrypted by the other replicas."""
        # A database key must be one the other replicas can decrypt; a token key
        # needs no passphrase (the token checked the PIN when the key was made).
        if self.custody.name == "db":
            keyrows.check_passphrase(conn, self.material.sealer)

    def probe(self, conn: sa.Connection, *, exclude: frozenset[str] = frozenset()) -> bool | None:
        """Whether the passphrase decrypts a stored key (always true for a token custodian)."""
        if self.custody.name == "db":
            return keyrows.probe_passphrase(conn, self.material.sealer, exclude=exclude)
        return True

    def committed(self, changes: Changes, *, made: Sequence[NewKey] = ()) -> None:
        """After the commit: discard unused keys, update the cache, audit, call the listeners."""
        stored = {key.kid for key in changes.inserted}
        for new in made:
            if new.key.kid not in stored:  # made, then not needed (another replica was first)
                self.custody.discard(new)
        self.material.committed(changes.inserted, changes.gone)
        for event, fields in changes.events:
            audit_event(event, **fields)
        if not changes.changed:
            return
        with self._lock:
            listeners = list(self._listeners)
        for listener in listeners:
            try:
                listener()
            except Exception:  # one bad listener must not undo a committed change
                _LOGGER.exception("key change listener failed")

    def describe(self, kid: str) -> KeyInfo:
        """The metadata of key ``kid`` with its state now."""
        now = self.now()
        with self.db.transaction() as conn:
            record = keyrows.select_one(conn, kid)
            current = pick_current(keyrows.select_live(conn, now), now)
        if record is None:
            raise KeyStoreError("unknown signing key")
        return keyrows.key_info(record, now, current_kid=None if current is None else current.kid)

    def generate(self) -> NewKey:
        """Make a new key with the store's algorithm, before the locked transaction."""
        # Slow work before the locked transaction (DatabaseCustody: the KEK that seals it too).
        return self.custody.generate(self.algorithm, rsa_bits=self.rsa_bits)


def announce(writer: KeyWriter) -> None:
    """Inside the locked transaction: tell every replica to re-read the key set after commit."""
    # Other replicas (and this one, beside its own listener call) re-read the
    # key set once this transaction commits (auth_server.notifications).
    if writer.changes.changed:
        notifications.notify_change(writer.conn, notifications.KEYS)
