"""How long the database has answered without a gap: what a leader may judge.

Hazard (outages): a heartbeat that could not be written is not a missed
heartbeat. After a database outage longer than dead_after_s every healthy
worker's row looks dead until its next beat, and judging it then would
reclaim (and run twice) tasks that are running fine. So every judgement on
silence counts only the time since this process last saw the database come
back: the stretch starts at each (re)connect and again after any round trip
slower than a heartbeat interval (a partition the connection survived, a
frozen server). Gaps between our own round trips do not count: they are our
loop being busy or paused, not the database being away.

The supervisor keeps one for its connection, and so does a standalone
worker's heartbeat thread when it holds the maintenance lease.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

import psycopg

log = logging.getLogger("angela_queue.maintenance")

# A round trip slower than a heartbeat interval (and at least this) counts as
# a database stall: workers may have missed beats because of it.
STALL_MIN_S = 1.0


def timed_cursor(on_round_trip: Callable[[float, float], None]) -> type[psycopg.Cursor]:
    """A cursor class (for ``Connection.cursor_factory``) that reports every round trip's
    start and end (time.monotonic()), so that no statement can stall unnoticed."""

    class TimedCursor(psycopg.Cursor):
        def execute(self, query, params=None, **kwargs):  # type: ignore[override]
            started = time.monotonic()
            try:
                return super().execute(query, params, **kwargs)
            finally:
                on_round_trip(started, time.monotonic())   # a slow failure is a stall too

    return TimedCursor


class DbHealth:
    def __init__(self, heartbeat_interval_s: float, dead_after_s: float):
        self.stall_s = max(heartbeat_interval_s, STALL_MIN_S)
        self.dead_after_s = dead_after_s
        # Start of the current stretch in which the database answered without a gap.
        self.healthy_since = time.monotonic()

    def watch(self, conn: psycopg.Connection) -> psycopg.Connection:
        """A (re)connect starts a stretch; every round trip on ``conn`` is timed from now on."""
        conn.cursor_factory = timed_cursor(self.round_trip)
        self.healthy_since = time.monotonic()
        return conn

    def round_trip(self, started: float, ended: float) -> None:
        if ended - started > self.stall_s:
            log.warning("a database round trip took %.1fs; heartbeats are judged again once workers have "
                        "had %gs to beat", ended - started, self.dead_after_s)
            self.healthy_since = max(self.healthy_since, ended)

    def healthy_for(self, now: float | None = None) -> float:
        """Seconds the database has answered without a gap, up to ``now`` (time.monotonic())."""
        return (time.monotonic() if now is None else now) - self.healthy_since
