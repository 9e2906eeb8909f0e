"""The auth server's settings, validated once, before anything starts."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

from auth_server.hashing import HashingPolicy
from auth_server.hsm import Pkcs11Settings
from auth_server.jwk import ALGORITHMS, check_rsa_bits
from auth_server.kdf import KdfParameters
from auth_server.lifecycle import DEFAULT_ROTATION_INTERVAL, KeyLifecycle
from auth_server.passwords import Argon2Parameters
from auth_server.ratelimit import RateLimits
from auth_server.session_policy import MAX_ACCESS_TOKEN_TTL
from auth_server.sessions import SessionPolicy
from auth_server.throttle import ThrottlePolicy
from auth_server.watch_auth import WATCH_AUTH_MODES
from interceptors.tls import is_loopback_host

DEFAULT_GRPC_ADDRESS = "127.0.0.1:50051"
DEFAULT_HTTP_ADDRESS = "127.0.0.1:8080"
DEFAULT_ACCESS_TOKEN_TTL = 900
DEFAULT_JWKS_MAX_AGE = 300
DEFAULT_MAX_METADATA_SIZE = 16 * 1024
DEFAULT_MAX_MESSAGE_SIZE = 64 * 1024
DEFAULT_MAX_CONCURRENT_STREAMS = 100
DEFAULT_MAX_LOGIN_REQUEST_SIZE = 4096
KEY_STORES = ("db", "pkcs11")


def split_address(address: str) -> tuple[str, int]:
    """Split ``HOST:PORT`` (``[::1]:PORT`` for IPv6) and check the port; ValueError if unusable."""
    host, sep, port_text = address.rpartition(":")
    if not sep or not host or not port_text.isdigit():
        raise ValueError(f"expected HOST:PORT, got {address!r}")
    port = int(port_text)
    if not 0 <= port <= 65535:
        raise ValueError(f"port out of range in {address!r}")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    return host, port


@dataclass(frozen=True, kw_only=True)
class AuthServerConfig:
    """Everything ``ssot-auth serve`` needs.

    Attributes:
        grpc_address: ``HOST:PORT`` for the gRPC API (port 0 picks a free one).
        http_address: ``HOST:PORT`` for the JWKS/discovery HTTP server.
        data_dir: Holds the SQLite database and a generated passphrase file.
        database_url: SQLAlchemy URL; ``None`` means SQLite in ``data_dir``.
        issuer: The ``iss`` of every token, an https URL (http only on loopback).
        audience: The default ``aud`` of user tokens (the first ``--audience``).
        additional_audiences: Further audiences a login may ask for (RFC 8707),
            the rest of a repeated ``--audience``.
        algorithm: Signing algorithm for new keys; changing it migrates through
            a pre-published next key like any rotation.
        rsa_bits: RSA modulus size of new RS256/PS256 keys (2048, or 3072 and more).
        access_token_ttl: Access token lifetime in seconds.
        jwks_max_age: ``Cache-Control: max-age`` of the JWKS, seconds.
        key_passphrase: Encrypts private keys at rest (``key_store="db"``) and the
            deployment secrets (both stores). At least 16 characters for a new
            deployment (:mod:`auth_server.passphrase_policy`).
        allow_short_passphrase: Accept a shorter passphrase for a new deployment.
        key_kdf: The cost of deriving the key-encryption key (argon2id) for
            keys and secrets sealed from now on; stored ones keep their own.
        key_store: Where new signing keys are made and kept: ``"db"`` (encrypted
            in the database) or ``"pkcs11"`` (inside a token; needs ``pkcs11``).
        pkcs11: The token of ``key_store="pkcs11"``.
        reflection: Serve gRPC server reflection.
        key_poll_interval: How often to look for key changes made by the CLI or
            other replicas, seconds.
        key_rotation_interval: Seconds each key signs before the next takes
            over (default 30 days); 0 rotates only on ``ssot-auth keys rotate``.
        key_activate_after: Seconds a new key is published before it signs;
            ``None`` means 2 x ``jwks_max_age``.
        key_retire_after: Seconds a replaced key stays published; ``None``
            means ``access_token_ttl`` + 30 s leeway.
        key_check_interval: How often the key scheduler runs, seconds.
        argon2: Password hashing cost.
        hashing: Threads for password checks and how long one may expect to
            wait before it is shed (``RESOURCE_EXHAUSTED`` + ``retry-after``).
        sessions: Session lifetimes, refresh grace window, sessions per user.
        throttle: Login throttling thresholds.
        revocation_poll_interval: How often to look for sessions revoked by
            the CLI or other replicas, seconds.
        listen_for_changes: On PostgreSQL, hold one ``LISTEN`` connection so
            revocations and key changes made by other replicas or the CLI are
            heard at once (:mod:`auth_server.notifications`); off for a pooler
            that cannot carry ``LISTEN`` (PgBouncer in transaction mode).
        listening_poll_interval: The key and revocation polls' interval while
            that connection is up (the polls are then only the fallback), seconds.
        cleanup_interval: How often ended sessions and stale throttle counters
            are deleted, seconds.
        tls_cert, tls_key: Serve gRPC and HTTP over TLS with this certificate chain
            and key (PEM files).
        client_ca: Require gRPC clients to present a certificate signed by these
            CAs (mutual TLS); the public HTTP documents never ask for one.
        max_metadata_size: Largest request metadata (headers) accepted, bytes.
        max_message_size: Largest request message accepted, bytes.
        max_concurrent_streams: Most calls in flight on one client connection.
        max_login_request_size: Largest serialized ``LoginRequest``, bytes
            (unknown fields included).
        allow_insecure_token_http: Accept ``/oauth2/*`` requests (which carry
            secrets and tokens) over plain HTTP from beyond loopback.
        http_rate_limits: Per-address token buckets of the HTTP route groups.
        metrics_address: Serve ``/metrics`` (and ``/healthz``, ``/readyz``) on a
            listener of its own at this ``HOST:PORT`` instead of the ``--http`` one.
        readiness_interval: Seconds between readiness probes (database, signing key).
        shutdown_grace: Seconds in-flight calls get to finish when the server stops.
        watch_auth: Who may follow ``WatchJwks``/``WatchRevocations``: ``"none"``
            (anyone), ``"mtls"`` (a client certificate verified by ``client_ca``) or
            ``"token"`` (a token with the ``ssot.watch`` scope);
            :mod:`auth_server.watch_auth`.
        reuse_port: Bind the gRPC and HTTP ports with ``SO_REUSEPORT``, so the
            workers of ``serve --workers N`` share them (:mod:`interceptors._workers`).
    """

    grpc_address: str = DEFAULT_GRPC_ADDRESS
    http_address: str = DEFAULT_HTTP_ADDRESS
    data_dir: Path
    database_url: str | None = None
    issuer: str
    audience: str
    additional_audiences: tuple[str, ...] = ()
    algorithm: str = "RS256"
    rsa_bits: int = 2048
    access_token_ttl: int = DEFAULT_ACCESS_TOKEN_TTL
    jwks_max_age: int = DEFAULT_JWKS_MAX_AGE
    key_passphrase: bytes = field(repr=False)
    allow_short_passphrase: bool = False
    key_kdf: KdfParameters = field(default_factory=KdfParameters)
    key_store: str = "db"
    pkcs11: Pkcs11Settings | None = None
    reflection: bool = True
    key_poll_interval: float = 0.25
    key_rotation_interval: float = DEFAULT_ROTATION_INTERVAL
    key_activate_after: float | None = None
    key_retire_after: float | None = None
    key_check_interval: float = 1.0
    argon2: Argon2Parameters = field(default_factory=Argon2Parameters)
    hashing: HashingPolicy = field(default_factory=HashingPolicy)
    sessions: SessionPolicy = field(default_factory=SessionPolicy)
    throttle: ThrottlePolicy = field(default_factory=ThrottlePolicy)
    revocation_poll_interval: float = 0.25
    listen_for_changes: bool = True
    listening_poll_interval: float = 2.0
    reuse_port: bool = False
    cleanup_interval: float = 600.0
    tls_cert: Path | None = None
    tls_key: Path | None = None
    client_ca: Path | None = None
    max_metadata_size: int = DEFAULT_MAX_METADATA_SIZE
    max_message_size: int = DEFAULT_MAX_MESSAGE_SIZE
    max_concurrent_streams: int = DEFAULT_MAX_CONCURRENT_STREAMS
    max_login_request_size: int = DEFAULT_MAX_LOGIN_REQUEST_SIZE
    allow_insecure_token_http: bool = False
    http_rate_limits: RateLimits = field(default_factory=RateLimits)
    metrics_address: str | None = None
    readiness_interval: float = 2.0
    shutdown_grace: float = 5.0
    watch_auth: str = "none"

    def __post_init__(self) -> None:
        split_address(self.grpc_address)
        split_address(self.http_address)
        url = urlsplit(self.issuer)
        if url.scheme not in ("https", "http") or not url.hostname:
            raise ValueError("--issuer must be an absolute https URL")
        if url.scheme == "http" and not is_loopback_host(url.hostname):
            raise ValueError("--issuer must use https unless it names a loopback host")
        if url.query or url.fragment:
            raise ValueError("--issuer must not have a query or fragment (RFC 8414 §2)")
        if not self.audience or not all(self.additional_audiences):
            raise ValueError("--audience must not be empty")
        object.__setattr__(self, "additional_audiences", tuple(self.additional_audiences))
        if self.algorithm not in ALGORITHMS:
            raise ValueError(f"--algorithm must be one of {', '.join(ALGORITHMS)}")
        try:
            check_rsa_bits(self.rsa_bits)
        except ValueError:
            raise ValueError("--rsa-bits must be 2048, or 3072 or more") from None
        if not 30 <= self.access_token_ttl <= MAX_ACCESS_TOKEN_TTL:
            raise ValueError(
                f"--access-token-ttl must be between 30 and {MAX_ACCESS_TOKEN_TTL} seconds"
            )
        if not 1 <= self.jwks_max_age <= 86400:
            raise ValueError("--jwks-max-age must be between 1 and 86400 seconds")
        if self.key_store not in KEY_STORES:
            raise ValueError(f"--key-store must be one of {', '.join(KEY_STORES)}")
        if self.key_store == "pkcs11" and self.pkcs11 is None:
            raise ValueError(
                "--key-store pkcs11 needs --pkcs11-module, --pkcs11-token-label"
                " and --pkcs11-pin-file"
            )
        # The length rule depends on the database (new deployment or not): it is
        # checked when storage opens (auth_server.passphrase_policy).
        if not self.key_passphrase:
            raise ValueError("the key passphrase must not be empty")
        if self.key_poll_interval <= 0:
            raise ValueError("key_poll_interval must be positive")
        if (self.tls_cert is None) != (self.tls_key is None):
            raise ValueError("give both --tls-cert and --tls-key, or neither")
        if self.client_ca is not None and self.tls_cert is None:
            raise ValueError("--client-ca needs --tls-cert and --tls-key")
        if self.watch_auth not in WATCH_AUTH_MODES:
            raise ValueError(f"--watch-auth must be one of {', '.join(WATCH_AUTH_MODES)}")
        if self.watch_auth == "mtls" and self.client_ca is None:
            raise ValueError("--watch-auth mtls needs --client-ca (and --tls-cert, --tls-key)")
        for name in (
            "max_metadata_size",
            "max_message_size",
            "max_concurrent_streams",
            "max_login_request_size",
        ):
            if getattr(self, name) <= 0:
                raise ValueError(f"--{name.replace('_', '-')} must be positive")
        if self.max_login_request_size > self.max_message_size:
            raise ValueError("--max-login-request-size cannot exceed --max-message-size")
        if self.listening_poll_interval <= 0:
            raise ValueError("listening_poll_interval must be positive")
        if self.revocation_poll_interval <= 0 or self.cleanup_interval <= 0:
            raise ValueError("revocation_poll_interval and cleanup_interval must be positive")
        if self.key_check_interval <= 0:
            raise ValueError("key_check_interval must be positive")
        if not self.readiness_interval > 0:
            raise ValueError("readiness_interval must be positive")
        if not self.shutdown_grace >= 0:
            raise ValueError("--shutdown-grace must not be negative")
        # Refuse a schedule that lets a verifier meet an unknown kid or a token outlive its key.
        self.key_lifecycle.check(
            jwks_max_age=self.jwks_max_age, access_token_ttl=self.access_token_ttl
        )

    @property
    def key_lifecycle(self) -> KeyLifecycle:
        """The signing key schedule these settings ask for, defaults filled in."""
        return KeyLifecycle.for_server(
            jwks_max_age=self.jwks_max_age,
            access_token_ttl=self.access_token_ttl,
            rotation_interval=self.key_rotation_interval,
            activate_after=self.key_activate_after,
            retire_after=self.key_retire_after,
        )

    @property
    def audiences(self) -> tuple[str, ...]:
        """Every audience user tokens may carry, the default first."""
        rest = (a for a in self.additional_audiences if a != self.audience)
        return (self.audience, *dict.fromkeys(rest))

    @property
    def resolved_database_url(self) -> str:
        from auth_server.storage import sqlite_url_for

        return self.database_url or sqlite_url_for(self.data_dir)

    @property
    def jwks_path(self) -> str:
        return "/.well-known/jwks.json"

    def replace(self, **changes: object) -> AuthServerConfig:
        return dataclasses.replace(self, **changes)  # type: ignore[arg-type]
