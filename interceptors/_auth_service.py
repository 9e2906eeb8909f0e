"""The auth service as a source over gRPC: its keys and its revocations, on one channel.

``GetJwks`` answers a fetch, ``WatchJwks`` pushes every change of the key set,
and ``WatchRevocations`` pushes revocations (sessions and "issued before"
watermarks; the request asks for the watermarks). A broken key stream raises
:class:`~interceptors.KeySourceError`, a broken revocation stream
:class:`~interceptors.RevocationStreamError`, never a key error.

An auth service run with ``--watch-auth`` admits only known subscribers to the
two streams: a client certificate (``credentials`` from
:func:`interceptors.tls.channel_credentials` with a client cert and key), or a
token with the ``ssot.watch`` scope (``tokens``: a
:meth:`TokenManager.for_service <interceptors.TokenManager.for_service>`). The
token is asked for each time a stream opens, so a reconnect carries a fresh one
(the manager renews ahead of expiry); a stream refused or ended with
``UNAUTHENTICATED`` (its token expired: the server ends it at ``exp``) drops that
token, so the next attempt gets a new one.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterator
from typing import Any, Generic, TypeVar

import grpc

from interceptors._client_interceptors import Metadata, TokenSource, bearer_metadata
from interceptors._errors import AuthError, KeySourceError, RevocationStreamError
from interceptors._revocation import RevocationBatch, RevocationStream
from interceptors._revocation_entries import Watermark
from interceptors._sources import FetchResult, KeyWatch
from interceptors.tls import is_loopback_host
from protos import auth_pb2, auth_pb2_grpc

_LOGGER = logging.getLogger(__name__)

_T = TypeVar("_T")
_JWK_FIELDS = ("kty", "kid", "use", "alg", "n", "e", "crv", "x", "y")


class AuthServiceSource:
    """The auth service over gRPC: its keys (``GetJwks``, ``WatchJwks``) and revocations.

    A :class:`KeySource` that pushes, and a :class:`~interceptors.RevocationSource`
    (``WatchRevocations``), both on one channel. Formerly ``GrpcJwksSource``,
    a name that still works.
    """

    def __init__(
        self,
        target: str | None = None,
        *,
        channel: grpc.Channel | None = None,
        credentials: grpc.ChannelCredentials | None = None,
        tokens: TokenSource | None = None,
    ) -> None:
        """Use ``channel``, or open one to ``target``.

        Args:
            target: ``host:port`` of the auth service; a channel is opened
                (and closed by :meth:`close`).
            channel: An existing channel, owned by the caller.
            credentials: TLS credentials for the channel opened to ``target``;
                without them the channel is plaintext.

        Raises:
            ValueError: Not exactly one of ``target`` and ``channel``, or
                ``credentials`` given with ``channel``.
            tokens: Sends its token (``authorization: Bearer``) on the watch streams,
                for an auth service run with ``--watch-auth token``; e.g.
                ``TokenManager.for_service(channel, PrivateKeyJwt(..., scope="ssot.watch"))``.
                ``GetJwks`` is public and goes without it.
        """
        if (target is None) == (channel is None):
            raise ValueError("give exactly one of target and channel")
        if channel is not None and credentials is not None:
            raise ValueError("credentials apply only to a channel opened to target")
        self._owned: grpc.Channel | None = None
        if channel is None:
            assert target is not None
            options = [("grpc.max_reconnect_backoff_ms", 30_000)]
            if credentials is not None:
                channel = grpc.secure_channel(target, credentials, options=options)
            else:
                if not _is_loopback_target(target):
                    _LOGGER.warning(
                        "fetching signing keys from %s over plaintext gRPC; pass credentials",
                        target,
                    )
                channel = grpc.insecure_channel(target, options=options)
            self._owned = channel
        self._channel = channel
        self._stub = auth_pb2_grpc.AuthServiceStub(channel)
        self._tokens = tokens

    @property
    def channel(self) -> grpc.Channel:
        """The channel to the auth service (e.g. for the ``tokens`` manager's ``Token`` RPC)."""
        return self._channel

    def use_tokens(self, tokens: TokenSource | None) -> None:
        """Send ``tokens``' token on the watch streams opened from now on (``None``: none)."""
        self._tokens = tokens

    def fetch(self, timeout: float) -> FetchResult:
        """Call ``GetJwks`` with a deadline of ``timeout`` seconds.

        Raises:
            KeySourceError: The call failed.
        """
        try:
            message = self._stub.GetJwks(auth_pb2.GetJwksRequest(), timeout=timeout)
        except grpc.RpcError as exc:
            raise KeySourceError(f"GetJwks failed: {_status_name(exc)}") from exc
        except ValueError as exc:  # grpc raises it for a closed channel
            raise KeySourceError("GetJwks failed: channel closed") from exc
        return jwk_set_result(message)

    def watch(self) -> KeyWatch:
        """Open a ``WatchJwks`` stream.

        Raises:
            KeySourceError: The stream cannot be opened (the channel is closed).
        """
        return self._open(
            lambda metadata: self._stub.WatchJwks(auth_pb2.WatchJwksRequest(), metadata=metadata),
            jwk_set_result,
            "WatchJwks",
            KeySourceError,
        )

    def watch_revocations(self) -> RevocationStream:
        """Open a ``WatchRevocations`` stream.

        Raises:
            RevocationStreamError: The stream cannot be opened (the channel is closed).
        """
        return self._open(
            lambda metadata: self._stub.WatchRevocations(
                auth_pb2.WatchRevocationsRequest(watermarks=True), metadata=metadata
            ),
            revocation_batch,
            "WatchRevocations",
            RevocationStreamError,
        )

    def _open(
        self,
        start: Callable[[Metadata | None], Any],
        convert: Callable[[Any], _T],
        name: str,
        error: type[AuthError],
    ) -> _StreamWatch[_T]:
        tokens = self._tokens
        if tokens is None:
            return _StreamWatch.open(lambda: start(None), convert, name, error)
        try:
            token = tokens.token()
        except Exception as exc:  # the follower retries with backoff
            # Its type only: a token endpoint's error text is the auth service's to show.
            raise error(f"{name}: no watch token ({type(exc).__name__})") from exc
        stream = _StreamWatch.open(lambda: start(bearer_metadata((), token)), convert, name, error)
        stream.on_unauthenticated = lambda: tokens.invalidate(token)
        return stream

    def close(self) -> None:
        """Close the channel this source opened (not one it was given). Idempotent."""
        if self._owned is not None:
            self._owned.close()


#: The name :class:`AuthServiceSource` had before it was known to serve revocations too.
GrpcJwksSource = AuthServiceSource


class _StreamWatch(Generic[_T]):
    """One open server stream of the auth service, its messages converted as they arrive.

    Serves both ``WatchJwks`` (a :class:`KeyWatch`) and ``WatchRevocations``
    (a :class:`~interceptors.RevocationStream`); ``error`` is what a broken
    stream raises, so each stream fails with an error of its own kind.
    """

    def __init__(
        self,
        call: Any,
        convert: Callable[[Any], _T],
        name: str,
        error: type[AuthError],
    ) -> None:
        self._call = call
        self._convert = convert
        self._name = name
        self._error = error
        self._cancelled = threading.Event()
        #: Called when the server refuses or ends the stream with UNAUTHENTICATED.
        self.on_unauthenticated: Callable[[], None] | None = None

    @classmethod
    def open(
        cls,
        start: Callable[[], Any],
        convert: Callable[[Any], _T],
        name: str,
        error: type[AuthError],
    ) -> _StreamWatch[_T]:
        """Start the call; ``error`` if grpc refuses (it raises ValueError on a closed channel)."""
        try:
            call = start()
        except ValueError as exc:
            raise error(f"{name} failed: channel closed") from exc
        return cls(call, convert, name, error)

    def __iter__(self) -> Iterator[_T]:
        try:
            for message in self._call:
                yield self._convert(message)
        except (grpc.RpcError, ValueError) as exc:
            if self._cancelled.is_set():
                return
            why = _status_name(exc) if isinstance(exc, grpc.RpcError) else "channel closed"
            if why == "UNAUTHENTICATED" and self.on_unauthenticated is not None:
                self.on_unauthenticated()  # e.g. the token expired: the next one is fresh
            raise self._error(f"{self._name} stream broke: {why}") from exc

    def cancel(self) -> None:
        self._cancelled.set()
        self._call.cancel()


def jwk_set_result(message: auth_pb2.JwkSet) -> FetchResult:
    """Convert a ``JwkSet`` message to a FetchResult (empty fields are dropped)."""
    keys = [
        {name: getattr(jwk, name) for name in _JWK_FIELDS if getattr(jwk, name)}
        for jwk in message.keys
    ]
    max_age = float(message.max_age_seconds) if message.max_age_seconds > 0 else None
    return FetchResult(document={"keys": keys}, max_age=max_age)


def revocation_batch(message: auth_pb2.RevocationUpdate) -> RevocationBatch:
    """Convert a ``WatchRevocations`` message to a RevocationBatch."""
    return RevocationBatch(
        full=message.full,
        sessions={s.session_id: float(s.expires_at) for s in message.sessions},
        watermarks={
            w.subject: Watermark(issued_before=w.issued_before, expires_at=float(w.expires_at))
            for w in message.watermarks
        },
        continues=message.full_list_continues,
    )


def _is_loopback_target(target: str) -> bool:
    """Best effort, for a warning only: does a gRPC target name this machine?"""
    if target.startswith(("unix:", "unix-abstract:")):
        return True
    host = target.removeprefix("dns:///").removeprefix("ipv4:").removeprefix("ipv6:")
    if host.startswith("["):
        host = host[1 : host.find("]")]
    elif host.count(":") == 1:
        host = host.split(":", 1)[0]
    return is_loopback_host(host)


def _status_name(exc: grpc.RpcError) -> str:
    code = exc.code() if isinstance(exc, grpc.Call) else None
    return code.name if code is not None else type(exc).__name__
