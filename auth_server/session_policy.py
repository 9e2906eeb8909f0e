"""Session rules, free of storage: how long sessions live, what a presented refresh token means.

:class:`auth_server.sessions.SessionStore` reads the rows and carries out the
verdict of :func:`classify_refresh` inside its transaction; keeping the
decision here lets it be tested as a table, without a database.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal, TypeAlias

DEFAULT_SESSION_TTL = 30 * 86400.0
DEFAULT_IDLE_TTL = 7 * 86400.0
DEFAULT_REFRESH_GRACE = 20.0
DEFAULT_MAX_SESSIONS_PER_USER = 50
#: The longest access-token lifetime the server accepts (``--access-token-ttl``): a
#: watermark for every subject outlives every token it refuses once kept this long.
MAX_ACCESS_TOKEN_TTL = 86400


@dataclass(frozen=True, kw_only=True)
class SessionPolicy:
    """How long sessions live and how refresh tokens may be reused.

    Attributes:
        max_lifetime: Absolute session lifetime in seconds, however often it is refreshed.
        idle_timeout: A session not refreshed for this many seconds ends.
        refresh_grace: Seconds after a refresh token is spent during which
            presenting it again returns the same successor instead of revoking.
        max_per_user: Live sessions a user may hold; a new login ends the oldest.
    """

    max_lifetime: float = DEFAULT_SESSION_TTL
    idle_timeout: float = DEFAULT_IDLE_TTL
    refresh_grace: float = DEFAULT_REFRESH_GRACE
    max_per_user: int = DEFAULT_MAX_SESSIONS_PER_USER

    def __post_init__(self) -> None:
        for name in ("max_lifetime", "idle_timeout"):
            value = getattr(self, name)
            if not (math.isfinite(value) and value > 0):
                raise ValueError(f"session {name} must be a positive number of seconds")
        if not (math.isfinite(self.refresh_grace) and 0 <= self.refresh_grace <= 300):
            raise ValueError("refresh grace must be between 0 and 300 seconds")
        if isinstance(self.max_per_user, bool) or not 1 <= self.max_per_user <= 100_000:
            raise ValueError("max sessions per user must be between 1 and 100000")


RefreshVerdict: TypeAlias = Literal["spend", "repeat", "reuse"]


def classify_refresh(
    *,
    current_hash: str,
    token_hash: str,
    successor_hash: str,
    spent_at: float | None,
    now: float,
    grace: float,
) -> RefreshVerdict:
    """Decide what presenting a refresh token to a live session means.

    Args:
        current_hash: The hash of the session's one spendable token now.
        token_hash: The hash of the token presented.
        successor_hash: The hash of the presented token's derived successor.
        spent_at: When the presented token was spent, if it was.
        now: The time of the request.
        grace: :attr:`SessionPolicy.refresh_grace`.

    Returns:
        ``"spend"``: it is the current token; spend it, hand out its successor.
        ``"repeat"``: it was spent within ``grace`` and its successor is still
        unspent (a racing or retrying client, Zitadel#9631); hand out the same
        successor again. ``"reuse"``: anything else, a spent token coming back
        (RFC 9700 §4.14): revoke the session.
    """
    if current_hash == token_hash:
        return "spend"
    # A repeat only while its successor is still the one to spend: once
    # the client has moved on, the old token coming back is a thief's.
    if spent_at is not None and now - spent_at <= grace and current_hash == successor_hash:
        return "repeat"
    return "reuse"
