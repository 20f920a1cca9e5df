"""current_task() inside sync, async and batch handlers, and the outcomes a
handler chooses: Snooze (attempt not counted), Discard (no retries), Retry
(at a chosen time). Real worker processes."""

from __future__ import annotations

import datetime as dt

import pytest

from angela_queue import Discard, Retry, Snooze, current_task
from fix_procs import APP_PRELUDE, RUNS_TABLE_SQL, query, scalar, wait_until

FAST = ["--poll-interval", "0.2", "--heartbeat-interval", "0.5"]

CONTEXT_APP = APP_PRELUDE + """
import asyncio, time
from angela_queue import Discard, Retry, Snooze, current_task, task

def described():
    t = current_task()
    return {"id": t.id, "kind": t.kind, "queue": t.queue, "attempt": t.attempt, "max_attempts": t.max_attempts,
            "priority": t.priority, "effective_priority": t.effective_priority,
            "deadline": t.deadline.isoformat(), "created_at": t.created_at.isoformat(),
            "started_at": t.started_at.isoformat(), "cancelled": t.cancelled}

@task("whoami", priority=7, max_attempts=4)
def whoami():
    return described()

@task("async_whoami")
async def async_whoami():
    await asyncio.sleep(0)
    return described()

@task("batch_whoami", batch=True)
def batch_whoami(payloads):
    t = current_task()
    return [{"first": t.id, "ids": [c.id for c in t.batch], "n": p["n"]} for p in payloads]

@task("snoozer")
def snoozer(n):
    record(n)
    t = current_task()
    # Snooze twice, then succeed: the attempts stay at 1.
    if scalar_runs(n) < 3:
        raise Snooze(0.2)
    return {"attempt": t.attempt}

def scalar_runs(n):
    return _conn.execute("SELECT count(*) FROM public.runs WHERE n = %s", (n,)).fetchone()[0]

@task("discarder", max_attempts=5)
def discarder():
    raise Discard("the order was deleted")

@task("retrier", max_attempts=3)
def retrier(n):
    record(n)
    if current_task().attempt == 1:
        raise Retry(after=0.3, reason="the bank asked us to come back later")
    return "second time lucky"

@task("patient")
def patient(n):
    record(n)
    while not current_task().cancelled:
        time.sleep(0.05)
    return "stopped early"

@task("async_snoozer")
async def async_snoozer(n):
    record(n)
    if scalar_runs(n) < 2:
        raise Snooze(0)
    return current_task().attempt
"""


@pytest.fixture
def worker(dsn, write_app, start_worker):
    query(dsn, RUNS_TABLE_SQL)
    started = start_worker(write_app(CONTEXT_APP), "--concurrency", "4", "--batch-size", "5", "--batch-wait", "0.3",
                           *FAST)
    # Its kinds' @task defaults apply to enqueues from here (this process imports no handlers).
    wait_until(lambda: scalar(dsn, "SELECT count(*) FROM angela_queue.kinds") > 0, details=started.log)
    return started


def finished(dsn, tid, worker, status="succeeded"):
    return wait_until(lambda: (r := query(dsn, "SELECT * FROM angela_queue.tasks WHERE id = %s", (tid,))[0])
                      ["status"] == status and r, message=f"task {tid} {status}", details=worker.log)


def test_a_handler_reads_its_own_task(dsn, client, worker):
    task = client.enqueue("whoami")
    row = finished(dsn, task.id, worker)
    seen = row["result"]
    assert (seen["id"], seen["kind"], seen["queue"], seen["attempt"], seen["max_attempts"], seen["priority"]) == \
        (task.id, "whoami", "default", 1, 4, 7)
    assert seen["effective_priority"] >= 7 and seen["cancelled"] is False
    assert dt.datetime.fromisoformat(seen["deadline"]) == row["deadline"]
    assert dt.datetime.fromisoformat(seen["created_at"]) == row["created_at"]
    assert dt.datetime.fromisoformat(seen["started_at"]) == row["started_at"]


