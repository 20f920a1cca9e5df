"""angela_queue.enqueue_many (revision 0012) does the insert trigger's work
set-based: whatever a list of tasks holds, each row it stores is the row the
trigger would have built for the same task, and each bad task fails the call
with the trigger's own error, SQLSTATE and column. Checked side by side in
one transaction (one now()), against the same tasks inserted row by row."""

from __future__ import annotations

import dataclasses
import json
import multiprocessing
import random

import psycopg
import pytest
from psycopg.rows import dict_row

from angela_queue import Client, QueueFull

# The tasks as a plain INSERT .. SELECT gives them, row by row through the
# insert trigger: the statement tasks_enqueue_many was before revision 0012.
ROW_BY_ROW = """
INSERT INTO angela_queue.tasks
    (queue, kind, payload, priority, run_at, max_attempts, timeout_s, dedup_key, trace_context)
SELECT s.queue, s.kind, s.payload, s.priority,
       coalesce(s.run_at, now() + make_interval(secs => coalesce(s.delay_s, 0))),
       s.max_attempts, s.timeout_s, s.dedup_key, %(trace)s::jsonb
FROM ROWS FROM (jsonb_to_recordset(%(tasks)s::jsonb)
                AS (queue text, kind text, payload jsonb, priority integer, run_at timestamptz,
                    delay_s double precision, max_attempts integer, timeout_s double precision, dedup_key text))
     WITH ORDINALITY AS s(queue, kind, payload, priority, run_at, delay_s, max_attempts, timeout_s, dedup_key, n)
ORDER BY s.n
ON CONFLICT (queue, dedup_key)
    WHERE dedup_key IS NOT NULL AND status IN ('scheduled', 'queued', 'running')
    DO NOTHING
RETURNING id
"""
SET_BASED = "SELECT id FROM angela_queue.enqueue_many(%(tasks)s::jsonb, %(trace)s::jsonb)"
# Every column but the id, and every queue's row (a new queue is created).
ROWS_OF = "SELECT * FROM angela_queue.tasks WHERE id = ANY(%s) ORDER BY array_position(%s, id)"
QUEUES = "SELECT * FROM angela_queue.queues ORDER BY name"


def both_ways(conn: psycopg.Connection, tasks: list[dict], trace: dict | None = None):
    """(rows, queues) each way, in one transaction so now() is the same."""
    params = {"tasks": json.dumps(tasks), "trace": json.dumps(trace) if trace else None}
    out = []
    with conn.transaction(force_rollback=True):
        for statement in (ROW_BY_ROW, SET_BASED):
            with conn.transaction(force_rollback=True), conn.cursor(row_factory=dict_row) as cur:
                ids = [r["id"] for r in cur.execute(statement, params).fetchall()]
                rows = cur.execute(ROWS_OF, (ids, ids)).fetchall()
                for row in rows:
                    del row["id"]
                out.append((rows, cur.execute(QUEUES).fetchall()))
    return out


def errors_both_ways(conn: psycopg.Connection, tasks: list[dict]):
    params = {"tasks": json.dumps(tasks), "trace": None}
    out = []
    for statement in (ROW_BY_ROW, SET_BASED):
        with pytest.raises(psycopg.Error) as caught:
            with conn.transaction():
                conn.execute(statement, params)
        d = caught.value.diag
        out.append((d.sqlstate, d.message_primary, d.column_name, d.message_hint))
    return out


@pytest.fixture
def setup(conn):
    """Kinds with defaults and limits, queues with defaults, a bounded queue
    with one place left, and one waiting task holding a dedup key."""
    conn.execute("INSERT INTO angela_queue.kinds (kind, queue, priority, max_attempts, timeout_s) "
                 "VALUES ('tuned', 'emails', 7, 3, 30)")
    conn.execute("INSERT INTO angela_queue.kinds (kind, concurrency) VALUES ('capped', 2)")
    conn.execute("INSERT INTO angela_queue.queues (name, default_priority, default_max_attempts, default_timeout_s, "
                 "aging_rate) VALUES ('emails', 2, 9, 5, 0.5), ('reports', 8, 2, 60, 0)")
    conn.execute("INSERT INTO angela_queue.queues (name, max_size) VALUES ('tight', 3)")
    conn.execute("INSERT INTO angela_queue.tasks (kind, queue) VALUES ('k', 'tight'), ('k', 'tight')")
    conn.execute("INSERT INTO angela_queue.tasks (kind, dedup_key) VALUES ('k', 'held')")
    return conn


