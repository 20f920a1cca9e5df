"""`angela-queue status` on a database with known contents (rows made by the real queries)."""

from __future__ import annotations

import json
import uuid

from click.testing import CliRunner

from angela_queue import db
from angela_queue.maintenance import lease as leader
from angela_queue.cli import main
from angela_queue.inspect.status import age
from angela_queue import statements as st


def status(dsn: str, *args: str) -> str:
    result = CliRunner().invoke(main, ["--dsn", dsn, "status", *args])
    assert result.exit_code == 0, result.output
    return result.output


def seed(conn) -> dict:
    sup = uuid.uuid4()
    db.fetch_all(conn, "supervisors_register", {"id": sup, "host": "host-a", "pid": 4242, "queues": ["default"],
                                               "workers_target": 2, "last_decision": "up to 2: depth 12 > 10"})
    assert leader.attempt_elect(conn, sup, 15)
    busy, gone = uuid.uuid4(), uuid.uuid4()
    for wid, pid in ((busy, 5151), (gone, 5252)):
        db.fetch_all(conn, "workers_register", {
            "id": wid, "supervisor_id": sup, "host": "host-a", "pid": pid, "queues": ["default"],
            "concurrency": 1, "stuck_after_s": 60, "dead_after_s": 30, "kinds": []})
    db.fetch_all(conn, "workers_mark_stopped", {"id": gone, "tasks_completed": 1, "tasks_failed": 0,
                                               "avg_processing_time_ms": 5})
    conn.execute("INSERT INTO angela_queue.tasks (kind, priority) "
                 "SELECT 'k', p FROM unnest(ARRAY[10, 8, 8, 5, 5, 5, 2]) AS p")
    [claimed] = db.fetch_all(conn, st.claim(worker_id=busy, queues=["default"], limit=1))
    db.fetch_all(conn, "workers_heartbeat", {
        "id": busy, "status": "active", "current_tasks": [claimed["id"]], "tasks_completed": 41,
        "tasks_failed": 2, "avg_processing_time_ms": 12.5, "last_active": None})
    return {"supervisor": sup, "busy": busy, "gone": gone, "task": claimed["id"]}


def test_status_shows_queues_supervisors_and_workers(dsn, conn):
    ids = seed(conn)
    out = status(dsn)
    assert "QUEUES" in out and "SUPERVISORS (1)" in out and "WORKERS (1)" in out
    lines = out.splitlines()

    def row(*needles: str) -> str:
        found = [line for line in lines if all(n in line.split() for n in needles)]
        assert found, f"no line with {needles} in\n{out}"
        return found[0]

    # Queue depth per tier: the critical task (priority 10) was claimed first.
    assert row("default", "critical").split()[3:6] == ["0", "0", "1"]        # queued, scheduled, running
    assert row("default", "high").split()[3] == "2"
    assert row("default", "medium").split()[3] == "3"
    assert row("default", "low").split()[3] == "1"
    assert "100.0%" in row("default", "critical")                            # started within its deadline
    sup_line = row(str(ids["supervisor"])[:8])
    assert "host-a" in sup_line and "4242" in sup_line and "yes" in sup_line and "1/2" in sup_line
    assert "depth 12 > 10" in sup_line
    worker_line = row(str(ids["busy"])[:8])
    for value in ("5151", "active", "41", "2", "12.5", str(ids["task"])):
        assert value in worker_line.split(), worker_line
    assert str(ids["gone"])[:8] not in out                                   # stopped: hidden by default


def test_status_all_includes_stopped_workers_and_json_is_machine_readable(dsn, conn):
    ids = seed(conn)
    assert str(ids["gone"])[:8] in status(dsn, "--all")
    data = json.loads(status(dsn, "--json"))
    assert {w["id"] for w in data["workers"]} == {str(ids["busy"])}
    assert data["supervisors"][0]["leader"] is True
    assert sum(q["queued"] for q in data["queues"]) == 6


def test_status_of_an_empty_database_says_how_to_start(dsn):
    out = status(dsn)
    assert "SUPERVISORS (0)" in out and "angela-queue run --app MODULE" in out


def test_age_formatting():
    assert (age(None), age(3.21), age(90), age(7200), age(172800)) == ("-", "3.2s", "1.5m", "2.0h", "2.0d")
