"""The public table contract, against real Postgres: defaults, columns,
statuses, tiers and deadlines, rejected inserts, the aging view and
queue_depth. Everything here is plain SQL, as a producer in any language
would write it."""

from __future__ import annotations

import datetime as dt

import psycopg
import pytest

from fix_db import backdate

SPEC_COLUMNS = {
    "id", "queue", "kind", "payload", "priority", "boost", "tier", "status", "created_at",
    "run_at", "deadline", "attempts", "max_attempts", "started_at", "finished_at", "result",
    "last_error",
}
STATUSES = {"scheduled", "queued", "running", "succeeded", "failed", "cancelled", "dropped"}


# Every test here only runs SQL on one connection: they share one database,
# each in a transaction rolled back afterwards (tests/fix_db.py).
@pytest.fixture
def conn(rollback_conn):
    return rollback_conn


def insert(conn, sql: str, params=None) -> dict:
    return conn.execute(sql, params).fetchone()


def all_tasks(conn) -> list[dict]:
    return conn.execute("SELECT * FROM angela_queue.tasks ORDER BY id").fetchall()


# --- the contract ------------------------------------------------------------

def test_insert_with_only_kind_gets_every_default(conn):
    row = insert(conn, "INSERT INTO angela_queue.tasks (kind) VALUES ('send_email') "
                       "RETURNING *, now() AS tx_now")
    assert row["kind"] == "send_email"
    assert row["queue"] == "default"
    assert row["payload"] == {}
    assert row["priority"] == 5
    assert row["boost"] == 0
    assert row["boost_rules"] == []
    assert row["tier"] == "medium"
    assert row["status"] == "queued"
    assert row["attempts"] == 0
    assert row["max_attempts"] >= 1
    assert row["created_at"] == row["tx_now"]
    assert row["run_at"] == row["tx_now"]
    assert row["deadline"] == row["run_at"] + dt.timedelta(minutes=5)
    assert row["started_at"] is None and row["finished_at"] is None
    assert row["result"] is None and row["last_error"] is None
    assert isinstance(row["id"], int)


def test_every_spec_column_exists(conn):
    rows = conn.execute(
        "SELECT column_name, data_type FROM information_schema.columns "
        "WHERE table_schema = 'angela_queue' AND table_name = 'tasks'").fetchall()
    types = {r["column_name"]: r["data_type"] for r in rows}
    assert SPEC_COLUMNS <= set(types), f"missing: {SPEC_COLUMNS - set(types)}"
    assert types["payload"] == "jsonb"
    assert types["result"] == "jsonb"
    assert types["priority"] == "integer"


def test_ids_are_distinct_and_increasing(conn):
    ids = [r["id"] for r in conn.execute(
        "INSERT INTO angela_queue.tasks (kind) SELECT 'k' FROM generate_series(1, 3) RETURNING id").fetchall()]
    assert ids == sorted(ids) and len(set(ids)) == 3


def test_status_accepts_exactly_the_spec_statuses(conn):
    task_id = insert(conn, "INSERT INTO angela_queue.tasks (kind) VALUES ('k') RETURNING id")["id"]
    for status in sorted(STATUSES):
        conn.execute("UPDATE angela_queue.tasks SET status = %s, finished_at = now() WHERE id = %s", (status, task_id))
        assert insert(conn, "SELECT status FROM angela_queue.tasks WHERE id = %s", (task_id,))["status"] == status
    with pytest.raises(psycopg.errors.CheckViolation):
        with conn.transaction():
            conn.execute("UPDATE angela_queue.tasks SET status = 'paused' WHERE id = %s", (task_id,))
    # A final status without finished_at would never be pruned: refused.
    with pytest.raises(psycopg.errors.CheckViolation, match="task_final_has_finished_at"):
        with conn.transaction():
            conn.execute("UPDATE angela_queue.tasks SET status = 'failed', finished_at = NULL WHERE id = %s",
                         (task_id,))


