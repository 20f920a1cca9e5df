"""Every statement on the hot path walks an index: EXPLAIN (FORMAT JSON) of each,
on a table with a real mix of statuses (queued, scheduled, running, a large
finished history), must read angela_queue.tasks only through the index named
for it, never a sequential or bitmap scan of the queue.

The claim has its own, stricter check (fix_plans.assert_claim_walks_its_index:
it must also stop at a LIMIT and never sort the queue).
"""

from __future__ import annotations

import datetime as dt
import json
import uuid

import psycopg
import pytest

from angela_queue import statements as st
from angela_queue.queries import Query
from fix_plans import assert_claim_walks_its_index, explain_generic, plan_nodes

WORKER = uuid.uuid4()
# A worker's outcomes find their rows by id, or among the rows it runs.
HELD = {"tasks_pkey", "tasks_running_idx"}
NOW = dt.datetime.now(dt.timezone.utc)

# statement -> (the statement, built as the hot path builds it; the indexes
# it may read tasks through)
HOT = {
    "tasks_enqueue": (Query("tasks_enqueue", {
        "queue": "default", "kind": "k", "payload": "{}", "priority": 5, "run_at": None, "delay_s": None,
        "max_attempts": None, "timeout_s": None, "dedup_key": "d", "trace_context": None, "relax": True}), set()),
    # Into a bounded queue: its room is counted through the claim and
    # scheduled indexes, once per queue.
    "tasks_enqueue_many": (Query("tasks_enqueue_many", {
        "tasks": json.dumps([{"kind": "k", "payload": {}, "queue": "bounded"}]), "trace_context": None,
        "relax": True}), {"tasks_claim_idx", "tasks_scheduled_idx"}),
    "tasks_claim_kind": (st.claim_kind(worker_id=WORKER, queue="default", kind="low", limit=5),
                         {"tasks_batch_fill_idx", "tasks_pkey"}),
    "tasks_start_many": (st.start_many(worker_id=WORKER, ids=[1, 2]), HELD),
    "tasks_complete_many": (st.complete_many(worker_id=WORKER, outcomes_json=json.dumps(
        [{"id": 1, "result": None, "finished_at": 0}])), HELD),
    "tasks_fail_many": (st.fail_many(worker_id=WORKER, ids=[1], errors=["e"], retry_in_s=[1.0],
                                     failed_ats=[NOW]), HELD),
    "tasks_cancelled_many": (st.cancelled_many(worker_id=WORKER, ids=[1], errors=["e"], finished_ats=[NOW]), HELD),
    "tasks_snooze_many": (st.snooze_many(worker_id=WORKER, ids=[1], delays_s=[1.0]), HELD),
    "tasks_release_many": (st.release_many(worker_id=WORKER, ids=[1]), HELD),
    "tasks_promote_due": (st.promote_due(queues=["default"]), {"tasks_scheduled_idx", "tasks_pkey"}),
    "tasks_next_scheduled_at": (st.next_scheduled_at(queues=["default"]), {"tasks_scheduled_idx"}),
    "tasks_running_for_worker": (st.running_for_worker(worker_id=WORKER), {"tasks_running_idx"}),
    "tasks_cancel_requested_for_worker": (st.cancel_requested_for_worker(worker_id=WORKER), {"tasks_running_idx"}),
    "tasks_queued_depth": (st.queued_depth(queues=["default"], cap=1000), {"tasks_claim_idx"}),
    "tasks_due_count": (st.due_count(queues=["default"]), {"tasks_claim_idx", "tasks_scheduled_idx"}),
    # Reads angela_queue.queues only: no read of tasks at all.
    "workers_commit_mode": (st.commit_mode(queues=["default"]), set()),
    # The flags: one probe of the claim index per queue.
    "tasks_limits_in_play": (st.limits_in_play(queues=["default", "bounded"]), {"tasks_claim_idx"}),
}


@pytest.fixture(scope="module")
def busy_dsn(module_dsn):
    """A queue as it looks in production: a backlog, delayed and running tasks,
    and many more finished rows than unfinished ones."""
    with psycopg.connect(module_dsn, autocommit=True) as conn:
        conn.execute("INSERT INTO angela_queue.tasks (kind, priority) "
                     "SELECT CASE WHEN g % 4 = 0 THEN 'low' ELSE 'k' END, 1 + g % 10 FROM generate_series(1, 20000) g")
        conn.execute("INSERT INTO angela_queue.tasks (kind, run_at) "
                     "SELECT 'k', now() + interval '1 hour' FROM generate_series(1, 2000)")
        conn.execute("UPDATE angela_queue.tasks SET status = 'running', attempts = 1, started_at = now(), "
                     "worker_id = %s WHERE id <= 200", (WORKER,))
        conn.execute("UPDATE angela_queue.tasks SET status = 'succeeded', attempts = 1, started_at = now(), "
                     "finished_at = now() WHERE id > 200 AND id <= 15000")
        conn.execute("INSERT INTO angela_queue.queues (name, max_size) VALUES ('bounded', 100000)")
        conn.execute("VACUUM ANALYZE angela_queue.tasks")
    return module_dsn


# Statements that run their work inside a function: their plans are the
# function's statements', as auto_explain logs them (nested statements).
THROUGH_FUNCTION = {"tasks_enqueue_many"}


def explain(dsn: str, statement: Query) -> list[dict]:
    """Its custom plan and its generic plan (the one the worker's connection
    runs: db.HOT_PATH_SETTINGS)."""
    with psycopg.connect(dsn, autocommit=True) as conn:
        with conn.cursor() as cur:
            cur.execute("EXPLAIN (FORMAT JSON) " + statement.text, statement.params)
            custom = cur.fetchone()[0][0]["Plan"]
        return [custom, explain_generic(conn, statement.text, statement.params)]


