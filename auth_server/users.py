"""User accounts: validation, storage and password authentication."""

from __future__ import annotations

import logging
import re
import time
import uuid
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa
from sqlalchemy import exc

from auth_server.errors import (
    InvalidCredentials,
    InvalidRequest,
    StorageError,
    UserExists,
    UserNotFound,
)
from auth_server.passwords import PasswordHasher
from auth_server.sessions import audit_revoked, revoke_user_sessions
from auth_server.storage import Database, users

_LOGGER = logging.getLogger(__name__)

_USERNAME_RE = re.compile(r"[A-Za-z0-9._@-]{1,64}")
_MIN_PASSWORD = 8
_MAX_PASSWORD = 1024
# RFC 6749 §3.3: scope-token = 1*( %x21 / %x23-5B / %x5D-7E )
_SCOPE_TOKEN_RE = re.compile(r"[\x21\x23-\x5B\x5D-\x7E]+")


@dataclass(frozen=True, kw_only=True)
class User:
    """A user account, without its password hash.

    Attributes:
        id: Stable identifier (a UUID string); the token's ``sub``.
        username: The login name.
        scopes: The scopes the user holds, sorted.
        disabled: A disabled user cannot log in.
        created_at: Creation time, epoch seconds.
    """

    id: str
    username: str
    scopes: tuple[str, ...]
    disabled: bool
    created_at: float


def validate_username(name: str) -> str:
    """Check a username: 1 to 64 characters of ``A-Z a-z 0-9 . _ @ -``.

    Returns:
        The name, unchanged.

    Raises:
        InvalidRequest: The name is not acceptable.
    """
    if not isinstance(name, str) or not _USERNAME_RE.fullmatch(name):
        raise InvalidRequest("username must be 1 to 64 characters of letters, digits and . _ @ -")
    return name


def validate_password(pw: str) -> str:
    """Check a password's length: 8 to 1024 characters.

    Returns:
        The password, unchanged.

    Raises:
        InvalidRequest: The password is too short or too long.
    """
    if not isinstance(pw, str) or not _MIN_PASSWORD <= len(pw) <= _MAX_PASSWORD:
        raise InvalidRequest(f"password must be {_MIN_PASSWORD} to {_MAX_PASSWORD} characters long")
    return pw


def validate_scopes(scopes: Iterable[str]) -> tuple[str, ...]:
    """Check scope tokens (RFC 6749 §3.3) and normalise them.

    Args:
        scopes: Scope tokens. A single string is taken as a space-separated
            list, as in an OAuth ``scope`` parameter.

    Returns:
        The scopes, deduplicated and sorted.

    Raises:
        InvalidRequest: A scope is empty or holds a character RFC 6749 forbids.
    """
    items: Iterable[str] = scopes.split() if isinstance(scopes, str) else scopes
    result = set()
    for scope in items:
        if not isinstance(scope, str) or not _SCOPE_TOKEN_RE.fullmatch(scope):
            raise InvalidRequest(
                'each scope must be a non-empty string of printable ASCII without spaces, " or \\'
            )
        result.add(scope)
    return tuple(sorted(result))


