"""Verify access tokens: a strict JWS parse, the key the ``kid`` selects, RFC 8725/9068 checks.

One sans-I/O core serves :meth:`TokenVerifier.verify` and :meth:`TokenVerifier.averify`;
the two differ only in how they ask the key provider for the key.
:meth:`TokenVerifier.from_source` is the one owner of a verifier's moving parts:
it builds and starts the key cache and revocation list, and closes them (and
the source) when the verifier is closed.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import json
import logging
import math
import re
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType, TracebackType
from typing import Any, Final, Protocol, Self

import jwt
from cryptography import exceptions as crypto_exceptions
from jwt import exceptions as jwt_errors

from interceptors._cache import CacheSettings, KeyCache
from interceptors._errors import (
    ExpiredToken,
    ImmatureToken,
    InvalidClaims,
    InvalidSignature,
    MalformedToken,
    RevokedToken,
)
from interceptors._revocation import KEEP_AFTER_EXPIRY, RevocationList, RevocationSource
from interceptors._sources import KeySource

_LOGGER = logging.getLogger(__name__)

#: The asymmetric JWS algorithms (RFC 7518 §3, RFC 8037) a policy may allow.
#: HMAC and ``none`` are never accepted by a verifier (RFC 8725 §3.1, §3.2).
SUPPORTED_ALGORITHMS: Final = frozenset(
    {"RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "ES512", "EdDSA"}
)
# Without these the verifier cannot decide expiry, lifetime, issuer, audience or subject.
_ALWAYS_REQUIRED: Final = frozenset({"iss", "sub", "aud", "exp", "iat"})
_MAX_KID_LENGTH: Final = 256
_BASE64URL: Final = re.compile(r"[A-Za-z0-9_-]*")


class VerificationKeyLike(Protocol):
    """What the verifier needs from a key: its id, the algorithm its JWK names, the key."""

    @property
    def kid(self) -> str: ...

    @property
    def algorithm(self) -> str: ...

    @property
    def key(self) -> jwt.PyJWK: ...


class KeyProvider(Protocol):
    """Where the verifier gets keys; :class:`interceptors.KeyCache` is the real one."""

    def get_key(self, kid: str) -> VerificationKeyLike:
        """Return the key for ``kid``; may block briefly. Raises UnknownKey / KeysUnavailable."""
        ...

    async def aget_key(self, kid: str) -> VerificationKeyLike:
        """Like :meth:`get_key`, without blocking the event loop."""
        ...

    def add_removal_listener(self, callback: Callable[[frozenset[str]], None]) -> None:
        """Call ``callback`` with the kids that left the key set, whenever some do."""
        ...


class RevocationChecker(Protocol):
    """Tells whether a session was revoked; :class:`interceptors.RevocationList` is the real one."""

    def is_revoked(self, session_id: str) -> bool:
        """True when tokens carrying this ``sid`` must be refused; must not block."""
        ...


@dataclass(frozen=True, kw_only=True)
class TokenPolicy:
    """What a token must satisfy to be accepted.

    Attributes:
        issuer: The exact ``iss`` the issuer puts in its tokens.
        audience: This service's audience; ``aud`` must be it or a list containing it.
        algorithms: JWS algorithms accepted; asymmetric ones only.
        leeway: Seconds of clock skew tolerated for ``exp``, ``nbf`` and ``iat``.
        token_type: The required ``typ`` header (RFC 9068 §2.1), compared case-insensitively.
        max_token_length: Longer tokens are rejected before any parsing.
        max_lifetime: Largest ``exp - iat`` accepted, in seconds.
        max_json_depth: Deepest nesting of JSON arrays and objects accepted in the
            header and the claims (the top-level object counts as 1).
        required_claims: Claims that must be present; always includes iss, sub, aud, exp, iat.

    Raises:
        ValueError: On an algorithm that is symmetric, ``none`` or unknown, or another
            value that makes no sense.
    """

    issuer: str
    audience: str
    algorithms: frozenset[str] = frozenset({"RS256", "PS256", "ES256", "EdDSA"})
    leeway: float = 30.0
    token_type: str = "at+jwt"  # noqa: S105 -- a JOSE "typ" value, not a secret
    max_token_length: int = 8192
    max_lifetime: float = 86400.0
    max_json_depth: int = 16
    required_claims: frozenset[str] = frozenset({"iss", "sub", "aud", "exp", "iat", "jti"})

    def __post_init__(self) -> None:
        object.__setattr__(self, "algorithms", frozenset(self.algorithms))
        object.__setattr__(self, "required_claims", frozenset(self.required_claims))
        if not isinstance(self.issuer, str) or not self.issuer:
            raise ValueError("issuer must be a non-empty string")
        if not isinstance(self.audience, str) or not self.audience:
            raise ValueError("audience must be a non-empty string")
        if not self.algorithms:
            raise ValueError("algorithms must not be empty")
        unsupported = self.algorithms - SUPPORTED_ALGORITHMS
        if unsupported:
            raise ValueError(
                f"unsupported algorithms {sorted(unsupported)!r}: "
                f"only {sorted(SUPPORTED_ALGORITHMS)!r} (never HS* or none)"
            )
        if not math.isfinite(self.leeway) or self.leeway < 0:
            raise ValueError("leeway must be a finite number >= 0")
        if not math.isfinite(self.max_lifetime) or self.max_lifetime <= 0:
            raise ValueError("max_lifetime must be a finite number > 0")
        if self.max_token_length <= 0:
            raise ValueError("max_token_length must be > 0")
        if self.max_json_depth < 2:
            raise ValueError("max_json_depth must be >= 2 (an object holding a list)")
        if not self.token_type or not self.token_type.isascii():
            raise ValueError("token_type must be a non-empty ASCII string")
        missing = _ALWAYS_REQUIRED - self.required_claims
        if missing:
            raise ValueError(f"required_claims must include {sorted(missing)!r}")


@dataclass(frozen=True, kw_only=True)
class Principal:
    """The verified caller, as the access token describes it.

    Attributes:
        subject: ``sub``: a stable user id.
        username: ``username`` claim, or ``""``.
        scopes: ``scope`` split on spaces (RFC 9068 §2.2.3).
        session_id: ``sid``, or ``None``.
        token_id: ``jti``, or ``""`` when the policy does not require it.
        issued_at: ``iat``, seconds since the epoch.
        expires_at: ``exp``, seconds since the epoch.
        claims: Every claim of the token, read-only.
    """

    subject: str
    username: str
    scopes: frozenset[str]
    session_id: str | None
    token_id: str
    issued_at: int
    expires_at: int
    claims: Mapping[str, Any] = field(repr=False)

    def has_scopes(self, required: Iterable[str]) -> bool:
        """Tell whether the principal holds every scope in ``required``.

        Args:
            required: Scope names; a single string is split on spaces like a ``scope`` claim.
        """
        wanted = _split_scope(required) if isinstance(required, str) else frozenset(required)
        return wanted <= self.scopes


@dataclass(frozen=True, slots=True)
class _Parsed:
    """A token that passed the structural checks, before its signature is checked."""

    token: str
    kid: str
    alg: str
    claims: dict[str, Any]
    signing_input: bytes
    signature: bytes


@dataclass(frozen=True, slots=True)
class _Entry:
    """A verified token in the cache, with the window in which it may be reused."""

    principal: Principal
    not_before: float
    expires: float
    kid: str


class TokenVerifier:
    """Checks access tokens against a key provider and a policy; thread-safe.

    Verified tokens are remembered (bounded LRU keyed by the exact token) until their
    ``exp``; entries signed by a key are dropped the moment that key leaves the set.
    A token whose session was revoked is refused whether or not it is remembered.

    Build one with :meth:`from_source`, which owns what it builds and closes it
    on :meth:`close` (``with`` / ``async with`` do that), or from parts you
    own and close yourself, with the constructor.
    """

    def __init__(
        self,
        keys: KeyProvider,
        policy: TokenPolicy,
        *,
        cache_size: int = 4096,
        now: Callable[[], float] = time.time,
        revocations: RevocationChecker | None = None,
    ) -> None:
        """Create a verifier.

        Args:
            keys: Where keys come from, by ``kid``.
            policy: What a token must satisfy.
            cache_size: How many verified tokens to remember; 0 disables the cache.
            now: The clock, in seconds since the epoch.
            revocations: Revoked sessions (a :class:`~interceptors.RevocationList`
                following the auth service); a token whose ``sid`` it names is
                refused with :class:`RevokedToken`. Without it a token of an
                ended session passes until its ``exp``.
        """
        if cache_size < 0:
            raise ValueError("cache_size must be >= 0")
        self._keys = keys
        self._policy = policy
        self._revocations = revocations
        self._now = now
        self._cache_size = cache_size
        self._cache: OrderedDict[str, _Entry] = OrderedDict()
        self._lock = threading.Lock()
        self._removals = 0
        token_type = policy.token_type.lower().removeprefix("application/")
        self._accepted_types = frozenset({token_type, "application/" + token_type})
        self._owned: contextlib.ExitStack | None = None  # set by from_source
        keys.add_removal_listener(self._forget_kids)

    @classmethod
    def from_source(
        cls,
        source: KeySource,
        policy: TokenPolicy,
        *,
        cache_settings: CacheSettings | None = None,
        follow_revocations: bool = True,
        close_source: bool = True,
        cache_size: int = 4096,
    ) -> TokenVerifier:
        """A started verifier over a key cache (and revocation list) it builds and owns.

        Use it as a context manager (``with`` or ``async with``), or call
        :meth:`close` / :meth:`aclose` when done::

            source = AuthServiceSource("auth.internal:50051")
            with TokenVerifier.from_source(source, policy) as verifier:
                server = grpc.server(executor, interceptors=[AuthInterceptor(verifier)])

        Args:
            source: Where the keys come from. When it also serves revoked
                sessions (a :class:`~interceptors.RevocationSource`, such as
                :class:`~interceptors.AuthServiceSource`), the verifier follows them.
            policy: What a token must satisfy.
            cache_settings: How the key cache fetches and ages keys; the
                defaults when ``None``.
            follow_revocations: Follow revoked sessions when the source serves
                them. Without that, a token of an ended session passes until its ``exp``.
            close_source: Close ``source`` (its ``close()``, if it has one) when
                the verifier closes: the source is handed over, as a transport is to
                an ``httpx.Client``. ``False`` keeps it yours, e.g. to share one
                source between verifiers.
            cache_size: How many verified tokens to remember; 0 disables the cache.

        Raises:
            ValueError: A setting is out of range (nothing is left running).
        """
        with contextlib.ExitStack() as opened:
            # Closed in reverse: the followers stop before the source's channel goes.
            if close_source:
                close = getattr(source, "close", None)
                if callable(close):
                    opened.callback(close)
            keys = KeyCache(source, cache_settings)
            opened.callback(keys.close)
            revocations = None
            if follow_revocations and isinstance(source, RevocationSource):
                # Entries must outlive the leeway that lets an expired token pass.
                keep = max(KEEP_AFTER_EXPIRY, policy.leeway)
                revocations = RevocationList(source, keep_after_expiry=keep)
                opened.callback(revocations.close)
            verifier = cls(keys, policy, cache_size=cache_size, revocations=revocations)
            keys.start()
            if revocations is not None:
                revocations.start()
            verifier._owned = opened.pop_all()
        return verifier

    def close(self) -> None:
        """Stop and close what :meth:`from_source` built and was handed. Idempotent.

        A verifier made with the constructor owns nothing, so this closes
        nothing. Tokens can still be checked afterwards against the keys held.
        """
        with self._lock:
            owned, self._owned = self._owned, None
        if owned is not None:
            owned.close()

    async def aclose(self) -> None:
        """Like :meth:`close`, without blocking the event loop while background threads stop."""
        await asyncio.to_thread(self.close)

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        await self.aclose()

    def verify(self, token: str) -> Principal:
        """Verify ``token`` and return who it speaks for.

        Raises:
            AuthError: A subclass naming why the token was refused (see ``_errors``).
        """
        principal = self._cached(token)
        if principal is None:
            parsed = self._parse(token)
            removals = self._removals
            key = self._keys.get_key(parsed.kid)
            principal = self._finish(parsed, key, removals)
        return self._unrevoked(principal)

    async def averify(self, token: str) -> Principal:
        """Like :meth:`verify`, but never blocks the event loop on a key fetch."""
        principal = self._cached(token)
        if principal is None:
            parsed = self._parse(token)
            removals = self._removals
            key = await self._keys.aget_key(parsed.kid)
            principal = self._finish(parsed, key, removals)
        return self._unrevoked(principal)

    @property
    def keys(self) -> KeyProvider:
        """Where this verifier gets its keys (from :meth:`from_source`: its KeyCache)."""
        return self._keys

    @property
    def revocations(self) -> RevocationChecker | None:
        """The revoked-session list this verifier consults, if any."""
        return self._revocations

    def _unrevoked(self, principal: Principal) -> Principal:
        # Checked after the cache too: a session revoked after its token was cached still fails.
        revocations = self._revocations
        if (
            revocations is not None
            and principal.session_id is not None
            and revocations.is_revoked(principal.session_id)
        ):
            raise RevokedToken("the token's session was revoked")
        return principal

    # -- cache -----------------------------------------------------------------------

    def _cached(self, token: str) -> Principal | None:
        if not self._cache_size or not isinstance(token, str):
            return None
        now = self._now()
        with self._lock:
            entry = self._cache.get(token)
            if entry is None:
                return None
            if entry.not_before <= now < entry.expires:
                self._cache.move_to_end(token)
                return entry.principal
            del self._cache[token]
            return None

    def _remember(self, token: str, entry: _Entry, removals: int) -> None:
        if not self._cache_size or not entry.not_before <= self._now() < entry.expires:
            return
        with self._lock:
            # A key left the set while this token was being checked: it may be that key.
            if removals != self._removals:
                return
            self._cache[token] = entry
            self._cache.move_to_end(token)
            while len(self._cache) > self._cache_size:
                self._cache.popitem(last=False)

    def _forget_kids(self, kids: frozenset[str]) -> None:
        with self._lock:
            self._removals += 1
            stale = [token for token, entry in self._cache.items() if entry.kid in kids]
            for token in stale:
                del self._cache[token]
        if stale:
            _LOGGER.info("dropped %d cached tokens signed by removed keys", len(stale))

    # -- the checks --------------------------------------------------------------------

    def _parse(self, token: str) -> _Parsed:
        policy = self._policy
        if not isinstance(token, str):
            raise MalformedToken("token is not a string")
        if len(token) > policy.max_token_length:
            raise MalformedToken("token too long")
        if not token.isascii():
            raise MalformedToken("token is not ASCII")
        segments = token.split(".")
        if len(segments) != 3:
            raise MalformedToken("token is not a compact JWS of three segments")
        header_segment, payload_segment, signature_segment = segments

        depth = policy.max_json_depth
        header = _json_object(_b64decode(header_segment, "header"), "header", depth)
        alg = header.get("alg")
        if not isinstance(alg, str):
            raise MalformedToken("alg header missing or not a string")
        if alg not in policy.algorithms:
            raise InvalidSignature("alg header not allowed by policy")
        kid = header.get("kid")
        if not isinstance(kid, str) or not kid or len(kid) > _MAX_KID_LENGTH:
            raise MalformedToken("kid header missing, empty, too long or not a string")
        # RFC 7515 §4.1.11: we understand no extension, so any "crit" is a rejection.
        if "crit" in header:
            raise MalformedToken("crit header names an unsupported extension")
        if header.get("b64", True) is not True:
            raise MalformedToken("unencoded payload (b64) is not accepted")
        typ = header.get("typ")
        if not isinstance(typ, str) or typ.lower() not in self._accepted_types:
            raise InvalidClaims("typ header is not the access token type")

        claims = _json_object(_b64decode(payload_segment, "payload"), "payload", depth)
        signature = _b64decode(signature_segment, "signature")
        if not signature:
            raise InvalidSignature("empty signature")
        signing_input = token[: len(header_segment) + 1 + len(payload_segment)].encode("ascii")
        return _Parsed(
            token=token,
            kid=kid,
            alg=alg,
            claims=claims,
            signing_input=signing_input,
            signature=signature,
        )

    def _finish(self, parsed: _Parsed, key: VerificationKeyLike, removals: int) -> Principal:
        policy = self._policy
        # RFC 8725 §3.1: the key's own algorithm decides, never the token's header.
        if parsed.alg != key.algorithm or key.algorithm not in policy.algorithms:
            raise InvalidSignature("alg header does not match the key's algorithm")
        # The segments were decoded and the claims are checked below, strictly and with
        # the injected clock; PyJWT's decode would parse everything again (~3x the cost
        # of the RSA check itself), so only its algorithm object verifies the signature.
        # ECDSA signatures are malleable: (r, n - s) verifies whenever (r, s) does. RFC 7518
        # does not ask for low-S and common issuers (OpenSSL among them) emit both halves,
        # so both are accepted and a token may have two valid spellings. Nothing keys
        # security on the raw string: the cache below maps a spelling to what it proved
        # (a twin is just another entry), and revocation keys on ``jti``/``sid``.
        jwk = key.key
        try:
            valid = jwk.Algorithm.verify(parsed.signing_input, jwk.key, parsed.signature)
        except (
            jwt_errors.PyJWTError,
            TypeError,
            ValueError,
            LookupError,
            ArithmeticError,
            NotImplementedError,
            crypto_exceptions.InvalidSignature,
            crypto_exceptions.InvalidKey,
            crypto_exceptions.UnsupportedAlgorithm,
            crypto_exceptions.InternalError,
        ) as exc:
            raise InvalidSignature(f"crypto layer failed with {type(exc).__name__}") from exc
        if not valid:
            raise InvalidSignature("signature does not verify")

        principal, entry = self._check_claims(parsed, key.kid)
        self._remember(parsed.token, entry, removals)
        return principal

    def _check_claims(self, parsed: _Parsed, kid: str) -> tuple[Principal, _Entry]:
        policy = self._policy
        claims = parsed.claims
        missing = policy.required_claims - claims.keys()
        if missing:
            raise InvalidClaims(f"missing claims {sorted(missing)!r}")

        now = self._now()
        expires = _numeric_date(claims, "exp")
        issued = _numeric_date(claims, "iat")
        not_before = _numeric_date(claims, "nbf") if "nbf" in claims else -math.inf
        if expires <= now - policy.leeway:
            raise ExpiredToken("exp has passed")
        if not_before > now + policy.leeway:
            raise ImmatureToken("nbf lies in the future")
        if issued > now + policy.leeway:
            raise ImmatureToken("iat lies in the future")
        if expires <= issued:
            raise InvalidClaims("exp is not after iat")
        if expires - issued > policy.max_lifetime:
            raise InvalidClaims("lifetime longer than policy allows")

        if claims.get("iss") != policy.issuer:
            raise InvalidClaims("iss is not the trusted issuer")
        audience = claims.get("aud")
        if isinstance(audience, list):
            if not all(isinstance(item, str) for item in audience):
                raise InvalidClaims("aud list holds a non-string")
            if policy.audience not in audience:
                raise InvalidClaims("aud does not name this service")
        elif audience != policy.audience:
            raise InvalidClaims("aud does not name this service")

        subject = claims.get("sub")
        if not isinstance(subject, str) or not subject:
            raise InvalidClaims("sub must be a non-empty string")
        scope = _optional_str(claims, "scope")
        username = _optional_str(claims, "username")
        session_id = _optional_str(claims, "sid")
        token_id = _optional_str(claims, "jti")

        principal = Principal(
            subject=subject,
            username=username or "",
            scopes=_split_scope(scope or ""),
            session_id=session_id,
            token_id=token_id or "",
            issued_at=int(issued),
            expires_at=int(expires),
            claims=MappingProxyType(claims),
        )
        return principal, _Entry(principal, not_before, expires, kid)


def _b64decode(segment: str, name: str) -> bytes:
    """Decode unpadded base64url, refusing anything but its one canonical spelling."""
    if len(segment) % 4 == 1 or _BASE64URL.fullmatch(segment) is None:
        raise MalformedToken(f"{name} is not unpadded base64url")
    try:
        raw = base64.urlsafe_b64decode(segment + "=" * (-len(segment) % 4))
    except (binascii.Error, ValueError) as exc:
        raise MalformedToken(f"{name} is not base64url") from exc
    # Leftover bits must be zero, so one token has exactly one spelling (cache key).
    if base64.urlsafe_b64encode(raw).rstrip(b"=") != segment.encode("ascii"):
        raise MalformedToken(f"{name} is not canonical base64url")
    return raw


class _DuplicateMember(ValueError):
    pass


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    obj = dict(pairs)
    if len(obj) != len(pairs):
        raise _DuplicateMember("duplicate member name")
    return obj


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def _json_object(raw: bytes, name: str, max_depth: int) -> dict[str, Any]:
    """Parse strict UTF-8 JSON: an object with unique member names, at most ``max_depth`` deep."""
    try:
        value = json.loads(
            raw.decode("utf-8"),
            object_pairs_hook=_no_duplicates,
            parse_constant=_no_constant,
        )
    except _DuplicateMember as exc:
        raise MalformedToken(f"{name} repeats a member name") from exc
    except (ValueError, RecursionError) as exc:
        raise MalformedToken(f"{name} is not JSON") from exc
    if not isinstance(value, dict):
        raise MalformedToken(f"{name} is not a JSON object")
    # Counting brackets (in C) bounds the depth from above, so the walk runs only
    # for documents that could be too deep, never for an ordinary token.
    if raw.count(b"[") + raw.count(b"{") > max_depth and _deeper_than(value, max_depth):
        raise MalformedToken(f"{name} nests JSON deeper than {max_depth} levels")
    # JSON can escape a lone UTF-16 surrogate ("\ud800"), which is not Unicode text:
    # a claim holding one breaks whatever encodes it later (protobuf, logs). Only a
    # document with a \u escape can hold one, so ordinary tokens skip the walk.
    if b"\\u" in raw and _holds_lone_surrogate(value):
        raise MalformedToken(f"{name} holds a lone UTF-16 surrogate")
    return value


def _holds_lone_surrogate(value: Any) -> bool:
    """Tell whether any string (member name or value) is not encodable as UTF-8."""
    stack: list[Any] = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, str):
            try:
                item.encode("utf-8")
            except UnicodeEncodeError:
                return True
        elif isinstance(item, dict):
            stack.extend(item)
            stack.extend(item.values())
        elif isinstance(item, list):
            stack.extend(item)
    return False


def _deeper_than(value: Any, limit: int) -> bool:
    """Tell whether arrays and objects nest more than ``limit`` levels (iteratively)."""
    stack: list[tuple[Any, int]] = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, dict):
            children: Iterable[Any] = item.values()
        elif isinstance(item, list):
            children = item
        else:
            continue
        if depth > limit:
            return True
        stack.extend((child, depth + 1) for child in children)
    return False


def _numeric_date(claims: Mapping[str, Any], name: str) -> float:
    value = claims.get(name)
    # bool is an int subclass: ``"exp": true`` must not read as 1.
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise InvalidClaims(f"{name} is not a number")
    if isinstance(value, float) and not math.isfinite(value):
        raise InvalidClaims(f"{name} is not finite")
    return value


def _optional_str(claims: Mapping[str, Any], name: str) -> str | None:
    value = claims.get(name)
    if value is not None and not isinstance(value, str):
        raise InvalidClaims(f"{name} is not a string")
    return value


def _split_scope(scope: str) -> frozenset[str]:
    return frozenset(part for part in scope.split(" ") if part)
