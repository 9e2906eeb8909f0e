"""Checks this server's own access tokens (revocation, introspection) with the verifier's code.

The auth service holds no copy of verification logic: a token is checked by an
:class:`interceptors.TokenVerifier` (the strict parse, the key's own algorithm,
the RFC 9068 claims) over the key set the service publishes right now. Tokens
carry different audiences (RFC 8707), so there is one verifier per audience,
made on first use.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import OrderedDict
from collections.abc import Callable

from auth_server.authority import JwksSnapshot
from interceptors import (
    AuthError,
    KeySet,
    Principal,
    TokenPolicy,
    TokenVerifier,
    UnknownKey,
    VerificationKey,
)
from interceptors._jws import parse_compact

_LOGGER = logging.getLogger(__name__)

_MAX_VERIFIERS = 256
# The policy every per-audience verifier gets, apart from its audience.
_DEFAULTS = TokenPolicy(issuer="-", audience="-")
_TYPE = _DEFAULTS.token_type.lower()


class PublishedKeys:
    """A key provider over the key set the service publishes (no network, no fetch)."""

    def __init__(self, snapshot: Callable[[], JwksSnapshot]) -> None:
        self._snapshot = snapshot
        self._lock = threading.Lock()
        self._etag = ""
        self._keys = KeySet()
        self._listeners: list[Callable[[frozenset[str]], None]] = []

    def _current(self) -> KeySet:
        snapshot = self._snapshot()
        with self._lock:
            if snapshot.etag == self._etag:
                return self._keys
        keys = KeySet.from_jwks({"keys": [dict(k) for k in snapshot.keys]})
        with self._lock:
            departed = self._keys.kids - keys.kids
            self._etag, self._keys = snapshot.etag, keys
            listeners = list(self._listeners)
        if departed:
            for listener in listeners:
                listener(frozenset(departed))
        return keys

    def get_key(self, kid: str) -> VerificationKey:
        """The published key ``kid``; :class:`UnknownKey` if there is none."""
        key = self._current().get(kid)
        if key is None:
            raise UnknownKey("kid is not in the published set")
        return key

    async def aget_key(self, kid: str) -> VerificationKey:
        """Like :meth:`get_key` (never blocks: the set is in memory)."""
        return self.get_key(kid)

    def add_removal_listener(self, callback: Callable[[frozenset[str]], None]) -> None:
        """Call ``callback`` with the kids that left the published set."""
        with self._lock:
            self._listeners.append(callback)


class TokenInspector:
    """Tells whether a string is a currently valid access token of this issuer."""

    def __init__(
        self,
        snapshot: Callable[[], JwksSnapshot],
        *,
        issuer: str,
        is_revoked: Callable[[Principal], bool],
        now: Callable[[], float] = time.time,
    ) -> None:
        """Create the inspector.

        Args:
            snapshot: The published key set, current.
            issuer: This server's ``iss``.
            is_revoked: Whether the revocation list refuses the token (its session,
                or a watermark for its subject or for everyone).
            now: Clock, epoch seconds.
        """
        self._keys = PublishedKeys(snapshot)
        self._issuer = issuer
        self._is_revoked = is_revoked
        self._now = now
        self._lock = threading.Lock()
        self._verifiers: OrderedDict[str, TokenVerifier] = OrderedDict()

    def inspect(self, token: str) -> Principal | None:
        """The token's principal if it is an unexpired, unrevoked token of ours; else ``None``."""
        audience = _unverified_audience(token)
        if audience is None:
            return None
        try:
            principal = self._verifier(audience).verify(token)
        except AuthError as exc:
            _LOGGER.debug("inspected token is not active: %s", type(exc).__name__)
            return None
        if self._is_revoked(principal):
            return None
        return principal

    def _verifier(self, audience: str) -> TokenVerifier:
        with self._lock:
            verifier = self._verifiers.get(audience)
            if verifier is not None:
                self._verifiers.move_to_end(audience)
                return verifier
        verifier = TokenVerifier(
            self._keys,
            TokenPolicy(issuer=self._issuer, audience=audience),
            cache_size=256,
            now=self._now,
        )
        with self._lock:
            self._verifiers[audience] = verifier
            while len(self._verifiers) > _MAX_VERIFIERS:
                self._verifiers.popitem(last=False)
        return verifier


def _unverified_audience(token: str) -> str | None:
    """The ``aud`` string of a well-formed token, only to pick the verifier that checks it."""
    # The verifier's own strict parse, with its default policy's limits; the
    # verifier chosen then parses again and checks everything else.
    try:
        parsed = parse_compact(
            token,
            algorithms=_DEFAULTS.algorithms,
            accepted_types=(_TYPE, "application/" + _TYPE),
            max_length=_DEFAULTS.max_token_length,
            max_depth=_DEFAULTS.max_json_depth,
        )
    except AuthError:
        return None
    audience = parsed.claims.get("aud")
    return audience if isinstance(audience, str) and audience else None
