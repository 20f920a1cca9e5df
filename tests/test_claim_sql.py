"""The claim, completion and release queries, run directly against Postgres."""

from __future__ import annotations

import json
import uuid

import psycopg
import pytest
from psycopg.rows import dict_row

from angela_queue import db
from angela_queue import statements as st
from fix_db import backdate
from fix_plans import assert_claim_walks_its_index

W1 = uuid.uuid4()
W2 = uuid.uuid4()


def claim(conn, limit=1, worker=W1, queues=("default",), unlimited=False, **options):
    return db.fetch_all(conn, st.claim(worker_id=worker, queues=list(queues), limit=limit, unlimited=unlimited,
                                       **options))


@pytest.fixture(params=[False, True], ids=["tasks_claim", "tasks_claim_unlimited"])
def unlimited(request):
    """Both claims: what a worker claims with while no limit is in play
    (tasks_claim_unlimited) must be what tasks_claim would have claimed."""
    return request.param


def insert(conn, kind="k", priority=5, minutes_ago=0, queue="default", payload=None):
    tid = conn.execute(
        "INSERT INTO angela_queue.tasks (kind, priority, queue, payload) VALUES (%s, %s, %s, %s) RETURNING id",
        (kind, priority, queue, json.dumps(payload or {}))).fetchone()["id"]
    if minutes_ago:
        backdate(conn, tid, minutes_ago)
    return tid


def test_claim_takes_highest_effective_priority_first(conn, unlimited):
    low = insert(conn, priority=3)
    crit = insert(conn, priority=9)
    mid = insert(conn, priority=6)
    assert [r["id"] for r in claim(conn, unlimited=unlimited, limit=3)] == [crit, mid, low]


def test_backdated_low_task_beats_fresh_critical(conn, unlimited):
    # 2 + 0.1/min * 100 min = 12 > 9
    old_low = insert(conn, priority=2, minutes_ago=100)
    fresh_critical = insert(conn, priority=9)
    first = claim(conn, unlimited=unlimited, limit=1)
    assert [r["id"] for r in first] == [old_low]
    assert [r["id"] for r in claim(conn, unlimited=unlimited, limit=1)] == [fresh_critical]


def test_claim_marks_running_counts_attempt_and_respects_limit(conn, unlimited):
    ids = [insert(conn) for _ in range(5)]
    rows = claim(conn, unlimited=unlimited, limit=3)
    assert len(rows) == 3
    states = conn.execute("SELECT id, status, attempts, worker_id FROM angela_queue.tasks ORDER BY id").fetchall()
    running = [s for s in states if s["status"] == "running"]
    assert {s["id"] for s in running} == {r["id"] for r in rows}
    assert all(s["attempts"] == 1 and s["worker_id"] == W1 for s in running)
    assert sum(1 for s in states if s["status"] == "queued") == 2
    assert set(ids) >= {r["id"] for r in rows}


def test_claim_only_serves_named_queues_and_skips_future_tasks(conn, unlimited):
    insert(conn, queue="other")
    conn.execute("INSERT INTO angela_queue.tasks (kind, run_at) VALUES ('later', now() + interval '1 hour')")
    assert claim(conn, unlimited=unlimited, limit=10) == []
    assert len(claim(conn, unlimited=unlimited, limit=10, queues=("other",))) == 1


def test_concurrent_claims_never_take_the_same_row(dsn, conn, unlimited):
    for _ in range(20):
        insert(conn)
    with psycopg.connect(dsn, row_factory=dict_row) as a, psycopg.connect(dsn, row_factory=dict_row) as b:
        # Two open transactions claim at once: SKIP LOCKED makes the second
        # pass over the rows the first holds instead of waiting or doubling.
        ra = db.fetch_all(a, st.claim(worker_id=W1, queues=["default"], limit=10, unlimited=unlimited))
        rb = db.fetch_all(b, st.claim(worker_id=W2, queues=["default"], limit=10, unlimited=unlimited))
        a.commit()
        b.commit()
    ids_a, ids_b = {r["id"] for r in ra}, {r["id"] for r in rb}
    assert len(ids_a) == 10 and len(ids_b) == 10
    assert not ids_a & ids_b


def test_completion_is_guarded_against_a_reclaim(conn):
    tid = insert(conn)
    claim(conn)
    # The leader reclaims the task (its worker looked dead) and another worker takes it.
    conn.execute("UPDATE angela_queue.tasks SET status = 'queued', worker_id = NULL WHERE id = %s", (tid,))
    claim(conn, worker=W2)
    stale = json.dumps([{"id": tid, "result": "stale", "finished_at": 0.0}])
    stored = db.fetch_all(conn, st.complete_many(worker_id=W1, outcomes_json=stale))
    assert stored == []
    row = conn.execute("SELECT status, worker_id, result FROM angela_queue.tasks WHERE id = %s", (tid,)).fetchone()
    assert row["status"] == "running" and row["worker_id"] == W2 and row["result"] is None