@pytest.mark.parametrize("priority, tier, window_s", [
    (1, "low", 1800), (2, "low", 1800), (3, "low", 1800), (4, "low", 1800),
    (5, "medium", 300), (6, "medium", 300),
    (7, "high", 60), (8, "high", 60),
    (9, "critical", 0), (10, "critical", 0),
])
def test_tier_and_deadline_for_each_priority(conn, priority, tier, window_s):
    row = insert(conn, "INSERT INTO angela_queue.tasks (kind, priority) VALUES ('k', %s) "
                       "RETURNING tier, run_at, deadline", (priority,))
    assert row["tier"] == tier
    assert row["deadline"] - row["run_at"] == dt.timedelta(seconds=window_s)


def test_delayed_insert_is_scheduled_and_its_deadline_counts_from_run_at(conn):
    row = insert(conn, "INSERT INTO angela_queue.tasks (kind, priority, run_at) "
                       "VALUES ('k', 7, now() + interval '1 hour') RETURNING *, now() AS tx_now")
    assert row["status"] == "scheduled"
    assert row["run_at"] == row["tx_now"] + dt.timedelta(hours=1)
    assert row["deadline"] == row["run_at"] + dt.timedelta(minutes=1)


def test_insert_with_run_at_in_the_past_is_queued(conn):
    row = insert(conn, "INSERT INTO angela_queue.tasks (kind, run_at) "
                       "VALUES ('k', now() - interval '1 hour') RETURNING status")
    assert row["status"] == "queued"


def test_unknown_queue_is_created_unbounded(conn):
    assert insert(conn, "SELECT count(*) AS n FROM angela_queue.queues WHERE name = 'brand_new'")["n"] == 0
    insert(conn, "INSERT INTO angela_queue.tasks (kind, queue) VALUES ('k', 'brand_new') RETURNING id")
    q = insert(conn, "SELECT * FROM angela_queue.queues WHERE name = 'brand_new'")
    assert q is not None
    assert q["max_size"] is None
    assert q["aging_rate"] == pytest.approx(0.1)
    # Unbounded: many more inserts all queue.
    conn.execute("INSERT INTO angela_queue.tasks (kind, queue) SELECT 'k', 'brand_new' FROM generate_series(1, 50)")
    assert insert(conn, "SELECT count(*) AS n FROM angela_queue.tasks "
                        "WHERE queue = 'brand_new' AND status = 'queued'")["n"] == 51


# --- rejected inserts ----------------------------------------------------------

REJECTED = [
    # (label, statement, words the message must contain)
    ("priority 0", "INSERT INTO angela_queue.tasks (kind, priority) VALUES ('k', 0)", ["priority", "1 and 10", "0"]),
    ("priority 11", "INSERT INTO angela_queue.tasks (kind, priority) VALUES ('k', 11)", ["priority", "1 and 10", "11"]),
    ("missing kind", "INSERT INTO angela_queue.tasks (priority) VALUES (5)", ["kind"]),
    ("NULL kind", "INSERT INTO angela_queue.tasks (kind) VALUES (NULL)", ["kind"]),
    ("empty kind", "INSERT INTO angela_queue.tasks (kind) VALUES ('')", ["kind"]),
    ("blank kind", "INSERT INTO angela_queue.tasks (kind) VALUES ('   ')", ["kind"]),
    ("array payload", "INSERT INTO angela_queue.tasks (kind, payload) VALUES ('k', '[1, 2]')",
     ["payload", "object", "array"]),
    ("string payload", "INSERT INTO angela_queue.tasks (kind, payload) VALUES ('k', '\"hello\"')",
     ["payload", "object", "string"]),
    ("number payload", "INSERT INTO angela_queue.tasks (kind, payload) VALUES ('k', '42')",
     ["payload", "object", "number"]),
    ("JSON null payload", "INSERT INTO angela_queue.tasks (kind, payload) VALUES ('k', 'null')",
     ["payload", "object", "null"]),
    ("SQL NULL payload", "INSERT INTO angela_queue.tasks (kind, payload) VALUES ('k', NULL)",
     ["payload", "object", "NULL"]),
    ("invalid JSON text", "INSERT INTO angela_queue.tasks (kind, payload) VALUES ('k', '{not json')",
     ["json"]),
    ("new task not waiting", "INSERT INTO angela_queue.tasks (kind, status) VALUES ('k', 'running')",
     ["queued or scheduled", "running"]),
    ("bad max_attempts", "INSERT INTO angela_queue.tasks (kind, max_attempts) VALUES ('k', 0)",
     ["max_attempts"]),
]


