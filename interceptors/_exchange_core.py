"""Identity propagation's sans-I/O core: which token to exchange, for what, and what to cache.

Inside an authenticated handler, a call to another service should carry a token
for *that* service's audience that still names the user: the caller's token,
exchanged at the auth service (RFC 8693). :class:`ExchangeCore` decides what
the sync and asyncio propagators in :mod:`interceptors._propagation` send and
keeps their cache; they only perform the ``Token`` RPC.

Cache: one entry per incoming (subject) token -- a token belongs to one user
and one session, so an entry can never serve another user -- holding the
exchanged token until shortly before it expires, bounded in size.
"""

from __future__ import annotations

import logging
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass

from interceptors._context import CALLER
from interceptors._errors import NoCallerToken, TokenRequestError
from interceptors._service_identity import ClientAuth, ServiceCredentials
from protos import auth_pb2

_LOGGER = logging.getLogger(__name__)

TOKEN_EXCHANGE = "urn:ietf:params:oauth:grant-type:token-exchange"  # noqa: S105 - a URN
ACCESS_TOKEN_TYPE = "urn:ietf:params:oauth:token-type:access_token"  # noqa: S105 - a URN
_MAX_MARGIN_SHARE = 0.2


def caller_token() -> str:
    """The raw token of the authenticated call being handled.

    Raises:
        NoCallerToken: Outside an authenticated handler: fail closed, never fall back
            to the service's own identity.
    """
    try:
        return CALLER.get()[1]
    except LookupError:
        raise NoCallerToken() from None


@dataclass(slots=True)
class _Entry:
    token: str
    renew_at: float


class ExchangeCore:
    """The exchange cache and request builder; not thread-safe (the propagators lock)."""

    def __init__(
        self,
        *,
        audience: str,
        credentials: ServiceCredentials,
        scope: str,
        refresh_margin: float,
        max_entries: int,
        now: Callable[[], float],
    ) -> None:
        if not audience:
            raise ValueError("audience must not be empty")
        if refresh_margin < 0:
            raise ValueError("refresh_margin must not be negative")
        if max_entries < 1:
            raise ValueError("max_entries must be at least 1")
        self.audience = audience
        # The credentials' own scope and audience belong to the client-credentials grant.
        self._auth = ClientAuth(credentials)
        self._scope = scope
        self._margin = refresh_margin
        self._max = max_entries
        self._now = now
        self._entries: OrderedDict[str, _Entry] = OrderedDict()

    def cached(self, subject: str) -> str | None:
        """The exchanged token for ``subject`` if it needs no renewal yet."""
        entry = self._entries.get(subject)
        if entry is None:
            return None
        if self._now() >= entry.renew_at:
            del self._entries[subject]
            return None
        return entry.token

    def request(self, subject: str) -> auth_pb2.TokenRequest:
        """The ``Token`` request exchanging ``subject`` for this audience."""
        request = auth_pb2.TokenRequest(
            grant_type=TOKEN_EXCHANGE,
            subject_token=subject,
            subject_token_type=ACCESS_TOKEN_TYPE,
            requested_token_type=ACCESS_TOKEN_TYPE,
            audience=self.audience,
            scope=self._scope,
        )
        return self._auth.apply(request, self._now())

    def accept(self, subject: str, response: auth_pb2.TokenResponse, sent_at: float) -> str:
        """Cache the answer to :meth:`request` and return its token.

        Raises:
            TokenRequestError: The answer holds no usable token.
        """
        if not response.access_token:
            raise TokenRequestError("token response has no access_token")
        if response.token_type and response.token_type.lower() != "bearer":
            raise TokenRequestError("token response has an unsupported token_type")
        if response.expires_in <= 0:
            raise TokenRequestError("token response has a non-positive expires_in")
        lifetime = float(response.expires_in)
        # Counted from when the request was sent: the server's clock started no earlier.
        renew_at = sent_at + lifetime - min(self._margin, lifetime * _MAX_MARGIN_SHARE)
        self._entries[subject] = _Entry(response.access_token, renew_at)
        self._entries.move_to_end(subject)
        while len(self._entries) > self._max:
            self._entries.popitem(last=False)
        return response.access_token

    def invalidate(self, token: str) -> None:
        """Forget the entry holding the exchanged ``token`` (a call was refused with it)."""
        for subject, entry in list(self._entries.items()):
            if entry.token == token:
                del self._entries[subject]

    def __len__(self) -> int:
        return len(self._entries)
