"""Durability per queue: 'durable' (the default) or 'fast'. A fast queue's
enqueues by the client (in transactions it owns) and the workers that serve
only fast queues commit with synchronous_commit off; nothing else does."""

from __future__ import annotations

import psycopg
import pytest
from psycopg.rows import dict_row

from angela_queue import Client, db, queries
from angela_queue.client import _params
from angela_queue.tasks import Query, TaskSpec, many_params
from fix_procs import APP_PRELUDE, RUNS_TABLE_SQL, scalar, wait_until


def setting(conn) -> str:
    return conn.execute("SHOW synchronous_commit").fetchone()["synchronous_commit"]


@pytest.fixture
def fast(conn):
    conn.execute("INSERT INTO angela_queue.queues (name, durability) VALUES ('fastq', 'fast')")


def test_durability_is_durable_unless_set_and_checked(conn):
    assert scalar(conn.info.dsn, "SELECT durability FROM angela_queue.queues WHERE name = 'default'") == "durable"
    with pytest.raises(psycopg.errors.CheckViolation):
        conn.execute("UPDATE angela_queue.queues SET durability = 'sometimes' WHERE name = 'default'")


def test_the_enqueue_statement_relaxes_its_own_transaction_for_a_fast_queue(dsn, fast):
    with psycopg.connect(dsn, row_factory=dict_row) as c:
        for queue, relax, expected in (("fastq", True, "off"), ("default", True, "on"), ("fastq", False, "on")):
            params = {**TaskSpec(kind="k", queue=queue).params(), "relax": relax}
            [row] = c.execute(queries.query("tasks_enqueue"), params).fetchall()
            assert row["queue"] == queue and setting(c) == expected
            c.rollback()
            assert setting(c) == "on"                                   # local: that transaction only
        rows = c.execute(queries.query("tasks_enqueue_many"),
                         {**many_params([TaskSpec(kind="k", queue="fastq")] * 2), "relax": True}).fetchall()
        assert len(rows) == 2 and setting(c) == "off"
        c.rollback()
        # One durable queue among them: the whole bulk stays durable.
        mixed = [TaskSpec(kind="k", queue="fastq"), TaskSpec(kind="k", queue="default"), TaskSpec(kind="k", queue="fastq")]
        rows = c.execute(queries.query("tasks_enqueue_many"), {**many_params(mixed), "relax": True}).fetchall()
        assert len(rows) == 3 and setting(c) == "on"
        c.rollback()


def test_only_the_clients_own_transactions_are_relaxed(dsn, conn, fast):
    assert _params(Query("tasks_enqueue", {"relax": False}))["relax"] is True
    assert _params(Query("tasks_get", {"id": 1})) == {"id": 1}
    with Client(dsn) as client:
        assert client.enqueue("k", {}, queue="fastq").queue == "fastq"
        # Inside the application's transaction: its commit stays durable.
        with psycopg.connect(dsn) as app:
            app.execute("CREATE TABLE IF NOT EXISTS public.orders (id int)")
            app.execute("INSERT INTO public.orders VALUES (1)")
            client.enqueue("k", {}, queue="fastq", conn=app)
            assert app.execute("SHOW synchronous_commit").fetchone()[0] == "on"
    assert scalar(dsn, "SELECT count(*) FROM angela_queue.tasks WHERE queue = 'fastq'") == 2


def test_a_worker_serving_only_fast_queues_commits_fast(dsn, fast, write_app, start_worker):
    with psycopg.connect(dsn, autocommit=True, row_factory=dict_row) as c:
        assert db.fetch_one(c, "workers_commit_mode", {"queues": ["fastq"]})["synchronous_commit"] == "off"
        assert setting(c) == "off"
        assert db.fetch_one(c, "workers_commit_mode", {"queues": ["fastq", "default"]})["synchronous_commit"] == "on"
        assert setting(c) == "on"
    with psycopg.connect(dsn, autocommit=True) as c:
        c.execute(RUNS_TABLE_SQL)
    app = write_app(APP_PRELUDE + """
from angela_queue import task

@task("quick", queue="fastq")
def quick(n):
    record(n)
""")
    worker = start_worker(app, "--queue", "fastq", "--poll-interval", "0.2")
    with Client(dsn) as client:
        client.enqueue_many([{"kind": "quick", "payload": {"n": i}, "queue": "fastq"} for i in range(20)])
    wait_until(lambda: scalar(dsn, "SELECT count(*) FROM angela_queue.tasks WHERE status = 'succeeded'") == 20,
               details=worker.log)


def test_a_producer_login_enqueues_into_a_fast_queue(dsn, fast, login):
    with Client(login("angela_queue_producer")) as producer:
        assert producer.enqueue("k", {}, queue="fastq").status == "queued"
        assert len(producer.enqueue_many([{"kind": "k", "payload": {}, "queue": "fastq"}] * 3)) == 3
