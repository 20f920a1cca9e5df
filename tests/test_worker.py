"""The worker as a real process: claims, handlers, retries, timeouts, batches,
wake-ups, graceful stop, connection loss and several workers at once."""

from __future__ import annotations

import signal

import psycopg

from fix_db import backdate
from fix_procs import APP_PRELUDE, RUNS_TABLE_SQL, query, scalar, wait_until

FAST = ["--poll-interval", "0.2", "--heartbeat-interval", "0.5"]

BASIC_APP = APP_PRELUDE + """
import asyncio, time
from angela_queue import task

@task("add")
def add(a, b):
    return a + b

@task("async_add")
async def async_add(a, b):
    await asyncio.sleep(0)
    return a + b

@task("record")
def record_run(n):
    record(n)

@task("boom", max_attempts=3, backoff_base=0.05, backoff_max=0.1)
def boom(n=0):
    record(n)
    raise ValueError("kaboom " + str(n))

@task("bad_result")
def bad_result():
    return object()

@task("slow_async", timeout=0.3)
async def slow_async():
    await asyncio.sleep(30)

@task("sleep")
def sleep(seconds, n=0):
    record(n)
    time.sleep(seconds)
    return "slept"
"""


def setup_runs(dsn):
    query(dsn, RUNS_TABLE_SQL)


def task_row(dsn, tid):
    return query(dsn, "SELECT * FROM angela_queue.tasks WHERE id = %s", (tid,))[0]


def wait_status(dsn, tid, *statuses, timeout=30):
    return wait_until(lambda: task_row(dsn, tid)["status"] in statuses and task_row(dsn, tid),
                      timeout=timeout, message=f"task {tid} to reach {statuses}")


def test_runs_sync_and_async_handlers_and_stores_results(dsn, client, write_app, start_worker):
    setup_runs(dsn)
    app = write_app(BASIC_APP)
    a = client.enqueue("add", {"a": 2, "b": 3})
    b = client.enqueue("async_add", {"a": 4, "b": 5})
    worker = start_worker(app, "--concurrency", "2", *FAST)
    assert wait_status(dsn, a.id, "succeeded")["result"] == 5
    row = wait_status(dsn, b.id, "succeeded")
    assert row["result"] == 9 and row["attempts"] == 1 and row["finished_at"] >= row["started_at"]
    assert worker.stop() == 0


def test_unknown_kind_is_retried_with_backoff_and_the_worker_keeps_going(dsn, client, write_app, start_worker):
    """A rolling deploy gives old workers kinds they do not know yet: the task is
    retried with backoff, at least 30 s apart (long enough for a worker that
    knows it to come up), and fails only once its attempts are spent."""
    app = write_app(BASIC_APP)
    unknown = client.enqueue("no_such_kind", max_attempts=3)
    ok = client.enqueue("add", {"a": 1, "b": 1})
    start_worker(app, *FAST, "--backoff-base", "0.05", "--backoff-max", "0.1")
    for attempt in (1, 2):
        row = wait_until(lambda: query(dsn, "SELECT *, run_at - failed_at AS delay FROM angela_queue.tasks "
                                            "WHERE id = %s AND status = 'scheduled' AND attempts = %s",
                                       (unknown.id, attempt)))[0]
        assert row["delay"].total_seconds() >= 14.9          # 30 s, doubling, with 50-100% jitter
        assert "no_such_kind" in row["last_error"] and "add" in row["last_error"]
        query(dsn, "UPDATE angela_queue.tasks SET run_at = now() WHERE id = %s", (unknown.id,))  # travel in time
    row = wait_status(dsn, unknown.id, "failed")
    assert row["attempts"] == 3 and len(row["errors"]) == 3
    assert wait_status(dsn, ok.id, "succeeded")["result"] == 2


def test_raising_handler_retries_with_backoff_then_fails(dsn, client, write_app, start_worker):
    setup_runs(dsn)
    app = write_app(BASIC_APP)
    # Enqueued by kind from this process, where the handler is not registered:
    # max_attempts is given explicitly, like any producer would.
    t = client.enqueue("boom", {"n": 7}, max_attempts=3)
    start_worker(app, *FAST)
    row = wait_status(dsn, t.id, "failed")
    assert row["attempts"] == 3
    assert row["last_error"].startswith("ValueError: kaboom 7")
    assert "Traceback" in row["last_error"]
    assert scalar(dsn, "SELECT count(*) FROM public.runs WHERE n = 7") == 3


