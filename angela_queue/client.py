"""Producers' API: ``Client`` (sync) and ``AsyncClient``.

Both run the flows from tasks.py; each is only a driver that executes the
operations a flow yields. Connections come from a psycopg pool, opened on
first use.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import time
from collections.abc import Iterable, Mapping
from typing import Any

import psycopg
from psycopg_pool import AsyncConnectionPool, ConnectionPool
from psycopg.rows import dict_row

from . import db, schema, telemetry, transactional, waiting
from .config import ENQUEUE_FULL_WAIT_S
from .registry import TaskDefinition
from .schema import SCHEMA_RECHECK_S
from .tasks import (CancelResult, EnqueuedTask, Flow, Listen, Operation, Query, RetryResult, TaskRecord, TaskSpec,
                    WaitForSpace, cancel_flow, check_task_id, enqueue_flow, enqueue_many_flow, get_flow, list_flow,
                    pause_flow, purge_flow, resume_flow, retry_flow, retry_many_flow, arun_flow,
                    run_flow)

PendingTask = TaskSpec | Mapping[str, Any]


def _spec(kind: str | TaskDefinition, payload: Any, options: dict[str, Any]) -> TaskSpec:
    return TaskSpec.build(kind, payload, **options)


def _specs(tasks: Iterable[PendingTask]) -> list[TaskSpec]:
    """Bulk input: TaskSpec objects, or dicts with 'kind', 'payload' and any enqueue option."""
    specs = []
    for item in tasks:
        if isinstance(item, TaskSpec):
            specs.append(item)
        else:
            options = dict(item)
            kind = options.pop("kind", None)
            payload = options.pop("payload", None)
            specs.append(TaskSpec.build(kind, payload, **options))  # type: ignore[arg-type]
    return specs


def _kinds_of(specs: list[TaskSpec]) -> str:
    """The span name's kind for a bulk enqueue: its one kind, or 'many'."""
    kinds = {s.kind for s in specs}
    return kinds.pop() if len(kinds) == 1 else "many"


def _queue_of(specs: list[TaskSpec]) -> str | None:
    queues = {s.queue for s in specs}
    return queues.pop() if len(queues) == 1 else None


def _resolve_dsn(dsn: str | None) -> str:
    if dsn is not None:
        return dsn
    from .config import dsn_from_env
    found = dsn_from_env()
    if found is not None:
        return found
    from . import embedded
    return embedded.ensure_running()


def _pool_kwargs(prepare: bool | None) -> dict[str, Any]:
    return {"autocommit": True, "row_factory": dict_row, "prepare_threshold": db.threshold_for(prepare),
            "application_name": "angela-queue-client"}