def test_every_default_boost_and_status_matches_the_trigger(setup):
    tasks = [
        {"kind": "plain", "payload": {}},
        {"kind": "tuned", "payload": {"text": "urgent?"}},
        {"kind": "tuned", "payload": {}, "queue": "reports", "priority": 10},
        {"kind": "plain", "payload": {"emotional": True}, "queue": " reports "},
        {"kind": "plain", "payload": {}, "queue": ""},
        {"kind": "capped", "payload": {}, "queue": "brand_new"},
        {"kind": "plain", "payload": {}, "delay_s": 3600, "max_attempts": 1},
        {"kind": "plain", "payload": {}, "run_at": "1950-06-01T00:00:00+00:00", "timeout_s": 1.5},
        {"kind": "plain", "payload": {"text": 42}, "dedup_key": "fresh"},
        {"kind": "plain", "payload": {}, "dedup_key": "fresh"},
        {"kind": "plain", "payload": {}, "dedup_key": "held"},
        {"kind": "plain", "payload": {}, "queue": "tight", "priority": 9},
        {"kind": "plain", "payload": {}, "queue": "tight", "priority": 4},
        {"kind": "plain", "payload": {}, "queue": "tight", "priority": 1, "delay_s": 60},
    ]
    (rows, queues), (bulk_rows, bulk_queues) = both_ways(setup, tasks, {"traceparent": "00-ab-cd-01"})
    assert bulk_rows == rows
    assert [q["name"] for q in bulk_queues] == [q["name"] for q in queues]
    # What the trigger built, for the record: the duplicates are skipped, the
    # full queue's low-priority tasks dropped, the defaults layered.
    assert len(rows) == len(tasks) - 2
    assert [r["status"] for r in rows[-3:]] == ["queued", "dropped", "dropped"]
    assert (rows[1]["queue"], rows[1]["priority"], rows[1]["max_attempts"], rows[1]["boost"]) == ("emails", 7, 3, 4)
    assert rows[5]["limited_kind"] == "capped" and "brand_new" in {q["name"] for q in queues}


def test_random_lists_match_the_trigger(setup):
    """Many shapes at once: every option present or absent, at random."""
    rng = random.Random(12)
    options = {"queue": [None, "emails", "reports", "tight", "other", " other"],
               "priority": [None, 1, 4, 5, 9, 10], "delay_s": [None, 0, 30], "max_attempts": [None, 1, 7],
               "timeout_s": [None, 0.25, 90], "dedup_key": [None, None, "a", "b", "held"],
               "payload": [{}, {"text": "urgent"}, {"text": "why?"}, {"emotional": True}, {"emotional": "no"}]}
    for _ in range(5):
        tasks = []
        for i in range(60):
            task = {"kind": rng.choice(["plain", "tuned", "capped"])}
            for key, values in options.items():
                value = rng.choice(values)
                if value is not None:
                    task[key] = value
            task.setdefault("payload", {})
            # Over the bound only with a low priority: a high one fails the
            # whole call (checked below), either way.
            if task.get("queue") == "tight":
                task["priority"] = rng.choice([1, 2, 3, 4])
            tasks.append(task)
        (rows, queues), (bulk_rows, bulk_queues) = both_ways(setup, tasks)
        assert bulk_rows == rows and bulk_queues == queues


BAD = [
    ({"payload": {}}, "kind"),
    ({"kind": "  ", "payload": {}}, "kind"),
    ({"kind": "k" * 256, "payload": {}}, None),
    ({"kind": "k", "queue": "q" * 256, "payload": {}}, None),
    ({"kind": "k", "payload": {}, "priority": 11}, "priority"),
    ({"kind": "k", "payload": {}, "priority": 0}, "priority"),
    ({"kind": "k", "payload": [1, 2]}, "payload"),
    ({"kind": "k"}, "payload"),
    ({"kind": "k", "payload": {}, "max_attempts": 0}, "max_attempts"),
    ({"kind": "k", "payload": {}, "dedup_key": "d" * 2001}, "dedup_key"),
    ({"kind": "k", "payload": {}, "run_at": "10000-01-01T00:00:00+00:00"}, "run_at"),
    ({"kind": "k", "payload": {}, "run_at": "-infinity"}, "run_at"),
    ({"kind": "k", "payload": {}, "run_at": "1899-12-31T23:00:00+00:00"}, "run_at"),
    ({"kind": "k", "payload": {}, "timeout_s": 0}, "timeout_s"),
    ({"kind": "k", "payload": {}, "timeout_s": "NaN"}, "timeout_s"),
    ({"kind": "k", "payload": {}, "timeout_s": "Infinity"}, "timeout_s"),
    ({"kind": "k", "payload": {}, "queue": "tight", "priority": 5}, None),
]


