"""Operate: find failures and act on tasks and queues, from SQL, the CLI and
Python, against real workers."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
import uuid

import psycopg
import pytest

from angela_queue import AsyncClient, Client, TaskNotFound, TaskRecord
from angela_queue import statements as st
from fix_procs import APP_PRELUDE, RUNS_TABLE_SQL, query, scalar, wait_until

FAST = ["--poll-interval", "0.2", "--heartbeat-interval", "0.5", "--backoff-base", "0.05", "--backoff-max", "0.1"]

APP = APP_PRELUDE + """
import asyncio, time
from angela_queue import task

def broken():
    return os.path.exists(os.path.join(os.environ["AQ_FLAGS"], "broken"))

@task("flaky", max_attempts=3)
def flaky(n):
    record(n)
    if broken():
        raise TypeError("flaky() got an unexpected keyword argument 'x'")
    return n

@task("nap_async")
async def nap_async(n, seconds=60):
    record(n)
    await asyncio.sleep(seconds)
    return "woke"

@task("nap_sync")
def nap_sync(n, seconds=1.0):
    record(n)
    time.sleep(seconds)
    return "done"

@task("canary")
def canary(n):
    record(n)
"""


def status_of(dsn, tid) -> str:
    return scalar(dsn, "SELECT status FROM angela_queue.tasks WHERE id = %s", (tid,))


def runs(dsn, n) -> int:
    return scalar(dsn, "SELECT count(*) FROM public.runs WHERE n = %s", (n,))


def fail(conn, tid: int, error: str = "ValueError: no") -> None:
    conn.execute("UPDATE angela_queue.tasks SET status = 'failed', attempts = max_attempts, finished_at = now(), "
                 "last_error = %s, failed_at = now(), errors = angela_queue.error_history(errors, max_attempts, "
                 "now(), NULL, %s) WHERE id = %s", (error, error, tid))


def cli(*args: str, timeout: float = 60) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k not in ("ANGELA_QUEUE_DSN", "DATABASE_URL")}
    return subprocess.run([sys.executable, "-m", "angela_queue", *args], capture_output=True, text=True,
                          timeout=timeout, env=env)


@pytest.fixture
def app(dsn, write_app, app_dir):
    query(dsn, RUNS_TABLE_SQL)
    (app_dir / "flags").mkdir()
    return write_app(APP)


def worker_env(app_dir) -> dict[str, str]:
    return {"AQ_FLAGS": str(app_dir / "flags")}


# --- the SQL functions ---------------------------------------------------------------------

def test_retry_task_requeues_with_a_fresh_deadline_and_keeps_the_history(conn):
    tid = conn.execute("INSERT INTO angela_queue.tasks (kind, priority) VALUES ('k', 9) RETURNING id").fetchone()["id"]
    fail(conn, tid)
    with psycopg.connect(conn.info.dsn, autocommit=True) as listener:
        listener.execute("LISTEN angela_queue_insert")
        assert conn.execute("SELECT * FROM angela_queue.retry_task(%s)", (tid,)).fetchone() == {
            "id": tid, "status": "queued", "outcome": "retried"}
        notes = [n.payload for n in listener.notifies(timeout=2, stop_after=1)]
    assert notes == ["default"]
    row = conn.execute("SELECT *, now() AS now FROM angela_queue.tasks WHERE id = %s", (tid,)).fetchone()
    assert row["status"] == "queued" and row["attempts"] == 0 and row["finished_at"] is None
    assert row["run_at"] > row["created_at"] and row["run_at"] <= row["now"]
    assert row["deadline"] == row["run_at"]          # a fresh deadline: critical, within 0 s of the retry
    assert len(row["errors"]) == 1 and row["errors"][0]["error"] == "ValueError: no"
    # Not retryable: a queued (or succeeded) task is left alone; an unknown id gives no row.
    assert conn.execute("SELECT outcome FROM angela_queue.retry_task(%s)", (tid,)).fetchone()["outcome"] == \
        "unchanged"
    assert conn.execute("SELECT * FROM angela_queue.retry_task(999999)").fetchall() == []


def test_retry_does_not_break_a_dedup_key_taken_since(conn):
    old = conn.execute("INSERT INTO angela_queue.tasks (kind, dedup_key) VALUES ('k', 'once') RETURNING id"
                       ).fetchone()["id"]
    fail(conn, old)
    newer = conn.execute("INSERT INTO angela_queue.tasks (kind, dedup_key) VALUES ('k', 'once') RETURNING id"
                         ).fetchone()["id"]
    assert conn.execute("SELECT outcome FROM angela_queue.retry_task(%s)", (old,)).fetchone()["outcome"] == \
        "dedup_key_held"
    assert conn.execute("SELECT angela_queue.retry_tasks('failed') AS n").fetchone()["n"] == 0
    fail(conn, newer)
    # Two failed tasks with one key: the newest goes back, the other stays failed.
    assert conn.execute("SELECT angela_queue.retry_tasks('failed') AS n").fetchone()["n"] == 1
    assert status_of(conn.info.dsn, newer) == "queued" and status_of(conn.info.dsn, old) == "failed"


def test_retry_tasks_filters_by_status_kind_and_queue(conn):
    ids = {}
    for kind, queue in (("a", "q1"), ("a", "q2"), ("b", "q1")):
        ids[kind, queue] = conn.execute("INSERT INTO angela_queue.tasks (kind, queue) VALUES (%s, %s) RETURNING id",
                                        (kind, queue)).fetchone()["id"]
        fail(conn, ids[kind, queue])
    assert conn.execute("SELECT angela_queue.retry_tasks('failed', 'a', 'q1') AS n").fetchone()["n"] == 1
    assert conn.execute("SELECT angela_queue.retry_tasks('failed', 'a') AS n").fetchone()["n"] == 1
    assert conn.execute("SELECT angela_queue.retry_tasks('failed') AS n").fetchone()["n"] == 1
    assert conn.execute("SELECT angela_queue.retry_tasks('cancelled') AS n").fetchone()["n"] == 0
    with pytest.raises(psycopg.Error, match="only failed, cancelled or dropped tasks can be retried"):
        conn.execute("SELECT angela_queue.retry_tasks('succeeded')")


def test_pause_stops_claims_and_resume_wakes(conn):
    from angela_queue import db
    conn.execute("INSERT INTO angela_queue.tasks (kind) VALUES ('k')")
    assert conn.execute("SELECT angela_queue.pause_queue('default') AS c").fetchone()["c"] is True
    assert conn.execute("SELECT angela_queue.pause_queue('default') AS c").fetchone()["c"] is False
    claim = st.claim(worker_id=uuid.UUID(int=1), queues=["default"], limit=5)
    assert db.fetch_all(conn, claim) == []
    depth = conn.execute("SELECT paused, overdue FROM angela_queue.queue_depth WHERE tier = 'medium'").fetchone()
    assert depth == {"paused": True, "overdue": 0}
    # An insert into a paused queue is accepted.
    conn.execute("INSERT INTO angela_queue.tasks (kind) VALUES ('k')")
    with psycopg.connect(conn.info.dsn, autocommit=True) as listener:
        listener.execute("LISTEN angela_queue_insert")
        assert conn.execute("SELECT angela_queue.resume_queue('default') AS c").fetchone()["c"] is True
        assert [n.payload for n in listener.notifies(timeout=2, stop_after=1)] == ["default"]
    assert len(db.fetch_all(conn, claim)) == 2
    with pytest.raises(psycopg.Error, match="no queue named"):
        conn.execute("SELECT angela_queue.resume_queue('nope')")
    # A mistyped name is refused: it must not pause a new, empty queue while the real one runs on.
    with pytest.raises(psycopg.errors.UndefinedObject, match="no queue named 'defualt'"):
        conn.execute("SELECT angela_queue.pause_queue('defualt')")
    assert conn.execute("SELECT count(*) AS n FROM angela_queue.queues WHERE name = 'defualt'").fetchone()["n"] == 0
    # A queue can be made paused before its first task.
    conn.execute("INSERT INTO angela_queue.queues (name, paused_at) VALUES ('later', now())")
    assert conn.execute("SELECT angela_queue.pause_queue('later') AS c").fetchone()["c"] is False


def test_purge_deletes_only_old_finished_rows_of_one_status(conn):
    conn.execute("INSERT INTO angela_queue.tasks (kind) SELECT 'k' FROM generate_series(1, 12)")
    conn.execute("UPDATE angela_queue.tasks SET status = 'failed', finished_at = now() - interval '40 days' "
                 "WHERE id <= 5")
    conn.execute("UPDATE angela_queue.tasks SET status = 'failed', finished_at = now() WHERE id BETWEEN 6 AND 8")
    conn.execute("UPDATE angela_queue.tasks SET status = 'succeeded', finished_at = now() - interval '40 days' "
                 "WHERE id BETWEEN 9 AND 10")
    assert conn.execute("SELECT angela_queue.purge_tasks('failed', '30 days') AS n").fetchone()["n"] == 5
    left = {r["status"] for r in conn.execute("SELECT status FROM angela_queue.tasks")}
    assert left == {"failed", "succeeded", "queued"}
    assert conn.execute("SELECT count(*) AS n FROM angela_queue.tasks").fetchone()["n"] == 7
    with pytest.raises(psycopg.Error, match="only finished tasks can be purged"):
        conn.execute("SELECT angela_queue.purge_tasks('queued', '1 day')")


def test_the_operator_views_answer_from_real_rows(conn):
    conn.execute("INSERT INTO angela_queue.tasks (kind, priority) SELECT 'a', 9 FROM generate_series(1, 3)")
    conn.execute("INSERT INTO angela_queue.tasks (kind) VALUES ('b'), ('b')")
    from angela_queue import db
    claimed = db.fetch_all(conn, st.claim(worker_id="00000000-0000-0000-0000-000000000002",
                                          queues=["default"], limit=4))
    done = [c["id"] for c in claimed if c["kind"] == "a"]
    conn.execute("UPDATE angela_queue.tasks SET status = 'succeeded', finished_at = started_at + "
                 "interval '250 ms' WHERE id = ANY(%s)", (done,))
    bad = next(c["id"] for c in claimed if c["kind"] == "b")
    fail(conn, bad, "TypeError: bad arg\nTraceback ...")
    sla = {r["tier"]: r for r in conn.execute("SELECT * FROM angela_queue.tier_sla")}
    assert sla["critical"]["started"] == 3 and sla["critical"]["on_time"] == 3
    assert float(sla["critical"]["attainment_pct"]) == 100.0 and sla["critical"]["wait_p99_ms"] is not None
    minute = conn.execute("SELECT kind, sum(succeeded) AS ok, sum(failed) AS bad FROM angela_queue.throughput "
                          "GROUP BY kind ORDER BY kind").fetchall()
    assert minute == [{"kind": "a", "ok": 3, "bad": 0}, {"kind": "b", "ok": 0, "bad": 1}]
    [failure] = conn.execute("SELECT * FROM angela_queue.recent_failures").fetchall()
    assert (failure["id"], failure["kind"], failure["error"], failure["status"]) == (bad, "b", "TypeError: bad arg",
                                                                                   "failed")
    stats = {r["kind"]: r for r in conn.execute("SELECT * FROM angela_queue.kind_stats")}
    assert stats["a"]["succeeded_1h"] == 3 and abs(float(stats["a"]["avg_run_ms"]) - 250) < 1
    assert stats["b"]["failed_1h"] == 1 and stats["b"]["queued"] == 1 and stats["b"]["served"] is False


# --- against real workers ------------------------------------------------------------------

def test_a_retried_task_runs_again_and_succeeds_with_its_history(dsn, client, app, app_dir, start_worker):
    (app_dir / "flags" / "broken").touch()
    task = client.enqueue("flaky", {"n": 1}, max_attempts=3)
    worker = start_worker(app, *FAST, env=worker_env(app_dir))
    wait_until(lambda: status_of(dsn, task.id) == "failed", details=worker.log)
    record = client.get(task.id)
    assert isinstance(record, TaskRecord) and record.attempts == 3 and len(record.errors) == 3
    assert [e["attempt"] for e in record.errors] == [1, 2, 3]
    assert "unexpected keyword argument" in record.errors[-1]["error"]
    assert [t.id for t in client.list_tasks(status="failed")] == [task.id]
    (app_dir / "flags" / "broken").unlink()
    assert client.retry(task.id).retried
    wait_until(lambda: status_of(dsn, task.id) == "succeeded", details=worker.log)
    record = client.get(task.id)
    assert record.attempts == 1 and record.result == 1 and len(record.errors) == 3   # history kept
    assert runs(dsn, 1) == 4
    assert worker.stop() == 0


def test_a_paused_queue_starts_nothing_until_resumed(dsn, client, app, app_dir, start_worker):
    worker = start_worker(app, "--queue", "held", "--queue", "default", *FAST, env=worker_env(app_dir))
    query(dsn, "INSERT INTO angela_queue.queues (name) VALUES ('held')")
    assert client.pause("held")
    held = client.enqueue("canary", {"n": 1}, queue="held")
    # The worker serves both queues: once a later task of the other queue has run,
    # it has had its turns at the paused one.
    other = client.enqueue("canary", {"n": 2})
    wait_until(lambda: status_of(dsn, other.id) == "succeeded", details=worker.log)
    wait_until(lambda: scalar(dsn, "SELECT count(*) FROM angela_queue.workers WHERE status = 'idle'"),
               details=worker.log)
    assert status_of(dsn, held.id) == "queued" and runs(dsn, 1) == 0
    assert client.resume("held")
    wait_until(lambda: status_of(dsn, held.id) == "succeeded", timeout=10, details=worker.log)
    assert worker.stop() == 0


def test_cancelling_a_running_async_task_stops_it_and_a_sync_one_is_recorded_cancelled(
        dsn, client, app, app_dir, start_worker):
    worker = start_worker(app, "--concurrency", "2", *FAST, env=worker_env(app_dir))
    slow = client.enqueue("nap_async", {"n": 1, "seconds": 60}, max_attempts=5)
    sync = client.enqueue("nap_sync", {"n": 2, "seconds": 1.5}, max_attempts=5)
    wait_until(lambda: runs(dsn, 1) == 1 and runs(dsn, 2) == 1, details=worker.log)
    started = time.monotonic()
    assert client.cancel(slow.id).requested and client.cancel(sync.id).requested
    wait_until(lambda: status_of(dsn, slow.id) == "cancelled", timeout=10, details=worker.log)
    assert time.monotonic() - started < 30      # not the 60 s nap: the handler was cancelled
    wait_until(lambda: status_of(dsn, sync.id) == "cancelled", timeout=10, details=worker.log)
    rows = {r["id"]: r for r in query(dsn, "SELECT * FROM angela_queue.tasks WHERE id = ANY(%s)",
                                      ([slow.id, sync.id],))}
    assert rows[slow.id]["attempts"] == 1 and "cancelled while running" in rows[slow.id]["last_error"]
    assert rows[sync.id]["result"] == "done"       # it finished; its outcome is recorded as cancelled
    assert runs(dsn, 1) == 1 and runs(dsn, 2) == 1  # and neither is retried
    canary = client.enqueue("canary", {"n": 3})
    wait_until(lambda: status_of(dsn, canary.id) == "succeeded", details=worker.log)
    assert worker.stop() == 0


# --- the CLI and the Python client -----------------------------------------------------------

def test_the_cli_lists_shows_retries_cancels_pauses_and_purges(dsn, conn):
    ids = [conn.execute("INSERT INTO angela_queue.tasks (kind, payload) VALUES ('mail', %s) RETURNING id",
                        (json.dumps({"n": i}),)).fetchone()["id"] for i in range(4)]
    for tid in ids[:2]:
        fail(conn, tid, "TypeError: mail() got an unexpected keyword argument 'x'\nTraceback (most recent call last)")
    out = cli("tasks", "list", "--dsn", dsn, "--status", "failed", "--json")
    assert out.returncode == 0, out.stderr
    listed = [json.loads(line) for line in out.stdout.splitlines()]
    assert [t["id"] for t in listed] == sorted(ids[:2], reverse=True) and listed[0]["error"].startswith("TypeError")
    shown = cli("tasks", "show", str(ids[0]), "--dsn", dsn)
    assert shown.returncode == 0 and "ATTEMPT HISTORY (1 failed attempt(s)" in shown.stdout
    assert "Traceback (most recent call last)" in shown.stdout and '{"n": 0}' in shown.stdout
    status = cli("status", "--dsn", dsn)
    assert "TROUBLE" in status.stdout and "2 task(s) of kind 'mail' in queue 'default' failed in the last hour" \
        in status.stdout and "unexpected keyword argument" in status.stdout
    assert cli("retry", str(ids[0]), "--dsn", dsn).stdout.splitlines()[-1] == "retried 1 of 1 task(s)"
    refused = cli("retry", str(ids[2]), "--dsn", dsn)
    assert refused.returncode == 1 and "only failed, cancelled or dropped" in refused.stderr
    assert cli("retry", "--failed", "--kind", "mail", "--dsn", dsn).stdout.strip() == "retried 1 failed task(s)"
    assert cli("cancel", str(ids[2]), str(ids[3]), "--dsn", dsn).stdout.splitlines() == [
        f"task {ids[2]} cancelled", f"task {ids[3]} cancelled"]
    assert cli("pause", "default", "--dsn", dsn).stdout.strip() == "queue default paused"
    assert "queue 'default' is paused" in cli("status", "--dsn", dsn).stdout
    assert cli("resume", "default", "--dsn", dsn).stdout.strip() == "queue default resumed"
    conn.execute("UPDATE angela_queue.tasks SET finished_at = now() - interval '31 days' WHERE status = 'cancelled'")
    assert cli("purge", "--status", "cancelled", "--older-than", "30d", "--dsn", dsn).stdout.strip() == \
        "purged 2 cancelled task(s)"
    bad = cli("purge", "--status", "cancelled", "--older-than", "soon", "--dsn", dsn)
    assert bad.returncode == 2 and "not a duration" in bad.stderr


def test_status_watch_redraws_until_interrupted(dsn):
    proc = subprocess.Popen([sys.executable, "-m", "angela_queue", "status", "--watch", "--dsn", dsn],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        wait_until(lambda: scalar(dsn, "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() "
                                       "AND application_name = 'angela-queue-status'") == 1)
        time.sleep(0.1)
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=20)
    finally:
        proc.kill()
    assert proc.returncode == 0, err
    assert "QUEUES" in out and "Traceback" not in err


def test_the_python_clients_have_the_same_operations(dsn, conn):
    with Client(dsn) as client:
        t = client.enqueue("k", {"a": 1})
        assert client.pause("default") and not client.pause("default")
        assert client.resume("default")
        fail(conn, t.id)
        assert client.retry_many("failed") == 1
        assert client.get(t.id).status == "queued"
        assert client.cancel(t.id).cancelled
        conn.execute("UPDATE angela_queue.tasks SET finished_at = now() - interval '2 days'")
        assert client.purge("cancelled", 86400) == 1
        with pytest.raises(TaskNotFound):
            client.get(t.id)
        with pytest.raises(ValueError, match="only finished tasks can be purged"):
            client.purge("queued", 1)

    async def main():
        async with AsyncClient(dsn) as aclient:
            task = await aclient.enqueue("k")
            assert [r.id for r in await aclient.list_tasks(kind="k")] == [task.id]
            await aclient.enqueue("k", queue="q2")
            assert await aclient.pause("q2") and await aclient.resume("q2")
            fail(conn, task.id)
            assert (await aclient.retry(task.id)).retried
            assert (await aclient.get(task.id)).errors
    asyncio.run(main())


# --- edges the review found --------------------------------------------------------------------

def test_a_task_asked_to_stop_is_not_released_to_run_again(dsn, client, app, app_dir, start_worker):
    """A graceful stop with a cancel-requested sync task still running: it is
    recorded cancelled, not put back to run again from the start."""
    worker = start_worker(app, "--shutdown-grace", "0.5", *FAST, env=worker_env(app_dir))
    task = client.enqueue("nap_sync", {"n": 1, "seconds": 5})
    wait_until(lambda: runs(dsn, 1) == 1, details=worker.log)
    assert client.cancel(task.id).requested
    assert worker.stop() == 0
    row = query(dsn, "SELECT status, attempts, finished_at FROM angela_queue.tasks WHERE id = %s", (task.id,))[0]
    assert row["status"] == "cancelled" and row["finished_at"] is not None
    again = start_worker(app, *FAST, env=worker_env(app_dir))
    canary = client.enqueue("canary", {"n": 2})
    wait_until(lambda: status_of(dsn, canary.id) == "succeeded", details=again.log)
    assert runs(dsn, 1) == 1            # never ran a second time


def test_an_async_low_priority_task_is_cancelled_while_it_runs(dsn, client, app, app_dir, start_worker):
    """Priorities 1-4 run through the batch path: a cancel reaches their async handler too."""
    worker = start_worker(app, "--batch-size", "5", "--batch-wait", "0.1", *FAST, env=worker_env(app_dir))
    low = client.enqueue("nap_async", {"n": 1, "seconds": 60}, priority=2)
    later = client.enqueue("nap_async", {"n": 2, "seconds": 60}, priority=2)
    wait_until(lambda: runs(dsn, 1) == 1, details=worker.log)
    # The one waiting its turn in the batch first, then the one running.
    assert client.cancel(later.id).cancelled is False and client.cancel(low.id).requested
    wait_until(lambda: status_of(dsn, low.id) == "cancelled", timeout=15, details=worker.log)
    wait_until(lambda: status_of(dsn, later.id) == "cancelled", timeout=15, details=worker.log)
    assert "cancelled while running" in scalar(dsn, "SELECT last_error FROM angela_queue.tasks WHERE id = %s",
                                               (low.id,))
    assert runs(dsn, 2) == 0, worker.log()   # cancelled before its turn in the batch: never started


def test_retries_respect_the_queue_bound(conn):
    ids = [r["id"] for r in conn.execute(
        "INSERT INTO angela_queue.tasks (kind, queue) SELECT 'k', 'small' FROM generate_series(1, 6) RETURNING id")]
    for tid in ids:
        fail(conn, tid)
    conn.execute("UPDATE angela_queue.queues SET max_size = 3 WHERE name = 'small'")
    conn.execute("INSERT INTO angela_queue.tasks (kind, queue) VALUES ('k', 'small')")   # one waiting: room for 2
    assert conn.execute("SELECT angela_queue.retry_tasks('failed', NULL, 'small') AS n").fetchone()["n"] == 2
    assert conn.execute("SELECT count(*) AS n FROM angela_queue.tasks WHERE queue = 'small' AND status = 'queued'"
                        ).fetchone()["n"] == 3
    failed = [r["id"] for r in conn.execute("SELECT id FROM angela_queue.tasks WHERE status = 'failed' ORDER BY id")]
    assert failed == ids[2:]             # the oldest went back first
    assert conn.execute("SELECT outcome FROM angela_queue.retry_task(%s)", (failed[0],)).fetchone()["outcome"] \
        == "queue_full"


def test_purge_with_a_limit_deletes_at_most_that_many(conn):
    conn.execute("INSERT INTO angela_queue.tasks (kind) SELECT 'k' FROM generate_series(1, 25)")
    conn.execute("UPDATE angela_queue.tasks SET status = 'succeeded', finished_at = now() - interval '2 days'")
    assert conn.execute("SELECT angela_queue.purge_tasks('succeeded', interval '1 day', 10) AS n").fetchone()["n"] == 10
    assert conn.execute("SELECT count(*) AS n FROM angela_queue.tasks").fetchone()["n"] == 15
    with pytest.raises(psycopg.errors.InvalidParameterValue, match="limit must be 1 or more"):
        conn.execute("SELECT angela_queue.purge_tasks('succeeded', interval '1 day', 0)")


def test_status_counts_every_failure_of_the_hour_and_hides_quiet_queues(dsn, conn):
    conn.execute("INSERT INTO angela_queue.tasks (kind) SELECT 'mail' FROM generate_series(1, 1500)")
    conn.execute("UPDATE angela_queue.tasks SET status = 'failed', attempts = max_attempts, finished_at = now(), "
                 "failed_at = now(), last_error = 'SMTPError: refused'")
    conn.execute("INSERT INTO angela_queue.queues (name) SELECT 'quiet_' || i FROM generate_series(1, 300) i")
    out = cli("status", "--dsn", dsn)
    assert out.returncode == 0, out.stderr
    assert "1500 task(s) of kind 'mail' in queue 'default' failed in the last hour" in out.stdout
    assert "quiet_1" not in out.stdout and len(out.stdout.splitlines()) < 60


def test_a_collected_batch_does_not_start_after_its_queue_is_paused(dsn, conn, client, app, app_dir, start_worker):
    """Tasks claimed into a collecting batch are given back if their queue is
    paused before the batch starts."""
    conn.execute("INSERT INTO angela_queue.queues (name) VALUES ('bulk')")
    worker = start_worker(app, "--queue", "bulk", "--batch-size", "50", "--batch-wait", "3", *FAST,
                          env=worker_env(app_dir))
    tasks = client.enqueue_many([{"kind": "canary", "payload": {"n": i}, "priority": 2, "queue": "bulk"}
                                 for i in range(3)])
    wait_until(lambda: scalar(dsn, "SELECT count(*) FROM angela_queue.tasks WHERE status = 'running'") == 3,
               details=worker.log)           # claimed, collecting (unstarted)
    assert client.pause("bulk")
    wait_until(lambda: scalar(dsn, "SELECT count(*) FROM angela_queue.tasks WHERE status = 'queued'") == 3,
               timeout=15, details=worker.log)
    assert scalar(dsn, "SELECT count(*) FROM public.runs") == 0
    assert scalar(dsn, "SELECT max(attempts) FROM angela_queue.tasks") == 0
    assert client.resume("bulk")
    wait_until(lambda: all(status_of(dsn, t.id) == "succeeded" for t in tasks), details=worker.log)
