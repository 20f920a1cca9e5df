"""Durability per queue: 'durable' (the default) or 'fast'. A fast queue's
enqueues by the client (in transactions it owns) and the workers that serve
only fast queues commit with synchronous_commit off; so does a worker's claim
when it is its transaction's only write, with --claim-commit fast; nothing
else does."""

from __future__ import annotations

import uuid

import psycopg
import pytest
from psycopg.rows import dict_row

from angela_queue import Client, db, queries, statements
from angela_queue.config import Settings, load_settings
from angela_queue.errors import ConfigError
from angela_queue.worker.completer import outcome_statements
from angela_queue.worker.execution import Outcome
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


# --- the claim's commit ----------------------------------------------------------

@pytest.mark.parametrize("unlimited", [False, True], ids=["tasks_claim", "tasks_claim_unlimited"])
def test_a_claim_marked_relaxed_commits_without_the_flush_and_only_then(dsn, conn, unlimited):
    conn.execute("INSERT INTO angela_queue.tasks (kind) VALUES ('k'), ('k')")
    worker = uuid.uuid4()
    with psycopg.connect(dsn, row_factory=dict_row) as c:
        for relax, expected in ((False, "on"), (True, "off")):
            rows = db.fetch_all(c, statements.claim(worker_id=worker, queues=["default"], limit=1, relax=relax,
                                                    unlimited=unlimited))
            assert len(rows) == 1 and setting(c) == expected
            c.rollback()
            assert setting(c) == "on"                                   # local: that transaction only
        # Nothing claimed (an empty queue served): nothing is relaxed.
        assert db.fetch_all(c, statements.claim(worker_id=worker, queues=["empty"], limit=1, relax=True,
                                                unlimited=unlimited)) == []
        assert setting(c) == "on"
        c.rollback()


def test_only_a_trip_of_claims_alone_may_skip_the_flush():
    worker = uuid.uuid4()
    claim = statements.claim(worker_id=worker, queues=["default"], limit=1)
    fill = statements.claim_kind(worker_id=worker, queue="default", kind="k", limit=2)
    assert statements.claims_only([]) and statements.claims_only([fill, claim])
    # Every outcome (success, failure, cancel, snooze), a batch's start and a
    # release must be durable: with one of them in the trip, the claim is too.
    outcomes = outcome_statements(worker, [
        Outcome(1, ok=True), Outcome(2, ok=False, error="e", retry_in_s=1.0),
        Outcome(3, ok=False, cancelled=True), Outcome(4, ok=False, snooze_s=1.0)])
    durable = [*outcomes, statements.start_many(worker_id=worker, ids=[1]),
               statements.release_many(worker_id=worker, ids=[1])]
    assert len(outcomes) == 4
    for statement in durable:
        assert not statements.claims_only([statement, claim]), statement.name


def test_claim_commit_is_a_checked_setting():
    assert Settings().claim_commit == "durable"
    assert load_settings(environ={"ANGELA_QUEUE_CLAIM_COMMIT": "fast"}).claim_commit == "fast"
    with pytest.raises(ConfigError, match="--claim-commit must be durable or fast"):
        Settings(claim_commit="sometimes")


COMMIT_MODES_SQL = """
CREATE TABLE public.commit_modes (id bigint, status text, synchronous_commit text);
CREATE FUNCTION public.record_commit_mode() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO public.commit_modes VALUES (NEW.id, NEW.status, current_setting('synchronous_commit'));
    RETURN NULL;
END $$;
-- Deferred: it runs as the transaction commits, when a claim's SET LOCAL
-- (made after its UPDATE, in the same statement) is in force.
CREATE CONSTRAINT TRIGGER record_commit_mode AFTER UPDATE ON angela_queue.tasks
    DEFERRABLE INITIALLY DEFERRED FOR EACH ROW EXECUTE FUNCTION public.record_commit_mode();
"""


@pytest.mark.parametrize("claim_commit", ["fast", "durable", None])  # None: the default
def test_a_worker_relaxes_only_claims_that_travel_alone(dsn, write_app, start_worker, claim_commit):
    with psycopg.connect(dsn, autocommit=True) as c:
        c.execute(COMMIT_MODES_SQL)
    app = write_app("""
from angela_queue import task

@task("quick")
def quick(n):
    return n
""")
    chosen = ["--claim-commit", claim_commit] if claim_commit else []
    # One slot: each backlog outcome then travels with a claim that claims.
    worker = start_worker(app, *chosen, "--concurrency", "1", "--poll-interval", "0.2")
    def succeeded() -> int:
        return scalar(dsn, "SELECT count(*) FROM angela_queue.tasks WHERE status = 'succeeded'")

    with Client(dsn) as client:
        for i in range(3):
            # One at a time: each is claimed by an idle worker, alone in its trip.
            client.enqueue("quick", {"n": i})
            wait_until(lambda: succeeded() == i + 1, details=worker.log)
        # Then a backlog, one slot: each outcome travels with the next claim,
        # which claims a task, and that trip must wait for the disk.
        client.enqueue_many([{"kind": "quick", "payload": {"n": i}} for i in range(3, 8)])
        wait_until(lambda: succeeded() == 8, details=worker.log)
    with psycopg.connect(dsn, row_factory=dict_row) as c:
        modes = c.execute("SELECT status, synchronous_commit AS mode FROM public.commit_modes").fetchall()
    finished = [m["mode"] for m in modes if m["status"] == "succeeded"]
    claimed = [m["mode"] for m in modes if m["status"] == "running"]
    assert len(finished) == 8 and set(finished) == {"on"}       # an outcome always waits for the disk
    assert len(claimed) >= 8
    if claim_commit == "fast":
        assert "off" in claimed
    else:
        assert set(claimed) == {"on"}
