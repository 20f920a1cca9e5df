"""Behind a real PgBouncer: producers in transaction pooling, workers in
session pooling (LISTEN needs a session), and what prepared statements need.

PgBouncer before 1.21 (Debian 12 ships 1.18) does not carry prepared
statements across the server connections of a transaction pool: a client
there must not prepare (``Client(prepare=False)`` or ANGELA_QUEUE_PREPARE=off).
A session pool pins one server connection to the client, so workers there
prepare as usual.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import threading

import psycopg
import pytest

from angela_queue import AsyncClient, Client
from fix_pgbouncer import bouncer  # noqa: F401  (the fixture)
from fix_procs import APP_PRELUDE, RUNS_TABLE_SQL, WorkerProcess, query, scalar, wait_until

APP = APP_PRELUDE + """
from angela_queue import task

@task("note")
def note(n):
    record(n)
"""


def test_producers_through_transaction_pooling_enqueue_without_prepared_statements(bouncer, dsn):
    tx = bouncer.dsn("aq_tx")
    errors: list[BaseException] = []

    def produce(offset: int) -> None:
        try:
            with Client(tx, prepare=False, pool_size=2) as client:
                for i in range(40):
                    client.enqueue("note", {"n": offset + i}, priority=1 + i % 10)
                client.enqueue_many([{"kind": "note", "payload": {"n": offset + 100 + i}} for i in range(50)])
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=produce, args=(k * 1000,)) for k in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert errors == []
    assert scalar(dsn, "SELECT count(*) FROM angela_queue.tasks") == 4 * 90
    assert scalar(dsn, "SELECT count(DISTINCT payload->>'n') FROM angela_queue.tasks") == 4 * 90

    async def async_produce() -> int:
        async with AsyncClient(tx, prepare=False) as client:
            await asyncio.gather(*(client.enqueue("note", {"n": 9000 + i}) for i in range(20)))
            task = await client.enqueue("note", {"n": 9999}, delay=3600)
            assert (await client.cancel(task.id)).status == "cancelled"
            return len(await client.enqueue_many([{"kind": "note", "payload": {"n": 9100 + i}} for i in range(30)]))

    assert asyncio.run(async_produce()) == 30
    assert scalar(dsn, "SELECT count(*) FROM angela_queue.tasks") == 4 * 90 + 51


def test_the_environment_turns_preparing_off_for_the_cli(bouncer, dsn):
    env = {**os.environ, "ANGELA_QUEUE_PREPARE": "off"}
    env.pop("ANGELA_QUEUE_DSN", None)
    for n in range(5):
        done = subprocess.run([sys.executable, "-m", "angela_queue", "--dsn", bouncer.dsn("aq_tx_one"), "enqueue",
                               "note", "--payload", f'{{"n": {n}}}'], env=env, capture_output=True, text=True,
                              timeout=60)
        assert done.returncode == 0, done.stdout + done.stderr
    assert scalar(dsn, "SELECT count(*) FROM angela_queue.tasks") == 5


def test_a_bad_prepare_setting_is_refused_by_name(dsn):
    env = {**os.environ, "ANGELA_QUEUE_PREPARE": "sometimes"}
    done = subprocess.run([sys.executable, "-m", "angela_queue", "--dsn", dsn, "enqueue", "note"], env=env,
                          capture_output=True, text=True, timeout=60)
    assert done.returncode != 0
    assert "ANGELA_QUEUE_PREPARE must be on or off" in done.stderr
    assert "Traceback" not in done.stderr
    assert scalar(dsn, "SELECT count(*) FROM angela_queue.tasks") == 0


def test_prepared_statements_through_transaction_pooling_fail_with_the_remedy(bouncer, dsn):
    """Connections that prepare, on one server connection: the client's schema
    probe and its pool each prepare their first query under the same name, so
    the second is refused, and the error says what to set."""
    one = bouncer.dsn("aq_tx_one")
    with pytest.raises(psycopg.Error) as failed:
        with Client(one, prepare=True, pool_size=1) as first, Client(one, prepare=True, pool_size=1) as second:
            first.enqueue("note", {"n": 1})
            second.enqueue("note", {"n": 2})
    assert failed.value.sqlstate in ("26000", "42P05")
    assert any("ANGELA_QUEUE_PREPARE=off" in note for note in getattr(failed.value, "__notes__", []))


def test_a_worker_through_session_pooling_is_woken_and_runs_each_task_once(bouncer, dsn, app_dir):
    query(dsn, RUNS_TABLE_SQL)
    (app_dir / "pooled_app.py").write_text(APP)
    session = bouncer.dsn("aq_session")
    worker = WorkerProcess(session, app_dir, "pooled_app", ["--poll-interval", "120", "--heartbeat-interval", "0.5",
                                                            "--concurrency", "4"], env={"AQ_TEST_DSN": dsn})
    try:
        wait_until(lambda: scalar(dsn, "SELECT count(*) FROM pg_stat_activity WHERE application_name = "
                                       "'angela-queue-listen' AND datname = current_database()"),
                   message="the worker's listener, through the bouncer", details=worker.log)
        with Client(bouncer.dsn("aq_tx"), prepare=False) as client:
            first = client.enqueue("note", {"n": 0}, priority=10)
            # The poll is 120 s: only the NOTIFY, through the session pool, starts it this soon.
            wait_until(lambda: scalar(dsn, "SELECT status FROM angela_queue.tasks WHERE id = %s",
                                      (first.id,)) == "succeeded", timeout=30, message="the first task",
                       details=worker.log)
            client.enqueue_many([{"kind": "note", "payload": {"n": i}, "priority": 1 + i % 10}
                                 for i in range(1, 101)])
        wait_until(lambda: scalar(dsn, "SELECT count(*) FROM angela_queue.tasks WHERE status = 'succeeded'") == 101,
                   timeout=60, message="all 101 tasks", details=worker.log)
        assert query(dsn, "SELECT n, count(*) AS c FROM public.runs GROUP BY n HAVING count(*) <> 1") == []
        assert scalar(dsn, "SELECT count(DISTINCT n) FROM public.runs") == 101
        assert worker.proc.poll() is None
    finally:
        worker.stop()
