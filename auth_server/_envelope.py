"""Envelope encryption of secrets at rest: AES-256-GCM under a data key, wrapped by the passphrase.

Each sealed value has its own random 256-bit data key; the value is sealed with
it (AES-256-GCM, NIST SP 800-38D), and the data key is sealed in turn with a
key-encryption key (KEK) derived from the passphrase by argon2id
(:mod:`auth_server.kdf`). Both seals take the value's name (a signing key's
``kid``) as associated data, so a sealed value copied onto another row does not
open. Changing the passphrase re-wraps the 48-byte data keys; the sealed values
themselves are not touched.

A sealed value is a small JSON document, version 1::

    {"v": 1,
     "kdf": {"name": "argon2id", "t": 3, "m": 65536, "p": 4, "salt": "<b64>"},
     "dek": "<b64 nonce || AES-GCM(KEK, data key)>",
     "data": "<b64 nonce || AES-GCM(data key, value)>"}

The KDF parameters and salt travel with each value, so parameters can change
without a flag day; ``v`` lets the layout itself change later. Private to the
key store and the deployment secrets: nothing here knows what a key is.
"""

from __future__ import annotations

import base64
import binascii
import json
import os
import threading
from collections.abc import Mapping
from typing import Any

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from auth_server.kdf import KdfParameters, derive_key

FORMAT_VERSION = 1
_NONCE_BYTES = 12  # SP 800-38D §8.2.2: 96-bit random nonces; each data key seals once
_SALT_BYTES = 16
_DEK_AAD = b"ssot-auth/envelope/v1/dek\x00"
_DATA_AAD = b"ssot-auth/envelope/v1/data\x00"
# Derived KEKs kept per (parameters, salt); a deployment normally has one or two.
_MAX_CACHED_KEKS = 8


class SealError(Exception):
    """A sealed value does not open: a wrong passphrase, or a corrupted or foreign value."""


def is_sealed(stored: bytes) -> bool:
    """Whether ``stored`` is in this envelope format (not, say, a legacy PKCS#8 PEM)."""
    return stored[:1] == b"{"


