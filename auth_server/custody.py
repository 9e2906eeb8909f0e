"""Key custody: where signing keys are made and kept, and how they sign (``--key-store``).

Two custodians keep the private keys of :class:`auth_server.keys.SigningKeyStore`:

* :class:`DatabaseCustody` (``db``): keys are made in this process and stored in
  their ``signing_keys`` row, sealed under the passphrase (:mod:`auth_server._envelope`);
* :class:`auth_server.hsm.Pkcs11Custody` (``pkcs11``): keys are made inside a
  PKCS#11 token as non-extractable objects and sign there (``C_Sign``); the row
  holds only the RFC 7512 URI of the token object.

Either way the database keeps the lifecycle (states, times) and the public JWK,
so replicas agree on the published set without asking the token. A row's
``private_key`` column says which custodian holds it (:meth:`KeyCustody.holds`),
so a server on the token still signs with the database keys made before the
switch until they rotate out.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol

from auth_server import _keyrows as keyrows
from auth_server._envelope import KeyEncryption
from auth_server._keyrows import NewKey, SigningKey
from auth_server.jwk import generate_private_key

__all__ = ["DatabaseCustody", "KeyCustody", "NewKey"]


class KeyCustody(Protocol):
    """Makes, loads and destroys private keys; the seam between key lifecycle and key material."""

    @property
    def name(self) -> str:
        """The ``--key-store`` value: ``"db"`` or ``"pkcs11"``."""
        ...

    def generate(self, algorithm: str, *, rsa_bits: int) -> NewKey:
        """Make a new key (slow: call it outside the replicas' lock).

        Raises:
            KeyStoreUnavailable: The token does not answer.
        """
        ...

    def holds(self, stored: bytes) -> bool:
        """Whether a row's ``private_key`` column is a key of this custodian."""
        ...

    def load(self, kid: str, algorithm: str, stored: bytes, stored_jwk: str) -> SigningKey:
        """The key of a row this custodian :meth:`holds`, checked against its stored JWK.

        Raises:
            KeyStoreError: The row cannot be used to sign.
            KeyStoreUnavailable: The token does not answer (the key may be fine).
        """
        ...

    def destroy(self, stored: bytes) -> None:
        """Destroy the private key a row refers to; done if it is already gone.

        Raises:
            KeyStoreUnavailable: The token does not answer; try again later.
        """
        ...

    def discard(self, new: NewKey) -> None:
        """Destroy a key from :meth:`generate` that was never stored (best effort)."""
        ...

    def check_ready(self) -> None:
        """Raise unless keys can sign now, as far as is known without signing.

        Raises:
            KeyStoreUnavailable: The token is known not to answer.
        """
        ...

    def close(self) -> None:
        """Release what the custodian holds open (sessions); it may not be used after."""
        ...


class DatabaseCustody:
    """``--key-store db``: keys made here, stored encrypted in their row (today's behaviour).

    Destroying a key is the row update that empties its ``private_key`` column,
    so :meth:`destroy` has nothing more to do.
    """

    def __init__(self, sealer: Callable[[], KeyEncryption]) -> None:
        """Create the custodian.

        Args:
            sealer: What seals and opens the keys now (it changes on ``keys rewrap``).
        """
        self._sealer = sealer

    @property
    def name(self) -> str:
        return "db"

    def generate(self, algorithm: str, *, rsa_bits: int) -> NewKey:
        sealer = self._sealer()
        sealer.prepare()  # the slow key derivation, before any lock
        private_key = generate_private_key(algorithm, rsa_bits=rsa_bits)
        return keyrows.new_key(private_key, algorithm, sealer)

    def holds(self, stored: bytes) -> bool:
        return not bytes(stored).startswith(keyrows.TOKEN_REFERENCE)

    def load(self, kid: str, algorithm: str, stored: bytes, stored_jwk: str) -> SigningKey:
        return keyrows.signing_key_from_row(kid, algorithm, stored, stored_jwk, self._sealer())

    def destroy(self, stored: bytes) -> None:
        return None

    def discard(self, new: NewKey) -> None:
        return None

    def check_ready(self) -> None:
        return None

    def close(self) -> None:
        return None
