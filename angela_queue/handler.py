"""What a handler can see of its task, and how it can end an attempt on purpose.

``current_task()`` returns the running task's context (a context variable,
so it is right in sync, async and batch handlers alike, and in code they
call). A handler ends its attempt other than by returning or failing with

- ``raise Snooze(seconds)``: run again after ``seconds``, the attempt not counted;
- ``raise Discard(reason)``: fail now, for good, whatever attempts remain;
- ``raise Retry(after=seconds)``: fail this attempt and retry at that time
  (the attempt counts: with none left, the task fails).
"""

from __future__ import annotations

import contextvars
import datetime as dt
import math
from collections.abc import Callable
from dataclasses import dataclass, field

# The longest snooze or chosen retry delay: ten years. Far enough for any
# schedule, and run_at stays well inside the range the schema accepts.
LONGEST_DELAY_S = 10 * 365 * 86400.0


@dataclass(frozen=True)
class TaskContext:
    """The task a handler is running (read-only). In a batch handler: the
    batch's first task, with every task's own context in ``batch``."""

    id: int
    kind: str
    queue: str
    attempt: int
    max_attempts: int
    priority: int
    effective_priority: float
    deadline: dt.datetime | None
    created_at: dt.datetime | None
    started_at: dt.datetime | None
    batch: tuple["TaskContext", ...] = ()
    _cancel_requested: Callable[[int], bool] = field(default=lambda _id: False, repr=False, compare=False)

    @property
    def cancelled(self) -> bool:
        """True once someone cancelled this task while it runs (cancel_task,
        ``angela-queue cancel``): a long handler should check it, and return
        or raise early. Its outcome is recorded as cancelled either way."""
        return self._cancel_requested(self.id)

    @property
    def last_attempt(self) -> bool:
        """Whether a failure now would be final."""
        return self.attempt >= self.max_attempts


_current: contextvars.ContextVar[TaskContext | None] = contextvars.ContextVar("angela_queue_task", default=None)


def current_task() -> TaskContext:
    """The task this handler runs. Raises RuntimeError outside a handler."""
    context = _current.get()
    if context is None:
        raise RuntimeError("angela_queue.current_task() is only available while a task handler runs")
    return context


def set_current(context: TaskContext | None) -> contextvars.Token:
    return _current.set(context)


def reset_current(token: contextvars.Token) -> None:
    _current.reset(token)


def _delay(name: str, value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) \
            or not 0 <= value <= LONGEST_DELAY_S:
        raise ValueError(f"{name} must be a number of seconds between 0 and {LONGEST_DELAY_S:.0f} (got {value!r})")
    return float(value)


class TaskControl(Exception):
    """Raised by a handler to end its attempt on purpose (not a failure of the handler)."""


class Snooze(TaskControl):
    """Run this task again after ``seconds``; this attempt does not count."""

    def __init__(self, seconds: float | dt.timedelta):
        if isinstance(seconds, dt.timedelta):
            seconds = seconds.total_seconds()
        self.seconds = _delay("Snooze(seconds)", seconds)
        super().__init__(f"snoozed for {self.seconds:g}s")


class Discard(TaskControl):
    """Fail this task now, for good: no retry, whatever attempts remain."""

    def __init__(self, reason: str = "discarded by its handler"):
        self.reason = str(reason)
        super().__init__(self.reason)


class Retry(TaskControl):
    """Fail this attempt and retry after ``after`` seconds (None: the kind's
    usual backoff). The attempt counts: on the last one, the task fails."""

    def __init__(self, after: float | dt.timedelta | None = None, reason: str = "retry requested by its handler"):
        if isinstance(after, dt.timedelta):
            after = after.total_seconds()
        self.after = None if after is None else _delay("Retry(after=)", after)
        self.reason = str(reason)
        super().__init__(self.reason)
