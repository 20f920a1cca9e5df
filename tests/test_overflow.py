"""Bounded queues: max_size from the queues table, 'dropped' rows for low
priority, SQLSTATE AQ001 for plain SQL, and the Python enqueue's wait for
space (woken by a cancel or a claim on another connection)."""

from __future__ import annotations

import asyncio
import threading
import time
import uuid

import psycopg
import pytest
from psycopg.rows import dict_row

import fix_procs
from angela_queue import AsyncClient, Client, QueueFull, db
from angela_queue import statements as st


def wait_until(predicate, timeout: float = 10.0, message: str = "condition"):
    return fix_procs.wait_until(predicate, timeout=timeout, interval=0.01, message=message)


def fill(conn, queue: str, max_size: int, priority: int = 5) -> list[int]:
    """Bound ``queue`` to max_size and fill it with queued tasks."""
    conn.execute("INSERT INTO angela_queue.queues (name) VALUES (%s) ON CONFLICT DO NOTHING", (queue,))
    conn.execute("UPDATE angela_queue.queues SET max_size = %s WHERE name = %s", (max_size, queue))
    rows = conn.execute(
        "INSERT INTO angela_queue.tasks (kind, queue, priority) SELECT 'filler', %s, %s "
        "FROM generate_series(1, %s) RETURNING id", (queue, priority, max_size)).fetchall()
    return [r["id"] for r in rows]


def counts(conn, queue: str) -> dict[str, int]:
    return {r["status"]: r["n"] for r in conn.execute(
        "SELECT status, count(*) AS n FROM angela_queue.tasks WHERE queue = %s GROUP BY status", (queue,))}


def identity_value(conn) -> int:
    """The tasks id sequence's last value: every INSERT attempt, failed or not, draws from it."""
    return conn.execute(
        "SELECT coalesce(last_value, 0) AS v FROM pg_sequences "
        "WHERE schemaname = 'angela_queue' AND sequencename = "
        "split_part(pg_get_serial_sequence('angela_queue.tasks', 'id'), '.', 2)").fetchone()["v"]


# --- plain SQL -----------------------------------------------------------------

def test_low_priority_into_full_queue_is_stored_as_dropped_with_a_reason(conn):
    fill(conn, "mail", 3)
    row = conn.execute("INSERT INTO angela_queue.tasks (kind, queue, priority) VALUES ('k', 'mail', 4) "
                       "RETURNING status, last_error, finished_at").fetchone()
    assert row["status"] == "dropped"
    assert "mail" in row["last_error"] and "3" in row["last_error"] and "full" in row["last_error"]
    assert row["finished_at"] is not None
    assert counts(conn, "mail") == {"queued": 3, "dropped": 1}


@pytest.mark.parametrize("priority", [5, 7, 10])
def test_high_priority_into_full_queue_raises_aq001_and_stores_nothing(conn, priority):
    fill(conn, "mail", 3)
    before = conn.execute("SELECT * FROM angela_queue.tasks ORDER BY id").fetchall()
    with pytest.raises(psycopg.Error) as caught:
        conn.execute("INSERT INTO angela_queue.tasks (kind, queue, priority) VALUES ('k', 'mail', %s)", (priority,))
    assert caught.value.sqlstate == "AQ001"
    message = caught.value.diag.message_primary
    assert "mail" in message and "full" in message and "max_size 3" in message
    assert conn.execute("SELECT * FROM angela_queue.tasks ORDER BY id").fetchall() == before


def test_max_size_update_takes_effect_on_the_next_insert(conn):
    conn.execute("INSERT INTO angela_queue.tasks (kind) SELECT 'k' FROM generate_series(1, 2)")
    conn.execute("UPDATE angela_queue.queues SET max_size = 2 WHERE name = 'default'")
    assert conn.execute("INSERT INTO angela_queue.tasks (kind, priority) VALUES ('k', 1) "
                        "RETURNING status").fetchone()["status"] == "dropped"
    conn.execute("UPDATE angela_queue.queues SET max_size = 3 WHERE name = 'default'")
    assert conn.execute("INSERT INTO angela_queue.tasks (kind, priority) VALUES ('k', 1) "
                        "RETURNING status").fetchone()["status"] == "queued"
    conn.execute("UPDATE angela_queue.queues SET max_size = NULL WHERE name = 'default'")
    conn.execute("INSERT INTO angela_queue.tasks (kind) SELECT 'k' FROM generate_series(1, 20)")
    assert counts(conn, "default") == {"queued": 23, "dropped": 1}


