"""Login sessions and their refresh tokens (stored only as SHA-256 hashes)."""

from __future__ import annotations

import hashlib
import logging
import math
import secrets
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass

from sqlalchemy import exc

from auth_server.errors import UserNotFound
from auth_server.storage import Database, sessions

_LOGGER = logging.getLogger(__name__)

DEFAULT_SESSION_TTL = 14 * 86400.0


@dataclass(frozen=True, kw_only=True)
class NewSession:
    """A session just created.

    Attributes:
        session_id: The session id, the access token's ``sid`` claim.
        refresh_token: The opaque refresh token; handed to the client once,
            never stored or logged.
        expires_at: When the session ends, epoch seconds.
    """

    session_id: str
    refresh_token: str
    expires_at: float

    def __repr__(self) -> str:
        return f"NewSession(session_id={self.session_id!r}, expires_at={self.expires_at!r})"


def hash_refresh_token(refresh_token: str) -> str:
    """Return the SHA-256 hex digest under which a refresh token is stored."""
    return hashlib.sha256(refresh_token.encode("utf-8")).hexdigest()


class SessionStore:
    """Creates sessions in the database; thread-safe."""

    def __init__(
        self,
        db: Database,
        *,
        ttl: float = DEFAULT_SESSION_TTL,
        now: Callable[[], float] = time.time,
    ) -> None:
        """Create the store.

        Args:
            db: The database (schema already created).
            ttl: Session lifetime in seconds.
            now: Clock, epoch seconds.

        Raises:
            ValueError: ``ttl`` is not a positive finite number.
        """
        if not (math.isfinite(ttl) and ttl > 0):
            raise ValueError("session ttl must be a positive number of seconds")
        self._db = db
        self._ttl = float(ttl)
        self._now = now

    def create(self, user_id: str) -> NewSession:
        """Start a session for a user, with a new random refresh token.

        Args:
            user_id: The user's id (``User.id``).

        Returns:
            The session id, its refresh token and its end.

        Raises:
            UserNotFound: No user has that id.
            StorageError: The database is unavailable.
        """
        session_id = str(uuid.uuid4())
        refresh_token = secrets.token_urlsafe(32)
        now = self._now()
        expires_at = now + self._ttl
        try:
            with self._db.transaction(write=True) as conn:
                conn.execute(
                    sessions.insert().values(
                        id=session_id,
                        user_id=user_id,
                        created_at=now,
                        expires_at=expires_at,
                        revoked_at=None,
                        refresh_token_hash=hash_refresh_token(refresh_token),
                    )
                )
        except exc.IntegrityError as err:
            raise UserNotFound() from err
        _LOGGER.info("session %s started for user id %s", session_id, user_id)
        return NewSession(session_id=session_id, refresh_token=refresh_token, expires_at=expires_at)
