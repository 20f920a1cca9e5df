"""``angela-queue status``: queues, supervisors and workers as aligned text tables.

Everything shown comes from the inspection views (queue_depth,
sla_attainment, worker_health) and the supervisors and leader tables, read
in one snapshot, so the numbers agree with what SQL users see.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import psycopg

from .. import db
from ..maintenance.lease import MAINTENANCE_LEASE
from ..terminal import safe

# Dropped tasks are counted over this window.
DROPPED_WINDOW_S = 3600.0
UNSERVED_LIMIT = 20


@dataclass
class Snapshot:
    queues: list[dict[str, Any]] = field(default_factory=list)
    supervisors: list[dict[str, Any]] = field(default_factory=list)
    workers: list[dict[str, Any]] = field(default_factory=list)
    unserved: list[dict[str, Any]] = field(default_factory=list)
    dropped: list[dict[str, Any]] = field(default_factory=list)


def collect(conn: psycopg.Connection, *, include_stopped: bool = False, dead_after_s: float = 30.0) -> Snapshot:
    """Read everything ``status`` shows, in one REPEATABLE READ snapshot (consistent totals)."""
    # psycopg opens the transaction with BEGIN ISOLATION LEVEL ... READ ONLY from these.
    conn.isolation_level = psycopg.IsolationLevel.REPEATABLE_READ
    conn.read_only = True
    with conn.transaction():
        return Snapshot(
            queues=db.fetch_all(conn, "status_queues"),
            supervisors=db.fetch_all(conn, "supervisors_health", {
                "all": include_stopped, "recent_s": 0, "running_first": False,
                "dead_after_s": dead_after_s, "lease_name": MAINTENANCE_LEASE}),
            workers=db.fetch_all(conn, "status_workers", {"all": include_stopped}),
            unserved=db.fetch_all(conn, "status_unserved_kinds", {"limit": UNSERVED_LIMIT}),
            dropped=db.fetch_all(conn, "status_dropped", {"window_s": DROPPED_WINDOW_S}),
        )


def format_table(headers: Sequence[str], rows: Sequence[Sequence[str]], right: Sequence[bool]) -> str:
    """Columns padded to their widest cell; numbers (``right``) aligned right. Every
    cell is made terminal-safe: names come from the database, and may be hostile."""
    rows = [[safe(cell) for cell in row] for row in rows]
    widths = [len(h) for h in headers]
    for row in rows:
        for i, cell in enumerate(row):
            widths[i] = max(widths[i], len(cell))

    def line(cells: Sequence[str]) -> str:
        parts = [c.rjust(w) if r else c.ljust(w) for c, w, r in zip(cells, widths, right)]
        return "  ".join(parts).rstrip()

    out = [line(headers), line(["-" * w for w in widths])]
    out.extend(line(row) for row in rows)
    return "\n".join(out)


def age(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    seconds = max(0.0, float(seconds))
    if seconds < 60:
        return f"{seconds:.1f}s"
    if seconds < 3600:
        return f"{seconds / 60:.1f}m"
    if seconds < 86400:
        return f"{seconds / 3600:.1f}h"
    return f"{seconds / 86400:.1f}d"


def short(value: Any) -> str:
    return str(value)[:8] if value is not None else "-"


def task_list(ids: Sequence[int] | None, limit: int = 3) -> str:
    if not ids:
        return "-"
    shown = ",".join(str(i) for i in ids[:limit])
    return shown + (f" +{len(ids) - limit}" if len(ids) > limit else "")


def render(snap: Snapshot) -> str:
    sections = []

    trouble = []
    for u in snap.unserved:
        who = "no live worker has a handler for it" if u["queue_served"] else "no live worker serves the queue"
        trouble.append(f"  {u['waiting']} task(s) of kind {safe(repr(u['kind']))} wait in queue "
                       f"{safe(repr(u['queue']))}: {who}")
    for d in snap.dropped:
        trouble.append(f"  {d['dropped']} task(s) dropped in queue {safe(repr(d['queue']))} in the last hour: "
                       f"{safe(d['last_reason'] or '')}")
    if trouble:
        sections.append("TROUBLE\n" + "\n".join(trouble))

    rows = []
    for q in snap.queues:
        rows.append([
            q["queue"], "-" if q["max_size"] is None else str(q["max_size"]), q["tier"],
            str(q["queued"]), str(q["scheduled"]), str(q["running"]),
            age(q["oldest_wait_s"]) if q["queued"] else "-",
            str(q["started_24h"]),
            "-" if q["attainment_pct"] is None else f"{float(q['attainment_pct']):.1f}%",
            "-" if q["p50_start_ms"] is None else f"{float(q['p50_start_ms']):.0f}",
            "-" if q["p99_start_ms"] is None else f"{float(q['p99_start_ms']):.0f}",
        ])
    total_q = sum(q["queued"] for q in snap.queues)
    total_r = sum(q["running"] for q in snap.queues)
    sections.append(f"QUEUES ({total_q} queued, {total_r} running; SLA over the last 24 h)\n" + format_table(
        ["QUEUE", "MAX", "TIER", "QUEUED", "SCHEDULED", "RUNNING", "OLDEST WAIT", "STARTED", "ON TIME",
         "P50 START MS", "P99 START MS"],
        rows, [False, True, False, True, True, True, True, True, True, True, True]))

    rows = []
    for s in snap.supervisors:
        rows.append([
            short(s["id"]), s["host"], str(s["pid"]), s["status"], "yes" if s["leader"] else "",
            f"{s['workers_live']}/{s['workers_target']}", age(s["heartbeat_age_s"]), ",".join(s["queues"]),
            s["last_decision"] or "",
        ])
    if rows:
        sections.append(f"SUPERVISORS ({len(rows)})\n" + format_table(
            ["ID", "HOST", "PID", "STATUS", "LEADER", "WORKERS", "HEARTBEAT", "QUEUES", "LAST DECISION"],
            rows, [False, False, True, False, False, True, True, False, False]))
    else:
        sections.append("SUPERVISORS (0)\n(none running: start one with `angela-queue run --app MODULE`)")

    rows = []
    for w in snap.workers:
        rows.append([
            short(w["id"]), short(w["supervisor_id"]), w["host"], str(w["pid"]), w["status"],
            str(w["tasks_completed"]), str(w["tasks_failed"]), f"{float(w['avg_processing_time_ms']):.1f}",
            task_list(w["current_tasks"]), age(w["heartbeat_age_s"]),
        ])
    if rows:
        sections.append(f"WORKERS ({len(rows)})\n" + format_table(
            ["ID", "SUPERVISOR", "HOST", "PID", "STATUS", "COMPLETED", "FAILED", "AVG MS", "CURRENT TASK",
             "HEARTBEAT"],
            rows, [False, False, False, True, False, True, True, True, False, True]))
    else:
        sections.append("WORKERS (0)")
    return "\n\n".join(sections)


def to_json(snap: Snapshot) -> str:
    return json.dumps(asdict(snap), default=str, indent=2)
