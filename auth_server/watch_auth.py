"""Who may follow the push streams ``WatchJwks`` and ``WatchRevocations`` (``--watch-auth``).

A push stream is the costly resource of the auth service: each one holds a
connection, a task and a place in every fan-out for as long as the subscriber
likes. ``GetJwks`` is not guarded: it answers what ``/.well-known/jwks.json``
publishes to anyone, in one message. The modes:

``none``
    Anyone who reaches the gRPC port may subscribe (the default, as before).
``mtls``
    The subscriber presents a client certificate that the server's ``--client-ca``
    verified. grpc (Python) cannot ask for an *optional* client certificate, so
    ``--client-ca`` makes every call on the gRPC port mutual TLS; the check here
    refuses a call that somehow arrives without one.
``token``
    The subscriber sends ``authorization: Bearer <token>``: an access token of this
    issuer (checked by :class:`~auth_server.token_inspector.TokenInspector`, the
    verifier's own code over the published keys and revocations; any audience)
    carrying the :data:`WATCH_SCOPE` scope, e.g. a service's client-credentials
    token (``ssot-auth clients add ID --scope ssot.watch ...``). A token bound to a
    client certificate (``cnf`` ``x5t#S256``, issued over mutual TLS) is accepted
    only on a connection presenting that certificate. The stream ends
    with ``UNAUTHENTICATED`` when the token expires, so no stream outlives its
    credential: the subscriber reconnects with a fresh token and receives the full
    revocation list again, so nothing revoked meanwhile is missed.

Refusals: ``UNAUTHENTICATED`` for a missing, malformed, invalid, revoked or
expired credential, ``PERMISSION_DENIED`` for a valid token without the scope.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import TypeVar

import grpc

from auth_server.errors import AuthServerError
from auth_server.token_inspector import TokenInspector
from interceptors import AuthError, CertificateMismatch
from interceptors._binding import check_cert_binding
from interceptors._server_interceptors import bearer_token

_LOGGER = logging.getLogger(__name__)
_T = TypeVar("_T")

WATCH_AUTH_MODES = ("none", "mtls", "token")
#: The scope a token needs to follow the push streams under ``--watch-auth token``.
WATCH_SCOPE = "ssot.watch"


class WatchUnauthenticated(AuthServerError):
    """No usable credential for a push stream."""

    code = grpc.StatusCode.UNAUTHENTICATED
    message = "watching needs authentication"


class WatchTokenExpired(WatchUnauthenticated):
    """The token a stream was opened with has expired: reconnect with a fresh one."""

    message = "watch token expired"


class WatchForbidden(AuthServerError):
    """A valid token without :data:`WATCH_SCOPE`."""

    code = grpc.StatusCode.PERMISSION_DENIED
    message = f"the token lacks the {WATCH_SCOPE} scope"


@dataclass(frozen=True, slots=True)
class WatchGrant:
    """A subscriber let in.

    Attributes:
        subscriber: Who, for the log (a token's ``sub``, "certificate", or "anyone").
        expires_at: When the stream must end (the token's ``exp``), or ``None``.
    """

    subscriber: str
    expires_at: float | None = None


class WatchGuard:
    """Admits or refuses a push-stream subscriber by the configured mode; no I/O."""

    def __init__(
        self,
        mode: str,
        *,
        inspector: TokenInspector | None = None,
        now: Callable[[], float] = time.time,
    ) -> None:
        """Create the guard.

        Raises:
            ValueError: An unknown mode, or ``token`` without an inspector.
        """
        if mode not in WATCH_AUTH_MODES:
            raise ValueError(f"--watch-auth must be one of {', '.join(WATCH_AUTH_MODES)}")
        if mode == "token" and inspector is None:
            raise ValueError("--watch-auth token needs the token inspector")
        self.mode = mode
        self._inspector = inspector
        self._now = now

    def admit(
        self,
        metadata: Iterable[tuple[str, str | bytes]] | None,
        auth_context: Mapping[str, Iterable[bytes]],
    ) -> WatchGrant:
        """Let a subscriber in, or raise why not.

        Raises:
            WatchUnauthenticated: No, or no valid, credential.
            WatchForbidden: A valid token without :data:`WATCH_SCOPE`.
        """
        if self.mode == "none":
            return WatchGrant("anyone")
        if self.mode == "mtls":
            # Present only when the TLS handshake verified the certificate (--client-ca).
            if not list(auth_context.get("x509_pem_cert", ())):
                raise WatchUnauthenticated("watching needs a client certificate")
            return WatchGrant("certificate")
        assert self._inspector is not None
        try:
            token = bearer_token(metadata)
        except AuthError as exc:
            raise WatchUnauthenticated(f"watching needs a token: {exc.message}") from None
        principal = self._inspector.inspect(token)
        # No leeway here: this server issued the token, by this clock.
        if principal is None or principal.expires_at <= self._now():
            raise WatchUnauthenticated("invalid watch token")
        if "cnf" in principal.claims:
            # A certificate-bound token (RFC 8705 §3) is good only on a connection
            # that presents that certificate: a copy taken off its client is not.
            try:
                check_cert_binding(principal, auth_context, "cnf")
            except CertificateMismatch:
                raise WatchUnauthenticated("watch token not bound to this certificate") from None
        if WATCH_SCOPE not in principal.scopes:
            raise WatchForbidden()
        return WatchGrant(principal.subject, float(principal.expires_at))

    async def until_expiry(self, grant: WatchGrant, stream: AsyncIterator[_T]) -> AsyncIterator[_T]:
        """Yield ``stream``'s items until ``grant`` expires, then raise :class:`WatchTokenExpired`.

        The deadline is fixed on the event loop's clock when the stream opens. One
        timer per stream, not one per message (a push goes to thousands of streams):
        at the deadline it cancels the wait for the next item, or, while an item is
        being sent, stops the stream before the next wait.
        """
        if grant.expires_at is None:
            async for item in stream:
                yield item
            return
        loop = asyncio.get_running_loop()
        waiting: asyncio.Task[object] | None = None
        expired = False

        def expire() -> None:
            nonlocal expired
            expired = True
            if waiting is not None:
                waiting.cancel()

        timer = loop.call_at(loop.time() + (grant.expires_at - self._now()), expire)
        try:
            while not expired:
                waiting = asyncio.current_task()
                try:
                    item = await anext(stream)
                except StopAsyncIteration:
                    return
                except asyncio.CancelledError:
                    # Ours (the token expired), unless the call was cancelled as well.
                    if not expired or (waiting is not None and waiting.uncancel() > 0):
                        raise
                    break
                finally:
                    waiting = None
                yield item
            _LOGGER.info("watch stream of %s ended: its token expired", grant.subscriber)
            raise WatchTokenExpired()
        finally:
            timer.cancel()
            aclose = getattr(stream, "aclose", None)
            if aclose is not None:
                await aclose()
