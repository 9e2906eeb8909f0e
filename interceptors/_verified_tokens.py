"""The verifier's memory of tokens it has verified: a bounded LRU of exact token strings.

A token is remembered from its second successful check on (the first is only
noted), until its ``exp``; an entry serves only the exact string that verified,
and entries signed by a key are dropped the moment that key leaves the set.
Lookups and inserts take no lock: each operation on the dict is one C call,
atomic under the GIL (the comments in :meth:`VerifiedTokens.lookup`,
:meth:`VerifiedTokens.remember` and :meth:`VerifiedTokens.forget_kids` name the races).
"""

from __future__ import annotations

import logging
import threading
from collections import OrderedDict
from collections.abc import Callable
from typing import Final, NamedTuple

from interceptors._claims import Principal

# Logged under the verifier's name, as before this class had a module of its own.
_LOGGER = logging.getLogger("interceptors._verify")


# The verified-token cache is keyed by the token's last characters, not by the whole
# token: hashing a ~700-character string is 2k instructions on every lookup (the
# string is new on every call, so its hash is never cached), 32 characters about 100.
# They are signature characters (192 bits of it). An entry holds its whole token and
# serves only that exact string; two tokens sharing a tail can only displace each
# other's entry, and only a token that verified is ever stored.
_KEY_START: Final = -32


class _Entry(NamedTuple):
    """A verified token in the cache, with the window in which it may be reused."""

    principal: Principal
    not_before: float
    expires: float
    kid: str
    token: str


class VerifiedTokens:
    """What :class:`~interceptors.TokenVerifier` proved, by token; thread-safe.

    Attributes:
        hits: Lookups served, for metrics (counted without a lock, so an interpreter
            that switched threads inside ``+= 1`` could lose a count).
        misses: Lookups not served, likewise.
        removals: How many times keys left the set; a check that saw it change
            while it ran does not keep its entry.
    """

    def __init__(self, size: int, now: Callable[[], float]) -> None:
        """Remember up to ``size`` tokens (0: none), aged by the clock ``now``."""
        self._size = size
        self._now = now
        self._entries: OrderedDict[str, _Entry] = OrderedDict()
        self._lock = threading.Lock()
        self.removals = 0
        # The cache keys of tokens verified once (a token is remembered from its second
        # successful check on), cleared when it reaches size.
        self._seen: set[str] = set()
        self.hits = 0
        self.misses = 0

    def lookup(self, token: str) -> Principal | None:
        """The principal ``token`` proved, if it is remembered and inside its window."""
        if not self._size or not isinstance(token, str):
            return None
        key = token[_KEY_START:]
        cache = self._entries
        entry = cache.get(key)
        if entry is None or entry[4] != token:
            self.misses += 1
            return None
        now = self._now()
        if entry[1] <= now < entry[2]:
            # try, not contextlib.suppress: entering a context manager is a Python call.
            try:  # noqa: SIM105
                cache.move_to_end(key)
            except KeyError:  # evicted or dropped meanwhile: served once more, as if first
                pass
            self.hits += 1
            return entry[0]
        # Outside its window: dropped (if another thread has just put a fresh entry
        # under this key, that one goes too, and its token is checked again).
        cache.pop(key, None)
        self.misses += 1
        return None

    def remember(
        self,
        token: str,
        principal: Principal,
        not_before: float,
        expires: float,
        kid: str,
        removals: int,
    ) -> None:
        """Note ``token`` as verified (remembered from its second success on).

        ``removals`` is :attr:`removals` as read before the key was fetched.
        """
        key = token[_KEY_START:]
        seen = self._seen
        if key not in seen:
            # First success: only noted. Most tokens a server sees more than once it
            # sees many times; one seen once (a token per call) would cost an entry,
            # an eviction and the collector's walks over it, and never pay them back.
            if len(seen) >= self._size:
                seen.clear()
            seen.add(key)
            return
        # tuple.__new__: the NamedTuple's keyword __new__ is a Python call of its own.
        entry = tuple.__new__(_Entry, (principal, not_before, expires, kid, token))
        cache = self._entries
        cache[key] = entry
        # One entry added at most, so one eviction at most (two threads inserting at
        # once may evict two: a lost entry, not a wrong one).
        if len(cache) > self._size:
            try:  # noqa: SIM105 -- see lookup
                cache.popitem(last=False)
            except KeyError:  # emptied meanwhile
                pass
        # A key left the set while this token was being checked: it may be that key.
        # Tested after the insert, so forget_kids (which counts before it looks)
        # either sees this entry or is seen here, and the entry is withdrawn.
        if removals != self.removals and cache.get(key) is entry:
            cache.pop(key, None)

    def forget_kids(self, kids: frozenset[str]) -> None:
        """Drop every token signed by one of ``kids`` (a key-removal listener)."""
        with self._lock:
            self.removals += 1
            # One C call copies the entries, so concurrent inserts cannot disturb it.
            entries = list(self._entries.items())
            stale = [key for key, entry in entries if entry.kid in kids]
            for key in stale:
                self._entries.pop(key, None)
        if stale:
            _LOGGER.info("dropped %d cached tokens signed by removed keys", len(stale))
