"""The Python producer API, sync and async, against real Postgres.

``Client`` is tested case by case. ``AsyncClient`` runs the same flows
(tasks.py) through another driver, so its tests walk the same cases in a few
``asyncio.run`` scenarios instead of a fresh database per case."""

from __future__ import annotations

import asyncio
import datetime as dt
import math
import re
import time
import uuid

import pytest

from angela_queue import AsyncClient, Client, DatabaseUnavailable, EnqueuedTask, TaskNotFound, TaskSpec, task

UTC = dt.timezone.utc




def row(conn, task_id: int) -> dict:
    return conn.execute("SELECT * FROM angela_queue.tasks WHERE id = %s", (task_id,)).fetchone()


def task_count(conn) -> int:
    return conn.execute("SELECT count(*) AS n FROM angela_queue.tasks").fetchone()["n"]


@pytest.fixture
def insert_statements(conn):
    """Counts INSERT statements on tasks (a statement-level trigger added to this test's database)."""
    conn.execute("""
        CREATE TABLE public.insert_statements (n integer NOT NULL);
        INSERT INTO public.insert_statements VALUES (0);
        CREATE FUNCTION public.count_insert_statement() RETURNS trigger LANGUAGE plpgsql AS $$
        BEGIN UPDATE public.insert_statements SET n = n + 1; RETURN NULL; END $$;
        CREATE TRIGGER zz_count_insert_statement AFTER INSERT ON angela_queue.tasks
            FOR EACH STATEMENT EXECUTE FUNCTION public.count_insert_statement();""")
    return lambda: conn.execute("SELECT n FROM public.insert_statements").fetchone()["n"]


# --- enqueue -------------------------------------------------------------------

def test_enqueue_stores_the_task_and_returns_it(client, conn):
    t = client.enqueue("send_email", {"to": "a@example.com", "text": "urgent?"}, priority=7, queue="mail")
    assert isinstance(t, EnqueuedTask)
    assert (t.kind, t.queue, t.priority, t.status, t.tier, t.boost, t.duplicate) == \
        ("send_email", "mail", 7, "queued", "high", 4, False)
    stored = row(conn, t.id)
    assert stored["payload"] == {"to": "a@example.com", "text": "urgent?"}
    assert stored["priority"] == 7 and stored["queue"] == "mail" and stored["status"] == "queued"
    assert stored["run_at"] == t.run_at


def test_enqueue_defaults(client, conn):
    t = client.enqueue("k")
    stored = row(conn, t.id)
    assert (stored["queue"], stored["priority"], stored["payload"], stored["max_attempts"], stored["timeout_s"]) == \
        ("default", 5, {}, 5, None)


def test_enqueue_options_are_stored(client, conn):
    t = client.enqueue("k", {"x": [1, {"y": None}]}, max_attempts=2, timeout=12.5)
    stored = row(conn, t.id)
    assert stored["max_attempts"] == 2 and stored["timeout_s"] == 12.5
    assert stored["payload"] == {"x": [1, {"y": None}]}


def test_run_at_in_the_future_is_scheduled(client, conn):
    when = dt.datetime.now(UTC).replace(microsecond=0) + dt.timedelta(hours=2)
    t = client.enqueue("k", run_at=when, priority=9)
    assert t.status == "scheduled"
    stored = row(conn, t.id)
    assert stored["run_at"] == when
    assert stored["deadline"] == when  # critical: 0 s window from run_at


def test_run_at_in_another_timezone_is_the_same_instant(client, conn):
    tz = dt.timezone(dt.timedelta(hours=-5))
    when = dt.datetime(2030, 1, 1, 7, 0, tzinfo=tz)
    t = client.enqueue("k", run_at=when)
    assert row(conn, t.id)["run_at"] == dt.datetime(2030, 1, 1, 12, 0, tzinfo=UTC)


@pytest.mark.parametrize("delay", [90, 90.0, dt.timedelta(seconds=90)])
def test_delay_is_scheduled_from_the_database_clock(client, conn, delay):
    t = client.enqueue("k", delay=delay)
    assert t.status == "scheduled"
    stored = row(conn, t.id)
    assert stored["run_at"] - stored["created_at"] == dt.timedelta(seconds=90)


