"""The verifier's audit trail: one structured line per refused call.

Kept apart from ``auth_server.audit`` on purpose (interceptors/ imports nothing
from the auth server); both write JSON objects to the ``ssot.audit`` logger.
"""

from __future__ import annotations

import json
import logging

AUDIT_LOGGER = logging.getLogger("ssot.audit")


def audit_event(event: str, **fields: str | int | float | bool | None) -> None:
    """Record ``event`` (e.g. ``"token.rejected"``) with its fields; never pass a token."""
    if AUDIT_LOGGER.isEnabledFor(logging.INFO):
        record = {"event": event, **{k: v for k, v in fields.items() if v is not None}}
        AUDIT_LOGGER.info("%s", json.dumps(record, separators=(",", ":"), sort_keys=True))
