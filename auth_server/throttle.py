"""Login throttling: layered failure counters in the database, checked before any password hashing.

Three layers, each a fixed window of failed attempts (shared by every replica,
since the counters live in the database):

* **user + address**: a few failures, then that address waits for the window
  to end before it may try that user again;
* **address**: many failures across any usernames (password spraying), then
  the address waits for the window to end;
* **user**: soft. Past a threshold each further attempt for that user waits a
  delay that doubles up to ``max_delay``; never a lockout, and an address that
  logged in as that user before is exempt, so an attacker cannot keep a victim
  out.

An attempt counts as a failure the moment it is admitted (so parallel guesses
cannot slip past the check) and is taken back if the password was right.
Unknown usernames are counted exactly like known ones: the answers never tell
whether an account exists.
"""

from __future__ import annotations

import hashlib
import ipaddress
import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import sqlalchemy as sa

from auth_server.audit import audit_event
from auth_server.errors import LoginThrottled
from auth_server.storage import Database, login_throttle

_LOGGER = logging.getLogger(__name__)

_USER_ADDRESS = "user_address"
_ADDRESS = "address"
_USER = "user"


@dataclass(frozen=True, kw_only=True)
class ThrottlePolicy:
    """Thresholds of the three layers.

    Attributes:
        window: Length of each counting window, seconds.
        per_user_address: Failures per window for one user from one address.
        per_address: Failures per window from one address, any users.
        per_user: Failures per window for one user after which each attempt
            waits a growing delay (1 s, 2 s, 4 s ... up to ``max_delay``).
        max_delay: The longest per-user delay, seconds.
        known_address_ttl: How long an address that logged in as a user stays
            exempt from that user's delay, seconds.
        enabled: False turns throttling off (tests, benchmarks).
    """

    window: float = 900.0
    per_user_address: int = 10
    per_address: int = 100
    per_user: int = 20
    max_delay: float = 60.0
    known_address_ttl: float = 30 * 86400.0
    enabled: bool = True

    def __post_init__(self) -> None:
        for name in ("window", "max_delay", "known_address_ttl"):
            value = getattr(self, name)
            if not (math.isfinite(value) and value > 0):
                raise ValueError(f"throttle {name} must be a positive number of seconds")
        for name in ("per_user_address", "per_address", "per_user"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"throttle {name} must be a positive integer")


@dataclass(frozen=True, kw_only=True)
class Attempt:
    """An admitted login attempt, counted as a failure until :meth:`LoginThrottle.succeeded`."""

    keys: dict[str, str] = field(repr=False)  # layer -> counter key
    address: str
    counted: frozenset[str] = frozenset()  # the layers whose counters admit() raised


def client_address(peer: str) -> str:
    """The throttling subject for a gRPC peer string (``context.peer()``).

    ``ipv4:203.0.113.7:51234`` gives ``203.0.113.7``; an IPv6 peer gives its
    /64 network, since one host commonly holds a whole /64; anything else
    (``unix:...``) is kept as it is.
    """
    kind, _, rest = peer.partition(":")
    try:
        if kind == "ipv4":
            return str(ipaddress.IPv4Address(rest.rpartition(":")[0]))
        if kind == "ipv6":
            host = rest.rpartition(":")[0].strip("[]").split("%", 1)[0]
            ip = ipaddress.IPv6Address(host)
            if ip.ipv4_mapped is not None:
                return str(ip.ipv4_mapped)
            return str(ipaddress.IPv6Network((ip, 64), strict=False))
    except ValueError:
        pass
    return peer


def _key(layer: str, *parts: str) -> str:
    return hashlib.sha256("\x00".join((layer, *parts)).encode("utf-8", "surrogatepass")).hexdigest()