def test_zero_delay_is_queued(client):
    assert client.enqueue("k", delay=0).status == "queued"


def test_enqueue_into_unknown_queue_creates_it_unbounded(client, conn):
    t = client.enqueue("k", queue="fresh_queue")
    assert t.status == "queued"
    q = conn.execute("SELECT max_size FROM angela_queue.queues WHERE name = 'fresh_queue'").fetchone()
    assert q == {"max_size": None}


# --- enqueue_many --------------------------------------------------------------

def test_enqueue_many_is_one_statement_with_results_in_input_order(client, conn, insert_statements):
    specs = [
        {"kind": "a", "payload": {"i": 0}, "priority": 3, "queue": "q1"},
        {"kind": "b", "payload": {"i": 1}, "priority": 10},
        TaskSpec(kind="c", payload={"i": 2}, priority=6, queue="q2"),
        {"kind": "d", "payload": {"i": 3, "text": "urgent"}, "priority": 1, "queue": "q1"},
        {"kind": "e", "payload": {"i": 4}, "priority": 8, "queue": "q2", "delay": 60},
    ]
    results = client.enqueue_many(specs)
    assert insert_statements() == 1
    assert [(r.kind, r.queue, r.priority) for r in results] == [
        ("a", "q1", 3), ("b", "default", 10), ("c", "q2", 6), ("d", "q1", 1), ("e", "q2", 8)]
    assert [r.status for r in results] == ["queued"] * 4 + ["scheduled"]
    assert results[3].boost == 3
    assert len({r.id for r in results}) == 5
    for i, r in enumerate(results):
        stored = row(conn, r.id)
        assert stored["payload"]["i"] == i
        assert (stored["kind"], stored["queue"], stored["priority"]) == (r.kind, r.queue, r.priority)


def test_enqueue_many_carries_every_option_and_awkward_text_exactly(client, conn):
    """The bulk path sends one JSON document: every option, and text that needs
    escaping in it, must arrive as given."""
    run_at = dt.datetime(2030, 1, 2, 3, 4, 5, 678901, tzinfo=dt.timezone.utc)
    results = client.enqueue_many([
        {"kind": 'quote"back\\slash', "payload": {"t": "é\n\t\"x\"", "n": [1, 2.5, None, True]},
         "queue": "q \u2603", "priority": 7, "run_at": run_at, "max_attempts": 9, "timeout": 1.5,
         "dedup_key": "k\"ey"},
        {"kind": "plain", "payload": {}, "delay": 0.25},
    ])
    first = row(conn, results[0].id)
    assert (first["kind"], first["queue"], first["priority"], first["run_at"], first["max_attempts"],
            first["timeout_s"], first["dedup_key"]) == ('quote"back\\slash', "q \u2603", 7, run_at, 9, 1.5, 'k"ey')
    assert first["payload"] == {"t": "é\n\t\"x\"", "n": [1, 2.5, None, True]}
    second = row(conn, results[1].id)
    assert second["status"] == "scheduled" and second["run_at"] > second["created_at"]


def test_enqueue_many_of_a_thousand_keeps_order(client, conn, insert_statements):
    results = client.enqueue_many([{"kind": "k", "payload": {"i": i}, "priority": 1 + i % 10} for i in range(1000)])
    assert insert_statements() == 1
    assert [r.priority for r in results] == [1 + i % 10 for i in range(1000)]
    by_id = {r["id"]: r["payload"]["i"] for r in conn.execute("SELECT id, payload FROM angela_queue.tasks")}
    assert [by_id[r.id] for r in results] == list(range(1000))


def test_enqueue_many_of_nothing_returns_nothing(client, conn):
    assert client.enqueue_many([]) == []
    assert task_count(conn) == 0


def test_enqueue_many_validates_every_item_before_storing_any(client, conn):
    with pytest.raises(ValueError, match="priority"):
        client.enqueue_many([{"kind": "a"}, {"kind": "b", "priority": 11}])
    assert task_count(conn) == 0


# --- deduplication -------------------------------------------------------------

def test_dedup_key_returns_the_unfinished_task(client, conn):
    first = client.enqueue("report", {"day": 1}, dedup_key="report-2024-01-01")
    second = client.enqueue("report", {"day": 2}, dedup_key="report-2024-01-01")
    assert not first.duplicate
    assert second.duplicate and second.id == first.id
    assert task_count(conn) == 1
    assert row(conn, first.id)["payload"] == {"day": 1}


