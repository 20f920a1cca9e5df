"""db.apipeline, the worker's one round trip per turn: each statement's rows
in order, one transaction for all, and the same errors whether the turn
holds one statement (sent plainly, no pipeline mode) or several.
"""

from __future__ import annotations

import asyncio
import uuid

import psycopg
import pytest

from angela_queue import db
from angela_queue import statements as st
from angela_queue.errors import QueueFull
from angela_queue.queries import Query
from angela_queue.tasks import TaskSpec


def enqueue(kind: str, **options) -> Query:
    return Query("tasks_enqueue", TaskSpec.build(kind, {"n": 1}, **options).params())


def count(conn: psycopg.Connection, kind: str) -> int:
    return conn.execute("SELECT count(*) AS n FROM angela_queue.tasks WHERE kind = %s", (kind,)).fetchone()["n"]


async def pipeline(dsn: str, statements: list[Query]) -> list[list[dict]]:
    async with await db.aconnect(dsn) as aconn:
        return await db.apipeline(aconn, statements)


@pytest.mark.parametrize("size", [1, 3])
def test_each_statement_gets_its_own_rows_in_order(dsn, conn, size):
    kinds = [f"round_trip_{i}" for i in range(size)]
    results = asyncio.run(pipeline(dsn, [enqueue(k) for k in kinds]))
    assert [[row["kind"] for row in rows] for rows in results] == [[k] for k in kinds]
    assert [count(conn, k) for k in kinds] == [1] * size


def test_statements_without_rows_give_an_empty_list(dsn):
    [counted] = asyncio.run(pipeline(dsn, [st.promote_due(queues=["default"])]))
    assert counted[0]["promoted"] == 0
    [released, promoted] = asyncio.run(pipeline(dsn, [st.release_many(worker_id=uuid.uuid4(), ids=[]),
                                                      st.promote_due(queues=["default"])]))
    assert released == [] and promoted[0]["promoted"] == 0


def test_one_refused_statement_rolls_back_the_whole_trip(dsn, conn):
    with pytest.raises(psycopg.errors.CheckViolation, match="priority must be between 1 and 10"):
        asyncio.run(pipeline(dsn, [enqueue("trip_canary"), Query("tasks_enqueue", {
            **TaskSpec.build("trip_bad", {}).params(), "priority": 11})]))
    assert count(conn, "trip_canary") == 0
    asyncio.run(pipeline(dsn, [enqueue("trip_canary")]))
    assert count(conn, "trip_canary") == 1


@pytest.mark.parametrize("size", [1, 2])
def test_a_full_queue_is_queue_full_alone_or_in_company(dsn, conn, size):
    conn.execute("INSERT INTO angela_queue.queues (name, max_size) VALUES ('trip_full', 1)")
    asyncio.run(pipeline(dsn, [enqueue("trip_first", queue="trip_full")]))
    trip = [enqueue("trip_other")] * (size - 1) + [enqueue("trip_over", queue="trip_full", priority=5)]
    with pytest.raises(QueueFull) as full:
        asyncio.run(pipeline(dsn, trip))
    assert full.value.queue == "trip_full"
    assert count(conn, "trip_over") == 0 and count(conn, "trip_other") == 0


def test_the_workers_hot_connection_runs_generic_plans_without_jit(dsn):
    """Only the hot connection: once tables are ANALYZEd, Postgres may plan the
    claim afresh at every execution (custom plans), which cost more than the
    claim itself; its generic plan is checked in test_hot_plans. Other
    connections keep the server's defaults (an inspection query with optional
    filters wants its custom plan)."""
    async def settings(hot_path: bool) -> tuple[str, str]:
        async with await db.aconnect(dsn, hot_path=hot_path) as aconn:
            mode = (await (await aconn.execute("SHOW plan_cache_mode")).fetchone())["plan_cache_mode"]
            jit = (await (await aconn.execute("SHOW jit")).fetchone())["jit"]
            return mode, jit
    assert asyncio.run(settings(True)) == ("force_generic_plan", "off")
    assert asyncio.run(settings(False))[0] == "auto"
