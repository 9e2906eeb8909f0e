"""Where a handler finds the caller that the interceptor authenticated."""

from __future__ import annotations

from contextvars import ContextVar
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from interceptors._claims import Principal

# Set by the server interceptors inside the wrapped handler, for exactly the span of
# one authenticated call (grpc does not promise that ``intercept_service`` and the
# handler share a context: grpc/grpc#37881): the principal, and the raw bearer token
# for identity propagation (RFC 8693 exchange). One variable for both, so a call pays
# one set and one reset. The token is a credential: never log it or put it in an error.
CALLER: ContextVar[tuple[Principal, str]] = ContextVar("ssot_auth_caller")


def current_principal() -> Principal:
    """Return the authenticated caller of the RPC being handled.

    Returns:
        The principal built from the verified access token.

    Raises:
        LookupError: Outside a call that the auth interceptor authenticated,
            e.g. in a public method or in a thread the handler started.
    """
    try:
        return CALLER.get()[0]
    except LookupError:
        raise LookupError("no authenticated principal in this context") from None


def current_bearer_token() -> str:
    """Return the access token the current authenticated call was made with.

    It is what :class:`~interceptors.IdentityPropagator` exchanges for a token to
    another service. It is a credential: never log it, store it or send it on as is.

    Raises:
        LookupError: Outside a call that the auth interceptor authenticated.
    """
    try:
        return CALLER.get()[1]
    except LookupError:
        raise LookupError("no authenticated call in this context") from None