def test_dedup_key_is_free_again_once_the_task_is_cancelled(client, conn):
    first = client.enqueue("report", dedup_key="k1")
    assert client.cancel(first.id).cancelled
    again = client.enqueue("report", dedup_key="k1")
    assert not again.duplicate and again.id != first.id
    assert {r["status"] for r in conn.execute("SELECT status FROM angela_queue.tasks")} == {"cancelled", "queued"}


def test_dedup_key_is_free_again_once_the_task_finished(client, conn):
    first = client.enqueue("report", dedup_key="k1")
    conn.execute("UPDATE angela_queue.tasks SET status = 'succeeded', finished_at = now() WHERE id = %s", (first.id,))
    again = client.enqueue("report", dedup_key="k1")
    assert not again.duplicate and again.id != first.id


def test_dedup_key_holds_while_running_or_scheduled(client, conn):
    running = client.enqueue("report", dedup_key="r")
    conn.execute("UPDATE angela_queue.tasks SET status = 'running' WHERE id = %s", (running.id,))
    assert client.enqueue("report", dedup_key="r").id == running.id
    later = client.enqueue("report", dedup_key="s", delay=3600)
    dup = client.enqueue("report", dedup_key="s")
    assert dup.duplicate and dup.id == later.id and dup.status == "scheduled"


def test_dedup_key_is_per_queue(client, conn):
    a = client.enqueue("report", dedup_key="same", queue="qa")
    b = client.enqueue("report", dedup_key="same", queue="qb")
    assert a.id != b.id and not b.duplicate


def test_dedup_with_a_queue_name_the_database_trims(client, conn):
    first = client.enqueue("k", queue=" mail ", dedup_key="x")
    assert first.queue == "mail"
    again = client.enqueue("k", queue=" mail ", dedup_key="x")
    assert again.duplicate and again.id == first.id
    [bulk] = client.enqueue_many([{"kind": "k", "queue": "mail ", "dedup_key": "x"}])
    assert bulk.duplicate and bulk.id == first.id
    assert task_count(conn) == 1


def test_enqueue_many_deduplicates_within_the_batch_and_against_stored(client, conn):
    stored = client.enqueue("k", {"n": 0}, dedup_key="old")
    results = client.enqueue_many([
        {"kind": "k", "payload": {"n": 1}, "dedup_key": "new"},
        {"kind": "k", "payload": {"n": 2}},
        {"kind": "k", "payload": {"n": 3}, "dedup_key": "new"},
        {"kind": "k", "payload": {"n": 4}, "dedup_key": "old"},
        {"kind": "k", "payload": {"n": 5}, "dedup_key": "new", "queue": "other"},
    ])
    assert [r.duplicate for r in results] == [False, False, True, True, False]
    assert results[2].id == results[0].id
    assert results[3].id == stored.id
    assert results[4].id != results[0].id
    assert task_count(conn) == 4
    assert row(conn, results[0].id)["payload"] == {"n": 1}


# --- cancel --------------------------------------------------------------------

def test_cancel_a_queued_task(client, conn):
    t = client.enqueue("k")
    result = client.cancel(t.id)
    assert result.cancelled and result.status == "cancelled" and result.id == t.id
    stored = row(conn, t.id)
    assert stored["status"] == "cancelled" and stored["finished_at"] is not None


def test_cancel_a_scheduled_task(client, conn):
    t = client.enqueue("k", delay=600)
    assert client.cancel(t.id).cancelled
    assert row(conn, t.id)["status"] == "cancelled"


def test_cancel_of_a_running_task_asks_it_to_stop(client, conn):
    t = client.enqueue("k")
    worker = uuid.uuid4()
    conn.execute("UPDATE angela_queue.tasks SET status = 'running', worker_id = %s, started_at = now() "
                 "WHERE id = %s", (worker, t.id))
    result = client.cancel(t.id)
    assert not result.cancelled and result.requested and result.status == "running"
    after = row(conn, t.id)
    assert after["status"] == "running" and after["cancel_requested_at"] is not None
    again = client.cancel(t.id)   # asking twice changes nothing more
    assert again.requested and row(conn, t.id) == after


