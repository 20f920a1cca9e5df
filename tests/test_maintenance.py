"""Reclaim, mark-lost, promote and prune against a real database.

Time moves through the queries' ``now`` parameter: no test sleeps. Workers
are heartbeat rows registered and claiming through the worker's own queries.
"""

from __future__ import annotations

import datetime as dt
import json
import re
import uuid

import psycopg
from psycopg.rows import tuple_row

from angela_queue import db, maintenance, queries
from angela_queue import statements as st

DAY = 86400.0


def at(conn, seconds: float) -> dt.datetime:
    return conn.execute("SELECT now() + make_interval(secs => %s) AS t", (seconds,)).fetchone()["t"]


def register_worker(conn, *, dead_after_s: float = 30, supervisor_id=None) -> uuid.UUID:
    worker_id = uuid.uuid4()
    db.fetch_all(conn, "workers_register", {
        "id": worker_id, "supervisor_id": supervisor_id, "host": "test", "pid": 1, "queues": ["default"],
        "concurrency": 1, "stuck_after_s": 60, "dead_after_s": dead_after_s, "kinds": []})
    return worker_id


def enqueue(conn, n: int = 1, *, max_attempts: int = 5, kind: str = "k") -> list[int]:
    rows = conn.execute(
        "INSERT INTO angela_queue.tasks (kind, max_attempts) SELECT %s, %s FROM generate_series(1, %s) RETURNING id",
        (kind, max_attempts, n)).fetchall()
    return [r["id"] for r in rows]


def claim(conn, worker_id: uuid.UUID, limit: int = 1) -> list[int]:
    rows = db.fetch_all(conn, st.claim(worker_id=worker_id, queues=["default"], limit=limit))
    return [r["id"] for r in rows]


def task(conn, task_id: int) -> dict:
    return conn.execute("SELECT * FROM angela_queue.tasks WHERE id = %s", (task_id,)).fetchone()


def worker(conn, worker_id: uuid.UUID) -> dict:
    return conn.execute("SELECT * FROM angela_queue.workers WHERE id = %s", (worker_id,)).fetchone()


def heartbeat(conn, worker_id: uuid.UUID, current_tasks: list[int]) -> None:
    assert db.fetch_all(conn, "workers_heartbeat", {
        "id": worker_id, "status": "active" if current_tasks else "idle", "current_tasks": current_tasks,
        "tasks_completed": 0, "tasks_failed": 0, "avg_processing_time_ms": 0, "last_active": None})


# --- the leader: workers whose heartbeat went stale -------------------------------------

def test_stale_worker_is_marked_dead_and_its_task_requeued_with_the_attempt_counted(conn):
    w = register_worker(conn, dead_after_s=30)
    enqueue(conn)
    [tid] = claim(conn, w)
    assert maintenance.reclaim_lost_workers(conn, now=at(conn, 10)).count == 0   # heartbeat still fresh
    assert task(conn, tid)["status"] == "running"

    result = maintenance.reclaim_lost_workers(conn, now=at(conn, 31))
    assert result.dead_workers == [w] and result.requeued == [tid]
    row = task(conn, tid)
    assert (row["status"], row["attempts"], row["worker_id"], row["started_at"]) == ("queued", 1, None, None)
    assert str(w) in row["last_error"]
    assert worker(conn, w)["status"] == "dead"
    # The worker's late outcome no longer lands: the guard sees the task is not its own.
    done = db.fetch_all(conn, st.complete_many(
        worker_id=w, outcomes_json=json.dumps([{"id": tid, "result": 1, "finished_at": 0.0}])))
    assert done == [] and task(conn, tid)["status"] == "queued"


def test_reclaim_fails_the_task_when_its_attempts_are_spent(conn):
    w = register_worker(conn)
    enqueue(conn, max_attempts=1)
    [tid] = claim(conn, w)
    result = maintenance.reclaim_lost_workers(conn, now=at(conn, 60))
    assert result.failed == [tid] and result.requeued == []
    row = task(conn, tid)
    assert row["status"] == "failed" and row["finished_at"] is not None and row["attempts"] == 1
    assert "attempt 1 of 1" in row["last_error"]


