"""The task list and the task page, read on request (on the read-only
session: a filter the page sets cannot be answered from the collector's
snapshot).

``GET /api/tasks?status=&kind=&queue=&error=&before=&limit=``: the newest
tasks that match, ``{"ok": true, "tasks": [...], "filters": {...},
"next_before": id | null}`` (``next_before``: pass it as ``before`` for the
next page). ``error`` matches the first line of last_error exactly, as the
failures panel groups them.

``GET /api/tasks/{id}``: ``{"ok": true, "task": {...}}`` with payload,
result, last_error, errors (the attempt history, oldest first) and the
timings (``wait_ms``: from when it could start to its start; ``run_ms``:
start to finish; ``start_within_s``: its tier's window).
"""

from __future__ import annotations

from typing import Any

from ... import db
from ._actions import task_id
from ._routes import ApiError, Request
from ._session import Session

STATUSES = ("scheduled", "queued", "running", "succeeded", "failed", "cancelled", "dropped")
DEFAULT_LIMIT = 50
MAX_LIMIT = 500


class Browser:
    def __init__(self, session: Session):
        self.session = session

    def tasks(self, request: Request) -> dict[str, Any]:
        status = request.arg("status")
        if status is not None and status not in STATUSES:
            raise ApiError(400, f"status must be one of {', '.join(STATUSES)} (got {status!r})")
        limit = _int_arg(request, "limit", DEFAULT_LIMIT, 1, MAX_LIMIT)
        before = _int_arg(request, "before", None, 1, 2**63 - 1)
        filters = {"status": status, "kind": request.arg("kind"), "queue": request.arg("queue"),
                   "error": request.arg("error")}
        rows = self.session.run(lambda conn: db.fetch_all(
            conn, "dashboard_tasks", {**filters, "before_id": before, "limit": limit + 1}))
        more = len(rows) > limit
        rows = rows[:limit]
        return {"ok": True, "filters": filters, "limit": limit, "tasks": rows,
                "next_before": rows[-1]["id"] if more and rows else None}

    def task(self, text_id: str) -> dict[str, Any]:
        id_ = task_id(text_id)
        row = self.session.run(lambda conn: db.fetch_one(conn, "dashboard_task", {"id": id_}))
        if row is None:
            raise ApiError(404, f"no task {id_}")
        return {"ok": True, "task": row}


def _int_arg(request: Request, name: str, default: int | None, low: int, high: int) -> int | None:
    text = request.arg(name)
    if text is None:
        return default
    try:
        value = int(text)
    except ValueError:
        raise ApiError(400, f"{name} must be an integer (got {text!r})") from None
    if not low <= value <= high:
        raise ApiError(400, f"{name} must be between {low} and {high} (got {value})")
    return value
