"""How long the key passphrase must be, for a new deployment and for one already running.

A new deployment needs at least 16 characters: the memory-hard KDF makes each
guess expensive, but no KDF rescues a short passphrase. ``--allow-short-passphrase``
overrides this (a test rig, a demo), with a warning at every start.

A deployment counts as *existing* when its database already holds a signing
key or a deployment secret (destroyed keys keep their row, so this stays true
after every key was retired or revoked). Existing deployments keep starting
whatever their passphrase (the stored keys prove it is the right one), with a
warning to move to a longer one with ``ssot-auth keys rewrap``: refusing them
would turn an upgrade into an outage. Earlier versions counted 16 *bytes*, so a
passphrase of fewer characters (non-ASCII text) may already be in use.
"""

from __future__ import annotations

import logging

import sqlalchemy as sa

from auth_server.storage import Database, deployment_secrets, signing_keys

__all__ = [
    "ALLOW_SHORT_FLAG",
    "MIN_PASSPHRASE_CHARS",
    "check_passphrase_policy",
    "is_new_deployment",
]

_LOGGER = logging.getLogger(__name__)

MIN_PASSPHRASE_CHARS = 16
ALLOW_SHORT_FLAG = "--allow-short-passphrase"


def passphrase_length(passphrase: bytes) -> int:
    """The passphrase's length in characters (UTF-8; an undecodable byte counts as one)."""
    return len(passphrase.decode("utf-8", errors="replace"))


def is_new_deployment(db: Database) -> bool:
    """Whether the database holds no signing key and no deployment secret yet.

    Raises:
        StorageError: The database is unavailable.
    """
    with db.transaction() as conn:
        for table in (signing_keys, deployment_secrets):
            if conn.execute(sa.select(sa.literal(1)).select_from(table).limit(1)).first():
                return False
    return True


def check_passphrase_policy(passphrase: bytes, *, new_deployment: bool, allow_short: bool) -> None:
    """Refuse a short passphrase for a new deployment; warn about one otherwise.

    Raises:
        ValueError: Fewer than 16 characters, a new deployment and no override;
            the message names the override flag.
    """
    if passphrase_length(passphrase) >= MIN_PASSPHRASE_CHARS:
        return
    if new_deployment and not allow_short:
        raise ValueError(
            f"the key passphrase must be at least {MIN_PASSPHRASE_CHARS} characters for a new"
            f" deployment ({ALLOW_SHORT_FLAG} accepts a shorter one, e.g. for a test rig)"
        )
    _LOGGER.warning(
        "SECURITY WARNING: the key passphrase is shorter than %d characters: a database dump"
        " is only as safe as it is; move to a longer one with `ssot-auth keys rewrap`",
        MIN_PASSPHRASE_CHARS,
    )
