"""The audit trail: one structured line per security event, on the ``ssot.audit`` logger.

Events are JSON objects, so a log pipeline can route them apart from
operational logs. Fields are categories and ids, never a password, token,
refresh token or key. The verifiers write ``token.rejected`` here; the auth
service writes its own events (``login.failed``, ``key.rotated``, ...) through
``auth_server.audit``, which re-exports this module, so both sides share one
format.

A listener (:func:`audit_listener`) sees every event as it is recorded, whether
or not the line is logged: the auth service counts its metrics from it, so a
metric and the audit trail can never disagree. The listener lives in a context
variable, not in a process-wide list, so two servers in one process (tests, an
embedded deployment) each count only their own events.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from contextvars import ContextVar

__all__ = [
    "AUDIT_LOGGER",
    "AuditListener",
    "audit_event",
    "audit_listener",
    "current_audit_listener",
    "notify_listener",
]

AUDIT_LOGGER = logging.getLogger("ssot.audit")

AuditValue = str | int | float | bool | None
AuditListener = Callable[[str, Mapping[str, AuditValue]], None]

_LISTENER: ContextVar[AuditListener | None] = ContextVar("ssot_audit_listener", default=None)


def audit_event(event: str, **fields: AuditValue) -> None:
    """Record ``event`` with its fields; ``None`` fields are left out.

    Args:
        event: What happened, as a dotted name (``"token.rejected"``, ``"login.failed"``).
        **fields: Categories and ids (``reason="bad_credentials"``); never a secret or token.
    """
    listener = _LISTENER.get()
    if listener is not None:
        _tell(listener, event, fields)
    if AUDIT_LOGGER.isEnabledFor(logging.INFO):
        record = {"event": event, **{k: v for k, v in fields.items() if v is not None}}
        # The fields ride on the record too, so a JSON log formatter can put them top level.
        AUDIT_LOGGER.info(
            "%s",
            json.dumps(record, separators=(",", ":"), sort_keys=True),
            extra={"audit": record},
        )


def notify_listener(event: str, **fields: AuditValue) -> None:
    """Tell the current listener of an event that is counted but not an audit line.

    (A routine refresh, a token issued: too frequent for the audit trail.)
    """
    listener = _LISTENER.get()
    if listener is not None:
        _tell(listener, event, fields)


def _tell(listener: AuditListener, event: str, fields: Mapping[str, AuditValue]) -> None:
    try:
        listener(event, fields)
    except Exception:  # counting must never turn an answer into an error
        logging.getLogger(__name__).exception("audit listener failed on %s", event)


@contextmanager
def audit_listener(listener: AuditListener | None) -> Iterator[None]:
    """Send the events recorded in this context (and tasks and threads started from it)."""
    token = _LISTENER.set(listener)
    try:
        yield
    finally:
        _LISTENER.reset(token)


def current_audit_listener() -> AuditListener | None:
    """The listener of this context, to hand to work that runs outside it."""
    return _LISTENER.get()
