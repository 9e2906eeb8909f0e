"""Keeps the published key set current and wakes every WatchJwks stream when it changes."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import AsyncIterator

from auth_server.authority import JwksSnapshot
from auth_server.broadcast import PolledBroadcaster

_LOGGER = logging.getLogger(__name__)


class JwksPublisher(PolledBroadcaster[JwksSnapshot]):
    """The one place the server's gRPC and HTTP faces read the key set from.

    Key changes can come from this process, from ``ssot-auth keys ...`` run
    beside it, or from another replica sharing the database, so the set is
    re-read from storage every ``poll_interval`` seconds (one small query:
    an emergency revocation reaches ``WatchJwks`` subscribers well within a
    second); ``refresh()`` reads at once, and ``request_refresh()`` asks for
    that from any thread (the key store calls it after its own changes).
    """

    what = "key set"

    @property
    def snapshot(self) -> JwksSnapshot:
        """The key set as last read."""
        return self.value

    def _is_news(self, before: JwksSnapshot, after: JwksSnapshot) -> bool:
        # Same keys: only the schedule (HTTP max-age) may have moved, which the
        # HTTP face reads from the snapshot; a push would tell verifiers nothing.
        return after.etag != before.etag

    def _announce(self, value: JwksSnapshot) -> None:
        _LOGGER.info("key set changed etag=%s keys=%d", value.etag, len(value.keys))

    async def watch(self) -> AsyncIterator[JwksSnapshot]:
        """Yield the current set, then every new one until the publisher stops."""
        # aclosing: a stream that ends stops following at once, not when collected.
        async with contextlib.aclosing(self.updates()) as updates:
            async for _, snapshot in updates:
                yield snapshot
