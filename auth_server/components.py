"""Builds the auth service's plain objects (stores, keys, authority) from its settings; blocking.

:mod:`auth_server.app` runs the servers around them.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass

from auth_server import deployment_secrets
from auth_server._envelope import KeyEncryption
from auth_server.authority import TokenAuthority
from auth_server.config import AuthServerConfig
from auth_server.errors import KeyStoreError
from auth_server.hsm import Pkcs11Custody, TokenSetupError
from auth_server.keys import SigningKeyStore
from auth_server.oauth_wiring import ClientComponents, build_client_components
from auth_server.passphrase_policy import check_passphrase_policy, is_new_deployment
from auth_server.passwords import PasswordHasher
from auth_server.refresh_tokens import legacy_refresh_secret
from auth_server.sessions import SessionStore
from auth_server.storage import Database
from auth_server.throttle import LoginThrottle
from auth_server.tokens import TokenIssuer
from auth_server.users import UserStore

_LOGGER = logging.getLogger(__name__)


class StartupError(Exception):
    """The server cannot start; the message says which setting to fix."""


@dataclass(frozen=True, kw_only=True)
class Components:
    """The plain objects behind the servers, built from one configuration."""

    database: Database
    users: UserStore
    keys: SigningKeyStore
    authority: TokenAuthority
    sessions: SessionStore
    throttle: LoginThrottle
    issuer: TokenIssuer
    client_side: ClientComponents


def build_components(
    config: AuthServerConfig, *, now: Callable[[], float] = time.time
) -> Components:
    """Open storage, create the schema and make sure a signing key exists (blocking).

    ``now`` is the clock of every time decision (token times, key states,
    sessions), injectable so tests can move time instead of sleeping.
    """
    database = Database(config.resolved_database_url)
    database.create_schema()
    try:
        keys, successor_secret = _open_keys(database, config, now)
    except BaseException:
        database.dispose()  # a refused start leaves no pooled connection behind
        raise
    users = UserStore(database, PasswordHasher(config.argon2), now=now)
    sessions = SessionStore(
        database,
        policy=config.sessions,
        # Every replica holds the same secret, so a refresh repeated within
        # the grace window gets the same successor on any of them.
        secret=successor_secret,
        # Replicas of earlier versions derived it from the passphrase: a token
        # one of them spent just before the upgrade still repeats in its grace.
        previous_secrets=(legacy_refresh_secret(config.key_passphrase),),
        now=now,
    )
    throttle = LoginThrottle(database, config.throttle, now=now)
    issuer = TokenIssuer(
        keys,
        issuer=config.issuer,
        audience=config.audience,
        ttl=config.access_token_ttl,
        now=now,
    )
    authority = TokenAuthority(
        users=users,
        sessions=sessions,
        issuer=issuer,
        keys=keys,
        jwks_max_age=config.jwks_max_age,
        throttle=throttle,
        audiences=config.audiences,
    )
    return Components(
        database=database,
        users=users,
        keys=keys,
        authority=authority,
        sessions=sessions,
        throttle=throttle,
        issuer=issuer,
        client_side=build_client_components(config, database, now=now),
    )


def _open_custody(config: AuthServerConfig) -> Pkcs11Custody | None:
    """The token of ``--key-store pkcs11`` (``None``: keys in the database)."""
    if config.key_store != "pkcs11" or config.pkcs11 is None:
        return None
    try:
        custody = Pkcs11Custody(config.pkcs11)
        custody.check_algorithm(config.algorithm)
    except TokenSetupError as exc:
        raise StartupError(exc.message) from None
    return custody


def _open_keys(
    database: Database, config: AuthServerConfig, now: Callable[[], float]
) -> tuple[SigningKeyStore, bytes]:
    """The key store (with a signing key) and the refresh successor secret."""
    try:
        check_passphrase_policy(
            config.key_passphrase,
            new_deployment=is_new_deployment(database),
            allow_short=config.allow_short_passphrase,
        )
    except ValueError as exc:
        raise KeyStoreError(str(exc)) from None
    keys = SigningKeyStore(
        database,
        config.key_passphrase,
        algorithm=config.algorithm,
        rsa_bits=config.rsa_bits,
        now=now,
        lifecycle=config.key_lifecycle,
        kdf=config.key_kdf,
        custody=_open_custody(config),
    )
    try:
        keys.ensure_signing_key()
        secret = deployment_secrets.load_or_create(
            database,
            KeyEncryption(config.key_passphrase, config.key_kdf),
            deployment_secrets.REFRESH_SUCCESSOR,
            now=now,
        )
    except BaseException:
        keys.close()
        raise
    return keys, secret