def test_a_healthy_worker_keeps_its_tasks(conn):
    stale, healthy = register_worker(conn, dead_after_s=30), register_worker(conn, dead_after_s=120)
    enqueue(conn, 2)
    [a], [b] = claim(conn, stale), claim(conn, healthy)
    result = maintenance.reclaim_lost_workers(conn, now=at(conn, 60))
    assert result.requeued == [a]
    assert task(conn, b)["status"] == "running" and worker(conn, healthy)["status"] == "idle"


def test_tasks_left_running_by_a_stopped_or_unknown_worker_are_reclaimed_at_once(conn):
    stopped = register_worker(conn)
    enqueue(conn, 2)
    [a] = claim(conn, stopped)
    db.fetch_all(conn, "workers_mark_stopped", {"id": stopped, "tasks_completed": 0, "tasks_failed": 0,
                                               "avg_processing_time_ms": 0})
    [b] = claim(conn, uuid.uuid4())    # a worker id with no row at all
    result = maintenance.reclaim_lost_workers(conn)
    assert sorted(result.requeued) == sorted([a, b])
    assert worker(conn, stopped)["status"] == "stopped"


def test_reclaim_works_in_bounded_chunks(conn):
    w = register_worker(conn)
    enqueue(conn, 5)
    claimed = claim(conn, w, limit=5)
    first = maintenance.reclaim_lost_workers(conn, now=at(conn, 60), limit=3)
    second = maintenance.reclaim_lost_workers(conn, now=at(conn, 60), limit=3)
    assert len(first.requeued) == 3 and len(second.requeued) == 2
    assert sorted(first.requeued + second.requeued) == sorted(claimed)


def test_no_worker_is_judged_lost_across_a_database_outage(conn):
    healthy, dead = register_worker(conn, dead_after_s=30), register_worker(conn, dead_after_s=30)
    patient = register_worker(conn, dead_after_s=120)
    enqueue(conn, 3)
    [a], [b], [c] = claim(conn, healthy), claim(conn, dead), claim(conn, patient)
    # A 100 s outage: nobody could write a heartbeat, so every row looks long dead.
    conn.execute("UPDATE angela_queue.workers SET last_heartbeat = now() - interval '100 seconds'")

    # The leader has seen the database answer for 10 s: too short for anyone to be judged.
    result = maintenance.reclaim_lost_workers(conn, healthy_for_s=10, now=at(conn, 0))
    assert result.dead_workers == [] and result.count == 0
    assert [task(conn, t)["status"] for t in (a, b, c)] == ["running"] * 3
    # One second short of dead_after_s of reachable database: still nothing.
    assert maintenance.reclaim_lost_workers(conn, healthy_for_s=29, now=at(conn, 19)).count == 0

    # The healthy worker beats again (the dead one never will); 35 s after the database came back,
    # the dead one has been silent through a full dead_after_s of it and is reclaimed, alone.
    heartbeat(conn, healthy, [a])
    result = maintenance.reclaim_lost_workers(conn, healthy_for_s=35, now=at(conn, 25))
    assert result.dead_workers == [dead] and result.requeued == [b]
    assert task(conn, a)["status"] == "running" and worker(conn, healthy)["status"] == "active"
    # A worker's own, longer dead_after_s is honoured the same way.
    assert task(conn, c)["status"] == "running" and worker(conn, patient)["status"] == "idle"
    result = maintenance.reclaim_lost_workers(conn, healthy_for_s=130, now=at(conn, 120))
    assert set(result.dead_workers) == {patient, healthy} and sorted(result.requeued) == sorted([a, c])


def test_the_maintenance_round_judges_silence_only_while_the_database_answered(conn):
    w = register_worker(conn, dead_after_s=30)
    enqueue(conn)
    [tid] = claim(conn, w)
    sid = uuid.uuid4()
    db.fetch_all(conn, "supervisors_register", {"id": sid, "host": "h", "pid": 1, "queues": ["default"],
                                               "workers_target": 1, "last_decision": "x"})
    conn.execute("UPDATE angela_queue.workers SET last_heartbeat = now() - interval '100 seconds'")
    conn.execute("UPDATE angela_queue.supervisors SET last_heartbeat = now() - interval '100 seconds'")
    job = maintenance.Maintenance(retention_s=DAY, dead_after_s=30)

    job.run(conn, healthy_for_s=5, now=at(conn, 0))           # just reconnected after the outage
    assert task(conn, tid)["status"] == "running" and worker(conn, w)["status"] == "idle"
    assert conn.execute("SELECT status FROM angela_queue.supervisors").fetchone()["status"] == "running"

    job.run(conn, healthy_for_s=31, now=at(conn, 26))         # nobody beat since: now they are lost
    assert task(conn, tid)["status"] == "queued" and worker(conn, w)["status"] == "dead"
    assert conn.execute("SELECT status FROM angela_queue.supervisors").fetchone()["status"] == "dead"