def nested_plans(dsn: str, text: str, params: dict | None = None, *, generic: bool = False,
                 runs: int = 1) -> list[dict]:
    """What auto_explain logs for every statement ``text`` runs, nested ones
    inside the functions it calls included, as they execute (``runs``
    times, then rolled back): each {"Query Text", "Plan"}. ``generic``: as
    on the worker's connection (plan_cache_mode = force_generic_plan)."""
    plans: list[dict] = []
    with psycopg.connect(dsn) as conn:
        try:
            conn.execute("LOAD 'auto_explain'")
        except psycopg.Error as exc:
            pytest.skip(f"auto_explain cannot be loaded on this server: {exc}")
        settings = ["auto_explain.log_min_duration = 0", "auto_explain.log_nested_statements = on",
                    "auto_explain.log_format = json", "auto_explain.log_level = notice",
                    "client_min_messages = notice"]
        if generic:
            settings.append("plan_cache_mode = force_generic_plan")
        for setting in settings:
            conn.execute(f"SET LOCAL {setting}")
        conn.add_notice_handler(lambda d: plans.append(json.loads(d.message_primary.split("plan:", 1)[1])))
        for _ in range(runs):
            conn.execute(text, params)
        conn.rollback()
    return plans


def explain_nested(dsn: str, statement: Query) -> list[dict]:
    """The plans of the statements the named query runs inside functions it
    calls, kept where they touch angela_queue.tasks."""
    plans = nested_plans(dsn, statement.text, statement.params)
    return [p["Plan"] for p in plans if any(n.get("Relation Name") == "tasks" for n in plan_nodes(p["Plan"]))]


@pytest.mark.parametrize("name", sorted(HOT))
def test_the_hot_statement_reads_tasks_only_through_its_index(busy_dsn, name):
    statement, allowed = HOT[name]
    assert statement.name == name
    plans = explain_nested(busy_dsn, statement) if name in THROUGH_FUNCTION else explain(busy_dsn, statement)
    assert plans
    nodes = [n for plan in plans for n in plan_nodes(plan)]
    reads = [n for n in nodes if n.get("Relation Name") == "tasks" and n["Node Type"] != "ModifyTable"]
    kinds = {(n["Node Type"], n.get("Index Name")) for n in reads}
    assert all(node_type in ("Index Scan", "Index Only Scan") for node_type, _ in kinds), kinds
    assert {index for _, index in kinds} <= allowed, kinds
    if name.startswith("tasks_enqueue"):
        inserts = [n for n in nodes if n["Node Type"] == "ModifyTable" and n.get("Relation Name") == "tasks"]
        assert inserts and inserts[0].get("Conflict Arbiter Indexes") == ["tasks_dedup_idx"], inserts


@pytest.mark.parametrize("unlimited", [False, True], ids=["tasks_claim", "tasks_claim_unlimited"])
def test_the_claim_walks_its_index_on_a_busy_table(busy_dsn, unlimited):
    with psycopg.connect(busy_dsn, autocommit=True) as conn:
        assert_claim_walks_its_index(conn, unlimited=unlimited)


def test_every_hot_statement_has_a_plan_check():
    """A new statement on the hot path (statements.py) gets a plan check here too;
    the two claims' are fix_plans' stricter ones."""
    unchecked = set(st.HOT_STATEMENTS) - set(HOT) - {"tasks_claim", "tasks_claim_unlimited"}
    assert not unchecked, f"no plan check for {sorted(unchecked)}"


def test_the_worker_builds_its_hot_statements_only_through_statements_py():
    """No hot query name spelled with a dict beside it in the worker: each is
    built by its function in statements.py, so its parameters are named once."""
    from pathlib import Path
    worker = Path(__file__).parent.parent / "angela_queue" / "worker"
    for module in sorted(worker.glob("*.py")):
        text = module.read_text()
        spelled = sorted(name for name in st.HOT_STATEMENTS if f'"{name}"' in text)
        assert not spelled, f"{module.name} spells {spelled}"


def test_claim_room_counts_a_capped_kind_through_its_index_under_generic_plans(dsn):
    """claim_room (called by the claim for each limited kind, holding the
    kind's row lock) counts that kind's running tasks. The worker's
    connection runs generic plans only; there, without limited_kind <> ''
    spelled out, the count could not prove the partial index applies and
    read every running task of every kind."""
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("INSERT INTO angela_queue.tasks (kind) SELECT 'other' FROM generate_series(1, 3000)")
        conn.execute("UPDATE angela_queue.tasks SET status = 'running', attempts = 1, started_at = now(), "
                     "worker_id = %s", (WORKER,))
        conn.execute("INSERT INTO angela_queue.kinds (kind, concurrency) VALUES ('capped', 2)")
        conn.execute("VACUUM ANALYZE angela_queue.tasks")
    with psycopg.connect(dsn) as conn:
        conn.execute("SET plan_cache_mode = force_generic_plan")
        assert [conn.execute("SELECT angela_queue.claim_room('capped', 10)").fetchone()[0]
                for _ in range(3)] == [2, 2, 2]
        conn.rollback()
    # Three runs: past the first executions, where a plan may still be custom.
    plans = nested_plans(dsn, "SELECT angela_queue.claim_room('capped', 10)", generic=True, runs=3)
    counts = [p["Plan"] for p in plans if "count(*)" in p.get("Query Text", "") and "tasks" in p["Query Text"]]
    assert counts
    reads = {(n["Node Type"], n.get("Index Name")) for plan in counts for n in plan_nodes(plan)
             if n.get("Relation Name") == "tasks"}
    assert reads <= {("Index Only Scan", "tasks_limited_running_idx"), ("Index Scan", "tasks_limited_running_idx")}, reads