class KeyEncryption:
    """Seals and opens values under one passphrase; thread-safe.

    Deriving a KEK is slow on purpose, so each derived KEK is kept (in memory
    only) by its parameters and salt. Values this object seals share one salt:
    the salt of the first value it opened with its own parameters, else a
    fresh one, so a process start pays for one derivation, not one per row.
    """

    def __init__(self, passphrase: bytes, kdf: KdfParameters | None = None) -> None:
        """Create the sealer (no derivation yet).

        Raises:
            ValueError: Empty passphrase.
        """
        if not isinstance(passphrase, bytes) or not passphrase:
            raise ValueError("the signing key passphrase must be non-empty bytes")
        self._passphrase = passphrase
        self._kdf = kdf if kdf is not None else KdfParameters()
        self._keks: dict[tuple[KdfParameters, bytes], bytes] = {}
        self._write_salt: bytes | None = None
        self._lock = threading.Lock()

    def __repr__(self) -> str:
        return f"KeyEncryption(kdf={self._kdf!r})"

    @property
    def passphrase(self) -> bytes:
        """The passphrase (never log it); legacy PKCS#8 rows are encrypted with it directly."""
        return self._passphrase

    @property
    def kdf(self) -> KdfParameters:
        """The KDF parameters of the values this object seals."""
        return self._kdf

    def prepare(self) -> None:
        """Derive the KEK for sealing now, so a later :meth:`seal` is fast (e.g. under a lock)."""
        self._kek(self._kdf, self._salt_for_writing())

    def seal(self, name: str, value: bytes) -> bytes:
        """Seal ``value`` under a fresh data key; ``name`` must be given again to open it."""
        data_key = AESGCM.generate_key(bit_length=256)
        sealed_value = _encrypt(data_key, value, _DATA_AAD + name.encode())
        return self._wrap(name, data_key, sealed_value)

    def open(self, name: str, stored: bytes) -> bytes:
        """The value sealed under ``name``.

        Raises:
            SealError: Wrong passphrase, another name, or a corrupted value.
        """
        document = _parse(stored)
        data_key = self._unwrap(name, document)
        return _decrypt(data_key, document["data"], _DATA_AAD + name.encode())

    def rewrap(self, name: str, stored: bytes, old: KeyEncryption) -> bytes:
        """``stored`` (sealed by ``old``) with its data key wrapped by this object instead.

        The sealed value is carried over unchanged: only its 32-byte data key is
        decrypted, never the value itself.

        Raises:
            SealError: ``old`` does not open it.
        """
        document = _parse(stored)
        data_key = old._unwrap(name, document)
        # Check the value opens before committing to the new wrapping.
        _decrypt(data_key, document["data"], _DATA_AAD + name.encode())
        return self._wrap(name, data_key, document["data"])

    def is_current(self, stored: bytes) -> bool:
        """Whether ``stored`` is sealed in this format with this object's KDF parameters."""
        try:
            document = _parse(stored)
        except SealError:
            return False
        parameters: KdfParameters = document["kdf_parameters"]
        return parameters == self._kdf

    # -- internals ---------------------------------------------------------------------

    def _wrap(self, name: str, data_key: bytes, sealed_value: bytes) -> bytes:
        salt = self._salt_for_writing()
        wrapped = _encrypt(self._kek(self._kdf, salt), data_key, _DEK_AAD + name.encode())
        kdf: dict[str, object] = {**self._kdf.as_dict(), "salt": _b64(salt)}
        document = {
            "v": FORMAT_VERSION,
            "kdf": kdf,
            "dek": _b64(wrapped),
            "data": _b64(sealed_value),
        }
        return json.dumps(document, sort_keys=True, separators=(",", ":")).encode("ascii")

    def _unwrap(self, name: str, document: Mapping[str, Any]) -> bytes:
        parameters: KdfParameters = document["kdf_parameters"]
        salt: bytes = document["salt"]
        data_key = _decrypt(self._kek(parameters, salt), document["dek"], _DEK_AAD + name.encode())
        if len(data_key) != 32:
            raise SealError("sealed value has a malformed data key")
        if parameters == self._kdf:
            with self._lock:
                if self._write_salt is None:
                    self._write_salt = salt  # proven right: new values need no new derivation
        return data_key

    def _salt_for_writing(self) -> bytes:
        with self._lock:
            if self._write_salt is None:
                self._write_salt = os.urandom(_SALT_BYTES)
            return self._write_salt

    def _kek(self, parameters: KdfParameters, salt: bytes) -> bytes:
        cache_key = (parameters, salt)
        with self._lock:
            kek = self._keks.get(cache_key)
        if kek is not None:
            return kek
        kek = derive_key(self._passphrase, salt, parameters)
        with self._lock:
            if len(self._keks) >= _MAX_CACHED_KEKS:
                self._keks.pop(next(iter(self._keks)))
            self._keks[cache_key] = kek
        return kek


def _encrypt(key: bytes, plaintext: bytes, aad: bytes) -> bytes:
    nonce = os.urandom(_NONCE_BYTES)
    return nonce + AESGCM(key).encrypt(nonce, plaintext, aad)


def _decrypt(key: bytes, sealed: bytes, aad: bytes) -> bytes:
    try:
        return AESGCM(key).decrypt(sealed[:_NONCE_BYTES], sealed[_NONCE_BYTES:], aad)
    except (InvalidTag, ValueError) as err:
        raise SealError("sealed value does not open") from err


def _parse(stored: bytes) -> dict[str, Any]:
    """The parts of a sealed value, decoded and bounds-checked."""
    try:
        document = json.loads(stored)
        if not isinstance(document, dict) or document.get("v") != FORMAT_VERSION:
            raise SealError("not a sealed value of a known version")
        kdf = document["kdf"]
        if not isinstance(kdf, dict):
            raise SealError("sealed value has no KDF parameters")
        salt = _unb64(kdf["salt"])
        parameters = KdfParameters.from_dict(kdf)
        dek = _unb64(document["dek"])
        data = _unb64(document["data"])
    except SealError:
        raise
    except (ValueError, KeyError, TypeError, binascii.Error) as err:
        raise SealError("malformed sealed value") from err
    if len(salt) < _SALT_BYTES or len(dek) <= _NONCE_BYTES or len(data) <= _NONCE_BYTES:
        raise SealError("malformed sealed value")
    return {"kdf_parameters": parameters, "salt": salt, "dek": dek, "data": data}


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def _unb64(text: object) -> bytes:
    if not isinstance(text, str):
        raise ValueError("not base64 text")
    return base64.b64decode(text.encode("ascii"), validate=True)
