"""Periodic tasks: the leader enqueues each slot of each schedule once.

Each round, for every row of angela_queue.periodic: the latest slot that has
come (angela_queue.periodic.Schedule) is enqueued if it is later than the
last one enqueued. The check and the enqueue are one statement under the
row's lock (periodic_fire), so a slot is enqueued once across any number of
supervisors, whoever leads, through restarts and lease hand-overs. After
downtime, or while paused, only the latest missed slot runs on return.

A schedule seen for the first time starts at its next slot. A row the
parser refuses (an expression or time zone written by hand) gets an error
that status shows, and the other rows go on.
"""

from __future__ import annotations

import datetime as dt
import logging
from typing import Any

import psycopg

from .. import db
from ..errors import QueueFull
from ..periodic import Schedule, ScheduleError, slot_key

log = logging.getLogger("angela_queue.maintenance")


class Periodic:
    def __init__(self) -> None:
        # The slots we have already logged a failure for (a full queue): one
        # line per slot, not one per round.
        self._failed: dict[str, dt.datetime] = {}
        # Parsed schedules (or why they cannot be), by (cron, every_s,
        # timezone): a round runs every heartbeat, and parsing validates with
        # croniter and looks the zone up each time.
        self._parsed: dict[tuple[Any, Any, Any], Schedule | str] = {}

    def _schedule(self, row: dict[str, Any]) -> Schedule:
        key = (row["cron"], row["every_s"], row["timezone"])
        if key not in self._parsed:
            if len(self._parsed) > 10_000:
                self._parsed.clear()          # rows edited by the thousand: start over
            try:
                self._parsed[key] = Schedule.parse(cron=row["cron"], every_s=row["every_s"],
                                                   timezone=row["timezone"])
            except ScheduleError as exc:
                self._parsed[key] = str(exc)
        parsed = self._parsed[key]
        if isinstance(parsed, str):
            raise ScheduleError(parsed)   # a new one each time: a re-raised one would grow its traceback
        return parsed

    def run(self, conn: psycopg.Connection, *, now: dt.datetime | None = None) -> int:
        """One round; returns how many tasks it enqueued."""
        rows = db.fetch_all(conn, "periodic_schedules")
        if not rows:
            return 0
        now = now or db.fetch_one(conn, "periodic_clock")["now"]
        enqueued = 0
        for row in rows:
            enqueued += self._one(conn, row, now)
        return enqueued

    def _one(self, conn: psycopg.Connection, row: dict[str, Any], now: dt.datetime) -> int:
        name = row["name"]
        try:
            schedule = self._schedule(row)
            slot = schedule.latest_slot(now, after=row["last_slot"])
            next_slot = schedule.next_slot(now)
        except (ScheduleError, ValueError, KeyError) as exc:
            if row["error"] != str(exc):
                log.error("leader: periodic task %r cannot be scheduled: %s", name, exc)
                db.fetch_all(conn, "periodic_set_error", {"name": name, "error": str(exc)[:500]})
            return 0
        if row["last_slot"] is None:
            db.fetch_all(conn, "periodic_arm", {"name": name, "slot": schedule.latest_slot(now),
                                                "next_slot": next_slot})
            return 0
        if row["paused_at"] is not None or slot is None:
            if row["next_slot"] != next_slot or row["error"] is not None:
                db.fetch_all(conn, "periodic_set_next", {"name": name, "next_slot": next_slot})
            return 0
        try:
            fired = db.fetch_one(conn, "periodic_fire", {"name": name, "slot": slot, "next_slot": next_slot,
                                                         "dedup_key": slot_key(name, slot)})
        except (QueueFull, psycopg.errors.DatabaseError) as exc:
            # A full queue, a kind default gone wrong: this slot is tried again
            # next round while it is still the latest; the other rows go on.
            if self._failed.get(name) != slot:
                self._failed[name] = slot
                log.warning("leader: periodic task %r could not enqueue its slot %s: %s", name,
                            slot.isoformat(), str(exc).strip().splitlines()[0])
            return 0
        self._failed.pop(name, None)
        if fired is None or fired["task_id"] is None:
            return 0                 # another leader took it, or a task still holds the slot's key
        if fired["task_status"] == "dropped":
            # A full bounded queue and priority < 5: the slot is spent, kept as a dropped row.
            log.warning("leader: periodic task %r: its slot %s was dropped (task %s): %s", name,
                        slot.isoformat(), fired["task_id"], fired["task_error"])
            return 0
        log.info("leader: periodic task %r enqueued task %s for its slot %s", name, fired["task_id"],
                 slot.isoformat())
        return 1