def test_non_serialisable_result_fails_the_task_clearly(dsn, client, write_app, start_worker):
    app = write_app(BASIC_APP)
    t = client.enqueue("bad_result")
    start_worker(app, *FAST)
    row = wait_status(dsn, t.id, "failed")
    assert "not JSON-serialisable" in row["last_error"]


def test_async_timeout_is_a_failed_attempt(dsn, client, write_app, start_worker):
    app = write_app(BASIC_APP)
    t = client.enqueue("slow_async", max_attempts=1)
    start_worker(app, *FAST)
    row = wait_status(dsn, t.id, "failed")
    assert "timed out after 0.3s" in row["last_error"]


def test_sync_handler_overrunning_its_timeout_retires_the_worker(dsn, client, write_app, start_worker):
    setup_runs(dsn)
    app = write_app(BASIC_APP)
    t = client.enqueue("sleep", {"seconds": 60}, timeout=0.3, max_attempts=2)
    worker = start_worker(app, *FAST)
    # The attempt is failed at the timeout and scheduled for a retry, and the
    # process exits 75 so a supervisor replaces it (the thread cannot be killed).
    assert worker.wait(30) == 75
    row = task_row(dsn, t.id)
    assert row["status"] == "scheduled" and row["attempts"] == 1
    assert "timed out after 0.3s" in row["last_error"]


def test_low_priority_batch_handler_receives_a_list(dsn, client, write_app, start_worker):
    app = write_app(APP_PRELUDE + """
from angela_queue import task
@task("digest", batch=True)
def digest(payloads):
    record(len(payloads))
    return [p["n"] * 10 for p in payloads]
""")
    setup_runs(dsn)
    tasks = client.enqueue_many([{"kind": "digest", "payload": {"n": i}, "priority": 2} for i in range(5)])
    start_worker(app, *FAST)
    rows = [wait_status(dsn, t.id, "succeeded") for t in tasks]
    assert [r["result"] for r in rows] == [0, 10, 20, 30, 40]
    # One call with all five payloads.
    assert [r["n"] for r in query(dsn, "SELECT n FROM public.runs")] == [5]


def test_low_priority_batch_of_plain_kind_runs_one_by_one(dsn, client, write_app, start_worker):
    setup_runs(dsn)
    app = write_app(BASIC_APP)
    tasks = client.enqueue_many([{"kind": "record", "payload": {"n": i}, "priority": 1} for i in range(3)])
    start_worker(app, *FAST, "--batch-wait", "0.2")
    for t in tasks:
        wait_status(dsn, t.id, "succeeded")
    assert sorted(r["n"] for r in query(dsn, "SELECT n FROM public.runs")) == [0, 1, 2]


def test_batch_collection_never_delays_a_critical_task(dsn, client, write_app, start_worker):
    setup_runs(dsn)
    app = write_app(BASIC_APP)
    # One low task starts a batch that waits 30 s to fill. A critical task
    # enqueued meanwhile must start long before that batch is released.
    low = client.enqueue("record", {"n": 1}, priority=1)
    start_worker(app, "--batch-wait", "30", *FAST)
    wait_status(dsn, low.id, "running")
    critical = client.enqueue("record", {"n": 99}, priority=10)
    wait_status(dsn, critical.id, "succeeded", timeout=20)
    assert task_row(dsn, low.id)["status"] == "running"  # still collecting its batch
    assert scalar(dsn, "SELECT count(*) FROM public.runs WHERE n = 1") == 0


def _listening(dsn):
    wait_until(lambda: scalar(dsn, "SELECT count(*) FROM pg_stat_activity WHERE application_name = "
                                   "'angela-queue-listen' AND datname = current_database()"),
               message="listener connected")


def test_a_critical_task_starts_at_once_while_every_slot_is_busy(dsn, client, write_app, start_worker):
    """The critical slot (worker/slots.py): with its one ordinary slot held by
    a long task, the worker still runs a critical task on its NOTIFY (the
    poll is 120 s), and an ordinary task queued first stays queued: it never
    takes the critical slot."""
    setup_runs(dsn)
    app = write_app(BASIC_APP)
    long = client.enqueue("sleep", {"seconds": 60, "n": 1}, priority=5)
    start_worker(app, "--concurrency", "1", "--poll-interval", "120", "--heartbeat-interval", "0.5")
    wait_status(dsn, long.id, "running")
    _listening(dsn)
    ordinary = client.enqueue("record", {"n": 2}, priority=8)
    critical = client.enqueue("record", {"n": 3}, priority=9)
    wait_status(dsn, critical.id, "succeeded", timeout=20)
    assert task_row(dsn, ordinary.id)["status"] == "queued"
    assert task_row(dsn, long.id)["status"] == "running"


