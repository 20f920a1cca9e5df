"""Enqueue inside the application's transaction (the outbox pattern): the task
exists if and only if the caller's transaction commits; a full queue raises
QueueFull at once and leaves the caller's transaction usable."""

from __future__ import annotations

import asyncio

import psycopg
import pytest
import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncSession, create_async_engine
from sqlalchemy.orm import Session

import angela_queue
from angela_queue import AsyncClient, QueueFull
from angela_queue.transactional import TransactionAborted
from fix_procs import APP_PRELUDE, RUNS_TABLE_SQL, query, scalar, wait_until


def tasks_of(dsn: str, kind: str) -> list[dict]:
    return query(dsn, "SELECT id, status FROM angela_queue.tasks WHERE kind = %s ORDER BY id", (kind,))


def sa_url(dsn: str, driver: str = "psycopg") -> str:
    info = psycopg.conninfo.conninfo_to_dict(dsn)
    password = f":{info['password']}" if info.get("password") else ""
    return (f"postgresql+{driver}://{info.get('user', 'postgres')}{password}@{info.get('host', '127.0.0.1')}:"
            f"{info.get('port', 5432)}/{info['dbname']}")


@pytest.fixture
def orders(dsn):
    query(dsn, "CREATE TABLE public.orders (id serial PRIMARY KEY, item text NOT NULL)")
    return dsn


# --- psycopg ------------------------------------------------------------------------

def test_a_rolled_back_transaction_leaves_no_task(orders, client):
    with psycopg.connect(orders) as app:                 # not autocommit: a transaction of the app's
        app.execute("INSERT INTO public.orders (item) VALUES ('book')")
        task = client.enqueue("ship", {"item": "book"}, conn=app)
        assert task.status == "queued"
        # Inside the transaction the task is there; outside, nobody sees it yet.
        assert app.execute("SELECT count(*) FROM angela_queue.tasks WHERE id = %s", (task.id,)).fetchone()[0] == 1
        assert tasks_of(orders, "ship") == []
        app.rollback()
    assert tasks_of(orders, "ship") == []
    assert scalar(orders, "SELECT count(*) FROM public.orders") == 0


def test_a_committed_transaction_stores_the_task_with_the_apps_rows(orders, client):
    with psycopg.connect(orders) as app:
        with app.transaction():
            app.execute("INSERT INTO public.orders (item) VALUES ('book')")
            task = client.enqueue("ship", {"item": "book"}, conn=app)
            many = client.enqueue_many([{"kind": "ship", "payload": {"n": i}} for i in range(3)], conn=app)
    assert [t["id"] for t in tasks_of(orders, "ship")] == [task.id] + [t.id for t in many]
    assert scalar(orders, "SELECT count(*) FROM public.orders") == 1


