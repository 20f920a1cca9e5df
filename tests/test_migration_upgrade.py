"""Upgrading a database that holds real rows: from revision 0001 to head, nothing
stored is lost or changed, rows the new rules refuse are repaired, and a new
worker drains what was waiting (and what a dead worker left running)."""

from __future__ import annotations

import json
import uuid

import psycopg
import pytest

from angela_queue import migrations, statements
from fix_procs import APP_PRELUDE, RUNS_TABLE_SQL, WorkerProcess, query, scalar, wait_until

APP = APP_PRELUDE + """
from angela_queue import task

@task("record")
def record_run(n):
    record(n)
    return n
"""

DEAD_WORKER = "00000000-0000-0000-0000-00000000dead"


def fill_0001_database(dsn: str) -> None:
    """One task in every status, as revision 0001 stored them."""
    query(dsn, RUNS_TABLE_SQL)
    query(dsn, """
        INSERT INTO angela_queue.tasks (kind, payload, priority) VALUES
            ('record', '{"n": 1}', 9), ('record', '{"n": 2}', 5), ('record', '{"n": 3}', 2);
        INSERT INTO angela_queue.tasks (kind, payload, run_at)
            VALUES ('record', '{"n": 4}', now() + interval '2 seconds');
        INSERT INTO angela_queue.tasks (kind, payload) VALUES ('record', '{"n": 5}');
        INSERT INTO angela_queue.workers (id, host, pid, status, last_heartbeat, dead_after_s)
            VALUES ('{w}', 'gone-host', 1, 'active', now() - interval '10 minutes', 3);
        UPDATE angela_queue.tasks SET status = 'running', attempts = 1, worker_id = '{w}', started_at = now()
            WHERE payload = '{"n": 5}';
        INSERT INTO angela_queue.tasks (kind, payload) VALUES ('record', '{"n": 6}'), ('record', '{"n": 7}'),
                                                              ('record', '{"n": 8}');
        UPDATE angela_queue.tasks SET status = 'succeeded', attempts = 1, started_at = now(), finished_at = now(),
                                      result = '6' WHERE payload = '{"n": 6}';
        UPDATE angela_queue.tasks SET status = 'failed', attempts = 5, finished_at = now(),
                                      last_error = 'ValueError: no' WHERE payload = '{"n": 7}';
        UPDATE angela_queue.tasks SET status = 'cancelled', finished_at = now(), last_error = 'cancelled'
            WHERE payload = '{"n": 8}';
        UPDATE angela_queue.queues SET max_size = 1000 WHERE name = 'default';
    """.replace("{w}", DEAD_WORKER))


def all_tasks(dsn: str) -> list[dict]:
    return query(dsn, "SELECT * FROM angela_queue.tasks ORDER BY id")


def test_upgrade_from_0001_keeps_every_row_and_a_new_worker_drains_it(empty_dsn, app_dir):
    assert migrations.upgrade(empty_dsn, "0001") == "0001"
    fill_0001_database(empty_dsn)
    before = all_tasks(empty_dsn)
    assert {r["status"] for r in before} == {"queued", "scheduled", "running", "succeeded", "failed", "cancelled"}

    assert migrations.upgrade(empty_dsn) == migrations.head_revision()
    # Columns added by later revisions are new; every column the rows had is unchanged.
    after = [{k: row[k] for k in before[0]} for row in all_tasks(empty_dsn)]
    assert after == before, "the upgrade changed or lost stored rows"
    assert scalar(empty_dsn, "SELECT max_size FROM angela_queue.queues WHERE name = 'default'") == 1000

    (app_dir / "upgrade_app.py").write_text(APP)
    worker = WorkerProcess(empty_dsn, app_dir, "upgrade_app", ["--poll-interval", "0.2",
                                                               "--heartbeat-interval", "0.5"])
    try:
        wait_until(lambda: scalar(empty_dsn, "SELECT count(*) FROM angela_queue.tasks "
                                             "WHERE status = 'succeeded'") == 6,
                   timeout=60, message="the worker to drain the upgraded queue", details=worker.log)
    finally:
        worker.stop()
        worker.close()
    runs = sorted(r["n"] for r in query(empty_dsn, "SELECT n FROM public.runs"))
    assert runs == [1, 2, 3, 4, 5], "each waiting task ran exactly once, the dead worker's included"
    finished = {r["id"]: {k: r[k] for k in before[0]} for r in all_tasks(empty_dsn) if r["payload"]["n"] in (6, 7, 8)}
    assert finished == {r["id"]: r for r in before if r["payload"]["n"] in (6, 7, 8)}


