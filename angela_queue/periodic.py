"""Periodic tasks: when each slot of a schedule falls.

A schedule is a standard five-field cron expression read in a time zone
(croniter parses it: a well-kept parser, rather than one of our own), or a
period in seconds whose slots are the whole multiples of it since the Unix
epoch, so every host computes the same slots without talking to the others.

The maintenance leader (maintenance/periodic.py) enqueues the latest slot
that has come and is later than the last one enqueued: after downtime, at
most the last missed slot runs, never a burst of them.
"""

from __future__ import annotations

import datetime as dt
import math
import re
from dataclasses import dataclass
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from croniter import croniter

# The shorthands croniter reads, and the schema's CHECK allows.
_SHORTHANDS = {"@yearly", "@annually", "@monthly", "@weekly", "@daily", "@midnight", "@hourly"}
_FIVE_FIELDS = re.compile(r"^\s*\S+(\s+\S+){4}\s*$")
# The period bounds the schema enforces (periodic_every_in_range): a second to a year.
MIN_EVERY_S = 1.0
MAX_EVERY_S = 31_622_400.0
# Slots a leader steps through to find the latest due one (a week of a
# once-a-minute schedule); past that it jumps (see Schedule.latest_slot).
MAX_STEPS = 10_080


class ScheduleError(ValueError):
    """A cron expression, period or time zone that cannot be scheduled."""


@dataclass(frozen=True)
class Schedule:
    cron: str | None = None
    every_s: float | None = None
    timezone: str = "UTC"

    @classmethod
    def parse(cls, *, cron: str | None, every_s: float | None, timezone: str | None = None) -> "Schedule":
        """Validate one schedule; raises ScheduleError saying what is wrong."""
        if (cron is None) == (every_s is None):
            raise ScheduleError("a periodic task needs exactly one of cron= and every=")
        zone = timezone or "UTC"
        if not isinstance(zone, str):
            raise ScheduleError(f"timezone must be a name such as 'UTC' or 'Europe/Paris' (got {zone!r})")
        try:
            ZoneInfo(zone)
        except (ZoneInfoNotFoundError, ValueError) as exc:
            raise ScheduleError(f"unknown time zone {zone!r}") from exc
        if cron is not None:
            if not isinstance(cron, str) or not (_FIVE_FIELDS.match(cron) or cron.strip() in _SHORTHANDS):
                raise ScheduleError(f"cron must be five fields (minute hour day month weekday) or one of "
                                    f"{', '.join(sorted(_SHORTHANDS))} (got {cron!r})")
            cron = cron.strip()
            if not croniter.is_valid(cron):
                raise ScheduleError(f"cron expression {cron!r} is not valid")
            try:                      # e.g. "0 0 30 2 *": valid fields, and a day that never comes
                croniter(cron, dt.datetime(2026, 1, 1, tzinfo=ZoneInfo(zone))).get_next(dt.datetime)
            except Exception as exc:  # noqa: BLE001 - croniter raises its own kinds of error
                raise ScheduleError(f"cron expression {cron!r} never comes: no date matches it") from exc
            return cls(cron=cron, timezone=zone)
        if isinstance(every_s, bool) or not isinstance(every_s, (int, float)) or not math.isfinite(every_s) \
                or not MIN_EVERY_S <= every_s <= MAX_EVERY_S:
            raise ScheduleError(f"every must be a number of seconds from {MIN_EVERY_S:g} to {MAX_EVERY_S:g} "
                                f"(got {every_s!r})")
        return cls(every_s=float(every_s), timezone=zone)

    def latest_slot(self, now: dt.datetime, *, after: dt.datetime | None = None) -> dt.datetime | None:
        """The latest slot at or before ``now`` (an aware datetime), in UTC.

        With ``after`` (the last slot enqueued): the latest slot in (after, now],
        or None if none has come. Counted forward from ``after``: croniter's
        get_prev goes wrong in the hour a DST change repeats (it returns a time
        an hour early, so slots go missing or a daily job runs twice), while
        get_next is right. A gap too long to step through (MAX_STEPS) is
        jumped with get_prev, as a leader back from long downtime needs only
        the latest slot anyway.
        """
        if self.every_s is not None:
            epoch = now.timestamp()
            slot = dt.datetime.fromtimestamp(math.floor(epoch / self.every_s) * self.every_s, dt.timezone.utc)
            return slot if after is None or slot > after else None
        zone = ZoneInfo(self.timezone)
        if after is not None:
            it = croniter(self.cron, after.astimezone(zone))
            latest = None
            for _ in range(MAX_STEPS):
                candidate = it.get_next(dt.datetime).astimezone(dt.timezone.utc)
                if candidate > now:
                    return latest
                if self._at_set_hours and candidate.astimezone(zone).fold:
                    # The wall time repeats as the clocks go back: a job at set
                    # hours runs at its first occurrence only, as cron does
                    # ("30 2 * * *" once that night); "*/5 * * * *" keeps its
                    # real-time pace through the repeated hour.
                    continue
                latest = candidate
        # get_prev from just after `now`: a slot exactly at now counts as come.
        it = croniter(self.cron, now.astimezone(zone) + dt.timedelta(microseconds=1))
        slot = it.get_prev(dt.datetime).astimezone(dt.timezone.utc)
        return slot if after is None or slot > after else None

    @property
    def _at_set_hours(self) -> bool:
        """A cron whose hour field names hours (not * or */n), or a shorthand."""
        return self.cron is not None and (self.cron.startswith("@") or not self.cron.split()[1].startswith("*"))

    def next_slot(self, after: dt.datetime) -> dt.datetime:
        """The first slot strictly after ``after``, in UTC."""
        if self.every_s is not None:
            epoch = after.timestamp()
            return dt.datetime.fromtimestamp((math.floor(epoch / self.every_s) + 1) * self.every_s, dt.timezone.utc)
        local = after.astimezone(ZoneInfo(self.timezone))
        return croniter(self.cron, local).get_next(dt.datetime).astimezone(dt.timezone.utc)

    def describe(self) -> str:
        if self.cron is not None:
            return self.cron if self.timezone == "UTC" else f"{self.cron} ({self.timezone})"
        return f"every {self.every_s:g} s"


def slot_key(name: str, slot: dt.datetime) -> str:
    """The dedup key of one slot's task: a second enqueue of the slot finds it."""
    return f"periodic:{name}:{slot.astimezone(dt.timezone.utc).strftime('%Y-%m-%dT%H:%M:%S.%fZ')}"
