"""Running one claimed task (or batch) through its handler: pure of SQL.

The worker hands a claimed row here and gets back an ``Outcome``: success
with a JSON result, or failure with an error text and whether a retry makes
sense. Timeouts, unknown kinds and unserialisable results all end as a
clear ``Outcome``; nothing here touches the database.
"""

from __future__ import annotations

import asyncio
import functools
import json
import random
import time
import traceback
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from .handler_threads import HandlerThreads
from ..registry import TaskDefinition, registered_kinds

# Keep last_error readable: the message plus the innermost frames.
TRACEBACK_LIMIT_CHARS = 4000


@dataclass
class ClaimedTask:
    id: int
    queue: str
    kind: str
    payload: dict[str, Any]
    priority: int
    attempts: int
    max_attempts: int
    timeout_s: float | None
    effective_priority: float = 0.0

    @classmethod
    def from_row(cls, row: Mapping[str, Any]) -> "ClaimedTask":
        return cls(id=row["id"], queue=row["queue"], kind=row["kind"], payload=row["payload"] or {},
                   priority=row["priority"], attempts=row["attempts"], max_attempts=row["max_attempts"],
                   timeout_s=row["timeout_s"], effective_priority=row.get("effective_priority") or row["priority"])


@dataclass
class Outcome:
    task_id: int
    ok: bool
    result_json: str = "null"    # the result, JSON-encoded once, when ok
    error: str | None = None     # when not ok
    retry: bool = True           # False: fail for good whatever attempts remain
    duration_ms: float = 0.0
    finished_at: float = 0.0     # time.time()


class HandlerTimeout(Exception):
    pass


def backoff_seconds(attempt: int, base_s: float, max_s: float, rng: random.Random | None = None) -> float:
    """Exponential backoff with jitter: base * 2**(attempt-1), capped, then scaled by 0.5-1.0.

    The jitter spreads retries of tasks that failed together (an outage) so
    they don't all come back in the same instant.
    """
    rng = rng or random
    raw = min(max_s, base_s * (2 ** max(0, attempt - 1)))
    return raw * (0.5 + 0.5 * rng.random())


def describe_exception(exc: BaseException) -> str:
    """``Type: message`` then a trimmed traceback (innermost frames kept)."""
    head = f"{type(exc).__name__}: {exc}"
    tb = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
    if len(tb) > TRACEBACK_LIMIT_CHARS:
        tb = "...\n" + tb[-TRACEBACK_LIMIT_CHARS:]
    return f"{head}\n{tb}"


def unknown_kind_error(kind: str) -> str:
    kinds = registered_kinds()
    known = ", ".join(kinds) if kinds else "none"
    return f"unknown task kind {kind!r}: no handler registered for it (registered kinds: {known})"


def to_json_result(value: Any) -> tuple[bool, str, str | None]:
    """(ok, json_text, error). Encoded here once; the text goes to the database as is.

    allow_nan=False: NaN and Infinity are not JSON, and Postgres would refuse them.
    """
    if value is None:
        return True, "null", None
    try:
        text = json.dumps(value, allow_nan=False, separators=(",", ":"))
    except (TypeError, ValueError) as exc:
        return False, "null", f"handler returned a value that is not JSON-serialisable ({type(value).__name__}): {exc}"
    if "\\u0000" in text:
        # Valid JSON, but Postgres jsonb cannot store a NUL character.
        return False, "null", "handler returned a value containing a NUL character (\\u0000), which Postgres cannot store"
    return True, text, None