def test_upgrade_repairs_rows_the_new_rules_refuse(empty_dsn):
    migrations.upgrade(empty_dsn, "0001")
    query(empty_dsn, """
        INSERT INTO angela_queue.tasks (kind, payload, run_at) VALUES
            ('k', '{"n": "never"}', 'infinity'), ('k', '{"n": "asap"}', '-infinity');
        INSERT INTO angela_queue.tasks (kind, payload, created_at) VALUES ('k', '{"n": "future"}', '2100-01-01');
        INSERT INTO angela_queue.tasks (kind, payload, timeout_s) VALUES ('k', '{"n": "nan"}', 'NaN');
        UPDATE angela_queue.queues SET aging_rate = 'NaN' WHERE name = 'default';
        INSERT INTO angela_queue.boost_rules (name, condition, boost) VALUES ('huge', '$.x', 2000000000);
    """)
    migrations.upgrade(empty_dsn)
    rows = {r["payload"]["n"]: r for r in all_tasks(empty_dsn)}
    assert rows["never"]["status"] == "failed"
    assert "beyond 9999" in rows["never"]["last_error"]
    assert rows["asap"]["status"] == "queued" and rows["asap"]["run_at"] == rows["asap"]["created_at"]
    assert rows["future"]["created_at"] <= scalar(empty_dsn, "SELECT now()")
    assert rows["nan"]["timeout_s"] is None
    assert scalar(empty_dsn, "SELECT aging_rate FROM angela_queue.queues WHERE name = 'default'") == 0.1
    assert scalar(empty_dsn, "SELECT boost FROM angela_queue.boost_rules WHERE name = 'huge'") == 100
    # Every row can be read back by a client, and the queue's claim order is sane.
    order = query(empty_dsn, "SELECT payload->>'n' AS n FROM angela_queue.queued_tasks")
    assert {r["n"] for r in order} == {"asap", "future", "nan"}


@pytest.mark.parametrize("bad", ["'infinity'", "'-infinity'", "'10000-01-01'", "'0500-01-01'"])
def test_the_upgraded_schema_refuses_unreadable_times(empty_dsn, bad):
    import psycopg
    migrations.upgrade(empty_dsn)
    with pytest.raises(psycopg.Error, match="run_at must be a finite time between 1900-01-01 and 9999-01-01"):
        query(empty_dsn, f"INSERT INTO angela_queue.tasks (kind, run_at) VALUES ('k', {bad})")


def test_upgrade_from_0004_keeps_rows_and_inserts_get_kind_defaults(empty_dsn):
    """0005 (Integrate): the tasks' column defaults move into the insert trigger;
    stored rows are untouched, and a cancel of a waiting task still notifies."""
    migrations.upgrade(empty_dsn, "0004")
    query(empty_dsn, """
        INSERT INTO angela_queue.tasks (kind, payload, priority, queue) VALUES
            ('a', '{"n": 1}', 9, 'q1'), ('b', '{"n": 2}', 2, 'default');
        INSERT INTO angela_queue.tasks (kind) VALUES ('c');
        UPDATE angela_queue.tasks SET status = 'failed', attempts = 5, finished_at = now(), last_error = 'no'
            WHERE kind = 'c';
    """)
    before = all_tasks(empty_dsn)
    migrations.upgrade(empty_dsn, "0005")
    assert all_tasks(empty_dsn) == before
    # No column default any more, the same values from the trigger.
    row = query(empty_dsn, "INSERT INTO angela_queue.tasks (kind) VALUES ('plain') "
                           "RETURNING queue, priority, max_attempts")[0]
    assert row == {"queue": "default", "priority": 5, "max_attempts": 5}
    query(empty_dsn, "INSERT INTO angela_queue.kinds (kind, priority, max_attempts) VALUES ('a', 8, 2)")
    row = query(empty_dsn, "INSERT INTO angela_queue.tasks (kind) VALUES ('a') RETURNING priority, max_attempts")[0]
    assert row == {"priority": 8, "max_attempts": 2}
    assert scalar(empty_dsn, "SELECT count(*) FROM angela_queue.cancel_task(%s)", (before[0]["id"],)) == 1