@pytest.mark.parametrize("label, statement, words", REJECTED, ids=[r[0] for r in REJECTED])
def test_rejected_insert_names_the_problem_and_stores_nothing(conn, label, statement, words):
    conn.execute("INSERT INTO angela_queue.tasks (kind, payload, priority) VALUES ('keep', '{\"a\": 1}', 3)")
    before = all_tasks(conn)
    queues_before = conn.execute("SELECT * FROM angela_queue.queues ORDER BY name").fetchall()

    with pytest.raises(psycopg.Error) as caught:
        with conn.transaction():
            conn.execute(statement)

    message = caught.value.diag.message_primary or str(caught.value)
    for word in words:
        assert word.lower() in message.lower(), f"{label}: {message!r} does not mention {word!r}"
    assert all_tasks(conn) == before
    assert conn.execute("SELECT * FROM angela_queue.queues ORDER BY name").fetchall() == queues_before


def test_one_bad_row_rejects_the_whole_multi_row_insert(conn):
    conn.execute("INSERT INTO angela_queue.tasks (kind) VALUES ('keep')")
    before = all_tasks(conn)
    with pytest.raises(psycopg.errors.CheckViolation, match="priority"):
        with conn.transaction():
            conn.execute("INSERT INTO angela_queue.tasks (kind, priority) VALUES ('a', 5), ('b', 12), ('c', 5)")
    assert all_tasks(conn) == before


def test_update_cannot_push_priority_out_of_range(conn):
    task_id = insert(conn, "INSERT INTO angela_queue.tasks (kind) VALUES ('k') RETURNING id")["id"]
    with pytest.raises(psycopg.errors.CheckViolation, match="priority"):
        with conn.transaction():
            conn.execute("UPDATE angela_queue.tasks SET priority = 11 WHERE id = %s", (task_id,))
    assert insert(conn, "SELECT priority FROM angela_queue.tasks WHERE id = %s", (task_id,))["priority"] == 5


def test_changing_priority_or_run_at_recomputes_deadline_and_order(conn):
    row = insert(conn, "INSERT INTO angela_queue.tasks (kind, priority) VALUES ('k', 3) "
                       "RETURNING id, priority_key, deadline, run_at")
    updated = insert(conn, "UPDATE angela_queue.tasks SET priority = 9 WHERE id = %s "
                           "RETURNING tier, priority_key, deadline, run_at", (row["id"],))
    assert updated["tier"] == "critical"
    assert updated["deadline"] == updated["run_at"]
    assert updated["priority_key"] == pytest.approx(row["priority_key"] + 6)


# --- aging: the queued_tasks view --------------------------------------------

def test_effective_priority_is_priority_plus_boost_plus_aging(conn):
    ids = [r["id"] for r in conn.execute("""
        INSERT INTO angela_queue.tasks (kind, priority, payload) VALUES
            ('fresh', 4, '{}'), ('old', 3, '{"emotional": true}'), ('older', 6, '{"text": "urgent?"}')
        RETURNING id""").fetchall()]
    backdate(conn, ids[1], 37)
    backdate(conn, ids[2], 150)
    rows = conn.execute("""
        SELECT v.kind, v.effective_priority, t.priority, t.boost, t.aging_rate,
               extract(epoch FROM now() - t.run_at)::double precision / 60 AS minutes
        FROM angela_queue.queued_tasks v JOIN angela_queue.tasks t USING (id)""").fetchall()
    assert {r["kind"] for r in rows} == {"fresh", "old", "older"}
    for r in rows:
        expected = r["priority"] + r["boost"] + r["aging_rate"] * r["minutes"]
        assert r["effective_priority"] == pytest.approx(expected, abs=1e-6), r["kind"]
    by_kind = {r["kind"]: r for r in rows}
    # The default rate, 0.1 a minute, from the plan.
    assert by_kind["old"]["effective_priority"] == pytest.approx(3 + 2 + 3.7, abs=0.01)
    assert by_kind["older"]["effective_priority"] == pytest.approx(6 + 4 + 15, abs=0.01)