def test_cancel_is_idempotent_and_leaves_a_cancelled_row_alone(client, conn):
    t = client.enqueue("k")
    client.cancel(t.id)
    before = row(conn, t.id)
    again = client.cancel(t.id)
    assert again.cancelled and again.status == "cancelled"
    assert row(conn, t.id) == before


def test_cancel_does_not_revive_or_touch_a_finished_task(client, conn):
    t = client.enqueue("k")
    conn.execute("UPDATE angela_queue.tasks SET status = 'succeeded', finished_at = now() WHERE id = %s", (t.id,))
    before = row(conn, t.id)
    result = client.cancel(t.id)
    assert not result.cancelled and result.status == "succeeded"
    assert row(conn, t.id) == before


def test_cancel_unknown_id_raises_task_not_found(client):
    with pytest.raises(TaskNotFound, match="123456789"):
        client.cancel(123456789)


def test_get_returns_the_row_or_raises(client, conn):
    t = client.enqueue("k", {"a": 1})
    assert client.get(t.id)["payload"] == {"a": 1}
    with pytest.raises(TaskNotFound):
        client.get(987654321)


# --- validation ----------------------------------------------------------------

BAD_OPTIONS = [
    ({"priority": 0}, "priority must be an integer between 1 and 10"),
    ({"priority": 11}, "priority must be an integer between 1 and 10"),
    ({"priority": "5"}, "priority must be an integer between 1 and 10"),
    ({"priority": 5.5}, "priority must be an integer between 1 and 10"),
    ({"priority": True}, "priority must be an integer between 1 and 10"),
    ({"run_at": dt.datetime(2030, 1, 1)}, "run_at must be timezone-aware"),
    ({"run_at": "2030-01-01T00:00:00Z"}, "run_at must be a datetime"),
    ({"run_at": dt.datetime(2030, 1, 1, tzinfo=UTC), "delay": 5}, "run_at or delay, not both"),
    ({"delay": -1}, "delay must not be negative"),
    ({"max_attempts": 0}, "max_attempts must be an integer between 1 and 1000000"),
    ({"timeout": 0}, "timeout must be positive"),
    ({"queue": ""}, "queue must be a non-empty string"),
]
_CIRCULAR: dict = {"n": 1}
_CIRCULAR["self"] = [_CIRCULAR]
BAD_PAYLOADS = [
    ([1, 2], "payload must be a JSON object"),
    ("text", "payload must be a JSON object"),
    (42, "payload must be a JSON object"),
    ({"when": dt.datetime(2024, 1, 1)}, "payload is not JSON-serialisable"),
    ({"obj": object()}, "payload is not JSON-serialisable"),
    ({"s": {1, 2}}, "payload is not JSON-serialisable"),
    ({"x": math.nan}, "payload is not JSON-serialisable"),  # Postgres jsonb has no NaN
    ({"x": [math.inf]}, "payload is not JSON-serialisable"),
    (_CIRCULAR, "Circular reference detected"),   # a clean error, not a recursion in C
]
BAD_KINDS = ["", "   ", None, 5]


def expect_value_error(call, words: str, label: str) -> None:
    try:
        call()
    except ValueError as exc:
        assert words in str(exc), f"{label}: {str(exc)!r} does not say {words!r}"
    else:
        raise AssertionError(f"{label}: no ValueError")


