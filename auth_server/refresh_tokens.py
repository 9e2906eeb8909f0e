"""Refresh tokens as strings: their format, the hash they are stored under, their successors.

A login's refresh token is 256 random bits (43 base64url characters). Each
refresh hands out ``HMAC-SHA256(secret, spent token)`` as the successor: as
unpredictable as a random token to anyone without the secret, yet the same
every time it is derived, which is what lets a repeat within the grace window
get the same successor although the database holds only SHA-256 hashes.
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


def derive_refresh_secret(passphrase: bytes) -> bytes:
    """Derive the successor-token secret from the key passphrase (scrypt, ~50 ms).

    Every replica holds the passphrase, so every replica derives the same
    secret and a repeat within the grace window works on any of them. scrypt,
    not a fast KDF, so the secret is no cheaper a way to guess the passphrase
    than the encrypted private keys are.
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
