"""Signing in with an upstream ID token: the RFC 8693 grant with an ``id_token`` subject.

A person who signed in at the company's OpenID Provider presents its ID token
(``subject_token_type`` ``urn:ietf:params:oauth:token-type:id_token``) at the
``Token`` RPC or ``POST /oauth2/token`` and gets *our* token response: an access
token with our ``iss``, ``aud`` and key, and a refresh token -- a normal session,
with refresh rotation, logout, push revocation and everything else sessions have.

The order matters:

1. throttling, per caller address, before any work (only refused tokens count:
   a forged token is no guess at a secret), sharing the password logins' counters
   table, so every replica sees them;
2. the strict parse, then the provider by the exact ``iss`` (an unconfigured or
   disabled provider is refused before any network request);
3. signature and claims (:mod:`auth_server.id_tokens`);
4. the user by (provider, ``sub``) -- created just in time at first sign-in,
   never matched by e-mail (:mod:`auth_server.identities`); a disabled user is
   refused;
5. the session, marked with the provider, so disabling it ends the session.

Like the gRPC ``Login`` it needs no client authentication (the person's
terminal is a public client); credentials that are presented must be right.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Sequence
from dataclasses import dataclass, field

from auth_server.audit import audit_event
from auth_server.authority import TokenAuthority, TokenGrant
from auth_server.client_auth import ClientAuthenticator, ClientCredentials
from auth_server.errors import (
    InvalidGrant,
    InvalidRequest,
    InvalidScope,
    LoginThrottled,
    OAuthInvalidRequest,
    SignInThrottled,
    TemporarilyUnavailable,
)
from auth_server.id_tokens import (
    IdTokenRefused,
    IdTokenVerifier,
    ProviderUnavailable,
    unverified_issuer,
)
from auth_server.identities import IdentityStore
from auth_server.idps import IdpStore
from auth_server.throttle import LoginThrottle
from auth_server.users import validate_scopes

_LOGGER = logging.getLogger(__name__)

ID_TOKEN_TYPE = "urn:ietf:params:oauth:token-type:id_token"  # noqa: S105 - a URN


@dataclass(frozen=True, kw_only=True)
class SignInRequest:
    """A token-exchange request whose subject is an upstream ID token.

    Attributes:
        id_token: The provider's ID token (never log it).
        scope: Our scopes wanted (space-separated); empty: all the user holds.
        audience: Our ``aud`` wanted; empty: the server's default.
        nonce: The nonce the flow sent to the provider, if any.
        credentials: Client credentials, if the caller presented any.
        address: The caller's address (throttling, audit).
    """

    id_token: str = field(repr=False)
    scope: str = ""
    audience: str = ""
    nonce: str | None = None
    credentials: ClientCredentials = field(default_factory=ClientCredentials)
    address: str = ""


class FederatedSignIn:
    """Turns a valid upstream ID token into a session of ours; blocking; thread-safe."""

    def __init__(
        self,
        *,
        authority: TokenAuthority,
        idps: IdpStore,
        identities: IdentityStore,
        verifier: IdTokenVerifier,
        authenticator: ClientAuthenticator | None = None,
        throttle: LoginThrottle | None = None,
    ) -> None:
        self._authority = authority
        self._idps = idps
        self._identities = identities
        self._verifier = verifier
        self._authenticator = authenticator
        self._throttle = throttle

    def sign_in(self, request: SignInRequest) -> TokenGrant:
        """Check the ID token and open a session for its user.

        Raises:
            OAuthError: ``invalid_grant`` for any refused token (the reason is
                logged, never sent), ``invalid_scope``, ``invalid_target``,
                ``temporarily_unavailable`` when the provider's keys cannot be
                loaded or too many sign-ins failed from this address.
        """
        if not request.id_token:
            raise OAuthInvalidRequest("subject_token is required")
        if request.credentials.presented and self._authenticator is not None:
            self._authenticator.authenticate(request.credentials, address=request.address)
        wanted = _wanted_scopes(request.scope)
        audience = self._authority.audience_for(request.audience)
        # Throttled per caller address alone: an attacker's bad tokens must not slow
        # down anyone else signing in through the same provider. A forged token is
        # no guess at a secret, so only refusals are counted, and an honest sign-in
        # costs one read here.
        key = "\x00id_token\x00" + request.address
        if self._throttle is not None:
            try:
                self._throttle.check(key, request.address)
            except LoginThrottled as err:
                raise SignInThrottled(err.retry_after) from None
        try:
            return self._sign_in(request, wanted, audience)
        except IdTokenRefused as err:
            _LOGGER.info("ID token refused from %s: %s", request.address, err.reason)
            audit_event("login.federated_refused", reason=err.reason, address=request.address)
            self._count_failure(key, request.address)
            raise InvalidGrant() from None
        except ProviderUnavailable as err:
            # Not the caller's fault: nothing is counted.
            _LOGGER.warning("the keys of identity provider %s cannot be loaded", err)
            raise TemporarilyUnavailable("the identity provider cannot be reached") from None

    def _count_failure(self, key: str, address: str) -> None:
        if self._throttle is None:
            return
        # admit() counts one failure; at the limit already, the next request is refused anyway.
        with contextlib.suppress(LoginThrottled):
            self._throttle.admit(key, address)

    def _sign_in(
        self, request: SignInRequest, wanted: tuple[str, ...] | None, audience: str | None
    ) -> TokenGrant:
        issuer = unverified_issuer(request.id_token)
        provider = self._idps.by_issuer(issuer)
        if provider is None:
            raise IdTokenRefused("no provider has this issuer")
        if provider.disabled:
            raise IdTokenRefused(f"provider {provider.name} is disabled")
        checked = self._verifier.verify(request.id_token, provider, nonce=request.nonce)
        # An e-mail names a user only once the provider has verified it.
        hint = (
            checked.email
            if provider.username_claim == "email"
            else checked.claims.get(provider.username_claim)
        )
        try:
            user, created = self._identities.resolve(
                provider.name,
                checked.subject,
                username_hint=hint if isinstance(hint, str) else None,
                email=checked.email,
                default_scopes=provider.default_scopes,
            )
        except InvalidRequest as err:
            raise IdTokenRefused(f"identity: {err.message}") from None
        if user.disabled:
            raise IdTokenRefused(f"user {user.id} is disabled")
        held = set(user.scopes)
        if wanted is None:
            granted: Sequence[str] = user.scopes
        elif set(wanted) <= held:
            granted = wanted
        else:
            raise InvalidScope()
        grant = self._authority.open_session(
            user, tuple(granted), audience_choice=audience, idp=provider.name
        )
        audit_event(
            "login.federated",
            idp=provider.name,
            sub=checked.subject,
            user_id=user.id,
            sid=grant.session_id,
            created=created,
            address=request.address,
        )
        return grant


def _wanted_scopes(scope: str) -> tuple[str, ...] | None:
    if not scope.strip():
        return None
    try:
        return validate_scopes(scope.split())
    except InvalidRequest:
        raise InvalidScope("scope is malformed") from None