def test_a_critical_task_that_comes_due_without_an_insert_finds_the_critical_slot(dsn, client, write_app,
                                                                                    start_worker):
    """No NOTIFY for a delayed task becoming due: the poll is the backstop."""
    setup_runs(dsn)
    app = write_app(BASIC_APP)
    long = client.enqueue("sleep", {"seconds": 60, "n": 1}, priority=5)
    start_worker(app, "--concurrency", "1", *FAST)
    wait_status(dsn, long.id, "running")
    delayed = client.enqueue("record", {"n": 2}, priority=10, delay=0.5)
    wait_status(dsn, delayed.id, "succeeded", timeout=20)
    assert task_row(dsn, long.id)["status"] == "running"


def test_without_critical_slots_a_critical_task_waits_for_a_slot(dsn, client, write_app, start_worker):
    setup_runs(dsn)
    app = write_app(BASIC_APP)
    busy = client.enqueue("sleep", {"seconds": 1.5, "n": 1}, priority=5)
    start_worker(app, "--concurrency", "1", "--critical-slots", "0", *FAST)
    wait_status(dsn, busy.id, "running")
    critical = client.enqueue("record", {"n": 2}, priority=10)
    done = wait_status(dsn, critical.id, "succeeded", timeout=20)
    assert done["started_at"] >= task_row(dsn, busy.id)["finished_at"]


def test_a_low_batch_of_a_plain_kind_gives_its_slot_back_between_its_tasks(dsn, client, write_app, start_worker):
    """A batch of a kind without a batch handler runs one task at a time, each
    in a slot taken at its start and given back at its end: a critical task
    that comes while the batch's first task runs starts in the slot that task
    gives back, before the batch's other tasks (no critical slots here: the
    one ordinary slot is all there is). Back to back in one slot, the batch
    held it until its last task was done."""
    setup_runs(dsn)
    app = write_app(BASIC_APP)
    client.enqueue_many([{"kind": "sleep", "payload": {"seconds": 0.8, "n": n}, "priority": 2} for n in (1, 2, 3)])
    start_worker(app, "--concurrency", "1", "--critical-slots", "0", "--batch-size", "3", "--batch-wait", "30",
                 *FAST)
    wait_until(lambda: scalar(dsn, "SELECT count(*) FROM public.runs") == 1, message="the batch's first task ran")
    # All three were collected before the batch started (it starts full).
    assert scalar(dsn, "SELECT count(*) FROM angela_queue.tasks WHERE kind = 'sleep' AND status = 'running'") == 3
    critical = client.enqueue("record", {"n": 9}, priority=9)
    wait_until(lambda: scalar(dsn, "SELECT count(*) FROM public.runs") == 4, timeout=30, message="all four ran")
    assert [r["n"] for r in query(dsn, "SELECT n FROM public.runs ORDER BY at")] == [1, 9, 2, 3]
    assert task_row(dsn, critical.id)["status"] == "succeeded"


def test_notify_wakes_an_idle_worker_without_polling(dsn, client, write_app, start_worker):
    app = write_app(BASIC_APP)
    worker = start_worker(app, "--poll-interval", "120", "--heartbeat-interval", "0.5")
    wait_until(lambda: scalar(dsn, "SELECT count(*) FROM angela_queue.workers WHERE status = 'idle'"),
               message="worker registered")
    # Give the worker's LISTEN a moment to be in place: it announces itself only
    # after it has listened, so wait for that log line rather than sleeping.
    wait_until(lambda: scalar(dsn, "SELECT count(*) FROM pg_stat_activity WHERE application_name = "
                                   "'angela-queue-listen' AND datname = current_database()"),
               message="listener connected")
    t = client.enqueue("add", {"a": 1, "b": 2})
    # Polling is 120 s: only the NOTIFY can get it started this soon.
    row = wait_status(dsn, t.id, "succeeded", timeout=20)
    assert row["result"] == 3
    assert worker.proc.poll() is None


