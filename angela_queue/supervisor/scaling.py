"""Scaling and health decisions: pure functions of what the supervisor saw.

Nothing here touches the database, the clock or the processes; the
supervisor gathers the facts, these functions decide, and the supervisor
acts and logs the reason. That keeps every rule unit-testable without a
database (tests/test_scaling.py).

The rules, in one place:

* **Pool bounds.** A supervisor starts ``base_workers`` (clamped into
  ``[min_workers, max_workers]``) and never runs fewer than min or more
  than max.
* **Depth.** Every ``scale_interval_s`` it reads the global depth (tasks
  ``queued`` in the queues it serves) and the number of live supervisors
  serving any of those queues (status ``running``, heartbeat younger than
  ``dead_after_s``, itself included). Its *share* is
  ``ceil(depth / live_supervisors)``: each supervisor answers for an equal
  part of the backlog, so N supervisors on one queue react to N times the
  depth one would, and together add up to N workers per interval.
* **Up / down / hold.** share > ``scale_up_depth`` (10): one more worker,
  unless at max or the machine has no room. share < ``scale_down_depth``
  (2): one fewer, unless at min. Otherwise hold. One step per interval
  damps oscillation; the interval is the knob for speed.
* **Room.** No worker is added when available memory is below
  ``room_min_free_memory_mb`` or the CPU was at least
  ``room_max_cpu_percent`` busy over the last interval (a CPU-bound backlog
  gains nothing from more processes than cores can run).
* **Retiring.** Scale-down retires idle workers first (no task in hand),
  then the ones holding the fewest tasks, newest first; always with
  SIGTERM, so a busy one finishes or releases its work.
* **Stuck.** A worker holding tasks is stuck when it has shown no progress
  (a task started or finished) for longer than its limit: the most lenient
  limit among the tasks it holds, each task's being its own timeout (task
  row, then handler, then ``default_timeout_s``) or else ``stuck_after_s``.
  A slack of two heartbeat intervals (the row lags the process by up to one)
  is added, plus ``batch_wait_s`` when it holds low-priority tasks (they
  may sit in a collecting batch before their handler starts). A worker
  whose heartbeat itself is older than ``dead_after_s`` is stuck too: the
  whole process is hung (stopped, or holding the GIL).
* **Crash loops.** A worker that dies within ``QUICK_CRASH_S`` of starting
  counts toward a streak; the first replacement is immediate, then the
  delay doubles from 0.5 s up to 30 s, so a broken app does not spin.
"""

from __future__ import annotations

import datetime as dt
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

# A worker that dies sooner than this after it was started counts as a quick crash.
QUICK_CRASH_S = 5.0
RESTART_DELAY_FIRST_S = 0.5
RESTART_DELAY_MAX_S = 30.0


@dataclass(frozen=True)
class Policy:
    min_workers: int
    base_workers: int
    max_workers: int
    scale_up_depth: int = 10
    scale_down_depth: int = 2

    @classmethod
    def from_settings(cls, settings) -> "Policy":
        return cls(min_workers=settings.min_workers, base_workers=settings.base_workers,
                   max_workers=settings.max_workers, scale_up_depth=settings.scale_up_depth,
                   scale_down_depth=settings.scale_down_depth)

    @property
    def initial_workers(self) -> int:
        return clamp(self.base_workers, self.min_workers, self.max_workers)


@dataclass(frozen=True)
class Room:
    ok: bool
    reason: str


@dataclass(frozen=True)
class Decision:
    target: int
    change: int   # target - current
    reason: str

    @property
    def action(self) -> str:
        return "up" if self.change > 0 else "down" if self.change < 0 else "hold"


def clamp(value: int, low: int, high: int) -> int:
    return max(low, min(high, value))


def depth_share(global_depth: int, live_supervisors: int) -> int:
    """This supervisor's part of the backlog: ceil(depth / live supervisors)."""
    return math.ceil(global_depth / max(1, live_supervisors))


def room(available_mb: float, cpu_percent: float | None, *, min_free_mb: float,
         max_cpu_percent: float) -> Room:
    """Whether the machine can take one more worker process.

    ``cpu_percent`` is the system-wide busy share since the last measure
    (None: not measured yet, which counts as room).
    """
    if available_mb < min_free_mb:
        return Room(False, f"only {available_mb:.0f} MB of memory available (< {min_free_mb:.0f} MB)")
    if cpu_percent is not None and cpu_percent >= max_cpu_percent:
        return Room(False, f"CPU {cpu_percent:.0f}% busy (>= {max_cpu_percent:.0f}%)")
    cpu = "n/a" if cpu_percent is None else f"{cpu_percent:.0f}%"
    return Room(True, f"{available_mb:.0f} MB free, CPU {cpu}")


