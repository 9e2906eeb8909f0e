"""Throttling of failed client authentication: per client + address, and per address.

The counters share the login throttle's table (so one purge keeps both small and
every replica sees them), under their own layer names. Unlike a password login,
a client credential is a 256-bit secret or a signature, so parallel guesses gain
nothing: an attempt is only *checked* before the work (one read) and counted
when it fails. Unknown client ids are counted exactly like known ones.
"""

from __future__ import annotations

import hashlib
import logging
import time
from collections.abc import Callable

import sqlalchemy as sa

from auth_server.audit import audit_event
from auth_server.errors import ClientAuthThrottled
from auth_server.storage import Database, login_throttle
from auth_server.throttle import ThrottlePolicy

_LOGGER = logging.getLogger(__name__)

_CLIENT_ADDRESS = "client_address"
_ADDRESS = "client_auth_address"


def _key(layer: str, *parts: str) -> str:
    return hashlib.sha256("\x00".join((layer, *parts)).encode("utf-8", "surrogatepass")).hexdigest()


class ClientThrottle:
    """Refuses client authentication from a client+address (or address) that failed too often."""

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

    def _keys(self, client_id: str, address: str) -> dict[str, str]:
        return {
            _CLIENT_ADDRESS: _key(_CLIENT_ADDRESS, client_id, address),
            _ADDRESS: _key(_ADDRESS, address),
        }

    def check(self, client_id: str, address: str) -> None:
        """Raise if this client id from this address may not try now (one read).

        Raises:
            ClientAuthThrottled: Too many recent failures; ``retry_after`` says when.
            StorageError: The database is unavailable.
        """
        if not self.policy.enabled:
            return
        keys = self._keys(client_id, address)
        limits = {
            keys[_CLIENT_ADDRESS]: self.policy.per_user_address,
            keys[_ADDRESS]: self.policy.per_address,
        }
        with self._db.transaction() as conn:
            rows = conn.execute(
                sa.select(
                    login_throttle.c.key, login_throttle.c.failures, login_throttle.c.window_start
                ).where(login_throttle.c.key.in_(sorted(limits)))
            ).all()
        now = self._now()
        window = self.policy.window
        for key, failures, start in rows:
            if now - start < window and failures >= limits[key]:
                layer = _CLIENT_ADDRESS if key == keys[_CLIENT_ADDRESS] else _ADDRESS
                error = ClientAuthThrottled(start + window - now)
                _LOGGER.info("client authentication throttled (%s layer) from %s", layer, address)
                audit_event(
                    "client.throttled", layer=layer, address=address, retry_after=error.retry_after
                )
                raise error

    def failed(self, client_id: str, address: str) -> None:
        """Count a failed attempt.

        Raises:
            StorageError: The database is unavailable.
        """
        if not self.policy.enabled:
            return
        keys = sorted(self._keys(client_id, address).values())
        window = self.policy.window
        with self._db.transaction(write=True) as conn:
            now = self._now()
            self._db.insert_ignoring_duplicates(
                conn,
                login_throttle,
                [{"key": k, "failures": 0, "window_start": now, "updated_at": now} for k in keys],
            )
            for key in keys:
                expired = login_throttle.c.window_start <= now - window
                conn.execute(
                    login_throttle.update()
                    .where(login_throttle.c.key == key)
                    .values(
                        failures=sa.case((expired, 1), else_=login_throttle.c.failures + 1),
                        window_start=sa.case((expired, now), else_=login_throttle.c.window_start),
                        last_failure_at=now,
                        updated_at=now,
                    )
                )