def test_module_level_enqueue_with_conn_needs_no_client(orders, monkeypatch):
    # No DSN anywhere: with conn= the module function must not look for one
    # (nor start the embedded server).
    for name in ("ANGELA_QUEUE_DSN", "DATABASE_URL"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setattr(angela_queue.client, "_default_client", None)
    with psycopg.connect(orders) as app:
        task = angela_queue.enqueue("ship", {"n": 1}, conn=app)
        app.commit()
    assert angela_queue.client._default_client is None
    assert [t["id"] for t in tasks_of(orders, "ship")] == [task.id]


def test_a_full_queue_raises_at_once_and_the_callers_transaction_goes_on(orders, client):
    query(orders, "INSERT INTO angela_queue.queues (name, max_size) VALUES ('tiny', 1)")
    client.enqueue("filler", queue="tiny")
    with psycopg.connect(orders) as app:
        app.execute("INSERT INTO public.orders (item) VALUES ('before')")
        with pytest.raises(QueueFull) as full:
            client.enqueue("ship", queue="tiny", priority=7, conn=app)
        assert full.value.queue == "tiny" and full.value.waited_s == 0
        # A low priority is dropped (kept as a row), as outside a transaction.
        dropped = client.enqueue("ship", queue="tiny", priority=2, conn=app)
        assert dropped.status == "dropped"
        # The caller's transaction was not aborted: it goes on and commits.
        app.execute("INSERT INTO public.orders (item) VALUES ('after')")
        app.commit()
    assert [r["item"] for r in query(orders, "SELECT item FROM public.orders ORDER BY id")] == ["before", "after"]
    assert [t["status"] for t in tasks_of(orders, "ship")] == ["dropped"]


def test_an_insert_the_database_refuses_leaves_the_callers_transaction_usable(orders, client):
    # A rule of the application's own, checked by the database alone.
    query(orders, "ALTER TABLE angela_queue.tasks ADD CONSTRAINT test_no_refused CHECK (kind <> 'refused')")
    with psycopg.connect(orders) as app:
        app.execute("INSERT INTO public.orders (item) VALUES ('kept')")
        with pytest.raises(psycopg.errors.CheckViolation):
            client.enqueue("refused", conn=app)
        assert app.info.transaction_status == psycopg.pq.TransactionStatus.INTRANS   # not aborted
        client.enqueue("ship", conn=app)
        app.commit()
    assert scalar(orders, "SELECT count(*) FROM public.orders") == 1
    assert [t["status"] for t in tasks_of(orders, "ship")] == ["queued"] and tasks_of(orders, "refused") == []


def test_an_aborted_transaction_is_refused_with_a_clear_error(orders, client):
    with psycopg.connect(orders) as app:
        with pytest.raises(psycopg.errors.DivisionByZero):
            app.execute("SELECT 1 / 0")
        with pytest.raises(TransactionAborted, match="roll it back"):
            client.enqueue("ship", conn=app)
        app.rollback()
    assert tasks_of(orders, "ship") == []


def test_an_autocommit_connection_commits_the_task_at_once(orders, client):
    with psycopg.connect(orders, autocommit=True) as app:
        task = client.enqueue("ship", conn=app)
        assert app.info.transaction_status == psycopg.pq.TransactionStatus.IDLE
    assert [t["id"] for t in tasks_of(orders, "ship")] == [task.id]


def test_the_callers_row_factory_and_prepare_settings_are_left_alone(orders, client):
    with psycopg.connect(orders, prepare_threshold=None) as app:      # e.g. behind PgBouncer
        for _ in range(10):
            client.enqueue("ship", conn=app)
        assert app.execute("SELECT count(*) FROM pg_prepared_statements").fetchone()[0] == 0
        assert isinstance(app.execute("SELECT 1").fetchone(), tuple)
        app.commit()
    assert len(tasks_of(orders, "ship")) == 10


def test_the_wrong_kind_of_connection_is_a_clear_type_error(orders, client):
    with pytest.raises(TypeError, match="conn= takes"):
        client.enqueue("ship", conn=object())

    async def scenario():
        async with await psycopg.AsyncConnection.connect(orders) as aconn:
            with pytest.raises(TypeError, match="AsyncClient"):
                client.enqueue("ship", conn=aconn)
    asyncio.run(scenario())


# --- SQLAlchemy -----------------------------------------------------------------------

def test_sqlalchemy_connection_commit_and_rollback(orders, client):
    engine = sa.create_engine(sa_url(orders))
    try:
        with engine.begin() as sa_conn:
            sa_conn.execute(sa.text("INSERT INTO public.orders (item) VALUES ('x')"))
            kept = client.enqueue("ship", {"n": 1}, conn=sa_conn)
        with engine.connect() as sa_conn:
            client.enqueue("ship", {"n": 2}, conn=sa_conn)
            sa_conn.rollback()
        with engine.connect() as sa_conn:
            # No transaction begun yet: the enqueue begins one, as SQLAlchemy's
            # autobegin would, so the caller's commit() commits it.
            late = client.enqueue("ship", {"n": 3}, conn=sa_conn)
            sa_conn.commit()
        with engine.connect() as sa_conn:
            client.enqueue("ship", {"n": 4}, conn=sa_conn)
            # closed without commit: rolled back by the pool
    finally:
        engine.dispose()
    assert [t["id"] for t in tasks_of(orders, "ship")] == [kept.id, late.id]


def test_sqlalchemy_session_commit_and_rollback(orders, client):
    engine = sa.create_engine(sa_url(orders))
    try:
        with Session(engine) as session:
            session.execute(sa.text("INSERT INTO public.orders (item) VALUES ('y')"))
            kept = client.enqueue("ship", conn=session)
            session.commit()
        with Session(engine) as session:
            client.enqueue("ship", conn=session)
            session.rollback()
        with Session(engine) as session, session.begin():
            nested = client.enqueue_many([{"kind": "ship"}, {"kind": "ship"}], conn=session)
    finally:
        engine.dispose()
    assert [t["id"] for t in tasks_of(orders, "ship")] == [kept.id] + [t.id for t in nested]


def test_a_non_psycopg_sqlalchemy_driver_is_named_in_the_error(orders, client):
    pytest.importorskip("psycopg2")
    engine = sa.create_engine(sa_url(orders, "psycopg2"))
    try:
        with engine.connect() as sa_conn, pytest.raises(TypeError, match="psycopg 3"):
            client.enqueue("ship", conn=sa_conn)
    finally:
        engine.dispose()


# --- async -----------------------------------------------------------------------------

def test_async_psycopg_and_sqlalchemy_async_session(orders):
    async def scenario():
        async with AsyncClient(orders) as client:
            async with await psycopg.AsyncConnection.connect(orders) as aconn:
                kept = await client.enqueue("ship", {"n": 1}, conn=aconn)
                await aconn.commit()
                await client.enqueue("ship", {"n": 2}, conn=aconn)
                await aconn.rollback()
            engine = create_async_engine(sa_url(orders))
            try:
                async with AsyncSession(engine) as session:
                    await session.execute(sa.text("INSERT INTO public.orders (item) VALUES ('z')"))
                    in_session = await client.enqueue_many([{"kind": "ship"}], conn=session)
                    await session.commit()
                async with AsyncSession(engine) as session:
                    await client.enqueue("ship", conn=session)
                    await session.rollback()
                async with engine.connect() as sa_conn:
                    on_conn = await client.enqueue("ship", conn=sa_conn)
                    await sa_conn.commit()
            finally:
                await engine.dispose()
            return [kept.id, in_session[0].id, on_conn.id]

    kept = asyncio.run(scenario())
    assert [t["id"] for t in tasks_of(orders, "ship")] == kept


def test_a_task_enqueued_in_a_transaction_runs_once_it_commits(orders, client, write_app, start_worker):
    query(orders, RUNS_TABLE_SQL)
    app = write_app(APP_PRELUDE + """
from angela_queue import task

@task("ship")
def ship(n):
    record(n)
""")
    worker = start_worker(app, "--poll-interval", "30", "--heartbeat-interval", "0.5")
    wait_until(lambda: scalar(orders, "SELECT count(*) FROM angela_queue.workers WHERE status = 'idle'") == 1,
               details=worker.log)
    with psycopg.connect(orders) as conn:
        task = client.enqueue("ship", {"n": 41}, conn=conn)
        conn.commit()
    # The poll is 30 s: the NOTIFY delivered at commit is what wakes the worker.
    wait_until(lambda: scalar(orders, "SELECT status FROM angela_queue.tasks WHERE id = %s", (task.id,)) == "succeeded",
               timeout=15, details=worker.log)
    assert scalar(orders, "SELECT count(*) FROM public.runs WHERE n = 41") == 1
