"""The handlers of the chaos run (``--app benchmarks.chaos_app``).

Every execution is written to a side table, ``public.chaos_runs``, on the
handler's own connection, *before* the handler sleeps and returns: a row
there means "the handler started work", whatever happened to the task row
afterwards. The chaos run compares these rows with the task rows to count
tasks lost and tasks run twice, without trusting the queue's own bookkeeping.

Payload: ``{"cid": <chaos id, unique per task>, "ms": <milliseconds to sleep>}``.
The handler never sees its task's id, so the chaos id names the task.

Hazards handled here:
- Postgres restarts under the handler. The insert is retried until it
  lands (for up to RECORD_RETRY_S), so a restart does not turn a started
  execution into a failed attempt.
- A retried insert whose first COMMIT did land (the connection died while
  the answer was on its way) must not count twice: each execution carries a
  random ``run_id`` and the insert is ``ON CONFLICT DO NOTHING``.
- Sync handlers run on the worker's handler threads, several at once: one
  connection per thread. The async handler shares one connection per
  process, behind a lock (a psycopg connection runs one query at a time).

``AQ_CHAOS_DSN`` (set by the chaos run in the supervisors' environment, which
the workers inherit) names the database.
"""

from __future__ import annotations

import asyncio
import os
import threading
import time
import uuid

import psycopg

from angela_queue import task

SYNC = "chaos_sync"
ASYNC = "chaos_async"
BATCH = "chaos_batch"
KINDS = (SYNC, ASYNC, BATCH)

RUNS_TABLE_SQL = """
CREATE TABLE IF NOT EXISTS public.chaos_runs (
    run_id uuid NOT NULL,
    cid bigint NOT NULL,
    pid integer NOT NULL,
    kind text NOT NULL,
    started_at timestamptz NOT NULL DEFAULT clock_timestamp(),
    PRIMARY KEY (run_id, cid)
)
"""

RECORD = """
INSERT INTO public.chaos_runs (run_id, cid, pid, kind)
SELECT %s, cid, %s, %s FROM unnest(%s::bigint[]) AS cid
ON CONFLICT DO NOTHING
"""

# How long a handler keeps trying to record its run while the database is away.
RECORD_RETRY_S = 120.0
RETRY_FIRST_S, RETRY_MAX_S = 0.05, 1.0

_local = threading.local()
_async_conn: psycopg.AsyncConnection | None = None
_async_lock: asyncio.Lock | None = None


def _dsn() -> str:
    return os.environ["AQ_CHAOS_DSN"]


def _connect() -> psycopg.Connection:
    return psycopg.connect(_dsn(), autocommit=True, connect_timeout=3, application_name="aq-chaos-handler")


def record_sync(cids: list[int], kind: str) -> None:
    """Write one run of ``cids`` on this thread's connection, retrying through outages."""
    run_id = uuid.uuid4()
    deadline = time.monotonic() + RECORD_RETRY_S
    delay = RETRY_FIRST_S
    while True:
        conn = getattr(_local, "conn", None)
        try:
            if conn is None or conn.closed:
                conn = _local.conn = _connect()
            conn.execute(RECORD, (run_id, os.getpid(), kind, cids))
            return
        except psycopg.OperationalError:
            if conn is not None:
                conn.close()
            _local.conn = None
            if time.monotonic() > deadline:
                raise
            time.sleep(delay)
            delay = min(delay * 2, RETRY_MAX_S)


async def record_async(cids: list[int], kind: str) -> None:
    """The same, on the process's async connection."""
    global _async_conn, _async_lock
    if _async_lock is None:
        _async_lock = asyncio.Lock()
    run_id = uuid.uuid4()
    deadline = time.monotonic() + RECORD_RETRY_S
    delay = RETRY_FIRST_S
    async with _async_lock:
        while True:
            try:
                if _async_conn is None or _async_conn.closed:
                    _async_conn = await psycopg.AsyncConnection.connect(
                        _dsn(), autocommit=True, connect_timeout=3, application_name="aq-chaos-handler")
                await _async_conn.execute(RECORD, (run_id, os.getpid(), kind, cids))
                return
            except psycopg.OperationalError:
                if _async_conn is not None:
                    await _async_conn.close()
                _async_conn = None
                if time.monotonic() > deadline:
                    raise
                await asyncio.sleep(delay)
                delay = min(delay * 2, RETRY_MAX_S)


@task(SYNC)
def chaos_sync(cid: int, ms: float = 5.0, **_rest) -> int:
    """A sync handler: runs on the worker's handler threads."""
    record_sync([cid], SYNC)
    time.sleep(ms / 1000.0)
    return cid


@task(ASYNC)
async def chaos_async(cid: int, ms: float = 5.0, **_rest) -> int:
    """An ``async def`` handler: runs on the worker's event loop."""
    await record_async([cid], ASYNC)
    await asyncio.sleep(ms / 1000.0)
    return cid


@task(BATCH, batch=True)
def chaos_batch(payloads: list[dict]) -> list[int]:
    """A batch handler: low-priority tasks of this kind arrive up to 5 at a time, one run for all."""
    cids = [int(p["cid"]) for p in payloads]
    record_sync(cids, BATCH)
    time.sleep(max(float(p.get("ms", 5.0)) for p in payloads) / 1000.0)
    return cids
