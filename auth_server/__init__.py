"""The ssot-auth token authority: users, signing keys, and the servers that publish them.

Module map (``_name``: private to its group):

* identity -- ``users`` (UserStore: add, disable, check a password), ``passwords``
  (argon2id hashing), ``throttle`` (layered login throttling, in the database),
  ``hashing`` (HashingPool: logins on threads of their own, shed when they cannot
  be answered in time).
* sessions -- ``sessions`` (SessionStore: login, refresh, logout, in one locked
  transaction each), ``session_policy`` (SessionPolicy and the pure refresh
  verdict ``classify_refresh``: spend, repeat within grace, or reuse),
  ``refresh_tokens`` (opaque tokens, hashes, derived successors), ``_sessionrows``,
  ``_session_types`` (result values), ``revocations`` (RevocationPublisher:
  revoked sessions pushed to WatchRevocations).
* keys -- ``keys`` (SigningKeyStore, the facade: signing, publishing, rotate; its
  docstring draws a key's life), ``_keyupkeep`` (KeyUpkeep: revoke, the maintain
  pass, rewrap), ``_keytxn`` (KeyTransactions: what every change shares -- key made
  before the lock, the replicas' lock, after-commit cache/audit/listeners),
  ``lifecycle`` (KeyLifecycle and the pure decisions over KeyRecord rows),
  ``_keyrows`` (reading rows, encrypting keys), ``_keychanges`` (KeyWriter: every
  change inside the replicas' lock), ``_keymaterial`` (loaded keys in memory),
  ``custody`` (KeyCustody, where private keys live: DatabaseCustody for ``--key-store
  db``), ``hsm`` (Pkcs11Custody for ``--key-store pkcs11``, with ``_pkcs11_keys``),
  ``scheduler`` (KeyScheduler), ``publisher`` (JwksPublisher), ``jwk`` (JWKs,
  RFC 7638 thumbprints, key generation), ``jws`` (compact JWS around a signer),
  ``tokens`` (TokenIssuer signs access tokens).
* clients (service identities, OAuth 2.0) -- ``clients`` (ClientStore), ``client_auth``
  (ClientAuthenticator: one answer for every failure), ``client_assertion``
  (private_key_jwt, the jti replay table), ``client_tls`` (tls_client_auth),
  ``client_throttle``, ``oauth`` (OAuthEndpoint, the token/revoke/introspect core),
  ``oauth_grpc`` and ``oauth_http`` (its two faces), ``oauth_wiring`` (building it),
  ``token_inspector`` (our own tokens checked with the verifier's code).
* wire -- ``service`` (gRPC AuthService; errors become statuses in one place),
  ``http`` (JWKS and discovery documents), ``authority`` (TokenAuthority, the
  network-free core both call), ``broadcast`` (PolledBroadcaster, the
  poll-and-push shape under both publishers).
* process -- ``components`` (build the plain objects from the settings), ``app``
  (start and stop the servers around them), ``config`` (AuthServerConfig),
  ``cli``, ``commands/`` (one module per ``ssot-auth`` command, plus ``settings``:
  data dir, key passphrase and password flags, shared by the commands).
* cross-cutting -- ``storage`` (Database: engine, transactions, the replicas' lock;
  re-exports the tables), ``schema`` (the tables), ``errors`` (the exception tree,
  each error with its gRPC status), ``audit``, ``tls``.

Where keys rotate (five places, in the order a rotation passes through them):

1. ``lifecycle.rotation_due`` / ``rotation_reason``: pure policy, *when* the next
   key is due (schedule, no current key, or an ``--algorithm`` change).
2. ``scheduler.KeyScheduler``: the tick (``AuthServerConfig.key_check_interval``,
   1 s) that calls ``SigningKeyStore.maintain`` in each replica; ``maintain``
   (``_keyupkeep.KeyUpkeep.maintain``) asks ``rotation_due`` and, under the
   replicas' lock, makes the key.
3. ``keys.SigningKeyStore.rotate``: the *operator's* rotation (``ssot-auth keys
   rotate``), public API; validates, takes the lock, and hands over to 4.
4. ``_keychanges.KeyWriter.rotate``: the *row writer* that every rotation ends in
   (manual, scheduled, the first key, a revoked key's replacement): inserts the
   key, withdraws superseded next keys, sets the old key's ``deactivated_at``.
5. ``publisher.JwksPublisher``: pushes the changed set to WatchJwks streams and the
   HTTP face (at once for this process's changes, within a poll for others').
"""

from auth_server.app import RunningAuthServer, StartupError, build_components, start_auth_server
from auth_server.authority import JwksSnapshot, TokenAuthority, TokenGrant
from auth_server.config import AuthServerConfig
from auth_server.errors import (
    AuthServerError,
    InvalidCredentials,
    InvalidRefreshToken,
    InvalidRequest,
    KeyStoreError,
    KeyStoreUnavailable,
    LoginThrottled,
    Overloaded,
    RetryLater,
    StorageError,
    UserExists,
    UserNotFound,
)
from auth_server.hashing import HashingPolicy, HashingPool
from auth_server.keys import (
    KeyInfo,
    MaintenanceReport,
    PublishedKeys,
    SigningKey,
    SigningKeyStore,
)
from auth_server.lifecycle import KeyLifecycle, LifecycleError
from auth_server.passwords import Argon2Parameters, PasswordHasher
from auth_server.scheduler import KeyScheduler
from auth_server.sessions import SessionPolicy, SessionStore
from auth_server.storage import Database
from auth_server.throttle import LoginThrottle, ThrottlePolicy
from auth_server.tokens import IssuedToken, TokenIssuer
from auth_server.users import User, UserStore

__all__ = [
    "Argon2Parameters",
    "AuthServerConfig",
    "AuthServerError",
    "Database",
    "HashingPolicy",
    "HashingPool",
    "InvalidCredentials",
    "InvalidRefreshToken",
    "InvalidRequest",
    "IssuedToken",
    "JwksSnapshot",
    "KeyInfo",
    "KeyLifecycle",
    "KeyScheduler",
    "KeyStoreError",
    "KeyStoreUnavailable",
    "LifecycleError",
    "LoginThrottle",
    "LoginThrottled",
    "MaintenanceReport",
    "Overloaded",
    "PasswordHasher",
    "PublishedKeys",
    "RetryLater",
    "RunningAuthServer",
    "SessionPolicy",
    "SessionStore",
    "SigningKey",
    "SigningKeyStore",
    "StartupError",
    "StorageError",
    "ThrottlePolicy",
    "TokenAuthority",
    "TokenGrant",
    "TokenIssuer",
    "User",
    "UserExists",
    "UserNotFound",
    "UserStore",
    "build_components",
    "start_auth_server",
]
