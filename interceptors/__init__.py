"""Verify ssot-auth access tokens in gRPC servers, and attach them in clients.

The names below, grouped by what you do with them (``__all__`` is one flat list):

Use these:
    Server side: ``AuthInterceptor``, ``AsyncAuthInterceptor``, ``MethodPolicy``,
    ``TokenPolicy``, ``TokenVerifier`` (``TokenVerifier.from_source`` owns its
    parts), a key source (``AuthServiceSource``, formerly ``GrpcJwksSource``;
    ``HttpJwksSource``, ``DiscoverySource``, ``StaticSource``; ``AuthServiceSource(...,
    tokens=TokenManager.for_service(...))`` for an auth service run with ``--watch-auth
    token``), ``current_principal``,
    ``bearer_token``, ``cert_thumbprint``; ``KeyCache`` with ``CacheSettings`` and
    ``RevocationList`` to assemble a verifier yourself.
    Client side: ``TokenManager``, ``AsyncTokenManager`` (``for_service`` with
    ``PrivateKeyJwt`` or ``ClientSecret`` for a service identity), ``BearerClientInterceptor``.
    Calling on behalf of the user (RFC 8693 exchange): ``IdentityPropagator``,
    ``AsyncIdentityPropagator`` (``credentials=``: the same ``PrivateKeyJwt`` or
    ``ClientSecret``); ``current_bearer_token``.

Implement these (extension points):
    ``KeySource``, ``KeyWatch``, ``KeyProvider`` (with ``VerificationKeyLike``),
    ``RevocationChecker`` (or ``WatermarkChecker``), ``RevocationSource``, ``RevocationStream``,
    ``VerifyObserver`` (metrics and traces of each check: the opt-in modules
    :mod:`interceptors.prometheus` and :mod:`interceptors.otel` are two).

Inspect these (what the library hands you):
    ``Principal``; ``CacheStats``, ``RevocationStats``; ``FetchResult``,
    ``KeySet``, ``VerificationKey``, ``RevocationBatch``, ``Watermark``; ``CertBinding``,
    ``CERT_BINDINGS``, ``HEALTH_METHODS``, ``REFLECTION_METHODS``.

Catch these:
    ``AuthError`` and its subclasses (a refused call, a failed key source, each
    carrying its gRPC status; ``KeySourceError``/``KeySetError`` and
    ``RevocationStreamError`` stay inside the cache and the list),
    ``TokenClientError``/``TokenRequestError``/``NoCallerToken`` (the client helpers).
    The trees are drawn in ``interceptors._errors``.

The audit trail writer is the public leaf module :mod:`interceptors.audit`.
"""

from interceptors._auth_service import AuthServiceSource, GrpcJwksSource
from interceptors._binding import CERT_BINDINGS, CertBinding
from interceptors._cache import KeyCache
from interceptors._cache_settings import CacheSettings, CacheStats
from interceptors._claims import Principal, TokenPolicy
from interceptors._client_interceptors import BearerClientInterceptor
from interceptors._context import current_bearer_token, current_principal
from interceptors._errors import (
    AuthError,
    CertificateMismatch,
    DelegationRefused,
    ExpiredToken,
    ImmatureToken,
    InsufficientScope,
    InvalidClaims,
    InvalidSignature,
    InvalidToken,
    KeySetError,
    KeySourceError,
    KeysUnavailable,
    MalformedToken,
    MissingToken,
    NoCallerToken,
    RevocationStreamError,
    RevocationsUnavailable,
    RevokedToken,
    TokenClientError,
    TokenRequestError,
    UnknownKey,
)
from interceptors._keyset import KeySet, VerificationKey
from interceptors._methods import HEALTH_METHODS, REFLECTION_METHODS, MethodPolicy
from interceptors._observe import VerifyObserver
from interceptors._propagation import AsyncIdentityPropagator, IdentityPropagator
from interceptors._revocation import (
    RevocationBatch,
    RevocationList,
    RevocationSource,
    RevocationStats,
    RevocationStream,
)
from interceptors._revocation_entries import Watermark
from interceptors._server_interceptors import AsyncAuthInterceptor, AuthInterceptor, bearer_token
from interceptors._service_identity import ClientSecret, PrivateKeyJwt
from interceptors._sources import (
    DiscoverySource,
    FetchResult,
    HttpJwksSource,
    KeySource,
    KeyWatch,
    StaticSource,
)
from interceptors._token_manager import AsyncTokenManager, TokenManager
from interceptors._verify import (
    KeyProvider,
    RevocationChecker,
    TokenVerifier,
    VerificationKeyLike,
    WatermarkChecker,
)
from interceptors.tls import cert_thumbprint

__all__ = [
    "CERT_BINDINGS",
    "HEALTH_METHODS",
    "REFLECTION_METHODS",
    "AsyncAuthInterceptor",
    "AsyncIdentityPropagator",
    "AsyncTokenManager",
    "AuthError",
    "AuthInterceptor",
    "AuthServiceSource",
    "BearerClientInterceptor",
    "CacheSettings",
    "CacheStats",
    "CertBinding",
    "CertificateMismatch",
    "ClientSecret",
    "DelegationRefused",
    "DiscoverySource",
    "ExpiredToken",
    "FetchResult",
    "GrpcJwksSource",
    "HttpJwksSource",
    "IdentityPropagator",
    "ImmatureToken",
    "InsufficientScope",
    "InvalidClaims",
    "InvalidSignature",
    "InvalidToken",
    "KeyCache",
    "KeyProvider",
    "KeySet",
    "KeySetError",
    "KeySource",
    "KeySourceError",
    "KeyWatch",
    "KeysUnavailable",
    "MalformedToken",
    "MethodPolicy",
    "MissingToken",
    "NoCallerToken",
    "Principal",
    "PrivateKeyJwt",
    "RevocationBatch",
    "RevocationChecker",
    "RevocationList",
    "RevocationSource",
    "RevocationStats",
    "RevocationStream",
    "RevocationStreamError",
    "RevocationsUnavailable",
    "RevokedToken",
    "StaticSource",
    "TokenClientError",
    "TokenManager",
    "TokenPolicy",
    "TokenRequestError",
    "TokenVerifier",
    "UnknownKey",
    "VerificationKey",
    "VerificationKeyLike",
    "VerifyObserver",
    "Watermark",
    "WatermarkChecker",
    "bearer_token",
    "cert_thumbprint",
    "current_bearer_token",
    "current_principal",
]
