"""Checks an upstream provider's OpenID Connect ID token as strictly as verifiers check ours.

The token is parsed by the verifier library's strict compact-JWS parser, its key
comes from the provider's own discovery document and JWKS through the verifier
library's hardened :class:`~interceptors.DiscoverySource` and
:class:`~interceptors.KeyCache` (short deadlines, size caps, no redirects, TLS
except on loopback, single-flight refetch on an unknown ``kid`` with a cooldown),
and the signature is checked with the key's own algorithm, never one the token
names (RFC 8725 §3.1): HMAC and ``none`` are not even parsed.

Then the claims (OpenID Connect Core §3.1.3.7): ``iss`` exactly the configured
issuer, ``aud`` holding our client id there, ``azp`` our client id when there are
several audiences (or whenever it is present), ``exp`` in the future, ``iat`` no
older than :attr:`IdTokenPolicy.max_age`, ``nonce`` when the flow sent one, and
``email_verified`` before any domain rule looks at ``email``.

Every refusal is :class:`IdTokenRefused` with a reason for the log; the caller
answers ``invalid_grant`` and never echoes the reason or the token.
"""

from __future__ import annotations

import hmac
import logging
import math
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from auth_server.identities import MAX_SUBJECT_LENGTH
from auth_server.idps import IdentityProvider
from interceptors import AuthError, CacheSettings, DiscoverySource, KeyCache, KeysUnavailable
from interceptors._jws import CompactParser
from interceptors._keyset import SUPPORTED_ALGORITHMS
from interceptors._signature import CRYPTO_FAILURES

_LOGGER = logging.getLogger(__name__)

_MAX_TOKEN_LENGTH = 16 * 1024
_MAX_DEPTH = 16
_MAX_CACHES = 64


class IdTokenRefused(Exception):
    """The ID token is not acceptable; ``reason`` is for the log only."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class ProviderUnavailable(Exception):
    """The provider's keys cannot be loaded now; retrying later may succeed."""


@dataclass(frozen=True, kw_only=True)
class IdTokenPolicy:
    """Time rules for upstream ID tokens.

    Attributes:
        leeway: Clock skew allowed on ``exp``, ``iat`` and ``nbf``, seconds.
        max_age: The oldest ``iat`` accepted, seconds: an ID token is a proof of a
            sign-in that just happened, not a long-lived credential.
        cache: How each provider's keys are fetched and cached.
    """

    leeway: float = 30.0
    max_age: float = 300.0
    cache: CacheSettings = field(default_factory=CacheSettings)

    def __post_init__(self) -> None:
        if not (math.isfinite(self.leeway) and self.leeway >= 0):
            raise ValueError("leeway must be a non-negative number of seconds")
        if not (math.isfinite(self.max_age) and self.max_age > 0):
            raise ValueError("max_age must be a positive number of seconds")


@dataclass(frozen=True, kw_only=True)
class VerifiedIdToken:
    """What a checked ID token says about the person.

    Attributes:
        subject: ``sub``, the person's stable id at the provider.
        email: ``email`` when the provider says it is verified, else ``None``.
        claims: Every claim, for the username claim and the audit trail.
    """

    subject: str
    email: str | None
    claims: Mapping[str, Any]


def unverified_issuer(token: str) -> str:
    """The ``iss`` the token claims, after the strict parse; checked later by :meth:`verify`.

    Raises:
        IdTokenRefused: Not a well-formed compact JWS of an allowed algorithm, or no ``iss``.
    """
    claims = _parse(token).claims
    issuer = claims.get("iss")
    if not isinstance(issuer, str) or not issuer:
        raise IdTokenRefused("no iss")
    return issuer


_PARSER = CompactParser(
    algorithms=SUPPORTED_ALGORITHMS,  # asymmetric only: HS* and none fail the parse
    accepted_types=frozenset({"jwt"}),  # an access token ("at+jwt") is not an ID token
    max_length=_MAX_TOKEN_LENGTH,
    max_depth=_MAX_DEPTH,
    require_kid=True,
    require_typ=False,
)


def _parse(token: str) -> Any:
    try:
        return _PARSER(token)
    except AuthError as err:
        raise IdTokenRefused(f"malformed: {err.log_detail or err.message}") from None


