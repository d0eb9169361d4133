"""Log setup for every ``fchm`` command: human text, or one JSON object per line.

JSON lines are for log shippers (journald → Loki, Docker → Fluent Bit): each has
``timestamp`` (UTC, ISO 8601), ``level``, ``logger``, ``message``, and every field
passed as ``extra``, so ``log.info("acked", extra={"camera": "cam1", "sequence": 7})``
becomes ``{…, "message": "acked", "camera": "cam1", "sequence": 7}`` and can be
filtered on without parsing the message.
"""

from __future__ import annotations

import json
import logging
import sys
from datetime import UTC, datetime
from typing import IO, Any

FORMATS = ("text", "json")
TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"

# Attributes every LogRecord has; anything else on a record came from ``extra``.
_STANDARD = set(vars(logging.makeLogRecord({}))) | {"message", "asctime", "taskName"}


class JsonFormatter(logging.Formatter):
    """One JSON object per record; ``extra`` fields at the top level."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "timestamp": datetime.fromtimestamp(record.created, UTC).isoformat(
                timespec="milliseconds"
            ),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        for key, value in vars(record).items():
            if key not in _STANDARD and not key.startswith("_"):
                entry[key] = value
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        if record.stack_info:
            entry["stack"] = self.formatStack(record.stack_info)
        # default=str: a Path or an enum in ``extra`` must not break the log line.
        return json.dumps(entry, default=str, ensure_ascii=False)


def setup_logging(
    level: str | int = "INFO", fmt: str = "text", stream: IO[str] | None = None
) -> logging.Handler:
    """Send the root logger to ``stream`` (stderr) as ``fmt``; returns the handler.

    Calling it again replaces the handler it installed before (e.g. ``fchm edge
    run`` switching to JSON from its config) and leaves other handlers alone.
    """
    if fmt not in FORMATS:
        raise ValueError(f"log format {fmt!r} is not one of {FORMATS}")
    root = logging.getLogger()
    for old in [h for h in root.handlers if getattr(h, "_fchm", False)]:
        root.removeHandler(old)
        old.close()
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.setFormatter(JsonFormatter() if fmt == "json" else logging.Formatter(TEXT_FORMAT))
    handler._fchm = True  # type: ignore[attr-defined]
    root.addHandler(handler)
    root.setLevel(level.upper() if isinstance(level, str) else level)
    logging.captureWarnings(True)  # Python warnings go through the same format
    return handler
