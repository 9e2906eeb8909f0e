"""The ssot-auth token authority: users, signing keys, and the servers that publish them."""

from auth_server.app import RunningAuthServer, StartupError, build_components, start_auth_server
from auth_server.authority import JwksSnapshot, TokenAuthority, TokenGrant
from auth_server.config import AuthServerConfig
from auth_server.errors import (
    AuthServerError,
    InvalidCredentials,
    InvalidRefreshToken,
    InvalidRequest,
    KeyStoreError,
    LoginThrottled,
    StorageError,
    UserExists,
    UserNotFound,
)
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
    "InvalidCredentials",
    "InvalidRefreshToken",
    "InvalidRequest",
    "IssuedToken",
    "JwksSnapshot",
    "KeyInfo",
    "KeyLifecycle",
    "KeyScheduler",
    "KeyStoreError",
    "LifecycleError",
    "LoginThrottle",
    "LoginThrottled",
    "MaintenanceReport",
    "PasswordHasher",
    "PublishedKeys",
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
