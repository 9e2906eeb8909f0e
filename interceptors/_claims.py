"""The claims policy (RFC 7519 §4.1, RFC 9068 §2.2, RFC 8725 §3.8-3.10): what a token must say.

:func:`check_claims` is one pure function of the claims, a :class:`TokenPolicy`
and the time: it returns the :class:`Principal` they describe or raises the
:class:`~interceptors.InvalidToken` subclass naming what is wrong. It runs only
after the signature verified (see :mod:`interceptors._verify`), so nothing here
ever trusts an unsigned claim.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, Final

from interceptors._errors import ExpiredToken, ImmatureToken, InvalidClaims
from interceptors._keyset import check_algorithms

# Without these the verifier cannot decide expiry, lifetime, issuer, audience or subject.
_ALWAYS_REQUIRED: Final = frozenset({"iss", "sub", "aud", "exp", "iat"})
_NO_SCOPES: Final[frozenset[str]] = frozenset()
# The scope sets of scope strings seen, shared by the principals that carry them: an
# issuer writes few distinct scope strings, so most tokens cost one lookup instead of
# a split and a new frozenset, and a remembered principal holds one object fewer for
# the garbage collector to walk. Only verified tokens' claims reach this map.
_SCOPE_SETS: Final[dict[str, frozenset[str]]] = {}
_MAX_SCOPE_SETS: Final = 256
_new_principal: Final = object.__new__
_set_attribute: Final = object.__setattr__


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
        # One list of supported algorithms for the key set and the policy (HS* and
        # "none" are never in it, RFC 8725 §3.1-3.2).
        object.__setattr__(self, "algorithms", check_algorithms(self.algorithms))
        object.__setattr__(self, "required_claims", frozenset(self.required_claims))
        if not isinstance(self.issuer, str) or not self.issuer:
            raise ValueError("issuer must be a non-empty string")
        if not isinstance(self.audience, str) or not self.audience:
            raise ValueError("audience must be a non-empty string")
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
        client_id: ``client_id`` (RFC 9068 §2.2): set on a service's client-credentials
            token, where it equals ``subject``; ``None`` on a user's token.
        actors: The delegation chain of an exchanged token (RFC 8693 §4.1 ``act``),
            outermost first: ``actors[0]`` is the service that called with it, the rest
            acted before it. Empty when the subject called directly.
    """

    subject: str
    username: str
    scopes: frozenset[str]
    session_id: str | None
    token_id: str
    issued_at: int
    expires_at: int
    claims: Mapping[str, Any] = field(repr=False)
    client_id: str | None = None
    actors: tuple[str, ...] = ()

    @property
    def kind(self) -> str:
        """``"service"`` for a client-credentials token (sub = client_id), else ``"user"``."""
        return (
            "service" if self.client_id is not None and self.client_id == self.subject else "user"
        )

    @property
    def is_service(self) -> bool:
        """Whether the caller is a service identity rather than a user."""
        return self.kind == "service"

    def has_scopes(self, required: Iterable[str]) -> bool:
        """Tell whether the principal holds every scope in ``required``.

        Args:
            required: Scope names; a single string is split on spaces like a ``scope`` claim.
        """
        wanted = _split_scope(required) if isinstance(required, str) else frozenset(required)
        return wanted <= self.scopes


def check_claims(claims: Mapping[str, Any], policy: TokenPolicy, now: float) -> Principal:
    """Check a signed token's claims against ``policy`` at time ``now``.

    Args:
        claims: The decoded payload; the principal exposes it read-only, not copied.
        policy: What the token must satisfy.
        now: The time, in seconds since the epoch.

    Returns:
        Who the token speaks for.

    Raises:
        ExpiredToken: ``exp`` has passed, beyond the leeway.
        ImmatureToken: ``nbf`` or ``iat`` lies in the future, beyond the leeway.
        InvalidClaims: A claim is missing, of the wrong type, or names another issuer
            or audience; or the lifetime is not positive or exceeds the policy's.
    """
    return check_claims_window(claims, policy, now)[0]


