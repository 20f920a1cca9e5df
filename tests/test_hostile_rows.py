"""Hostile rows: inserts, updates and API calls that once wedged a queue, orphaned
claims or failed innocent tasks. Each is refused with a clear error and stores
nothing, or stored harmlessly; canary tasks around it run exactly once."""

from __future__ import annotations

import datetime as dt
import json
import subprocess
import sys

import psycopg
import pytest

from angela_queue import Client, TaskSpec
from fix_procs import APP_PRELUDE, RUNS_TABLE_SQL, query, scalar, wait_until

FAST = ["--poll-interval", "0.2", "--heartbeat-interval", "0.5"]

APP = APP_PRELUDE + """
from angela_queue import task

@task("canary")
def canary(n, **_):
    record(n)
"""


def count(dsn) -> int:
    return scalar(dsn, "SELECT count(*) FROM angela_queue.tasks")


# --- refused at the door: SQL ------------------------------------------------------------

@pytest.mark.parametrize("column, value, message", [
    ("run_at", "'infinity'", "run_at must be a finite time between 1900-01-01 and 9999-01-01"),
    ("run_at", "'-infinity'", "run_at must be a finite time"),
    ("run_at", "'10000-01-01'", "run_at must be a finite time"),
    ("run_at", "'1899-12-31'", "run_at must be a finite time"),
    ("timeout_s", "'NaN'", "timeout_s must be a positive, finite number of seconds"),
    ("timeout_s", "'Infinity'", "timeout_s must be a positive, finite number of seconds"),
    ("timeout_s", "0", "timeout_s must be a positive, finite number of seconds"),
])
def test_an_unreadable_insert_is_refused_with_a_clear_error_and_stores_nothing(rollback_conn, column, value,
                                                                               message):
    before = rollback_conn.execute("SELECT count(*) AS n FROM angela_queue.tasks").fetchone()["n"]
    with pytest.raises(psycopg.Error, match=message), rollback_conn.transaction():
        rollback_conn.execute(f"INSERT INTO angela_queue.tasks (kind, {column}) VALUES ('k', {value})")
    assert rollback_conn.execute("SELECT count(*) AS n FROM angela_queue.tasks").fetchone()["n"] == before


@pytest.mark.parametrize("assignment, message", [
    ("run_at = 'infinity'", "run_at must be a finite time"),
    ("run_at = '-infinity'", "run_at must be a finite time"),
    ("timeout_s = 'NaN'", "timeout_s must be a positive, finite number"),
    ("created_at = now() + interval '1 year'", "created_at is set when a task is inserted"),
    ("started_at = 'infinity'", "task_started_at_in_range"),
    ("finished_at = '-infinity'", "task_finished_at_in_range"),
    ("aging_rate = 'NaN'", "task_aging_rate_in_range"),
])
def test_an_unreadable_update_is_refused_and_changes_nothing(rollback_conn, assignment, message):
    tid = rollback_conn.execute("INSERT INTO angela_queue.tasks (kind) VALUES ('k') RETURNING id").fetchone()["id"]
    before = rollback_conn.execute("SELECT * FROM angela_queue.tasks WHERE id = %s", (tid,)).fetchone()
    with pytest.raises(psycopg.Error, match=message), rollback_conn.transaction():
        rollback_conn.execute(f"UPDATE angela_queue.tasks SET {assignment} WHERE id = %s", (tid,))
    assert rollback_conn.execute("SELECT * FROM angela_queue.tasks WHERE id = %s", (tid,)).fetchone() == before


def test_derived_columns_cannot_be_edited_into_nonsense(rollback_conn):
    """deadline and priority_key are recomputed on any edit: a NaN key would sort
    ahead of every task forever (NaN is the largest value in Postgres)."""
    tid = rollback_conn.execute("INSERT INTO angela_queue.tasks (kind) VALUES ('k') RETURNING id").fetchone()["id"]
    before = rollback_conn.execute("SELECT deadline, priority_key FROM angela_queue.tasks WHERE id = %s",
                                   (tid,)).fetchone()
    rollback_conn.execute("UPDATE angela_queue.tasks SET priority_key = 'NaN', deadline = 'infinity' WHERE id = %s",
                          (tid,))
    after = rollback_conn.execute("SELECT deadline, priority_key FROM angela_queue.tasks WHERE id = %s",
                                  (tid,)).fetchone()
    assert after == before


def test_a_caller_given_created_at_is_ignored(rollback_conn):
    row = rollback_conn.execute("INSERT INTO angela_queue.tasks (kind, created_at) VALUES ('k', '2100-01-01') "
                                "RETURNING created_at, now() AS now").fetchone()
    assert row["created_at"] == row["now"]


@pytest.mark.parametrize("statement, message", [
    ("UPDATE angela_queue.queues SET aging_rate = 'NaN'", "queue_aging_rate_in_range"),
    ("UPDATE angela_queue.queues SET aging_rate = 1e9", "queue_aging_rate_in_range"),
    ("UPDATE angela_queue.queues SET sla_grace = '1000 years'", "queue_sla_grace_in_range"),
    ("INSERT INTO angela_queue.boost_rules (name, condition, boost) VALUES ('huge', '$.x', 2000000000)",
     "boost_rule_boost_in_range"),
])
def test_settings_that_would_break_every_insert_or_view_are_refused(rollback_conn, statement, message):
    with pytest.raises(psycopg.Error, match=message), rollback_conn.transaction():
        rollback_conn.execute(statement)


