"""The token helpers' sans-I/O core: when to renew, which RPC to send, what an answer means.

:class:`TokenCore` (a person: ``Login``/``Refresh``) and :class:`ClientCredentialsCore`
(a service identity: the ``Token`` RPC) hold the state; the sync and asyncio managers
in :mod:`interceptors._token_manager` only perform the RPCs they ask for.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable

import grpc

from interceptors._errors import TokenRequestError
from interceptors._service_identity import ClientAuth, ServiceCredentials
from protos import auth_pb2

_LOGGER = logging.getLogger(__name__)

_TOKEN_TYPE = "bearer"  # noqa: S105 -- RFC 6749 §7.1 token_type, compared case-insensitively
# The token is renewed when less than min(refresh_margin, this share of its lifetime) is left,
# so a short-lived token is not renewed on every call.
_MAX_MARGIN_SHARE = 0.2


@dataclasses.dataclass(frozen=True, slots=True)
class LoginStep:
    """Send ``Login`` with this request."""

    request: auth_pb2.LoginRequest = dataclasses.field(repr=False)


@dataclasses.dataclass(frozen=True, slots=True)
class RefreshStep:
    """Send ``Refresh`` with this request."""

    request: auth_pb2.RefreshRequest = dataclasses.field(repr=False)


@dataclasses.dataclass(frozen=True, slots=True)
class TokenStep:
    """Send ``Token`` (the OAuth 2.0 token endpoint) with this request."""

    request: auth_pb2.TokenRequest = dataclasses.field(repr=False)


#: The RPC the core asks a manager to send next.
Step = LoginStep | RefreshStep | TokenStep

_TOKEN_EXCHANGE = "urn:ietf:params:oauth:grant-type:token-exchange"  # noqa: S105 - a URN
_ID_TOKEN_TYPE = "urn:ietf:params:oauth:token-type:id_token"  # noqa: S105 - a URN

# The trailing metadata entry in which the auth service's Token RPC names the RFC 6749
# §5.2 error code (see protos/auth.proto).
_OAUTH_ERROR_KEY = "oauth-error"


class TokenCore:
    """The token state machine, free of I/O: which RPC to send next and what its answer means.

    Not thread-safe on its own; the managers serialise access to it.
    """

    def __init__(
        self,
        *,
        username: str,
        password: str | None,
        refresh_token: str | None,
        scope: str,
        refresh_margin: float,
        now: Callable[[], float],
        id_token: str | None = None,
    ) -> None:
        if not username:
            raise ValueError("username must not be empty")
        if password is None and not refresh_token and not id_token:
            raise ValueError("a password, a refresh token or an ID token is required")
        if refresh_margin < 0:
            raise ValueError("refresh_margin must not be negative")
        self.username = username
        self.scope = scope
        self._password = password
        self._refresh_token = refresh_token or None
        # An upstream provider's ID token signs in once (it is short-lived by design);
        # the session it opens is then kept with Refresh.
        self._id_token = id_token or None
        self._lease = _Lease(refresh_margin=refresh_margin, now=now)

    def __repr__(self) -> str:
        return f"TokenCore(username={self.username!r}, has_token={self.has_token})"

    @property
    def has_token(self) -> bool:
        """Whether an access token is held (fresh or not)."""
        return self._lease.has_token

    def fresh_token(self) -> str | None:
        """The current token if it needs no renewal yet, else ``None``."""
        return self._lease.fresh_token()

    def first_step(self) -> Step:
        """The RPC that starts a renewal: ``Refresh`` when possible, else ``Login``."""
        if self._id_token is not None and self._refresh_token is None:
            return self._start(
                TokenStep(
                    auth_pb2.TokenRequest(
                        grant_type=_TOKEN_EXCHANGE,
                        subject_token=self._id_token,
                        subject_token_type=_ID_TOKEN_TYPE,
                        scope=self.scope,
                    )
                )
            )
        if self._refresh_token is not None:
            return self._start(
                RefreshStep(auth_pb2.RefreshRequest(refresh_token=self._refresh_token))
            )
        if self._password is not None:
            return self._login()
        raise TokenRequestError("no password or refresh token left to obtain a token with")

    def after_failure(self, step: Step, code: grpc.StatusCode | None) -> Step | None:
        """The RPC to try after ``step`` failed with ``code``, or ``None`` to give up."""
        if not isinstance(step, RefreshStep):
            return None
        if code is grpc.StatusCode.UNAUTHENTICATED:
            # The refresh token is spent, expired or revoked: it will never work again.
            self._refresh_token = None
        elif code is not grpc.StatusCode.UNIMPLEMENTED:
            return None
        if self._password is None:
            return None
        _LOGGER.info("Refresh for %s answered %s; logging in again", self.username, code)
        return self._login()

    def accept(self, response: auth_pb2.TokenResponse) -> str:
        """Take a ``TokenResponse`` to the last step into the state and return its token.

        Raises:
            TokenRequestError: the response holds no usable token.
        """
        token = self._lease.accept(response)
        self._id_token = None  # spent (or superseded): never presented twice
        if response.refresh_token:
            self._refresh_token = response.refresh_token
        _LOGGER.debug(
            "new access token for %s, expires in %d s", self.username, response.expires_in
        )
        return token

    def invalidate(self, token: str) -> None:
        """Forget ``token`` if it is still the current one."""
        self._lease.invalidate(token)

    def _login(self) -> Step:
        assert self._password is not None
        return self._start(
            LoginStep(
                auth_pb2.LoginRequest(
                    username=self.username, password=self._password, scope=self.scope
                )
            )
        )

    def _start(self, step: Step) -> Step:
        self._lease.start()
        return step


class ClientCredentialsCore:
    """The state of a service identity's token: when to ask ``Token`` again, and with what.

    Every request is a new client-credentials grant (RFC 6749 §4.4: no refresh token),
    with a freshly signed assertion for :class:`~interceptors.PrivateKeyJwt`. Not
    thread-safe on its own; the managers serialise access to it.

    Raises:
        ValueError: unusable credentials (see :class:`~interceptors.PrivateKeyJwt`) or a
            negative margin.
    """

    def __init__(
        self, *, credentials: ServiceCredentials, refresh_margin: float, now: Callable[[], float]
    ) -> None:
        if refresh_margin < 0:
            raise ValueError("refresh_margin must not be negative")
        self._auth = ClientAuth(credentials)
        self.client_id = credentials.client_id
        self.scope = credentials.scope
        self._lease = _Lease(refresh_margin=refresh_margin, now=now)

    def __repr__(self) -> str:
        return f"ClientCredentialsCore(client_id={self.client_id!r}, has_token={self.has_token})"

    @property
    def has_token(self) -> bool:
        """Whether an access token is held (fresh or not)."""
        return self._lease.has_token

    def fresh_token(self) -> str | None:
        """The current token if it needs no renewal yet, else ``None``."""
        return self._lease.fresh_token()

    def first_step(self) -> Step:
        """The ``Token`` request that obtains a new token (a new assertion each time)."""
        now = self._lease.start()
        return TokenStep(self._auth.client_credentials_request(now))

    def after_failure(self, step: Step, code: grpc.StatusCode | None) -> Step | None:
        """Never retried here: a refused grant is final, a transient one is the caller's."""
        return None

    def accept(self, response: auth_pb2.TokenResponse) -> str:
        """Take the ``Token`` answer into the state and return its access token.

        Raises:
            TokenRequestError: the response holds no usable token.
        """
        token = self._lease.accept(response)
        _LOGGER.debug("new access token for client %s", self.client_id)
        return token

    def invalidate(self, token: str) -> None:
        """Forget ``token`` if it is still the current one."""
        self._lease.invalidate(token)


