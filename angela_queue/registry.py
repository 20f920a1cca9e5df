"""The ``@task`` decorator and handler lookup.

A worker imports the ``--app`` module; importing it runs the decorators,
which fill the process-wide registry that the worker looks kinds up in.
"""

from __future__ import annotations

import importlib
import inspect
import math
import os
import sys
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from .errors import ConfigError


@dataclass(frozen=True)
class TaskDefinition:
    """A registered handler and the defaults its enqueues take.

    None means "not set by this kind": the task gets its queue's default,
    then the global one (priority 5, 5 attempts, queue 'default', no
    timeout). Workers record these in angela_queue.kinds, so an insert from
    SQL gets them too.
    """

    kind: str
    func: Callable[..., Any]
    priority: int | None = None
    queue: str | None = None
    max_attempts: int | None = None
    timeout: float | None = None
    batch: bool = False
    # Exponential backoff between attempts: base * 2**(attempt-1), capped, with jitter.
    backoff_base: float | None = None
    backoff_max: float | None = None
    # A pydantic model: payloads are validated against it at enqueue, and the
    # handler is called with the model instance (a list of them in a batch).
    model: type | None = None
    # Global limits, enforced in the claim across every host: at most
    # `concurrency` running at once; at most rate_limit starts in any
    # rate_period_s seconds (from rate="100/m").
    concurrency: int | None = None
    rate_limit: int | None = None
    rate_period_s: int | None = None
    # A periodic task (angela_queue.periodic.Schedule): the leader enqueues one
    # task of this kind per slot.
    schedule: Any = None
    # Looked up once: the worker asks for every task.
    is_async: bool = field(init=False, repr=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "is_async", inspect.iscoroutinefunction(self.func))

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        """Calling the decorated function runs it directly, as before."""
        return self.func(*args, **kwargs)

    def kind_row(self) -> dict[str, Any]:
        """This kind's defaults as a row of angela_queue.kinds."""
        return {"kind": self.kind, "queue": self.queue, "priority": self.priority,
                "max_attempts": self.max_attempts, "timeout_s": _float(self.timeout),
                "backoff_base_s": _float(self.backoff_base), "backoff_max_s": _float(self.backoff_max),
                "batch": self.batch, "concurrency": self.concurrency, "rate_limit": self.rate_limit,
                "rate_period_s": self.rate_period_s}

    def periodic_row(self) -> dict[str, Any] | None:
        """This kind's schedule as a row of angela_queue.periodic (named after the kind), if it has one."""
        if self.schedule is None:
            return None
        return {"name": self.kind, "kind": self.kind, "cron": self.schedule.cron, "every_s": self.schedule.every_s,
                "timezone": self.schedule.timezone}


def _float(value: float | None) -> float | None:
    return None if value is None else float(value)


_REGISTRY: dict[str, TaskDefinition] = {}


def task(kind: str, *, priority: int | None = None, queue: str | None = None,
         max_attempts: int | None = None, timeout: float | None = None, batch: bool = False,
         backoff_base: float | None = None, backoff_max: float | None = None, model: type | None = None,
         concurrency: int | None = None, rate: str | None = None,
         cron: str | None = None, every: float | None = None, timezone: str | None = None,
         ) -> Callable[[Callable[..., Any]], TaskDefinition]:
    """Register the decorated function as the handler for ``kind``.

    The handler is called with the payload's keys as keyword arguments; with
    ``batch=True`` it is called once with a list of payloads instead. With
    ``model=`` (a pydantic model) it is called with the validated model
    instance (a list of them for a batch handler). Options left unset take
    the queue's defaults, then the global ones.

    Limits hold across every worker and host: ``concurrency=N`` runs at most
    N tasks of the kind at once; ``rate="100/m"`` (per ``s``, ``m`` or ``h``)
    starts at most 100 in any minute. Over a limit, tasks wait in the queue
    and other kinds flow past them.

    ``cron="*/5 * * * *"`` (five fields, read in ``timezone``, UTC by
    default) or ``every=seconds`` makes it periodic: the maintenance leader
    enqueues one task per slot, with an empty payload, exactly once across
    every supervisor.
    """
    if not isinstance(kind, str) or not kind.strip() or "\x00" in kind \
            or len(kind.encode("utf-8", "surrogatepass")) > 255:
        raise ValueError(f"task kind must be a non-empty string of at most 255 bytes (got {kind!r})")
    if priority is not None and (isinstance(priority, bool) or not isinstance(priority, int)
                                 or not 1 <= priority <= 10):
        raise ValueError(f"priority must be an integer between 1 and 10 (got {priority!r})")
    if max_attempts is not None and (isinstance(max_attempts, bool) or not isinstance(max_attempts, int)
                                     or not 1 <= max_attempts <= 1_000_000):
        raise ValueError(f"max_attempts must be an integer between 1 and 1000000 (got {max_attempts!r})")
    if queue is not None:
        if not isinstance(queue, str) or not queue.strip() or "\x00" in queue \
                or len(queue.strip().encode("utf-8", "surrogatepass")) > 255:
            raise ValueError(f"queue must be a non-empty string of at most 255 bytes (got {queue!r})")
        queue = queue.strip()
    for name, value in (("timeout", timeout), ("backoff_base", backoff_base), ("backoff_max", backoff_max)):
        if value is not None and (isinstance(value, bool) or not isinstance(value, (int, float))
                                  or not math.isfinite(value) or value <= 0):
            raise ValueError(f"{name} must be a positive, finite number of seconds (got {value!r})")
    if model is not None:
        from .models import check_model
        check_model(model)
    if concurrency is not None and (isinstance(concurrency, bool) or not isinstance(concurrency, int)
                                    or not 1 <= concurrency <= 1_000_000):
        raise ValueError(f"concurrency must be an integer between 1 and 1000000 (got {concurrency!r})")
    rate_limit, rate_period_s = parse_rate(rate) if rate is not None else (None, None)
    schedule = None
    if cron is not None or every is not None or timezone is not None:
        from .periodic import Schedule, ScheduleError
        if cron is None and every is None:
            raise ValueError("timezone= only applies to a periodic task: give cron= too")
        try:
            schedule = Schedule.parse(cron=cron, every_s=every, timezone=timezone)
        except ScheduleError as exc:
            raise ValueError(str(exc)) from None

    def register(func: Callable[..., Any]) -> TaskDefinition:
        existing = _REGISTRY.get(kind)
        if existing is not None and existing.func is not func and _qualname(existing.func) != _qualname(func):
            raise ValueError(f"task kind {kind!r} is already registered by {_qualname(existing.func)}")
        definition = TaskDefinition(kind=kind, func=func, priority=priority, queue=queue,
                                    max_attempts=max_attempts, timeout=timeout, batch=batch,
                                    backoff_base=backoff_base, backoff_max=backoff_max, model=model,
                                    concurrency=concurrency, rate_limit=rate_limit, rate_period_s=rate_period_s,
                                    schedule=schedule)
        _REGISTRY[kind] = definition
        return definition

    return register


