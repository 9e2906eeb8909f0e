"""Log line formats of both command lines: ``--log-format text|json`` (``SSOT_LOG_FORMAT``).

JSON is one object per line: ``time`` (RFC 3339, UTC), ``level``, ``logger``,
``message``, the trace's ``trace_id``/``span_id`` while an OpenTelemetry span is
active, an audit event's fields at the top level, and ``exc_type``/``exc`` for a
traceback. OpenTelemetry is looked at only if something already imported it: a
service without tracing imports nothing more.
"""

from __future__ import annotations

import json
import logging
import sys
from datetime import UTC, datetime
from typing import Any

__all__ = ["LOG_FORMATS", "TEXT_FORMAT", "JsonFormatter", "default_log_format", "formatter_for"]

LOG_FORMATS = ("text", "json")
TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
_RESERVED = frozenset({"time", "level", "logger", "message"})


class JsonFormatter(logging.Formatter):
    """Formats a record as one JSON object on one line."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        audit = getattr(record, "audit", None)
        if isinstance(audit, dict):
            entry.update((k, v) for k, v in audit.items() if k not in _RESERVED)
        entry.update(_trace_ids())
        if record.exc_info and record.exc_info[0] is not None:
            entry["exc_type"] = record.exc_info[0].__name__
            entry["exc"] = self.formatException(record.exc_info)
        return json.dumps(entry, default=str, separators=(",", ":"))


def _trace_ids() -> dict[str, str]:
    trace = sys.modules.get("opentelemetry.trace")
    if trace is None:
        return {}
    context = trace.get_current_span().get_span_context()
    if not context.is_valid:
        return {}
    return {"trace_id": f"{context.trace_id:032x}", "span_id": f"{context.span_id:016x}"}


def default_log_format() -> str:
    """``text`` on a terminal, ``json`` otherwise (a collector reads the stream)."""
    return "text" if sys.stderr.isatty() else "json"


def formatter_for(log_format: str) -> logging.Formatter:
    if log_format == "json":
        return JsonFormatter()
    return logging.Formatter(TEXT_FORMAT)
