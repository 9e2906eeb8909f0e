"""``--key-store pkcs11``: signing keys made and used inside a PKCS#11 token (HSM, KMS, SoftHSM2).

Keys are generated in the token as non-extractable, sensitive objects and sign
there with ``C_Sign``; this process only ever holds handles. The database row of
each key keeps its lifecycle, its public JWK and the RFC 7512 URI of the token
object, nothing secret. Replicas reach the same token and find the objects by id.

python-pkcs11 initialises the module with ``C_Initialize(NULL)``, under which the
module may assume that calls never overlap (PKCS#11 v2.40 §5.4; SoftHSM2 then
turns its own locking off), so every call into one module is serialised in this
process. A token that stops answering makes signing raise
:class:`~auth_server.errors.KeyStoreUnavailable` (gRPC ``UNAVAILABLE``); the next
call after ``reconnect_interval`` opens a new session, re-initialising the module
if the token left its slot list, and signing resumes when the token is back.
"""

from __future__ import annotations

import logging
import secrets
import threading
import time
import types
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from auth_server import _keyrows as keyrows
from auth_server._keyrows import NewKey, SigningKey
from auth_server.errors import AuthServerError, KeyStoreError, KeyStoreUnavailable
from auth_server.jws import Signer

_LOGGER = logging.getLogger(__name__)

__all__ = ["Pkcs11Custody", "Pkcs11Settings", "TokenSetupError", "module_lock", "read_pin_file"]


class TokenSetupError(AuthServerError):
    """The token cannot be used at start; the message names the flag to fix."""


@dataclass(frozen=True, kw_only=True)
class Pkcs11Settings:
    """Where the token is and how to log in.

    Attributes:
        module: The PKCS#11 module (shared library), e.g. ``/usr/lib/softhsm/libsofthsm2.so``.
        token_label: The label of the token that holds the keys.
        pin: The user PIN (never logged).
        reconnect_interval: Seconds between attempts to reach a token that stopped answering.
    """

    module: Path
    token_label: str
    pin: str = field(repr=False)
    reconnect_interval: float = 1.0

    def __post_init__(self) -> None:
        if not self.token_label:
            raise ValueError("--pkcs11-token-label must not be empty")
        if not self.pin:
            raise ValueError("--pkcs11-pin-file holds no PIN")
        if not self.reconnect_interval > 0:
            raise ValueError("reconnect_interval must be positive")


def read_pin_file(path: Path) -> str:
    """The PIN in ``path`` (surrounding whitespace removed).

    Raises:
        TokenSetupError: The file cannot be read or is empty.
    """
    try:
        pin = path.read_text(encoding="utf-8").strip()
    except (OSError, UnicodeDecodeError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) else "not UTF-8"
        raise TokenSetupError(f"cannot read --pkcs11-pin-file {path}: {reason}") from None
    if not pin:
        raise TokenSetupError(f"--pkcs11-pin-file {path} is empty")
    return pin


# One lock per module file for the whole process: see the module docstring.
_MODULE_LOCKS: dict[str, threading.RLock] = {}
_MODULE_LOCKS_GUARD = threading.Lock()


def module_lock(module: str | Path) -> threading.RLock:
    """The lock every call into the PKCS#11 module ``module`` holds in this process.

    Code beside a :class:`Pkcs11Custody` that calls the same module through
    python-pkcs11 (tools, tests) must hold it too: the module may have no locking
    of its own (see the module docstring).
    """
    with _MODULE_LOCKS_GUARD:
        return _MODULE_LOCKS.setdefault(str(module), threading.RLock())


