"""Hostile edges found by review: refusals psycopg reports as OperationalError,
rows that cannot be promoted or claimed, BaseExceptions from a handler's
child tasks, error texts Postgres cannot store, and limits on everything a
counter or a retry delay is computed from. Canaries around each run once."""

from __future__ import annotations

import signal
import subprocess
import sys
import uuid

import psycopg
import pytest

from angela_queue import Client, Settings, SchemaMismatch, task
from angela_queue.backoff import Backoff
from angela_queue.errors import ConfigError
from angela_queue.worker import Worker
from angela_queue.worker.execution import backoff_seconds, clean_text, describe_exception
from angela_queue import statements as st
from fix_procs import APP_PRELUDE, RUNS_TABLE_SQL, query, scalar, wait_until

FAST = ["--poll-interval", "0.2", "--heartbeat-interval", "0.5", "--backoff-base", "0.05", "--backoff-max", "0.1"]

APP = APP_PRELUDE + """
import asyncio
from angela_queue import task

@task("canary")
def canary(n):
    record(n)

@task("gather_exit", max_attempts=2)
async def gather_exit(n):
    record(n)
    async def inner():
        raise SystemExit(3)
    await asyncio.gather(inner())

@task("surrogate", max_attempts=1)
def surrogate(n):
    record(n)
    raise OSError("cannot open " + b"/data/caf\\xe9.txt".decode("utf-8", "surrogateescape"))

class Unprintable(Exception):
    def __str__(self):
        raise RuntimeError("no")

@task("unprintable", max_attempts=1)
def unprintable(n):
    record(n)
    raise Unprintable()
"""


@pytest.fixture
def app(dsn, write_app):
    query(dsn, RUNS_TABLE_SQL)
    return write_app(APP)


def ran(dsn, *ns) -> bool:
    return all(scalar(dsn, "SELECT count(*) FROM public.runs WHERE n = %s", (n,)) == 1 for n in ns)


def refuse_updates(conn, name: str, table: str, application: str, errcode: str, message: str) -> None:
    """A server that refuses every UPDATE of ``table`` from sessions named like
    ``application``, with that SQLSTATE: the failure modes psycopg reports
    (disk full, a revoked grant) without breaking the real server."""
    conn.execute(f"""
        CREATE FUNCTION public.{name}() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN
            IF current_setting('application_name') LIKE '{application}' THEN
                RAISE EXCEPTION '{message}' USING ERRCODE = '{errcode}';
            END IF;
            RETURN NULL;
        END $$;
        CREATE TRIGGER {name} BEFORE UPDATE ON angela_queue.{table}
            FOR EACH STATEMENT EXECUTE FUNCTION public.{name}();
    """)


def status(dsn, tid) -> str:
    return scalar(dsn, "SELECT status FROM angela_queue.tasks WHERE id = %s", (tid,))


# --- refusals that psycopg calls OperationalError --------------------------------------------

def test_a_disk_full_database_is_backed_off_from_not_reconnected_in_a_loop(dsn, conn, client, app, start_worker):
    """Disk full (53100) arrives as an OperationalError; it is a refusal, not a lost connection."""
    refuse_updates(conn, "disk_full", "tasks", "angela-queue-worker%", "disk_full",
                   "could not extend file: No space left on device")
    worker = start_worker(app, *FAST)
    client.enqueue("canary", {"n": 1})
    wait_until(lambda: "No space left on device" in worker.log(), details=worker.log)
    rollbacks = scalar(dsn, "SELECT xact_rollback FROM (SELECT pg_stat_clear_snapshot()) s, pg_stat_database "
                            "WHERE datname = current_database()")
    wait_until(lambda: scalar(dsn, "SELECT xact_rollback FROM (SELECT pg_stat_clear_snapshot()) s, "
                                   "pg_stat_database WHERE datname = current_database()") >= rollbacks + 5,
               timeout=60, details=worker.log)
    log = worker.log()
    assert "connection lost" not in log and "reconnected" not in log, log
    assert sum(1 for line in log.splitlines() if "No space left" in line) <= 3, log
    conn.execute("DROP TRIGGER disk_full ON angela_queue.tasks")
    wait_until(lambda: ran(dsn, 1), timeout=30, details=worker.log)
    assert worker.stop() == 0


def test_a_due_row_that_cannot_be_promoted_stops_neither_claims_nor_other_queues(dsn, conn, client, app,
                                                                               start_worker):
    conn.execute("""
        CREATE FUNCTION public.no_promotion() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN
            IF NEW.kind = 'poison' AND NEW.status = 'queued' THEN
                RAISE EXCEPTION 'this row cannot be promoted' USING ERRCODE = 'program_limit_exceeded';
            END IF;
            RETURN NEW;
        END $$;
        CREATE TRIGGER no_promotion BEFORE UPDATE ON angela_queue.tasks
            FOR EACH ROW EXECUTE FUNCTION public.no_promotion();
    """)
    client.enqueue("canary", {"n": 1})
    conn.execute("INSERT INTO angela_queue.tasks (kind, run_at) VALUES ('poison', now() + interval '1 second')")
    worker = start_worker(app, *FAST)
    wait_until(lambda: ran(dsn, 1), details=worker.log)
    wait_until(lambda: "cannot be promoted" in worker.log(), details=worker.log)
    client.enqueue("canary", {"n": 2})
    wait_until(lambda: ran(dsn, 2), details=worker.log)
    assert worker.proc.poll() is None
    assert worker.stop() == 0