_PERIODS = {"s": 1, "sec": 1, "second": 1, "m": 60, "min": 60, "minute": 60, "h": 3600, "hour": 3600}


def parse_rate(rate: str) -> tuple[int, int]:
    """``"100/m"`` -> (100, 60): starts allowed, per a window of that many seconds."""
    text = rate.strip().lower() if isinstance(rate, str) else ""
    count, _, per = text.partition("/")
    per = per.strip()
    if per.endswith("s") and per not in _PERIODS:
        per = per[:-1]                                   # "minutes" -> "minute"
    if not count.strip().isdigit() or per not in _PERIODS or not 1 <= int(count) <= 1_000_000:
        raise ValueError(f"rate must look like '100/m': 1 to 1000000 starts per s, m or h (got {rate!r})")
    return int(count), _PERIODS[per]


def _qualname(func: Callable[..., Any]) -> str:
    return f"{getattr(func, '__module__', '?')}.{getattr(func, '__qualname__', repr(func))}"


def lookup(kind: str) -> TaskDefinition | None:
    return _REGISTRY.get(kind)


def registered_kinds() -> list[str]:
    return sorted(_REGISTRY)


def registered_definitions() -> list[TaskDefinition]:
    """Every registered kind, in kind order (the order rows are locked in)."""
    return [_REGISTRY[kind] for kind in sorted(_REGISTRY)]


def clear() -> None:
    """Forget every handler (tests)."""
    _REGISTRY.clear()


def load_app(app: str) -> None:
    """Import the user's module so its @task decorators register handlers.

    Every failure is one ConfigError line that says what went wrong and
    where (the traceback stays on the exception's cause, for ``-v``).
    """
    if os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())
    try:
        importlib.import_module(app)
    except ModuleNotFoundError as exc:
        if exc.name is not None and (app == exc.name or app.startswith(exc.name + ".")):
            raise ConfigError(f"--app {app}: no such module (looked in {os.getcwd()} and on "
                              f"PYTHONPATH)") from exc
        raise ConfigError(f"--app {app} failed to import: {_where(exc)}") from exc
    except BaseException as exc:  # noqa: BLE001 - whatever the module raises, SystemExit included
        if isinstance(exc, KeyboardInterrupt):
            raise
        raise ConfigError(f"--app {app} failed to import: {_where(exc)}") from exc


def _where(exc: BaseException) -> str:
    """``Type: message (file.py, line 3)``: the innermost frame, where it was raised."""
    frames = traceback.extract_tb(exc.__traceback__)
    message = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    text = f"{type(exc).__name__}: {message}" if message else type(exc).__name__
    if isinstance(exc, SyntaxError) and exc.filename:
        return f"{text} ({os.path.basename(exc.filename)}, line {exc.lineno})"
    # The innermost frame in a real file that is not the import machinery:
    # the user's line, not "<frozen os>".
    user = [f for f in frames if "importlib" not in f.filename and not f.filename.startswith("<")]
    if user:
        return f"{text} ({os.path.basename(user[-1].filename)}, line {user[-1].lineno})"
    return text


def require_handlers(app: str | None) -> list[str]:
    """Load ``app`` and return the kinds it registered; refuse a worker with none.

    A worker with no handlers would claim every task in its queues and fail
    each one as an unknown kind.
    """
    if not app:
        raise ConfigError("no --app given: a worker with no handlers would fail every task it claims; "
                          "pass --app MODULE (or set ANGELA_QUEUE_APP)")
    load_app(app)
    if not _REGISTRY:
        raise ConfigError(f"--app {app} registered no @task handlers: nothing for a worker to run")
    return registered_kinds()