def test_upgrade_from_0005_repairs_rows_the_tightened_rules_refuse(empty_dsn):
    """0006 (Tighten): a waiting row with no attempt left is failed, saying why;
    an unreadable failed_at is brought into range; everything else is kept."""
    migrations.upgrade(empty_dsn, "0005")
    query(empty_dsn, """
        INSERT INTO angela_queue.tasks (kind, payload) VALUES ('spent', '{}'), ('ok', '{}'), ('odd', '{}');
        UPDATE angela_queue.tasks SET attempts = 5, max_attempts = 5 WHERE kind = 'spent';
        UPDATE angela_queue.tasks SET failed_at = '9999-06-01 00:00:00+00' WHERE kind = 'odd';
    """)
    before = {r["kind"]: r for r in all_tasks(empty_dsn)}
    migrations.upgrade(empty_dsn, "0006")
    after = {r["kind"]: r for r in all_tasks(empty_dsn)}
    assert after["ok"] == before["ok"]
    assert after["spent"]["status"] == "failed" and "migration 0006" in after["spent"]["last_error"]
    assert after["odd"]["failed_at"] is not None and after["odd"]["failed_at"].year < 9999
    assert after["odd"]["status"] == "queued"


def test_upgrade_from_0006_keeps_rows_and_starts_the_history(empty_dsn):
    """0007 (Observe): rows are kept, the views read them as before, and the
    new columns and tables are empty until producers and the leader write."""
    migrations.upgrade(empty_dsn, "0006")
    query(empty_dsn, """
        INSERT INTO angela_queue.tasks (kind, payload) VALUES ('a', '{"n": 1}'), ('b', '{}');
        UPDATE angela_queue.tasks SET status = 'succeeded', attempts = 1, started_at = now(), finished_at = now()
            WHERE kind = 'b';
    """)
    before = all_tasks(empty_dsn)
    kinds_before = query(empty_dsn, "SELECT kind, succeeded_1h FROM angela_queue.kind_stats ORDER BY kind")
    migrations.upgrade(empty_dsn, "0007")
    after = all_tasks(empty_dsn)
    assert [{k: v for k, v in r.items() if k != "trace_context"} for r in after] == before
    assert all(r["trace_context"] is None for r in after)
    assert query(empty_dsn, "SELECT kind, succeeded_1h FROM angela_queue.kind_stats ORDER BY kind") == kinds_before
    assert scalar(empty_dsn, "SELECT count(*) FROM angela_queue.stats_minute") == 0
    row = query(empty_dsn, "INSERT INTO angela_queue.tasks (kind, trace_context) VALUES ('c', "
                           "'{\"traceparent\": \"00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01\"}') "
                           "RETURNING trace_context")[0]
    assert row["trace_context"]["traceparent"].startswith("00-0af7")


