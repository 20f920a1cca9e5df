"""Enqueue inside the caller's own transaction (the outbox pattern).

``Client.enqueue(..., conn=...)`` takes the application's connection: a
psycopg connection (sync or async), a SQLAlchemy ``Connection`` or
``Session`` (sync or async, on the psycopg driver), or Django's
``django.db.connection``. The insert joins the transaction that connection
has open, so the task exists if and only if that transaction commits, and
workers are woken when it does (a NOTIFY is delivered at commit).

Each statement runs inside a savepoint: a refused insert (a full queue, bad
input) rolls back only itself, and the caller's transaction stays usable. A
full queue raises ``QueueFull`` at once: waiting for space would hold the
caller's transaction (and its locks) open.

Connection in autocommit mode, outside any transaction: each statement
commits on its own, as any statement on that connection would.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import AsyncIterator, Iterator
from typing import Any

import psycopg
from psycopg import pq

from . import db, schema
from .errors import AngelaQueueError
from .schema import SCHEMA_RECHECK_S
from .tasks import Flow, Operation, Query, arun_flow, run_flow


class TransactionAborted(AngelaQueueError):
    """The caller's transaction already failed: nothing can be added to it
    until it is rolled back."""


# --- Finding the psycopg connection behind what the caller passed ------------

def sync_connection(conn: Any) -> psycopg.Connection:
    """The psycopg connection behind a psycopg, SQLAlchemy or Django connection,
    with the caller's transaction begun where their library tracks one."""
    if isinstance(conn, psycopg.Connection):
        return conn
    if isinstance(conn, psycopg.AsyncConnection):
        raise TypeError("an async connection needs AsyncClient (await client.enqueue(..., conn=conn))")
    module = type(conn).__module__
    if module.startswith("sqlalchemy"):
        return _sqlalchemy_sync(conn)
    if module.startswith("django") and hasattr(conn, "ensure_connection"):
        return _django(conn)
    raise TypeError(f"conn= takes a psycopg connection, a SQLAlchemy Connection or Session, or Django's "
                    f"connection (got {type(conn).__name__})")


async def async_connection(conn: Any) -> psycopg.AsyncConnection:
    if isinstance(conn, psycopg.AsyncConnection):
        return conn
    if isinstance(conn, psycopg.Connection):
        raise TypeError("a sync connection needs Client, not AsyncClient")
    if type(conn).__module__.startswith("sqlalchemy"):
        return await _sqlalchemy_async(conn)
    raise TypeError(f"conn= takes a psycopg AsyncConnection, or a SQLAlchemy AsyncConnection or AsyncSession "
                    f"(got {type(conn).__name__})")


def _sqlalchemy_sync(conn: Any) -> psycopg.Connection:
    from sqlalchemy.engine import Connection
    from sqlalchemy.orm import Session
    if isinstance(conn, Session):
        conn = conn.connection()          # begins the session's transaction if none is open
    if not isinstance(conn, Connection):
        raise TypeError(f"conn= takes a SQLAlchemy Connection or Session (got {type(conn).__name__})")
    if not conn.in_transaction():
        # What SQLAlchemy's own autobegin does on a first execute: without it,
        # conn.commit() would see no transaction and the insert would be
        # rolled back when the connection goes back to its pool.
        conn.begin()
    return _psycopg_behind(conn.connection.driver_connection, sync=True)


async def _sqlalchemy_async(conn: Any) -> psycopg.AsyncConnection:
    from sqlalchemy.ext.asyncio import AsyncConnection, AsyncSession
    if isinstance(conn, AsyncSession):
        conn = await conn.connection()
    if not isinstance(conn, AsyncConnection):
        raise TypeError(f"conn= takes a SQLAlchemy AsyncConnection or AsyncSession (got {type(conn).__name__})")
    if not conn.in_transaction():
        await conn.begin()
    raw = await conn.get_raw_connection()
    return _psycopg_behind(raw.driver_connection, sync=False)


def _django(conn: Any) -> psycopg.Connection:
    if getattr(conn, "vendor", None) != "postgresql":
        raise TypeError(f"Django's connection must be PostgreSQL's (got {getattr(conn, 'vendor', '?')})")
    if getattr(conn, "needs_rollback", False):
        raise TransactionAborted("the Django transaction is marked for rollback (an error inside "
                                 "transaction.atomic()): nothing can be enqueued in it")
    conn.ensure_connection()
    return _psycopg_behind(conn.connection, sync=True)


def _psycopg_behind(driver: Any, *, sync: bool) -> Any:
    wanted = psycopg.Connection if sync else psycopg.AsyncConnection
    if not isinstance(driver, wanted):
        raise TypeError(f"the connection's driver is {type(driver).__module__}.{type(driver).__name__}; "
                        "angela-queue enqueues through psycopg 3 (SQLAlchemy: postgresql+psycopg://..., "
                        "Django: install psycopg)")
    return driver


# --- Running a flow inside the caller's transaction ---------------------------

_schema_checked_until: dict[tuple[Any, ...], float] = {}


def _database_key(conn: psycopg.Connection | psycopg.AsyncConnection) -> tuple[Any, ...]:
    info = conn.info
    return (info.host, info.port, info.dbname)


def _in_transaction(conn: psycopg.Connection | psycopg.AsyncConnection) -> bool:
    status = conn.info.transaction_status
    if status == pq.TransactionStatus.INERROR:
        raise TransactionAborted("the caller's transaction already failed: roll it back before enqueueing")
    # Idle but not autocommit: psycopg begins the caller's transaction with
    # our first statement, and it stays open for them to commit.
    return status == pq.TransactionStatus.INTRANS or not conn.autocommit


def drive_sync(conn: psycopg.Connection, flow: Flow) -> Any:
    """Run a flow on the caller's connection, one savepoint per statement."""
    key = _database_key(conn)
    if time.monotonic() >= _schema_checked_until.get(key, 0.0):
        with _guarded(conn):
            schema.check(conn, callers=True)
        _schema_checked_until[key] = time.monotonic() + SCHEMA_RECHECK_S

    def perform(op: Operation) -> Any:
        _only_queries(op)
        with _guarded(conn):
            return db.fetch_all_on_caller(conn, op.name, op.params)
    return run_flow(flow, perform)


async def drive_async(conn: psycopg.AsyncConnection, flow: Flow) -> Any:
    key = _database_key(conn)
    if time.monotonic() >= _schema_checked_until.get(key, 0.0):
        async with _aguarded(conn):
            await schema.acheck(conn, callers=True)
        _schema_checked_until[key] = time.monotonic() + SCHEMA_RECHECK_S

    async def perform(op: Operation) -> Any:
        _only_queries(op)
        async with _aguarded(conn):
            return await db.afetch_all_on_caller(conn, op.name, op.params)
    return await arun_flow(flow, perform)


def _only_queries(op: Operation) -> None:
    if not isinstance(op, Query):
        # Never reached: inside a transaction a full queue is not waited on.
        raise RuntimeError("a transactional enqueue cannot wait for space")


@contextlib.contextmanager
def _guarded(conn: psycopg.Connection) -> Iterator[None]:
    """A savepoint when the caller has a transaction open; nothing in autocommit."""
    if _in_transaction(conn):
        with db.savepoint(conn):
            yield
    else:
        yield


@contextlib.asynccontextmanager
async def _aguarded(conn: psycopg.AsyncConnection) -> AsyncIterator[None]:
    if _in_transaction(conn):
        async with db.asavepoint(conn):
            yield
    else:
        yield