def test_delayed_task_runs_when_due_without_notify(dsn, client, write_app, start_worker):
    app = write_app(BASIC_APP)
    start_worker(app, *FAST)
    t = client.enqueue("add", {"a": 1, "b": 1}, delay=1.0)
    assert task_row(dsn, t.id)["status"] == "scheduled"
    row = wait_status(dsn, t.id, "succeeded", timeout=20)
    assert row["started_at"] >= row["run_at"]


def test_sigterm_releases_unfinished_work_and_marks_worker_stopped(dsn, client, write_app, start_worker):
    setup_runs(dsn)
    app = write_app(BASIC_APP)
    t = client.enqueue("sleep", {"seconds": 30, "n": 1})
    worker = start_worker(app, "--shutdown-grace", "0.5", *FAST)
    wait_until(lambda: scalar(dsn, "SELECT count(*) FROM public.runs WHERE n = 1"), message="handler started")
    worker.signal(signal.SIGTERM)
    assert worker.wait(30) == 0
    row = task_row(dsn, t.id)
    assert row["status"] == "queued" and row["attempts"] == 0 and row["worker_id"] is None
    health = query(dsn, "SELECT status, pid FROM angela_queue.worker_health")
    assert health == [{"status": "stopped", "pid": worker.pid}]


def test_sigterm_lets_a_short_task_finish_within_grace(dsn, client, write_app, start_worker):
    setup_runs(dsn)
    app = write_app(BASIC_APP)
    t = client.enqueue("sleep", {"seconds": 1, "n": 2})
    worker = start_worker(app, "--shutdown-grace", "20", *FAST)
    wait_until(lambda: scalar(dsn, "SELECT count(*) FROM public.runs WHERE n = 2"), message="handler started")
    worker.signal(signal.SIGTERM)
    assert worker.wait(30) == 0
    assert task_row(dsn, t.id)["status"] == "succeeded"
    assert scalar(dsn, "SELECT count(*) FROM angela_queue.tasks WHERE status = 'running'") == 0


def test_heartbeat_row_reports_statistics(dsn, client, write_app, start_worker):
    app = write_app(BASIC_APP)
    client.enqueue_many([{"kind": "add", "payload": {"a": i, "b": 1}} for i in range(5)])
    client.enqueue("no_such_kind")
    worker = start_worker(app, *FAST)
    row = wait_until(lambda: next(iter(query(
        dsn, "SELECT * FROM angela_queue.worker_health WHERE tasks_completed = 5 AND tasks_failed = 1")), None),
        message="heartbeat with statistics")
    assert row["pid"] == worker.pid and row["host"]
    assert row["status"] in ("idle", "active")
    assert row["avg_processing_time_ms"] >= 0 and row["last_active"] is not None


def test_worker_survives_losing_its_connection(dsn, client, write_app, start_worker):
    setup_runs(dsn)
    app = write_app(BASIC_APP)
    start_worker(app, "--concurrency", "4", *FAST)
    first = client.enqueue_many([{"kind": "record", "payload": {"n": i}} for i in range(50)])
    for t in first:
        wait_status(dsn, t.id, "succeeded")
    # Cut every connection the worker has, server side.
    killed = scalar(dsn, "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
                         "WHERE application_name ~ '^angela-queue-(worker|listen|heartbeat)' AND datname = current_database()")
    assert killed >= 2
    second = client.enqueue_many([{"kind": "record", "payload": {"n": 100 + i}} for i in range(50)])
    for t in second:
        wait_status(dsn, t.id, "succeeded")
    counts = query(dsn, "SELECT n, count(*) AS c FROM public.runs GROUP BY n HAVING count(*) > 1")
    assert counts == []
    assert scalar(dsn, "SELECT count(*) FROM public.runs") == 100