def check_claims_window(
    claims: Mapping[str, Any], policy: TokenPolicy, now: float
) -> tuple[Principal, float, float]:
    """:func:`check_claims`, also returning ``(not_before, expires)`` without leeway.

    ``not_before`` is ``nbf`` (``-inf`` without one) and ``expires`` the exact
    ``exp``: the verifier reuses a verified token only inside that window.
    """
    if not claims.keys() >= policy.required_claims:
        missing = policy.required_claims - claims.keys()
        raise InvalidClaims(f"missing claims {sorted(missing)!r}")
    get = claims.get

    # Each claim's usual type is decided inline (``type(x) is int``: a bool's type is
    # bool); only an unusual one takes the helper that checks it fully. Calls, not
    # checks, were most of this function's cost.
    expires = get("exp")
    if type(expires) is not int:
        expires = _numeric_date(claims, "exp")
    issued = get("iat")
    if type(issued) is not int:
        issued = _numeric_date(claims, "iat")
    not_before = get("nbf", -math.inf)
    if type(not_before) is not int and "nbf" in claims:
        not_before = _numeric_date(claims, "nbf")
    leeway = policy.leeway
    if expires <= now - leeway:
        raise ExpiredToken("exp has passed")
    if not_before > now + leeway:
        raise ImmatureToken("nbf lies in the future")
    if issued > now + leeway:
        raise ImmatureToken("iat lies in the future")
    if expires <= issued:
        raise InvalidClaims("exp is not after iat")
    if expires - issued > policy.max_lifetime:
        raise InvalidClaims("lifetime longer than policy allows")

    if get("iss") != policy.issuer:
        raise InvalidClaims("iss is not the trusted issuer")
    audience = get("aud")
    if isinstance(audience, list):
        if not all(isinstance(item, str) for item in audience):
            raise InvalidClaims("aud list holds a non-string")
        if policy.audience not in audience:
            raise InvalidClaims("aud does not name this service")
    elif audience != policy.audience:
        raise InvalidClaims("aud does not name this service")

    subject = get("sub")
    if not isinstance(subject, str) or not subject:
        raise InvalidClaims("sub must be a non-empty string")
    scope = get("scope")
    username = get("username")
    session_id = get("sid")
    token_id = get("jti")
    client_id = get("client_id")
    if (
        (scope is not None and type(scope) is not str)
        or (username is not None and type(username) is not str)
        or (session_id is not None and type(session_id) is not str)
        or (token_id is not None and type(token_id) is not str)
        or (client_id is not None and type(client_id) is not str)
    ):
        # A str subclass cannot come out of JSON; the helper names the culprit.
        for name in ("scope", "username", "sid", "jti", "client_id"):
            _optional_str(claims, name)
    # Most tokens carry no ``act``: one dict lookup, the chain parsed only when present.
    act = get("act")
    actors = () if act is None else _actor_chain(act)
    if scope:
        scopes = _SCOPE_SETS.get(scope)
        if scopes is None:
            scopes = _shared_scopes(scope)
    else:
        scopes = _NO_SCOPES

    # The values are checked: fill the instance's dict at once. The frozen dataclass's
    # own __init__ sets each of the ten fields with object.__setattr__ (1.6 µs, two
    # thirds of this function); tests/test_claims.py keeps the two paths equal.
    principal = _new_principal(Principal)
    _set_attribute(
        principal,
        "__dict__",
        {
            "subject": subject,
            "username": username or "",
            "scopes": scopes,
            "session_id": session_id,
            "token_id": token_id or "",
            "issued_at": int(issued),
            "expires_at": int(expires),
            "claims": MappingProxyType(claims),
            "client_id": client_id,
            "actors": actors,
        },
    )
    return principal, not_before, expires


def _actor_chain(act: object) -> tuple[str, ...]:
    """The ``sub`` of each nested ``act`` object (RFC 8693 §4.1), outermost first."""
    chain: list[str] = []
    # The JSON depth limit of the parse already bounds the nesting.
    while act is not None:
        if not isinstance(act, Mapping):
            raise InvalidClaims("act is not an object")
        actor = act.get("sub")
        if not isinstance(actor, str) or not actor:
            raise InvalidClaims("act has no sub")
        chain.append(actor)
        act = act.get("act")
    return tuple(chain)


def _numeric_date(claims: Mapping[str, Any], name: str) -> float:
    value = claims.get(name)
    if type(value) is int:  # the usual case, decided at once (a bool's type is bool)
        return value
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


def _shared_scopes(scope: str) -> frozenset[str]:
    scopes = _split_scope(scope)
    if len(_SCOPE_SETS) >= _MAX_SCOPE_SETS:
        # Many distinct scope strings only cost the split again.
        _SCOPE_SETS.clear()
    _SCOPE_SETS[scope] = scopes
    return scopes


def _split_scope(scope: str) -> frozenset[str]:
    return frozenset(filter(None, scope.split(" ")))  # drops the empty parts
