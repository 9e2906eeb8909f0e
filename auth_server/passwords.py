"""Password hashing with argon2id (argon2-cffi)."""

from __future__ import annotations

import secrets
import time
from dataclasses import dataclass

import argon2
from argon2.exceptions import InvalidHashError, VerificationError

from auth_server.audit import notify_listener

# Weight of the newest hash in PasswordHasher.cost.
_COST_SMOOTHING = 0.2


@dataclass(frozen=True, kw_only=True)
class Argon2Parameters:
    """Cost parameters of argon2id (RFC 9106).

    Attributes:
        time_cost: Number of passes over the memory.
        memory_cost: Memory in KiB.
        parallelism: Number of lanes.
    """

    time_cost: int = 3
    memory_cost: int = 65536
    parallelism: int = 1

    def __post_init__(self) -> None:
        for name in ("time_cost", "memory_cost", "parallelism"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool):
                raise TypeError(f"{name} must be an int")
        if self.time_cost < 1:
            raise ValueError("time_cost must be at least 1")
        if not 1 <= self.parallelism <= 255:
            raise ValueError("parallelism must be between 1 and 255")
        # Argon2 needs at least 8 KiB per lane.
        if self.memory_cost < 8 * self.parallelism:
            raise ValueError("memory_cost must be at least 8 KiB per lane")


class PasswordHasher:
    """Hashes and verifies passwords with argon2id; thread-safe.

    Attributes:
        params: The cost parameters of new hashes.
        cost: Seconds one hash or verification takes, a running average of the
            recent ones (seeded when the hasher is created); it follows the
            machine's load. It sizes the login pool's queue (auth_server.hashing).
    """

    def __init__(self, params: Argon2Parameters | None = None) -> None:
        """Create a hasher.

        Args:
            params: Cost parameters for new hashes; the defaults suit a server.
                Hashes made with other parameters still verify and are
                reported by :meth:`needs_rehash`.
        """
        self.params = params or Argon2Parameters()
        self._hasher = argon2.PasswordHasher(
            time_cost=self.params.time_cost,
            memory_cost=self.params.memory_cost,
            parallelism=self.params.parallelism,
            type=argon2.Type.ID,
        )
        # Verified against when the user does not exist, so that path costs
        # one full argon2 computation with the current parameters too.
        started = time.perf_counter()
        self._dummy_hash = self._hasher.hash(secrets.token_urlsafe(16))
        self.cost = max(time.perf_counter() - started, 1e-6)

    def _observe(self, started: float) -> None:
        # A plain float update: a lost one between threads only slows the average a little.
        took = time.perf_counter() - started
        self.cost = (1 - _COST_SMOOTHING) * self.cost + _COST_SMOOTHING * took
        notify_listener("password.hashed", seconds=took)

    def hash(self, password: str) -> str:
        """Return an encoded argon2id hash (PHC string) of ``password`` with a fresh salt."""
        started = time.perf_counter()
        try:
            result: str = self._hasher.hash(password)
        finally:
            self._observe(started)
        return result

    def verify(self, password_hash: str, password: str) -> bool:
        """Check ``password`` against ``password_hash``.

        Returns:
            True if it matches; False on a mismatch or an unparsable hash.
        """
        started = time.perf_counter()
        try:
            return bool(self._hasher.verify(password_hash, password))
        except (VerificationError, InvalidHashError):
            return False
        finally:
            self._observe(started)

    def needs_rehash(self, password_hash: str) -> bool:
        """Tell whether ``password_hash`` was made with parameters other than this hasher's.

        An unparsable hash needs replacing too, so it returns True for it.
        """
        try:
            return bool(self._hasher.check_needs_rehash(password_hash))
        except (InvalidHashError, ValueError):
            return True

    def dummy_verify(self, password: str) -> None:
        """Spend the time of one verification without a real hash (for unknown users)."""
        self.verify(self._dummy_hash, password)
