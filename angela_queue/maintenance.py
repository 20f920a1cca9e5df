"""Reclaim, promote and prune.

Two kinds of caller:

* a supervisor, for its own workers: it is their parent, so it knows at
  once when one exits (``reclaim_exited_worker``) and judges when one is
  stuck (``reclaim_stuck_worker``);
* the maintenance leader (leader.py), for everything no live process
  answers for any more: workers whose heartbeat went stale because their
  host or whole process tree died, tasks left running by a worker that
  exited, supervisors that vanished; plus promotion of due scheduled tasks
  and pruning of old rows (``Maintenance.run``).

Every function is one guarded statement (see sql/maintenance.sql), safe to
run twice or from two hosts at once. Time-dependent ones take ``now`` so
tests move time instead of sleeping.

Hazard (outages): a heartbeat that could not be written is not a missed
heartbeat. After a database outage longer than a worker's dead_after_s,
every healthy worker's row looks dead until its next beat, and reclaiming
its tasks would run them twice. So the judgements on silence take
``healthy_for_s``: how long the caller has seen the database answer without
a gap (the supervisor tracks it; see ``Supervisor._db_healthy_for``). Silence
counts only within that window.
"""

from __future__ import annotations

import datetime as dt
import logging
import time
import uuid
from dataclasses import dataclass, field

import psycopg

from . import db

log = logging.getLogger("angela_queue.maintenance")

# Pruning runs on the leader at most this often, in chunks of PRUNE_CHUNK rows
# and at most PRUNE_MAX_CHUNKS chunks per table per run, so one run stays well
# inside the leader's lease; a bigger backlog is worked off over several runs.
# For tasks a chunk is a step of the walk along the primary key (PruneWalk):
# it bounds the rows read, not only the rows deleted.
PRUNE_EVERY_S = 60.0
PRUNE_CHUNK = 1000
PRUNE_MAX_CHUNKS = 20
# Tasks reclaimed and promoted per statement.
RECLAIM_LIMIT = 1000
PROMOTE_LIMIT = 1000


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


def promote_due(conn: psycopg.Connection, *, now: dt.datetime | None = None,
                limit: int = PROMOTE_LIMIT) -> int:
    """Scheduled tasks whose run_at has come become queued (workers do this too while they poll)."""
    row = db.fetch_one(conn, "tasks_promote_due", {"now": now, "limit": limit})
    return row["promoted"] if row else 0


@dataclass
class PruneWalk:
    """Where the task pruner's walk along the primary key resumes.

    Each run continues from ``after_id`` until it reaches the frontier (rows
    too young to be due) or the end of the table, then starts over from the
    oldest row, so rows it stepped over (unfinished, or finished too
    recently) are looked at again on the next pass. Kept in memory by the
    leader: a new leader simply starts from the oldest row.
    """

    after_id: int = 0


def prune_tasks(conn: psycopg.Connection, retention_s: float, *, walk: PruneWalk | None = None,
                now: dt.datetime | None = None, chunk: int = PRUNE_CHUNK,
                max_chunks: int = PRUNE_MAX_CHUNKS) -> int:
    """Delete final tasks older than the retention, walking at most ``chunk`` x ``max_chunks``
    rows in id order from ``walk`` (which is advanced); returns how many were deleted.

    Hazard: reads are bounded, not only deletions; see maintenance_prune_tasks
    for why the walk, and not a search for old rows, keeps a run short on a
    huge table.
    """
    walk = walk if walk is not None else PruneWalk()
    total = 0
    for _ in range(max_chunks):
        row = db.fetch_one(conn, "maintenance_prune_tasks", {
            "now": now, "retention_s": retention_s, "after_id": walk.after_id, "limit": chunk})
        assert row is not None
        total += row["pruned"]
        if row["frontier_id"] is not None or row["walked"] < chunk:
            walk.after_id = 0      # nothing further can be due yet: the next run starts a new pass
            break
        walk.after_id = row["last_id"]
    return total


def prune(conn: psycopg.Connection, retention_s: float, *, walk: PruneWalk | None = None,
          now: dt.datetime | None = None, chunk: int = PRUNE_CHUNK,
          max_chunks: int = PRUNE_MAX_CHUNKS) -> dict[str, int]:
    """Delete finished tasks, and stopped or dead worker and supervisor rows, older than the
    retention; in chunks of ``chunk`` rows, at most ``max_chunks`` per table."""
    counts = {"tasks": prune_tasks(conn, retention_s, walk=walk, now=now, chunk=chunk, max_chunks=max_chunks)}
    for table, query in (("workers", "maintenance_prune_workers"), ("supervisors", "maintenance_prune_supervisors")):
        total = 0
        for _ in range(max_chunks):
            row = db.fetch_one(conn, query, {"now": now, "retention_s": retention_s, "limit": chunk})
            pruned = row["pruned"] if row else 0
            total += pruned
            if pruned < chunk:
                break
        counts[table] = total
    return counts


class Maintenance:
    """What the leader runs at each of its heartbeats (pruning only every ``prune_every_s``)."""

    def __init__(self, *, retention_s: float, dead_after_s: float, prune_every_s: float = PRUNE_EVERY_S):
        self.retention_s = retention_s
        self.dead_after_s = dead_after_s
        self.prune_every_s = prune_every_s
        self._next_prune = 0.0
        self._walk = PruneWalk()

    def run(self, conn: psycopg.Connection, *, healthy_for_s: float | None,
            now: dt.datetime | None = None) -> None:
        """One round. ``healthy_for_s``: how long the caller has seen the database answer
        without a gap; silence before that is not held against workers or supervisors.

        Hazard: it must be measured just before the call, after the caller's
        last round trip (the lease attempt), or a stall in that round trip
        would go unnoticed.
        """
        lost = reclaim_lost_workers(conn, healthy_for_s=healthy_for_s, now=now)
        if lost.dead_workers:
            log.warning("leader: %d worker(s) stopped heartbeating and are marked dead: %s",
                        len(lost.dead_workers), ", ".join(str(w)[:8] for w in lost.dead_workers))
        if lost.count:
            log.warning("leader: reclaimed tasks no live worker held: %s", lost.describe())
        for sup in mark_lost_supervisors(conn, self.dead_after_s, healthy_for_s=healthy_for_s, now=now):
            log.warning("leader: supervisor %s (pid %s on %s) stopped heartbeating; marked dead",
                        str(sup["id"])[:8], sup["pid"], sup["host"])
        promoted = promote_due(conn, now=now)
        if promoted:
            log.debug("leader: promoted %d scheduled task(s)", promoted)
        if time.monotonic() >= self._next_prune:
            self._next_prune = time.monotonic() + self.prune_every_s
            counts = prune(conn, self.retention_s, walk=self._walk, now=now)
            if any(counts.values()):
                log.info("leader: pruned rows older than %s: %s", _duration(self.retention_s),
                         ", ".join(f"{n} {table}" for table, n in counts.items() if n))


def _duration(seconds: float) -> str:
    if seconds >= 86400 and seconds % 86400 == 0:
        return f"{seconds / 86400:g} days"
    if seconds >= 3600:
        return f"{seconds / 3600:g} h"
    return f"{seconds:g} s"