def test_fail_retries_with_backoff_then_fails_for_good(conn):
    tid = conn.execute("INSERT INTO angela_queue.tasks (kind, max_attempts) VALUES ('k', 2) RETURNING id").fetchone()["id"]
    claim(conn)
    params = {"worker_id": W1, "ids": [tid], "errors": ["boom"], "retry_in_s": [30.0],
              "failed_ats": [None]}
    params["failed_ats"] = [conn.execute("SELECT now() AS n").fetchone()["n"]]
    row = db.fetch_all(conn, "tasks_fail_many", params)[0]
    assert row["status"] == "scheduled"
    task = conn.execute("SELECT *, run_at - now() AS wait FROM angela_queue.tasks WHERE id = %s", (tid,)).fetchone()
    assert 29 <= task["wait"].total_seconds() <= 31
    assert task["last_error"] == "boom" and task["worker_id"] is None
    # Its deadline (medium tier: 5 minutes) follows the new run_at.
    assert (task["deadline"] - task["run_at"]).total_seconds() == 300
    assert db.fetch_one(conn, st.promote_due(queues=None, limit=10))["promoted"] == 0
    promoted = db.fetch_one(conn, st.promote_due(queues=None, limit=10, now=task["run_at"]))
    assert promoted["promoted"] == 1
    # Travel to its run_at rather than sleeping through the backoff.
    conn.execute("UPDATE angela_queue.tasks SET run_at = now() WHERE id = %s", (tid,))
    assert [r["id"] for r in claim(conn)] == [tid]
    row = db.fetch_all(conn, "tasks_fail_many", params)[0]
    assert row["status"] == "failed" and row["attempts"] == 2


def test_release_gives_the_task_back_without_counting_the_attempt(conn):
    tid = insert(conn)
    claim(conn)
    released = db.fetch_all(conn, st.release_many(worker_id=W1, ids=[tid]))
    assert [r["id"] for r in released] == [tid]
    row = conn.execute("SELECT status, attempts, worker_id FROM angela_queue.tasks WHERE id = %s", (tid,)).fetchone()
    assert row == {"status": "queued", "attempts": 0, "worker_id": None}


def test_tasks_bound_for_a_batch_are_claimed_unstarted_and_count_their_attempt_at_the_start(conn, unlimited):
    """A worker that dies holding a collecting batch has not cost its tasks an
    attempt: only tasks_start_many, when the batch runs, counts it."""
    low, high = insert(conn, priority=2), insert(conn, priority=7)
    rows = claim(conn, limit=5, unlimited=unlimited, batch_below=5)
    state = {r["id"]: r for r in conn.execute("SELECT id, attempts, started_at FROM angela_queue.tasks")}
    assert {r["id"]: r["attempts"] for r in rows} == {low: 0, high: 1}
    assert state[low]["started_at"] is None and state[high]["started_at"] is not None
    fill = insert(conn, priority=3)
    filled = db.fetch_all(conn, st.claim_kind(worker_id=W1, queue="default", kind="k", limit=5))
    assert [r["id"] for r in filled] == [fill]
    # Released unstarted (a graceful stop, or a reclaim): nothing to give back.
    assert db.fetch_all(conn, st.release_many(worker_id=W1, ids=[fill]))
    assert conn.execute("SELECT attempts FROM angela_queue.tasks WHERE id = %s", (fill,)).fetchone()["attempts"] == 0
    # The batch starts: counted once, stamped, and only for rows still ours.
    started = db.fetch_all(conn, st.start_many(worker_id=W1, ids=[low, high, fill]))
    assert [(r["id"], r["attempts"]) for r in started] == [(low, 1)] and started[0]["started_at"] is not None
    assert db.fetch_all(conn, st.start_many(worker_id=W1, ids=[low])) == []   # never twice
    assert conn.execute("SELECT started_at FROM angela_queue.tasks WHERE id = %s", (low,)).fetchone()["started_at"]


def test_claim_kind_only_takes_low_priority_of_that_kind(conn):
    insert(conn, kind="a", priority=2)
    insert(conn, kind="a", priority=7)
    insert(conn, kind="b", priority=2)
    rows = db.fetch_all(conn, st.claim_kind(worker_id=W1, queue="default", kind="a", limit=5))
    assert [(r["kind"], r["priority"]) for r in rows] == [("a", 2)]


def test_claim_walks_the_index_without_sorting_100k_rows(conn, unlimited):
    conn.execute("""
        INSERT INTO angela_queue.tasks (kind, priority, payload)
        SELECT 'bulk', 1 + (g % 10), '{}'::jsonb FROM generate_series(1, 100000) g
    """)
    conn.execute("ANALYZE angela_queue.tasks")
    assert_claim_walks_its_index(conn, unlimited=unlimited)


