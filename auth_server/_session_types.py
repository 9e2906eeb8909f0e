"""What :class:`auth_server.sessions.SessionStore` hands back: plain, frozen results.

Private to :mod:`auth_server.sessions`, which re-exports them; none holds a
stored token hash, and the ones that carry a refresh token keep it out of
their ``repr``.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, kw_only=True)
class SessionTerms:
    """What a session was granted at login: a refresh may ask for no more.

    Attributes:
        scope: The scopes granted at login.
        audience: The ``aud`` chosen at login; None for the server's default.
    """

    scope: tuple[str, ...]
    audience: str | None


@dataclass(frozen=True, kw_only=True)
class NewSession:
    """A session just created.

    Attributes:
        session_id: The session id, the access token's ``sid`` claim.
        refresh_token: The opaque refresh token; handed to the client once,
            never stored or logged.
        expires_at: When the session ends at the latest, epoch seconds.
        issued_at: The time its first access token must carry as ``iat``.
        ended: Sessions of the same user this login ended (the per-user limit).
    """

    session_id: str
    refresh_token: str
    expires_at: float
    issued_at: float = 0.0
    ended: tuple[str, ...] = ()

    def __repr__(self) -> str:
        return f"NewSession(session_id={self.session_id!r}, expires_at={self.expires_at!r})"


@dataclass(frozen=True, kw_only=True)
class Rotation:
    """The result of a successful refresh.

    Attributes:
        session_id: The session refreshed.
        user_id: Its user.
        scope: The scopes granted at login.
        refresh_token: The successor refresh token (never log it).
        issued_at: The time the new access token must carry as ``iat``.
        repeated: This was a repeat within the grace window (same successor again).
        cert_thumbprint: The certificate the session is bound to, or None.
        audience: The ``aud`` chosen at login (RFC 8707), which its refreshes keep;
            None for the server's default.
    """

    session_id: str
    user_id: str
    scope: tuple[str, ...]
    refresh_token: str
    issued_at: float
    repeated: bool
    cert_thumbprint: str | None = None
    audience: str | None = None

    def __repr__(self) -> str:
        return f"Rotation(session_id={self.session_id!r}, repeated={self.repeated!r})"


@dataclass(frozen=True, kw_only=True)
class EndedSession:
    """A session that :meth:`SessionStore.logout` ended (or found already ended)."""

    session_id: str
    user_id: str
    already_ended: bool


@dataclass(frozen=True, kw_only=True)
class SessionInfo:
    """A session as ``ssot-auth sessions list`` shows it (no token material).

    Attributes:
        state: ``"active"``, ``"revoked"`` or ``"expired"``.
        ends_at: When it ends unless refreshed first (the idle or absolute end).
    """

    session_id: str
    user_id: str
    state: str
    created_at: float
    last_used_at: float
    ends_at: float
    revoked_at: float | None
    revoke_reason: str | None
