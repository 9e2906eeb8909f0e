"""The private keys this process holds decrypted, and the ones it found it cannot use.

Private to :mod:`auth_server.keys`. The store decides *which* key signs (from
:class:`auth_server.lifecycle.KeyRecord` rows); this module turns a ``kid`` into
a usable :class:`SigningKey`: it reads the encrypted row, decrypts it with the
passphrase (:mod:`auth_server._envelope`) and checks it against its published
JWK, once per ``kid``. It is the one place that touches private key material
at rest. A row whose key is held by a PKCS#11 token (``--key-store pkcs11``) is
loaded by that custodian instead (:mod:`auth_server.custody`): a handle to the
token object, never key material.
"""

from __future__ import annotations

import threading
from collections.abc import Iterable

import sqlalchemy as sa

from auth_server import _keyrows as keyrows
from auth_server._envelope import KeyEncryption
from auth_server._keyrows import SigningKey
from auth_server.custody import KeyCustody
from auth_server.errors import KeyStoreError
from auth_server.kdf import KdfParameters
from auth_server.storage import Database, signing_keys


class DecryptedKeys:
    """Decrypted signing keys by ``kid``, loaded on first use; thread-safe.

    A ``kid`` that fails to load is remembered as unusable (until it loads, or
    the passphrase changes), so the store can leave it out of the published set
    and the scheduler does not retry it every tick.
    """

    def __init__(
        self,
        db: Database,
        passphrase: bytes,
        *,
        kdf: KdfParameters | None = None,
        token: KeyCustody | None = None,
    ) -> None:
        """Create the cache (no database access yet).

        Args:
            db: The database.
            passphrase: Opens the stored keys.
            kdf: The KDF parameters of keys sealed from now on (the
                :class:`KdfParameters` defaults if not given); stored keys open
                with their own.
            token: Loads the rows whose key a token holds (``--key-store pkcs11``).

        Raises:
            ValueError: Empty passphrase.
        """
        self._db = db
        self._token = token
        self._sealer = KeyEncryption(passphrase, kdf)
        self._keys: dict[str, SigningKey] = {}
        self._unusable: set[str] = set()
        self._lock = threading.Lock()
        # One load at a time: opening a sealed key derives its key-encryption key
        # (argon2id, 64 MiB by default), and after a rotation every thread that
        # signs would otherwise derive it at once.
        self._loading = threading.Lock()

    @property
    def sealer(self) -> KeyEncryption:
        """Encrypts and decrypts the private keys at rest."""
        return self._sealer

    def load(self, kid: str) -> SigningKey:
        """The key ``kid``, decrypted and checked; from memory after the first time.

        Raises:
            KeyStoreError: No such key, or its row cannot be used to sign.
            KeyStoreUnavailable: The token holding it does not answer.
            StorageError: The database is unavailable.
        """
        with self._lock:
            cached = self._keys.get(kid)
        if cached is not None:
            return cached
        with self._loading:
            with self._lock:
                cached = self._keys.get(kid)
            if cached is not None:
                return cached  # another thread loaded it while this one waited
            return self._load(kid)

    def _load(self, kid: str) -> SigningKey:
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
        try:
            if self._token is not None and self._token.holds(row.private_key):
                # KeyStoreUnavailable passes through: a token that does not answer
                # says nothing about the key, which must not be marked unusable.
                key = self._token.load(kid, *row)
            else:
                key = keyrows.signing_key_from_row(kid, *row, self._sealer)
        except KeyStoreError:
            with self._lock:
                self._unusable.add(kid)
            raise
        with self._lock:
            self._keys[kid] = key
            self._unusable.discard(kid)
        return key

    def is_usable(self, kid: str) -> bool:
        """Whether ``kid`` loads (it is cached if it does)."""
        try:
            self.load(kid)
        except KeyStoreError:
            return False
        return True

    def unusable(self) -> frozenset[str]:
        """The kids that failed to load since they last loaded (or the passphrase changed)."""
        with self._lock:
            return frozenset(self._unusable)

    def committed(self, inserted: Iterable[SigningKey], gone: Iterable[str]) -> None:
        """Apply a committed change: keep the keys just made, drop destroyed ones."""
        with self._lock:
            for key in inserted:
                self._keys[key.kid] = key
            for kid in gone:
                self._keys.pop(kid, None)

    def rewrapped(self, sealer: KeyEncryption) -> None:
        """The stored keys are now encrypted by ``sealer``: use it from now on."""
        with self._lock:
            self._sealer = sealer
            # A key may have been unusable only because of the old passphrase.
            self._unusable.clear()
