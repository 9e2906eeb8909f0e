"""Keep a push stream open: reopen it with backoff whenever it ends, until told to stop.

Shared by the key cache's ``WatchJwks`` follower and the revocation list's
``WatchRevocations`` follower, so both back off, reset and log alike.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable

# (delivered anything, why it ended), or None to stop following for good.
FollowOnce = Callable[[bool], "tuple[bool, str] | None"]


def follow_with_backoff(
    follow_once: FollowOnce,
    closing: threading.Event,
    *,
    what: str,
    initial: float,
    maximum: float,
    logger: logging.Logger,
) -> None:
    """Call ``follow_once(reconnecting)`` until ``closing`` is set or it returns None.

    Between calls wait ``initial`` seconds, doubling up to ``maximum``; a stream
    that delivered anything resets the delay. The first failure of an outage is
    a warning, the rest debug lines, so a long outage does not flood the log.
    """
    delay = initial
    quiet = False
    reconnecting = False
    while not closing.is_set():
        outcome = follow_once(reconnecting)
        if outcome is None:
            return
        delivered, problem = outcome
        reconnecting = True
        if delivered:
            delay, quiet = initial, False
        if closing.is_set():
            return
        log = logger.debug if quiet else logger.warning
        log("%s %s; reconnecting in %.1f s", what, problem, delay)
        quiet = True
        if closing.wait(delay):
            return
        delay = min(delay * 2, maximum)