def test_max_size_zero_drops_every_low_priority_task(conn):
    conn.execute("UPDATE angela_queue.queues SET max_size = 0 WHERE name = 'default'")
    assert conn.execute("INSERT INTO angela_queue.tasks (kind, priority) VALUES ('k', 4) "
                        "RETURNING status").fetchone()["status"] == "dropped"
    with pytest.raises(psycopg.Error) as caught:
        conn.execute("INSERT INTO angela_queue.tasks (kind, priority) VALUES ('k', 5)")
    assert caught.value.sqlstate == "AQ001"


def test_waiting_tasks_count_against_max_size_running_ones_do_not(conn):
    ids = fill(conn, "mail", 2)
    # Running and finished tasks free their place.
    conn.execute("UPDATE angela_queue.tasks SET status = 'running' WHERE id = %s", (ids[0],))
    assert conn.execute("INSERT INTO angela_queue.tasks (kind, queue, priority) VALUES ('k', 'mail', 5) "
                        "RETURNING status").fetchone()["status"] == "queued"
    # Full again (2 queued). A delayed task waits in the queue too: refused.
    with pytest.raises(psycopg.Error) as caught:
        with conn.transaction():
            conn.execute("INSERT INTO angela_queue.tasks (kind, queue, priority, run_at) "
                         "VALUES ('k', 'mail', 5, now() + interval '1 hour')")
    assert caught.value.sqlstate == "AQ001"
    # Other queues are not affected by this one's bound.
    assert conn.execute("INSERT INTO angela_queue.tasks (kind, priority) VALUES ('k', 1) "
                        "RETURNING status").fetchone()["status"] == "queued"


def test_delayed_tasks_cannot_overrun_the_bound_when_they_come_due(conn):
    conn.execute("UPDATE angela_queue.queues SET max_size = 3 WHERE name = 'default'")
    rows = conn.execute("INSERT INTO angela_queue.tasks (kind, priority, run_at) "
                        "SELECT 'k', 2, now() + interval '1 second' FROM generate_series(1, 50) "
                        "RETURNING status").fetchall()
    assert [r["status"] for r in rows].count("scheduled") == 3
    assert [r["status"] for r in rows].count("dropped") == 47
    conn.execute("UPDATE angela_queue.tasks SET status = 'queued' WHERE status = 'scheduled'")  # they come due
    depth = conn.execute("SELECT sum(queued) AS n FROM angela_queue.queue_depth WHERE queue = 'default'").fetchone()
    assert depth["n"] == 3


def test_bulk_insert_fills_up_to_the_bound_then_drops(conn):
    conn.execute("UPDATE angela_queue.queues SET max_size = 3 WHERE name = 'default'")
    rows = conn.execute("INSERT INTO angela_queue.tasks (kind, priority) SELECT 'k', 2 "
                        "FROM generate_series(1, 5) RETURNING status").fetchall()
    assert [r["status"] for r in rows] == ["queued"] * 3 + ["dropped"] * 2


def test_unknown_queue_is_created_unbounded(conn):
    conn.execute("INSERT INTO angela_queue.tasks (kind, queue, priority) "
                 "SELECT 'k', 'auto_q', 1 FROM generate_series(1, 30)")
    q = conn.execute("SELECT max_size FROM angela_queue.queues WHERE name = 'auto_q'").fetchone()
    assert q is not None and q["max_size"] is None
    assert counts(conn, "auto_q") == {"queued": 30}


# --- from Python ---------------------------------------------------------------

def test_client_low_priority_into_full_queue_returns_dropped(dsn, conn):
    fill(conn, "mail", 2)
    with Client(dsn, full_queue_wait_s=5) as client:
        started = time.monotonic()
        task = client.enqueue("k", {"a": 1}, queue="mail", priority=4)
        assert time.monotonic() - started < 4  # no wait for a task that is dropped
    assert task.dropped and task.status == "dropped"
    assert "mail" in task.last_error
    assert counts(conn, "mail") == {"queued": 2, "dropped": 1}


