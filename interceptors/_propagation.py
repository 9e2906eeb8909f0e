"""Identity propagation: calls made inside a handler carry the user's identity to the next service.

A service that handles a user's call and calls another service on their behalf
puts a propagator on its channel to that service::

    propagator = IdentityPropagator(
        auth_channel, audience="inventory-api",
        credentials=PrivateKeyJwt(client_id="orders-api", key="orders.pem", issuer=ISSUER),
    )
    inventory = grpc.intercept_channel(grpc.insecure_channel(target), propagator.interceptor())

Every call through ``inventory`` made inside an authenticated handler then
carries a token for ``inventory-api`` that names the same user, with this
service as the actor (``act``), obtained by token exchange (RFC 8693) from the
caller's own token and cached per incoming token until shortly before it
expires. Concurrent calls for one incoming token share one exchange; calls for
different tokens never share anything, so users' tokens never cross. A call
made outside an authenticated handler fails with
:class:`~interceptors.NoCallerToken` before anything is sent: it never falls
back to the service's own identity.

The exchange answers what the auth service says: a revoked session or a
refused exchange surfaces as its :class:`grpc.RpcError` (``oauth-error``
trailer). A call rejected with ``UNAUTHENTICATED`` drops the cached token and is
retried once with a fresh exchange (the unary-unary rule of
:class:`~interceptors.BearerClientInterceptor`).
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future

import grpc
from grpc import aio

from interceptors._client_interceptors import BearerClientInterceptor, async_bearer_interceptors
from interceptors._exchange_core import ExchangeCore, caller_token
from interceptors._service_identity import ServiceCredentials
from interceptors._token_core import check_timeout
from protos import auth_pb2, auth_pb2_grpc

_DEFAULT_ENTRIES = 10_000


class IdentityPropagator:
    """Exchanges the current caller's token for one to ``audience``; thread-safe.

    Args:
        auth_channel: A channel to the auth service (without this propagator on it).
        audience: The audience of the service called through the channel.
        credentials: How this service authenticates as the acting client: the
            :class:`~interceptors.PrivateKeyJwt` or :class:`~interceptors.ClientSecret`
            its :meth:`TokenManager.for_service <interceptors.TokenManager.for_service>`
            takes (their ``scope`` and ``audience`` are that grant's, unused here).
        scope: Scopes to ask for (space-separated); empty: all the caller may pass on.
        refresh_margin: Exchange again when fewer seconds than this (or 20% of the
            lifetime) are left.
        timeout: Deadline in seconds of each exchange.
        max_entries: Most incoming tokens remembered (least recently used go first).
        now: The clock, in seconds since the epoch.
    """

    def __init__(
        self,
        auth_channel: grpc.Channel,
        *,
        audience: str,
        credentials: ServiceCredentials,
        scope: str = "",
        refresh_margin: float = 30.0,
        timeout: float = 5.0,
        max_entries: int = _DEFAULT_ENTRIES,
        now: Callable[[], float] = time.time,
    ) -> None:
        check_timeout(timeout)
        self._core = ExchangeCore(
            audience=audience,
            credentials=credentials,
            scope=scope,
            refresh_margin=refresh_margin,
            max_entries=max_entries,
            now=now,
        )
        self._stub = auth_pb2_grpc.AuthServiceStub(auth_channel)
        self._timeout = timeout
        self._now = now
        self._lock = threading.Lock()
        self._flights: dict[str, Future[str]] = {}

    def __repr__(self) -> str:
        return f"IdentityPropagator(audience={self._core.audience!r})"

    def token(self) -> str:
        """A token for the audience that acts for the current caller.

        Raises:
            NoCallerToken: Not inside an authenticated handler.
            grpc.RpcError: The auth service refused or failed the exchange.
            TokenRequestError: Its answer held no usable token.
        """
        subject = caller_token()
        with self._lock:
            token = self._core.cached(subject)
            if token is not None:
                return token
            flight = self._flights.get(subject)
            leader = flight is None
            if flight is None:
                flight = self._flights[subject] = Future()
        if not leader:
            return flight.result()
        try:
            sent_at = self._now()
            response = self._stub.Token(self._core.request(subject), timeout=self._timeout)
            with self._lock:
                token = self._core.accept(subject, response, sent_at)
        except BaseException as exc:
            self._land(subject, flight)
            flight.set_exception(exc)
            raise
        self._land(subject, flight)
        flight.set_result(token)
        return token

    def invalidate(self, token: str) -> None:
        """Forget the exchanged ``token``, so the next call exchanges again."""
        with self._lock:
            self._core.invalidate(token)

    def interceptor(self) -> BearerClientInterceptor:
        """An interceptor for ``grpc.intercept_channel(channel, interceptor)``."""
        return BearerClientInterceptor(self)

    def _land(self, subject: str, flight: Future[str]) -> None:
        with self._lock:
            if self._flights.get(subject) is flight:
                del self._flights[subject]


class AsyncIdentityPropagator:
    """The asyncio face of :class:`IdentityPropagator`: same arguments and behaviour.

    Use it from one event loop, on a ``grpc.aio`` channel built with
    ``interceptors=propagator.interceptors()``. A task cancelled while waiting
    does not cancel the exchange other tasks share.
    """

    def __init__(
        self,
        auth_channel: aio.Channel,
        *,
        audience: str,
        credentials: ServiceCredentials,
        scope: str = "",
        refresh_margin: float = 30.0,
        timeout: float = 5.0,
        max_entries: int = _DEFAULT_ENTRIES,
        now: Callable[[], float] = time.time,
    ) -> None:
        check_timeout(timeout)
        self._core = ExchangeCore(
            audience=audience,
            credentials=credentials,
            scope=scope,
            refresh_margin=refresh_margin,
            max_entries=max_entries,
            now=now,
        )
        self._stub = auth_pb2_grpc.AuthServiceStub(auth_channel)
        self._timeout = timeout
        self._now = now
        self._flights: dict[str, asyncio.Task[str]] = {}

    def __repr__(self) -> str:
        return f"AsyncIdentityPropagator(audience={self._core.audience!r})"

    async def token(self) -> str:
        """See :meth:`IdentityPropagator.token`."""
        subject = caller_token()
        token = self._core.cached(subject)
        if token is not None:
            return token
        flight = self._flights.get(subject)
        if flight is None or flight.done():
            flight = asyncio.get_running_loop().create_task(self._exchange(subject))
            self._flights[subject] = flight
            flight.add_done_callback(lambda done: self._land(subject, done))
        return await asyncio.shield(flight)

    def invalidate(self, token: str) -> None:
        """Forget the exchanged ``token``, so the next call exchanges again."""
        self._core.invalidate(token)

    def interceptors(self) -> list[aio.ClientInterceptor]:
        """Interceptors for ``grpc.aio.insecure_channel(target, interceptors=...)``."""
        return async_bearer_interceptors(self)

    async def _exchange(self, subject: str) -> str:
        sent_at = self._now()
        response: auth_pb2.TokenResponse = await self._stub.Token(
            self._core.request(subject), timeout=self._timeout
        )
        return self._core.accept(subject, response, sent_at)

    def _land(self, subject: str, flight: asyncio.Task[str]) -> None:
        if self._flights.get(subject) is flight:
            del self._flights[subject]
        if not flight.cancelled():
            flight.exception()  # retrieved, so an unawaited failure is not reported
