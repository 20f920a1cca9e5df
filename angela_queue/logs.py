"""Log output: lines for people (the default), or one JSON object per line
for machines (``--log-format json``, env ANGELA_QUEUE_LOG_FORMAT).

Records that describe an event carry it as ``extra={"event": {...}}``:
a task's outcome (``event: "task"``, with task_id, kind, queue, priority,
tier, attempt, max_attempts, outcome, wait_ms, run_ms, worker, error) and a
supervisor's scaling decision (``event: "scaling"``). The JSON formatter puts
those fields at the top level of the object, beside ts, level, logger and
message; the text formatter ignores them (the message says it all).
"""

from __future__ import annotations

import datetime as dt
import json
import logging
from typing import Any

LOG_FORMATS = ("text", "json")
TEXT_FORMAT = "%(asctime)s %(levelname)-7s %(name)s: %(message)s"


def tier_of(priority: int) -> str:
    """The tier a base priority falls in (as the tasks.tier column computes it)."""
    return "critical" if priority >= 9 else "high" if priority >= 7 else "medium" if priority >= 5 else "low"


class JsonFormatter(logging.Formatter):
    """One JSON object per record, on one line."""

    def format(self, record: logging.LogRecord) -> str:
        data: dict[str, Any] = {
            "ts": dt.datetime.fromtimestamp(record.created, dt.timezone.utc).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        event = getattr(record, "event", None)
        if isinstance(event, dict):
            data.update(event)
        if record.exc_info:
            data["exception"] = self.formatException(record.exc_info)
        return json.dumps(data, default=str, ensure_ascii=False)
