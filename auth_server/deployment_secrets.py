"""Secrets every replica shares, made once, stored sealed under the key passphrase.

The refresh-token successor secret used to be derived from the passphrase
(scrypt with a fixed salt). That made every refresh a passphrase oracle: any
user holds a (spent token, successor) pair, and could test passphrase guesses
against it offline, in every deployment at once. Now it is 256 random bits,
made by the first replica, sealed like the private keys
(:mod:`auth_server._envelope`: AES-256-GCM under an argon2id-derived KEK, the
secret's name as associated data) and opened by every other replica. The
tokens it derives say nothing about the passphrase, and a database dump
without the passphrase yields nothing.
"""

from __future__ import annotations

import logging
import secrets
import time
from collections.abc import Callable

import sqlalchemy as sa
from sqlalchemy import exc

from auth_server._envelope import KeyEncryption, SealError
from auth_server.errors import KeyStoreError
from auth_server.storage import Database, deployment_secrets

__all__ = ["REFRESH_SUCCESSOR", "load_or_create", "rewrap_all"]

_LOGGER = logging.getLogger(__name__)

#: The name of the refresh-token successor secret (:mod:`auth_server.refresh_tokens`).
REFRESH_SUCCESSOR = "refresh-successor/v2"
_SECRET_BYTES = 32
_WRONG_PASSPHRASE = "cannot decrypt the deployment secrets: wrong passphrase?"  # noqa: S105


def load_or_create(
    db: Database, sealer: KeyEncryption, name: str, *, now: Callable[[], float] = time.time
) -> bytes:
    """The secret ``name``, made (and stored sealed) by the first replica that asks.

    Replicas starting together agree: the row's primary key lets one insert
    win, and the others read what it stored.

    Raises:
        KeyStoreError: The stored secret does not open with this passphrase.
        StorageError: The database is unavailable.
    """
    stored = _select(db, name)
    if stored is None:
        value = secrets.token_bytes(_SECRET_BYTES)
        sealed = sealer.seal(name, value)
        try:
            with db.transaction(write=True) as conn:
                conn.execute(
                    deployment_secrets.insert().values(name=name, sealed=sealed, created_at=now())
                )
        except exc.IntegrityError:
            stored = _select(db, name)  # another replica made it first
        else:
            _LOGGER.info("made the deployment secret %s", name)
            return value
    if stored is None:  # pragma: no cover - inserted, then deleted under us
        raise KeyStoreError(_WRONG_PASSPHRASE)
    try:
        return sealer.open(name, stored)
    except SealError as err:
        _LOGGER.error("cannot open the deployment secret %s: wrong passphrase or corrupted", name)
        raise KeyStoreError(_WRONG_PASSPHRASE) from err


def rewrap_all(conn: sa.Connection, old: KeyEncryption, new: KeyEncryption) -> int:
    """Move every stored secret from ``old`` to ``new``, inside the caller's transaction.

    Raises:
        KeyStoreError: ``old`` does not open one of them (nothing should be committed).
    """
    found = conn.execute(sa.select(deployment_secrets.c.name, deployment_secrets.c.sealed)).all()
    for name, sealed in found:
        try:
            moved = new.rewrap(name, sealed, old)
        except SealError as err:
            _LOGGER.error("cannot open the deployment secret %s: wrong passphrase?", name)
            raise KeyStoreError(_WRONG_PASSPHRASE) from err
        conn.execute(
            deployment_secrets.update()
            .where(deployment_secrets.c.name == name)
            .values(sealed=moved)
        )
    return len(found)


def _select(db: Database, name: str) -> bytes | None:
    with db.transaction() as conn:
        stored: bytes | None = conn.execute(
            sa.select(deployment_secrets.c.sealed).where(deployment_secrets.c.name == name)
        ).scalar()
    return stored
