"""Running one claimed task (or batch) through its handler: pure of SQL.

The worker hands a claimed row here and gets back an ``Outcome`` that is
complete: success with a JSON result, or failure with a clean error text
and whether a retry makes sense. Whatever the handler does (returns junk,
raises anything, ``BaseException`` included, overruns its timeout) and
whatever the row holds (a payload Python cannot decode, a kind nobody
registered), it ends here as a clear outcome; nothing escapes to the
worker's loop, and nothing here touches the database.
"""

from __future__ import annotations

import asyncio
import contextvars
import datetime as dt
import functools
import json
import random
import time
import traceback
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from .. import telemetry
from ..handler import Discard, Retry, Snooze, TaskContext, TaskControl, reset_current, set_current
from ..registry import TaskDefinition, registered_kinds
from .handler_threads import BaseExceptionRaised, HandlerThreads

# Keep last_error readable: the message plus the innermost frames.
TRACEBACK_LIMIT_CHARS = 4000
# ... and the message, which a handler may fill with megabytes.
MESSAGE_LIMIT_CHARS = 2000
# The least retry delay of a task whose kind this worker does not know.
UNKNOWN_KIND_MIN_DELAY_S = 30.0


@dataclass
class ClaimedTask:
    id: int
    queue: str
    kind: str
    # The payload as the database sent it (text): decoded here, per task, so
    # that one payload Python cannot read (nested 10,000 deep, say) fails its
    # own task instead of the whole claim.
    payload_json: str
    priority: int
    attempts: int
    max_attempts: int
    timeout_s: float | None
    effective_priority: float = 0.0
    deadline: dt.datetime | None = None
    created_at: dt.datetime | None = None
    # None while claimed unstarted (waiting in a collecting batch).
    started_at: dt.datetime | None = None
    run_at: dt.datetime | None = None
    # The producer's W3C trace context (telemetry.py), if it stored one.
    trace_context: Mapping[str, Any] | None = None

    @classmethod
    def from_row(cls, row: Mapping[str, Any]) -> "ClaimedTask":
        payload = row["payload"]
        if not isinstance(payload, str):       # a caller that selected jsonb
            payload = json.dumps(payload)
        return cls(id=row["id"], queue=row["queue"], kind=row["kind"], payload_json=payload,
                   priority=row["priority"], attempts=row["attempts"], max_attempts=row["max_attempts"],
                   timeout_s=row["timeout_s"],
                   effective_priority=row.get("effective_priority") or row["priority"],
                   deadline=row.get("deadline"), created_at=row.get("created_at"),
                   started_at=row.get("started_at"), run_at=row.get("run_at"),
                   trace_context=row.get("trace_context"))

    @property
    def wait_ms(self) -> float | None:
        """From ready (greatest(run_at, created_at)) to this attempt's start."""
        if self.started_at is None or self.created_at is None:
            return None
        ready = max(self.run_at, self.created_at) if self.run_at is not None else self.created_at
        return max((self.started_at - ready).total_seconds() * 1000, 0.0)

    def context(self, cancel_requested: Callable[[int], bool],
                batch: tuple[TaskContext, ...] = ()) -> TaskContext:
        """What current_task() returns while this task's handler runs."""
        return TaskContext(id=self.id, kind=self.kind, queue=self.queue, attempt=self.attempts,
                           max_attempts=self.max_attempts, priority=self.priority,
                           effective_priority=float(self.effective_priority), deadline=self.deadline,
                           created_at=self.created_at, started_at=self.started_at, batch=batch,
                           _cancel_requested=cancel_requested)

    def payload(self) -> dict[str, Any]:
        """The payload as a dict; raises PayloadError if Python cannot have it."""
        try:
            value = json.loads(self.payload_json)
        except (ValueError, RecursionError) as exc:
            raise PayloadError(f"the payload cannot be decoded by Python ({type(exc).__name__}: "
                               f"{str(exc)[:200]})") from None
        if not isinstance(value, dict):
            raise PayloadError(f"the payload must be a JSON object, got {type(value).__name__}")
        return value