def test_upgrade_from_0007_keeps_rows_and_limits_apply_to_waiting_tasks(empty_dsn):
    """0008 (Schedule): rows are kept and claimable in the new index; a kind
    given a limit after the upgrade moves its waiting tasks under it."""
    migrations.upgrade(empty_dsn, "0007")
    query(empty_dsn, """
        INSERT INTO angela_queue.kinds (kind, priority) VALUES ('mail', 7);
        INSERT INTO angela_queue.tasks (kind, payload) SELECT 'mail', jsonb_build_object('n', g)
            FROM generate_series(1, 4) g;
        INSERT INTO angela_queue.tasks (kind, run_at) VALUES ('later', now() + interval '1 hour');
        INSERT INTO angela_queue.tasks (kind) VALUES ('done');
        UPDATE angela_queue.tasks SET status = 'succeeded', attempts = 1, started_at = now(), finished_at = now()
            WHERE kind = 'done';
    """)
    before = all_tasks(empty_dsn)
    kinds_before = query(empty_dsn, "SELECT kind, queued, succeeded_1h FROM angela_queue.kind_stats ORDER BY kind")
    migrations.upgrade(empty_dsn, "0008")
    after = all_tasks(empty_dsn)
    assert [{k: v for k, v in r.items() if k != "limited_kind"} for r in after] == before
    assert {r["limited_kind"] for r in after} == {""}
    assert query(empty_dsn, "SELECT kind, queued, succeeded_1h FROM angela_queue.kind_stats ORDER BY kind") == \
        kinds_before
    query(empty_dsn, "UPDATE angela_queue.kinds SET concurrency = 1 WHERE kind = 'mail'")
    assert scalar(empty_dsn, "SELECT count(*) FROM angela_queue.tasks WHERE limited_kind = 'mail'") == 4
    claim = statements.claim(worker_id=uuid.uuid4(), queues=["default"], limit=10)
    claimed = query(empty_dsn, claim.text, claim.params)
    assert [r["kind"] for r in claimed] == ["mail"]                       # the cap holds on upgraded rows
    assert scalar(empty_dsn, "SELECT count(*) FROM angela_queue.periodic") == 0


def test_upgrade_from_0008_keeps_rows_and_the_rate_window(empty_dsn):
    """0009 (limits on the clock): only claim_room changes; the tasks and the
    starts already in a kind's window are kept and still count."""
    migrations.upgrade(empty_dsn, "0008")
    query(empty_dsn, """
        INSERT INTO angela_queue.kinds (kind, rate_limit, rate_period_s) VALUES ('metered', 2, 3600);
        INSERT INTO angela_queue.tasks (kind) SELECT 'metered' FROM generate_series(1, 3);
        INSERT INTO angela_queue.kind_starts (kind, started_at) VALUES ('metered', now());
    """)
    before = all_tasks(empty_dsn)
    migrations.upgrade(empty_dsn, "0009")
    assert all_tasks(empty_dsn) == before
    claim = statements.claim(worker_id=uuid.uuid4(), queues=["default"], limit=10)
    claimed = query(empty_dsn, claim.text, claim.params)
    assert len(claimed) == 1                       # one start was already in the hour's window of 2


def test_upgrade_from_0009_keeps_queues_and_they_stay_durable(empty_dsn):
    """0010 (durability): every existing queue is durable, its rows untouched."""
    migrations.upgrade(empty_dsn, "0009")
    query(empty_dsn, """
        INSERT INTO angela_queue.queues (name, max_size, aging_rate) VALUES ('bulk', 10, 0.5);
        INSERT INTO angela_queue.tasks (kind, queue) VALUES ('k', 'bulk'), ('k', 'default');
    """)
    before = all_tasks(empty_dsn)
    migrations.upgrade(empty_dsn, "0010")
    assert all_tasks(empty_dsn) == before
    assert query(empty_dsn, "SELECT name, max_size, aging_rate, durability FROM angela_queue.queues ORDER BY name") == [
        {"name": "bulk", "max_size": 10, "aging_rate": 0.5, "durability": "durable"},
        {"name": "default", "max_size": None, "aging_rate": 0.1, "durability": "durable"}]


