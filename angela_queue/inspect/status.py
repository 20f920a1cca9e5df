"""``angela-queue status``: trouble first, then queues, supervisors and workers.

Everything shown comes from the inspection views (queue_depth, tier_sla,
recent_failures, worker_health) and the supervisors and leader tables, read
in one snapshot, so the numbers agree with what SQL users and the dashboard
see. Tables are drawn with rich; every cell from the database is made
terminal-safe and shown as plain text (never as rich markup).
"""

from __future__ import annotations

import io
import json
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import psycopg
from rich import box
from rich.console import Console, Group, RenderableType
from rich.table import Table
from rich.text import Text

from .. import db
from ..kinds import describe_limits
from ..maintenance.lease import MAINTENANCE_LEASE
from ..terminal import safe

# Dropped tasks are counted over this window.
DROPPED_WINDOW_S = 3600.0
UNSERVED_LIMIT = 20
FAILURE_GROUPS = 10
# Queues in the table (the busiest; paused ones always): a producer can name thousands.
QUEUE_ROWS = 50
# Wide enough that a piped `status` keeps one line per row.
PLAIN_WIDTH = 200


@dataclass
class Snapshot:
    queues: list[dict[str, Any]] = field(default_factory=list)
    supervisors: list[dict[str, Any]] = field(default_factory=list)
    workers: list[dict[str, Any]] = field(default_factory=list)
    unserved: list[dict[str, Any]] = field(default_factory=list)
    dropped: list[dict[str, Any]] = field(default_factory=list)
    failures: list[dict[str, Any]] = field(default_factory=list)
    periodic: list[dict[str, Any]] = field(default_factory=list)
    limits: list[dict[str, Any]] = field(default_factory=list)

    @property
    def paused(self) -> list[str]:
        return sorted({q["queue"] for q in self.queues if q["paused"]})


def collect(conn: psycopg.Connection, *, include_stopped: bool = False, dead_after_s: float = 30.0) -> Snapshot:
    """Read everything ``status`` shows, in one REPEATABLE READ snapshot (consistent totals)."""
    # psycopg opens the transaction with BEGIN ISOLATION LEVEL ... READ ONLY from these.
    conn.isolation_level = psycopg.IsolationLevel.REPEATABLE_READ
    conn.read_only = True
    with conn.transaction():
        return Snapshot(
            queues=db.fetch_all(conn, "status_queues", {"all": include_stopped}),
            supervisors=db.fetch_all(conn, "supervisors_health", {
                "all": include_stopped, "recent_s": 0, "running_first": False,
                "dead_after_s": dead_after_s, "lease_name": MAINTENANCE_LEASE}),
            workers=db.fetch_all(conn, "status_workers", {"all": include_stopped}),
            unserved=db.fetch_all(conn, "status_unserved_kinds", {"limit": UNSERVED_LIMIT}),
            dropped=db.fetch_all(conn, "status_dropped", {"window_s": DROPPED_WINDOW_S}),
            failures=db.fetch_all(conn, "status_failures", {"limit": FAILURE_GROUPS}),
            periodic=db.fetch_all(conn, "periodic_status"),
            limits=db.fetch_all(conn, "status_limits"),
        )


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


def ms(value: Any) -> str:
    return "-" if value is None else f"{float(value):.0f}"


def table(title: str, headers: Sequence[str], rows: Sequence[Sequence[Any]], right: Sequence[bool]) -> Table:
    """A plain table (no vertical lines, so a row reads as words), every cell terminal-safe text."""
    t = Table(title=title, title_justify="left", title_style="bold", box=box.SIMPLE_HEAD, pad_edge=False,
              show_edge=False, header_style="bold")
    for header, r in zip(headers, right, strict=True):
        t.add_column(header, justify="right" if r else "left", no_wrap=True)
    for row in rows:
        t.add_row(*[Text(safe(cell)) for cell in row])
    return t


def trouble(snap: Snapshot) -> list[str]:
    """What needs a person, most urgent first: failures, unserved kinds, paused queues, drops."""
    lines = []
    for f in snap.failures:
        final = f" ({f['failed_for_good']} for good)" if f["failed_for_good"] else ""
        lines.append(f"{f['tasks']} task(s) of kind {f['kind']!r} in queue {f['queue']!r} failed in the last "
                     f"hour{final}: {f['error']} (latest: task {f['latest_id']}; `angela-queue tasks show "
                     f"{f['latest_id']}`)")
    for u in snap.unserved:
        who = "no live worker has a handler for it" if u["queue_served"] else "no live worker serves the queue"
        lines.append(f"{u['waiting']} task(s) of kind {u['kind']!r} wait in queue {u['queue']!r}: {who}")
    for name in snap.paused:
        waiting = sum(q["queued"] + q["scheduled"] for q in snap.queues if q["queue"] == name)
        lines.append(f"queue {name!r} is paused ({waiting} waiting); `angela-queue resume {name}` starts it again")
    for d in snap.dropped:
        lines.append(f"{d['dropped']} task(s) dropped in queue {d['queue']!r} in the last hour: "
                     f"{d['last_reason'] or ''}")
    for p in snap.periodic:
        if p["error"]:
            lines.append(f"periodic task {p['name']!r} cannot be scheduled: {p['error']}")
    return lines


def _busiest_queues(queues: list[dict[str, Any]], limit: int) -> set[str]:
    activity: dict[str, float] = {}
    for q in queues:
        activity[q["queue"]] = float(q.get("activity") or 0) + (1e18 if q["paused"] else 0)
    return set(sorted(activity, key=lambda name: (-activity[name], name))[:limit])


