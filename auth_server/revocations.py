"""Keeps the revocation list current and pushes it to every WatchRevocations stream.

Sessions are revoked by this process (Logout, a reused refresh token), by
``ssot-auth sessions revoke`` / ``users disable`` run beside it, or by another
replica sharing the database. So the list is re-read every ``poll_interval``
seconds (one indexed query), and :meth:`RevocationPublisher.refresh` re-reads
it at once after a local revocation, before the RPC that caused it returns
(the polling and waking is :class:`auth_server.broadcast.PolledBroadcaster`).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass

from auth_server.broadcast import PolledBroadcaster


@dataclass(frozen=True, slots=True)
class RevocationBatch:
    """One message of a WatchRevocations stream.

    Attributes:
        full: The whole list (replaces what the verifier holds) or only new entries.
        sessions: ``{session id: exp of its last access token}``.
    """

    full: bool
    sessions: Mapping[str, float]


class RevocationPublisher(PolledBroadcaster[dict[str, float]]):
    """The revoked-session list, loaded from storage and pushed to watchers.

    The list maps a session id to the ``exp`` of its last access token; each
    watcher gets the whole list first, then only what is new.
    """

    what = "revocation list"

    @property
    def current(self) -> Mapping[str, float]:
        """The list as last read."""
        return self.value

    async def watch(self) -> AsyncIterator[RevocationBatch]:
        """Yield the full list, then each batch of newly revoked sessions, until stopped."""
        async for sent, current in self.updates():
            if sent is None:
                yield RevocationBatch(full=True, sessions=dict(current))
            elif new := _new_since(sent, current):
                yield RevocationBatch(full=False, sessions=new)


def _new_since(sent: Mapping[str, float], current: Mapping[str, float]) -> dict[str, float]:
    # What changed since this watcher's last message, found by comparing whole
    # lists; an incremental read (a cursor over revocations) would hand it over.
    return {sid: exp for sid, exp in current.items() if sent.get(sid, -1.0) < exp}
