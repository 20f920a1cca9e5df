"""Prune: delete finished tasks, and old worker and supervisor rows, after their retention."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

import psycopg

from .. import db

# Pruning runs on the leader at most this often, in chunks of PRUNE_CHUNK rows
# and at most PRUNE_MAX_CHUNKS chunks per table per run, so one run stays well
# inside the leader's lease; a bigger backlog is worked off over several runs.
# For tasks a chunk is a step of the walk along the primary key (PruneWalk):
# it bounds the rows read, not only the rows deleted.
PRUNE_EVERY_S = 60.0
PRUNE_CHUNK = 1000
PRUNE_MAX_CHUNKS = 20


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


