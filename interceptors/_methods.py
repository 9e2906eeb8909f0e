"""Which methods need a token, and which scopes each one needs."""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Final

#: The standard health service (grpc.health.v1): public by default so probes need no token.
HEALTH_METHODS: Final = frozenset(
    {
        "/grpc.health.v1.Health/Check",
        "/grpc.health.v1.Health/Watch",
        "/grpc.health.v1.Health/List",
    }
)
#: Server reflection, both the v1 and the older v1alpha service.
REFLECTION_METHODS: Final = frozenset(
    {
        "/grpc.reflection.v1.ServerReflection/ServerReflectionInfo",
        "/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo",
    }
)

_IDENT = r"[A-Za-z_][A-Za-z0-9_]*"
_METHOD_NAME: Final = re.compile(rf"/(?:{_IDENT}\.)*{_IDENT}/{_IDENT}")
_EMPTY: Final[frozenset[str]] = frozenset()


def _check_method(method: object) -> str:
    if not isinstance(method, str) or _METHOD_NAME.fullmatch(method) is None:
        raise ValueError(f"not a full gRPC method name like '/pkg.Service/Method': {method!r}")
    return method


def _check_scopes(method: str, scopes: object) -> frozenset[str]:
    if isinstance(scopes, str) or not isinstance(scopes, frozenset | set | list | tuple):
        raise ValueError(f"scopes for {method} must be a set of strings, not {scopes!r}")
    checked = frozenset(scopes)
    for scope in checked:
        if not isinstance(scope, str) or not scope or " " in scope:
            raise ValueError(f"scope for {method} must be a non-empty string without spaces")
    return checked


@dataclass(frozen=True, kw_only=True)
class MethodPolicy:
    """Per-method access rules for the auth interceptors.

    Every method not listed as public needs a valid token; a method in
    ``required_scopes`` also needs all of the listed scopes.

    Attributes:
        public_methods: Full method names ("/pkg.Service/Method") that need no token.
        required_scopes: Method name -> scopes the token must all carry.
        public_health: Whether the grpc.health.v1 methods need no token.
        public_reflection: Whether server reflection needs no token.
        delegated_actors: Method name -> the services allowed to act for a user on it
            (RFC 8693 ``act``): a delegated token is accepted only when every actor in its
            chain is listed; an empty set refuses delegated tokens. Methods not listed
            accept delegated tokens from any actor (the token's audience already
            limits who could have obtained them).

    Raises:
        ValueError: On a malformed method name or scope, or a method that is both
            public and scoped.
    """

    public_methods: frozenset[str] = frozenset()
    required_scopes: Mapping[str, frozenset[str]] = field(default_factory=dict)
    public_health: bool = True
    public_reflection: bool = True
    delegated_actors: Mapping[str, frozenset[str]] = field(default_factory=dict)
    _public: frozenset[str] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        public = frozenset(_check_method(method) for method in self.public_methods)
        scoped = MappingProxyType(
            {
                _check_method(method): _check_scopes(method, scopes)
                for method, scopes in self.required_scopes.items()
            }
        )
        everything_public = (
            public
            | (HEALTH_METHODS if self.public_health else _EMPTY)
            | (REFLECTION_METHODS if self.public_reflection else _EMPTY)
        )
        both = everything_public & scoped.keys()
        if both:
            raise ValueError(f"methods cannot be both public and scoped: {sorted(both)!r}")
        object.__setattr__(self, "public_methods", public)
        object.__setattr__(self, "required_scopes", scoped)
        object.__setattr__(self, "_public", everything_public)
        actors = MappingProxyType(
            {
                _check_method(method): _check_scopes(method, names)
                for method, names in self.delegated_actors.items()
            }
        )
        object.__setattr__(self, "delegated_actors", actors)

    def is_public(self, method: str) -> bool:
        """Tell whether ``method`` may be called without a token."""
        return method in self._public

    def scopes_for(self, method: str) -> frozenset[str]:
        """Return the scopes a token needs to call ``method`` (empty: any valid token)."""
        return self.required_scopes.get(method, _EMPTY)

    def actors_for(self, method: str) -> frozenset[str] | None:
        """The actors allowed on ``method`` (empty: no delegated token), or ``None``: any."""
        return self.delegated_actors.get(method)
