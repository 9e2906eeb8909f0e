"""The auth service's audit trail: one structured line per security event.

Events go to the ``ssot.audit`` logger as a JSON object, so a log pipeline can
route them apart from operational logs. Fields are categories and ids, never a
password, token, refresh token or key. The writer is :mod:`interceptors.audit`
(a leaf module the auth service may use), so the verifiers' ``token.rejected``
lines and the auth service's events share one format.
"""

from __future__ import annotations

from interceptors.audit import AUDIT_LOGGER, audit_event, notify_listener

__all__ = ["AUDIT_LOGGER", "audit_event", "notify_listener"]
