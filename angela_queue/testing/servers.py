"""Throwaway databases for tests: a server we may create and drop databases
on, and a migrated template that each test's database is a copy of
(CREATE DATABASE ... TEMPLATE is a file copy: milliseconds, where migrating
takes seconds).

Where the server comes from, first match wins:
1. ANGELA_QUEUE_TEST_DSN (any database on a server where this login may
   CREATE DATABASE);
2. ANGELA_QUEUE_DSN, then DATABASE_URL (the same server the application
   uses: each test still gets databases of its own, never the one named);
3. any fallback DSN the caller names that answers;
4. a throwaway embedded Postgres (the ``angela-queue[embedded]`` extra),
   started for the run in a temporary directory and deleted afterwards.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
import uuid
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field

import psycopg
from psycopg import sql
from psycopg.conninfo import conninfo_to_dict, make_conninfo

ENV_DSNS = ("ANGELA_QUEUE_TEST_DSN", "ANGELA_QUEUE_DSN", "DATABASE_URL")


@dataclass
class ThrowawayServer:
    """A Postgres server to create (and drop) uniquely named databases on."""

    admin_dsn: str        # a maintenance database on the server
    source: str           # where it came from, for messages
    run_id: str = field(default_factory=lambda: uuid.uuid4().hex[:8])

    def dsn_for(self, dbname: str) -> str:
        return make_conninfo(self.admin_dsn, dbname=dbname)

    def admin(self) -> psycopg.Connection:
        return psycopg.connect(self.admin_dsn, autocommit=True)

    def new_name(self, label: str) -> str:
        return f"aq_test_{self.run_id}_{label}_{uuid.uuid4().hex[:6]}"

    def create_database(self, name: str, template: str | None = None) -> str:
        statement = sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name))
        if template:
            statement = sql.SQL("CREATE DATABASE {} TEMPLATE {}").format(sql.Identifier(name),
                                                                         sql.Identifier(template))
        with self.admin() as conn:
            conn.execute(statement)
        return self.dsn_for(name)

    def drop_database(self, name: str) -> None:
        with self.admin() as conn:
            conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))

    @contextlib.contextmanager
    def temporary_database(self, label: str, template: str | None = None) -> Iterator[str]:
        """A new database (a copy of ``template``, if given), dropped afterwards; yields its DSN."""
        name = self.new_name(label)
        url = self.create_database(name, template=template)
        try:
            yield url
        finally:
            self.drop_database(name)

    @contextlib.contextmanager
    def migrated_template(self) -> Iterator[str]:
        """A database at the schema's head, for temporary_database(template=...); yields its name."""
        from .. import migrations
        name = self.new_name("template")
        dsn = self.create_database(name)
        try:
            migrations.upgrade(dsn)
            # A template must have no connections when it is copied.
            yield name
        finally:
            self.drop_database(name)


def answers(dsn: str) -> bool:
    try:
        psycopg.connect(dsn).close()
        return True
    except psycopg.OperationalError:
        return False


def _maintenance_dsn(dsn: str) -> str | None:
    """A DSN on the same server, on a database that surely exists."""
    params = conninfo_to_dict(dsn)
    for dbname in ("postgres", "template1", params.get("dbname")):
        if dbname and answers(make_conninfo(dsn, dbname=dbname, connect_timeout="5")):
            return make_conninfo(dsn, dbname=dbname, connect_timeout="5")
    return None


@contextlib.contextmanager
def throwaway_server(fallbacks: Iterable[str] = (), *, embedded_only: bool = False) -> Iterator[ThrowawayServer]:
    """The server tests create their databases on (see the module's docstring)."""
    if not embedded_only:
        for name in ENV_DSNS:
            given = os.environ.get(name)
            if given:
                admin = _maintenance_dsn(given)
                if admin is None:
                    raise RuntimeError(f"{name} does not answer: {given!r}")
                yield ThrowawayServer(admin, name)
                return
        for candidate in fallbacks:
            if answers(candidate):
                yield ThrowawayServer(candidate, candidate)
                return
    from ..embedded import EmbeddedServer
    data_dir = tempfile.mkdtemp(prefix="aq-test-pg-")
    server = EmbeddedServer(data_dir)
    try:
        # The DSN carries the superuser's password, which the server demands:
        # make_conninfo keeps it in every DSN derived from this one.
        dsn = server.start()
        yield ThrowawayServer(make_conninfo(dsn, dbname="postgres"), f"embedded at {data_dir}")
    finally:
        server.stop()
        server.delete()
        shutil.rmtree(data_dir, ignore_errors=True)
