"""Changes to the signing_keys table, made inside one transaction that holds the replicas' lock.

Private to :mod:`auth_server.keys`. Each change keeps the chain of transition
times consistent: every key but the newest has ``deactivated_at`` = the
activation of the key after it, and ``retires_at`` = that + ``retire_after``.
Transitions already in the past are never rewritten.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field

import sqlalchemy as sa

from auth_server import _keyrows as keyrows
from auth_server._keyrows import NewKey, SigningKey
from auth_server.lifecycle import KeyLifecycle, KeyRecord, activation_order, pick_current
from auth_server.storage import signing_keys

_LOGGER = logging.getLogger(__name__)

Event = tuple[str, dict[str, str | float | None]]


@dataclass(frozen=True, kw_only=True)
class MaintenanceReport:
    """What one :meth:`SigningKeyStore.maintain` pass did.

    Attributes:
        created: Keys created (pre-published, or signing at once if none could).
        withdrawn: Keys that never signed and were retired early (unusable,
            or superseded by a sooner key).
        retirements: Keys whose ``retires_at`` was pushed later.
        destroyed: Keys whose private key was destroyed (retired or revoked).
        activated: The key this store saw become current since its last pass.
    """

    created: tuple[str, ...] = ()
    withdrawn: tuple[str, ...] = ()
    retirements: tuple[str, ...] = ()
    destroyed: tuple[str, ...] = ()
    activated: str | None = None

    @property
    def changed(self) -> bool:
        """Whether the pass wrote to the database."""
        return bool(self.created or self.withdrawn or self.retirements or self.destroyed)


@dataclass
class Changes:
    """What a transaction changed; applied to caches and the audit trail after it commits."""

    inserted: list[SigningKey] = field(default_factory=list)
    withdrawn: list[str] = field(default_factory=list)
    retirements: list[str] = field(default_factory=list)
    destroyed: list[str] = field(default_factory=list)
    revoked: list[str] = field(default_factory=list)
    events: list[Event] = field(default_factory=list)

    @property
    def created(self) -> list[str]:
        return [key.kid for key in self.inserted]

    @property
    def changed(self) -> bool:
        return bool(
            self.inserted or self.withdrawn or self.retirements or self.destroyed or self.revoked
        )

    def report(self, activated: str | None = None) -> MaintenanceReport:
        return MaintenanceReport(
            created=tuple(self.created),
            withdrawn=tuple(self.withdrawn),
            retirements=tuple(self.retirements),
            destroyed=tuple(self.destroyed),
            activated=activated,
        )

    @property
    def gone(self) -> list[str]:
        """Kids whose private key no longer exists: drop them from memory."""
        return [*self.withdrawn, *self.destroyed, *self.revoked]


class KeyWriter:
    """The key changes of one locked transaction."""

    def __init__(
        self,
        conn: sa.Connection,
        *,
        now: float,
        lifecycle: KeyLifecycle,
        usable: Callable[[str], bool],
        destroy: Callable[[str], bool],
    ) -> None:
        """Start the changes of one transaction.

        Args:
            conn: The transaction (holding the replicas' lock).
            now: Its time, epoch seconds.
            lifecycle: Sets retirement times.
            usable: Whether a key loads (a *next* key that does not is withdrawn).
            destroy: Destroys a key's private key where it lives outside its row
                (a token object); False if that failed and must be retried.
        """
        self.conn = conn
        self.now = now
        self.changes = Changes()
        self._lifecycle = lifecycle
        self._usable = usable
        self._destroy = destroy

    def live(self) -> list[KeyRecord]:
        return keyrows.select_live(self.conn, self.now)

    def rotate(self, new: NewKey, activates_at: float, reason: str) -> str:
        """Add a key that signs from ``activates_at`` (at once if no key signs now)."""
        now = self.now
        records = self.live()
        if pick_current(records, now) is None:
            activates_at = now
        for record in records:
            if record.activates_at > activates_at:
                self.withdraw(record, "superseded")
        replaced = pick_current(self.live(), activates_at)
        if replaced is not None and (
            replaced.deactivated_at is None or replaced.deactivated_at > activates_at
        ):
            self.deactivate(replaced.kid, activates_at)
        key, algorithm = new.key, new.key.algorithm
        values = keyrows.new_row(new, created_at=now, activates_at=activates_at)
        self.conn.execute(signing_keys.insert().values(**values))
        self.changes.inserted.append(key)
        replaces = None if replaced is None else replaced.kid
        self.changes.events.append(
            (
                "key.created",
                {
                    "kid": key.kid,
                    "algorithm": algorithm,
                    "activates_at": activates_at,
                    "reason": reason,
                    "replaces": replaces,
                },
            )
        )
        _LOGGER.info(
            "new signing key %s (%s, %s) activates at %.0f, replacing %s",
            key.kid,
            algorithm,
            reason,
            activates_at,
            replaces or "none",
        )
        return key.kid

    def revoke(self, record: KeyRecord) -> None:
        """Revoke a key and destroy its private key (the caller replaces a current one)."""
        keyrows.update(self.conn, record.kid, revoked_at=self.now)
        self._forget(record.kid)
        self._splice(record)
        self.changes.revoked.append(record.kid)

    def deactivate(self, kid: str, at: float | None) -> None:
        """Set when ``kid`` stops signing (``None``: not decided) and so when it retires."""
        retires_at = None if at is None else at + self._lifecycle.retire_after
        keyrows.update(self.conn, kid, deactivated_at=at, retires_at=retires_at)

    def withdraw(self, record: KeyRecord, why: str) -> None:
        """Retire a *next* key at once: it never signed, so no token needs it."""
        kid = record.kid
        keyrows.update(self.conn, kid, retires_at=self.now)
        self._forget(kid)
        self._splice(record)
        self.changes.withdrawn.append(kid)
        self.changes.events.append(
            ("key.retired", {"kid": kid, "algorithm": record.algorithm, "reason": why})
        )
        log = _LOGGER.error if why == "unusable" else _LOGGER.info
        log("withdrew next signing key %s before it signed (%s)", kid, why)

    def promote(self) -> str | None:
        """Make the earliest usable *next* key sign now; its kid, or ``None`` if there is none.

        Verifiers already hold a next key, so after an emergency revocation the
        tokens it signs verify everywhere at once.
        """
        pending = sorted(
            (r for r in self.live() if r.activates_at > self.now), key=activation_order
        )
        for record in pending:
            if not self._usable(record.kid):
                self.withdraw(record, "unusable")
                continue
            keyrows.update(self.conn, record.kid, activates_at=self.now)
            self.changes.events.append(
                ("key.activated", {"kid": record.kid, "algorithm": record.algorithm})
            )
            return record.kid
        return None

    def extend_retirement(self, kid: str, retires_at: float) -> None:
        keyrows.update(self.conn, kid, retires_at=retires_at)
        self.changes.retirements.append(kid)

    def destroy(self, record: KeyRecord) -> None:
        """Destroy the private key of a retired (or revoked) key; its public row stays."""
        kid = record.kid
        if not self._forget(kid):
            return  # retried at the next pass: the row still says it has a private key
        self.changes.destroyed.append(kid)
        if record.revoked_at is None:
            self.changes.events.append(
                (
                    "key.retired",
                    {"kid": kid, "algorithm": record.algorithm, "reason": "expired"},
                )
            )
        _LOGGER.info("destroyed the private key of retired signing key %s", kid)

    def _forget(self, kid: str) -> bool:
        # A token's object is destroyed before the row forgets it: if the token does
        # not answer, the row keeps its reference, is_spent stays true and the next
        # maintenance pass tries again.
        if not self._destroy(kid):
            return False
        keyrows.update(self.conn, kid, private_key=keyrows.DESTROYED)
        return True

    def _splice(self, removed: KeyRecord) -> None:
        # A key that never signed leaves the chain: the key it was to replace
        # signs on until that key's own successor (if any) takes over.
        if removed.activates_at <= self.now:
            return
        for record in self.live():
            if record.kid != removed.kid and (record.deactivated_at == removed.activates_at):
                self.deactivate(record.kid, removed.deactivated_at)
