"""Client-side token managers: log in once, keep the access token fresh, attach it to every call.

A client developer builds one manager per identity and lets it handle the
``AuthService`` round trips::

    auth = grpc.insecure_channel("127.0.0.1:50051")
    tokens = TokenManager(auth, "alice", "s3cret", scope="resource.read")
    channel = grpc.intercept_channel(grpc.insecure_channel(target), tokens.interceptor())
    # or, on a TLS channel:
    creds = grpc.composite_channel_credentials(
        grpc.ssl_channel_credentials(), tokens.call_credentials()
    )

How the token is kept (one sans-I/O core, :class:`~interceptors._token_core.TokenCore`,
decides; the sync and asyncio managers only perform the RPCs it asks for; the
interceptors and call credentials that attach the token live in
:mod:`interceptors._client_interceptors`):

- The first :meth:`TokenManager.token` logs in (or, given only a refresh
  token, refreshes). The token is renewed once less than
  ``min(refresh_margin, 20% of its lifetime)`` is left, so a caller never
  sends a token that is about to expire.
- Renewal uses ``Refresh`` while the manager holds a refresh token. When
  ``Refresh`` answers ``UNIMPLEMENTED`` (servers without refresh support) or
  ``UNAUTHENTICATED`` (spent, expired or revoked session) and the manager
  holds the password, it logs in again instead. ``Refresh`` is tried again on
  every renewal, so a server upgraded to support it is used at once.
- Concurrent callers share one renewal (single flight): twenty threads or
  tasks asking at once cause one ``Login``.

A service identity uses :meth:`TokenManager.for_service` instead, with
:class:`~interceptors.PrivateKeyJwt` (its own private key signs a fresh RFC 7523
assertion, ``aud`` = the issuer, for every request) or
:class:`~interceptors.ClientSecret`. The manager then asks the ``Token`` RPC for a
client-credentials grant (no refresh token: each renewal is a new grant), with the
same renewal ahead of expiry and the same single flight::

    identity = PrivateKeyJwt(client_id="billing-worker", key="billing.pem",
                             issuer="https://auth.example", audience="orders-api")
    tokens = TokenManager.for_service(auth, identity)

Errors: a failed ``Login``/``Refresh`` surfaces as the :class:`grpc.RpcError`
the auth service returned, unchanged, so its status code is there to inspect.
A refused ``Token`` RPC raises :class:`~interceptors.TokenRequestError` with the
auth service's RFC 6749 code in ``oauth_error`` (``"invalid_client"``, ...) and the
status in ``code``. An answer that holds no usable token (no ``access_token``,
``expires_in <= 0``, a ``token_type`` other than Bearer), or a manager with no
credential left to ask with, raises :class:`~interceptors.TokenRequestError`, a
:class:`~interceptors.TokenClientError` and deliberately not an ``AuthError``:
a server handler catching ``AuthError`` must not catch its own outgoing
client's failure. Neither ever carries the password or a token; the managers'
reprs do not show them either.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future
from typing import NoReturn

import grpc
from grpc import aio

from interceptors._client_interceptors import (
    BearerClientInterceptor,
    Metadata,
    async_bearer_interceptors,
    bearer_call_credentials,
    bearer_metadata,
)
from interceptors._service_identity import ServiceCredentials
from interceptors._token_core import (
    ClientCredentialsCore,
    LoginStep,
    RefreshStep,
    Step,
    TokenCore,
    check_timeout,
    status_code,
    token_endpoint_error,
)
from protos import auth_pb2, auth_pb2_grpc


class TokenManager:
    """Obtains and renews an access token for one identity; thread-safe.

    Args:
        auth_channel: A channel to the auth service (no credentials or interceptor of this
            manager on it).
        username: The account to log in as.
        password: The account's password. Without it the manager can only refresh, starting
            from ``refresh_token``, and fails once that session ends.
        refresh_token: A refresh token to start from instead of logging in.
        scope: Scopes to ask for at login (space-separated); empty asks for all.
        refresh_margin: Renew when fewer seconds than this (or than 20% of the token's
            lifetime, whichever is smaller) are left.
        timeout: Deadline in seconds for each ``Login``/``Refresh`` RPC.
        now: The clock, in seconds since the epoch.

    Raises:
        ValueError: an empty username, neither password nor refresh token, a negative margin
            or a non-positive timeout.
    """

    def __init__(
        self,
        auth_channel: grpc.Channel,
        username: str,
        password: str | None = None,
        *,
        refresh_token: str | None = None,
        scope: str = "",
        refresh_margin: float = 60.0,
        timeout: float = 10.0,
        now: Callable[[], float] = time.time,
    ) -> None:
        check_timeout(timeout)
        core = TokenCore(
            username=username,
            password=password,
            refresh_token=refresh_token,
            scope=scope,
            refresh_margin=refresh_margin,
            now=now,
        )
        self._setup(auth_channel, core, timeout)

    @classmethod
    def from_id_token(
        cls,
        auth_channel: grpc.Channel,
        id_token: str,
        *,
        scope: str = "",
        refresh_margin: float = 60.0,
        timeout: float = 10.0,
        now: Callable[[], float] = time.time,
    ) -> TokenManager:
        """A manager that signs in with an upstream provider's ID token, then refreshes.

        The first renewal exchanges ``id_token`` (RFC 8693, ``subject_token_type``
        ``urn:ietf:params:oauth:token-type:id_token``) at the ``Token`` RPC for a
        session; later ones use its refresh token. Once that session ends the manager
        fails: get a new ID token from the provider and make a new manager.

        Raises:
            ValueError: an empty ID token, a negative margin or a non-positive timeout.
        """
        check_timeout(timeout)
        if not id_token:
            raise ValueError("id_token must not be empty")
        self = cls.__new__(cls)
        core = TokenCore(
            username="(id_token)",
            password=None,
            refresh_token=None,
            id_token=id_token,
            scope=scope,
            refresh_margin=refresh_margin,
            now=now,
        )
        self._setup(auth_channel, core, timeout)
        return self

    @classmethod
    def for_service(
        cls,
        auth_channel: grpc.Channel,
        credentials: ServiceCredentials,
        *,
        refresh_margin: float = 60.0,
        timeout: float = 10.0,
        now: Callable[[], float] = time.time,
    ) -> TokenManager:
        """A manager for a service identity: client-credentials tokens from the ``Token`` RPC.

        Args:
            auth_channel: A channel to the auth service (none of this manager's
                credentials or interceptors on it).
            credentials: :class:`~interceptors.PrivateKeyJwt` or
                :class:`~interceptors.ClientSecret`, with the scope and audience to ask for.
            refresh_margin: As for the constructor.
            timeout: Deadline in seconds for each ``Token`` RPC.
            now: The clock, in seconds since the epoch (also the assertions' ``iat``).

        Raises:
            ValueError: unusable credentials (an unreadable key file, an algorithm that does
                not fit the key, ...), a negative margin or a non-positive timeout.
        """
        check_timeout(timeout)
        self = cls.__new__(cls)
        core = ClientCredentialsCore(
            credentials=credentials, refresh_margin=refresh_margin, now=now
        )
        self._setup(auth_channel, core, timeout)
        return self

    def _setup(
        self, channel: grpc.Channel, core: TokenCore | ClientCredentialsCore, timeout: float
    ) -> None:
        self._core: TokenCore | ClientCredentialsCore = core
        self._stub = auth_pb2_grpc.AuthServiceStub(channel)
        self._timeout = timeout
        self._lock = threading.Lock()
        self._flight: Future[str] | None = None

    def __repr__(self) -> str:
        return f"TokenManager({_describe(self._core)})"

    def token(self) -> str:
        """Return a valid access token, logging in or renewing it first when needed.

        Concurrent callers share one ``Login``/``Refresh``.

        Raises:
            grpc.RpcError: the auth service refused or failed the request.
            TokenRequestError: the answer held no usable token, no credential is left, or
                (a service identity) the ``Token`` RPC failed: see ``oauth_error``.
        """
        with self._lock:
            token = self._core.fresh_token()
            if token is not None:
                return token
            flight = self._flight
            leader = flight is None
            if flight is None:
                flight = self._flight = Future()
        if not leader:
            return flight.result()
        try:
            token = self._renew()
        except BaseException as exc:
            self._land(flight)
            flight.set_exception(exc)
            raise
        self._land(flight)
        flight.set_result(token)
        return token

    def invalidate(self, token: str) -> None:
        """Forget ``token`` if it is still the current one, so the next :meth:`token` renews."""
        with self._lock:
            self._core.invalidate(token)

    def metadata(self) -> Metadata:
        """Return call metadata holding the current token: ``(("authorization", "Bearer …"),)``."""
        return bearer_metadata((), self.token())

    def call_credentials(self) -> grpc.CallCredentials:
        """Return call credentials that send the current token (TLS or local channels only).

        gRPC sends call credentials only over secure channels. They renew the token ahead of
        expiry but cannot retry a call the server rejects; use :meth:`interceptor` (which
        also works on TLS channels) for that, not both at once.
        """
        return bearer_call_credentials(self)

    def interceptor(self) -> BearerClientInterceptor:
        """Return an interceptor for ``grpc.intercept_channel(channel, interceptor)``.

        One object, because a sync channel takes one interceptor implementing all four
        call kinds; :meth:`AsyncTokenManager.interceptors` returns a list because
        grpc.aio picks interceptors by class, one class per call kind.
        """
        return BearerClientInterceptor(self)

    def _land(self, flight: Future[str]) -> None:
        with self._lock:
            if self._flight is flight:
                self._flight = None

    def _renew(self) -> str:
        with self._lock:
            step: Step | None = self._core.first_step()
        while step is not None:
            try:
                response = self._send(step)
            except grpc.RpcError as exc:
                failed = step
                with self._lock:
                    step = self._core.after_failure(step, status_code(exc))
                if step is None:
                    _raise_failure(failed, exc)
                continue
            with self._lock:
                return self._core.accept(response)
        raise AssertionError("unreachable")  # pragma: no cover

    def _send(self, step: Step) -> auth_pb2.TokenResponse:
        if isinstance(step, LoginStep):
            return self._stub.Login(step.request, timeout=self._timeout)
        if isinstance(step, RefreshStep):
            return self._stub.Refresh(step.request, timeout=self._timeout)
        return self._stub.Token(step.request, timeout=self._timeout)


class AsyncTokenManager:
    """The asyncio face of :class:`TokenManager`: same arguments and behaviour.

    It attaches tokens through :meth:`interceptors` only (no ``call_credentials()``;
    that method's docstring says why).

    Concurrent tasks share one ``Login``/``Refresh``; a task cancelled while waiting does not
    cancel the shared request. Use it from one event loop.
    """

    def __init__(
        self,
        auth_channel: aio.Channel,
        username: str,
        password: str | None = None,
        *,
        refresh_token: str | None = None,
        scope: str = "",
        refresh_margin: float = 60.0,
        timeout: float = 10.0,
        now: Callable[[], float] = time.time,
    ) -> None:
        check_timeout(timeout)
        core = TokenCore(
            username=username,
            password=password,
            refresh_token=refresh_token,
            scope=scope,
            refresh_margin=refresh_margin,
            now=now,
        )
        self._setup(auth_channel, core, timeout)

    @classmethod
    def for_service(
        cls,
        auth_channel: aio.Channel,
        credentials: ServiceCredentials,
        *,
        refresh_margin: float = 60.0,
        timeout: float = 10.0,
        now: Callable[[], float] = time.time,
    ) -> AsyncTokenManager:
        """The asyncio face of :meth:`TokenManager.for_service`: same arguments and behaviour."""
        check_timeout(timeout)
        self = cls.__new__(cls)
        core = ClientCredentialsCore(
            credentials=credentials, refresh_margin=refresh_margin, now=now
        )
        self._setup(auth_channel, core, timeout)
        return self

    def _setup(
        self, channel: aio.Channel, core: TokenCore | ClientCredentialsCore, timeout: float
    ) -> None:
        self._core: TokenCore | ClientCredentialsCore = core
        self._stub = auth_pb2_grpc.AuthServiceStub(channel)
        self._timeout = timeout
        self._flight: asyncio.Task[str] | None = None

    def __repr__(self) -> str:
        return f"AsyncTokenManager({_describe(self._core)})"

    async def token(self) -> str:
        """Return a valid access token, logging in or renewing it first when needed.

        Raises:
            grpc.aio.AioRpcError: the auth service refused or failed the request.
            TokenRequestError: the answer held no usable token, no credential is left, or
                (a service identity) the ``Token`` RPC failed: see ``oauth_error``.
        """
        token = self._core.fresh_token()
        if token is not None:
            return token
        flight = self._flight
        if flight is None or flight.done():
            flight = self._flight = asyncio.get_running_loop().create_task(self._renew())
            flight.add_done_callback(self._land)
        return await asyncio.shield(flight)

    def invalidate(self, token: str) -> None:
        """Forget ``token`` if it is still the current one, so the next :meth:`token` renews."""
        self._core.invalidate(token)

    async def metadata(self) -> Metadata:
        """Return call metadata holding the current token: ``(("authorization", "Bearer …"),)``."""
        return bearer_metadata((), await self.token())

    def interceptors(self) -> list[aio.ClientInterceptor]:
        """Return interceptors for ``grpc.aio.insecure_channel(target, interceptors=...)``.

        Four, one per call kind, because grpc.aio picks interceptors by class (the sync
        :meth:`TokenManager.interceptor` is one object implementing all four). They
        behave as :class:`BearerClientInterceptor`: the token on all four kinds, caller
        metadata kept, one retry of a unary-unary call rejected with ``UNAUTHENTICATED``.

        There is no asyncio ``call_credentials()``: gRPC calls a metadata plugin on a
        thread of its own and takes the answer through a callback, so it would have
        to drive this single-loop manager from a foreign thread. The interceptors get
        the token on the event loop and work on TLS and insecure channels alike.
        """
        return async_bearer_interceptors(self)

    def _land(self, flight: asyncio.Task[str]) -> None:
        if self._flight is flight:
            self._flight = None
        if not flight.cancelled():
            # Retrieved here so a failure nobody awaited any more is not reported as unhandled.
            flight.exception()

    async def _renew(self) -> str:
        step: Step | None = self._core.first_step()
        while step is not None:
            try:
                response = await self._send(step)
            except grpc.RpcError as exc:
                failed = step
                step = self._core.after_failure(step, status_code(exc))
                if step is None:
                    _raise_failure(failed, exc)
                continue
            return self._core.accept(response)
        raise AssertionError("unreachable")  # pragma: no cover

    async def _send(self, step: Step) -> auth_pb2.TokenResponse:
        if isinstance(step, LoginStep):
            return await self._stub.Login(step.request, timeout=self._timeout)
        if isinstance(step, RefreshStep):
            return await self._stub.Refresh(step.request, timeout=self._timeout)
        return await self._stub.Token(step.request, timeout=self._timeout)


def _raise_failure(step: Step, error: grpc.RpcError) -> NoReturn:
    """Re-raise a failed RPC: ``Login``/``Refresh`` unchanged, ``Token`` as TokenRequestError."""
    if isinstance(step, LoginStep | RefreshStep):
        raise error
    raise token_endpoint_error(error) from error


def _describe(core: TokenCore | ClientCredentialsCore) -> str:
    who = (
        f"username={core.username!r}"
        if isinstance(core, TokenCore)
        else f"client_id={core.client_id!r}"
    )
    return f"{who}, scope={core.scope!r}, has_token={core.has_token}"
