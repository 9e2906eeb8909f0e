"""Verify ssot-auth access tokens in gRPC servers, and attach them in clients."""

from interceptors._auth_service import AuthServiceSource, GrpcJwksSource
from interceptors._binding import CERT_BINDINGS, CertBinding
from interceptors._cache import CacheSettings, CacheStats, KeyCache
from interceptors._client import (
    AsyncTokenManager,
    BearerClientInterceptor,
    TokenManager,
    TokenRequestError,
)
from interceptors._context import current_principal
from interceptors._errors import (
    AuthError,
    CertificateMismatch,
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
    RevocationStreamError,
    RevokedToken,
    UnknownKey,
)
from interceptors._keyset import KeySet, VerificationKey
from interceptors._policy import HEALTH_METHODS, REFLECTION_METHODS, MethodPolicy
from interceptors._revocation import (
    RevocationBatch,
    RevocationList,
    RevocationSource,
    RevocationStats,
    RevocationStream,
)
from interceptors._server import AsyncAuthInterceptor, AuthInterceptor, bearer_token
from interceptors._sources import (
    DiscoverySource,
    FetchResult,
    HttpJwksSource,
    KeySource,
    KeyWatch,
    StaticSource,
)
from interceptors._verify import (
    KeyProvider,
    Principal,
    RevocationChecker,
    TokenPolicy,
    TokenVerifier,
)
from interceptors.tls import cert_thumbprint

__all__ = [
    "CERT_BINDINGS",
    "HEALTH_METHODS",
    "REFLECTION_METHODS",
    "AsyncAuthInterceptor",
    "AsyncTokenManager",
    "AuthError",
    "AuthInterceptor",
    "AuthServiceSource",
    "BearerClientInterceptor",
    "CacheSettings",
    "CacheStats",
    "CertBinding",
    "CertificateMismatch",
    "DiscoverySource",
    "ExpiredToken",
    "FetchResult",
    "GrpcJwksSource",
    "HttpJwksSource",
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
    "Principal",
    "RevocationBatch",
    "RevocationChecker",
    "RevocationList",
    "RevocationSource",
    "RevocationStats",
    "RevocationStream",
    "RevocationStreamError",
    "RevokedToken",
    "StaticSource",
    "TokenManager",
    "TokenPolicy",
    "TokenRequestError",
    "TokenVerifier",
    "UnknownKey",
    "VerificationKey",
    "bearer_token",
    "cert_thumbprint",
    "current_principal",
]