@dataclass
class Outcome:
    """Everything the database needs to record one attempt: nothing is looked up later."""

    task_id: int
    ok: bool
    result_json: str = "null"    # the result, JSON-encoded once, when ok
    error: str | None = None     # when not ok; already clean (no NUL)
    # When not ok: seconds until the retry (the task's backoff), if attempts
    # remain; None: fail for good whatever attempts remain.
    retry_in_s: float | None = None
    duration_ms: float = 0.0
    finished_at: float = 0.0     # time.time()
    # Stopped on request (angela_queue.cancel_task) before the handler ended.
    cancelled: bool = False
    # The handler raised Snooze: run again after this many seconds, the
    # attempt not counted (neither a success nor a failure).
    snooze_s: float | None = None

    @property
    def retry(self) -> bool:
        return self.retry_in_s is not None

    @property
    def snoozed(self) -> bool:
        return self.snooze_s is not None

    def name(self, task: "ClaimedTask") -> str:
        """succeeded, failed, retrying, snoozed or cancelled: what this attempt did to ``task``."""
        if self.ok:
            return "succeeded"
        if self.cancelled:
            return "cancelled"
        if self.snoozed:
            return "snoozed"
        return "retrying" if self.retry and task.attempts < task.max_attempts else "failed"


@dataclass(frozen=True)
class ExecutionPolicy:
    """The worker's defaults for what a task and its handler leave unset."""

    default_timeout_s: float | None = None
    backoff_base_s: float = 1.0
    backoff_max_s: float = 3600.0

    @classmethod
    def from_settings(cls, settings) -> "ExecutionPolicy":
        return cls(default_timeout_s=settings.default_timeout_s, backoff_base_s=settings.backoff_base_s,
                   backoff_max_s=settings.backoff_max_s)

    def timeout(self, task: "ClaimedTask", definition: TaskDefinition) -> float | None:
        """The task's own timeout, else its handler's, else the worker's default."""
        return task.timeout_s or definition.timeout or self.default_timeout_s

    def retry_in(self, task: "ClaimedTask", definition: TaskDefinition | None) -> float:
        """The backoff before this task's next attempt: its handler's, else the worker's.

        A kind this worker has no handler for waits at least
        UNKNOWN_KIND_MIN_DELAY_S, doubling: long enough for a rolling deploy
        to bring up a worker that knows it (30 s, 60 s, 2 min... with the
        default 5 attempts, about 7 minutes before it fails for good).
        """
        if definition is None:
            return backoff_seconds(task.attempts, max(self.backoff_base_s, UNKNOWN_KIND_MIN_DELAY_S),
                                   max(self.backoff_max_s, UNKNOWN_KIND_MIN_DELAY_S))
        base = definition.backoff_base if definition and definition.backoff_base is not None else self.backoff_base_s
        cap = definition.backoff_max if definition and definition.backoff_max is not None else self.backoff_max_s
        return backoff_seconds(task.attempts, base, cap)


class HandlerTimeout(Exception):
    pass


class PayloadError(Exception):
    """A payload the handler cannot be called with; retrying cannot help."""


def backoff_seconds(attempt: int, base_s: float, max_s: float, rng: random.Random | None = None) -> float:
    """Exponential backoff with jitter: base * 2**(attempt-1), capped, then scaled by 0.5-1.0.

    The jitter spreads retries of tasks that failed together (an outage) so
    they don't all come back in the same instant.
    """
    rng = rng or random
    raw = min(max_s, base_s * 2.0 ** min(max(0, attempt - 1), 60))  # capped: 2**1024 is no float
    return raw * (0.5 + 0.5 * rng.random())


def clean_text(text: str) -> str:
    """Text Postgres can store: no NUL, and no lone surrogate (an undecodable
    file name in an exception message is one), both shown as escapes."""
    return text.replace("\x00", "\\x00").encode("utf-8", "backslashreplace").decode("utf-8")


