"""The schema revision this code is written for, and the check every process makes at start.

Workers, supervisors, the dashboard and the client refuse to run against a
database whose schema is missing, older or newer than ``SCHEMA_REVISION``:
an old process must never write to a newer schema, and a new one would fail
on the first statement the old schema lacks. The check costs two small
queries and no Alembic import (``migrations.py`` is the slow path that
upgrades; a test keeps the constant equal to Alembic's head).
"""

from __future__ import annotations

import psycopg

from . import db
from .errors import SchemaMismatch, SchemaMissing

# How often a long-running process (worker, supervisor, client) re-reads the
# revision: the most an old process can go on writing after a migration.
SCHEMA_RECHECK_S = 60.0

# The Alembic revision (alembic/versions/) this code reads and writes.
SCHEMA_REVISION = "0014"


def describe(found: str | None, dsn_text: str) -> SchemaMismatch | None:
    """The error for a database at revision ``found`` (None: no schema), or None if it fits."""
    if found == SCHEMA_REVISION:
        return None
    if found is None:
        return SchemaMissing(f"{dsn_text} has no angela_queue schema: run `angela-queue migrate`")
    if _newer(found):
        return SchemaMismatch(
            f"{dsn_text} has schema revision {found}, newer than this angela-queue (revision "
            f"{SCHEMA_REVISION}): upgrade angela-queue here; it will not write to a newer schema")
    return SchemaMismatch(
        f"{dsn_text} has schema revision {found}, older than this angela-queue (revision "
        f"{SCHEMA_REVISION}): run `angela-queue migrate`")


def _newer(found: str) -> bool:
    # Revisions are zero-padded numbers ("0002"); anything else is not ours to order.
    try:
        return int(found) > int(SCHEMA_REVISION)
    except ValueError:
        return True


def _dsn_text(conn: psycopg.Connection | psycopg.AsyncConnection) -> str:
    info = conn.info
    return f"the database {info.dbname!r} on {info.host or 'local socket'}:{info.port}"


def current(conn: psycopg.Connection, *, callers: bool = False) -> str | None:
    fetch = db.fetch_all_on_caller if callers else db.fetch_all
    presence = fetch(conn, "admin_schema_presence")[0]
    if not presence["has_schema"] or not presence["has_version_table"]:
        return None
    rows = fetch(conn, "admin_current_revision")
    return rows[0]["revision"] if rows else None


async def acurrent(conn: psycopg.AsyncConnection, *, callers: bool = False) -> str | None:
    fetch = db.afetch_all_on_caller if callers else db.afetch_all
    rows = await fetch(conn, "admin_schema_presence")
    if not rows[0]["has_schema"] or not rows[0]["has_version_table"]:
        return None
    rows = await fetch(conn, "admin_current_revision")
    return rows[0]["revision"] if rows else None


def check(conn: psycopg.Connection, *, callers: bool = False) -> None:
    """Raise SchemaMissing or SchemaMismatch unless the database is at SCHEMA_REVISION.

    ``callers``: the connection is the application's own (a transactional
    enqueue), read with cursors of our own, nothing prepared.
    """
    error = describe(current(conn, callers=callers), _dsn_text(conn))
    if error is not None:
        raise error


async def acheck(conn: psycopg.AsyncConnection, *, callers: bool = False) -> None:
    error = describe(await acurrent(conn, callers=callers), _dsn_text(conn))
    if error is not None:
        raise error
