"""Least privilege, with real login roles: a producer, a worker and a reader can do
what their role promises, and what they must not do is refused."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import urllib.request
import uuid

import psycopg
import pytest
from psycopg import sql
from psycopg.conninfo import make_conninfo
from psycopg.rows import dict_row

from angela_queue import Client, DedupKeyHeld, TaskNotFound, db
from angela_queue.roles import ROLES
from angela_queue import statements as st
from fix_plans import assert_claim_walks_its_index
from fix_procs import APP_PRELUDE, RUNS_TABLE_SQL, SupervisorProcess, query, scalar, wait_until

APP = APP_PRELUDE + """
from angela_queue import task

@task("canary")
def canary(n):
    record(n)
    return n
"""




def connect(dsn: str) -> psycopg.Connection:
    return psycopg.connect(dsn, autocommit=True, row_factory=dict_row)


def denied(conn: psycopg.Connection, statement: str, params=None) -> None:
    with pytest.raises(psycopg.errors.InsufficientPrivilege, match="permission denied|must be owner"):
        conn.execute(statement, params)


def test_migrate_created_the_roles_and_granted_to_them(conn):
    assert {r["rolname"] for r in conn.execute(
        "SELECT rolname FROM pg_roles WHERE rolname = ANY(%s) AND NOT rolcanlogin", (list(ROLES),))} == set(ROLES)
    # INSERT of every column but enqueued_by (it marks a row enqueue_many
    # built whole, which the insert trigger passes over), and no UPDATE.
    assert conn.execute("SELECT has_column_privilege('angela_queue_producer', 'angela_queue.tasks', 'kind', 'INSERT') "
                        "AND has_column_privilege('angela_queue_producer', 'angela_queue.tasks', 'status', 'INSERT') "
                        "AND NOT has_column_privilege('angela_queue_producer', 'angela_queue.tasks', 'enqueued_by', "
                        "'INSERT') "
                        "AND NOT has_table_privilege('angela_queue_producer', 'angela_queue.tasks', 'UPDATE') "
                        "AS ok").fetchone()["ok"]


def test_a_producer_enqueues_by_sql_and_sees_only_its_own_tasks(conn, login):
    other = conn.execute("INSERT INTO angela_queue.tasks (kind, payload) VALUES ('secret', '{\"card\": 4242}') "
                         "RETURNING id").fetchone()["id"]
    conn.execute("INSERT INTO angela_queue.queues (name, max_size) VALUES ('tight', 0)")
    with connect(login("angela_queue_producer")) as producer:
        mine = producer.execute("INSERT INTO angela_queue.tasks (kind, payload, queue) VALUES "
                                "('mail', '{\"text\": \"urgent?\"}', 'brand_new_queue') "
                                "RETURNING id, status, boost, boost_rules, enqueued_by").fetchone()
        assert mine["status"] == "queued" and mine["boost"] == 4     # the trigger's lookups ran as the owner
        assert mine["enqueued_by"] == producer.info.user
        dropped = producer.execute("INSERT INTO angela_queue.tasks (kind, priority, queue) VALUES ('x', 2, 'tight') "
                                   "RETURNING status, last_error").fetchone()
        assert dropped["status"] == "dropped" and "is full" in dropped["last_error"]
        with pytest.raises(psycopg.Error, match="is full"):
            producer.execute("INSERT INTO angela_queue.tasks (kind, priority, queue) VALUES ('x', 7, 'tight')")
        # Another login's task is invisible: no payload, no result, not even its id.
        seen = {r["id"] for r in producer.execute("SELECT id FROM angela_queue.tasks")}
        assert other not in seen and mine["id"] in seen
        assert producer.execute("SELECT count(*) AS n FROM angela_queue.tasks WHERE id = %s",
                                (other,)).fetchone()["n"] == 0
        # What it must not do.
        denied(producer, "UPDATE angela_queue.tasks SET priority = 10 WHERE id = %s", (mine["id"],))
        denied(producer, "DELETE FROM angela_queue.tasks WHERE id = %s", (mine["id"],))
        denied(producer, "SELECT * FROM angela_queue.queues")
        denied(producer, "UPDATE angela_queue.queues SET max_size = NULL")
        denied(producer, "INSERT INTO angela_queue.boost_rules (name, condition, boost) VALUES ('me', '$.x', 9)")
        denied(producer, "SELECT * FROM angela_queue.workers")
        denied(producer, "SELECT * FROM angela_queue.queue_depth")
        denied(producer, "CREATE TABLE angela_queue.mine (x int)")
    assert scalar(conn.info.dsn, "SELECT count(*) FROM angela_queue.tasks WHERE id = %s", (other,)) == 1


def test_a_producer_uses_the_client_and_cancels_only_its_own(conn, dsn, login):
    theirs = conn.execute("INSERT INTO angela_queue.tasks (kind, dedup_key) VALUES ('k', 'shared') "
                          "RETURNING id").fetchone()["id"]
    with Client(login("angela_queue_producer")) as client:
        task = client.enqueue("k", {"n": 1}, priority=7)
        assert client.get(task.id)["payload"] == {"n": 1}
        many = client.enqueue_many([{"kind": "k", "payload": {"n": i}} for i in range(3)])
        assert len({t.id for t in many}) == 3
        # A dedup key held by another login's task: nothing is stored, and
        # nothing of that task (not even its id) comes back.
        with pytest.raises(DedupKeyHeld, match="another login") as held:
            client.enqueue("k", dedup_key="shared")
        assert str(theirs) not in str(held.value)
        with pytest.raises(DedupKeyHeld) as held:
            client.enqueue_many([{"kind": "k", "payload": {"n": 9}}, {"kind": "k", "dedup_key": "shared"}])
        stored, blocked = held.value.enqueued
        assert blocked is None and client.get(stored.id).payload == {"n": 9}
        with pytest.raises(TaskNotFound):
            client.get(theirs)
        with pytest.raises(TaskNotFound):
            client.cancel(theirs)
        assert client.cancel(task.id).cancelled
    assert scalar(dsn, "SELECT status FROM angela_queue.tasks WHERE id = %s", (theirs,)) == "queued"
    out = subprocess.run([sys.executable, "-m", "angela_queue", "enqueue", "k", "--dsn", login("angela_queue_producer")],
                         capture_output=True, text=True, timeout=60, env={**os.environ})
    assert out.returncode == 0 and out.stdout.startswith("task "), out.stderr


def test_a_worker_login_runs_a_whole_supervisor_and_no_ddl(conn, dsn, login, app_dir):
    query(dsn, RUNS_TABLE_SQL)
    conn.execute("GRANT INSERT ON public.runs TO angela_queue_worker")
    (app_dir / "roleapp.py").write_text(APP)
    worker_dsn = login("angela_queue_worker")
    conn.execute("INSERT INTO angela_queue.tasks (kind, payload) SELECT 'canary', jsonb_build_object('n', i) "
                 "FROM generate_series(1, 20) i")
    conn.execute("INSERT INTO angela_queue.tasks (kind, status) VALUES ('old', 'queued')")
    conn.execute("UPDATE angela_queue.tasks SET status = 'succeeded', finished_at = now() - interval '30 days' "
                 "WHERE kind = 'old'")
    sup = SupervisorProcess(worker_dsn, app_dir, "roleapp", [
        "--min-workers", "1", "--base-workers", "2", "--max-workers", "2", "--max-queue-size", "500",
        "--retention", "86400", "--heartbeat-interval", "0.3", "--poll-interval", "0.2"],
        {"ANGELA_QUEUE_ROOM_MAX_CPU_PERCENT": "101", "AQ_TEST_DSN": dsn})
    try:
        wait_until(lambda: scalar(dsn, "SELECT count(*) FROM angela_queue.tasks WHERE kind = 'canary' "
                                       "AND status = 'succeeded'") == 20, timeout=60, details=sup.log)
        wait_until(lambda: scalar(dsn, "SELECT count(*) FROM angela_queue.tasks WHERE kind = 'old'") == 0,
                   timeout=30, message="the leader (a worker login) to prune", details=sup.log)
        assert scalar(dsn, "SELECT max_size FROM angela_queue.queues WHERE name = 'default'") == 500
        assert "permission denied" not in sup.log() and "Traceback" not in sup.log()
        assert sup.stop() == 0
    finally:
        sup.cleanup()
    with connect(worker_dsn) as worker:
        denied(worker, "CREATE TABLE angela_queue.mine (x int)")
        denied(worker, "ALTER TABLE angela_queue.tasks ADD COLUMN x int")
        denied(worker, "UPDATE angela_queue.boost_rules SET boost = 1")


def test_the_claim_walks_its_index_as_a_worker_login(conn, login):
    """Row-level security adds a policy to every statement a worker login runs:
    the claim must still walk its index, not scan or sort the queue."""
    conn.execute("INSERT INTO angela_queue.tasks (kind) SELECT 'k' FROM generate_series(1, 20000)")
    conn.execute("ANALYZE angela_queue.tasks")
    with connect(login("angela_queue_worker")) as worker:
        assert_claim_walks_its_index(worker)


def test_a_worker_login_claims_limited_kinds_and_fires_periodic_tasks(conn, login):
    """claim_room locks the kind and counts starts with the worker's own rights;
    the leader's periodic enqueue needs no more than the worker role."""
    import datetime as dt

    from angela_queue.maintenance.periodic import Periodic
    conn.execute("INSERT INTO angela_queue.kinds (kind, concurrency, rate_limit, rate_period_s) "
                 "VALUES ('capped', 2, 100, 60)")
    conn.execute("INSERT INTO angela_queue.tasks (kind) SELECT 'capped' FROM generate_series(1, 5)")
    conn.execute("INSERT INTO angela_queue.periodic (name, kind, every_s) VALUES ('tick', 'tock', 60)")
    with connect(login("angela_queue_worker")) as worker:
        claimed = db.fetch_all(worker, st.claim(worker_id=uuid.uuid4(), queues=["default"], limit=10))
        assert len(claimed) == 2
        now = dt.datetime(2026, 12, 2, 10, 0, 30, tzinfo=dt.timezone.utc)
        leader = Periodic()
        leader.run(worker, now=now)
        assert leader.run(worker, now=now + dt.timedelta(minutes=1)) == 1
    with connect(login("angela_queue_producer")) as producer:
        denied(producer, "SELECT angela_queue.claim_room('capped', 1)")
        denied(producer, "INSERT INTO angela_queue.periodic (name, kind, every_s) VALUES ('x', 'y', 5)")