def test_upgrade_from_0010_keeps_rows_and_critical_inserts_notify_both_channels(empty_dsn):
    """0011 (critical wake-up): only the insert trigger's function changes; rows
    are kept, and an insert of a critical task notifies 'angela_queue_critical'
    beside 'angela_queue_insert' (an ordinary one only the latter)."""
    migrations.upgrade(empty_dsn, "0010")
    query(empty_dsn, "INSERT INTO angela_queue.tasks (kind, priority) VALUES ('k', 3), ('k', 10)")
    before = all_tasks(empty_dsn)
    migrations.upgrade(empty_dsn, "0011")
    assert all_tasks(empty_dsn) == before
    with psycopg.connect(empty_dsn, autocommit=True) as listener, psycopg.connect(empty_dsn, autocommit=True) as w:
        listener.execute("LISTEN angela_queue_insert")
        listener.execute("LISTEN angela_queue_critical")
        w.execute("INSERT INTO angela_queue.tasks (kind, priority) VALUES ('k', 5)")
        w.execute("INSERT INTO angela_queue.tasks (kind, priority, queue) VALUES ('k', 9, 'urgent'), ('k', 1, 'urgent')")
        notes = [(n.channel, n.payload) for n in listener.notifies(timeout=2, stop_after=3)]
    assert sorted(notes) == [("angela_queue_critical", "urgent"), ("angela_queue_insert", "default"),
                             ("angela_queue_insert", "urgent")]


def test_upgrade_from_0011_keeps_rows_and_bulk_enqueue_builds_what_the_trigger_builds(empty_dsn):
    """0012 (bulk enqueue): rows are kept, their claim keys are what the new
    (inlinable) priority_key computes, a plain INSERT still goes through the
    trigger, and angela_queue.enqueue_many gives a task the same row."""
    migrations.upgrade(empty_dsn, "0011")
    query(empty_dsn, "INSERT INTO angela_queue.tasks (kind, priority, payload, run_at) VALUES "
                     "('k', 3, '{}', now() - interval '3 days'), ('k', 10, '{\"text\": \"urgent\"}', now()), "
                     "('k', 6, '{}', now() + interval '1 hour')")
    before = all_tasks(empty_dsn)
    migrations.upgrade(empty_dsn, "0012")
    assert all_tasks(empty_dsn) == before
    assert scalar(empty_dsn, "SELECT count(*) FROM angela_queue.tasks WHERE priority_key IS DISTINCT FROM "
                             "angela_queue.priority_key(priority, boost, aging_rate, greatest(run_at, created_at))") == 0
    with psycopg.connect(empty_dsn, autocommit=True) as conn:
        plain = conn.execute("INSERT INTO angela_queue.tasks (kind, payload) VALUES ('k', '{\"text\": \"urgent?\"}') "
                             "RETURNING boost, boost_rules, enqueued_by").fetchone()
        bulk_id = conn.execute("SELECT id FROM angela_queue.enqueue_many("
                               "'[{\"kind\": \"k\", \"payload\": {\"text\": \"urgent?\"}}]')").fetchone()[0]
        bulk = conn.execute("SELECT boost, boost_rules, enqueued_by FROM angela_queue.tasks WHERE id = %s",
                            (bulk_id,)).fetchone()
    assert plain == bulk and plain[0] == 4 and plain[2] is not None


