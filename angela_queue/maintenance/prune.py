"""Prune: delete finished tasks, and old worker and supervisor rows, after their retention;
and rate-limit starts that have left every window.

Tasks are deleted by ``finished_at`` through ``tasks_finished_idx``, in
chunks, each final status with its own retention (failed rows are the
dead-letter record and stay longer). A run keeps deleting until nothing is
due or its time budget is spent, so the pruner keeps up with a drain of
thousands of tasks a second; when the budget ran out, the next round (one
heartbeat later) goes on instead of waiting for the next prune interval.
"""

from __future__ import annotations

import datetime as dt
import time
from dataclasses import dataclass, field

import psycopg

from .. import db

# A full prune at most this often when the last one caught up.
PRUNE_EVERY_S = 10.0
# Rows per DELETE: big enough to be cheap per row, small enough that one
# statement holds its locks for milliseconds.
PRUNE_CHUNK = 5000
# Seconds one run may spend deleting, so the leader's loop (a supervisor's,
# with its children to watch) is never held for long.
PRUNE_BUDGET_S = 0.5
# Worker and supervisor rows per statement, and statements per run.
ROWS_CHUNK = 1000
ROWS_MAX_CHUNKS = 20

FINAL_STATUSES = ("succeeded", "failed", "cancelled", "dropped")


@dataclass
class PruneResult:
    counts: dict[str, int] = field(default_factory=dict)   # rows deleted, per table ("tasks", ...)
    caught_up: bool = True                                  # False: the budget ran out first


def retention_for(status: str, retention_s: float, retention_failed_s: float) -> float:
    return retention_failed_s if status == "failed" else retention_s


def prune_tasks(conn: psycopg.Connection, retention_s: float, retention_failed_s: float, *,
                now: dt.datetime | None = None, chunk: int = PRUNE_CHUNK,
                budget_s: float = PRUNE_BUDGET_S) -> tuple[int, bool]:
    """Delete final tasks past their retention; returns (deleted, caught_up)."""
    deadline = time.monotonic() + budget_s
    total = 0
    for status in FINAL_STATUSES:
        keep_s = retention_for(status, retention_s, retention_failed_s)
        while True:
            row = db.fetch_one(conn, "maintenance_prune_finished", {
                "status": status, "now": now, "retention_s": keep_s, "limit": chunk})
            pruned = row["pruned"] if row else 0
            total += pruned
            if pruned < chunk:
                break           # this status is caught up
            if time.monotonic() >= deadline:
                return total, False
    return total, True


def prune(conn: psycopg.Connection, retention_s: float, retention_failed_s: float | None = None, *,
          now: dt.datetime | None = None, chunk: int = PRUNE_CHUNK,
          budget_s: float = PRUNE_BUDGET_S) -> PruneResult:
    """Delete finished tasks, and stopped or dead worker and supervisor rows, older than
    their retention (failed tasks: ``retention_failed_s``, default the same)."""
    failed_s = retention_s if retention_failed_s is None else retention_failed_s
    deleted, caught_up = prune_tasks(conn, retention_s, failed_s, now=now, chunk=chunk, budget_s=budget_s)
    result = PruneResult(counts={"tasks": deleted}, caught_up=caught_up)
    for table, query in (("workers", "maintenance_prune_workers"), ("supervisors", "maintenance_prune_supervisors")):
        total = 0
        for _ in range(ROWS_MAX_CHUNKS):
            row = db.fetch_one(conn, query, {"now": now, "retention_s": retention_s, "limit": ROWS_CHUNK})
            pruned = row["pruned"] if row else 0
            total += pruned
            if pruned < ROWS_CHUNK:
                break
        result.counts[table] = total
    row = db.fetch_one(conn, "maintenance_prune_kind_starts", {"now": now})
    result.counts["kind_starts"] = row["pruned"] if row else 0
    return result
