"""The audit trail: one structured line per security event, on the ``ssot.audit`` logger.

Events are JSON objects, so a log pipeline can route them apart from
operational logs. Fields are categories and ids, never a password, token,
refresh token or key. The verifiers write ``token.rejected`` here; the auth
service writes its own events (``login.failed``, ``key.rotated``, ...) through
``auth_server.audit``, which re-exports this module, so both sides share one
format.
"""

from __future__ import annotations

import json
import logging

__all__ = ["AUDIT_LOGGER", "audit_event"]

AUDIT_LOGGER = logging.getLogger("ssot.audit")


def audit_event(event: str, **fields: str | int | float | bool | None) -> None:
    """Record ``event`` with its fields; ``None`` fields are left out.

    Args:
        event: What happened, as a dotted name (``"token.rejected"``, ``"login.failed"``).
        **fields: Categories and ids (``reason="bad_credentials"``); never a secret or token.
    """
    if AUDIT_LOGGER.isEnabledFor(logging.INFO):
        record = {"event": event, **{k: v for k, v in fields.items() if v is not None}}
        AUDIT_LOGGER.info("%s", json.dumps(record, separators=(",", ":"), sort_keys=True))