def renderable(snap: Snapshot) -> RenderableType:
    parts: list[RenderableType] = []
    problems = trouble(snap)
    if problems:
        body = Text("TROUBLE\n", style="bold red")
        for line in problems:
            body.append("  " + safe(line) + "\n")
        parts.append(body)

    rows = []
    shown = _busiest_queues(snap.queues, QUEUE_ROWS)
    for q in (q for q in snap.queues if q["queue"] in shown):
        rows.append([
            q["queue"] + (" (paused)" if q["paused"] else ""), "-" if q["max_size"] is None else q["max_size"],
            q["tier"], q["queued"], q["scheduled"], q["running"], q["overdue"],
            age(q["oldest_wait_s"]) if q["queued"] else "-", q["started_1h"],
            "-" if q["attainment_pct"] is None else f"{float(q['attainment_pct']):.1f}%",
            ms(q["wait_p50_ms"]), ms(q["wait_p95_ms"]), ms(q["wait_p99_ms"]),
        ])
    total_q = sum(q["queued"] for q in snap.queues)
    total_r = sum(q["running"] for q in snap.queues)
    hidden = len({q["queue"] for q in snap.queues}) - len(shown)
    parts.append(table(
        f"QUEUES ({total_q} queued, {total_r} running; SLA over the last hour"
        + (f"; the {QUEUE_ROWS} busiest shown, {hidden} more in --json)" if hidden else ")"),
        ["QUEUE", "MAX", "TIER", "QUEUED", "SCHEDULED", "RUNNING", "OVERDUE", "OLDEST WAIT", "STARTED", "ON TIME",
         "WAIT P50 MS", "P95", "P99"],
        rows, [False, True, False, True, True, True, True, True, True, True, True, True, True]))

    rows = [[short(s["id"]), s["host"], s["pid"], s["status"], "yes" if s["leader"] else "",
             f"{s['workers_live']}/{s['workers_target']}", age(s["heartbeat_age_s"]), ",".join(s["queues"]),
             s["last_decision"] or ""] for s in snap.supervisors]
    if rows:
        parts.append(table(f"SUPERVISORS ({len(rows)})",
                           ["ID", "HOST", "PID", "STATUS", "LEADER", "WORKERS", "HEARTBEAT", "QUEUES",
                            "LAST DECISION"],
                           rows, [False, False, True, False, False, True, True, False, False]))
    else:
        parts.append(Text("SUPERVISORS (0)\n(none running: start one with `angela-queue run --app MODULE`)\n"))

    rows = [[short(w["id"]), short(w["supervisor_id"]), w["host"], w["pid"], w["status"], w["tasks_completed"],
             w["tasks_failed"], f"{float(w['avg_processing_time_ms']):.1f}", task_list(w["current_tasks"]),
             age(w["heartbeat_age_s"])] for w in snap.workers]
    if rows:
        parts.append(table(f"WORKERS ({len(rows)})",
                           ["ID", "SUPERVISOR", "HOST", "PID", "STATUS", "COMPLETED", "FAILED", "AVG MS",
                            "CURRENT TASK", "HEARTBEAT"],
                           rows, [False, False, False, True, False, True, True, True, False, True]))
    else:
        parts.append(Text("WORKERS (0)"))

    if snap.limits:
        rows = [[r["kind"], describe_limits(r), "-" if r["concurrency"] is None else f"{r['running']}/{r['concurrency']}",
                 "-" if r["rate_limit"] is None else f"{r['started_in_window']}/{r['rate_limit']}"]
                for r in snap.limits]
        parts.append(table(f"LIMITED KINDS ({len(rows)})", ["KIND", "LIMITS", "RUNNING", "STARTED IN WINDOW"],
                           rows, [False, False, True, True]))
    if snap.periodic:
        periodic = periodic_table(snap.periodic)
        periodic.title, periodic.title_justify, periodic.title_style = (f"PERIODIC ({len(snap.periodic)})", "left",
                                                                        "bold")
        parts.append(periodic)
    return Group(*parts)


def periodic_table(rows: list[dict]) -> Table:
    table = Table(box=box.SIMPLE_HEAD, show_edge=False, pad_edge=False, header_style="bold")
    for name in ("NAME", "KIND", "SCHEDULE", "STATE", "LAST SLOT", "LAST TASK", "NEXT SLOT"):
        table.add_column(name, no_wrap=True)
    for r in rows:
        state = "error: " + r["error"] if r["error"] else "paused" if r["paused"] else "active"
        last = "-" if r["last_task_id"] is None else f"#{r['last_task_id']} {r['last_status'] or 'pruned'}"
        table.add_row(*[Text(safe(v)) for v in (
            r["name"], r["kind"], r["schedule"] + ("" if r["timezone"] == "UTC" else f" ({r['timezone']})"), state,
            _time(r["last_slot"]), last, _time(r["next_slot"]))],
            style="yellow" if r["paused"] else "red" if r["error"] else None)
    return table


def _time(value) -> str:
    return "-" if value is None else value.strftime("%Y-%m-%d %H:%M:%S %Z")


def render(snap: Snapshot, width: int = PLAIN_WIDTH) -> str:
    """The snapshot as plain text (no colours): what `status` prints when piped."""
    out = io.StringIO()
    Console(file=out, width=width, color_system=None, force_terminal=False, highlight=False).print(renderable(snap))
    return "\n".join(line.rstrip() for line in out.getvalue().splitlines()).strip("\n")


def to_json(snap: Snapshot) -> str:
    data = asdict(snap)
    data["paused"] = snap.paused
    data["trouble"] = trouble(snap)
    return json.dumps(data, default=str, indent=2)
