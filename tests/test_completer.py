"""The completer (worker/completer.py): the outcome buffer and its flushes.

The bookkeeping is checked as pure code; storing one by one against a real
database, where one outcome the server refuses must not hold the others,
and a refusal that is the environment's (a read-only session) must lose
nothing.
"""

from __future__ import annotations

import asyncio
import json
import uuid

import pytest

from angela_queue import db
from angela_queue import statements as st
from angela_queue.queries import Query, UnknownQuery
from angela_queue.worker.completer import Completer, is_outcome_fault, outcome_statements
from angela_queue.worker.execution import Outcome

WORKER = uuid.uuid4()


def completer(settled: list[int] | None = None, keep: bool = True) -> Completer:
    return Completer(WORKER, settled=(settled if settled is not None else []).append, keep_stored_ids=keep)


def test_each_kind_of_outcome_goes_to_its_own_statement_once():
    flush = [Outcome(1, ok=True, result_json='{"a": 1}', finished_at=1.5),
             Outcome(2, ok=False, error="boom", retry_in_s=3.0, finished_at=2.0),
             Outcome(3, ok=False, cancelled=True, error="asked", finished_at=2.0),
             Outcome(4, ok=False, snooze_s=10.0, finished_at=2.0),
             Outcome(5, ok=True, finished_at=3.0),
             Outcome(6, ok=False, error="final", retry_in_s=None, finished_at=4.0)]
    by_name = {q.name: q.params for q in outcome_statements(WORKER, flush)}
    assert list(by_name) == ["tasks_complete_many", "tasks_fail_many", "tasks_cancelled_many", "tasks_snooze_many"]
    assert json.loads(by_name["tasks_complete_many"]["outcomes"]) == [
        {"id": 1, "result": {"a": 1}, "finished_at": 1.5}, {"id": 5, "result": None, "finished_at": 3.0}]
    assert by_name["tasks_fail_many"]["ids"] == [2, 6]
    assert by_name["tasks_fail_many"]["retry_in_s"] == [3.0, None]
    assert by_name["tasks_cancelled_many"]["ids"] == [3]
    assert by_name["tasks_snooze_many"] == {"worker_id": WORKER, "ids": [4], "delays_s": [10.0]}
    assert all(q.params["worker_id"] == WORKER for q in outcome_statements(WORKER, flush))
    assert outcome_statements(WORKER, []) == []


def test_a_failed_flush_keeps_its_outcomes_for_the_next_one_in_order():
    settled: list[int] = []
    c = completer(settled)
    c.add(Outcome(1, ok=True))
    first = c.take()
    assert [o.task_id for o in first] == [1]
    # The trip failed: nothing is stored, and what finished meanwhile joins.
    c.add(Outcome(2, ok=True))
    assert c.reported() == {1, 2}
    again = c.take()
    assert [o.task_id for o in again] == [1, 2]
    assert settled == [] and c
    c.stored(again, [[{"id": 1}, {"id": 2}]])
    assert settled == [1, 2] and c.stored_ids == [1, 2]
    assert not c and c.take() == []


def test_an_outcome_the_database_did_not_take_is_settled_but_not_counted_stored(caplog):
    settled: list[int] = []
    c = completer(settled)
    for i in (1, 2, 3):
        c.add(Outcome(i, ok=True))
    flush = c.take()
    c.stored(flush, [[{"id": 1}, {"id": 3}]])   # 2 was reclaimed while it ran here
    assert settled == [1, 2, 3]
    assert c.stored_ids == [1, 3]
    assert "task 2 was reclaimed" in caplog.text


def test_query_values_check_their_name_when_built():
    with pytest.raises(UnknownQuery):
        Query("tasks_clam", {})
    assert st.claim(worker_id=WORKER, queues=("a", "b"), limit=3).params == {
        "queues": ["a", "b"], "limit": 3, "worker_id": WORKER, "min_effective": None, "batch_below": 0, "relax": False}


def test_db_refuses_parameters_beside_a_query_that_carries_its_own(conn):
    with pytest.raises(TypeError, match="carries its own parameters"):
        db.fetch_all(conn, st.due_count(queues=["default"]), {"queues": ["other"]})
    assert db.fetch_one(conn, st.due_count(queues=["default"]))["due"] == 0


def test_the_outcome_fault_is_the_values_never_the_environments():
    import psycopg.errors as e
    assert is_outcome_fault(e.UntranslatableCharacter())       # 22P05
    assert is_outcome_fault(e.NotNullViolation())               # 23502
    assert is_outcome_fault(UnicodeEncodeError("utf-8", "x", 0, 1, "bad"))
    assert not is_outcome_fault(e.ReadOnlySqlTransaction())     # 25006
    assert not is_outcome_fault(e.InsufficientPrivilege())      # 42501
    assert not is_outcome_fault(RuntimeError("anything else"))


def _claimed(conn, n: int) -> list[int]:
    ids = [conn.execute("INSERT INTO angela_queue.tasks (kind) VALUES ('k') RETURNING id").fetchone()["id"]
           for _ in range(n)]
    rows = db.fetch_all(conn, st.claim(worker_id=WORKER, queues=["default"], limit=n))
    assert sorted(r["id"] for r in rows) == ids
    return ids


def _status(conn, tid: int) -> tuple[str, str | None]:
    row = conn.execute("SELECT status, last_error FROM angela_queue.tasks WHERE id = %s", (tid,)).fetchone()
    return row["status"], row["last_error"]


def test_one_by_one_a_refused_outcome_fails_its_task_and_the_others_are_stored(dsn, conn):
    before, bad, after = _claimed(conn, 3)
    settled: list[int] = []
    c = completer(settled)
    c.add(Outcome(before, ok=True, result_json='"fine"', finished_at=1.0))
    # A JSON document Postgres refuses to store: \u0000 in jsonb (22P05).
    c.add(Outcome(bad, ok=True, result_json='"nul \\u0000 here"', finished_at=1.0))
    c.add(Outcome(after, ok=True, result_json='"fine"', finished_at=1.0))

    async def store() -> None:
        aconn = await db.aconnect(dsn)
        try:
            await c.store_one_by_one(aconn)
        finally:
            await aconn.close()

    asyncio.run(store())
    assert _status(conn, before) == ("succeeded", None)
    assert _status(conn, after) == ("succeeded", None)
    status, error = _status(conn, bad)
    assert status == "failed" and error.startswith("the outcome could not be stored:"), error
    assert settled == [before, bad, after] and c.stored_ids == [before, bad, after]
    assert not c


def test_one_by_one_a_read_only_session_loses_nothing_and_raises(dsn, conn):
    first, second = _claimed(conn, 2)
    settled: list[int] = []
    c = completer(settled)
    c.add(Outcome(first, ok=True, finished_at=1.0))
    c.add(Outcome(second, ok=True, finished_at=1.0))

    async def store(read_only: bool) -> None:
        aconn = await db.aconnect(dsn)
        try:
            if read_only:
                await aconn.execute("SET default_transaction_read_only = on")
            await c.store_one_by_one(aconn)
        finally:
            await aconn.close()

    import psycopg.errors
    with pytest.raises(psycopg.errors.ReadOnlySqlTransaction):
        asyncio.run(store(read_only=True))
    assert settled == [] and c.reported() == {first, second}
    assert _status(conn, first)[0] == "running"
    asyncio.run(store(read_only=False))      # the database is writable again
    assert _status(conn, first)[0] == _status(conn, second)[0] == "succeeded"
    assert settled == [first, second]