class Pkcs11Custody:
    """The :class:`~auth_server.custody.KeyCustody` of keys held by a PKCS#11 token; thread-safe."""

    def __init__(
        self, settings: Pkcs11Settings, *, now: Callable[[], float] = time.monotonic
    ) -> None:
        """Load the module, find the token and log in.

        Raises:
            TokenSetupError: python-pkcs11 is missing, or the module, the token or
                the PIN is unusable (the message names the flag).
        """
        try:
            import pkcs11  # an optional dependency, needed only here

            from auth_server import _pkcs11_keys
        except ImportError:
            raise TokenSetupError(
                "--key-store pkcs11 needs python-pkcs11: pip install 'ssot-auth[pkcs11]'"
            ) from None
        self._p11: Any = pkcs11
        self._keys = _pkcs11_keys
        self._settings = settings
        self._now = now
        module = str(settings.module)
        self._lock = module_lock(module)
        self._token: Any = None
        self._session: Any = None
        self._objects: dict[bytes, Any] = {}  # CKA_ID -> private key object, this session
        self._mechanisms: frozenset[int] = frozenset()
        self._retry_at = 0.0
        self._down = False
        with self._lock:
            try:
                self._lib = pkcs11.lib(module)
            except (pkcs11.PKCS11Error, OSError, RuntimeError) as exc:
                raise TokenSetupError(
                    f"cannot load --pkcs11-module {module}: {type(exc).__name__}"
                ) from None
            self._connect(starting=True)

    @property
    def name(self) -> str:
        return "pkcs11"

    @property
    def available(self) -> bool:
        """Whether the token answered the last call (a hook for health reporting)."""
        return not self._down

    def check_algorithm(self, algorithm: str) -> None:
        """Make sure the token can make and sign with keys of ``algorithm``.

        Raises:
            TokenSetupError: It cannot (the message names ``--algorithm``).
        """
        for step in self._keys.required_mechanisms(algorithm):
            if not any(int(m) in self._mechanisms for m in step):
                raise TokenSetupError(
                    f"the token {self._settings.token_label!r} cannot {algorithm}"
                    f" (no {step[0].name}): choose another --algorithm"
                )

    # -- KeyCustody ------------------------------------------------------------------

    def generate(self, algorithm: str, *, rsa_bits: int) -> NewKey:
        object_id = secrets.token_bytes(16)
        with self._call() as session:
            public = self._keys.generate_pair(session, algorithm, rsa_bits, object_id)
            jwk = self._keys.jwk_of(public, algorithm)
        uri = self._keys.uri_for(self._settings.token_label, object_id)
        _LOGGER.info("generated signing key %s in the token (%s)", jwk["kid"], algorithm)
        key = SigningKey(
            kid=jwk["kid"],
            algorithm=algorithm,
            public_jwk=types.MappingProxyType(jwk),
            signer=self._signer(object_id, algorithm),
        )
        return NewKey(key=key, stored=uri.encode("ascii"))

    def holds(self, stored: bytes) -> bool:
        return bytes(stored).startswith(keyrows.TOKEN_REFERENCE)

    def load(self, kid: str, algorithm: str, stored: bytes, stored_jwk: str) -> SigningKey:
        object_id = self._object_id(kid, stored)
        p11 = self._p11
        with self._call() as session:
            try:
                private = self._private(session, object_id)
                public = session.get_key(object_class=p11.ObjectClass.PUBLIC_KEY, id=object_id)
            except (p11.NoSuchKey, p11.MultipleObjectsReturned):
                _LOGGER.error("signing key %s: its token object is missing", kid)
                raise KeyStoreError(keyrows.UNUSABLE) from None
            exposed = (
                bool(private[p11.Attribute.EXTRACTABLE]) or not private[p11.Attribute.SENSITIVE]
            )
            try:
                jwk = self._keys.jwk_of(public, algorithm)
            except (ValueError, p11.AttributeTypeInvalid) as exc:
                _LOGGER.error("signing key %s: its token object does not fit %s", kid, algorithm)
                raise KeyStoreError(keyrows.UNUSABLE) from exc
        if exposed:
            _LOGGER.error("signing key %s: its token object is extractable; not used", kid)
            raise KeyStoreError(keyrows.UNUSABLE)
        # Sign only with a key whose public half is exactly what is published.
        if jwk["kid"] != kid or keyrows.parse_public_jwk(stored_jwk, kid, algorithm) != jwk:
            _LOGGER.error("signing key %s does not match its token object", kid)
            raise KeyStoreError(keyrows.UNUSABLE)
        return SigningKey(
            kid=kid,
            algorithm=algorithm,
            public_jwk=types.MappingProxyType(jwk),
            signer=self._signer(object_id, algorithm),
        )

    def destroy(self, stored: bytes) -> None:
        try:
            label, object_id = self._keys.parse_uri(bytes(stored).decode("ascii"))
        except (UnicodeDecodeError, ValueError):
            return  # nothing this store could reach
        if label != self._settings.token_label:
            _LOGGER.warning("not destroying a key held by another token (%r)", label)
            return
        with self._call() as session:
            found = list(session.get_objects({self._p11.Attribute.ID: object_id}))
            for obj in found:
                obj.destroy()
            self._objects.pop(object_id, None)

    def discard(self, new: NewKey) -> None:
        try:
            self.destroy(new.stored)
        except KeyStoreUnavailable:
            _LOGGER.warning("could not destroy unused token key %s", new.key.kid)

    def check_ready(self) -> None:
        # Reconnects if the last call failed (at most once a reconnect interval);
        # no token I/O while the session is up.
        with self._call():
            pass

    def close(self) -> None:
        with self._lock:
            self._drop_session()
            self._retry_at = float("inf")  # never reconnect

    # -- sessions --------------------------------------------------------------------

    def _connect(self, *, starting: bool) -> None:
        """Open a logged-in session on the token (the caller holds the lock)."""
        p11, settings = self._p11, self._settings
        label = settings.token_label
        try:
            try:
                token = self._lib.get_token(token_label=label)
            except p11.PKCS11Error as exc:
                if starting and isinstance(exc, p11.NoSuchToken):
                    raise
                # A token that left the slot list (SoftHSM2: its directory went away)
                # is found again only by a fresh C_Initialize.
                self._lib.reinitialize()
                token = self._lib.get_token(token_label=label)
            try:
                session = token.open(user_pin=settings.pin, rw=True)
            except p11.UserAlreadyLoggedIn:
                # Another store in this process logged in to the same token (login
                # state belongs to the application, PKCS#11 v2.40 §5.6).
                session = token.open(rw=True)
            mechanisms = frozenset(int(m) for m in token.slot.get_mechanisms())
        except p11.NoSuchToken:
            if starting:
                raise TokenSetupError(
                    f"no token labelled {label!r} in --pkcs11-module {settings.module}"
                    " (--pkcs11-token-label)"
                ) from None
            raise
        except (p11.PinIncorrect, p11.PinInvalid, p11.PinLenRange, p11.PinLocked) as exc:
            if starting:
                raise TokenSetupError(
                    f"the token {label!r} refused the PIN in --pkcs11-pin-file"
                    f" ({type(exc).__name__})"
                ) from None
            raise
        except p11.PKCS11Error as exc:
            if starting:
                raise TokenSetupError(
                    f"cannot reach the token {label!r} through --pkcs11-module"
                    f" {settings.module}: {type(exc).__name__}"
                ) from None
            raise
        self._token, self._session, self._mechanisms = token, session, mechanisms
        self._objects.clear()

    def _drop_session(self) -> None:
        # Forgotten, not closed: python-pkcs11 closes a logged-in session with
        # C_Logout, and login state belongs to the whole process (PKCS#11 v2.40
        # §5.6), so closing would log out every other store on this token here.
        # A session left open ends with the process or the next C_Initialize.
        self._session = None
        self._objects.clear()

    @contextmanager
    def _call(self) -> Iterator[Any]:
        """The session, under the module lock; a token failure becomes KeyStoreUnavailable."""
        p11 = self._p11
        with self._lock:
            if self._session is None:
                if self._now() < self._retry_at:
                    raise KeyStoreUnavailable()
                try:
                    self._connect(starting=False)
                except p11.PKCS11Error as exc:
                    self._retry_at = self._now() + self._settings.reconnect_interval
                    self._went_down(exc)
                    raise KeyStoreUnavailable() from None
                if self._down:
                    self._down = False
                    _LOGGER.warning(
                        "the PKCS#11 token %r answers again", self._settings.token_label
                    )
            try:
                yield self._session
            except (p11.NoSuchKey, p11.MultipleObjectsReturned, KeyStoreError):
                raise
            except p11.PKCS11Error as exc:
                self._drop_session()
                self._went_down(exc)
                raise KeyStoreUnavailable() from None

    def _went_down(self, exc: Exception) -> None:
        if not self._down:
            self._down = True
            _LOGGER.error(
                "the PKCS#11 token %r does not answer (%s): signing is unavailable until it does",
                self._settings.token_label,
                type(exc).__name__,
            )

    def _private(self, session: Any, object_id: bytes) -> Any:
        found = self._objects.get(object_id)
        if found is None:
            found = session.get_key(object_class=self._p11.ObjectClass.PRIVATE_KEY, id=object_id)
            self._objects[object_id] = found
        return found

    def _signer(self, object_id: bytes, algorithm: str) -> Signer:
        def sign(data: bytes) -> bytes:
            with self._call() as session:
                try:
                    private = self._private(session, object_id)
                except self._p11.NoSuchKey:
                    # Destroyed by another replica (revoked) after this one read the
                    # current key, and the next attempt signs with its successor; or
                    # this session lost sight of the token's objects: a new one finds them.
                    self._drop_session()
                    raise KeyStoreUnavailable() from None
                sign_once: Signer = self._keys.sign_with(private, algorithm, self._mechanisms)
                try:
                    return sign_once(data)
                except (self._p11.KeyHandleInvalid, self._p11.ObjectHandleInvalid):
                    # The cached handle went stale (object destroyed, e.g. revoked by
                    # another replica): look it up once more before giving up.
                    self._objects.pop(object_id, None)
                    try:
                        private = self._private(session, object_id)
                    except self._p11.NoSuchKey:
                        self._drop_session()
                        raise KeyStoreUnavailable() from None
                    sign_once = self._keys.sign_with(private, algorithm, self._mechanisms)
                    return sign_once(data)

        return sign

    def _object_id(self, kid: str, stored: bytes) -> bytes:
        try:
            label, object_id = self._keys.parse_uri(bytes(stored).decode("ascii"))
        except (UnicodeDecodeError, ValueError):
            _LOGGER.error("signing key %s has an unreadable token reference", kid)
            raise KeyStoreError(keyrows.UNUSABLE) from None
        if label != self._settings.token_label:
            _LOGGER.error("signing key %s is held by another token (%r)", kid, label)
            raise KeyStoreError(keyrows.UNUSABLE)
        return object_id
