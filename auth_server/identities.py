"""Who an upstream provider's subject is here: identities linked by (provider, ``sub``).

An identity is never matched by e-mail address or username: a second provider
asserting the same address is someone else until an operator links it
(``ssot-auth users link``). The first sign-in of an unknown (provider, subject)
creates a user just in time, under a fresh name (never an existing user's), in
the same transaction as the link, so two racing first sign-ins make one user.
"""

from __future__ import annotations

import hashlib
import logging
import secrets
import time
import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass

import sqlalchemy as sa
from sqlalchemy import exc

from auth_server.audit import audit_event
from auth_server.errors import IdentityLinked, IdpNotFound, InvalidRequest, UserNotFound
from auth_server.idps import is_valid_idp_name
from auth_server.passwords import PasswordHasher
from auth_server.storage import Database, identity_providers, user_identities, users
from auth_server.users import User, UserStore, validate_scopes, validate_username

_LOGGER = logging.getLogger(__name__)

MAX_SUBJECT_LENGTH = 255  # OpenID Connect Core §2: sub is at most 255 ASCII characters
_NAME_ATTEMPTS = 8


@dataclass(frozen=True, kw_only=True)
class Identity:
    """A (provider, subject) pair and the user it is."""

    idp: str
    subject: str
    user_id: str
    email: str | None = None


def validate_subject(subject: str) -> str:
    """Check an upstream ``sub``: 1 to 255 printable ASCII characters."""
    if (
        not isinstance(subject, str)
        or not 0 < len(subject) <= MAX_SUBJECT_LENGTH
        or not subject.isascii()
        or not subject.isprintable()
    ):
        raise InvalidRequest("subject must be 1 to 255 printable ASCII characters")
    return subject


