"""Hostile environments: a database that refuses every turn, one that is not there
yet, a schema of another revision, and a standalone worker killed mid-task.
Nothing spins, nothing is lost, and canaries run exactly once."""

from __future__ import annotations

import os
import signal
import subprocess
import sys

import psycopg
import pytest

from angela_queue import Client, SchemaMismatch, SchemaMissing
from fix_procs import APP_PRELUDE, RUNS_TABLE_SQL, SupervisorProcess, query, scalar, wait_until

FAST = ["--poll-interval", "0.2", "--heartbeat-interval", "0.5"]

APP = APP_PRELUDE + """
import time
from angela_queue import task

@task("canary")
def canary(n):
    record(n)

@task("nap")
def nap(n, seconds=60):
    record(n)
    time.sleep(seconds)
"""


def dbname(dsn: str) -> str:
    return psycopg.conninfo.conninfo_to_dict(dsn)["dbname"]


def set_read_only(pg_server, dsn: str, on: bool) -> None:
    """A failover to a replica, as the worker sees it: every new session is read-only."""
    name = dbname(dsn)
    with pg_server.admin() as admin:
        ident = psycopg.sql.Identifier(name)
        if on:
            admin.execute(psycopg.sql.SQL("ALTER DATABASE {} SET default_transaction_read_only = on").format(ident))
        else:
            admin.execute(psycopg.sql.SQL("ALTER DATABASE {} RESET default_transaction_read_only").format(ident))
        admin.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                      "WHERE datname = %s AND application_name LIKE 'angela-queue%%'", (name,))


# Transactions the server rolled back in this database (refused statements
# among them); pg_stat_clear_snapshot so that each read is fresh.
ROLLBACKS = ("SELECT xact_rollback FROM (SELECT pg_stat_clear_snapshot()) s, pg_stat_database "
             "WHERE datname = current_database()")


def test_a_read_only_database_is_backed_off_from_and_work_resumes_after(pg_server, dsn, client, write_app,
                                                                       start_worker):
    query(dsn, RUNS_TABLE_SQL)
    app = write_app(APP)
    worker = start_worker(app, *FAST)
    client.enqueue("canary", {"n": 1})
    wait_until(lambda: scalar(dsn, "SELECT count(*) FROM public.runs") == 1, details=worker.log)
    set_read_only(pg_server, dsn, True)
    try:
        # Work arrives while every turn is refused: the worker backs off.
        with psycopg.connect(dsn, autocommit=True) as writer:
            writer.execute("SET default_transaction_read_only = off")
            writer.execute("INSERT INTO angela_queue.tasks (kind, payload) VALUES ('canary', '{\"n\": 2}')")
        # Each part that writes (the turn, the poll, the heartbeat) logs its first refusal once.
        wait_until(lambda: all(part in worker.log() for part in (
                       "turn was refused", "poll (promotion of delayed tasks) was refused", "heartbeat was refused")),
                   details=worker.log, message="the first refusal of each part to be logged")
        lines_before = len(worker.log().splitlines())
        # Refusals keep coming (each turn, each beat: the server counts them as
        # rolled-back transactions), but the log does not grow with them: one
        # line for the first, then a summary at most every 30 s.
        rolled_back = scalar(dsn, ROLLBACKS)
        wait_until(lambda: scalar(dsn, ROLLBACKS) >= rolled_back + 8, timeout=60,
                   message="more refused turns", details=worker.log)
        assert len(worker.log().splitlines()) - lines_before <= 3, worker.log()
        assert worker.proc.poll() is None
    finally:
        set_read_only(pg_server, dsn, False)
    wait_until(lambda: scalar(dsn, "SELECT count(*) FROM public.runs") == 2, timeout=30, details=worker.log)
    assert "works again" in worker.log()
    assert sorted(r["n"] for r in query(dsn, "SELECT n FROM public.runs")) == [1, 2]
    assert worker.stop() == 0


def test_a_supervisor_started_before_its_database_waits_for_it(pg_server, template_db, app_dir):
    (app_dir / "waitapp.py").write_text(APP)
    name = pg_server.new_name("late")
    dsn = pg_server.dsn_for(name)
    sup = SupervisorProcess(dsn, app_dir, "waitapp", ["--min-workers", "1", "--base-workers", "1",
                                                      "--max-workers", "1", *FAST],
                            {"ANGELA_QUEUE_ROOM_MAX_CPU_PERCENT": "101"})
    try:
        wait_until(lambda: "connecting to the database was refused" in sup.log(), details=sup.log)
        assert sup.proc.poll() is None, sup.log()
        pg_server.create_database(name, template=template_db)
        query(dsn, RUNS_TABLE_SQL)
        with Client(dsn) as client:
            client.enqueue("canary", {"n": 7})
        wait_until(lambda: scalar(dsn, "SELECT count(*) FROM public.runs") == 1, timeout=60, details=sup.log)
        assert sum(1 for line in sup.log().splitlines() if "refused" in line) <= 6, sup.log()
        assert sup.stop() == 0
    finally:
        sup.cleanup()
        pg_server.drop_database(name)