def test_an_async_handler_reads_its_own_task(dsn, client, worker):
    task = client.enqueue("async_whoami", priority=8)
    seen = finished(dsn, task.id, worker)["result"]
    assert (seen["id"], seen["attempt"], seen["priority"]) == (task.id, 1, 8)


def test_a_batch_handler_sees_every_task_of_its_call(dsn, client, worker):
    tasks = client.enqueue_many([{"kind": "batch_whoami", "payload": {"n": i}, "priority": 2} for i in range(3)])
    ids = [t.id for t in tasks]
    results = [finished(dsn, tid, worker)["result"] for tid in ids]
    for tid, result in zip(ids, results):
        # Each task ran in a call whose context lists it, first task first.
        assert tid in result["ids"] and result["first"] == result["ids"][0] and set(result["ids"]) <= set(ids)
    assert max(len(r["ids"]) for r in results) > 1     # they were batched together


def test_snooze_reschedules_without_counting_the_attempt(dsn, client, worker):
    task = client.enqueue("snoozer", {"n": 1}, max_attempts=1)   # one attempt: a counted snooze would fail it
    row = finished(dsn, task.id, worker)
    assert scalar(dsn, "SELECT count(*) FROM public.runs WHERE n = 1") == 3
    assert row["attempts"] == 1 and row["result"] == {"attempt": 1}
    assert row["errors"] == [] and row["last_error"] is None and row["failed_at"] is None


def test_an_async_handler_snoozes_for_zero_seconds(dsn, client, worker):
    task = client.enqueue("async_snoozer", {"n": 2}, max_attempts=1)
    row = finished(dsn, task.id, worker)
    assert row["result"] == 1 and scalar(dsn, "SELECT count(*) FROM public.runs WHERE n = 2") == 2


def test_discard_fails_at_once_whatever_attempts_remain(dsn, client, worker):
    task = client.enqueue("discarder")
    row = finished(dsn, task.id, worker, status="failed")
    assert row["attempts"] == 1 and row["max_attempts"] == 5
    assert row["last_error"] == "Discard: the order was deleted"


def test_retry_comes_back_at_the_time_the_handler_chose(dsn, client, worker):
    task = client.enqueue("retrier", {"n": 3})
    row = finished(dsn, task.id, worker)
    runs = query(dsn, "SELECT at FROM public.runs WHERE n = 3 ORDER BY at")
    assert len(runs) == 2 and row["attempts"] == 2 and row["result"] == "second time lucky"
    assert (runs[1]["at"] - runs[0]["at"]).total_seconds() >= 0.3
    assert row["errors"][0]["error"] == "Retry: the bank asked us to come back later"


def test_a_long_handler_sees_cancelled_and_stops_cooperatively(dsn, client, worker):
    task = client.enqueue("patient", {"n": 4})
    wait_until(lambda: scalar(dsn, "SELECT count(*) FROM public.runs WHERE n = 4") == 1, details=worker.log)
    assert client.cancel(task.id).requested
    row = finished(dsn, task.id, worker, status="cancelled")
    assert row["result"] == "stopped early"


def test_current_task_outside_a_handler_says_so():
    with pytest.raises(RuntimeError, match="only available while a task handler runs"):
        current_task()


@pytest.mark.parametrize("make", [lambda: Snooze(-1), lambda: Snooze(float("nan")), lambda: Snooze(True),
                                  lambda: Retry(after=float("inf")), lambda: Snooze(1e12)])
def test_bad_delays_are_refused_where_they_are_raised(make):
    with pytest.raises(ValueError, match="seconds"):
        make()


def test_delays_take_timedeltas_and_discard_a_reason():
    assert Snooze(dt.timedelta(minutes=2)).seconds == 120.0
    assert Retry(after=dt.timedelta(seconds=3)).after == 3.0 and Retry().after is None
    assert Discard("gone").reason == "gone"
