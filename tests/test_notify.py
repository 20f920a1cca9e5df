"""Wake-ups: NOTIFY on 'angela_queue_insert' (payload: the queue name) when
startable tasks are committed, and on 'angela_queue_space' when a bounded
queue frees a place.

Absence is proven without sleeping: Postgres delivers notifications in commit
order, so after the statement under test a marker is notified from another
connection, and everything the statement sent must arrive before it."""

from __future__ import annotations

import time
import uuid

import psycopg
import pytest
from psycopg.rows import dict_row

from angela_queue import Client, db
from angela_queue import statements as st

INSERT = "angela_queue_insert"
SPACE = "angela_queue_space"


@pytest.fixture
def listener(dsn):
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(f"LISTEN {INSERT}")
        conn.execute(f"LISTEN {SPACE}")
        yield conn


@pytest.fixture
def other(dsn):
    """A second connection, for markers and for work that should wake the listener."""
    with psycopg.connect(dsn, autocommit=True, row_factory=dict_row) as conn:
        yield conn


def received_until_marker(listener, other, channel: str = INSERT, timeout: float = 10.0) -> list[tuple[str, str]]:
    """Every (channel, payload) delivered before a marker sent now on ``channel``."""
    marker = f"marker-{uuid.uuid4().hex}"
    other.execute("SELECT pg_notify(%s, %s)", (channel, marker))
    got: list[tuple[str, str]] = []
    deadline = time.monotonic() + timeout
    while True:
        remaining = deadline - time.monotonic()
        assert remaining > 0, f"the marker never arrived; got {got}"
        for n in listener.notifies(timeout=remaining, stop_after=1):
            if n.payload == marker:
                return got
            got.append((n.channel, n.payload))


def test_insert_notifies_the_queue_name_after_commit(listener, other, dsn):
    with psycopg.connect(dsn) as producer:  # not autocommit: an open transaction
        producer.execute("INSERT INTO angela_queue.tasks (kind, queue) VALUES ('k', 'mail')")
        # Not committed yet: nothing may arrive.
        assert received_until_marker(listener, other) == []
        producer.commit()
    assert received_until_marker(listener, other) == [(INSERT, "mail")]


def test_rolled_back_insert_sends_nothing(listener, other, dsn):
    with psycopg.connect(dsn) as producer:
        producer.execute("INSERT INTO angela_queue.tasks (kind) VALUES ('k')")
        producer.rollback()
    assert received_until_marker(listener, other) == []


def test_plain_insert_with_default_queue(listener, other):
    other.execute("INSERT INTO angela_queue.tasks (kind) VALUES ('k')")
    assert received_until_marker(listener, other) == [(INSERT, "default")]


def test_bulk_insert_sends_one_notification_per_queue(listener, other):
    other.execute("BEGIN")
    other.execute("SET LOCAL track_functions = 'pl'")
    other.execute("INSERT INTO angela_queue.tasks (kind, queue) "
                  "SELECT 'k', CASE WHEN i % 3 = 0 THEN 'q_a' ELSE 'q_b' END FROM generate_series(1, 1000) i")
    # The notifying trigger ran once for the statement, not once per row.
    calls = other.execute(
        "SELECT pg_stat_get_xact_function_calls(p.oid) AS calls FROM pg_trigger g JOIN pg_proc p ON p.oid = g.tgfoid "
        "WHERE g.tgrelid = 'angela_queue.tasks'::regclass AND p.prosrc LIKE '%pg_notify%'").fetchall()
    other.execute("COMMIT")
    assert [c["calls"] for c in calls] == [1]
    got = received_until_marker(listener, other)
    assert sorted(got) == [(INSERT, "q_a"), (INSERT, "q_b")]


def test_client_enqueue_many_notifies_once_per_queue(listener, other, dsn):
    with Client(dsn) as client:
        client.enqueue_many([{"kind": "k", "queue": "q1" if i % 2 else "q2"} for i in range(200)])
    assert sorted(received_until_marker(listener, other)) == [(INSERT, "q1"), (INSERT, "q2")]


def test_scheduled_insert_sends_nothing(listener, other, dsn):
    other.execute("INSERT INTO angela_queue.tasks (kind, run_at) VALUES ('k', now() + interval '1 hour')")
    with Client(dsn) as client:
        client.enqueue("k", delay=60)
        client.enqueue_many([{"kind": "k", "delay": 60, "queue": "q1"}])
    assert received_until_marker(listener, other) == []


def test_mixed_statement_notifies_only_queues_that_got_startable_tasks(listener, other):
    other.execute("INSERT INTO angela_queue.tasks (kind, queue, run_at) VALUES "
                  "('k', 'now_q', now()), ('k', 'later_q', now() + interval '1 hour')")
    assert received_until_marker(listener, other) == [(INSERT, "now_q")]


def test_dropped_insert_sends_nothing(listener, other):
    other.execute("UPDATE angela_queue.queues SET max_size = 0 WHERE name = 'default'")
    row = other.execute("INSERT INTO angela_queue.tasks (kind, priority) VALUES ('k', 1) RETURNING status").fetchone()
    assert row["status"] == "dropped"
    assert received_until_marker(listener, other) == []


def test_cancel_notifies_space_with_the_queue_name(listener, other):
    task_id = other.execute("INSERT INTO angela_queue.tasks (kind, queue) VALUES ('k', 'mail') "
                            "RETURNING id").fetchone()["id"]
    assert received_until_marker(listener, other) == [(INSERT, "mail")]
    assert db.fetch_all(other, "tasks_cancel", {"id": task_id})[0]["status"] == "cancelled"
    assert received_until_marker(listener, other, SPACE) == [(SPACE, "mail")]


@pytest.mark.parametrize("unlimited", [False, True], ids=["tasks_claim", "tasks_claim_unlimited"])
def test_claim_from_a_bounded_queue_notifies_space(listener, other, unlimited):
    other.execute("INSERT INTO angela_queue.queues (name, max_size) VALUES ('bounded', 10)")
    other.execute("INSERT INTO angela_queue.tasks (kind, queue) VALUES ('k', 'bounded'), ('k', 'default')")
    received_until_marker(listener, other)
    claimed = db.fetch_all(other, st.claim(worker_id=uuid.uuid4(), queues=["bounded"], limit=1, unlimited=unlimited))
    assert len(claimed) == 1
    assert received_until_marker(listener, other, SPACE) == [(SPACE, "bounded")]
    # An unbounded queue has nobody waiting for space: its claim stays silent.
    claimed = db.fetch_all(other, st.claim(worker_id=uuid.uuid4(), queues=["default"], limit=1, unlimited=unlimited))
    assert len(claimed) == 1
    assert received_until_marker(listener, other, SPACE) == []