class Client:
    """Enqueue, cancel and look up tasks from synchronous code.

    ``Client()`` reads the DSN from ANGELA_QUEUE_DSN or DATABASE_URL, and with
    neither uses the local embedded Postgres. ``prepare=False`` never uses
    prepared statements (PgBouncer's transaction pooling before 1.21); None
    follows ANGELA_QUEUE_PREPARE, on by default.
    """

    def __init__(self, dsn: str | None = None, *, pool_size: int = 4,
                 full_queue_wait_s: float = ENQUEUE_FULL_WAIT_S, prepare: bool | None = None):
        self.dsn = _resolve_dsn(dsn)
        self.full_queue_wait_s = full_queue_wait_s
        self._prepare = prepare
        self._pool = ConnectionPool(self.dsn, min_size=1, max_size=pool_size, kwargs=_pool_kwargs(prepare),
                                    open=False, name="angela-queue-client")
        self._schema_checked_until = 0.0
        self._done = waiting.DoneListener(self.dsn)

    def __enter__(self) -> "Client":
        """Open the pool now: a bad DSN or a schema of another revision fails here, at once."""
        self.open()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def open(self) -> None:
        """Connect and check the schema; calls before this open the pool themselves."""
        if not self._pool.closed:
            return
        # Hazard: the pool retries a refused connection in the background and
        # open(wait=True) only reports "pool initialization incomplete" after
        # its timeout. One direct connection first fails at once with the
        # server's reason (DatabaseUnavailable).
        with db.connect(self.dsn, application_name="angela-queue-client", prepare=self._prepare) as probe:
            schema.check(probe)   # SchemaMissing / SchemaMismatch: one clear line
        self._schema_checked_until = time.monotonic() + SCHEMA_RECHECK_S
        self._pool.open(wait=True, timeout=10)

    def close(self) -> None:
        self._done.close()
        self._pool.close()

    def _run(self, flow: Flow) -> Any:
        self.open()
        with self._pool.connection() as conn:
            if time.monotonic() >= self._schema_checked_until:
                # Someone may have migrated since: old code must not write to a newer schema.
                schema.check(conn)
                self._schema_checked_until = time.monotonic() + SCHEMA_RECHECK_S
            return _drive_sync(conn, flow)

    def enqueue(self, kind: str | TaskDefinition, payload: Any = None, *, conn: Any = None,
                **options: Any) -> EnqueuedTask:
        """Store one task. Options: priority, queue, run_at, delay, max_attempts, timeout, dedup_key.

        ``conn``: the application's connection (psycopg, SQLAlchemy Connection
        or Session, Django's): the task is inserted in its open transaction,
        and exists only if that commits. A full queue then raises QueueFull
        at once instead of waiting.
        """
        spec = _spec(kind, payload, options)
        with telemetry.enqueue_span(spec.kind, spec.queue) as trace_context:
            if conn is not None:
                task = transactional.drive_sync(transactional.sync_connection(conn),
                                                enqueue_flow(spec, 0.0, trace_context))
            else:
                task = self._run(enqueue_flow(spec, self.full_queue_wait_s, trace_context))
            telemetry.record_enqueued([task.id])
            return task

    def enqueue_many(self, tasks: Iterable[PendingTask], *, conn: Any = None) -> list[EnqueuedTask]:
        """Store many tasks in one statement; results come back in input order.
        ``conn`` as for enqueue: all of them in the caller's transaction."""
        specs = _specs(tasks)
        with telemetry.enqueue_span(_kinds_of(specs), _queue_of(specs), len(specs)) as trace_context:
            if conn is not None:
                done = transactional.drive_sync(transactional.sync_connection(conn),
                                                enqueue_many_flow(specs, 0.0, trace_context))
            else:
                done = self._run(enqueue_many_flow(specs, self.full_queue_wait_s, trace_context))
            telemetry.record_enqueued([t.id for t in done])
            return done

    def wait(self, task_id: int, timeout: float | None = None) -> Any:
        """Block until the task finishes; return its result.

        Raises TaskFailed (carrying the final error) if it failed, was
        cancelled or dropped; TimeoutError if it is still unfinished after
        ``timeout`` seconds (None: wait as long as it takes); TaskNotFound if
        there is no such task. Woken by the completion NOTIFY.
        """
        check_task_id(task_id)
        limit = waiting.check_timeout(timeout)
        deadline = None if limit is None else time.monotonic() + limit
        self.open()
        self._done.start()
        with self._done.watching(task_id) as finished:
            while True:
                record = self.get(task_id)
                if waiting.is_final(record):
                    return waiting.outcome(record)
                pause = waiting.next_look_in(deadline)
                if pause <= 0:
                    raise waiting.not_done(task_id, record, limit)
                finished.wait(pause)
                finished.clear()

    def cancel(self, task_id: int) -> CancelResult:
        """Cancel a task: at once if it has not started; a running one is asked to
        stop (``requested``), and its outcome is recorded as cancelled."""
        return self._run(cancel_flow(check_task_id(task_id)))

    def get(self, task_id: int) -> TaskRecord:
        """The task, every column (TaskNotFound if there is none, or it is not yours to see)."""
        return self._run(get_flow(check_task_id(task_id)))

    def retry(self, task_id: int) -> RetryResult:
        """Put a failed, cancelled or dropped task back in its queue, attempts reset."""
        return self._run(retry_flow(check_task_id(task_id)))

    def retry_many(self, status: str = "failed", *, kind: str | None = None, queue: str | None = None) -> int:
        """Retry every task of that status (and kind, and queue); returns how many."""
        return self._run(retry_many_flow(status, kind, queue))

    def pause(self, queue: str) -> bool:
        """Pause a queue (it keeps accepting tasks; none starts); False if it was paused already."""
        return self._run(pause_flow(queue))

    def resume(self, queue: str) -> bool:
        """Resume a paused queue; its workers wake at once. False if it was not paused."""
        return self._run(resume_flow(queue))

    def purge(self, status: str, older_than: float | dt.timedelta) -> int:
        """Delete finished tasks of that status older than ``older_than`` (seconds); returns how many."""
        return self._run(purge_flow(status, older_than))

    def list_tasks(self, *, status: str | None = None, kind: str | None = None, queue: str | None = None,
                   since: dt.datetime | None = None, limit: int = 50) -> list[TaskRecord]:
        """Tasks, newest first (a summary: payload and result are in ``get``)."""
        return self._run(list_flow(status=status, kind=kind, queue=queue, since=since, limit=limit))


