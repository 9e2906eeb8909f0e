"""Verify access tokens: a strict JWS parse, the key the ``kid`` selects, RFC 8725/9068 checks.

:class:`TokenVerifier` chains three steps: :func:`~interceptors._jws.parse_compact`
(pure, RFC 7515), the signature check with the key its provider returns for the
``kid`` (the only step that may wait, for a key fetch), and
:func:`~interceptors._claims.check_claims` (pure, RFC 7519/9068). One sans-I/O
core serves :meth:`TokenVerifier.verify` and :meth:`TokenVerifier.averify`; the
two differ only in how they ask the key provider for the key. Tokens verified
more than once are remembered in a bounded LRU that serves only the exact token
string it verified (:class:`~interceptors._verified_tokens.VerifiedTokens`).
:meth:`TokenVerifier.from_source` is the one owner of a verifier's moving parts:
it builds and starts the key cache and revocation list, and closes them (and
the source) when the verifier is closed.

Why the cache may key on the raw string although ECDSA signatures are malleable:
``(r, n - s)`` verifies whenever ``(r, s)`` does. RFC 7518 does not ask for low-S
and common issuers (OpenSSL among them) emit both halves, so both are accepted
and a token may have two valid spellings. Nothing keys security on the raw
string: the cache maps a spelling to what it proved (a twin is just another
entry), and revocation keys on ``jti``/``sid``.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
from collections.abc import Callable
from types import TracebackType
from typing import Protocol, Self, runtime_checkable

import jwt

from interceptors._cache import KeyCache
from interceptors._cache_settings import CacheSettings
from interceptors._claims import Principal, TokenPolicy, check_claims_window
from interceptors._errors import InvalidSignature, RevokedToken
from interceptors._jws import CompactParser, ParsedJws
from interceptors._revocation import KEEP_AFTER_EXPIRY, RevocationList, RevocationSource
from interceptors._signature import CRYPTO_FAILURES
from interceptors._sources import KeySource
from interceptors._verified_tokens import VerifiedTokens


class VerificationKeyLike(Protocol):
    """What the verifier needs from a key: its id, the algorithm its JWK names, the key."""

    @property
    def kid(self) -> str: ...

    @property
    def algorithm(self) -> str: ...

    @property
    def key(self) -> jwt.PyJWK: ...


class KeyProvider(Protocol):
    """Where the verifier gets keys; :class:`interceptors.KeyCache` is the real one.

    A custom provider may subclass this protocol explicitly to inherit the no-op
    :meth:`add_removal_listener`; it then implements :meth:`get_key` and
    :meth:`aget_key` only.
    """

    def get_key(self, kid: str) -> VerificationKeyLike:
        """Return the key for ``kid``; may block briefly. Raises UnknownKey / KeysUnavailable."""
        ...

    async def aget_key(self, kid: str) -> VerificationKeyLike:
        """Like :meth:`get_key`, without blocking the event loop."""
        ...

    def add_removal_listener(self, callback: Callable[[frozenset[str]], None]) -> None:
        """Call ``callback`` with the kids that left the key set, whenever some do.

        The inherited default ignores ``callback``, which is right only for a provider
        whose keys never leave: the verifier drops cached tokens of a removed key
        only when told, so otherwise they stay accepted until their ``exp``.
        """
        return None


class RevocationChecker(Protocol):
    """Tells whether a session was revoked; :class:`interceptors.RevocationList` is the real one."""

    def is_revoked(self, session_id: str) -> bool:
        """True when tokens carrying this ``sid`` must be refused; must not block."""
        ...


@runtime_checkable
class WatermarkChecker(Protocol):
    """A :class:`RevocationChecker` that also knows "issued before" watermarks.

    :class:`interceptors.RevocationList` is one; the verifier then asks it
    instead of :meth:`RevocationChecker.is_revoked`.
    """

    def refuses(self, *, session_id: str | None, subject: str, issued_at: int) -> bool:
        """True when a token of this ``sid``, ``sub`` and ``iat`` must be refused.

        Must not block; may raise :class:`RevocationsUnavailable` (fail closed).
        """
        ...


class TokenVerifier:
    """Checks access tokens against a key provider and a policy; thread-safe.

    A token is remembered from its second successful check on (bounded LRU serving
    the exact token string) until its ``exp``: a token seen once, as when a client
    sends a new token per call, costs no entry. Entries signed by a key are dropped
    the moment that key leaves the set.
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
        # Decided once: isinstance against a runtime-checkable protocol costs several
        # µs, more than the rest of a cached call's check.
        self._watermarks: WatermarkChecker | None = (
            revocations if isinstance(revocations, WatermarkChecker) else None
        )
        self._now = now
        self._cache_size = cache_size
        self._tokens = VerifiedTokens(cache_size, now)
        self._lock = threading.Lock()
        token_type = policy.token_type.lower().removeprefix("application/")
        self._algorithms = policy.algorithms
        # Bound once here; it also remembers the headers it has checked. The bound
        # method, not the instance: calling an instance goes through its type's
        # __call__ lookup on every token.
        self._parse: Callable[[str], ParsedJws] = CompactParser(
            algorithms=policy.algorithms,
            accepted_types=frozenset({token_type, "application/" + token_type}),
            max_length=policy.max_token_length,
            max_depth=policy.max_json_depth,
        ).__call__
        self._owned: contextlib.ExitStack | None = None  # set by from_source
        keys.add_removal_listener(self._tokens.forget_kids)

    @classmethod
    def from_source(
        cls,
        source: KeySource,
        policy: TokenPolicy,
        *,
        cache_settings: CacheSettings | None = None,
        follow_revocations: bool = True,
        revocations_fail_closed: float | None = None,
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
            revocations_fail_closed: ``None`` (the default) fails open: while the
                revocation stream is down, tokens revoked meanwhile pass until their
                ``exp``. Seconds: refuse every token with
                :class:`~interceptors.RevocationsUnavailable` (``UNAVAILABLE``) until
                the revocation list has synced, and once it has been out of sync
                for longer than this (``RevocationList(fail_closed_after=...)``).
            close_source: Close ``source`` (its ``close()``, if it has one) when
                the verifier closes: the source is handed over, as a transport is to
                an ``httpx.Client``. ``False`` keeps it yours, e.g. to share one
                source between verifiers.
            cache_size: How many verified tokens to remember; 0 disables the cache.

        Raises:
            ValueError: A setting is out of range, or ``revocations_fail_closed``
                is given without revocations to follow (nothing is left running).
        """
        follows = follow_revocations and isinstance(source, RevocationSource)
        if revocations_fail_closed is not None and not follows:
            raise ValueError("revocations_fail_closed needs a source that serves revocations")
        with contextlib.ExitStack() as opened:
            # Closed in reverse: the followers stop before the source's channel goes.
            if close_source:
                close = getattr(source, "close", None)
                if callable(close):
                    opened.callback(close)
            keys = KeyCache(source, cache_settings)
            opened.callback(keys.close)
            revocations = None
            if follows:
                assert isinstance(source, RevocationSource)
                # Entries must outlive the leeway that lets an expired token pass.
                keep = max(KEEP_AFTER_EXPIRY, policy.leeway)
                revocations = RevocationList(
                    source, keep_after_expiry=keep, fail_closed_after=revocations_fail_closed
                )
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
        principal = self._tokens.lookup(token)
        if principal is None:
            parsed = self._parse(token)
            removals = self._tokens.removals
            key = self._keys.get_key(parsed.kid)
            principal = self._finish(token, parsed, key, removals)
        if self._revocations is None:
            return principal
        return self._unrevoked(principal)

    async def averify(self, token: str) -> Principal:
        """Like :meth:`verify`, but never blocks the event loop on a key fetch."""
        principal = self._tokens.lookup(token)
        if principal is None:
            parsed = self._parse(token)
            removals = self._tokens.removals
            key = await self._keys.aget_key(parsed.kid)
            principal = self._finish(token, parsed, key, removals)
        if self._revocations is None:
            return principal
        return self._unrevoked(principal)

    @property
    def keys(self) -> KeyProvider:
        """Where this verifier gets its keys (from :meth:`from_source`: its KeyCache)."""
        return self._keys

    @property
    def cache_lookups(self) -> tuple[int, int]:
        """Verified-token cache ``(hits, misses)`` so far (for metrics)."""
        tokens = self._tokens
        return tokens.hits, tokens.misses

    @property
    def revocations(self) -> RevocationChecker | None:
        """The revoked-session list this verifier consults, if any."""
        return self._revocations

    def _unrevoked(self, principal: Principal) -> Principal:
        # Checked after the cache too: a session revoked after its token was cached still fails.
        revocations = self._revocations
        if revocations is None:
            return principal
        watermarks = self._watermarks
        if watermarks is not None:
            # Session, subject watermark and the global one: three O(1) lookups.
            if watermarks.refuses(
                session_id=principal.session_id,
                subject=principal.subject,
                issued_at=principal.issued_at,
            ):
                raise RevokedToken("the token was revoked")
        elif principal.session_id is not None and revocations.is_revoked(principal.session_id):
            raise RevokedToken("the token's session was revoked")
        return principal

    # -- the checks --------------------------------------------------------------------

    def _finish(
        self, token: str, parsed: ParsedJws, key: VerificationKeyLike, removals: int
    ) -> Principal:
        # RFC 8725 §3.1: the key's own algorithm decides, never the token's header.
        if parsed.alg != key.algorithm or key.algorithm not in self._algorithms:
            raise InvalidSignature("alg header does not match the key's algorithm")
        # The segments were decoded and the claims are checked below, strictly and with
        # the injected clock; PyJWT's decode would parse everything again (~3x the cost
        # of the RSA check itself), so only its algorithm object verifies the signature.
        # ECDSA twins (r, n - s) both verify: see the module docstring for why that is safe.
        # A VerificationKey carries its check, prepared once (interceptors._signature);
        # a custom provider's key is checked by its PyJWK's algorithm object, as before.
        check = getattr(key, "verify_signature", None)
        try:
            if check is not None:
                valid = check(parsed.signing_input, parsed.signature)
            else:
                jwk = key.key
                valid = jwk.Algorithm.verify(parsed.signing_input, jwk.key, parsed.signature)
        except CRYPTO_FAILURES as exc:
            raise InvalidSignature(f"crypto layer failed with {type(exc).__name__}") from exc
        if not valid:
            raise InvalidSignature("signature does not verify")

        now = self._now()
        principal, not_before, expires = check_claims_window(parsed.claims, self._policy, now)
        # Remembered only inside its window (the claims check allowed the leeway).
        if self._cache_size and not_before <= now < expires:
            self._tokens.remember(token, principal, not_before, expires, key.kid, removals)
        return principal