@pytest.mark.parametrize("bad,column", BAD, ids=[f"{i}-{c}" for i, (_, c) in enumerate(BAD)])
def test_a_bad_task_fails_the_call_with_the_triggers_own_error(setup, bad, column):
    """Between good tasks, one bad task fails the whole call, with the same
    error either way, and nothing is stored (the good ones neither)."""
    setup.execute("INSERT INTO angela_queue.tasks (kind, queue) VALUES ('k', 'tight')")  # now full
    before = setup.execute("SELECT count(*) AS n FROM angela_queue.tasks").fetchone()["n"]
    tasks = [{"kind": "good", "payload": {}}, bad, {"kind": "good", "payload": {"n": 2}}]
    row_by_row, set_based = errors_both_ways(setup, tasks)
    assert set_based == row_by_row
    assert set_based[0] in ("23502", "22001", "23514", "22008", "AQ001") and set_based[2] == column
    assert setup.execute("SELECT count(*) AS n FROM angela_queue.tasks").fetchone()["n"] == before


def test_not_an_array_is_refused(conn):
    for doc in ("{}", "null", '"tasks"'):
        with pytest.raises(psycopg.errors.InvalidParameterValue, match="JSON array"):
            conn.execute("SELECT * FROM angela_queue.enqueue_many(%s::jsonb)", (doc,))
    assert conn.execute("SELECT count(*) AS n FROM angela_queue.enqueue_many('[]')").fetchone()["n"] == 0


def test_a_refused_bulk_harms_nothing_around_it(dsn):
    """The canaries before and after a bulk the database refuses (a task of
    priority >= 5 over a full queue) are stored once each, the refused
    call's good tasks are not, and a later bulk goes through."""
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("INSERT INTO angela_queue.queues (name, max_size) VALUES ('full', 0)")
    with Client(dsn, full_queue_wait_s=0) as client:
        first = client.enqueue("canary", {"n": 1})
        with pytest.raises(QueueFull):
            client.enqueue_many([{"kind": "k", "payload": {}},
                                 {"kind": "k", "payload": {}, "queue": "full", "priority": 7}])
        last = client.enqueue("canary", {"n": 2})
        later = client.enqueue_many([{"kind": "k", "payload": {"n": i}} for i in range(100)])
    with psycopg.connect(dsn) as conn:
        kinds = dict(conn.execute("SELECT kind, count(*) FROM angela_queue.tasks GROUP BY kind").fetchall())
    assert kinds == {"canary": 2, "k": 100}
    assert last.id > first.id and len({t.id for t in later}) == 100


def _enqueue_into_new_queues(dsn: str, seed: int, calls: int) -> int:
    rng = random.Random(seed)
    stored = 0
    with Client(dsn, pool_size=1) as client:
        for _ in range(calls):
            queues = [f"fresh_{i}_{rng.randrange(3)}" for i in range(6)]
            rng.shuffle(queues)
            tasks = [{"kind": "k", "payload": {"seed": seed}, "queue": q} for q in queues for _ in range(20)]
            stored += len(client.enqueue_many(tasks))
    return stored


def test_concurrent_bulks_creating_the_same_queues_neither_deadlock_nor_lose_a_task(dsn):
    """Four processes, each naming the same new queues in its own order: the
    queues are created in name order inside the call, so none waits on
    another in a cycle, and every task is stored once."""
    # The client retries a lost deadlock, so count them where Postgres does.
    deadlocks = "SELECT deadlocks FROM pg_stat_database WHERE datname = current_database()"
    with psycopg.connect(dsn) as conn:
        before = conn.execute(deadlocks).fetchone()[0]
    ctx = multiprocessing.get_context("spawn")
    with ctx.Pool(4) as pool:
        stored = pool.starmap(_enqueue_into_new_queues, [(dsn, seed, 15) for seed in range(4)])
    assert stored == [15 * 120] * 4
    with psycopg.connect(dsn) as conn:
        assert conn.execute("SELECT count(*) FROM angela_queue.tasks").fetchone()[0] == 4 * 15 * 120
        assert conn.execute("SELECT count(*) FROM angela_queue.queues WHERE name LIKE 'fresh_%'").fetchone()[0] == 18
        conn.execute("SELECT pg_stat_clear_snapshot()")
        assert conn.execute(deadlocks).fetchone()[0] == before


def test_enqueued_tasks_built_in_bulk_equal_those_built_one_by_one():
    import datetime as dt
    from angela_queue.tasks import EnqueuedTask
    rows = [{"id": i, "queue": "q", "kind": "k", "status": "queued", "priority": 5, "boost": 0, "tier": "medium",
             "run_at": dt.datetime(2026, 1, 1, tzinfo=dt.timezone.utc), "dedup_key": None, "last_error": None}
            for i in range(3)]
    built = EnqueuedTask.from_rows(rows)
    assert built == [EnqueuedTask.from_row(r) for r in rows]
    assert all(not t.duplicate for t in built) and built[2].id == 2
    with pytest.raises(dataclasses.FrozenInstanceError):
        built[0].id = 7                                   # still frozen
    # Rows that are not exactly the fields (one more column) take from_row.
    wider = [{**r, "extra": 1} for r in rows]
    assert EnqueuedTask.from_rows(wider) == built
    assert EnqueuedTask.from_rows([]) == []
