"""``private_key_jwt`` client assertions (RFC 7523 §2.2, §3; OIDC Core §9), checked strictly.

Rules, each stricter than the RFC allows and each for a known attack:

* the same strict compact-JWS parse as the verifiers (canonical base64url, unique
  JSON members, bounded depth, no ``crit``); an access token (``typ: at+jwt``) is
  not an assertion;
* the algorithm comes from the client's registered key (RS256, PS256, ES256,
  EdDSA); ``none`` and HS* never verify (RFC 8725 §3.1, §2.1: an HS256 "signature"
  keyed with the client's *public* key is refused before any MAC is computed);
* ``iss`` = ``sub`` = the client id;
* ``aud`` is exactly this server's issuer identifier, as a string: not a list,
  not the token endpoint URL (the 2025 audience-injection analysis of
  private_key_jwt: an assertion made for one server must not be replayable at
  another that shares an endpoint URL or accepts lists);
* ``exp`` is required and at most 5 minutes ahead; ``jti`` is required and is
  good once until ``exp`` (the replay store lives in the database, so replicas
  share it).
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from sqlalchemy import exc

from auth_server.clients import ASSERTION_ALGORITHMS, Client
from auth_server.storage import Database, client_assertions
from interceptors import (
    AuthError,
    CacheSettings,
    HttpJwksSource,
    InvalidClaims,
    InvalidSignature,
    KeyCache,
    KeySet,
    VerificationKey,
)
from interceptors._jws import parse_compact
from interceptors._signature import CRYPTO_FAILURES

_LOGGER = logging.getLogger(__name__)

ASSERTION_TYPE = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"
MAX_ASSERTION_LENGTH = 8192
MAX_AHEAD = 300.0
LEEWAY = 30.0
_MAX_JTI = 256
_MAX_DEPTH = 8
# typ values a client assertion may carry (none, plain JWT, or the rfc7523bis type).
_ACCEPTED_TYPES = frozenset({"jwt", "application/jwt", "client-authentication+jwt"})


class AssertionRefused(Exception):
    """The assertion does not authenticate the client; ``reason`` is for the audit trail."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


@dataclass(frozen=True, slots=True)
class ParsedAssertion:
    """An assertion that passed the structural checks, before its signature is checked."""

    alg: str
    kid: str | None
    claims: dict[str, Any]
    signing_input: bytes
    signature: bytes

    @property
    def subject(self) -> str | None:
        """The unverified ``sub``: which client to look up, nothing more."""
        sub = self.claims.get("sub")
        return sub if isinstance(sub, str) else None


def parse_assertion(assertion: str) -> ParsedAssertion:
    """Parse a compact JWS with the verifiers' own strict parse (:func:`parse_compact`).

    Unlike an access token, an assertion may omit ``kid`` (the client's only key)
    and ``typ``; a ``typ`` that is present must name a plain JWT or a client
    assertion, so an access token (``at+jwt``) is never one.

    Raises:
        AssertionRefused: Malformed (reason ``malformed``) or a refused header.
    """
    try:
        parsed = parse_compact(
            assertion,
            algorithms=ASSERTION_ALGORITHMS,
            accepted_types=_ACCEPTED_TYPES,
            max_length=MAX_ASSERTION_LENGTH,
            max_depth=_MAX_DEPTH,
            require_kid=False,
            require_typ=False,
        )
    except InvalidSignature as exc:
        # Either the alg is not one a client key can have (none, HS*, unknown) or the
        # signature is empty; the audit trail tells the two apart.
        reason = "algorithm_refused" if exc.log_detail.startswith("alg") else "bad_signature"
        raise AssertionRefused(reason) from None
    except InvalidClaims:
        raise AssertionRefused("wrong_type") from None
    except AuthError:
        raise AssertionRefused("malformed") from None
    return ParsedAssertion(
        alg=parsed.alg,
        kid=parsed.kid or None,
        claims=parsed.claims,
        signing_input=parsed.signing_input,
        signature=parsed.signature,
    )


_INSERT = client_assertions.insert()  # built once: every assertion is recorded


class ReplayStore:
    """Remembers used assertion ids until they expire; shared through the database."""

    def __init__(self, db: Database, *, now: Callable[[], float] = time.time) -> None:
        self._db = db
        self._now = now

    def use(self, client_id: str, jti: str, expires_at: float) -> bool:
        """Record ``jti`` as used; False if it was used before (a replay)."""
        key = hashlib.sha256(f"{client_id}\x00{jti}".encode("utf-8", "surrogatepass")).hexdigest()
        try:
            with self._db.transaction(write=True) as conn:
                conn.execute(_INSERT, {"key": key, "expires_at": expires_at})
        except exc.IntegrityError:
            return False
        return True

    def purge(self) -> int:
        """Forget ids whose assertions have expired; return how many."""
        with self._db.transaction(write=True) as conn:
            result = conn.execute(
                client_assertions.delete().where(client_assertions.c.expires_at < self._now())
            )
        return int(result.rowcount or 0)