def test_a_task_taken_from_the_worker_while_its_connection_was_down_is_reported_on_reconnect(
        dsn, client, write_app, start_worker):
    # What a claim lost in a database crash looks like to a surviving worker
    # (--claim-commit fast): its task is queued again in the database while
    # its handler still runs here. Here by hand: the one slot is busy, so the
    # worker cannot claim the task again itself before its reconnect.
    setup_runs(dsn)
    app = write_app(BASIC_APP)
    worker = start_worker(app, "--concurrency", "1", *FAST)
    tid = client.enqueue("sleep", {"seconds": 2, "n": 1}).id
    wait_status(dsn, tid, "running")
    query(dsn, "UPDATE angela_queue.tasks SET status = 'queued', worker_id = NULL, started_at = NULL, "
               "attempts = 0 WHERE id = %s", (tid,))
    scalar(dsn, "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
                "WHERE application_name ~ '^angela-queue-worker' AND datname = current_database()")
    wait_until(lambda: "no longer this worker's in the database" in worker.log(), details=worker.log,
               message="the reconnect's report")
    assert f"they run again: {tid}" in worker.log()
    # The first run's outcome matches nothing; the task runs again, and once.
    done = wait_status(dsn, tid, "succeeded")
    assert done["attempts"] == 1
    assert scalar(dsn, "SELECT count(*) FROM public.runs WHERE n = 1") == 2


def test_several_worker_processes_drain_one_queue_exactly_once(dsn, client, write_app, start_worker):
    setup_runs(dsn)
    app = write_app(BASIC_APP)
    n = 600
    client.enqueue_many([{"kind": "record", "payload": {"n": i}, "priority": 5 + i % 5} for i in range(n)])
    workers = [start_worker(app, "--concurrency", "5", *FAST) for _ in range(3)]
    wait_until(lambda: scalar(dsn, "SELECT count(*) FROM angela_queue.tasks WHERE status = 'succeeded'") == n,
               timeout=60, message="all tasks succeeded")
    assert scalar(dsn, "SELECT count(*) FROM public.runs") == n
    assert scalar(dsn, "SELECT count(DISTINCT n) FROM public.runs") == n
    assert scalar(dsn, "SELECT count(DISTINCT pid) FROM public.runs") >= 2
    for w in workers:
        assert w.stop() == 0


def test_priority_order_with_one_worker(dsn, client, write_app, start_worker, conn):
    setup_runs(dsn)
    app = write_app(BASIC_APP)
    # n encodes the expected position. The backdated low task (priority 2,
    # waiting 200 minutes: 2 + 20 = 22) outranks the fresh critical one.
    conn.execute("""INSERT INTO angela_queue.tasks (kind, payload, priority) VALUES
        ('record', '{"n": 4}', 5), ('record', '{"n": 2}', 9), ('record', '{"n": 1}', 2), ('record', '{"n": 3}', 7)""")
    backdate(conn, scalar(dsn, "SELECT id FROM angela_queue.tasks WHERE payload = '{\"n\": 1}'"), 200)
    # One slot and no critical slot: with one, the critical task (n=2) would
    # run beside n=1 instead of after it, and their order be a race.
    start_worker(app, "--concurrency", "1", "--critical-slots", "0", *FAST)
    wait_until(lambda: scalar(dsn, "SELECT count(*) FROM public.runs") == 4, message="all ran")
    assert [r["n"] for r in query(dsn, "SELECT n FROM public.runs ORDER BY at")] == [1, 2, 3, 4]


def test_bad_app_module_is_a_clear_error(dsn, app_dir):
    import subprocess
    import sys
    result = subprocess.run([sys.executable, "-m", "angela_queue", "--dsn", dsn, "worker", "--app", "nope_missing"],
                            cwd=app_dir, capture_output=True, text=True, timeout=60)
    assert result.returncode != 0
    assert "nope_missing" in result.stderr
    assert "Traceback" not in result.stderr


REVIEW_APP = APP_PRELUDE + """
import time
from angela_queue import task

@task("nul_result")
def nul_result():
    return {"text": "a\\x00b"}

@task("nul_error", max_attempts=1)
def nul_error():
    raise ValueError("bad\\x00byte")

@task("slow")
def slow(n, seconds=0.05):
    record(n)
    time.sleep(seconds)
"""


