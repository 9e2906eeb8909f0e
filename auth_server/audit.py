"""The auth service's audit trail: one structured line per security event.

Events go to the ``ssot.audit`` logger as a JSON object, so a log pipeline can
route them apart from operational logs. Fields are categories and ids, never a
password, token, refresh token or key.
"""

from __future__ import annotations

import json
import logging

AUDIT_LOGGER = logging.getLogger("ssot.audit")


def audit_event(event: str, **fields: str | int | float | bool | None) -> None:
    """Record ``event`` (e.g. ``"login.failed"``) with its fields (``reason="bad_credentials"``)."""
    if AUDIT_LOGGER.isEnabledFor(logging.INFO):
        record = {"event": event, **{k: v for k, v in fields.items() if v is not None}}
        AUDIT_LOGGER.info("%s", json.dumps(record, separators=(",", ":"), sort_keys=True))