class _Lease:
    """The access token held and when to renew it, shared by both cores."""

    def __init__(self, *, refresh_margin: float, now: Callable[[], float]) -> None:
        self._refresh_margin = refresh_margin
        self._now = now
        self._access_token: str | None = None
        self._renew_at = 0.0
        self._sent_at = 0.0

    @property
    def has_token(self) -> bool:
        return self._access_token is not None

    def fresh_token(self) -> str | None:
        if self._access_token is not None and self._now() < self._renew_at:
            return self._access_token
        return None

    def start(self) -> float:
        """Note that a request is being sent now; return the time."""
        self._sent_at = self._now()
        return self._sent_at

    def accept(self, response: auth_pb2.TokenResponse) -> str:
        if not response.access_token:
            raise TokenRequestError("token response has no access_token")
        if response.token_type and response.token_type.lower() != _TOKEN_TYPE:
            raise TokenRequestError("token response has an unsupported token_type")
        if response.expires_in <= 0:
            raise TokenRequestError("token response has a non-positive expires_in")
        lifetime = float(response.expires_in)
        margin = min(self._refresh_margin, lifetime * _MAX_MARGIN_SHARE)
        # Counted from when the request was sent: the server's clock started no earlier.
        self._renew_at = self._sent_at + lifetime - margin
        self._access_token = response.access_token
        return response.access_token

    def invalidate(self, token: str) -> None:
        if token == self._access_token:
            self._access_token = None


def token_endpoint_error(error: grpc.RpcError) -> TokenRequestError:
    """The client-side error for a failed ``Token`` RPC, with its ``oauth-error`` code."""
    code = status_code(error)
    trailers: dict[str, str] = {}
    trailing = getattr(error, "trailing_metadata", None)
    if callable(trailing):
        for key, value in trailing() or ():
            if isinstance(value, str):
                trailers[key] = value
    oauth_error = trailers.get(_OAUTH_ERROR_KEY) or None
    retry_after = trailers.get("retry-after", "")
    what = oauth_error or (code.name if code is not None else type(error).__name__)
    return TokenRequestError(
        f"token request refused: {what}",
        oauth_error=oauth_error,
        code=code,
        retry_after=int(retry_after) if retry_after.isdigit() else None,
    )


def status_code(error: grpc.RpcError) -> grpc.StatusCode | None:
    """The status code of a failed RPC, or ``None`` when the error carries none."""
    code = getattr(error, "code", None)
    if not callable(code):
        return None
    result = code()
    return result if isinstance(result, grpc.StatusCode) else None


def check_timeout(timeout: float) -> None:
    """Refuse a non-positive RPC deadline."""
    if timeout <= 0:
        raise ValueError("timeout must be positive")