class ClientKeys:
    """The public keys of ``private_key_jwt`` clients: registered sets, or fetched ``jwks_uri``s.

    A ``jwks_uri`` is fetched with the verifiers' hardened fetcher and key cache
    (deadline, size cap, no redirects, TLS except on loopback, unknown-kid cooldown).
    A client that rotates its key is followed on the first assertion naming the new
    ``kid``, unless its set was fetched less than ``cooldown`` seconds before: so a
    client should publish a new key that long before signing with it.
    """

    def __init__(self, *, allow_insecure_http: bool = False, cooldown: float = 30.0) -> None:
        """Create the registry.

        Args:
            allow_insecure_http: Fetch ``http://`` sets beyond loopback (tests only).
            cooldown: Seconds after any fetch of a client's set during which an
                unknown ``kid`` does not cause another (a flood of made-up kids
                cannot turn into a fetch storm against the client's server).
        """
        self._lock = threading.Lock()
        self._registered: dict[str, tuple[str, KeySet]] = {}
        self._fetched: dict[str, tuple[str, KeyCache]] = {}
        self._allow_insecure_http = allow_insecure_http
        self._cooldown = cooldown

    def key_for(self, client: Client, kid: str | None) -> VerificationKey:
        """The client's key named ``kid`` (or its only key when ``kid`` is absent).

        Raises:
            AssertionRefused: No such key, or the keys cannot be had.
        """
        if client.jwks_uri is not None:
            cache = self._cache(client.id, client.jwks_uri)
            if kid is None:
                raise AssertionRefused("unknown_key")
            try:
                return cache.get_key(kid)
            except AuthError:
                raise AssertionRefused("unknown_key") from None
        key_set = self._key_set(client)
        if kid is None:
            keys = list(key_set)
            if len(keys) != 1:
                raise AssertionRefused("unknown_key")
            return keys[0]
        key = key_set.get(kid)
        if key is None:
            raise AssertionRefused("unknown_key")
        return key

    def _key_set(self, client: Client) -> KeySet:
        document = client.jwks or {"keys": []}
        tag = json.dumps(document, sort_keys=True)
        with self._lock:
            cached = self._registered.get(client.id)
            if cached is not None and cached[0] == tag:
                return cached[1]
        try:
            key_set = KeySet.from_jwks(document, algorithms=ASSERTION_ALGORITHMS)
        except AuthError:
            raise AssertionRefused("unknown_key") from None
        with self._lock:
            self._registered[client.id] = (tag, key_set)
        return key_set

    def _cache(self, client_id: str, uri: str) -> KeyCache:
        with self._lock:
            cached = self._fetched.get(client_id)
            if cached is not None and cached[0] == uri:
                return cached[1]
        try:
            source = HttpJwksSource(uri, allow_insecure_http=self._allow_insecure_http)
        except ValueError:
            raise AssertionRefused("unknown_key") from None
        settings = CacheSettings(algorithms=ASSERTION_ALGORITHMS, cooldown=self._cooldown)
        cache = KeyCache(source, settings, background=False)
        with self._lock:
            old = self._fetched.get(client_id)
            self._fetched[client_id] = (uri, cache)
        if old is not None:
            old[1].close()
        return cache

    def close(self) -> None:
        """Close the key caches of fetched sets."""
        with self._lock:
            caches = [cache for _, cache in self._fetched.values()]
            self._fetched.clear()
        for cache in caches:
            cache.close()


class AssertionVerifier:
    """Checks a parsed assertion for a client: its key, signature, claims and ``jti``."""

    def __init__(
        self,
        *,
        issuer: str,
        keys: ClientKeys,
        replay: ReplayStore,
        now: Callable[[], float] = time.time,
    ) -> None:
        """Create the verifier.

        Args:
            issuer: This server's issuer identifier: the one ``aud`` accepted.
            keys: Where clients' public keys come from.
            replay: The store of used ``jti``s.
            now: Clock, epoch seconds.
        """
        self._issuer = issuer
        self._keys = keys
        self._replay = replay
        self._now = now

    def verify(self, parsed: ParsedAssertion, client: Client) -> None:
        """Authenticate ``client`` by ``parsed``, spending its ``jti``.

        Raises:
            AssertionRefused: The reason names the failed rule.
        """
        key = self._keys.key_for(client, parsed.kid)
        # RFC 8725 §3.1: the registered key's algorithm decides, never the header alone.
        if parsed.alg != key.algorithm:
            raise AssertionRefused("algorithm_mismatch")
        _verify_signature(parsed, key)
        expires_at = self._check_claims(parsed.claims, client.id)
        if not self._replay.use(client.id, parsed.claims["jti"], expires_at + LEEWAY):
            raise AssertionRefused("replayed")

    def _check_claims(self, claims: Mapping[str, Any], client_id: str) -> float:
        if claims.get("iss") != client_id or claims.get("sub") != client_id:
            raise AssertionRefused("wrong_issuer_or_subject")
        # Exactly the issuer identifier, as a string (see the module docstring).
        audience = claims.get("aud")
        if not isinstance(audience, str) or audience != self._issuer:
            raise AssertionRefused("wrong_audience")
        now = self._now()
        expires = _number(claims, "exp")
        if expires is None:
            raise AssertionRefused("missing_exp")
        if expires <= now - LEEWAY:
            raise AssertionRefused("expired")
        if expires > now + MAX_AHEAD + LEEWAY:
            raise AssertionRefused("exp_too_far")
        for name in ("nbf", "iat"):
            value = _number(claims, name)
            if name in claims and value is None:
                raise AssertionRefused("malformed")
            if value is not None and value > now + LEEWAY:
                raise AssertionRefused("not_yet_valid")
        jti = claims.get("jti")
        if not isinstance(jti, str) or not 0 < len(jti) <= _MAX_JTI:
            raise AssertionRefused("missing_jti")
        return expires


def _number(claims: Mapping[str, Any], name: str) -> float | None:
    value = claims.get(name)
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value) if math.isfinite(value) else None


def _verify_signature(parsed: ParsedAssertion, key: VerificationKey) -> None:
    jwk = key.key
    try:
        valid = jwk.Algorithm.verify(parsed.signing_input, jwk.key, parsed.signature)
    except CRYPTO_FAILURES:
        raise AssertionRefused("bad_signature") from None
    if not valid:
        raise AssertionRefused("bad_signature")