class UserStore:
    """Creates, changes and authenticates users in the database; thread-safe."""

    def __init__(
        self,
        db: Database,
        hasher: PasswordHasher,
        *,
        now: Callable[[], float] = time.time,
    ) -> None:
        """Create the store.

        Args:
            db: The database (schema already created).
            hasher: Hashes new passwords and verifies logins.
            now: Clock, epoch seconds.
        """
        self._db = db
        self._hasher = hasher
        self._now = now

    @property
    def hasher(self) -> PasswordHasher:
        """The hasher that verifies logins (its ``cost`` sizes the login pool)."""
        return self._hasher

    def add(self, username: str, password: str, scopes: Iterable[str] = ()) -> User:
        """Create a user.

        Raises:
            InvalidRequest: The username, password or a scope is not acceptable.
            UserExists: The username is taken.
            StorageError: The database is unavailable.
        """
        validate_username(username)
        validate_password(password)
        granted = validate_scopes(scopes)
        password_hash = self._hasher.hash(password)
        now = self._now()
        row = {
            "id": str(uuid.uuid4()),
            "username": username,
            "password_hash": password_hash,
            "scopes": " ".join(granted),
            "disabled": False,
            "created_at": now,
            "updated_at": now,
        }
        try:
            with self._db.transaction(write=True) as conn:
                conn.execute(users.insert().values(**row))
        except exc.IntegrityError as err:
            raise UserExists() from err
        _LOGGER.info("user added: %s", username)
        return user_from_row(row)

    def get(self, username: str) -> User | None:
        """Return the user named ``username``, or None if there is none."""
        if not _is_valid_username(username):
            return None
        with self._db.transaction() as conn:
            row = conn.execute(users.select().where(users.c.username == username)).first()
        return None if row is None else user_from_row(row._mapping)

    def get_by_id(self, user_id: str) -> User | None:
        """Return the user whose id is ``user_id``, or None if there is none."""
        with self._db.transaction() as conn:
            return self.get_by_id_in(conn, user_id)

    @staticmethod
    def get_by_id_in(conn: sa.Connection, user_id: str) -> User | None:
        """:meth:`get_by_id` in the caller's transaction (a refresh reads it with the session)."""
        row = conn.execute(_BY_ID, {"user_id": user_id}).first()
        return None if row is None else user_from_row(row._mapping)

    def list(self) -> list[User]:
        """Return every user, ordered by username."""
        with self._db.transaction() as conn:
            rows = conn.execute(users.select().order_by(users.c.username)).all()
        return [user_from_row(row._mapping) for row in rows]

    def disable(self, username: str) -> User:
        """Disable a user: its logins fail from now on and all its sessions end.

        The sessions end in the same transaction, so no refresh can slip in between.

        Raises:
            UserNotFound: No user has that name.
        """
        return self._update(username, end_sessions="user_disabled", disabled=True)

    def enable(self, username: str) -> User:
        """Enable a disabled user again.

        Raises:
            UserNotFound: No user has that name.
        """
        return self._update(username, disabled=False)

    def set_password(self, username: str, password: str) -> User:
        """Replace a user's password and end all its sessions (in the same transaction).

        Raises:
            InvalidRequest: The password is not acceptable.
            UserNotFound: No user has that name.
        """
        validate_password(password)
        return self._update(
            username, end_sessions="password_changed", password_hash=self._hasher.hash(password)
        )

    def set_scopes(self, username: str, scopes: Iterable[str]) -> User:
        """Replace the scopes a user holds.

        Raises:
            InvalidRequest: A scope is not acceptable.
            UserNotFound: No user has that name.
        """
        return self._update(username, scopes=" ".join(validate_scopes(scopes)))

    def authenticate(self, username: str, password: str) -> User:
        """Check a username and password.

        Every failing path runs one argon2 verification, so the response time
        does not tell an unknown user from a wrong password or a disabled user.
        A hash made with outdated parameters is replaced on success.

        Returns:
            The authenticated user.

        Raises:
            InvalidCredentials: Unknown user, wrong password or disabled user.
            StorageError: The database is unavailable.
        """
        row = None
        # A name that could never have been stored is not sent to the database
        # (PostgreSQL rejects a NUL byte, for one) and fails like an unknown user.
        if _is_valid_username(username):
            with self._db.transaction() as conn:
                row = conn.execute(users.select().where(users.c.username == username)).first()
        if row is None:
            self._hasher.dummy_verify(password)
            raise InvalidCredentials()
        record = row._mapping
        password_hash: str = record["password_hash"]
        if not self._hasher.verify(password_hash, password) or record["disabled"]:
            raise InvalidCredentials()
        if self._hasher.needs_rehash(password_hash):
            self._rehash(record["id"], password_hash, password)
        return user_from_row(record)

    def _rehash(self, user_id: str, old_hash: str, password: str) -> None:
        new_hash = self._hasher.hash(password)
        try:
            with self._db.transaction(write=True) as conn:
                # Compare-and-set: a concurrent set_password must win.
                conn.execute(
                    users.update()
                    .where(users.c.id == user_id, users.c.password_hash == old_hash)
                    .values(password_hash=new_hash, updated_at=self._now())
                )
        except StorageError:
            # The login itself succeeded; the upgrade is retried next time.
            _LOGGER.warning("could not store an upgraded password hash for user id %s", user_id)

    def _update(self, username: str, *, end_sessions: str | None = None, **values: Any) -> User:
        if not _is_valid_username(username):
            raise UserNotFound()
        ended: list[str] = []
        with self._db.transaction(write=True) as conn:
            now = self._now()
            result = conn.execute(
                users.update().where(users.c.username == username).values(updated_at=now, **values)
            )
            if result.rowcount == 0:
                raise UserNotFound()
            row = conn.execute(users.select().where(users.c.username == username)).one()
            if end_sessions is not None:
                ended = revoke_user_sessions(conn, row.id, now=now, reason=end_sessions)
        _LOGGER.info("user changed: %s (%s)", username, ", ".join(sorted(values)))
        if ended:
            _LOGGER.info("ended %d sessions of %s (%s)", len(ended), username, end_sessions)
            audit_revoked(ended, user_id=row.id, reason=end_sessions or "")
        return user_from_row(row._mapping)


def _is_valid_username(name: object) -> bool:
    return isinstance(name, str) and _USERNAME_RE.fullmatch(name) is not None


# Built once: every refresh reads its user.
_BY_ID = users.select().where(users.c.id == sa.bindparam("user_id"))


def user_from_row(record: Mapping[Any, Any]) -> User:
    """The :class:`User` of a row of the users table (its password hash left out)."""
    return User(
        id=record["id"],
        username=record["username"],
        scopes=tuple(record["scopes"].split()),
        disabled=bool(record["disabled"]),
        created_at=float(record["created_at"]),
    )