class IdTokenVerifier:
    """Verifies ID tokens of configured providers; one key cache per issuer; thread-safe."""

    def __init__(
        self,
        policy: IdTokenPolicy | None = None,
        *,
        now: Callable[[], float] = time.time,
        source_factory: Callable[[str], DiscoverySource] = DiscoverySource,
    ) -> None:
        self._policy = policy or IdTokenPolicy()
        self._now = now
        self._source_factory = source_factory
        self._lock = threading.Lock()
        self._caches: OrderedDict[str, KeyCache] = OrderedDict()

    def verify(
        self, token: str, provider: IdentityProvider, *, nonce: str | None = None
    ) -> VerifiedIdToken:
        """Check ``token`` as an ID token ``provider`` issued for us.

        Args:
            token: The compact JWS.
            provider: The provider its ``iss`` named (enabled: the caller checks).
            nonce: The nonce the flow sent, if it sent one.

        Raises:
            IdTokenRefused: Any check failed.
            ProviderUnavailable: The provider's keys cannot be loaded now.
        """
        parsed = _parse(token)
        try:
            key = self._cache(provider.issuer).get_key(parsed.kid)
        except KeysUnavailable as err:
            raise ProviderUnavailable(provider.name) from err
        except AuthError as err:
            raise IdTokenRefused(f"key: {err.log_detail or err.message}") from None
        if key.algorithm != parsed.alg:
            raise IdTokenRefused(f"alg {parsed.alg} is not its key's {key.algorithm}")
        try:
            valid = key.verify_signature(parsed.signing_input, parsed.signature)
        except CRYPTO_FAILURES:
            valid = False  # e.g. a signature of the wrong length: a refusal, not a 500
        if not valid:
            raise IdTokenRefused("bad signature")
        return self._claims(parsed.claims, provider, nonce)

    def _claims(
        self, claims: Mapping[str, Any], provider: IdentityProvider, nonce: str | None
    ) -> VerifiedIdToken:
        policy, now = self._policy, self._now()
        if claims.get("iss") != provider.issuer:
            raise IdTokenRefused("iss is not the provider's issuer")
        audience = claims.get("aud")
        audiences = [audience] if isinstance(audience, str) else audience
        if not isinstance(audiences, list) or not all(isinstance(a, str) for a in audiences):
            raise IdTokenRefused("aud missing or malformed")
        if provider.client_id not in audiences:
            raise IdTokenRefused("aud does not hold our client id")
        azp = claims.get("azp")
        if (len(audiences) > 1 or azp is not None) and azp != provider.client_id:
            raise IdTokenRefused("azp is not our client id")
        exp, iat = _number(claims, "exp"), _number(claims, "iat")
        if exp is None or now >= exp + policy.leeway:
            raise IdTokenRefused("expired")
        if iat is None or iat > now + policy.leeway:
            raise IdTokenRefused("iat missing or in the future")
        if now - iat > policy.max_age:
            raise IdTokenRefused("iat too old")
        nbf = _number(claims, "nbf")
        if "nbf" in claims and (nbf is None or nbf > now + policy.leeway):
            raise IdTokenRefused("not yet valid")
        if nonce is not None:
            given = claims.get("nonce")
            if not isinstance(given, str) or not hmac.compare_digest(given, nonce):
                raise IdTokenRefused("nonce mismatch")
        subject = claims.get("sub")
        if not isinstance(subject, str) or not 0 < len(subject) <= MAX_SUBJECT_LENGTH:
            raise IdTokenRefused("sub missing or malformed")
        email = _verified_email(claims)
        if provider.allowed_domains:
            # The domain rule trusts only an address the provider verified.
            if email is None:
                raise IdTokenRefused("no verified e-mail for the domain rule")
            domain = email.rpartition("@")[2]
            # ASCII before lower(): "\u212a" (KELVIN SIGN).lower() is "k", so a domain no
            # one can register would otherwise pass as an allowed ASCII one.
            if not domain.isascii() or domain.lower() not in provider.allowed_domains:
                raise IdTokenRefused("e-mail domain not allowed")
        return VerifiedIdToken(subject=subject, email=email, claims=dict(claims))

    def _cache(self, issuer: str) -> KeyCache:
        with self._lock:
            cache = self._caches.get(issuer)
            if cache is not None:
                self._caches.move_to_end(issuer)
                return cache
        # The source checks the URL again (https, or http on loopback) and the
        # discovery document's issuer against it.
        made = KeyCache(self._source_factory(issuer), self._policy.cache, background=False)
        with self._lock:
            cache = self._caches.setdefault(issuer, made)
            while len(self._caches) > _MAX_CACHES:
                _, old = self._caches.popitem(last=False)
                old.close()
        if cache is not made:
            made.close()  # another thread made this issuer's cache first
        return cache

    def forget(self, issuer: str) -> None:
        """Drop the cached keys of ``issuer`` (its provider was removed or changed)."""
        with self._lock:
            cache = self._caches.pop(issuer, None)
        if cache is not None:
            cache.close()

    def close(self) -> None:
        """Close every key cache."""
        with self._lock:
            caches = list(self._caches.values())
            self._caches.clear()
        for cache in caches:
            cache.close()


def _number(claims: Mapping[str, Any], name: str) -> float | None:
    value = claims.get(name)
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        return None
    return float(value)


def _verified_email(claims: Mapping[str, Any]) -> str | None:
    email = claims.get("email")
    if not isinstance(email, str) or "@" not in email or len(email) > 320:
        return None
    # Only a JSON true counts (OpenID Connect Core §5.1); "true" the string does not.
    return email if claims.get("email_verified") is True else None