def test_backdated_low_priority_task_outranks_fresh_critical_one(conn):
    conn.execute("INSERT INTO angela_queue.tasks (kind, priority) VALUES ('critical', 10)")
    starving = conn.execute("INSERT INTO angela_queue.tasks (kind, priority) VALUES ('starving', 1) "
                            "RETURNING id").fetchone()["id"]
    backdate(conn, starving, 180)
    conn.execute("INSERT INTO angela_queue.tasks (kind, priority) VALUES ('medium', 5)")

    view = conn.execute("SELECT kind, effective_priority FROM angela_queue.queued_tasks").fetchall()
    assert [r["kind"] for r in view] == ["starving", "critical", "medium"]
    assert view[0]["effective_priority"] > view[1]["effective_priority"]

    # The stored key the claim index walks agrees with the live formula.
    stored = conn.execute("SELECT kind FROM angela_queue.tasks WHERE status = 'queued' "
                          "ORDER BY priority_key DESC, id").fetchall()
    assert [r["kind"] for r in stored] == ["starving", "critical", "medium"]


def test_fresh_critical_task_outranks_slightly_older_low_one(conn):
    low = conn.execute("INSERT INTO angela_queue.tasks (kind, priority) VALUES ('low', 1) RETURNING id").fetchone()
    backdate(conn, low["id"], 10)
    conn.execute("INSERT INTO angela_queue.tasks (kind, priority) VALUES ('critical', 10)")
    view = conn.execute("SELECT kind FROM angela_queue.queued_tasks").fetchall()
    assert [r["kind"] for r in view] == ["critical", "low"]


def test_a_run_at_in_the_past_does_not_age_a_task(conn):
    """Aging counts from greatest(run_at, created_at): a producer that writes
    run_at = 1900 means "now", and must not jump ahead of everything forever."""
    conn.execute("INSERT INTO angela_queue.tasks (kind, priority, run_at) VALUES ('ancient', 1, '1900-01-02')")
    conn.execute("INSERT INTO angela_queue.tasks (kind, priority) VALUES ('critical', 10)")
    view = conn.execute("SELECT kind, effective_priority, minutes_waiting FROM angela_queue.queued_tasks").fetchall()
    assert [r["kind"] for r in view] == ["critical", "ancient"]
    assert view[1]["effective_priority"] == pytest.approx(1, abs=0.01)
    row = conn.execute("SELECT deadline - created_at AS window FROM angela_queue.tasks WHERE kind = 'ancient'").fetchone()
    assert row["window"] == dt.timedelta(minutes=30)      # the deadline counts from the insert too


def test_aging_rate_change_applies_to_new_and_waiting_tasks_of_that_queue(conn):
    ids = [r["id"] for r in conn.execute("INSERT INTO angela_queue.tasks (kind, queue) VALUES "
                                         "('waiting', 'default'), ('elsewhere', 'other') RETURNING id").fetchall()]
    backdate(conn, ids, 10)
    conn.execute("UPDATE angela_queue.queues SET aging_rate = 1.0 WHERE name = 'default'")
    new = conn.execute("INSERT INTO angela_queue.tasks (kind, priority) VALUES ('new', 9) RETURNING id").fetchone()
    backdate(conn, new["id"], 2)
    conn.execute("INSERT INTO angela_queue.tasks (kind, priority) VALUES ('new_fresh', 10)")

    rates = {r["kind"]: r["aging_rate"] for r in
             conn.execute("SELECT kind, aging_rate FROM angela_queue.tasks").fetchall()}
    assert rates == {"waiting": pytest.approx(1.0), "new": pytest.approx(1.0),
                     "new_fresh": pytest.approx(1.0), "elsewhere": pytest.approx(0.1)}
    eff = {r["kind"]: r["effective_priority"] for r in
           conn.execute("SELECT kind, effective_priority FROM angela_queue.queued_tasks").fetchall()}
    assert eff["waiting"] == pytest.approx(5 + 10, abs=0.01)
    assert eff["new"] == pytest.approx(9 + 2, abs=0.01)
    assert eff["new_fresh"] == pytest.approx(10, abs=0.01)
    # Within the queue, the stored claim order is the live effective order.
    stored = [r["kind"] for r in conn.execute(
        "SELECT kind FROM angela_queue.tasks WHERE status = 'queued' AND queue = 'default' "
        "ORDER BY priority_key DESC, id").fetchall()]
    assert stored == ["waiting", "new", "new_fresh"]