class LoginThrottle:
    """Admits or refuses login attempts by their failure counters; thread-safe."""

    def __init__(
        self,
        db: Database,
        policy: ThrottlePolicy | None = None,
        *,
        now: Callable[[], float] = time.time,
    ) -> None:
        self._db = db
        self.policy = policy or ThrottlePolicy()
        self._now = now

    def admit(self, username: str, address: str) -> Attempt:
        """Admit an attempt (counting it as a failure for now) or refuse it.

        Call before the password is checked; call :meth:`succeeded` if it was right.

        Raises:
            LoginThrottled: A layer's limit is reached; ``retry_after`` says when to retry.
            StorageError: The database is unavailable.
        """
        keys = {
            _USER_ADDRESS: _key(_USER_ADDRESS, username, address),
            _ADDRESS: _key(_ADDRESS, address),
            _USER: _key(_USER, username),
        }
        if not self.policy.enabled:
            return Attempt(keys=keys, address=address)
        policy = self.policy
        ordered = sorted(keys.values())  # one lock order for every transaction: no deadlocks
        with self._db.transaction(write=True) as conn:
            now = self._now()
            self._db.insert_ignoring_duplicates(
                conn,
                login_throttle,
                [
                    {"key": k, "failures": 0, "window_start": now, "updated_at": now}
                    for k in ordered
                ],
            )
            rows = conn.execute(
                sa.select(login_throttle)
                .where(login_throttle.c.key.in_(ordered))
                .order_by(login_throttle.c.key)
                .with_for_update()
            ).all()
            state = {row.key: _Counter.of(row, now, policy.window) for row in rows}
            pair = state[keys[_USER_ADDRESS]]
            known = (
                pair.succeeded_at is not None and now - pair.succeeded_at < policy.known_address_ttl
            )
            layer, retry_after = self._verdict(
                pair, state[keys[_ADDRESS]], state[keys[_USER]], now, known=known
            )
            # An address that logged in as the user before is outside the user layer.
            counted = frozenset(k for k in keys if not (known and k == _USER))
            if layer is None:
                for key in sorted(keys[k] for k in counted):
                    counter = state[key]
                    conn.execute(
                        login_throttle.update()
                        .where(login_throttle.c.key == key)
                        .values(
                            failures=counter.failures + 1,
                            window_start=counter.window_start,
                            last_failure_at=now,
                            updated_at=now,
                        )
                    )
        if layer is not None:
            error = LoginThrottled(retry_after)
            _LOGGER.info("login throttled (%s layer) from %s", layer, address)
            audit_event(
                "login.throttled", layer=layer, address=address, retry_after=error.retry_after
            )
            raise error
        return Attempt(keys=keys, address=address, counted=counted)

    def check(self, username: str, address: str) -> None:
        """Refuse if :meth:`admit` would, without counting anything (one read, no write).

        For checks where a failure cannot be a guess at a secret (a forged or stale
        ID token): the caller counts only real failures, with :meth:`admit`, so an
        honest request costs a read instead of two writes.

        Raises:
            LoginThrottled: A layer's limit is reached.
            StorageError: The database is unavailable.
        """
        if not self.policy.enabled:
            return
        policy = self.policy
        keys = {
            _USER_ADDRESS: _key(_USER_ADDRESS, username, address),
            _ADDRESS: _key(_ADDRESS, address),
            _USER: _key(_USER, username),
        }
        with self._db.transaction() as conn:
            now = self._now()
            rows = conn.execute(
                sa.select(login_throttle).where(login_throttle.c.key.in_(keys.values()))
            ).all()
        found = {row.key: _Counter.of(row, now, policy.window) for row in rows}
        empty = _Counter(0, now, None, None)
        pair, by_address, user = (
            found.get(keys[k], empty) for k in (_USER_ADDRESS, _ADDRESS, _USER)
        )
        known = pair.succeeded_at is not None and now - pair.succeeded_at < policy.known_address_ttl
        layer, retry_after = self._verdict(pair, by_address, user, now, known=known)
        if layer is not None:
            _LOGGER.info("attempt throttled (%s layer) from %s", layer, address)
            raise LoginThrottled(retry_after)

    def succeeded(self, attempt: Attempt) -> None:
        """Take back the failure :meth:`admit` counted; the address becomes known for the user.

        Raises:
            StorageError: The database is unavailable.
        """
        if not self.policy.enabled:
            return
        ordered = sorted(
            ((layer, key) for layer, key in attempt.keys.items() if layer in attempt.counted),
            key=lambda item: item[1],
        )
        with self._db.transaction(write=True) as conn:
            now = self._now()
            for layer, key in ordered:
                if layer == _USER_ADDRESS:
                    values: dict[str, Any] = {"failures": 0, "succeeded_at": now}
                else:
                    values = {
                        "failures": sa.case(
                            (login_throttle.c.failures > 0, login_throttle.c.failures - 1),
                            else_=0,
                        )
                    }
                conn.execute(
                    login_throttle.update()
                    .where(login_throttle.c.key == key)
                    .values(updated_at=now, **values)
                )

    def purge(self) -> int:
        """Delete counters that no longer hold anything; return how many.

        Raises:
            StorageError: The database is unavailable.
        """
        policy = self.policy
        now = self._now()
        idle = now - policy.window - policy.max_delay
        known = now - policy.known_address_ttl
        with self._db.transaction(write=True) as conn:
            result = conn.execute(
                login_throttle.delete().where(
                    login_throttle.c.updated_at < idle,
                    sa.or_(
                        login_throttle.c.succeeded_at.is_(None),
                        login_throttle.c.succeeded_at < known,
                    ),
                )
            )
        return int(result.rowcount or 0)

    def _verdict(
        self, user_address: _Counter, address: _Counter, user: _Counter, now: float, *, known: bool
    ) -> tuple[str | None, float]:
        policy = self.policy
        if user_address.failures >= policy.per_user_address:
            return _USER_ADDRESS, user_address.window_start + policy.window - now
        if address.failures >= policy.per_address:
            return _ADDRESS, address.window_start + policy.window - now
        if not known and user.failures >= policy.per_user and user.last_failure_at is not None:
            excess = min(user.failures - policy.per_user, 30)
            delay = min(2.0**excess, policy.max_delay)
            if now < user.last_failure_at + delay:
                return _USER, user.last_failure_at + delay - now
        return None, 0.0


@dataclass(frozen=True, slots=True)
class _Counter:
    failures: int
    window_start: float
    last_failure_at: float | None
    succeeded_at: float | None

    @classmethod
    def of(cls, row: Any, now: float, window: float) -> _Counter:
        if now - row.window_start >= window or now < row.window_start - window:
            # The window is over (or the row is from a clock far ahead): start a new one.
            return cls(0, now, row.last_failure_at, row.succeeded_at)
        return cls(
            int(row.failures), float(row.window_start), row.last_failure_at, row.succeeded_at
        )