def test_claim_merges_queues_by_live_effective_priority(conn, unlimited):
    # Queue "flat" never ages; "default" ages 0.1/min. Their stored keys are
    # not comparable, but the claim must still take the critical task first.
    conn.execute("INSERT INTO angela_queue.queues (name, aging_rate) VALUES ('flat', 0)")
    lowest = insert(conn, priority=1, queue="flat")
    critical = insert(conn, priority=10)
    old_low = insert(conn, priority=2, minutes_ago=200)  # 2 + 20 = 22
    rows = claim(conn, unlimited=unlimited, limit=3, queues=("flat", "default"))
    assert [r["id"] for r in rows] == [old_low, critical, lowest]


def limits_in_play(conn, queues=("default",)) -> bool:
    return db.fetch_all(conn, st.limits_in_play(queues=list(queues)))[0]["limits_in_play"]


def test_limits_in_play_sees_any_limit_and_any_flag_left_in_the_queues_served(dsn, conn):
    insert(conn)
    assert limits_in_play(conn) is False
    conn.execute("INSERT INTO angela_queue.kinds (kind, rate_limit, rate_period_s) VALUES ('metered', 5, 1)")
    assert limits_in_play(conn) is True            # a limit anywhere, even with no task of its kind
    conn.execute("DELETE FROM angela_queue.kinds")
    assert limits_in_play(conn) is False
    # A flag that outlived its kind's limit (the producer's transaction was
    # open across the change): only the full claim clears it.
    with psycopg.connect(dsn) as producer:
        conn.execute("INSERT INTO angela_queue.kinds (kind, concurrency) VALUES ('k1', 1)")
        producer.execute("INSERT INTO angela_queue.tasks (kind, queue) VALUES ('k1', 'elsewhere')")
        conn.execute("UPDATE angela_queue.kinds SET concurrency = NULL WHERE kind = 'k1'")
        producer.commit()
    assert limits_in_play(conn, ["default"]) is False     # the flag is in a queue not served
    assert limits_in_play(conn, ["default", "elsewhere"]) is True
    assert [r["kind"] for r in claim(conn, queues=["elsewhere"])] == ["k1"]
    assert limits_in_play(conn, ["default", "elsewhere"]) is False


def test_the_unlimited_claim_never_takes_what_a_limit_governs(dsn, conn):
    """A limit set after the worker's last poll: its kind's tasks are passed
    over, flagged or not, and wait for the full claim, which counts them."""
    conn.execute("INSERT INTO angela_queue.kinds (kind, concurrency) VALUES ('capped', 1)")
    capped = [insert(conn, kind="capped", priority=9) for _ in range(3)]
    with psycopg.connect(dsn) as producer:
        # Inserted before its kind had a limit, committed after: no flag.
        conn.execute("INSERT INTO angela_queue.kinds (kind) VALUES ('late')")
        late = [producer.execute("INSERT INTO angela_queue.tasks (kind, priority) VALUES ('late', 9) RETURNING id")
                .fetchone()[0] for _ in range(2)]
        conn.execute("UPDATE angela_queue.kinds SET concurrency = 1 WHERE kind = 'late'")
        producer.commit()
    free = insert(conn, priority=2)
    assert [r["id"] for r in claim(conn, limit=10, unlimited=True)] == [free]
    states = {r["id"]: (r["status"], r["limited_kind"]) for r in conn.execute(
        "SELECT id, status, limited_kind FROM angela_queue.tasks WHERE id = ANY(%s)", (capped + late,))}
    assert states == {**{i: ("queued", "capped") for i in capped}, **{i: ("queued", "") for i in late}}
    # The full claim counts them: one capped starts, the late ones are
    # relabelled (not started past their cap), and one of them starts next.
    assert [r["kind"] for r in claim(conn, limit=10)] == ["capped"]
    assert [r["kind"] for r in claim(conn, limit=10)] == ["late"]
    assert claim(conn, limit=10) == []


def test_the_unlimited_claim_skips_a_paused_queue_and_keeps_to_min_effective(conn):
    conn.execute("INSERT INTO angela_queue.queues (name, paused_at) VALUES ('held', now())")
    insert(conn, queue="held", priority=9)
    medium, critical = insert(conn, priority=5), insert(conn, priority=9)
    assert [r["id"] for r in claim(conn, limit=10, queues=["held", "default"], unlimited=True,
                                   min_effective=9)] == [critical]
    assert [r["id"] for r in claim(conn, limit=10, queues=["held", "default"], unlimited=True)] == [medium]
    assert claim(conn, limit=10, queues=["held", "default"], unlimited=True) == []