def test_view_order_across_queues_with_different_aging_rates(conn):
    # The stored priority_key is only comparable within one aging rate; the
    # view (like the claim, see test_claim_sql) orders by the live value.
    conn.execute("INSERT INTO angela_queue.queues (name, aging_rate) VALUES ('no_aging', 0)")
    conn.execute("INSERT INTO angela_queue.tasks (kind, queue, priority) VALUES ('lowest', 'no_aging', 1)")
    conn.execute("INSERT INTO angela_queue.tasks (kind, priority) VALUES ('critical', 10)")
    shown = [r["kind"] for r in conn.execute("SELECT kind FROM angela_queue.queued_tasks").fetchall()]
    assert shown == ["critical", "lowest"]


def test_queued_tasks_view_shows_only_queued(conn):
    conn.execute("""
        INSERT INTO angela_queue.tasks (kind, run_at) VALUES
            ('now', now()), ('later', now() + interval '1 hour')""")
    conn.execute("INSERT INTO angela_queue.tasks (kind) VALUES ('gone')")
    conn.execute("UPDATE angela_queue.tasks SET status = 'cancelled', finished_at = now() WHERE kind = 'gone'")
    kinds = [r["kind"] for r in conn.execute("SELECT kind FROM angela_queue.queued_tasks").fetchall()]
    assert kinds == ["now"]


# --- queue_depth ---------------------------------------------------------------

def depth(conn) -> dict[tuple[str, str], dict]:
    return {(r["queue"], r["tier"]): r for r in conn.execute("SELECT * FROM angela_queue.queue_depth").fetchall()}


def test_queue_depth_has_a_zero_row_per_tier_for_an_empty_queue(conn):
    d = depth(conn)
    assert set(d) == {("default", t) for t in ("critical", "high", "medium", "low")}
    assert all(r["queued"] == 0 for r in d.values())


def test_queue_depth_counts_queued_per_queue_and_tier(conn):
    conn.execute("""
        INSERT INTO angela_queue.tasks (kind, queue, priority) VALUES
            ('k', 'default', 10), ('k', 'default', 9), ('k', 'default', 5), ('k', 'default', 1),
            ('k', 'other', 7), ('k', 'other', 8), ('k', 'other', 8)""")
    # Not queued: scheduled, running and finished tasks are not in 'queued'.
    conn.execute("INSERT INTO angela_queue.tasks (kind, priority, run_at) VALUES ('k', 10, now() + interval '1 day')")
    conn.execute("INSERT INTO angela_queue.tasks (kind, priority) VALUES ('run', 10), ('done', 1)")
    conn.execute("UPDATE angela_queue.tasks SET status = 'running' WHERE kind = 'run'")
    conn.execute("UPDATE angela_queue.tasks SET status = 'succeeded', finished_at = now() WHERE kind = 'done'")

    d = depth(conn)
    assert len(d) == 8  # two queues x four tiers, zeros included
    queued = {key: r["queued"] for key, r in d.items()}
    assert queued == {
        ("default", "critical"): 2, ("default", "high"): 0, ("default", "medium"): 1, ("default", "low"): 1,
        ("other", "critical"): 0, ("other", "high"): 3, ("other", "medium"): 0, ("other", "low"): 0,
    }
    assert d[("default", "critical")]["scheduled"] == 1
    assert d[("default", "critical")]["running"] == 1


def test_each_error_in_the_attempt_history_is_cut(conn):
    row = conn.execute("SELECT angela_queue.error_history('[]', 1, now(), NULL, repeat('x', 100000)) AS h"
                       ).fetchone()
    assert len(row["h"][0]["error"]) == 8000