class IdentityStore:
    """Finds, creates and links federated identities; thread-safe."""

    def __init__(
        self,
        db: Database,
        users_store: UserStore,
        *,
        now: Callable[[], float] = time.time,
    ) -> None:
        self._db = db
        self._users = users_store
        self._hasher: PasswordHasher = users_store.hasher
        self._now = now

    def find(self, idp: str, subject: str) -> Identity | None:
        """The identity of ``subject`` at ``idp``, or ``None``."""
        with self._db.transaction() as conn:
            row = conn.execute(
                user_identities.select().where(
                    user_identities.c.idp == idp, user_identities.c.subject == subject
                )
            ).first()
        if row is None:
            return None
        return Identity(idp=row.idp, subject=row.subject, user_id=row.user_id, email=row.email)

    def list_for_user(self, user_id: str) -> list[Identity]:
        """The identities linked to a user, by provider."""
        with self._db.transaction() as conn:
            rows = conn.execute(
                user_identities.select()
                .where(user_identities.c.user_id == user_id)
                .order_by(user_identities.c.idp, user_identities.c.subject)
            ).all()
        return [
            Identity(idp=r.idp, subject=r.subject, user_id=r.user_id, email=r.email) for r in rows
        ]

    def resolve(
        self,
        idp: str,
        subject: str,
        *,
        username_hint: str | None,
        email: str | None,
        default_scopes: Iterable[str] = (),
    ) -> tuple[User, bool]:
        """The user linked to (``idp``, ``subject``), created just in time if there is none.

        Returns:
            The user and whether it was created now.

        Raises:
            InvalidRequest: The subject is malformed.
            UserNotFound: The linked user is gone (cannot happen while the foreign key holds).
        """
        validate_subject(subject)
        found = self.find(idp, subject)
        if found is None:
            try:
                return self._create(idp, subject, username_hint, email, default_scopes), True
            except exc.IntegrityError:
                # A racing first sign-in of the same subject linked it first: use its user.
                found = self.find(idp, subject)
                if found is None:
                    raise
        user = self._users.get_by_id(found.user_id)
        if user is None:
            raise UserNotFound()
        if email is not None and email != found.email:
            with self._db.transaction(write=True) as conn:
                conn.execute(
                    user_identities.update()
                    .where(user_identities.c.idp == idp, user_identities.c.subject == subject)
                    .values(email=email)
                )
        return user, False

    def link(self, username: str, idp: str, subject: str) -> Identity:
        """Link an existing local user to (``idp``, ``subject``) explicitly.

        Raises:
            UserNotFound: No user has that name.
            IdpNotFound: No provider has that name.
            IdentityLinked: The subject already is a user here.
            InvalidRequest: The subject is malformed.
        """
        validate_subject(subject)
        user = self._users.get(username)
        if user is None:
            raise UserNotFound()
        if not is_valid_idp_name(idp):
            raise IdpNotFound()
        try:
            with self._db.transaction(write=True) as conn:
                known = conn.execute(
                    sa.select(identity_providers.c.name).where(identity_providers.c.name == idp)
                ).first()
                if known is None:
                    raise IdpNotFound()
                conn.execute(
                    user_identities.insert().values(
                        idp=idp, subject=subject, user_id=user.id, created_at=self._now()
                    )
                )
        except exc.IntegrityError as err:
            raise IdentityLinked() from err
        _LOGGER.info("identity linked: %s at %s -> %s", subject, idp, username)
        audit_event("identity.linked", idp=idp, sub=subject, user_id=user.id)
        return Identity(idp=idp, subject=subject, user_id=user.id)

    def _create(
        self,
        idp: str,
        subject: str,
        hint: str | None,
        email: str | None,
        default_scopes: Iterable[str],
    ) -> User:
        scopes = " ".join(validate_scopes(default_scopes))
        # Nobody knows this password: the user signs in through the provider only
        # (an operator may set one). A real argon2 hash keeps password logins to
        # this name as slow as any other.
        password_hash = self._hasher.hash(secrets.token_urlsafe(32))
        with self._db.transaction(write=True) as conn:
            now = self._now()
            username = _free_name(conn, idp, subject, hint)
            user_id = str(uuid.uuid4())
            conn.execute(
                users.insert().values(
                    id=user_id,
                    username=username,
                    password_hash=password_hash,
                    scopes=scopes,
                    disabled=False,
                    created_at=now,
                    updated_at=now,
                )
            )
            conn.execute(
                user_identities.insert().values(
                    idp=idp, subject=subject, user_id=user_id, email=email, created_at=now
                )
            )
        _LOGGER.info("user %s created at first sign-in through %s", username, idp)
        audit_event("identity.created", idp=idp, sub=subject, user_id=user_id, username=username)
        return User(
            id=user_id,
            username=username,
            scopes=tuple(scopes.split()),
            disabled=False,
            created_at=now,
        )


def _free_name(conn: sa.Connection, idp: str, subject: str, hint: str | None) -> str:
    """A username nobody has: the hint, else ``idp.hint``, else ``idp.<hash of sub>``.

    "Nobody has" is case-insensitive ("Admin" is not free beside "admin"), and the
    bare hint may not start with another provider's name and a dot: ``corp.alice``
    is what corp's alice is called when "alice" is taken, so provider "other" must
    not hand that name to one of its users.
    """
    digest = hashlib.sha256(subject.encode()).hexdigest()[:16]
    candidates = []
    if hint:
        if not _names_another_provider(conn, idp, hint):
            candidates.append(hint)
        candidates.append(f"{idp}.{hint}")
    candidates += [f"{idp}.{digest}"]
    candidates += [f"{idp}.{digest}-{n}" for n in range(2, _NAME_ATTEMPTS)]
    for candidate in candidates:
        try:
            validate_username(candidate)
        except InvalidRequest:
            continue
        taken = conn.execute(
            sa.select(users.c.id).where(sa.func.lower(users.c.username) == candidate.lower())
        ).first()
        if taken is None:
            return candidate
    raise InvalidRequest("no free username for this identity")


def _names_another_provider(conn: sa.Connection, idp: str, hint: str) -> bool:
    # Provider names may hold dots themselves ("corp.eu"): compare with each (a handful).
    names = conn.execute(sa.select(identity_providers.c.name)).scalars()
    lowered = hint.lower()
    return any(
        lowered.startswith(name.lower() + ".") for name in names if name.lower() != idp.lower()
    )
