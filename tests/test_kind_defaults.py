"""@task defaults reach every producer: recorded in angela_queue.kinds by
workers and `kinds sync`, applied by the insert trigger to any insert that
leaves a column unset (explicit > kind > queue > global)."""

from __future__ import annotations

import os
import subprocess
import sys
import uuid

import psycopg
import pytest

from angela_queue import Client, kinds, registry, task
from fix_procs import APP_PRELUDE, RUNS_TABLE_SQL, query, scalar, wait_until

FAST = ["--poll-interval", "0.2", "--heartbeat-interval", "0.5"]

TUNED_APP = APP_PRELUDE + """
from angela_queue import task

@task("tuned", priority=7, max_attempts=3, queue="emails", timeout=30, backoff_base=2, backoff_max=60)
def tuned(n=0):
    record(n)
    return "ok"

@task("plain")
def plain(n=0):
    record(n)
"""




def insert_sql(conn, sql: str, params=None) -> dict:
    return conn.execute(sql + " RETURNING id, queue, priority, max_attempts, timeout_s, tier", params).fetchone()


def record_tuned(conn) -> None:
    @task("tuned", priority=7, max_attempts=3, queue="emails", timeout=30)
    def tuned():
        pass

    @task("plain")
    def plain():
        pass

    kinds.record(conn, "test")


def test_a_sql_insert_of_a_tuned_kind_gets_its_task_defaults(conn, clean_registry):
    record_tuned(conn)
    row = insert_sql(conn, "INSERT INTO angela_queue.tasks (kind) VALUES ('tuned')")
    assert (row["queue"], row["priority"], row["max_attempts"], row["timeout_s"], row["tier"]) == \
        ("emails", 7, 3, 30.0, "high")


def test_explicit_values_beat_the_kind_defaults(conn, clean_registry):
    record_tuned(conn)
    row = insert_sql(conn, "INSERT INTO angela_queue.tasks (kind, queue, priority, max_attempts, timeout_s) "
                           "VALUES ('tuned', 'other', 2, 9, 1.5)")
    assert (row["queue"], row["priority"], row["max_attempts"], row["timeout_s"]) == ("other", 2, 9, 1.5)


def test_null_means_unset_and_an_empty_queue_name_too(conn, clean_registry):
    record_tuned(conn)
    row = insert_sql(conn, "INSERT INTO angela_queue.tasks (kind, queue, priority, max_attempts) "
                           "VALUES ('tuned', '  ', NULL, NULL)")
    assert (row["queue"], row["priority"], row["max_attempts"]) == ("emails", 7, 3)


def test_queue_defaults_apply_where_the_kind_sets_nothing(conn, clean_registry):
    record_tuned(conn)
    conn.execute("INSERT INTO angela_queue.queues (name, default_priority, default_max_attempts, default_timeout_s) "
                 "VALUES ('bulk', 2, 8, 12.5)")
    # 'plain' sets nothing: the queue's defaults.
    row = insert_sql(conn, "INSERT INTO angela_queue.tasks (kind, queue) VALUES ('plain', 'bulk')")
    assert (row["priority"], row["max_attempts"], row["timeout_s"]) == (2, 8, 12.5)
    # 'tuned' sets priority and attempts: the kind wins over the queue.
    row = insert_sql(conn, "INSERT INTO angela_queue.tasks (kind, queue) VALUES ('tuned', 'bulk')")
    assert (row["priority"], row["max_attempts"], row["timeout_s"]) == (7, 3, 30.0)


def test_an_unknown_kind_gets_the_global_defaults(conn):
    row = insert_sql(conn, "INSERT INTO angela_queue.tasks (kind) VALUES ('nobody_knows')")
    assert (row["queue"], row["priority"], row["max_attempts"], row["timeout_s"]) == ("default", 5, 5, None)


