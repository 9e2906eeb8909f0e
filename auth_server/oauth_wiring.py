"""Builds the service-identity pieces (clients, client authentication, the token endpoint core)."""

from __future__ import annotations

import functools
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass

from auth_server.authority import TokenAuthority
from auth_server.client_assertion import AssertionVerifier, ClientKeys, ReplayStore
from auth_server.client_auth import ClientAuthenticator
from auth_server.client_throttle import ClientThrottle
from auth_server.clients import ClientStore
from auth_server.config import AuthServerConfig
from auth_server.errors import AuthServerError
from auth_server.federation import FederatedSignIn
from auth_server.id_tokens import IdTokenVerifier
from auth_server.identities import IdentityStore
from auth_server.idps import IdpStore
from auth_server.oauth import OAuthEndpoint
from auth_server.publisher import JwksPublisher
from auth_server.revocations import RevocationPublisher
from auth_server.sessions import SessionStore
from auth_server.storage import Database
from auth_server.throttle import LoginThrottle
from auth_server.token_exchange import TokenExchange, session_revoked_in
from auth_server.token_inspector import TokenInspector
from auth_server.tokens import TokenIssuer
from auth_server.users import UserStore
from interceptors import Principal

_LOGGER = logging.getLogger(__name__)


@dataclass(frozen=True, kw_only=True)
class ClientComponents:
    """The plain objects behind service identities, built from one configuration."""

    clients: ClientStore
    authenticator: ClientAuthenticator
    replay: ReplayStore
    keys: ClientKeys

    def purge(self) -> None:
        """Forget expired assertion ids (the cleanup loop calls this)."""
        try:
            self.replay.purge()
        except AuthServerError as exc:
            _LOGGER.warning("cleanup of used assertion ids failed: %s", exc.message)

    def close(self) -> None:
        """Close the key caches of ``jwks_uri`` clients."""
        self.keys.close()


def build_client_components(
    config: AuthServerConfig, database: Database, *, now: Callable[[], float] = time.time
) -> ClientComponents:
    """Client store, replay store, key caches and the authenticator (no I/O yet)."""
    clients = ClientStore(database, now=now)
    replay = ReplayStore(database, now=now)
    keys = ClientKeys()
    assertions = AssertionVerifier(issuer=config.issuer, keys=keys, replay=replay, now=now)
    authenticator = ClientAuthenticator(
        clients, assertions, ClientThrottle(database, config.throttle, now=now), now=now
    )
    return ClientComponents(clients=clients, authenticator=authenticator, replay=replay, keys=keys)


def _refused(revocations: RevocationPublisher, principal: Principal) -> bool:
    """Whether the published list refuses the token, as a following verifier decides."""
    state = revocations.state
    if principal.session_id is not None and principal.session_id in state.sessions:
        return True
    # A subject's "issued before" watermark, then the one for everyone ("").
    for subject in (principal.subject, ""):
        mark = state.watermarks.get(subject)
        if mark is not None and principal.issued_at < mark.issued_before:
            return True
    return False


def build_token_inspector(
    config: AuthServerConfig,
    *,
    publisher: JwksPublisher,
    revocations: RevocationPublisher,
    now: Callable[[], float] = time.time,
) -> TokenInspector:
    """Checks our own tokens over what the running publishers hold (keys, revocations)."""
    return TokenInspector(
        lambda: publisher.snapshot,
        issuer=config.issuer,
        is_revoked=functools.partial(_refused, revocations),
        now=now,
    )


def build_oauth_endpoint(
    *,
    authority: TokenAuthority,
    issuer: TokenIssuer,
    sessions: SessionStore,
    client_side: ClientComponents,
    inspector: TokenInspector,
    revocations: RevocationPublisher,
    database: Database,
    users: UserStore | None = None,
    throttle: LoginThrottle | None = None,
    now: Callable[[], float] = time.time,
) -> OAuthEndpoint:
    """The token/revocation/introspection core over the running publishers.

    With ``users``, upstream ID tokens sign people in (:mod:`auth_server.federation`),
    throttled by ``throttle`` like password logins.
    """

    async def push() -> None:
        try:
            await revocations.refresh()
        except AuthServerError as exc:
            # The revocation is committed; the poll loop will publish it.
            _LOGGER.warning("could not publish a revocation at once: %s", exc.message)

    exchange = TokenExchange(
        authenticator=client_side.authenticator,
        clients=client_side.clients,
        issuer=issuer,
        inspector=inspector,
        session_revoked=session_revoked_in(database),
        now=now,
    )
    federation = None
    if users is not None:
        federation = FederatedSignIn(
            authority=authority,
            idps=IdpStore(database, now=now),
            identities=IdentityStore(database, users, now=now),
            verifier=IdTokenVerifier(now=now),
            authenticator=client_side.authenticator,
            throttle=throttle,
        )
    return OAuthEndpoint(
        authority=authority,
        clients=client_side.clients,
        authenticator=client_side.authenticator,
        issuer=issuer,
        sessions=sessions,
        inspector=inspector,
        push_revocations=push,
        exchange=exchange,
        federation=federation,
    )