def test_lost_supervisors_are_marked_dead(conn):
    sid = uuid.uuid4()
    db.fetch_all(conn, "supervisors_register", {"id": sid, "host": "h", "pid": 1, "queues": ["default"],
                                               "workers_target": 2, "last_decision": "x"})
    assert maintenance.mark_lost_supervisors(conn, 30, now=at(conn, 10)) == []
    [row] = maintenance.mark_lost_supervisors(conn, 30, now=at(conn, 31))
    assert row["id"] == sid
    # A supervisor that was only paused comes back at its next heartbeat.
    assert db.fetch_one(conn, "supervisors_heartbeat", {"id": sid, "workers_target": 2, "last_decision": "y"})
    assert conn.execute("SELECT status FROM angela_queue.supervisors WHERE id = %s", (sid,)).fetchone()["status"] \
        == "running"


# --- the supervisor: its own workers ---------------------------------------------------------

def test_exited_worker_has_its_tasks_reclaimed_without_waiting_for_a_timeout(conn):
    w = register_worker(conn, dead_after_s=3600)
    enqueue(conn)
    [tid] = claim(conn, w)
    result = maintenance.reclaim_exited_worker(conn, w, crashed=True, reason="worker x was killed by SIGKILL")
    assert result.marked and result.requeued == [tid]
    assert worker(conn, w)["status"] == "dead"
    row = task(conn, tid)
    assert row["status"] == "queued" and row["last_error"] == "worker x was killed by SIGKILL (attempt 1 of 5)"
    # Idempotent: a second reclaim finds nothing, and the next claim counts attempt 2.
    assert maintenance.reclaim_exited_worker(conn, w, crashed=True, reason="again").count == 0
    other = register_worker(conn)
    assert claim(conn, other) == [tid] and task(conn, tid)["attempts"] == 2


def test_clean_exit_marks_stopped_and_keeps_a_stopped_row_as_it_is(conn):
    w = register_worker(conn)
    assert maintenance.reclaim_exited_worker(conn, w, crashed=False, reason="clean").marked
    assert worker(conn, w)["status"] == "stopped"
    assert not maintenance.reclaim_exited_worker(conn, w, crashed=True, reason="late").marked
    assert worker(conn, w)["status"] == "stopped"


def test_stuck_reclaim_is_guarded_by_the_progress_it_saw(conn):
    w = register_worker(conn)
    enqueue(conn)
    [tid] = claim(conn, w)
    seen = task(conn, tid)["started_at"] - dt.timedelta(seconds=1)   # progress older than the claim
    result = maintenance.reclaim_stuck_worker(conn, w, seen, "stuck")
    assert not result.marked and result.count == 0                  # it made progress since: left alone
    assert task(conn, tid)["status"] == "running"

    progress = max(worker(conn, w)["last_active"], task(conn, tid)["started_at"])
    result = maintenance.reclaim_stuck_worker(conn, w, progress, "worker w was stuck")
    assert result.marked and result.requeued == [tid]
    assert worker(conn, w)["status"] == "stuck"
    # Its heartbeat is refused from now on, which tells the worker to stop.
    beat = db.fetch_all(conn, "workers_heartbeat", {
        "id": w, "status": "active", "current_tasks": [tid], "tasks_completed": 0, "tasks_failed": 0,
        "avg_processing_time_ms": 0, "last_active": None})
    assert beat == []


# --- promote and prune -------------------------------------------------------------------------

def test_due_scheduled_tasks_are_promoted(conn):
    tid = conn.execute("INSERT INTO angela_queue.tasks (kind, run_at) VALUES ('k', now() + interval '1 hour') "
                       "RETURNING id").fetchone()["id"]
    assert maintenance.promote_due(conn, now=at(conn, 60)) == 0
    assert maintenance.promote_due(conn, now=at(conn, 3601)) == 1
    assert task(conn, tid)["status"] == "queued"