def test_a_changed_default_applies_to_the_next_insert_and_not_to_stored_tasks(conn, clean_registry):
    record_tuned(conn)
    before = insert_sql(conn, "INSERT INTO angela_queue.tasks (kind) VALUES ('tuned')")
    conn.execute("UPDATE angela_queue.kinds SET priority = 9 WHERE kind = 'tuned'")
    after = insert_sql(conn, "INSERT INTO angela_queue.tasks (kind) VALUES ('tuned')")
    assert after["priority"] == 9 and after["tier"] == "critical"
    assert conn.execute("SELECT priority FROM angela_queue.tasks WHERE id = %s",
                        (before["id"],)).fetchone()["priority"] == 7


@pytest.mark.parametrize("column, value", [("priority", 11), ("priority", 0), ("max_attempts", 0),
                                           ("timeout_s", -1.0), ("timeout_s", float("nan")),
                                           ("queue", " padded "), ("queue", "")])
def test_kinds_rows_that_would_make_bad_tasks_are_refused(conn, column, value):
    with pytest.raises(psycopg.errors.CheckViolation):
        conn.execute(f"INSERT INTO angela_queue.kinds (kind, {column}) VALUES ('k', %s)", (value,))


@pytest.mark.parametrize("column, value", [("default_priority", 11), ("default_max_attempts", 0),
                                           ("default_timeout_s", float("inf"))])
def test_queue_defaults_that_would_make_bad_tasks_are_refused(conn, column, value):
    with pytest.raises(psycopg.errors.CheckViolation):
        conn.execute(f"UPDATE angela_queue.queues SET {column} = %s WHERE name = 'default'", (value,))


def test_recording_twice_changes_nothing_the_second_time(conn, clean_registry):
    record_tuned(conn)
    stamp = conn.execute("SELECT xmin::text AS x FROM angela_queue.kinds WHERE kind = 'tuned'").fetchone()["x"]
    assert kinds.record(conn, "again") == []
    assert conn.execute("SELECT xmin::text AS x FROM angela_queue.kinds WHERE kind = 'tuned'").fetchone()["x"] == stamp


def test_the_python_client_leaves_unset_options_to_the_database(dsn, conn, clean_registry):
    """A producer that never imported the handler's module still gets its defaults."""
    record_tuned(conn)
    registry.clear()   # this process knows nothing of 'tuned' now
    with Client(dsn) as client:
        stored = client.enqueue("tuned", {"n": 1})
        explicit = client.enqueue("tuned", {"n": 2}, priority=3, queue="q2")
        bulk = client.enqueue_many([{"kind": "tuned"}, {"kind": "plain"}, {"kind": "tuned", "max_attempts": 1}])
    assert (stored.queue, stored.priority) == ("emails", 7)
    assert (explicit.queue, explicit.priority) == ("q2", 3)
    assert [(t.queue, t.priority) for t in bulk] == [("emails", 7), ("default", 5), ("emails", 7)]
    assert conn.execute("SELECT max_attempts FROM angela_queue.tasks WHERE id = %s",
                        (bulk[2].id,)).fetchone()["max_attempts"] == 1


def test_dedup_without_a_queue_finds_the_holder_in_the_kinds_queue(dsn, conn, clean_registry):
    record_tuned(conn)
    registry.clear()
    with Client(dsn) as client:
        first = client.enqueue("tuned", dedup_key="order-7")
        again = client.enqueue("tuned", dedup_key="order-7")
        many = client.enqueue_many([{"kind": "tuned", "dedup_key": "order-7"},
                                    {"kind": "tuned", "dedup_key": "order-8"}])
    assert first.queue == "emails" and not first.duplicate
    assert again.id == first.id and again.duplicate
    assert many[0].id == first.id and many[0].duplicate and not many[1].duplicate


