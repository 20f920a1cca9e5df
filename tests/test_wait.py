"""Client.wait and AsyncClient.wait: the stored result, or TaskFailed carrying
the final error; woken by the completion NOTIFY (the backstop re-read is
pushed out of reach here, so only the notification can wake a waiter)."""

from __future__ import annotations

import asyncio
import threading

import pytest

from angela_queue import AsyncClient, Client, TaskFailed, TaskNotFound, waiting
from fix_procs import APP_PRELUDE, RUNS_TABLE_SQL, query, scalar, wait_until

FAST = ["--poll-interval", "0.2", "--heartbeat-interval", "0.5"]

APP = APP_PRELUDE + """
import time
from angela_queue import task

@task("double")
def double(x):
    return {"doubled": x * 2}

@task("explode", max_attempts=1)
def explode():
    raise RuntimeError("the flux capacitor broke")

@task("hold")
def hold(seconds):
    time.sleep(seconds)
    return "held"
"""


@pytest.fixture
def only_notify_wakes(monkeypatch):
    monkeypatch.setattr(waiting, "BACKSTOP_S", 3600.0)


@pytest.fixture
def worker(dsn, write_app, start_worker):
    query(dsn, RUNS_TABLE_SQL)
    started = start_worker(write_app(APP), "--concurrency", "4", *FAST)
    wait_until(lambda: scalar(dsn, "SELECT count(*) FROM angela_queue.kinds") == 3, details=started.log)
    return started


def test_wait_returns_the_result(client, worker, only_notify_wakes):
    task = client.enqueue("double", {"x": 21})
    assert client.wait(task.id, timeout=30) == {"doubled": 42}
    # Already finished: returns at once, from the row.
    assert client.wait(task.id, timeout=0) == {"doubled": 42}


def test_wait_raises_the_final_error(client, worker, only_notify_wakes):
    task = client.enqueue("explode")
    with pytest.raises(TaskFailed) as failed:
        client.wait(task.id, timeout=30)
    assert failed.value.task_id == task.id and failed.value.status == "failed"
    assert "the flux capacitor broke" in failed.value.error
    assert failed.value.record.attempts == 1
    assert str(failed.value).startswith(f"task {task.id} failed: RuntimeError: the flux capacitor broke")


def test_wait_on_a_cancelled_task_raises_task_failed(client, only_notify_wakes):
    task = client.enqueue("double", {"x": 1}, delay=3600)
    outcome: dict = {}

    def waiter():
        try:
            client.wait(task.id, timeout=30)
        except TaskFailed as exc:
            outcome["status"] = exc.status

    thread = threading.Thread(target=waiter)
    thread.start()
    client.cancel(task.id)        # cancel_task's NOTIFY wakes the waiter
    thread.join(30)
    assert outcome == {"status": "cancelled"}


def test_wait_times_out_with_the_status_it_saw(client):
    task = client.enqueue("double", {"x": 1}, delay=3600)
    with pytest.raises(TimeoutError, match=f"task {task.id} is still scheduled after 0.2s"):
        client.wait(task.id, timeout=0.2)


def test_wait_for_no_such_task(client):
    with pytest.raises(TaskNotFound):
        client.wait(999_999, timeout=1)


@pytest.mark.parametrize("timeout", [-1, float("nan"), "5", True])
def test_wait_refuses_a_bad_timeout(client, timeout):
    with pytest.raises(ValueError, match="timeout"):
        client.wait(1, timeout=timeout)


def test_many_waiters_are_woken_by_one_flush(client, worker, only_notify_wakes):
    tasks = client.enqueue_many([{"kind": "double", "payload": {"x": i}} for i in range(20)])
    results: dict[int, object] = {}
    threads = [threading.Thread(target=lambda t=t: results.__setitem__(t.id, client.wait(t.id, timeout=30)))
               for t in tasks]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(40)
    assert results == {t.id: {"doubled": 2 * i} for i, t in enumerate(tasks)}


def test_more_finished_than_one_notification_names_wakes_everyone(dsn, client, only_notify_wakes):
    """Over 300 ids in one statement: the payload is '*' and every waiter looks again."""
    ids = [t.id for t in client.enqueue_many([{"kind": "double", "payload": {"x": i}} for i in range(400)])]
    done = threading.Event()

    def waiter():
        client.wait(ids[-1], timeout=30)
        done.set()

    thread = threading.Thread(target=waiter)
    thread.start()
    wait_until(lambda: client._done._waiters, message="the waiter to register")
    query(dsn, "SELECT angela_queue.notify_done(array_agg(id)) FROM angela_queue.tasks")  # nothing final yet
    query(dsn, "UPDATE angela_queue.tasks SET status = 'succeeded', finished_at = now(), result = '1'")
    query(dsn, "SELECT angela_queue.notify_done(array_agg(id)) FROM angela_queue.tasks")
    thread.join(30)
    assert done.is_set()


def test_async_wait(dsn, worker, only_notify_wakes):
    async def scenario():
        async with AsyncClient(dsn) as client:
            ok = await client.enqueue("double", {"x": 5})
            bad = await client.enqueue("explode")
            results = await asyncio.gather(client.wait(ok.id, timeout=30), client.wait(bad.id, timeout=30),
                                           return_exceptions=True)
            slow = await client.enqueue("hold", {"seconds": 30})
            with pytest.raises(TimeoutError):
                await client.wait(slow.id, timeout=0.3)
            return results

    ok, bad = asyncio.run(scenario())
    assert ok == {"doubled": 10}
    assert isinstance(bad, TaskFailed) and "flux capacitor" in bad.error


def test_a_closed_client_stops_its_listener(dsn, worker):
    client = Client(dsn)
    task = client.enqueue("double", {"x": 2})
    assert client.wait(task.id, timeout=30) == {"doubled": 4}
    thread = client._done._thread
    assert thread is not None and thread.is_alive()
    client.close()
    assert not thread.is_alive()
