"""Rows of the signing_keys table: reading them, and the key material they hold.

Private to :mod:`auth_server.keys`; nothing here decides when a key changes state
(that is :mod:`auth_server.lifecycle`).
"""

from __future__ import annotations

import json
import logging
import types
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import sqlalchemy as sa
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from auth_server._envelope import KeyEncryption, SealError, is_sealed
from auth_server.errors import KeyStoreError
from auth_server.jwk import PRIVATE_TYPES, PrivateKey, jwk_thumbprint, public_jwk
from auth_server.jws import Signer, local_signer
from auth_server.lifecycle import KeyRecord, is_live, state_of
from auth_server.storage import signing_keys

_LOGGER = logging.getLogger(__name__)

WRONG_PASSPHRASE = "cannot decrypt signing key: wrong passphrase?"  # noqa: S105
UNUSABLE = "signing key is unusable"
# How many stored keys to try when checking the passphrase.
_PASSPHRASE_PROBES = 5

# What a destroyed private key column holds (the column is NOT NULL).
DESTROYED = b""
# How the private key column of a key held by a PKCS#11 token begins: it holds the
# RFC 7512 URI of the token object, never key material (auth_server.hsm).
TOKEN_REFERENCE = b"pkcs11:"


def _no_signer(signing_input: bytes) -> bytes:
    raise AssertionError("replaced in SigningKey.__post_init__")


METADATA_COLUMNS = (
    signing_keys.c.kid,
    signing_keys.c.algorithm,
    signing_keys.c.created_at,
    signing_keys.c.activates_at,
    signing_keys.c.deactivated_at,
    signing_keys.c.retires_at,
    signing_keys.c.revoked_at,
)
# Whether the private key is still stored, without reading it.
HAS_PRIVATE_KEY = sa.func.length(signing_keys.c.private_key) > 0
_RECORD_COLUMNS = (*METADATA_COLUMNS, HAS_PRIVATE_KEY.label("has_private_key"))


@dataclass(frozen=True, kw_only=True)
class SigningKey:
    """A key that can sign tokens: decrypted in memory, or held by a PKCS#11 token.

    Attributes:
        kid: The key id (RFC 7638 thumbprint of the public key).
        algorithm: The JWS algorithm, one of :data:`auth_server.jwk.ALGORITHMS`.
        public_jwk: The public JWK, as published.
        private_key: The private key (never log or serialise it); ``None`` when it
            never leaves a token (``--key-store pkcs11``).
        signer: Signs a JWS signing input; made from ``private_key`` if not given.
    """

    kid: str
    algorithm: str
    public_jwk: Mapping[str, str]
    private_key: PrivateKey | None = None
    signer: Signer = field(default=_no_signer, repr=False, compare=False)

    def __post_init__(self) -> None:
        if self.signer is _no_signer:
            if self.private_key is None:
                raise ValueError("a signing key needs a private key or a signer")
            object.__setattr__(self, "signer", local_signer(self.private_key, self.algorithm))

    def sign(self, signing_input: bytes) -> bytes:
        """The JWS signature of ``signing_input`` (RFC 7518 §3).

        Raises:
            KeyStoreUnavailable: The token holding the key does not answer.
        """
        return self.signer(signing_input)

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
        deactivated_at: When a newer key takes (or took) over, if decided.
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


def live(now: float | sa.BindParameter[float]) -> sa.ColumnElement[bool]:
    """SQL for :func:`auth_server.lifecycle.is_live`."""
    return sa.and_(
        signing_keys.c.revoked_at.is_(None),
        sa.or_(signing_keys.c.retires_at.is_(None), signing_keys.c.retires_at > now),
    )


# Built once: every token issued reads the live keys (the current one may have
# changed on another replica), and a statement reused finds its compiled form at once.
_SELECT_LIVE = sa.select(*_RECORD_COLUMNS).where(live(sa.bindparam("now", type_=sa.Float)))


def select_all(conn: sa.Connection) -> list[KeyRecord]:
    """Every stored key."""
    return [_record(row) for row in conn.execute(sa.select(*_RECORD_COLUMNS)).all()]


def select_live(conn: sa.Connection, now: float) -> list[KeyRecord]:
    """The keys published at ``now`` (neither revoked nor retired)."""
    found = conn.execute(_SELECT_LIVE, {"now": now}).all()
    return [_record(row) for row in found]


