"""The leader's maintenance round: reclaim lost work, mark lost supervisors,
promote due tasks, enqueue periodic tasks, roll up history, prune."""

from __future__ import annotations

import datetime as dt
import logging
import time

import psycopg

from .. import db
from .. import statements
from .history import History
from .periodic import Periodic
from .prune import PRUNE_EVERY_S, prune
from .reclaim import mark_lost_supervisors, reclaim_lost_workers

log = logging.getLogger("angela_queue.maintenance")

# Scheduled tasks promoted per statement.
PROMOTE_LIMIT = 1000


def promote_due(conn: psycopg.Connection, *, now: dt.datetime | None = None,
                limit: int = PROMOTE_LIMIT) -> int:
    """Scheduled tasks whose run_at has come become queued (workers do this too while they poll)."""
    row = db.fetch_one(conn, statements.promote_due(queues=None, limit=limit, now=now))
    return row["promoted"] if row else 0


class Maintenance:
    """What the leader runs at each of its heartbeats (pruning every ``prune_every_s``, or
    at the next round while a backlog of due rows remains)."""

    def __init__(self, *, retention_s: float, dead_after_s: float, retention_failed_s: float | None = None,
                 prune_every_s: float = PRUNE_EVERY_S):
        self.retention_s = retention_s
        self.retention_failed_s = retention_s if retention_failed_s is None else retention_failed_s
        self.dead_after_s = dead_after_s
        self.prune_every_s = prune_every_s
        self._next_prune = 0.0
        self.history = History()
        self.periodic = Periodic()

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
        self.periodic.run(conn, now=now)
        self.history.run(conn)
        if time.monotonic() >= self._next_prune:
            result = prune(conn, self.retention_s, self.retention_failed_s, now=now)
            # Behind (the budget ran out): go on at the next round, not in prune_every_s.
            self._next_prune = time.monotonic() + (self.prune_every_s if result.caught_up else 0.0)
            if any(result.counts.values()):
                log.info("leader: pruned rows past their retention (%s; failed tasks %s): %s%s",
                         _duration(self.retention_s), _duration(self.retention_failed_s),
                         ", ".join(f"{n} {table}" for table, n in result.counts.items() if n),
                         "" if result.caught_up else "; more are due, continuing next round")


def _duration(seconds: float) -> str:
    if seconds >= 86400 and seconds % 86400 == 0:
        return f"{seconds / 86400:g} days"
    if seconds >= 3600:
        return f"{seconds / 3600:g} h"
    return f"{seconds:g} s"