def test_client_high_priority_into_full_queue_raises_queue_full_after_waiting(dsn, conn):
    fill(conn, "mail", 2)
    with Client(dsn, full_queue_wait_s=0.3) as client:
        started = time.monotonic()
        with pytest.raises(QueueFull) as caught:
            client.enqueue("k", {"a": 1}, queue="mail", priority=5)
        waited = time.monotonic() - started
    assert waited >= 0.3
    assert caught.value.queue == "mail"
    assert "mail" in str(caught.value) and "max_size 2" in str(caught.value)
    assert counts(conn, "mail") == {"queued": 2}


def test_client_default_wait_is_five_seconds(dsn):
    with Client(dsn) as client:
        assert client.full_queue_wait_s == 5.0
    assert AsyncClient(dsn).full_queue_wait_s == 5.0


def test_enqueue_many_into_full_queue_is_all_or_nothing(dsn, conn):
    fill(conn, "mail", 2)
    with Client(dsn, full_queue_wait_s=0.2) as client:
        with pytest.raises(QueueFull):
            client.enqueue_many([{"kind": "a", "queue": "default"}, {"kind": "b", "queue": "mail", "priority": 9}])
    assert counts(conn, "mail") == {"queued": 2}
    assert counts(conn, "default") == {}


def _space_freers():
    def cancel(conn, ids):
        assert db.fetch_all(conn, "tasks_cancel", {"id": ids[0]})[0]["status"] == "cancelled"

    def claim(conn, ids):
        claimed = db.fetch_all(conn, st.claim(worker_id=uuid.uuid4(), queues=["mail"], limit=1))
        assert len(claimed) == 1

    return [pytest.param(cancel, id="cancel"), pytest.param(claim, id="claim")]


@pytest.mark.parametrize("free_space", _space_freers())
def test_waiting_enqueue_succeeds_when_space_frees(dsn, conn, free_space):
    ids = fill(conn, "mail", 2)
    outcome: dict = {}
    baseline = identity_value(conn)

    def producer():
        with Client(dsn, full_queue_wait_s=20) as client:
            try:
                outcome["task"] = client.enqueue("k", {"n": 1}, queue="mail", priority=7)
            except BaseException as exc:  # reported to the test thread
                outcome["error"] = exc

    thread = threading.Thread(target=producer, daemon=True)
    thread.start()
    # Two failed attempts mean the client has LISTENed and retried: it is now
    # waiting for space (a cancel before this point would prove nothing).
    wait_until(lambda: identity_value(conn) >= baseline + 2, message="two refused inserts")
    assert "task" not in outcome and "error" not in outcome

    with psycopg.connect(dsn, autocommit=True, row_factory=dict_row) as other:
        free_space(other, ids)

    thread.join(timeout=15)
    assert not thread.is_alive(), "the waiting enqueue never finished"
    assert "error" not in outcome, outcome.get("error")
    task = outcome["task"]
    assert task.status == "queued" and task.queue == "mail"
    row = conn.execute("SELECT status, priority FROM angela_queue.tasks WHERE id = %s", (task.id,)).fetchone()
    assert row == {"status": "queued", "priority": 7}


def test_async_client_waits_then_raises_or_succeeds(dsn, conn):
    ids = fill(conn, "mail", 1)

    async def main():
        async with AsyncClient(dsn, full_queue_wait_s=0.3) as client:
            with pytest.raises(QueueFull):
                await client.enqueue("k", queue="mail", priority=6)
        async with AsyncClient(dsn, full_queue_wait_s=20) as client:
            baseline = identity_value(conn)
            pending = asyncio.ensure_future(client.enqueue("k", queue="mail", priority=6))
            deadline = time.monotonic() + 10
            while identity_value(conn) < baseline + 2:
                assert time.monotonic() < deadline, "the async enqueue never retried"
                assert not pending.done(), pending
                await asyncio.sleep(0.01)
            with psycopg.connect(dsn, autocommit=True, row_factory=dict_row) as other:
                db.fetch_all(other, "tasks_cancel", {"id": ids[0]})
            return await asyncio.wait_for(pending, timeout=15)

    task = asyncio.run(main())
    assert task.status == "queued" and task.queue == "mail"
    assert counts(conn, "mail") == {"queued": 1, "cancelled": 1}


@pytest.mark.parametrize("queue", ["it's", "back\\slash"])
def test_queue_full_names_a_queue_with_quotes_or_backslashes(dsn, conn, queue):
    fill(conn, queue, 1)
    with Client(dsn, full_queue_wait_s=0) as client:
        with pytest.raises(QueueFull) as caught:
            client.enqueue("k", queue=queue, priority=5)
    assert caught.value.queue == queue