class AsyncClient:
    """The same API as ``Client``, for asyncio code."""

    def __init__(self, dsn: str | None = None, *, pool_size: int = 4,
                 full_queue_wait_s: float = ENQUEUE_FULL_WAIT_S, prepare: bool | None = None):
        self.dsn = _resolve_dsn(dsn)
        self.full_queue_wait_s = full_queue_wait_s
        self._prepare = prepare
        self._pool = AsyncConnectionPool(self.dsn, min_size=1, max_size=pool_size, kwargs=_pool_kwargs(prepare),
                                         open=False, name="angela-queue-async-client")
        self._schema_checked_until = 0.0
        self._done = waiting.AsyncDoneListener(self.dsn)

    async def __aenter__(self) -> "AsyncClient":
        await self.open()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def open(self) -> None:
        """See Client.open: fail fast, with the reason, on a bad DSN or schema."""
        if not self._pool.closed:
            return
        probe = await db.aconnect(self.dsn, application_name="angela-queue-client", prepare=self._prepare)
        try:
            await schema.acheck(probe)
        finally:
            await probe.close()
        self._schema_checked_until = time.monotonic() + SCHEMA_RECHECK_S
        await self._pool.open(wait=True, timeout=10)

    async def close(self) -> None:
        await self._done.close()
        await self._pool.close()

    async def _run(self, flow: Flow) -> Any:
        await self.open()
        async with self._pool.connection() as conn:
            if time.monotonic() >= self._schema_checked_until:
                await schema.acheck(conn)
                self._schema_checked_until = time.monotonic() + SCHEMA_RECHECK_S
            return await _drive_async(conn, flow)

    async def enqueue(self, kind: str | TaskDefinition, payload: Any = None, *, conn: Any = None,
                      **options: Any) -> EnqueuedTask:
        """See Client.enqueue; ``conn``: a psycopg AsyncConnection, or a SQLAlchemy
        AsyncConnection or AsyncSession."""
        spec = _spec(kind, payload, options)
        with telemetry.enqueue_span(spec.kind, spec.queue) as trace_context:
            if conn is not None:
                task = await transactional.drive_async(await transactional.async_connection(conn),
                                                       enqueue_flow(spec, 0.0, trace_context))
            else:
                task = await self._run(enqueue_flow(spec, self.full_queue_wait_s, trace_context))
            telemetry.record_enqueued([task.id])
            return task

    async def enqueue_many(self, tasks: Iterable[PendingTask], *, conn: Any = None) -> list[EnqueuedTask]:
        specs = _specs(tasks)
        with telemetry.enqueue_span(_kinds_of(specs), _queue_of(specs), len(specs)) as trace_context:
            if conn is not None:
                done = await transactional.drive_async(await transactional.async_connection(conn),
                                                       enqueue_many_flow(specs, 0.0, trace_context))
            else:
                done = await self._run(enqueue_many_flow(specs, self.full_queue_wait_s, trace_context))
            telemetry.record_enqueued([t.id for t in done])
            return done

    async def wait(self, task_id: int, timeout: float | None = None) -> Any:
        """See Client.wait."""
        check_task_id(task_id)
        limit = waiting.check_timeout(timeout)
        deadline = None if limit is None else time.monotonic() + limit
        await self.open()
        await self._done.start()
        async with self._done.watching(task_id) as finished:
            while True:
                record = await self.get(task_id)
                if waiting.is_final(record):
                    return waiting.outcome(record)
                pause = waiting.next_look_in(deadline)
                if pause <= 0:
                    raise waiting.not_done(task_id, record, limit)
                try:
                    await asyncio.wait_for(finished.wait(), pause)
                except asyncio.TimeoutError:
                    pass
                finished.clear()

    async def cancel(self, task_id: int) -> CancelResult:
        return await self._run(cancel_flow(check_task_id(task_id)))

    async def get(self, task_id: int) -> TaskRecord:
        return await self._run(get_flow(check_task_id(task_id)))

    async def retry(self, task_id: int) -> RetryResult:
        return await self._run(retry_flow(check_task_id(task_id)))

    async def retry_many(self, status: str = "failed", *, kind: str | None = None, queue: str | None = None) -> int:
        return await self._run(retry_many_flow(status, kind, queue))

    async def pause(self, queue: str) -> bool:
        return await self._run(pause_flow(queue))

    async def resume(self, queue: str) -> bool:
        return await self._run(resume_flow(queue))

    async def purge(self, status: str, older_than: float | dt.timedelta) -> int:
        return await self._run(purge_flow(status, older_than))

    async def list_tasks(self, *, status: str | None = None, kind: str | None = None, queue: str | None = None,
                         since: dt.datetime | None = None, limit: int = 50) -> list[TaskRecord]:
        return await self._run(list_flow(status=status, kind=kind, queue=queue, since=since, limit=limit))