def describe_exception(exc: BaseException) -> str:
    """``Type: message`` then a trimmed traceback (innermost frames kept)."""
    if isinstance(exc, BaseExceptionRaised):
        exc = exc.original
    try:
        message = str(exc)
    except Exception as broken:  # noqa: BLE001 - an exception's own __str__ may raise
        message = f"<its message could not be read: {type(broken).__name__}>"
    if len(message) > MESSAGE_LIMIT_CHARS:
        message = f"{message[:MESSAGE_LIMIT_CHARS]}... ({len(message)} characters in all)"
    head = f"{type(exc).__name__}: {message}"
    if not isinstance(exc, Exception):
        head += " (a BaseException raised by the handler: this attempt fails, and the worker goes on)"
    try:
        tb = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
    except Exception:  # noqa: BLE001 - as above
        tb = ""
    if len(tb) > TRACEBACK_LIMIT_CHARS:
        tb = "...\n" + tb[-TRACEBACK_LIMIT_CHARS:]
    return clean_text(f"{head}\n{tb}")


def unknown_kind_error(kind: str) -> str:
    kinds = registered_kinds()
    known = ", ".join(kinds) if kinds else "none"
    return clean_text(f"unknown task kind {kind!r}: this worker has no handler for it (it knows: {known}); "
                      "retried with backoff, so a worker that knows it can take it")


def to_json_result(value: Any) -> tuple[bool, str, str | None]:
    """(ok, json_text, error). Encoded here once; the text goes to the database as is.

    allow_nan=False: NaN and Infinity are not JSON, and Postgres would refuse them.
    """
    if value is None:
        return True, "null", None
    try:
        text = json.dumps(value, allow_nan=False, separators=(",", ":"))
    except (TypeError, ValueError, RecursionError) as exc:
        return False, "null", clean_text(
            f"handler returned a value that is not JSON-serialisable ({type(value).__name__}): {exc}")
    if "\\u0000" in text:
        # Valid JSON, but Postgres jsonb cannot store a NUL character.
        return False, "null", "handler returned a value containing a NUL character (\\u0000), which Postgres cannot store"
    return True, text, None


def _own_cancellation() -> bool:
    """Whether the running asyncio task was asked to stop (timeout, shutdown, cancel):
    then a CancelledError is ours to propagate, not the handler's failure."""
    task = asyncio.current_task()
    return task is not None and task.cancelling() > 0


async def run_handler(definition: TaskDefinition, call: Callable[[], Any], timeout_s: float | None,
                      threads: HandlerThreads, on_abandoned: Callable[[], None]) -> Any:
    """Run ``call`` (async or sync) with an optional timeout.

    An async handler runs in the caller's own asyncio task, under
    ``asyncio.timeout``: no task of its own, so a SystemExit or
    KeyboardInterrupt it raises reaches our ``except`` instead of the event
    loop (asyncio re-raises those out of any task that lets them escape).
    A sync handler runs in a thread, which Python cannot interrupt: at the
    timeout the attempt is failed and ``on_abandoned`` is told, so the worker
    can retire the process (its supervisor replaces it) instead of leaking
    threads.
    """
    if definition.is_async:
        if timeout_s is None:
            return await call()
        try:
            async with asyncio.timeout(timeout_s):
                return await call()
        except TimeoutError:
            if _own_cancellation():
                raise asyncio.CancelledError() from None   # a stop, arriving as the timeout struck
            raise HandlerTimeout(f"timed out after {timeout_s:g}s (async handler cancelled)") from None
    future = threads.submit(call)
    if timeout_s is None:
        return await future
    try:
        return await asyncio.wait_for(asyncio.shield(future), timeout_s)
    except asyncio.TimeoutError:
        if _own_cancellation():
            raise asyncio.CancelledError() from None
        on_abandoned()
        raise HandlerTimeout(
            f"timed out after {timeout_s:g}s (sync handler still running in its thread; "
            "the worker process will be replaced)") from None


def _failed(task: ClaimedTask, error: str, started: float, retry_in_s: float | None) -> Outcome:
    return Outcome(task.id, ok=False, error=error, retry_in_s=retry_in_s,
                   duration_ms=(time.perf_counter() - started) * 1000, finished_at=time.time())


