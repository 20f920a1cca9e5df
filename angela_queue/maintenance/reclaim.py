"""Reclaim: give back the tasks of workers that exited, got stuck or were lost.

Every function is one guarded statement (sql/maintenance.sql), safe to run
twice or from two hosts at once; see the package docstring for the outage hazard.
"""

from __future__ import annotations

import datetime as dt
import uuid
from dataclasses import dataclass, field

import psycopg

from .. import db

# Tasks reclaimed per statement.
RECLAIM_LIMIT = 1000


@dataclass
class Reclaimed:
    requeued: list[int] = field(default_factory=list)
    failed: list[int] = field(default_factory=list)
    marked: bool = False                    # the worker row changed status
    dead_workers: list[uuid.UUID] = field(default_factory=list)

    @property
    def count(self) -> int:
        return len(self.requeued) + len(self.failed)

    def describe(self) -> str:
        if not self.count:
            return "no task to reclaim"
        parts = []
        if self.requeued:
            parts.append(f"requeued {_ids(self.requeued)}")
        if self.failed:
            parts.append(f"failed {_ids(self.failed)} (attempts spent)")
        return ", ".join(parts)


def _ids(ids: list[int], limit: int = 10) -> str:
    shown = ", ".join(str(i) for i in ids[:limit])
    more = f" and {len(ids) - limit} more" if len(ids) > limit else ""
    return f"task{'s' if len(ids) > 1 else ''} {shown}{more}"


def _reclaimed(row: dict | None) -> Reclaimed:
    if row is None:
        return Reclaimed()
    return Reclaimed(requeued=list(row.get("requeued") or []), failed=list(row.get("failed") or []),
                     marked=bool(row.get("marked")), dead_workers=list(row.get("dead_workers") or []))


def reclaim_exited_worker(conn: psycopg.Connection, worker_id: uuid.UUID, *, crashed: bool,
                          reason: str) -> Reclaimed:
    """A worker process exited: reclaim what it still held; mark it dead (crash) or stopped."""
    row = db.fetch_one(conn, "workers_reclaim_exited", {
        "worker_id": worker_id, "status": "dead" if crashed else "stopped", "reason": reason})
    return _reclaimed(row)


def reclaim_stuck_worker(conn: psycopg.Connection, worker_id: uuid.UUID, progress_at: dt.datetime,
                         reason: str) -> Reclaimed:
    """Mark a worker stuck and reclaim its tasks, unless it made progress after ``progress_at``.

    ``marked`` is False when the guard found progress (or the worker gone):
    then nothing was reclaimed and the worker must be left alone.
    """
    row = db.fetch_one(conn, "workers_reclaim_stuck", {
        "worker_id": worker_id, "progress_at": progress_at, "reason": reason})
    return _reclaimed(row)


def reclaim_lost_workers(conn: psycopg.Connection, *, healthy_for_s: float | None = None,
                         now: dt.datetime | None = None, limit: int = RECLAIM_LIMIT) -> Reclaimed:
    """Leader: mark stale-heartbeat workers dead; reclaim tasks no live worker holds.

    A worker counts as silent only for the part of its silence that falls
    within the last ``healthy_for_s`` seconds before ``now``, while the caller
    saw the database answer (see the module's outage hazard). None: the
    caller vouches for the whole window.
    """
    return _reclaimed(db.fetch_one(conn, "maintenance_reclaim_lost_workers",
                                   {"now": now, "limit": limit, "healthy_for_s": healthy_for_s}))


def mark_lost_supervisors(conn: psycopg.Connection, dead_after_s: float, *, healthy_for_s: float | None = None,
                          now: dt.datetime | None = None) -> list[dict]:
    """Leader: mark supervisors silent for ``dead_after_s`` dead (silence judged as for workers)."""
    return db.fetch_all(conn, "maintenance_mark_lost_supervisors",
                        {"now": now, "dead_after_s": dead_after_s, "healthy_for_s": healthy_for_s})