# --- refused at the door: Python and the CLI, before anything is stored ----------------------

@pytest.mark.parametrize("options, message", [
    ({"delay": 1e12}, "would start the task after 9999-01-01"),
    ({"run_at": dt.datetime(1800, 1, 1, tzinfo=dt.timezone.utc)}, "run_at must be between 1900-01-01"),
    ({"dedup_key": 42}, "dedup_key must be a non-empty string"),
    ({"timeout": float("nan")}, "timeout must be a finite number"),
    ({"queue": "q\x00"}, "queue must not contain a NUL"),
])
def test_bad_api_options_raise_before_anything_is_stored(dsn, client, options, message):
    with pytest.raises(ValueError, match=message):
        client.enqueue("canary", {"n": 1}, **options)
    with pytest.raises(ValueError, match=message):
        client.enqueue_many([{"kind": "canary", "payload": {"n": 1}, **options}])
    assert count(dsn) == 0


def test_a_nul_in_a_payload_and_bad_ids_are_value_errors(dsn, client):
    with pytest.raises(ValueError, match="NUL"):
        TaskSpec("k", {"text": "a\x00b"})
    for bad in ("x", 1.5, True, 0, -3, None):
        with pytest.raises(ValueError, match="a task id must be a positive integer"):
            client.cancel(bad)
        with pytest.raises(ValueError, match="a task id must be a positive integer"):
            client.get(bad)
    assert count(dsn) == 0


def test_cli_delay_past_9999_is_one_line_and_stores_nothing(dsn):
    out = subprocess.run([sys.executable, "-m", "angela_queue", "enqueue", "canary", "--dsn", dsn, "--delay", "1e12"],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 1
    assert out.stderr.strip().splitlines() == [
        l for l in out.stderr.strip().splitlines() if "after 9999-01-01" in l], out.stderr
    assert count(dsn) == 0


# --- stored, and harmless: the worker and its canaries ---------------------------------------

def test_a_payload_python_cannot_decode_fails_alone_and_the_queue_flows(dsn, client, conn, write_app, start_worker):
    query(dsn, RUNS_TABLE_SQL)
    app = write_app(APP)
    before = [client.enqueue("canary", {"n": i}).id for i in range(3)]
    deep = "[" * 5000 + "]" * 5000                      # valid jsonb; RecursionError for Python's json
    poison = conn.execute("INSERT INTO angela_queue.tasks (kind, payload) VALUES ('canary', %s::jsonb) "
                          "RETURNING id", (json.dumps({"n": 99, "deep": "x"}).replace('"x"', deep),)).fetchone()["id"]
    after = [client.enqueue("canary", {"n": 10 + i}).id for i in range(3)]
    worker = start_worker(app, "--concurrency", "4", *FAST)
    wait_until(lambda: scalar(dsn, "SELECT count(*) FROM angela_queue.tasks WHERE status IN ('succeeded', "
                                   "'failed')") == 7, details=worker.log)
    row = query(dsn, "SELECT status, attempts, last_error FROM angela_queue.tasks WHERE id = %s", (poison,))[0]
    assert row["status"] == "failed" and row["attempts"] == 1     # no retry can decode it
    assert "the payload cannot be decoded by Python" in row["last_error"]
    assert sorted(r["n"] for r in query(dsn, "SELECT n FROM public.runs")) == [0, 1, 2, 10, 11, 12]
    assert {r["status"] for r in query(dsn, "SELECT status FROM angela_queue.tasks WHERE id = ANY(%s)",
                                       (before + after,))} == {"succeeded"}
    assert worker.proc.poll() is None
    assert worker.stop() == 0


def test_run_at_in_1900_runs_now_and_does_not_jump_the_queue(dsn, conn, client, write_app, start_worker):
    query(dsn, RUNS_TABLE_SQL)
    app = write_app(APP)
    conn.execute("INSERT INTO angela_queue.tasks (kind, payload, priority, run_at) "
                 "VALUES ('canary', '{\"n\": 2}', 1, '1900-01-02')")
    client.enqueue("canary", {"n": 1}, priority=9)
    worker = start_worker(app, "--concurrency", "1", "--batch-size", "1", *FAST)
    wait_until(lambda: scalar(dsn, "SELECT count(*) FROM public.runs") == 2, details=worker.log)
    assert [r["n"] for r in query(dsn, "SELECT n FROM public.runs ORDER BY at")] == [1, 2]
    assert worker.stop() == 0


def test_a_hostile_client_can_still_read_every_row_back(dsn, conn):
    """What the worker, status and Client.get decode is finite and in range: no
    stored row can make them crash."""
    conn.execute("INSERT INTO angela_queue.tasks (kind, run_at) VALUES ('k', '9998-12-31')")
    with Client(dsn) as client:
        [row] = query(dsn, "SELECT id FROM angela_queue.tasks")
        assert client.get(row["id"])["status"] == "scheduled"