def _controlled(task: ClaimedTask, control: TaskControl, started: float, retry_in_s: float) -> Outcome:
    """The outcome a handler asked for by raising Snooze, Discard or Retry."""
    duration_ms = (time.perf_counter() - started) * 1000
    if isinstance(control, Snooze):
        return Outcome(task.id, ok=False, snooze_s=control.seconds, duration_ms=duration_ms,
                       finished_at=time.time())
    if isinstance(control, Discard):
        return _failed(task, clean_text(f"Discard: {control.reason}"), started, None)
    if isinstance(control, Retry):
        return _failed(task, clean_text(f"Retry: {control.reason}"), started,
                       retry_in_s if control.after is None else control.after)
    return _failed(task, clean_text(f"{type(control).__name__}: {control}"), started, retry_in_s)


def _handler_argument(definition: TaskDefinition, task: ClaimedTask) -> dict[str, Any] | Any:
    """The payload as the handler takes it: a dict, or its model's instance.
    Raises PayloadError if it cannot be had (retrying cannot help)."""
    payload = task.payload()
    if definition.model is None:
        return payload
    from ..models import instance_for_handler
    try:
        return instance_for_handler(definition.model, payload)
    except ValueError as exc:      # pydantic's ValidationError is a ValueError
        raise PayloadError(f"the payload does not match {definition.model.__name__}: "
                           f"{str(exc)[:500]}") from None


def _in_context(definition: TaskDefinition, call: Callable[[], Any]) -> Callable[[], Any]:
    """A sync handler runs on a handler thread, which does not inherit the
    loop's context variables: carry current_task() over."""
    if definition.is_async:
        return call
    return functools.partial(contextvars.copy_context().run, call)


def _never_cancelled(_task_id: int) -> bool:
    return False


async def execute_one(definition: TaskDefinition | None, task: ClaimedTask, policy: ExecutionPolicy,
                      threads: HandlerThreads, on_abandoned: Callable[[], None],
                      cancel_requested: Callable[[int], bool] = _never_cancelled) -> Outcome:
    """One task, one handler call with the payload's keys as keyword arguments
    (or its model's instance), inside its OpenTelemetry span (the [otel] extra)."""
    with telemetry.task_span(task.kind, task.queue, task.id, task.attempts, task.trace_context) as span:
        outcome = await _execute_one(definition, task, policy, threads, on_abandoned, cancel_requested)
        telemetry.end_task_span(span, outcome.ok, outcome.error, outcome.name(task))
    return outcome


async def _execute_one(definition: TaskDefinition | None, task: ClaimedTask, policy: ExecutionPolicy,
                       threads: HandlerThreads, on_abandoned: Callable[[], None],
                       cancel_requested: Callable[[int], bool]) -> Outcome:
    started = time.perf_counter()
    retry_in_s = policy.retry_in(task, definition)
    if definition is None:
        return _failed(task, unknown_kind_error(task.kind), started, retry_in_s)
    try:
        argument = _handler_argument(definition, task)
    except PayloadError as exc:
        return _failed(task, clean_text(str(exc)), started, None)
    if definition.model is None:
        call = functools.partial(definition.func, **argument)
    else:
        call = functools.partial(definition.func, argument)
    token = set_current(task.context(cancel_requested))
    try:
        value = await run_handler(definition, _in_context(definition, call), policy.timeout(task, definition),
                                  threads, on_abandoned)
    except HandlerTimeout as exc:
        return _failed(task, f"HandlerTimeout: {exc}", started, retry_in_s)
    except TaskControl as control:
        return _controlled(task, control, started, retry_in_s)
    except asyncio.CancelledError:
        if _own_cancellation():
            raise
        return _failed(task, describe_exception(asyncio.CancelledError("raised by the handler")), started,
                       retry_in_s)
    except BaseException as exc:  # noqa: BLE001 - SystemExit, KeyboardInterrupt... are a failed attempt
        return _failed(task, describe_exception(exc), started, retry_in_s)
    finally:
        reset_current(token)
    ok, result_json, error = to_json_result(value)
    # A result that cannot be stored will not be storable next time either.
    return Outcome(task.id, ok=ok, result_json=result_json, error=error, retry_in_s=None,
                   duration_ms=(time.perf_counter() - started) * 1000, finished_at=time.time())


