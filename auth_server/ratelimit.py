"""Per-address token buckets for the HTTP endpoints, in bounded memory.

The seed's advice to "limit JWKS endpoint requests", made general: each route
group (the well-known documents; the ``/oauth2/*`` token endpoints) has its own
bucket per client address. A bucket holds up to ``burst`` requests and refills
at ``rate`` per second; an empty one answers 429 with ``Retry-After`` (RFC 6585
§4, RFC 9110 §10.2.3), so a flood from one address never slows another.

Memory is bounded: at most ``max_addresses`` buckets are kept, least recently
used first out. Evicting a bucket forgets its debt, which only favours an
address that has been quiet longest, never one that is flooding (each of its
requests makes its bucket the most recent). IPv6 clients are counted by their
/64, the block one host usually gets, so a single host cannot mint fresh
addresses to escape its bucket. Buckets are per process: N replicas let an
address through N times as fast, and behind a reverse proxy every client
shares the proxy's address (limit there, or raise the limits).
"""

from __future__ import annotations

import ipaddress
import math
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

__all__ = ["RateLimit", "RateLimiter", "RateLimits", "client_key"]

_IPV6_PREFIX = 64


@dataclass(frozen=True, kw_only=True)
class RateLimit:
    """One route group's bucket size and refill rate, per client address.

    Attributes:
        rate: Requests per second an address may keep up; 0 turns the limit off.
        burst: Requests an idle address may make at once (the bucket's size).
    """

    rate: float
    burst: int

    def __post_init__(self) -> None:
        if not (math.isfinite(self.rate) and self.rate >= 0):
            raise ValueError("a rate limit must be a finite number >= 0 (0: no limit)")
        if isinstance(self.burst, bool) or not isinstance(self.burst, int) or self.burst < 1:
            raise ValueError("a rate limit's burst must be a positive integer")

    @property
    def enabled(self) -> bool:
        return self.rate > 0


def _default_groups() -> Mapping[str, RateLimit]:
    return {
        # Verifiers cache the key set for max-age: a healthy one asks a few times an hour.
        "documents": RateLimit(rate=10.0, burst=60),
        # Each token request authenticates a client and signs: dearer, and rarer.
        "token": RateLimit(rate=5.0, burst=20),
    }


@dataclass(frozen=True, kw_only=True)
class RateLimits:
    """The HTTP rate limits of the auth service.

    Attributes:
        groups: The limit of each route group (see :data:`ROUTE_GROUPS`).
        max_addresses: The most buckets kept at once (memory stays bounded
            whatever the number of client addresses).
    """

    groups: Mapping[str, RateLimit] = field(default_factory=_default_groups)
    max_addresses: int = 10_000

    def __post_init__(self) -> None:
        if isinstance(self.max_addresses, bool) or self.max_addresses < 1:
            raise ValueError("--http-rate-limit-addresses must be a positive integer")
        unknown = set(self.groups) - set(ROUTE_GROUPS.values())
        if unknown:
            raise ValueError(f"unknown rate-limit route groups {sorted(unknown)}")


#: Path prefix -> route group. By prefix, so endpoints added under them later
#: (RFC 8414 metadata, /oauth2/revoke, /oauth2/introspect) are limited too.
ROUTE_GROUPS: Mapping[str, str] = {
    "/.well-known/": "documents",
    "/oauth2/": "token",
}


def route_group(path: str) -> str | None:
    """The route group of a request path, or ``None`` for an unlimited path."""
    for prefix, group in ROUTE_GROUPS.items():
        if path.startswith(prefix):
            return group
    return None


def client_key(address: str | None) -> str:
    """What a client's requests are counted by: its IPv4 address or its IPv6 /64."""
    if not address:
        return "unknown"
    try:
        ip = ipaddress.ip_address(address.split("%", 1)[0])
    except ValueError:
        return address
    if isinstance(ip, ipaddress.IPv6Address):
        if ip.ipv4_mapped is not None:
            return str(ip.ipv4_mapped)
        return str(ipaddress.IPv6Network((ip, _IPV6_PREFIX), strict=False))
    return str(ip)


class RateLimiter:
    """Token buckets by (route group, client), least recently used evicted first; thread-safe."""

    def __init__(self, limits: RateLimits, *, clock: Callable[[], float] = time.monotonic) -> None:
        """Create the limiter.

        Args:
            limits: The limits per route group and the bucket budget.
            clock: Monotonic seconds (injectable for tests).
        """
        self._limits = limits
        self._clock = clock
        # (group, client) -> (tokens left, when they were counted)
        self._buckets: OrderedDict[tuple[str, str], tuple[float, float]] = OrderedDict()
        self._lock = threading.Lock()

    def __len__(self) -> int:
        with self._lock:
            return len(self._buckets)

    def check(self, group: str, client: str) -> float:
        """Take one request from the bucket; 0.0 if allowed, else seconds until one is.

        Unknown groups and disabled limits always allow.
        """
        limit = self._limits.groups.get(group)
        if limit is None or not limit.enabled:
            return 0.0
        key = (group, client)
        now = self._clock()
        with self._lock:
            tokens, counted_at = self._buckets.pop(key, (float(limit.burst), now))
            tokens = min(float(limit.burst), tokens + (now - counted_at) * limit.rate)
            if tokens >= 1.0:
                tokens -= 1.0
                wait = 0.0
            else:
                wait = (1.0 - tokens) / limit.rate
            self._buckets[key] = (tokens, now)  # most recently used: last out
            while len(self._buckets) > self._limits.max_addresses:
                self._buckets.popitem(last=False)
        return wait