def select_one(conn: sa.Connection, kid: str) -> KeyRecord | None:
    """The key ``kid``, or ``None`` if there is none."""
    row = conn.execute(sa.select(*_RECORD_COLUMNS).where(signing_keys.c.kid == kid)).first()
    return None if row is None else _record(row)


def select_published(conn: sa.Connection, now: float) -> list[tuple[KeyRecord, str]]:
    """The live keys with their stored public JWK text (unchecked: see :func:`parse_public_jwk`)."""
    found = conn.execute(
        sa.select(*_RECORD_COLUMNS, signing_keys.c.public_jwk).where(live(now))
    ).all()
    return [(_record(row), row.public_jwk) for row in found]


def _record(row: sa.Row[Any]) -> KeyRecord:
    return KeyRecord(
        kid=row.kid,
        algorithm=row.algorithm,
        created_at=row.created_at,
        activates_at=row.activates_at,
        deactivated_at=row.deactivated_at,
        retires_at=row.retires_at,
        revoked_at=row.revoked_at,
        has_private_key=bool(row.has_private_key),
    )


def update(conn: sa.Connection, kid: str, **values: object) -> None:
    conn.execute(signing_keys.update().where(signing_keys.c.kid == kid).values(**values))


def key_info(record: KeyRecord, now: float, *, current_kid: str | None = None) -> KeyInfo:
    return KeyInfo(
        kid=record.kid,
        algorithm=record.algorithm,
        state=state_of(record, now, current_kid),
        created_at=record.created_at,
        activates_at=record.activates_at,
        deactivated_at=record.deactivated_at,
        retires_at=record.retires_at,
        revoked_at=record.revoked_at,
    )


def is_spent(record: KeyRecord, now: float) -> bool:
    """Revoked or retired, with its private key still stored: destroy it."""
    return record.has_private_key and not is_live(record, now)


def check_passphrase_value(passphrase: bytes) -> bytes:
    if not isinstance(passphrase, bytes) or not passphrase:
        raise ValueError("the signing key passphrase must be non-empty bytes")
    return passphrase