async def execute_batch(definition: TaskDefinition, tasks: list[ClaimedTask], policy: ExecutionPolicy,
                        threads: HandlerThreads, on_abandoned: Callable[[], None],
                        cancel_requested: Callable[[int], bool] = _never_cancelled) -> list[Outcome]:
    """_execute_batch inside one span for the call (its first task's trace)."""
    first = tasks[0]
    with telemetry.task_span(first.kind, first.queue, first.id, first.attempts, first.trace_context) as span:
        outcomes = await _execute_batch(definition, tasks, policy, threads, on_abandoned, cancel_requested)
        worst = next((o for o in outcomes if not o.ok), outcomes[0])
        telemetry.end_task_span(span, worst.ok, worst.error, worst.name(first))
    return outcomes


async def _execute_batch(definition: TaskDefinition, tasks: list[ClaimedTask], policy: ExecutionPolicy,
                         threads: HandlerThreads, on_abandoned: Callable[[], None],
                         cancel_requested: Callable[[int], bool]) -> list[Outcome]:
    """A ``batch=True`` handler gets the payloads in one call (a list, of one if alone).

    The handler may return a list with one JSON result per task (same
    length), or any other JSON value, which every task then records. Each
    task keeps its own timeout: the call may run until the longest of them,
    and a task whose own timeout passed before the call returned fails as
    timed out whatever the result. A task whose payload cannot be decoded
    fails alone; the others still run. Snooze, Discard or Retry raised by the
    handler applies to every task of the call. Outcomes come back in task
    order.
    """
    started = time.perf_counter()
    outcomes: dict[int, Outcome] = {}
    runnable: list[tuple[ClaimedTask, Any]] = []
    for task in tasks:
        try:
            runnable.append((task, _handler_argument(definition, task)))
        except PayloadError as exc:
            outcomes[task.id] = _failed(task, clean_text(str(exc)), started, None)
    if runnable:
        limits = [policy.timeout(t, definition) for t, _ in runnable]
        call_limit = None if any(limit is None for limit in limits) else max(limits)  # type: ignore[type-var]
        call = functools.partial(definition.func, [argument for _, argument in runnable])
        contexts = tuple(t.context(cancel_requested) for t, _ in runnable)
        token = set_current(runnable[0][0].context(cancel_requested, batch=contexts))
        error: str | None = None
        control: TaskControl | None = None
        value: Any = None
        try:
            value = await run_handler(definition, _in_context(definition, call), call_limit, threads,
                                      on_abandoned)
        except HandlerTimeout as exc:
            error = f"HandlerTimeout: {exc}"
        except TaskControl as raised:
            control = raised
        except asyncio.CancelledError:
            if _own_cancellation():
                raise
            error = describe_exception(asyncio.CancelledError("raised by the handler"))
        except BaseException as exc:  # noqa: BLE001 - as in execute_one
            error = describe_exception(exc)
        finally:
            reset_current(token)
        elapsed_s = time.perf_counter() - started
        if error is None and control is None:
            results = value if isinstance(value, list) and len(value) == len(runnable) else [value] * len(runnable)
        else:
            results = [None] * len(runnable)
        for (task, _), limit, result in zip(runnable, limits, results, strict=True):
            if control is not None:
                outcomes[task.id] = _controlled(task, control, started, policy.retry_in(task, definition))
            elif error is not None:
                outcomes[task.id] = _failed(task, error, started, policy.retry_in(task, definition))
            elif limit is not None and elapsed_s > limit:
                outcomes[task.id] = _failed(
                    task, f"HandlerTimeout: timed out after {limit:g}s (its batch call took "
                          f"{elapsed_s:.3g}s)", started, policy.retry_in(task, definition))
            else:
                ok, result_json, result_error = to_json_result(result)
                outcomes[task.id] = Outcome(task.id, ok=ok, result_json=result_json, error=result_error,
                                            retry_in_s=None, duration_ms=elapsed_s * 1000, finished_at=time.time())
    return [outcomes[t.id] for t in tasks]
