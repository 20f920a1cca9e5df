"""Hostile handlers: whatever a handler raises (BaseException included), however it
exits, the attempt is counted, the error is clear, the worker keeps serving,
and canary tasks queued before and after each run exactly once."""

from __future__ import annotations

import pytest

from fix_procs import APP_PRELUDE, RUNS_TABLE_SQL, query, scalar, wait_until

FAST = ["--poll-interval", "0.2", "--heartbeat-interval", "0.5", "--backoff-base", "0.05", "--backoff-max", "0.1"]

APP = APP_PRELUDE + """
import asyncio, os, sys, time
from angela_queue import task

class Custom(BaseException):
    pass

RAISES = {"SystemExit": lambda: SystemExit(3), "KeyboardInterrupt": KeyboardInterrupt,
          "GeneratorExit": GeneratorExit, "Custom": lambda: Custom("not an Exception")}

@task("canary")
def canary(n):
    record(n)

@task("slow_canary")
def slow_canary(n, seconds=1.0):
    time.sleep(seconds)
    record(n)

@task("bad_sync", max_attempts=3)
def bad_sync(what, n):
    record(n)
    if what == "exit":
        sys.exit(3)
    raise RAISES[what]()

@task("bad_async", max_attempts=3)
async def bad_async(what, n):
    record(n)
    await asyncio.sleep(0)
    raise RAISES[what]()

@task("bad_async_timeout", max_attempts=2, timeout=5)
async def bad_async_timeout(n):
    record(n)
    raise SystemExit("from inside asyncio.timeout")

@task("bad_batch", batch=True, max_attempts=2)
def bad_batch(payloads):
    for p in payloads:
        record(p["n"])
    raise KeyboardInterrupt("batch")

@task("hard_exit", max_attempts=2)
def hard_exit(n):
    record(n)
    os._exit(7)
"""


@pytest.fixture
def app(dsn, write_app):
    query(dsn, RUNS_TABLE_SQL)
    return write_app(APP)


def runs(dsn, n):
    return scalar(dsn, "SELECT count(*) FROM public.runs WHERE n = %s", (n,))


def canaries(client, first: int, count: int = 3) -> list[int]:
    return [client.enqueue("canary", {"n": first + i}).id for i in range(count)]


@pytest.mark.parametrize("kind", ["bad_sync", "bad_async"])
@pytest.mark.parametrize("what", ["SystemExit", "KeyboardInterrupt", "GeneratorExit", "Custom"])
def test_a_base_exception_is_a_counted_failed_attempt_and_the_worker_keeps_serving(
        dsn, client, app, start_worker, kind, what):
    before = canaries(client, 100)
    bad = client.enqueue(kind, {"what": what, "n": 1}, max_attempts=3)  # by name: this process has no handler
    after = canaries(client, 200)
    worker = start_worker(app, "--concurrency", "2", *FAST)
    row = wait_until(lambda: query(dsn, "SELECT * FROM angela_queue.tasks WHERE id = %s AND status = 'failed'",
                                   (bad.id,)), message=f"{kind} raising {what} to fail", details=worker.log)[0]
    assert row["attempts"] == 3 and runs(dsn, 1) == 3          # every attempt ran, and counted
    assert row["last_error"].startswith(what) and "BaseException" in row["last_error"]
    wait_until(lambda: all(runs(dsn, n) == 1 for n in (100, 101, 102, 200, 201, 202)),
               message="every canary to run", details=worker.log)
    assert worker.proc.poll() is None, "the worker died:\n" + worker.log()
    statuses = {r["id"]: r["status"] for r in query(dsn, "SELECT id, status FROM angela_queue.tasks")}
    assert all(statuses[i] == "succeeded" for i in before + after)
    assert worker.stop() == 0


def test_sys_exit_in_a_sync_handler_does_not_touch_a_task_held_beside_it(dsn, client, app, start_worker):
    slow = client.enqueue("slow_canary", {"n": 50, "seconds": 1.5})
    worker = start_worker(app, "--concurrency", "2", *FAST)
    wait_until(lambda: scalar(dsn, "SELECT status FROM angela_queue.tasks WHERE id = %s", (slow.id,)) == "running")
    bad = client.enqueue("bad_sync", {"what": "exit", "n": 2}, max_attempts=3)
    wait_until(lambda: scalar(dsn, "SELECT status FROM angela_queue.tasks WHERE id = %s", (bad.id,)) == "failed",
               details=worker.log)
    wait_until(lambda: scalar(dsn, "SELECT status FROM angela_queue.tasks WHERE id = %s", (slow.id,))
               == "succeeded", details=worker.log)
    row = query(dsn, "SELECT attempts, last_error FROM angela_queue.tasks WHERE id = %s", (bad.id,))[0]
    assert row["attempts"] == 3 and row["last_error"].startswith("SystemExit: 3")
    assert runs(dsn, 50) == 1                                   # co-held: run once, not released or retried
    assert worker.proc.poll() is None
    assert worker.stop() == 0


def test_a_base_exception_under_a_timeout_and_in_a_batch_handler_are_failed_attempts(
        dsn, client, app, start_worker):
    timed = client.enqueue("bad_async_timeout", {"n": 3}, max_attempts=2)
    batch = [t.id for t in client.enqueue_many(
        [{"kind": "bad_batch", "payload": {"n": 10 + i}, "priority": 2, "max_attempts": 2} for i in range(3)])]
    canaries(client, 300)
    worker = start_worker(app, "--batch-wait", "0.2", *FAST)
    ids = [timed.id, *batch]
    wait_until(lambda: scalar(dsn, "SELECT count(*) FROM angela_queue.tasks WHERE id = ANY(%s) AND status = "
                                   "'failed'", (ids,)) == 4, details=worker.log)
    rows = {r["id"]: r for r in query(dsn, "SELECT * FROM angela_queue.tasks WHERE id = ANY(%s)", (ids,))}
    assert rows[timed.id]["attempts"] == 2 and rows[timed.id]["last_error"].startswith("SystemExit")
    assert all(rows[i]["attempts"] == 2 and rows[i]["last_error"].startswith("KeyboardInterrupt") for i in batch)
    wait_until(lambda: all(runs(dsn, n) == 1 for n in (300, 301, 302)), details=worker.log)
    assert worker.proc.poll() is None
    assert worker.stop() == 0


def test_a_handler_that_kills_its_process_counts_its_attempts_and_stops(dsn, client, app, start_supervisor):
    before = canaries(client, 400)
    bad = client.enqueue("hard_exit", {"n": 4}, max_attempts=2)
    after = canaries(client, 500)
    sup = start_supervisor(app, "--min-workers", "1", "--base-workers", "1", "--max-workers", "1",
                           *FAST, env={"ANGELA_QUEUE_ROOM_MAX_CPU_PERCENT": "101"})
    wait_until(lambda: scalar(dsn, "SELECT status FROM angela_queue.tasks WHERE id = %s", (bad.id,)) == "failed",
               timeout=60, details=sup.log)
    row = query(dsn, "SELECT attempts, last_error FROM angela_queue.tasks WHERE id = %s", (bad.id,))[0]
    assert row["attempts"] == 2 and "exited with status 7" in row["last_error"]
    assert runs(dsn, 4) == 2
    wait_until(lambda: all(runs(dsn, n) == 1 for n in (400, 401, 402, 500, 501, 502)), timeout=60,
               details=sup.log)
    assert sup.stop() == 0
    assert {r["status"] for r in query(dsn, "SELECT status FROM angela_queue.tasks WHERE id = ANY(%s)",
                                       (before + after,))} == {"succeeded"}
