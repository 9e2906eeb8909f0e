"""How a :class:`~interceptors.KeyCache` is configured, and what it counts.

Plain values, apart from the cache that uses them: :class:`CacheSettings` is
validated on creation, :class:`CacheStats` is a snapshot taken under the cache's lock.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from interceptors._keyset import SUPPORTED_ALGORITHMS, check_algorithms
from interceptors._reconnect import RECONNECT_INITIAL, RECONNECT_MAX, check_reconnect


@dataclass(frozen=True, kw_only=True)
class CacheSettings:
    """How a :class:`KeyCache` fetches, trusts and ages the issuer's key set.

    Attributes:
        algorithms: The algorithms keys may verify (never HS* or ``none``).
        min_rsa_bits: The smallest RSA key accepted; a set with a smaller
            signature key is refused whole.
        cooldown: Seconds after any fetch attempt during which an unknown
            ``kid`` does not cause another fetch.
        default_max_age: The set's lifetime when the source gives no hint.
        min_max_age: The shortest lifetime honoured.
        max_max_age: The longest finite lifetime honoured.
        stale_for: How long past its expiry the last good set is still
            served while the source cannot be reached.
        fetch_timeout: The deadline of one fetch, and the longest a lookup waits.
        refresh_ratio: The fraction of the lifetime after which the set is
            refreshed in the background.
        missing_kid_memory: How many ``kid``s found missing are remembered.
        reconnect_initial: First delay before reopening a broken push stream,
            real seconds (doubling from there).
        reconnect_max: Longest such delay, real seconds.

    Raises:
        ValueError: A setting is out of range.
    """

    algorithms: frozenset[str] = SUPPORTED_ALGORITHMS
    min_rsa_bits: int = 2048
    cooldown: float = 30.0
    default_max_age: float = 300.0
    min_max_age: float = 1.0
    max_max_age: float = 86400.0
    stale_for: float = 3600.0
    fetch_timeout: float = 3.0
    refresh_ratio: float = 0.8
    missing_kid_memory: int = 4096
    reconnect_initial: float = RECONNECT_INITIAL
    reconnect_max: float = RECONNECT_MAX

    def __post_init__(self) -> None:
        object.__setattr__(self, "algorithms", check_algorithms(self.algorithms))
        _require(self.min_rsa_bits > 0, "min_rsa_bits must be positive")
        _require(self.cooldown >= 0, "cooldown must not be negative")
        _require(0 < self.min_max_age <= self.max_max_age, "need 0 < min_max_age <= max_max_age")
        _require(self.default_max_age > 0, "default_max_age must be positive")
        _require(self.stale_for >= 0, "stale_for must not be negative")
        _require(0 < self.fetch_timeout < math.inf, "fetch_timeout must be positive and finite")
        _require(0 < self.refresh_ratio <= 1, "refresh_ratio must be in (0, 1]")
        _require(self.missing_kid_memory >= 0, "missing_kid_memory must not be negative")
        check_reconnect(self.reconnect_initial, self.reconnect_max)


@dataclass(frozen=True, slots=True, kw_only=True)
class CacheStats:
    """Counters of a :class:`KeyCache`.

    Attributes:
        fetches: Fetch attempts completed, successful or not.
        fetch_failures: Fetch attempts that failed (including refused documents).
        pushes: Key sets applied from the push stream.
        stale_serves: Lookups answered from a set past its expiry.
        last_success: Clock time of the last set loaded (fetched or pushed), or ``None``.
        suppressed_refetches: Unknown-kid lookups refused without a fetch because the
            cooldown (or the memory of missing kids) holds the refetch back.
    """

    fetches: int
    fetch_failures: int
    pushes: int
    stale_serves: int
    last_success: float | None
    suppressed_refetches: int = 0


def _require(condition: bool, message: str) -> None:
    if not condition:
        raise ValueError(message)