# --- Drivers ------------------------------------------------------------------
# The operations of a flow (tasks.run_flow), on a pooled connection.

# The enqueues whose transaction the client owns here (autocommit: one
# statement, one transaction): into a 'fast' queue they may commit without
# waiting for the disk (queues.durability). On the caller's connection
# (transactional.py) they never do: that transaction is the application's.
_ENQUEUES = frozenset({"tasks_enqueue", "tasks_enqueue_many"})


def _params(op: Query) -> Any:
    return {**op.params, "relax": True} if op.name in _ENQUEUES else op.params


def _drive_sync(conn: psycopg.Connection, flow: Flow) -> Any:
    def perform(op: Operation) -> Any:
        if isinstance(op, Query):
            return db.fetch_all(conn, op.name, _params(op))
        if isinstance(op, Listen):
            (db.listen if op.on else db.unlisten)(conn, op.channel)
        elif isinstance(op, WaitForSpace):
            for _ in conn.notifies(timeout=op.timeout_s, stop_after=1):
                pass
        return None
    return run_flow(flow, perform)


async def _drive_async(conn: psycopg.AsyncConnection, flow: Flow) -> Any:
    async def perform(op: Operation) -> Any:
        if isinstance(op, Query):
            return await db.afetch_all(conn, op.name, _params(op))
        if isinstance(op, Listen):
            await (db.alisten if op.on else db.aunlisten)(conn, op.channel)
        elif isinstance(op, WaitForSpace):
            async for _ in conn.notifies(timeout=op.timeout_s, stop_after=1):
                pass
        return None
    return await arun_flow(flow, perform)


# --- Module-level convenience -----------------------------------------------

_default_client: Client | None = None


def default_client() -> Client:
    """A process-wide Client on the configured DSN, created on first use."""
    global _default_client
    if _default_client is None:
        _default_client = Client()
    return _default_client


def enqueue(kind: str | TaskDefinition, payload: Any = None, *, conn: Any = None,
            **options: Any) -> EnqueuedTask:
    """Client.enqueue on a process-wide client; with ``conn``, no client (nor
    pool, nor DSN) is needed: the caller's connection does it all."""
    if conn is not None:
        spec = _spec(kind, payload, options)
        with telemetry.enqueue_span(spec.kind, spec.queue) as trace_context:
            return transactional.drive_sync(transactional.sync_connection(conn),
                                            enqueue_flow(spec, 0.0, trace_context))
    return default_client().enqueue(kind, payload, **options)


def enqueue_many(tasks: Iterable[PendingTask], *, conn: Any = None) -> list[EnqueuedTask]:
    if conn is not None:
        specs = _specs(tasks)
        with telemetry.enqueue_span(_kinds_of(specs), _queue_of(specs), len(specs)) as trace_context:
            return transactional.drive_sync(transactional.sync_connection(conn),
                                            enqueue_many_flow(specs, 0.0, trace_context))
    return default_client().enqueue_many(tasks)


def wait(task_id: int, timeout: float | None = None) -> Any:
    return default_client().wait(task_id, timeout)


def cancel(task_id: int) -> CancelResult:
    return default_client().cancel(task_id)

