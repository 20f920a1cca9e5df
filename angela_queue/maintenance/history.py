"""History: the per-minute rollups the leader writes (angela_queue.stats_minute
and depth_minute), which the dashboard's charts and /metrics read.

Each pass rolls up the whole minutes since the last one, and the last of
those once more (an outcome flushed a little after its minute ended still
counts in it); a leader that was away catches up on at most BACKFILL_S. The
depth is looked at once a minute. History older than KEEP_S is dropped.
"""

from __future__ import annotations

import datetime as dt
import logging
import time

import psycopg

from .. import db

log = logging.getLogger("angela_queue.maintenance")

# How often the leader rolls up (a pass costs one statement over the minutes due).
ROLLUP_EVERY_S = 15.0
# The history kept.
KEEP_S = 7 * 86400.0
# The most a new or returning leader rolls up at once (older minutes stay
# empty: their finished rows may be pruned already anyway).
BACKFILL_S = 3600.0
# How often the old history is dropped.
PRUNE_EVERY_S = 600.0

MINUTE = dt.timedelta(minutes=1)


class History:
    def __init__(self, *, rollup_every_s: float = ROLLUP_EVERY_S, keep_s: float = KEEP_S):
        self.rollup_every_s = rollup_every_s
        self.keep_s = keep_s
        self._next_rollup = 0.0
        self._next_prune = 0.0

    def run(self, conn: psycopg.Connection) -> None:
        """One pass when due: roll up, look at the depth, drop the old."""
        now = time.monotonic()
        if now < self._next_rollup:
            return
        self._next_rollup = now + self.rollup_every_s
        rolled = roll_up(conn)
        if rolled:
            log.debug("leader: rolled up %d minute(s) of history", rolled)
        db.fetch_all(conn, "stats_depth_snapshot")
        if now >= self._next_prune:
            self._next_prune = now + PRUNE_EVERY_S
            db.fetch_all(conn, "stats_prune", {"keep_s": self.keep_s})


def roll_up(conn: psycopg.Connection, *, backfill_s: float = BACKFILL_S) -> int:
    """Roll up every whole minute due; returns how many minutes were written."""
    progress = db.fetch_one(conn, "stats_progress_read")
    assert progress is not None
    until: dt.datetime = progress["this_minute"]
    earliest = until - dt.timedelta(seconds=backfill_s)
    rolled_until = progress["rolled_until"]
    since = earliest if rolled_until is None else max(rolled_until - MINUTE, earliest)
    if since >= until:
        return 0
    db.fetch_all(conn, "stats_rollup", {"since": since, "until": until})
    db.fetch_all(conn, "stats_progress_write", {"rolled_until": until})
    return int((until - since) / MINUTE)