def test_a_producer_login_gets_the_defaults_it_cannot_write(dsn, conn, clean_registry):
    record_tuned(conn)
    login = f"aq_kinds_{uuid.uuid4().hex[:8]}"
    conn.execute(f"CREATE ROLE {login} LOGIN IN ROLE angela_queue_producer")
    try:
        info = psycopg.conninfo.conninfo_to_dict(dsn)
        info["user"] = login
        info.pop("password", None)
        with psycopg.connect(psycopg.conninfo.make_conninfo(**info), autocommit=True) as producer:
            row = producer.execute("INSERT INTO angela_queue.tasks (kind) VALUES ('tuned') "
                                   "RETURNING queue, priority, max_attempts").fetchone()
            assert row == ("emails", 7, 3)
            with pytest.raises(psycopg.errors.InsufficientPrivilege):
                producer.execute("UPDATE angela_queue.kinds SET priority = 1")
    finally:
        conn.execute(f"DROP OWNED BY {login}")
        conn.execute(f"DROP ROLE {login}")


def test_a_worker_records_its_kinds_and_runs_a_sql_insert_with_them(dsn, write_app, start_worker):
    query(dsn, RUNS_TABLE_SQL)
    app = write_app(TUNED_APP)
    worker = start_worker(app, "--queue", "default,emails", *FAST)
    wait_until(lambda: scalar(dsn, "SELECT count(*) FROM angela_queue.kinds WHERE kind IN ('tuned', 'plain')") == 2,
               message="the worker to record its kinds", details=worker.log)
    row = query(dsn, "SELECT * FROM angela_queue.kinds WHERE kind = 'tuned'")[0]
    assert (row["queue"], row["priority"], row["max_attempts"], row["timeout_s"], row["backoff_base_s"],
            row["backoff_max_s"], row["batch"]) == ("emails", 7, 3, 30.0, 2.0, 60.0, False)
    assert "worker" in row["updated_by"]
    plain = query(dsn, "SELECT * FROM angela_queue.kinds WHERE kind = 'plain'")[0]
    assert (plain["queue"], plain["priority"], plain["max_attempts"]) == (None, None, None)
    tid = scalar(dsn, "INSERT INTO angela_queue.tasks (kind, payload) VALUES ('tuned', '{\"n\": 7}') RETURNING id")
    wait_until(lambda: scalar(dsn, "SELECT status FROM angela_queue.tasks WHERE id = %s", (tid,)) == "succeeded",
               details=worker.log)
    done = query(dsn, "SELECT queue, priority, max_attempts FROM angela_queue.tasks WHERE id = %s", (tid,))[0]
    assert (done["queue"], done["priority"], done["max_attempts"]) == ("emails", 7, 3)


def cli(dsn: str, *args: str, cwd=None) -> subprocess.CompletedProcess:
    env = {**os.environ, "AQ_TEST_DSN": dsn}
    return subprocess.run([sys.executable, "-m", "angela_queue", "--dsn", dsn, *args], capture_output=True,
                          text=True, cwd=cwd, timeout=60, env=env)


def test_kinds_sync_records_the_defaults_and_cli_enqueue_gets_them(dsn, write_app, app_dir):
    app = write_app(TUNED_APP)
    synced = cli(dsn, "kinds", "sync", "--app", app, cwd=app_dir)
    assert synced.returncode == 0, synced.stderr
    assert "tuned" in synced.stdout and "2 kind(s) recorded, 2 changed" in synced.stdout
    again = cli(dsn, "kinds", "sync", "--app", app, cwd=app_dir)
    assert "0 changed" in again.stdout
    listed = cli(dsn, "kinds", "list")
    assert listed.returncode == 0 and "emails" in listed.stdout and "plain" in listed.stdout
    enqueued = cli(dsn, "enqueue", "tuned")          # this CLI process never imports the app
    assert enqueued.returncode == 0, enqueued.stderr
    assert "queue=emails priority=7" in enqueued.stdout


def test_kinds_sync_refuses_a_module_without_handlers(dsn, write_app, app_dir):
    app = write_app("x = 1\n", name="empty_app")
    result = cli(dsn, "kinds", "sync", "--app", app, cwd=app_dir)
    assert result.returncode == 1 and result.stderr.startswith("Error:") and "registered no @task" in result.stderr
    assert scalar(dsn, "SELECT count(*) FROM angela_queue.kinds") == 0