def test_a_reader_login_runs_status_and_the_dashboard_and_changes_nothing(conn, dsn, login):
    tid = conn.execute("INSERT INTO angela_queue.tasks (kind, payload) VALUES ('k', '{\"a\": 1}') "
                       "RETURNING id").fetchone()["id"]
    reader_dsn = login("angela_queue_reader")
    out = subprocess.run([sys.executable, "-m", "angela_queue", "status", "--dsn", reader_dsn],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0 and "QUEUES" in out.stdout, out.stderr
    with connect(reader_dsn) as reader:
        assert reader.execute("SELECT payload FROM angela_queue.tasks WHERE id = %s", (tid,)).fetchone() == \
            {"payload": {"a": 1}}
        reader.execute("SELECT * FROM angela_queue.queue_depth")
        denied(reader, "INSERT INTO angela_queue.tasks (kind) VALUES ('k')")
        denied(reader, "UPDATE angela_queue.queues SET max_size = 1")
        denied(reader, "SELECT * FROM angela_queue.cancel_task(%s)", (tid,))
    board = subprocess.Popen([sys.executable, "-m", "angela_queue", "dashboard", "--dsn", reader_dsn, "--port", "0"],
                             stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        line = board.stdout.readline()
        # http://host:port/#token=...: the fragment is the page's, not a path.
        url = line.split("dashboard: ", 1)[1].split(" ", 1)[0].split("#", 1)[0]
        with urllib.request.urlopen(url + "api/stats", timeout=30) as response:
            stats = json.load(response)
        assert stats["ok"] and stats["totals"]["queued"] == 1
        assert stats["can_act"] is False                         # the page shows its actions disabled
    finally:
        board.terminate()
        board.wait(30)


def test_roles_sql_prints_what_a_dba_runs(conn):
    out = subprocess.run([sys.executable, "-m", "angela_queue", "roles", "--sql"], capture_output=True, text=True,
                         timeout=60)
    assert out.returncode == 0
    assert "CREATE ROLE angela_queue_producer NOLOGIN;" in out.stdout
    assert "GRANT SELECT ON angela_queue.tasks TO angela_queue_producer;" in out.stdout
    assert "ON angela_queue.tasks TO angela_queue_producer;" in out.stdout.split("GRANT INSERT (", 1)[1]
    # The grants part runs as the owner on a migrated database (idempotent).
    from angela_queue.roles import split_parts
    conn.execute(split_parts(out.stdout)["grants"])


def test_a_producers_cancel_of_another_logins_task_takes_no_lock(conn, login):
    """cancel_task checks the caller before it locks: a producer holding its
    transaction open after cancelling someone else's task blocks nobody."""
    theirs = conn.execute("INSERT INTO angela_queue.tasks (kind) VALUES ('k') RETURNING id").fetchone()["id"]
    with psycopg.connect(login("angela_queue_producer")) as producer:       # a transaction left open
        assert producer.execute("SELECT * FROM angela_queue.cancel_task(%s)", (theirs,)).fetchall() == []
        conn.execute("SET lock_timeout = '2s'")
        # The row is not locked: a worker's update goes through at once.
        conn.execute("UPDATE angela_queue.tasks SET priority = 6 WHERE id = %s", (theirs,))
        producer.rollback()


def test_an_insert_cannot_forge_what_workers_write(conn, login):
    with connect(login("angela_queue_producer")) as producer:
        row = producer.execute("""
            INSERT INTO angela_queue.tasks (kind, attempts, worker_id, started_at, finished_at, result, last_error,
                                            errors, failed_at, cancel_requested_at)
            VALUES ('k', 3, gen_random_uuid(), now(), now(), '"forged"', 'forged', '[{"error": "forged"}]',
                    'infinity', now())
            RETURNING id""").fetchone()
    stored = conn.execute("SELECT * FROM angela_queue.tasks WHERE id = %s", (row["id"],)).fetchone()
    assert (stored["attempts"], stored["worker_id"], stored["started_at"], stored["finished_at"], stored["result"],
            stored["last_error"], stored["errors"], stored["failed_at"], stored["cancel_requested_at"]) == \
        (0, None, None, None, None, None, [], None, None)
    with pytest.raises(psycopg.errors.CheckViolation, match="task_failed_at_in_range"):
        conn.execute("UPDATE angela_queue.tasks SET failed_at = 'infinity' WHERE id = %s", (row["id"],))


def test_a_producer_cannot_skip_the_insert_trigger(conn, login):
    """The trigger passes over rows that carry enqueued_by (enqueue_many builds
    them whole): a producer may not name that column, so a row it writes
    itself always goes through the trigger, and enqueue_many's rows are its
    own, with every default, boost and check."""
    dsn = login("angela_queue_producer")
    with connect(dsn) as producer:
        denied(producer, "INSERT INTO angela_queue.tasks (kind, queue, priority, max_attempts, deadline, "
                         "enqueued_by, status, attempts) VALUES ('k', 'default', 5, 5, now(), 'someone_else', "
                         "'running', 7)")
        me = producer.execute("SELECT session_user AS me").fetchone()["me"]
        rows = producer.execute("SELECT * FROM angela_queue.enqueue_many(%s::jsonb)",
                                (json.dumps([{"kind": "k", "payload": {"text": "urgent?"}}]),)).fetchall()
        assert [r["boost"] for r in rows] == [4]
        assert producer.execute("SELECT count(*) AS n FROM angela_queue.tasks").fetchone()["n"] == 1
    stored = conn.execute("SELECT * FROM angela_queue.tasks WHERE id = %s", (rows[0]["id"],)).fetchone()
    assert (stored["enqueued_by"], stored["status"], stored["attempts"], stored["boost_rules"]) == \
        (me, "queued", 0, ["question", "urgent"])


def test_without_the_roles_a_login_that_may_use_the_schema_cannot_cancel(conn, pg_server, dsn):
    """The SECURITY DEFINER functions are closed to PUBLIC by the schema itself,
    not only by the roles' grants (a managed Postgres may have no roles)."""
    task_id = conn.execute("INSERT INTO angela_queue.tasks (kind) VALUES ('k') RETURNING id").fetchone()["id"]
    name = f"aq_test_{pg_server.run_id}_bare_{uuid.uuid4().hex[:6]}"
    with pg_server.admin() as admin:
        admin.execute(sql.SQL("CREATE ROLE {} LOGIN PASSWORD 'pw'").format(sql.Identifier(name)))
    try:
        conn.execute(sql.SQL("GRANT USAGE ON SCHEMA angela_queue TO {}").format(sql.Identifier(name)))
        with connect(make_conninfo(dsn, user=name, password="pw")) as bare:
            denied(bare, "SELECT * FROM angela_queue.cancel_task(%s)", (task_id,))
            denied(bare, "SELECT * FROM angela_queue.find_unfinished_task('default', 'x')")
        assert conn.execute("SELECT status FROM angela_queue.tasks WHERE id = %s", (task_id,)).fetchone()["status"] \
            == "queued"
    finally:
        conn.execute(sql.SQL("DROP OWNED BY {}").format(sql.Identifier(name)))
        with pg_server.admin() as admin:
            admin.execute(sql.SQL("DROP ROLE {}").format(sql.Identifier(name)))