def test_a_hand_set_attempts_counter_cannot_halt_a_queue(dsn, conn, client, app, start_worker):
    with pytest.raises(psycopg.errors.CheckViolation, match="task_attempts_in_range"):
        conn.execute("INSERT INTO angela_queue.tasks (kind) VALUES ('k') RETURNING id")
        conn.execute("UPDATE angela_queue.tasks SET attempts = 2147483647")
    spent = conn.execute("INSERT INTO angela_queue.tasks (kind, priority) VALUES ('canary', 10) RETURNING id"
                         ).fetchone()["id"]
    # A waiting task with no attempt left would never be claimed, nor moved: refused.
    with pytest.raises(psycopg.errors.CheckViolation, match="task_waiting_has_an_attempt_left"):
        conn.execute("UPDATE angela_queue.tasks SET attempts = 5, max_attempts = 5 WHERE id = %s", (spent,))
    client.enqueue("canary", {"n": 1}), client.enqueue("canary", {"n": 2})
    worker = start_worker(app, *FAST)
    wait_until(lambda: ran(dsn, 1, 2), details=worker.log)
    assert worker.stop() == 0
    with pytest.raises(ValueError, match="max_attempts must be an integer between 1 and 1000000"):
        client.enqueue("k", max_attempts=2 ** 40)


# --- handlers ------------------------------------------------------------------------------

def test_system_exit_from_a_handlers_child_task_is_a_counted_failure(dsn, client, app, start_worker):
    before = client.enqueue("canary", {"n": 1})
    bad = client.enqueue("gather_exit", {"n": 2}, max_attempts=2)
    after = client.enqueue("canary", {"n": 3})
    worker = start_worker(app, *FAST)
    wait_until(lambda: status(dsn, bad.id) == "failed", details=worker.log)
    row = query(dsn, "SELECT attempts, last_error FROM angela_queue.tasks WHERE id = %s", (bad.id,))[0]
    assert row["attempts"] == 2 and row["last_error"].startswith("SystemExit: 3")
    wait_until(lambda: ran(dsn, 1, 3), details=worker.log)
    assert worker.proc.poll() is None and {status(dsn, before.id), status(dsn, after.id)} == {"succeeded"}
    assert worker.stop() == 0


def test_error_texts_postgres_cannot_store_or_python_cannot_print_still_fail_the_task(dsn, client, app,
                                                                                    start_worker):
    before = client.enqueue("canary", {"n": 1})
    bad = client.enqueue("surrogate", {"n": 2}, max_attempts=1)
    odd = client.enqueue("unprintable", {"n": 3}, max_attempts=1)
    after = client.enqueue("canary", {"n": 4})
    worker = start_worker(app, "--concurrency", "4", *FAST)
    wait_until(lambda: status(dsn, bad.id) == "failed" and status(dsn, odd.id) == "failed", details=worker.log)
    rows = {r["id"]: r for r in query(dsn, "SELECT id, last_error FROM angela_queue.tasks")}
    assert "caf\\udce9.txt" in rows[bad.id]["last_error"]
    assert rows[odd.id]["last_error"].startswith("Unprintable: <its message could not be read")
    wait_until(lambda: ran(dsn, 1, 4), details=worker.log)
    assert {status(dsn, before.id), status(dsn, after.id)} == {"succeeded"}
    assert worker.proc.poll() is None
    assert worker.stop() == 0


def test_handler_options_must_be_finite():
    for option in ("timeout", "backoff_base", "backoff_max"):
        with pytest.raises(ValueError, match=f"{option} must be a positive, finite number"):
            task(f"nan_{option}", **{option: float("nan")})


def test_a_worker_built_in_python_with_no_handlers_refuses_to_run(dsn, monkeypatch):
    from angela_queue import registry
    monkeypatch.setattr(registry, "_REGISTRY", {})
    with pytest.raises(ConfigError, match="no @task handlers"):
        Worker(Settings(dsn=dsn)).run()
    assert scalar(dsn, "SELECT count(*) FROM angela_queue.workers") == 0


# --- counters, clocks and limits ---------------------------------------------------------------

def test_backoffs_stay_finite_however_long_the_refusals_last():
    import logging
    backoff = Backoff("test", logging.getLogger("test"), clock=lambda: 0.0)
    assert 5.0 <= backoff.delay_for(5000) <= 10.0
    for _ in range(1100):
        assert backoff.failed("refused") <= 10.0
    assert 1800 <= backoff_seconds(5000, 1.0, 3600.0) <= 3600