async def run_handler(definition: TaskDefinition, call: Callable[[], Any], timeout_s: float | None,
                      threads: HandlerThreads, on_abandoned: Callable[[], None]) -> Any:
    """Run ``call`` (async or sync) with an optional timeout.

    An async handler is cancelled at the timeout. A sync handler runs in a
    thread, which Python cannot interrupt: at the timeout the attempt is
    failed and ``on_abandoned`` is told, so the worker can retire the
    process (its supervisor replaces it) instead of leaking threads.
    """
    if definition.is_async:
        coro = call()
        if timeout_s is None:
            return await coro
        try:
            return await asyncio.wait_for(coro, timeout_s)
        except asyncio.TimeoutError:
            raise HandlerTimeout(f"timed out after {timeout_s:g}s (async handler cancelled)") from None
    future = threads.submit(call)
    if timeout_s is None:
        return await future
    try:
        return await asyncio.wait_for(asyncio.shield(future), timeout_s)
    except asyncio.TimeoutError:
        on_abandoned()
        raise HandlerTimeout(
            f"timed out after {timeout_s:g}s (sync handler still running in its thread; "
            "the worker process will be replaced)") from None


def single_call(definition: TaskDefinition, task: ClaimedTask) -> Callable[[], Any]:
    if not isinstance(task.payload, dict):
        raise TypeError(f"payload must be a JSON object, got {type(task.payload).__name__}")
    return functools.partial(definition.func, **task.payload)


def batch_call(definition: TaskDefinition, tasks: list[ClaimedTask]) -> Callable[[], Any]:
    return functools.partial(definition.func, [t.payload for t in tasks])


async def execute_one(definition: TaskDefinition | None, task: ClaimedTask, default_timeout_s: float | None,
                      threads: HandlerThreads, on_abandoned: Callable[[], None]) -> Outcome:
    started = time.perf_counter()
    if definition is None:
        return Outcome(task.id, ok=False, error=unknown_kind_error(task.kind), retry=False,
                       finished_at=time.time())
    timeout_s = task.timeout_s or definition.timeout or default_timeout_s
    try:
        value = await run_handler(definition, single_call(definition, task), timeout_s, threads, on_abandoned)
    except HandlerTimeout as exc:
        return Outcome(task.id, ok=False, error=f"HandlerTimeout: {exc}",
                       duration_ms=(time.perf_counter() - started) * 1000, finished_at=time.time())
    except asyncio.CancelledError:
        raise
    except Exception as exc:
        return Outcome(task.id, ok=False, error=describe_exception(exc),
                       duration_ms=(time.perf_counter() - started) * 1000, finished_at=time.time())
    ok, result_json, error = to_json_result(value)
    return Outcome(task.id, ok=ok, result_json=result_json, error=error, retry=ok,
                   duration_ms=(time.perf_counter() - started) * 1000, finished_at=time.time())


async def execute_batch(definition: TaskDefinition, tasks: list[ClaimedTask], default_timeout_s: float | None,
                        threads: HandlerThreads, on_abandoned: Callable[[], None]) -> list[Outcome]:
    """A ``batch=True`` handler gets every payload in one call; all tasks share its outcome.

    The handler may return a list with one JSON result per task (same
    length), or any other JSON value, which every task then records.
    """
    started = time.perf_counter()
    timeout_s = definition.timeout or default_timeout_s
    ids = [t.id for t in tasks]
    try:
        value = await run_handler(definition, batch_call(definition, tasks), timeout_s, threads, on_abandoned)
    except HandlerTimeout as exc:
        now = time.time()
        ms = (time.perf_counter() - started) * 1000
        return [Outcome(i, ok=False, error=f"HandlerTimeout: {exc}", duration_ms=ms,
                        finished_at=now) for i in ids]
    except asyncio.CancelledError:
        raise
    except Exception as exc:
        now = time.time()
        ms = (time.perf_counter() - started) * 1000
        text = describe_exception(exc)
        return [Outcome(i, ok=False, error=text, duration_ms=ms, finished_at=now) for i in ids]
    now = time.time()
    ms = (time.perf_counter() - started) * 1000
    if isinstance(value, list) and len(value) == len(tasks):
        results = value
    else:
        results = [value] * len(tasks)
    outcomes = []
    for i, result in zip(ids, results, strict=True):
        ok, result_json, error = to_json_result(result)
        outcomes.append(Outcome(i, ok=ok, result_json=result_json, error=error, retry=ok, duration_ms=ms,
                                finished_at=now))
    return outcomes