def test_a_sigkilled_standalone_worker_has_its_task_recovered_by_a_peer(dsn, client, conn, write_app,
                                                                       start_worker):
    query(dsn, RUNS_TABLE_SQL)
    app = write_app(APP)
    victim = start_worker(app, "--dead-after", "2", *FAST)
    nap = client.enqueue("nap", {"n": 1, "seconds": 60}, max_attempts=3)
    wait_until(lambda: scalar(dsn, "SELECT count(*) FROM public.runs") == 1, details=victim.log)
    victim.signal(signal.SIGKILL)
    victim.wait()
    conn.execute("UPDATE angela_queue.tasks SET payload = '{\"n\": 2, \"seconds\": 0}' WHERE id = %s", (nap.id,))
    peer = start_worker(app, "--dead-after", "2", *FAST)
    row = wait_until(lambda: query(dsn, "SELECT * FROM angela_queue.tasks WHERE id = %s AND status = 'succeeded'",
                                   (nap.id,)), timeout=30, details=peer.log)[0]
    assert row["attempts"] == 2
    assert "is now the maintenance leader" in peer.log()
    assert scalar(dsn, "SELECT status FROM angela_queue.worker_health WHERE pid = %s", (victim.pid,)) == "dead"
    assert peer.stop() == 0


@pytest.mark.parametrize("revision", [None, "0001", "0999"])
def test_every_process_refuses_a_schema_of_another_revision_in_one_line(pg_server, empty_dsn, app_dir, revision):
    from angela_queue import migrations
    from angela_queue.schema import SCHEMA_REVISION
    if revision is not None:
        migrations.upgrade(empty_dsn, "0001")
        query(empty_dsn, "UPDATE angela_queue.alembic_version SET version_num = %s", (revision,))
    (app_dir / "schemaapp.py").write_text(APP)
    expected = ("run `angela-queue migrate`" if revision in (None, "0001")
                else "newer than this angela-queue")
    for command in (["worker", "--app", "schemaapp"], ["run", "--app", "schemaapp"], ["status"],
                    ["dashboard", "--port", "0"]):
        out = subprocess.run([sys.executable, "-m", "angela_queue", "--dsn", empty_dsn, *command], cwd=app_dir,
                             capture_output=True, text=True, timeout=60,
                             env={**os.environ, "AQ_TEST_DSN": empty_dsn})
        lines = out.stderr.strip().splitlines()
        assert out.returncode == 1 and len(lines) == 1, (command, out.stderr)
        assert expected in lines[0] and "Traceback" not in out.stderr, (command, lines[0])
        if revision is not None:
            assert revision in lines[0] and SCHEMA_REVISION in lines[0]
    with pytest.raises(SchemaMissing if revision is None else SchemaMismatch, match="angela-queue"):
        with Client(empty_dsn) as client:
            client.enqueue("canary", {"n": 1})


def test_a_task_held_in_a_collecting_batch_loses_no_attempt_when_its_worker_dies(dsn, client, write_app,
                                                                                  start_worker):
    """Only a started handler costs an attempt: a low-priority task that sat in
    a batch while its worker was SIGKILLed, again and again, still runs."""
    query(dsn, RUNS_TABLE_SQL)
    app = write_app(APP)
    low = client.enqueue("canary", {"n": 9}, priority=2, max_attempts=2)
    for _ in range(3):
        holder = start_worker(app, "--batch-wait", "600", "--dead-after", "2", *FAST)
        wait_until(lambda: scalar(dsn, "SELECT worker_id FROM angela_queue.tasks WHERE id = %s", (low.id,)),
                   details=holder.log)
        holder.signal(signal.SIGKILL)
        holder.wait()
        # A peer's maintenance (the lease) reclaims it, with no attempt counted.
        peer = start_worker(app, "--batch-wait", "600", "--dead-after", "2", "--queue", "elsewhere", *FAST)
        wait_until(lambda: scalar(dsn, "SELECT status FROM angela_queue.tasks WHERE id = %s", (low.id,))
                   == "queued", timeout=30, details=peer.log)
        peer.stop()
        assert scalar(dsn, "SELECT attempts FROM angela_queue.tasks WHERE id = %s", (low.id,)) == 0
    runner = start_worker(app, "--batch-wait", "0.1", *FAST)
    wait_until(lambda: scalar(dsn, "SELECT status FROM angela_queue.tasks WHERE id = %s", (low.id,))
               == "succeeded", details=runner.log)
    assert scalar(dsn, "SELECT attempts FROM angela_queue.tasks WHERE id = %s", (low.id,)) == 1
    assert scalar(dsn, "SELECT count(*) FROM public.runs WHERE n = 9") == 1
    assert runner.stop() == 0