def test_upgrade_from_0012_keeps_rows_and_bulk_enqueue_gives_the_same_tasks(empty_dsn):
    """0013 (enqueue plans): rows are kept; enqueue_many runs with generic
    plans and still gives a task what the trigger gives it (boosts, defaults),
    still fills a bounded queue in order and drops the low tasks past it;
    commit_fast is gone (the client tests durability inline)."""
    migrations.upgrade(empty_dsn, "0012")
    query(empty_dsn, "INSERT INTO angela_queue.tasks (kind, priority, payload, run_at) VALUES "
                     "('k', 3, '{}', now() - interval '3 days'), ('k', 10, '{\"text\": \"urgent\"}', now()), "
                     "('k', 6, '{}', now() + interval '1 hour')")
    query(empty_dsn, "INSERT INTO angela_queue.queues (name, max_size) VALUES ('small', 3)")
    query(empty_dsn, "INSERT INTO angela_queue.tasks (kind, queue, payload) VALUES ('k', 'small', '{}')")
    before = all_tasks(empty_dsn)
    migrations.upgrade(empty_dsn, "0013")
    assert all_tasks(empty_dsn) == before
    assert "plan_cache_mode=force_generic_plan" in scalar(
        empty_dsn, "SELECT proconfig FROM pg_proc WHERE proname = 'enqueue_many'")
    assert scalar(empty_dsn, "SELECT count(*) FROM pg_proc WHERE proname = 'commit_fast'") == 0
    with psycopg.connect(empty_dsn, autocommit=True) as conn:
        plain = conn.execute("INSERT INTO angela_queue.tasks (kind, payload) VALUES ('k', '{\"text\": \"urgent?\"}') "
                             "RETURNING boost, boost_rules, priority, status").fetchone()
        bulk = conn.execute("SELECT boost, priority, status FROM angela_queue.enqueue_many("
                            "'[{\"kind\": \"k\", \"payload\": {\"text\": \"urgent?\"}}]')").fetchone()
        assert (plain[0], plain[2], plain[3]) == bulk and plain[0] == 4 and plain[1] == ["question", "urgent"]
        # Two places left in 'small': the first two fit, the low one past them
        # is dropped, in the order given.
        filled = conn.execute("SELECT status, priority FROM angela_queue.enqueue_many("
                              "'[{\"kind\": \"k\", \"queue\": \"small\", \"payload\": {}}, "
                              "{\"kind\": \"k\", \"queue\": \"small\", \"payload\": {}}, "
                              "{\"kind\": \"k\", \"queue\": \"small\", \"payload\": {}, \"priority\": 2}, "
                              "{\"kind\": \"k\", \"payload\": {}}]')").fetchall()
    assert filled == [("queued", 5), ("queued", 5), ("dropped", 2), ("queued", 5)]
    # Two bounded queues in one call, interleaved: each fills in the order
    # given, on its own count; a task of priority >= 5 past a full queue
    # fails the whole call (AQ001) and stores nothing.
    query(empty_dsn, "INSERT INTO angela_queue.queues (name, max_size) VALUES ('a', 2), ('b', 1)")
    with psycopg.connect(empty_dsn, autocommit=True) as conn:
        rows = conn.execute("SELECT queue, status FROM angela_queue.enqueue_many(%s::jsonb)", (json.dumps(
            [{"kind": "k", "queue": q, "payload": {}, "priority": 2} for q in "ababa"]),)).fetchall()
        assert rows == [("a", "queued"), ("b", "queued"), ("a", "queued"), ("b", "dropped"), ("a", "dropped")]
        count = conn.execute("SELECT count(*) FROM angela_queue.tasks").fetchone()[0]
        with pytest.raises(psycopg.Error) as full:
            conn.execute("SELECT * FROM angela_queue.enqueue_many(%s::jsonb)", (json.dumps(
                [{"kind": "k", "queue": "small", "payload": {}}]),))
        assert full.value.sqlstate == "AQ001"
        assert conn.execute("SELECT count(*) FROM angela_queue.tasks").fetchone()[0] == count


def test_upgrade_from_0013_keeps_rows_and_claim_room_counts_the_same(empty_dsn):
    """0014 (claim_room under generic plans): rows are kept and a capped kind's
    room is what it was: its cap less its running tasks, never below 0."""
    migrations.upgrade(empty_dsn, "0013")
    query(empty_dsn, "INSERT INTO angela_queue.kinds (kind, concurrency) VALUES ('capped', 3), ('full', 1)")
    query(empty_dsn, "INSERT INTO angela_queue.tasks (kind) SELECT k FROM unnest(ARRAY['capped', 'capped', 'full', "
                     "'full', 'other']) AS k")
    query(empty_dsn, "UPDATE angela_queue.tasks SET status = 'running', attempts = 1, started_at = now(), "
                     "worker_id = gen_random_uuid() WHERE kind IN ('capped', 'full') OR kind = 'other'")
    before = all_tasks(empty_dsn)
    room_before = [scalar(empty_dsn, f"SELECT angela_queue.claim_room('{k}', 10)") for k in ("capped", "full")]
    migrations.upgrade(empty_dsn, "0014")
    assert all_tasks(empty_dsn) == before
    assert [scalar(empty_dsn, f"SELECT angela_queue.claim_room('{k}', 10)") for k in ("capped", "full")] == (
        room_before) == [1, 0]