def test_clean_text_makes_any_python_text_storable():
    text = clean_text("a\x00b" + b"\xff".decode("utf-8", "surrogateescape"))
    assert text == "a\\x00b\\udcff"
    text.encode("utf-8")   # would raise on a lone surrogate

    class Broken(Exception):
        def __str__(self):
            raise ValueError("no")
    assert describe_exception(Broken()).startswith("Broken: <its message could not be read")
    # A message of megabytes is cut, not stored whole.
    huge = describe_exception(ValueError("x" * 2_000_000))
    assert len(huge) < 10_000 and "(2000000 characters in all)" in huge


def test_a_workers_clock_cannot_date_an_outcome_into_the_future(conn):
    from angela_queue import db
    tid = conn.execute("INSERT INTO angela_queue.tasks (kind) VALUES ('k') RETURNING id").fetchone()["id"]
    worker = uuid.uuid4()
    db.fetch_all(conn, st.claim(worker_id=worker, queues=["default"], limit=1))
    db.fetch_all(conn, st.complete_many(worker_id=worker,
                                        outcomes_json=f'[{{"id": {tid}, "result": 1, "finished_at": 4e9}}]'))
    row = conn.execute("SELECT finished_at <= now() AS past, finished_at >= started_at AS after_start "
                       "FROM angela_queue.tasks WHERE id = %s", (tid,)).fetchone()
    assert row == {"past": True, "after_start": True}


def test_names_too_long_to_notify_or_index_are_refused(rollback_conn):
    """A delayed row is not in the claim or batch indexes yet, and sends no NOTIFY
    at insert: without the bound, an over-long name would only fail later,
    when it is promoted, and fail every promotion with it."""
    for kind, queue in (("k", "q" * 9000), ("k" * 3000, "default")):
        with pytest.raises(psycopg.Error, match="kind and queue must be at most 255 bytes"), \
                rollback_conn.transaction():
            rollback_conn.execute("INSERT INTO angela_queue.tasks (kind, queue, run_at) "
                                  "VALUES (%s, %s, now() + interval '1 hour')", (kind, queue))
    from angela_queue.tasks import TaskSpec
    with pytest.raises(ValueError, match="queue must be at most 255 bytes"):
        TaskSpec("k", queue="q" * 300)


def test_intervals_have_a_floor():
    with pytest.raises(ConfigError, match="--heartbeat-interval must be at least 0.05 seconds"):
        Settings(heartbeat_interval_s=0.0001)


# --- schema revisions ------------------------------------------------------------------------

def test_a_client_notices_a_migration_within_its_recheck(dsn, conn):
    with Client(dsn) as client:
        client.enqueue("k")
        conn.execute("UPDATE angela_queue.alembic_version SET version_num = '0999'")
        client._schema_checked_until = 0.0     # the recheck interval has passed
        with pytest.raises(SchemaMismatch, match="0999"):
            client.enqueue("k")
    assert scalar(dsn, "SELECT count(*) FROM angela_queue.tasks") == 1


# --- what the operator reads ----------------------------------------------------------------

def test_logs_are_terminal_safe(dsn, conn, app, start_worker):
    conn.execute("INSERT INTO angela_queue.tasks (kind) VALUES (E'evil\\x1b]0;pwned\\x07\\x1b[2J')")
    worker = start_worker(app, *FAST)
    wait_until(lambda: "evil" in worker.log(), details=worker.log)
    assert "\x1b" not in worker.log() and "evil\\x1b]0;pwned\\x07" in worker.log()
    assert worker.stop() == 0


def test_a_payload_nested_too_deep_is_one_line(dsn):
    deep = '{"a":' * 5000 + "1" + "}" * 5000
    out = subprocess.run([sys.executable, "-m", "angela_queue", "enqueue", "k", "--dsn", dsn, "--payload", deep],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 2 and "nested too deeply" in out.stderr and "Traceback" not in out.stderr


def test_a_supervisor_refused_during_shutdown_still_waits_for_its_workers(dsn, conn, app, start_supervisor):
    sup = start_supervisor(app, "--min-workers", "1", "--base-workers", "1", "--max-workers", "1",
                           "--shutdown-grace", "20", *FAST, env={"ANGELA_QUEUE_ROOM_MAX_CPU_PERCENT": "101"})
    wait_until(lambda: scalar(dsn, "SELECT count(*) FROM angela_queue.workers WHERE status = 'idle'"),
               details=sup.log)
    conn.execute("INSERT INTO angela_queue.tasks (kind, payload) VALUES ('canary', '{\"n\": 1}')")
    wait_until(lambda: ran(dsn, 1), details=sup.log)
    refuse_updates(conn, "refuse_supervisor", "supervisors", "angela-queue-supervisor%", "insufficient_privilege",
                   "permission denied for table supervisors")
    sup.signal(signal.SIGTERM)
    assert sup.proc.wait(60) == 0, sup.log()
    assert "killing worker" not in sup.log()
    assert scalar(dsn, "SELECT count(*) FROM angela_queue.workers WHERE status = 'stopped'") == 1