def test_prune_deletes_old_finished_rows_in_chunks_until_caught_up(conn):
    old = enqueue(conn, 7)
    conn.execute("UPDATE angela_queue.tasks SET status = 'succeeded', finished_at = now() WHERE id = ANY(%s)",
                 (old,))
    waiting = enqueue(conn, 2)
    w = register_worker(conn)
    [running] = claim(conn, w)
    week_later = at(conn, 7 * DAY + 60)

    assert maintenance.prune(conn, 7 * DAY, now=at(conn, 6 * DAY)).counts["tasks"] == 0    # not old enough yet
    # A budget of nothing: one chunk, then it says it is behind.
    behind = maintenance.prune(conn, 7 * DAY, now=week_later, chunk=3, budget_s=0)
    assert behind.counts["tasks"] == 3 and not behind.caught_up
    rest = maintenance.prune(conn, 7 * DAY, now=week_later, chunk=3)
    assert rest.counts["tasks"] == 4 and rest.caught_up                               # chunk after chunk
    left = {r["id"]: r["status"] for r in conn.execute("SELECT id, status FROM angela_queue.tasks").fetchall()}
    assert set(left) == set(waiting) | {running}          # unfinished rows are never pruned
    assert left[running] == "running"


def test_failed_rows_are_kept_for_their_own_longer_retention(conn):
    ok, failed, cancelled, dropped = enqueue(conn, 4)
    for tid, status in ((ok, "succeeded"), (failed, "failed"), (cancelled, "cancelled"), (dropped, "dropped")):
        conn.execute("UPDATE angela_queue.tasks SET status = %s, finished_at = now() WHERE id = %s", (status, tid))
    result = maintenance.prune(conn, DAY, 30 * DAY, now=at(conn, 2 * DAY))
    assert result.counts["tasks"] == 3
    assert [r["id"] for r in conn.execute("SELECT id FROM angela_queue.tasks")] == [failed]
    assert maintenance.prune(conn, DAY, 30 * DAY, now=at(conn, 31 * DAY)).counts["tasks"] == 1


def test_a_row_created_in_the_future_cannot_pin_the_pruner(conn):
    """Retention goes by finished_at: whatever a row's created_at or id say, due rows go."""
    first, pinned, last = enqueue(conn, 3)
    conn.execute("UPDATE angela_queue.tasks SET status = 'succeeded', finished_at = now()")
    with conn.transaction():   # as a hand-edit under 0001 could leave it (the trigger now forbids it)
        conn.execute("SET LOCAL session_replication_role = replica")
        conn.execute("UPDATE angela_queue.tasks SET created_at = '2100-01-01', finished_at = now() + interval "
                     "'1 hour' WHERE id = %s", (pinned,))
    result = maintenance.prune(conn, DAY, now=at(conn, 2 * DAY))
    assert result.counts["tasks"] == 3
    assert conn.execute("SELECT count(*) AS n FROM angela_queue.tasks").fetchone()["n"] == 0


def test_prune_removes_old_stopped_workers_and_supervisors_only(conn):
    gone, alive = register_worker(conn), register_worker(conn)
    maintenance.reclaim_exited_worker(conn, gone, crashed=False, reason="clean")
    sid = uuid.uuid4()
    db.fetch_all(conn, "supervisors_register", {"id": sid, "host": "h", "pid": 1, "queues": ["default"],
                                               "workers_target": 0, "last_decision": None})
    db.fetch_all(conn, "supervisors_mark_stopped", {"id": sid, "last_decision": "stopped"})
    counts = maintenance.prune(conn, DAY, now=at(conn, 2 * DAY)).counts
    assert counts["workers"] == 1 and counts["supervisors"] == 1
    assert worker(conn, gone) is None and worker(conn, alive) is not None


def test_maintenance_run_does_everything_and_is_idempotent(conn):
    w = register_worker(conn, dead_after_s=0.5)
    enqueue(conn)
    [tid] = claim(conn, w)
    job = maintenance.Maintenance(retention_s=DAY, dead_after_s=30)
    job.run(conn, healthy_for_s=3600, now=at(conn, 5))
    job.run(conn, healthy_for_s=3600, now=at(conn, 5))
    assert task(conn, tid)["status"] == "queued" and task(conn, tid)["attempts"] == 1
    assert worker(conn, w)["status"] == "dead"


