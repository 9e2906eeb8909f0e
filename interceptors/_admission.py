"""How a protected method's call is admitted: the bearer token found in the call's
metadata, verified, authorized for the method, and the handler then run with the
caller set in :data:`~interceptors._context.CALLER`; of every handler kind, sync and
asyncio. :mod:`interceptors._server_interceptors` decides which methods get this.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import logging
import time
from collections.abc import Callable, Iterable, Iterator
from contextvars import ContextVar
from typing import Any, Final, TypeAlias

import grpc
import grpc.aio

from interceptors._binding import CertBinding, check_cert_binding
from interceptors._claims import Principal
from interceptors._context import CALLER
from interceptors._errors import (
    AuthError,
    DelegationRefused,
    InsufficientScope,
    InvalidToken,
    MalformedToken,
    MissingToken,
)
from interceptors._observe import OK, VerifyObserver
from interceptors._verify import TokenVerifier
from interceptors.audit import audit_event

_LOGGER = logging.getLogger(__name__)

Behaviour: TypeAlias = Callable[[Any, Any], Any]
_Caller: TypeAlias = tuple[Principal, str]
Metadata: TypeAlias = Iterable[tuple[str, str | bytes]] | None

_AUTHORIZATION: Final = "authorization"
_AUTHORIZATION_BIN: Final = "authorization-bin"

# The call's metadata as grpc.aio already converted it for intercept_service, handed to
# the wrapped coroutine handler: asking the context again converts it again (a
# namedtuple per entry, ~1.2 µs a call). grpc does not promise that the two share a
# context (grpc/grpc#37881); grpc.aio runs both in the call's own task, and the handler
# takes the metadata only when it was set in its own task, else asks the context. The
# handler asks the task's loop for its current task: current_task() without a loop
# looks the running loop up, which costs a getpid() system call (CPython 3.11).
HANDED_OFF: ContextVar[tuple[asyncio.Task[Any], Metadata]] = ContextVar("ssot_auth_metadata")


def bearer_token(metadata: Metadata) -> str:
    """Extract the access token from ``authorization: Bearer <token>`` metadata.

    Args:
        metadata: The call's invocation metadata, as (key, value) pairs.

    Returns:
        The token, not yet verified.

    Raises:
        MissingToken: There is no ``authorization`` entry.
        MalformedToken: There are several, or it is binary, not the Bearer scheme,
            or not exactly one non-empty token after a single space (RFC 6750 §2.1).
    """
    found: str | bytes | None = None
    for key, value in metadata or ():
        # The spelling gRPC hands over needs no lower() call; any other is folded, so
        # "Authorization" still counts (and a second entry is still refused).
        if key != _AUTHORIZATION:
            name = key.lower()
            if name == _AUTHORIZATION_BIN:
                raise MalformedToken("binary authorization metadata")
            if name != _AUTHORIZATION:
                continue
        if found is not None:
            raise MalformedToken("more than one authorization entry")
        found = value
    if found is None:
        raise MissingToken()
    if not isinstance(found, str):
        raise MalformedToken("authorization value is not text")
    # partition stops at the first space and ``in`` is a memchr, where split(" ")
    # walked all ~700 characters one by one; "exactly one space" is unchanged.
    scheme, space, token = found.partition(" ")
    if not space or " " in token or (scheme != "Bearer" and scheme.lower() != "bearer"):
        raise MalformedToken("authorization is not 'Bearer <token>'")
    if not token:
        raise MalformedToken("empty bearer token")
    return token


def _require_scopes(principal: Principal, scopes: frozenset[str]) -> None:
    if not scopes <= principal.scopes:
        raise InsufficientScope(f"missing scopes {sorted(scopes - principal.scopes)!r}")


def _require_actors(principal: Principal, allowed: frozenset[str] | None) -> None:
    if allowed is None or not principal.actors:
        return
    strangers = set(principal.actors) - allowed
    if strangers:
        raise DelegationRefused(f"actors not allowed on this method: {sorted(strangers)!r}")


def _rejection(exc: Exception, method: str, peer: str) -> AuthError:
    """Record why a call is refused and pick the error to send (never the library's text)."""
    if isinstance(exc, AuthError):
        error = exc
        _LOGGER.debug("rejected call to %s: %s (%s)", method, exc.message, exc.log_detail)
    else:
        # Fail closed: an unexpected failure while checking a token is still a refusal.
        # Only the type is logged, since the text of a foreign exception may echo the token.
        error = InvalidToken()
        _LOGGER.error("rejected call to %s: token check failed with %s", method, type(exc).__name__)
    audit_event("token.rejected", reason=error.reason, method=method, peer=peer)
    return error


def _peer(context: Any) -> str:
    try:
        return str(context.peer())
    except Exception:  # noqa: BLE001 -- the audit line must never turn a refusal into a crash
        return "unknown"


class MethodCheck:
    """The token and scope check for one protected method, in a sync and an async face.

    Each admitted call gets its caller, ``(principal, token)``, which the wrappers
    below hold in :data:`~interceptors._context.CALLER` while the handler runs.
    """

    __slots__ = (
        "_actors",
        "_binding",
        "_scopes",
        "authorize",
        "averify",
        "method",
        "observer",
        "verify",
    )

    def __init__(
        self,
        verifier: TokenVerifier,
        method: str,
        scopes: frozenset[str],
        binding: CertBinding | None,
        actors: frozenset[str] | None = None,
        observer: VerifyObserver | None = None,
    ) -> None:
        self.verify = verifier.verify
        self.averify = verifier.averify
        self.method = method
        self.observer = observer
        self._scopes = scopes
        self._binding = binding
        self._actors = actors
        # Most methods need a valid token and nothing more: decided once, so their
        # calls skip three calls that would check nothing.
        self.authorize: Callable[[Principal, Any], None] | None = (
            None if binding is None and not scopes and actors is None else self._authorize
        )

    def _authorize(self, principal: Principal, context: Any) -> None:
        if self._binding is not None:
            check_cert_binding(principal, context.auth_context(), self._binding)
        _require_scopes(principal, self._scopes)
        _require_actors(principal, self._actors)

    def refused(self, exc: Exception, context: Any, started: float) -> tuple[grpc.StatusCode, str]:
        """Record a refusal (audit line, observer); the status and message to abort with.

        Only those are returned, never the exception: a caller that aborted with the
        exception in a local would make a cycle (exception -> traceback -> frame ->
        exception) that keeps the call and its HTTP/2 stream, counted against
        max_concurrent_streams, alive until a garbage collection.
        """
        error = _rejection(exc, self.method, _peer(context))
        if self.observer is not None:
            self.observer.verified(self.method, error.reason, time.perf_counter() - started)
        return error.code, error.message

    def admit(self, context: grpc.ServicerContext) -> _Caller:
        observer = self.observer
        started = time.perf_counter() if observer is not None else 0.0
        try:
            token = bearer_token(context.invocation_metadata())
            principal = self.verify(token)
            if self.authorize is not None:
                self.authorize(principal, context)
        except Exception as exc:  # noqa: BLE001 -- every failure is a refusal
            refusal = self.refused(exc, context, started)
        else:
            if observer is not None:
                observer.verified(self.method, OK, time.perf_counter() - started)
            return principal, token
        context.abort(*refusal)  # outside the except block: see refused

    async def aadmit(self, context: grpc.aio.ServicerContext[Any, Any]) -> _Caller:
        observer = self.observer
        started = time.perf_counter() if observer is not None else 0.0
        try:
            token = bearer_token(_metadata_of(context))
            principal = await self.averify(token)
            if self.authorize is not None:
                self.authorize(principal, context)
        except Exception as exc:  # noqa: BLE001 -- every failure is a refusal
            refusal = self.refused(exc, context, started)
        else:
            if observer is not None:
                observer.verified(self.method, OK, time.perf_counter() - started)
            return principal, token
        await context.abort(*refusal)  # outside the except block: see refused
        raise AssertionError("abort raises")  # pragma: no cover


def _metadata_of(context: grpc.aio.ServicerContext[Any, Any]) -> Metadata:
    """The call's metadata: as handed off by intercept_service in this task, else the context's."""
    handed = HANDED_OFF.get(None)
    if handed is not None and asyncio.current_task(handed[0].get_loop()) is handed[0]:
        return handed[1]
    return context.invocation_metadata()


def wrap_unary(check: MethodCheck, behaviour: Behaviour) -> Behaviour:
    admit = check.admit

    def checked(request: Any, context: grpc.ServicerContext) -> Any:
        reset = CALLER.set(admit(context))
        try:
            return behaviour(request, context)
        finally:
            CALLER.reset(reset)

    return checked


def wrap_stream(check: MethodCheck, behaviour: Behaviour) -> Behaviour:
    def checked(request: Any, context: grpc.ServicerContext) -> Iterator[Any]:
        return _hold(check.admit(context), behaviour, request, context)

    return checked


def _hold(caller: _Caller, behaviour: Behaviour, request: Any, context: Any) -> Iterator[Any]:
    # The caller is set around each step of the handler's iterator, not across a
    # yield: a generator may be finished on another thread, where a reset would fail.
    reset = CALLER.set(caller)
    try:
        responses = iter(behaviour(request, context))
    finally:
        CALLER.reset(reset)
    done = object()
    try:
        while True:
            reset = CALLER.set(caller)
            try:
                response = next(responses, done)
            finally:
                CALLER.reset(reset)
            if response is done:
                return
            yield response
    finally:
        close = getattr(responses, "close", None)
        if close is not None:
            reset = CALLER.set(caller)
            try:
                close()
            finally:
                CALLER.reset(reset)


def awrap_unary(check: MethodCheck, behaviour: Behaviour) -> Behaviour:
    averify, authorize, observer, method = (
        check.averify,
        check.authorize,
        check.observer,
        check.method,
    )

    # aadmit written out in the handler: this is the path of every cached-token call,
    # and a coroutine awaited per call (aadmit's) costs more than the rest of its check.
    async def checked(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
        started = time.perf_counter() if observer is not None else 0.0
        try:
            handed = HANDED_OFF.get(None)
            metadata: Metadata
            if handed is not None and asyncio.current_task(handed[0].get_loop()) is handed[0]:
                metadata = handed[1]
            else:
                metadata = context.invocation_metadata()
            token = bearer_token(metadata)
            principal = await averify(token)
            if authorize is not None:
                authorize(principal, context)
        except Exception as exc:  # noqa: BLE001 -- every failure is a refusal
            refusal = check.refused(exc, context, started)
        else:
            if observer is not None:
                observer.verified(method, OK, time.perf_counter() - started)
            reset = CALLER.set((principal, token))
            try:
                return await behaviour(request, context)
            finally:
                CALLER.reset(reset)
        await context.abort(*refusal)  # outside the except block: see MethodCheck.refused

    return checked


def awrap_stream(check: MethodCheck, behaviour: Behaviour) -> Behaviour:
    # A coroutine using context.write, so that the caller is set and reset in the
    # call's own task even when the client cancels mid-stream.
    async def checked(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> None:
        reset = CALLER.set(await check.aadmit(context))
        try:
            responses = behaviour(request, context)
            if inspect.isawaitable(responses):
                await responses  # the handler writes its responses itself
                return
            async with contextlib.aclosing(responses) as stream:
                async for response in stream:
                    await context.write(response)
        finally:
            CALLER.reset(reset)

    return checked