def decide(current: int, share: int, policy: Policy, room_now: Room | None = None,
           *, global_depth: int | None = None, live_supervisors: int = 1, capped: bool = False) -> Decision:
    """One scaling step from ``current`` workers given this supervisor's share of the depth.

    ``capped``: the depth was counted only up to a cap, so it is "at least".
    """
    plus = "+" if capped else ""
    if live_supervisors > 1 and global_depth is not None:
        seen = f"depth {share}{plus} (global {global_depth}{plus} / {live_supervisors} supervisors)"
    else:
        seen = f"depth {share}{plus}"
    if current < policy.min_workers:
        return Decision(policy.min_workers, policy.min_workers - current,
                        f"{current} workers is below the minimum {policy.min_workers}")
    if current > policy.max_workers:
        return Decision(policy.max_workers, policy.max_workers - current,
                        f"{current} workers is above the maximum {policy.max_workers}")
    if share > policy.scale_up_depth:
        if current >= policy.max_workers:
            return Decision(current, 0, f"{seen} > {policy.scale_up_depth}, but already at the maximum "
                                        f"{policy.max_workers}")
        if room_now is not None and not room_now.ok:
            return Decision(current, 0, f"{seen} > {policy.scale_up_depth}, but no room: {room_now.reason}")
        return Decision(current + 1, 1, f"{seen} > {policy.scale_up_depth}")
    if share < policy.scale_down_depth:
        if current <= policy.min_workers:
            return Decision(current, 0, f"{seen} < {policy.scale_down_depth}, already at the minimum "
                                        f"{policy.min_workers}")
        return Decision(current - 1, -1, f"{seen} < {policy.scale_down_depth}")
    return Decision(current, 0, f"{seen} within [{policy.scale_down_depth}, {policy.scale_up_depth}]")


@dataclass(frozen=True)
class WorkerLoad:
    """What retiring looks at for one worker process."""

    id: object
    tasks: int          # tasks in hand (0 = idle)
    started: float      # when it was spawned (any monotonic clock)


def pick_retirees(workers: Sequence[WorkerLoad], n: int) -> list[object]:
    """The ``n`` workers to retire: idle first, then fewest tasks, newest first."""
    ranked = sorted(workers, key=lambda w: (w.tasks, -w.started))
    return [w.id for w in ranked[:max(0, n)]]


def restart_delay(quick_crash_streak: int) -> float:
    """Seconds to wait before replacing a worker after ``quick_crash_streak`` quick crashes in a row."""
    if quick_crash_streak <= 1:
        return 0.0
    return min(RESTART_DELAY_MAX_S, RESTART_DELAY_FIRST_S * 2 ** (quick_crash_streak - 2))


@dataclass(frozen=True)
class WorkerHealth:
    """One worker row as the supervisor read it (times from the database clock)."""

    last_heartbeat: dt.datetime
    last_active: dt.datetime                 # last task start or finish (or its start)
    task_kinds: Sequence[str]                # the tasks the database says it runs
    task_timeouts_s: Sequence[float | None]  # each task row's timeout_s
    newest_task_started_at: dt.datetime | None = None
    holds_low_priority: bool = False


@dataclass(frozen=True)
class HealthLimits:
    stuck_after_s: float
    heartbeat_interval_s: float
    dead_after_s: float
    default_timeout_s: float | None = None
    batch_wait_s: float = 0.0


def progress_at(w: WorkerHealth) -> dt.datetime:
    """The worker's last sign of progress: its last_active, or a newer task claim."""
    if w.newest_task_started_at is not None and w.newest_task_started_at > w.last_active:
        return w.newest_task_started_at
    return w.last_active


def stuck_limit_s(w: WorkerHealth, limits: HealthLimits,
                  handler_timeout: Callable[[str], float | None] = lambda kind: None) -> float:
    """Seconds without progress after which this worker counts as stuck (slack included)."""
    per_task = []
    for kind, timeout in zip(w.task_kinds, w.task_timeouts_s):
        effective = timeout or handler_timeout(kind) or limits.default_timeout_s
        per_task.append(effective if effective else limits.stuck_after_s)
    base = max(per_task) if per_task else limits.stuck_after_s
    slack = 2 * limits.heartbeat_interval_s + (limits.batch_wait_s if w.holds_low_priority else 0.0)
    return base + slack


def stuck_reason(w: WorkerHealth, now: dt.datetime, limits: HealthLimits,
                 handler_timeout: Callable[[str], float | None] = lambda kind: None) -> str | None:
    """Why this worker is stuck, or None if it is not."""
    silent = (now - w.last_heartbeat).total_seconds()
    if silent > limits.dead_after_s:
        return f"no heartbeat for {silent:.1f}s (limit {limits.dead_after_s:g}s)"
    if not w.task_kinds:
        return None
    limit = stuck_limit_s(w, limits, handler_timeout)
    idle = (now - progress_at(w)).total_seconds()
    if idle > limit:
        return (f"no progress for {idle:.1f}s while holding {len(w.task_kinds)} task(s) "
                f"(limit {limit:g}s)")
    return None