# --- the pruner reads its index, however big the table --------------------------------------

def _plan_nodes(plan: dict) -> list[dict]:
    nodes = [plan]
    for child in plan.get("Plans", []):
        nodes.extend(_plan_nodes(child))
    return nodes


def _task_scans(plan: dict) -> list[dict]:
    return [n for n in _plan_nodes(plan) if n.get("Relation Name") == "tasks" and "Scan" in n["Node Type"]]


def _rows_read(node: dict) -> float:
    return (node["Actual Rows"] + node.get("Rows Removed by Filter", 0)) * node["Actual Loops"]


def _as_prepared(query: str) -> tuple[str, list[str]]:
    """The query with $n placeholders, as a prepared statement has it, and the parameter names in order."""
    names: list[str] = []

    def number(match: re.Match) -> str:
        if match.group(1) not in names:
            names.append(match.group(1))
        return f"${names.index(match.group(1)) + 1}"

    return re.sub(r"%\((\w+)\)s", number, query).replace("%%", "%"), names


def test_the_prune_step_reads_its_index_and_a_bounded_number_of_rows_on_a_big_table(conn):
    # 50k rows, all finished just now (nothing old enough), a few live ones among them.
    conn.execute("INSERT INTO angela_queue.tasks (kind) SELECT 'k' FROM generate_series(1, 50000)")
    conn.execute("UPDATE angela_queue.tasks SET status = 'succeeded', finished_at = now() WHERE mod(id, 100) <> 0")
    conn.execute("ANALYZE angela_queue.tasks")
    limit = 1000
    query = queries.query("maintenance_prune_finished")
    nothing_due = {"status": "succeeded", "now": at(conn, 0), "retention_s": 7 * DAY, "limit": limit}
    all_due = {**nothing_due, "now": at(conn, 8 * DAY)}

    def explain(params: dict, generic: bool = False) -> dict:
        with conn.transaction():              # EXPLAIN ANALYZE runs the DELETE: roll it back
            if generic:
                # Statements are prepared (db.PREPARE_THRESHOLD): after a few runs the server may
                # switch to a plan made without the values. It must read the index just the same.
                text, names = _as_prepared(query)
                conn.execute("SET LOCAL plan_cache_mode = force_generic_plan")
                conn.execute("PREPARE prune_step AS " + text)
                with psycopg.ClientCursor(conn, row_factory=tuple_row) as cur:
                    cur.execute("EXPLAIN (ANALYZE, FORMAT JSON) EXECUTE prune_step("
                                + ", ".join(["%s"] * len(names)) + ")", [params[n] for n in names])
                    plan = cur.fetchone()[0][0]["Plan"]
                conn.execute("DEALLOCATE prune_step")
            else:
                with conn.cursor(row_factory=tuple_row) as cur:
                    cur.execute("EXPLAIN (ANALYZE, FORMAT JSON) " + query, params)
                    plan = cur.fetchone()[0][0]["Plan"]
            raise psycopg.Rollback()
        return plan

    for params, generic in ((nothing_due, False), (all_due, False), (all_due, True)):
        plan = explain(params, generic)
        kinds = [n["Node Type"] for n in _plan_nodes(plan)]
        assert "Seq Scan" not in kinds and "Bitmap Heap Scan" not in kinds, kinds
        scans = _task_scans(plan)
        assert scans and {n["Node Type"] for n in scans} <= {"Index Scan", "Index Only Scan"}, kinds
        assert "tasks_finished_idx" in {n["Index Name"] for n in scans}, scans
        for scan in scans:      # each read of tasks stays within the chunk, however big the table
            assert _rows_read(scan) <= limit, scan

    assert db.fetch_one(conn, "maintenance_prune_finished", nothing_due) == {"pruned": 0}
    assert db.fetch_one(conn, "maintenance_prune_finished", all_due) == {"pruned": limit}
    assert conn.execute("SELECT count(*) AS n FROM angela_queue.tasks").fetchone()["n"] == 50000 - limit
