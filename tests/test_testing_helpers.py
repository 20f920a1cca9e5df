"""angela_queue.testing, the helpers shipped for applications' own test suites:
the plugin's migrated throwaway database, drain() and assert_enqueued()."""

from __future__ import annotations

import asyncio
import sys
import textwrap

import pytest

from angela_queue import registry
from angela_queue.testing import assert_enqueued, drain, enqueued

APP = """
from angela_queue import Snooze, current_task, task

@task("greet")
def greet(name):
    return f"hello {name}"

@task("fails_once", max_attempts=3)
def fails_once():
    if current_task().attempt == 1:
        raise RuntimeError("first time fails")
    return "ok"

@task("async_double")
async def async_double(x):
    return 2 * x

@task("chain")
def chain(n):
    if n:
        from angela_queue.testing import _dsn
        from angela_queue import enqueue_many
        import psycopg
        with psycopg.connect(_dsn(None)) as conn:
            enqueue_many([{"kind": "chain", "payload": {"n": n - 1}}], conn=conn)
            conn.commit()
    return n
"""


@pytest.fixture
def app(tmp_path, monkeypatch):
    (tmp_path / "drain_app.py").write_text(textwrap.dedent(APP))
    monkeypatch.syspath_prepend(str(tmp_path))
    registry.clear()
    yield "drain_app"
    registry.clear()
    sys.modules.pop("drain_app", None)


def test_the_fixture_gives_a_migrated_database_of_its_own(angela_queue_dsn, angela_queue_client):
    from angela_queue import migrations, schema
    assert migrations.current_revision(angela_queue_dsn) == schema.SCHEMA_REVISION
    assert angela_queue_client.enqueue("greet", {"name": "ada"}).id == 1     # nobody else's tasks here


def test_drain_runs_every_due_task_and_returns_the_outcomes(angela_queue_client, app):
    ids = [angela_queue_client.enqueue("greet", {"name": n}).id for n in ("ada", "bob")]
    later = angela_queue_client.enqueue("greet", {"name": "later"}, delay=3600)
    done = drain(app)
    assert [(t.id, t.status, t.result) for t in done] == [(ids[0], "succeeded", "hello ada"),
                                                          (ids[1], "succeeded", "hello bob")]
    assert angela_queue_client.get(later.id).status == "scheduled"     # not due: left alone
    assert drain(app) == []                                           # nothing left


def test_drain_runs_tasks_that_tasks_enqueue(angela_queue_client, app):
    angela_queue_client.enqueue("chain", {"n": 3})
    assert [t.result for t in drain(app)] == [3, 2, 1, 0]


def test_drain_leaves_a_retry_waiting_out_its_backoff(angela_queue_client, app):
    task = angela_queue_client.enqueue("fails_once")
    [record] = drain(app)
    assert record.id == task.id and record.status == "scheduled" and "first time fails" in record.last_error


def test_drain_works_inside_an_async_test(angela_queue_dsn, app):
    from angela_queue import AsyncClient

    async def scenario():
        async with AsyncClient(angela_queue_dsn) as client:
            task = await client.enqueue("async_double", {"x": 21})
            # A running event loop: drain must not need one of its own here.
            [record] = drain(app)
            return task.id, record

    tid, record = asyncio.run(scenario())
    assert (record.id, record.result) == (tid, 42)


def test_assert_enqueued_matches_kind_and_payload_items(angela_queue_client):
    angela_queue_client.enqueue("send_email", {"to": "ada@example.com", "subject": "hi", "n": 1})
    [found] = assert_enqueued("send_email", to="ada@example.com")
    assert found.payload["subject"] == "hi"
    assert assert_enqueued("send_email")
    with pytest.raises(AssertionError) as missing:
        assert_enqueued("send_email", to="bob@example.com")
    assert "no 'send_email' task with to='bob@example.com'" in str(missing.value)
    assert "ada@example.com" in str(missing.value)          # what was enqueued instead
    assert enqueued("nothing_like_it") == []


def test_drain_without_handlers_says_what_to_do(angela_queue_dsn):
    registry.clear()
    with pytest.raises(RuntimeError, match="no @task handlers"):
        drain()


def test_the_plugin_loads_in_another_projects_test_run(pytester, angela_queue_server):
    """A user's suite: the fixtures come from the installed entry point, nothing imported by hand."""
    pytester.makepyfile(test_user=textwrap.dedent("""
        from angela_queue import task
        from angela_queue.testing import assert_enqueued, drain

        @task("welcome")
        def welcome(to):
            return "sent to " + to

        def test_signup(angela_queue_client):
            angela_queue_client.enqueue("welcome", {"to": "ada@example.com"})
            assert_enqueued("welcome", to="ada@example.com")
            [done] = drain()
            assert done.result == "sent to ada@example.com"
    """))
    env = {"ANGELA_QUEUE_TEST_DSN": angela_queue_server.admin_dsn}
    for name, value in env.items():
        pytester._monkeypatch.setenv(name, value)
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider", "-q")
    result.assert_outcomes(passed=1)