def test_a_payload_that_contains_itself_fails_cleanly_on_a_small_stack_and_a_raised_limit():
    """Where a C stack runs out before Python's recursion limit (a thread's
    small stack, a program that raised the limit), a circular payload must
    still be a ValueError, not a crash: run in a child, whose death would show."""
    import subprocess
    import sys
    child = """
import sys, threading
from angela_queue.tasks import TaskSpec
sys.setrecursionlimit(100000)
threading.stack_size(256 * 1024)
loop = {"n": 1}
loop["self"] = [loop]
said = []
def build():
    try:
        TaskSpec("k", loop)
    except ValueError as exc:
        said.append(str(exc))
t = threading.Thread(target=build)
t.start()
t.join()
print(said)
"""
    done = subprocess.run([sys.executable, "-c", child], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, (done.returncode, done.stderr[-2000:])
    assert "Circular reference detected" in done.stdout, done.stdout


# Validation runs before any database work, so every case shares one
# database (a fresh one per case would only cost time).
def test_bad_arguments_raise_clear_value_errors_and_store_nothing(client, conn):
    for options, words in BAD_OPTIONS:
        expect_value_error(lambda: client.enqueue("k", {}, **options), words, f"options {options!r}")
        expect_value_error(lambda: client.enqueue_many([{"kind": "k", **options}]), words, f"bulk {options!r}")
    for payload, words in BAD_PAYLOADS:
        expect_value_error(lambda: client.enqueue("k", payload), words, f"payload {payload!r}")
        expect_value_error(lambda: client.enqueue_many([{"kind": "k", "payload": payload}]), words,
                           f"bulk payload {payload!r}")
    for kind in BAD_KINDS:
        expect_value_error(lambda: client.enqueue(kind), "a task needs a kind", f"kind {kind!r}")
    assert task_count(conn) == 0


def test_a_good_call_after_bad_ones_still_works(client, conn):
    with pytest.raises(ValueError):
        client.enqueue("k", priority=0)
    assert client.enqueue("k", {"ok": True}).status == "queued"
    assert task_count(conn) == 1


def test_unreachable_database_raises_database_unavailable_at_once():
    dsn = "postgresql://postgres@127.0.0.1:1/x"
    started = time.monotonic()
    # Opening the client is where it fails, at once (psycopg_pool's convention).
    with pytest.raises(DatabaseUnavailable, match="cannot connect to .*127.0.0.1:1.*refused"):
        with Client(dsn):
            pass
    client = Client(dsn)   # not opened: the first call opens it, and fails the same way
    with pytest.raises(DatabaseUnavailable, match="cannot connect to .*127.0.0.1:1.*refused"):
        client.enqueue("k")

    async def main():
        with pytest.raises(DatabaseUnavailable, match="cannot connect to .*127.0.0.1:1.*refused"):
            async with AsyncClient(dsn):
                pass

    asyncio.run(main())
    # Not the pool's 10 s start-up timeout.
    assert time.monotonic() - started < 8


# --- registered defaults ---------------------------------------------------------

def test_registered_task_defaults_apply_when_enqueuing_by_kind(client, conn, clean_registry):
    @task("send_report", priority=8, queue="reports", max_attempts=2, timeout=30)
    def send_report(day: str) -> None:
        pass

    t = client.enqueue("send_report", {"day": "mon"})
    stored = row(conn, t.id)
    assert (stored["priority"], stored["queue"], stored["max_attempts"], stored["timeout_s"]) == (8, "reports", 2, 30)

    # Explicit options win over the registration.
    t2 = client.enqueue("send_report", {"day": "tue"}, priority=3, queue="other", max_attempts=4, timeout=1)
    stored2 = row(conn, t2.id)
    assert (stored2["priority"], stored2["queue"], stored2["max_attempts"], stored2["timeout_s"]) == (3, "other", 4, 1)

    # The decorated object itself can be enqueued, and bulk items use the defaults too.
    t3 = client.enqueue(send_report, {"day": "wed"})
    [t4] = client.enqueue_many([{"kind": "send_report", "payload": {"day": "thu"}}])
    for t_ in (t3, t4):
        assert (t_.kind, t_.priority, t_.queue) == ("send_report", 8, "reports")


def test_unregistered_kind_uses_global_defaults(client, conn, clean_registry):
    t = client.enqueue("nobody_handles_this")
    assert (t.priority, t.queue) == (5, "default")


# --- AsyncClient -------------------------------------------------------------------

def test_async_enqueue_run_at_delay_and_bulk(dsn, conn, insert_statements):
    when = dt.datetime.now(UTC).replace(microsecond=0) + dt.timedelta(hours=1)

    async def main():
        async with AsyncClient(dsn) as client:
            one = await client.enqueue("send", {"text": "urgent?"}, priority=7, queue="mail")
            later = await client.enqueue("send", run_at=when)
            delayed = await client.enqueue("send", delay=dt.timedelta(seconds=30))
            statements_before_bulk = insert_statements()
            bulk = await client.enqueue_many([
                {"kind": "a", "payload": {"i": 0}, "priority": 2, "queue": "q1"},
                {"kind": "b", "payload": {"i": 1}, "priority": 9},
                TaskSpec(kind="c", payload={"i": 2}, priority=6, queue="q2"),
            ])
            assert insert_statements() == statements_before_bulk + 1
            fetched = await client.get(one.id)
            return one, later, delayed, bulk, fetched

    one, later, delayed, bulk, fetched = asyncio.run(main())
    assert (one.kind, one.queue, one.priority, one.status, one.tier, one.boost) == \
        ("send", "mail", 7, "queued", "high", 4)
    assert fetched["payload"] == {"text": "urgent?"}
    assert later.status == "scheduled" and row(conn, later.id)["run_at"] == when
    assert delayed.status == "scheduled"
    stored = row(conn, delayed.id)
    assert stored["run_at"] - stored["created_at"] == dt.timedelta(seconds=30)
    assert [(t.kind, t.queue, t.priority) for t in bulk] == [("a", "q1", 2), ("b", "default", 9), ("c", "q2", 6)]
    assert [row(conn, t.id)["payload"]["i"] for t in bulk] == [0, 1, 2]


def test_async_dedup_and_cancel(dsn, conn):
    async def main():
        async with AsyncClient(dsn) as client:
            first = await client.enqueue("report", {"n": 1}, dedup_key="d")
            dup = await client.enqueue("report", {"n": 2}, dedup_key="d")
            many = await client.enqueue_many([{"kind": "report", "dedup_key": "d"},
                                              {"kind": "report", "dedup_key": "e"},
                                              {"kind": "report", "dedup_key": "e"}])
            cancelled = await client.cancel(first.id)
            fresh = await client.enqueue("report", dedup_key="d")
            conn.execute("UPDATE angela_queue.tasks SET status = 'running' WHERE id = %s", (fresh.id,))
            not_cancelled = await client.cancel(fresh.id)
            with pytest.raises(TaskNotFound):
                await client.cancel(10**9)
            return first, dup, many, cancelled, fresh, not_cancelled

    first, dup, many, cancelled, fresh, not_cancelled = asyncio.run(main())
    assert dup.duplicate and dup.id == first.id
    assert [t.duplicate for t in many] == [True, False, True]
    assert many[0].id == first.id and many[2].id == many[1].id
    assert cancelled.cancelled and row(conn, first.id)["status"] == "cancelled"
    assert not fresh.duplicate and fresh.id != first.id
    assert not not_cancelled.cancelled and not_cancelled.status == "running"
    assert row(conn, fresh.id)["status"] == "running"


def test_async_validation_errors(dsn, conn):
    async def main():
        async with AsyncClient(dsn) as client:
            for options, words in BAD_OPTIONS:
                with pytest.raises(ValueError, match=re.escape(words)):
                    await client.enqueue("k", **options)
            for payload, words in BAD_PAYLOADS:
                with pytest.raises(ValueError, match=re.escape(words)):
                    await client.enqueue("k", payload)
                with pytest.raises(ValueError, match=re.escape(words)):
                    await client.enqueue_many([{"kind": "k", "payload": payload}])

    asyncio.run(main())
    assert task_count(conn) == 0


def test_async_registered_defaults(dsn, conn, clean_registry):
    @task("async_report", priority=9, queue="reports", max_attempts=3)
    def async_report() -> None:
        pass

    async def main():
        async with AsyncClient(dsn) as client:
            return await client.enqueue("async_report")

    t = asyncio.run(main())
    stored = row(conn, t.id)
    assert (stored["priority"], stored["queue"], stored["max_attempts"]) == (9, "reports", 3)


@pytest.mark.parametrize("options, message", [
    ({"max_attempts": "5"}, "max_attempts must be an integer between 1 and 1000000"),
    ({"delay": "5"}, "delay must be a finite number"),
    ({"timeout": float("nan")}, "timeout must be a finite number"),
    ({"delay": float("inf")}, "delay must be a finite number"),
])
def test_wrongly_typed_options_are_value_errors_and_store_nothing(client, conn, options, message):
    with pytest.raises(ValueError, match=message):
        client.enqueue("k", **options)
    assert conn.execute("SELECT count(*) AS n FROM angela_queue.tasks").fetchone()["n"] == 0
