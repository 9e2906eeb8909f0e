"""Refresh tokens as strings: their format, the hash they are stored under, their successors.

A login's refresh token is 256 random bits (43 base64url characters). Each
refresh hands out ``HMAC-SHA256(secret, spent token)`` as the successor: as
unpredictable as a random token to anyone without the secret, yet the same
every time it is derived, which is what lets a repeat within the grace window
get the same successor although the database holds only SHA-256 hashes. The
secret is random, shared by every replica through the database, sealed under
the key passphrase (:mod:`auth_server.deployment_secrets`).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import re
import secrets

from cryptography.hazmat.primitives.kdf.scrypt import Scrypt

from auth_server.errors import InvalidRefreshToken

# secrets.token_urlsafe(32) and the base64url HMAC-SHA256 successor: 43 characters.
_TOKEN_RE = re.compile(r"[A-Za-z0-9_-]{43}")
_SUCCESSOR_CONTEXT = b"ssot-auth/refresh-successor/v1\x00"


def new_refresh_token() -> str:
    """A fresh random refresh token (256 bits)."""
    return secrets.token_urlsafe(32)


def hash_refresh_token(refresh_token: str) -> str:
    """Return the SHA-256 hex digest under which a refresh token is stored."""
    return hashlib.sha256(refresh_token.encode("utf-8")).hexdigest()


def legacy_refresh_secret(passphrase: bytes) -> bytes:
    """The successor-token secret of earlier versions: scrypt of the key passphrase (~50 ms).

    Now the secret is random and stored sealed
    (:data:`auth_server.deployment_secrets.REFRESH_SUCCESSOR`): a secret derived
    from the passphrase let anyone holding a (token, successor) pair test
    passphrase guesses offline. This one is still derived, only to recognise a
    grace-window repeat of a token that a replica of the earlier version spent
    just before the upgrade (:class:`auth_server.sessions.SessionStore`'s
    ``previous_secrets``); no new successor is ever made with it.
    """
    kdf = Scrypt(salt=b"ssot-auth refresh-successor secret", length=32, n=2**14, r=8, p=1)
    return kdf.derive(passphrase)


def successor_token(secret: bytes, refresh_token: str) -> str:
    """The refresh token that replaces ``refresh_token`` when it is spent."""
    digest = hmac.new(
        secret, _SUCCESSOR_CONTEXT + refresh_token.encode("ascii"), hashlib.sha256
    ).digest()
    return base64.urlsafe_b64encode(digest).rstrip(b"=").decode("ascii")


def checked_hash(refresh_token: str) -> str:
    """Hash a presented refresh token; one that could never have been issued fails at once."""
    if not isinstance(refresh_token, str) or not _TOKEN_RE.fullmatch(refresh_token):
        raise InvalidRefreshToken()
    return hash_refresh_token(refresh_token)