def encrypt(kid: str, private_key: PrivateKey, sealer: KeyEncryption) -> bytes:
    """The stored form of a private key: its PKCS#8 DER sealed under ``kid`` (see ``_envelope``)."""
    der = private_key.private_bytes(
        serialization.Encoding.DER,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    return sealer.seal(kid, der)


def is_legacy(stored: bytes) -> bool:
    """Whether a stored private key is in the format before envelope encryption.

    Keys used to be stored as PKCS#8 PEM encrypted by the passphrase itself
    (PBES2 with PBKDF2, 2,048 iterations): cheap to guess offline. Such rows
    are still read, and move to the envelope at the next ``keys rewrap``.
    """
    return bool(stored) and not is_sealed(stored)


def parse_public_jwk(text: str, kid: str, algorithm: str) -> dict[str, str] | None:
    """The stored public JWK if it is well formed and really has ``kid`` and ``algorithm``."""
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


@dataclass(frozen=True, kw_only=True)
class NewKey:
    """A key just made, not yet stored.

    Attributes:
        key: The key, ready to sign.
        stored: What its row's ``private_key`` column will hold: the sealed key
            (:mod:`auth_server._envelope`), or the token object's URI
            (:data:`TOKEN_REFERENCE`).
    """

    key: SigningKey
    stored: bytes = field(repr=False)


def new_key(private_key: PrivateKey, algorithm: str, sealer: KeyEncryption) -> NewKey:
    """A key made in this process, its private key encrypted for its row."""
    jwk = public_jwk(private_key, algorithm)
    key = SigningKey(
        kid=jwk["kid"],
        algorithm=algorithm,
        private_key=private_key,
        public_jwk=types.MappingProxyType(jwk),
    )
    return NewKey(key=key, stored=encrypt(key.kid, private_key, sealer))


def new_row(new: NewKey, *, created_at: float, activates_at: float) -> dict[str, object]:
    """The signing_keys row that stores ``new``."""
    return {
        "kid": new.key.kid,
        "algorithm": new.key.algorithm,
        "private_key": new.stored,
        "public_jwk": json.dumps(dict(new.key.public_jwk), separators=(",", ":")),
        "created_at": created_at,
        "activates_at": activates_at,
        "deactivated_at": None,
        "retires_at": None,
        "revoked_at": None,
    }


def decrypt(kid: str, stored: bytes, sealer: KeyEncryption, *, log: bool = True) -> PrivateKey:
    """Decrypt a stored private key (``log``: say which key failed, at ERROR).

    Reads both the envelope and the legacy PKCS#8 PEM (:func:`is_legacy`).

    Raises:
        KeyStoreError: Wrong passphrase, a corrupted row or an unsupported key type.
    """
    try:
        if is_legacy(stored):
            private_key: object = serialization.load_pem_private_key(
                stored, password=sealer.passphrase
            )
        else:
            private_key = serialization.load_der_private_key(sealer.open(kid, stored), None)
    except (SealError, ValueError, TypeError, UnsupportedAlgorithm) as err:
        if log:
            _LOGGER.error("cannot decrypt signing key %s: wrong passphrase or corrupted row", kid)
        raise KeyStoreError(WRONG_PASSPHRASE) from err
    if not isinstance(private_key, PRIVATE_TYPES):
        if log:
            _LOGGER.error("signing key %s has an unsupported key type", kid)
        raise KeyStoreError(UNUSABLE)
    return private_key


def reencrypt(kid: str, stored: bytes, old: KeyEncryption, new: KeyEncryption) -> bytes:
    """A stored private key moved from ``old`` to ``new`` (a legacy row moves to the envelope).

    Raises:
        KeyStoreError: ``old`` does not decrypt it (logged).
    """
    if is_legacy(stored):
        return encrypt(kid, decrypt(kid, stored, old), new)
    try:
        return new.rewrap(kid, stored, old)
    except SealError as err:
        _LOGGER.error("cannot decrypt signing key %s: wrong passphrase or corrupted row", kid)
        raise KeyStoreError(WRONG_PASSPHRASE) from err


def signing_key_from_row(
    kid: str, algorithm: str, pem: bytes, stored_jwk: str, sealer: KeyEncryption
) -> SigningKey:
    """Decrypt and check a stored key: it must fit its algorithm and its published JWK.

    Raises:
        KeyStoreError: The row cannot be used to sign.
    """
    if not pem:
        _LOGGER.error("signing key %s has no private key (retired or revoked)", kid)
        raise KeyStoreError(UNUSABLE)
    private_key = decrypt(kid, pem, sealer)
    try:
        jwk = public_jwk(private_key, algorithm)
    except ValueError as err:
        _LOGGER.error("signing key %s does not fit its algorithm", kid)
        raise KeyStoreError(UNUSABLE) from err
    if isinstance(private_key, rsa.RSAPrivateKey) and private_key.key_size < 2048:
        _LOGGER.error("signing key %s is too small", kid)
        raise KeyStoreError(UNUSABLE)
    # Sign only with a key whose public half is exactly what is published.
    if jwk["kid"] != kid or parse_public_jwk(stored_jwk, kid, algorithm) != jwk:
        _LOGGER.error("signing key %s does not match its stored public key", kid)
        raise KeyStoreError(UNUSABLE)
    return SigningKey(
        kid=kid,
        algorithm=algorithm,
        private_key=private_key,
        public_jwk=types.MappingProxyType(jwk),
    )


def probe_passphrase(
    conn: sa.Connection, sealer: KeyEncryption, *, exclude: frozenset[str] = frozenset()
) -> bool | None:
    """Whether the passphrase decrypts one of the newest stored keys (``None``: none to try).

    Before a key is added this catches a replica started with the wrong
    passphrase, which must not add a key the others cannot decrypt; and when one
    key fails to decrypt, it tells a corrupted row from a wrong passphrase.
    """
    found = conn.execute(
        sa.select(signing_keys.c.kid, signing_keys.c.private_key)
        .where(HAS_PRIVATE_KEY)
        .order_by(signing_keys.c.created_at.desc())
        .limit(_PASSPHRASE_PROBES + len(exclude))
    ).all()
    probes = [
        (kid, pem)
        for kid, pem in found
        # A token's key is not encrypted with the passphrase: it tells nothing.
        if kid not in exclude and not bytes(pem).startswith(TOKEN_REFERENCE)
    ][:_PASSPHRASE_PROBES]
    for kid, pem in probes:
        try:
            decrypt(kid, pem, sealer, log=False)
        except KeyStoreError:
            continue
        return True
    return False if probes else None


def check_passphrase(conn: sa.Connection, sealer: KeyEncryption) -> None:
    """Raise unless ``sealer``'s passphrase decrypts a stored key (or none is stored).

    Raises:
        KeyStoreError: It decrypts none of the newest keys.
    """
    if probe_passphrase(conn, sealer) is False:
        raise KeyStoreError(WRONG_PASSPHRASE)