def test_low_priority_tasks_of_many_kinds_are_not_hoarded(dsn, client, write_app, start_worker):
    setup_runs(dsn)
    app = write_app(APP_PRELUDE + """
from angela_queue import task
def make(kind):
    @task(kind)
    def handler(n):
        record(n)
for i in range(12):
    make(f"kind{i}")
""")
    client.enqueue_many([{"kind": f"kind{i}", "payload": {"n": i}, "priority": 2} for i in range(12)])
    start_worker(app, "--concurrency", "1", "--batch-wait", "0.5", *FAST)
    wait_until(lambda: scalar(dsn, "SELECT count(*) FROM public.runs"), message="a first batch ran")
    # Each collecting batch reserves the slot it will run in: one slot, so at
    # most one batch (<= 5 tasks) is held, never the whole low backlog.
    assert scalar(dsn, "SELECT count(*) FROM angela_queue.tasks WHERE status = 'running'") <= 5
    wait_until(lambda: scalar(dsn, "SELECT count(*) FROM angela_queue.tasks WHERE status = 'succeeded'") == 12,
               timeout=60, message="all 12 kinds ran")


def test_nul_characters_in_results_and_errors_fail_clearly(dsn, client, write_app, start_worker):
    app = write_app(REVIEW_APP)
    bad_result = client.enqueue("nul_result", max_attempts=1)
    bad_error = client.enqueue("nul_error", max_attempts=1)
    fine = client.enqueue_many([{"kind": "slow", "payload": {"n": i, "seconds": 0}} for i in range(5)])
    setup_runs(dsn)
    worker = start_worker(app, "--concurrency", "4", *FAST)
    row = wait_status(dsn, bad_result.id, "failed")
    assert "NUL character" in row["last_error"]
    row = wait_status(dsn, bad_error.id, "failed")
    assert row["last_error"].startswith("ValueError: bad\\x00byte")
    for t in fine:
        wait_status(dsn, t.id, "succeeded")
    assert worker.proc.poll() is None  # still running


def test_delayed_task_is_promoted_while_the_worker_is_busy(dsn, client, write_app, start_worker):
    setup_runs(dsn)
    app = write_app(REVIEW_APP)
    # 3 s of back-to-back work for one slot: the worker never idles.
    client.enqueue_many([{"kind": "slow", "payload": {"n": i}} for i in range(60)])
    start_worker(app, "--concurrency", "1", *FAST)
    wait_until(lambda: scalar(dsn, "SELECT count(*) FROM public.runs"), message="backlog started")
    late = client.enqueue("slow", {"n": 1000, "seconds": 0}, priority=10, delay=0.3)
    row = wait_status(dsn, late.id, "succeeded")
    backlog_left = scalar(dsn, "SELECT count(*) FROM angela_queue.tasks WHERE status = 'queued' "
                               "AND started_at IS NULL AND kind = 'slow'")
    # It started while the backlog was still draining, not after it.
    assert backlog_left > 0, row


def test_cancel_racing_a_claim_reports_the_true_status(dsn, client):
    import threading
    t = client.enqueue("k")
    claimer = psycopg.connect(dsn)
    try:
        claimer.execute("UPDATE angela_queue.tasks SET status = 'running' WHERE id = %s", (t.id,))
        result = {}
        thread = threading.Thread(target=lambda: result.update(r=client.cancel(t.id)))
        thread.start()
        wait_until(lambda: scalar(dsn, "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock' "
                                       "AND datname = current_database()"), message="cancel waiting on the lock")
        claimer.commit()
        thread.join(10)
    finally:
        claimer.close()
    assert result["r"].cancelled is False and result["r"].status == "running"


def test_final_flush_survives_the_database_refusing_connections(dsn, client, write_app, start_worker, pg_server):
    from psycopg.conninfo import conninfo_to_dict
    setup_runs(dsn)
    app = write_app(BASIC_APP)
    dbname = conninfo_to_dict(dsn)["dbname"]
    t = client.enqueue("sleep", {"seconds": 1.5, "n": 5})
    worker = start_worker(app, "--shutdown-grace", "30", *FAST)
    wait_until(lambda: scalar(dsn, "SELECT count(*) FROM public.runs WHERE n = 5"), message="handler started")
    worker.signal(signal.SIGTERM)
    with pg_server.admin() as admin:
        admin.execute(f'ALTER DATABASE "{dbname}" ALLOW_CONNECTIONS false')
        admin.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = %s "
                      "AND application_name ~ '^angela-queue-(worker|heartbeat|listen)'", (dbname,))
        try:
            wait_until(lambda: "final flush failed" in worker.log(), message="the flush to fail once")
        finally:
            admin.execute(f'ALTER DATABASE "{dbname}" ALLOW_CONNECTIONS true')
    assert worker.wait(60) == 0, worker.log()
    assert task_row(dsn, t.id)["status"] == "succeeded"
