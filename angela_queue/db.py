"""Connections and query execution: the only module that sends SQL.

Callers pass a ``queries.Query`` (or name a query from sql/*.sql and pass
parameters); this module fetches
the text, executes it (prepared, so the hot path skips parsing and planning)
and returns rows as dicts. Sync and async share the query catalogue and the
error mapping; only the awaiting differs.
"""

from __future__ import annotations

import contextlib
import functools
import os
import re
from collections.abc import AsyncIterator, Iterator, Mapping, Sequence
from typing import Any

import psycopg
from psycopg import pq
from psycopg import sql as pgsql
from psycopg.rows import dict_row

from . import queries
from .queries import Query
from .errors import ConfigError, DatabaseUnavailable, QueueFull

Row = dict[str, Any]

# Statements are prepared server-side from their first use: the same dozen
# queries run millions of times, so parse/plan once per connection.
PREPARE_THRESHOLD = 0
# Hazard: PgBouncer before 1.21 in transaction pooling gives each transaction
# whichever server connection is free, and a statement prepared on one is
# unknown on the next. ANGELA_QUEUE_PREPARE=off makes this process's
# connections never prepare (a connection opened with prepare_threshold=None
# is never prepared, here or by psycopg).
PREPARE_ENV = "ANGELA_QUEUE_PREPARE"
# invalid_sql_statement_name ("prepared statement ... does not exist") and
# duplicate_prepared_statement: what a pooler that moves us between server
# connections looks like.
PREPARED_STATEMENT_LOST = ("26000", "42P05")
_ON, _OFF = ("on", "true", "yes", "1"), ("off", "false", "no", "0")


@functools.cache
def prepare_threshold() -> int | None:
    """This process's choice, read once: PREPARE_THRESHOLD, or None (never prepare)."""
    value = os.environ.get(PREPARE_ENV, "on").strip().lower()
    if value in _ON or not value:
        return PREPARE_THRESHOLD
    if value in _OFF:
        return None
    raise ConfigError(f"{PREPARE_ENV} must be on or off (got {value!r}); off is for PgBouncer's transaction "
                      f"pooling before 1.21")


def threshold_for(prepare: bool | None) -> int | None:
    """A connection's prepare_threshold: ``prepare`` if given, else the environment's."""
    if prepare is None:
        return prepare_threshold()
    return PREPARE_THRESHOLD if prepare else None


def _prepare(conn: psycopg.Connection | psycopg.AsyncConnection) -> bool:
    """Prepare each named query, unless this connection was opened never to."""
    return conn.prepare_threshold is not None


def connect(dsn: str, *, autocommit: bool = True, application_name: str = "angela-queue",
            connect_timeout: float = 10, prepare: bool | None = None) -> psycopg.Connection:
    try:
        conn = psycopg.connect(dsn, autocommit=autocommit, row_factory=dict_row,
                               prepare_threshold=threshold_for(prepare),
                               application_name=application_name,
                               connect_timeout=max(1, int(connect_timeout)))
    except psycopg.OperationalError as exc:
        raise DatabaseUnavailable(f"cannot connect to {describe_dsn(dsn)}: {first_line(exc)}") from exc
    return conn


async def aconnect(dsn: str, *, autocommit: bool = True, application_name: str = "angela-queue",
                   connect_timeout: float = 10, hot_path: bool = False,
                   prepare: bool | None = None) -> psycopg.AsyncConnection:
    """``hot_path``: the worker's own connection, which claims and completes.
    Two settings on it (SET, not startup options: PgBouncer refuses unknown
    startup parameters):

    - JIT off: the claim's cost estimate grows with a limited kind's backlog
      and can cross jit_above_cost, and compiling a claim costs tens of
      milliseconds where running it costs one.
    - Generic plans only (plan_cache_mode): once the tables are ANALYZEd,
      the generic claim's estimate (a count under each limited kind's room)
      can exceed its custom plans', and Postgres then plans the claim afresh
      at every execution: 1.7 ms of planning for a statement that runs in
      0.3, which doubled an idle worker's wake-to-start. Every statement
      run here is written to walk its index whatever its parameters, and
      tests/test_hot_plans.py checks the generic plans, the ones that run.
    """
    try:
        conn = await psycopg.AsyncConnection.connect(
            dsn, autocommit=autocommit, row_factory=dict_row, prepare_threshold=threshold_for(prepare),
            application_name=application_name, connect_timeout=max(1, int(connect_timeout)))
        if hot_path:
            await conn.execute(HOT_PATH_SETTINGS, prepare=False)   # two commands: never prepared
    except psycopg.OperationalError as exc:
        raise DatabaseUnavailable(f"cannot connect to {describe_dsn(dsn)}: {first_line(exc)}") from exc
    return conn


# What the worker's hot connection runs with (see aconnect), in one round trip.
HOT_PATH_SETTINGS = "SET jit = off; SET plan_cache_mode = force_generic_plan"


def close_quietly(conn: psycopg.Connection | None) -> None:
    """Close a connection that may be broken already (closing one can raise):
    it is gone either way."""
    if conn is None:
        return
    try:
        conn.close()
    except Exception:  # noqa: BLE001
        pass


# SQLSTATEs that end the session: the server is shutting down or restarting.
_SESSION_ENDING = ("57P01", "57P02", "57P03")


def is_connection_lost(exc: BaseException, conn: psycopg.Connection | psycopg.AsyncConnection | None = None) -> bool:
    """Whether an error means the connection is gone (reconnect), rather than a
    statement the server refused (back off and retry on the same connection).

    Hazard: psycopg raises many refusals as OperationalError too: disk full,
    out of memory (class 53), a statement or lock timeout (57014, 55P03), a
    program limit (54). Taken for a lost connection, they would be retried
    at once after a reconnect that succeeds: a hot loop. So: the connection
    class (08), a session-ending shutdown, an error with no SQLSTATE at all
    (the socket broke), or a connection that says it is broken.
    """
    if conn is not None and (conn.closed or conn.broken):
        return True
    if isinstance(exc, psycopg.InterfaceError):
        return True
    if not isinstance(exc, psycopg.Error):
        return False
    state = exc.sqlstate
    return state is None or state.startswith("08") or state in _SESSION_ENDING


def first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def describe_dsn(dsn: str) -> str:
    """The DSN without its password, for messages and logs."""
    try:
        info = psycopg.conninfo.conninfo_to_dict(dsn)
    except psycopg.ProgrammingError:
        return "<unparsable DSN>"
    info.pop("password", None)
    host = info.get("host", "local socket")
    port = info.get("port", "5432")
    return f"postgresql://{info.get('user', '')}@{host}:{port}/{info.get('dbname', '')}"


@contextlib.contextmanager
def translate_errors() -> Iterator[None]:
    """Turn the SQL errors we raise on purpose into their Python exceptions."""
    try:
        yield
    except psycopg.Error as exc:
        if getattr(exc, "sqlstate", None) == QueueFull.SQLSTATE:
            diag = exc.diag
            raise QueueFull(_queue_from_message(diag.message_primary or ""),
                            (diag.message_primary or str(exc)).removeprefix("angela_queue: ")) from exc
        if getattr(exc, "sqlstate", None) in PREPARED_STATEMENT_LOST:
            exc.add_note(f"angela-queue: a prepared statement was lost between transactions, as behind PgBouncer's "
                         f"transaction pooling before 1.21: set {PREPARE_ENV}=off (or Client(prepare=False))")
        raise


def _queue_from_message(message: str) -> str:
    """The queue named in "angela_queue: queue 'x' is full (max_size 3)".

    The trigger quotes the name with quote_literal, which doubles any quote
    inside it (and may prefix E for backslashes): undo that.
    """
    match = re.search(r"queue E?'((?:[^']|'')*)' is full \(max_size", message)
    if match is None:
        return ""
    name = match.group(1).replace("''", "'")
    return name.replace("\\\\", "\\") if message[match.start() + 6] == "E" else name


def _statement(q: Query | str, params: Mapping[str, Any] | None) -> tuple[str, Mapping[str, Any] | None]:
    """The text and parameters of a Query, or of a query name and its parameters."""
    if isinstance(q, Query):
        if params is not None:
            raise TypeError(f"{q.name}: a Query carries its own parameters")
        return q.text, q.params
    return queries.query(q), params


def _rows(cur: psycopg.Cursor | psycopg.AsyncCursor) -> bool:
    """Whether the statement returned rows. pgresult.status, not
    cur.description: the latter builds a Column object per column just to be
    tested for truth, on every statement (a tenth of an enqueue's client CPU)."""
    return cur.pgresult is not None and cur.pgresult.status == pq.ExecStatus.TUPLES_OK


def fetch_all(conn: psycopg.Connection, q: Query | str, params: Mapping[str, Any] | None = None) -> list[Row]:
    # dict_row on the cursor, whatever the connection's factory (Alembic
    # hands migrations a plain one).
    text, params = _statement(q, params)
    with translate_errors(), conn.cursor(row_factory=dict_row) as cur:
        cur.execute(text, params, prepare=_prepare(conn))
        return cur.fetchall() if _rows(cur) else []


def fetch_one(conn: psycopg.Connection, q: Query | str, params: Mapping[str, Any] | None = None) -> Row | None:
    rows = fetch_all(conn, q, params)
    return rows[0] if rows else None


# --- On the caller's own connection (angela_queue.transactional) ---------------
# A cursor of our own: the caller's cursor_factory (Django's client-side
# binding cursors) and row factory stay theirs; prepare is left to the
# connection's policy (behind PgBouncer it may not prepare at all).

_SAVEPOINT = "angela_queue_statement"


def fetch_all_on_caller(conn: psycopg.Connection, name: str, params: Mapping[str, Any] | None = None) -> list[Row]:
    with translate_errors(), psycopg.Cursor(conn, row_factory=dict_row) as cur:
        cur.execute(queries.query(name), params)
        return cur.fetchall() if _rows(cur) else []


async def afetch_all_on_caller(conn: psycopg.AsyncConnection, name: str,
                               params: Mapping[str, Any] | None = None) -> list[Row]:
    with translate_errors():
        async with psycopg.AsyncCursor(conn, row_factory=dict_row) as cur:
            await cur.execute(queries.query(name), params)
            return await cur.fetchall() if _rows(cur) else []


@contextlib.contextmanager
def savepoint(conn: psycopg.Connection) -> Iterator[None]:
    """A savepoint around the block: an error rolls back the block alone, and
    the caller's transaction goes on."""
    conn.execute(f"SAVEPOINT {_SAVEPOINT}", prepare=False)
    try:
        yield
    except BaseException:
        if not conn.closed and not conn.broken:
            conn.execute(f"ROLLBACK TO SAVEPOINT {_SAVEPOINT}", prepare=False)
            conn.execute(f"RELEASE SAVEPOINT {_SAVEPOINT}", prepare=False)
        raise
    conn.execute(f"RELEASE SAVEPOINT {_SAVEPOINT}", prepare=False)


@contextlib.asynccontextmanager
async def asavepoint(conn: psycopg.AsyncConnection) -> AsyncIterator[None]:
    await conn.execute(f"SAVEPOINT {_SAVEPOINT}", prepare=False)
    try:
        yield
    except BaseException:
        if not conn.closed and not conn.broken:
            await conn.execute(f"ROLLBACK TO SAVEPOINT {_SAVEPOINT}", prepare=False)
            await conn.execute(f"RELEASE SAVEPOINT {_SAVEPOINT}", prepare=False)
        raise
    await conn.execute(f"RELEASE SAVEPOINT {_SAVEPOINT}", prepare=False)


def execute_script(conn: psycopg.Connection, text: str | pgsql.Composable) -> None:
    """Run SQL text from a file under sql/ (DDL, grants), or DDL composed with
    quoted identifiers, as it is: no parameters, so no placeholder parsing of
    PL/pgSQL bodies. Never prepared: a prepared statement holds one command,
    a script many."""
    conn.execute(text, prepare=False)


async def afetch_all(conn: psycopg.AsyncConnection, q: Query | str,
                     params: Mapping[str, Any] | None = None) -> list[Row]:
    text, params = _statement(q, params)
    with translate_errors():
        async with conn.cursor() as cur:
            await cur.execute(text, params, prepare=_prepare(conn))
            return await cur.fetchall() if _rows(cur) else []


def listen(conn: psycopg.Connection, channel: str) -> None:
    conn.execute(pgsql.SQL("LISTEN {}").format(pgsql.Identifier(channel)))


async def alisten(conn: psycopg.AsyncConnection, channel: str) -> None:
    await conn.execute(pgsql.SQL("LISTEN {}").format(pgsql.Identifier(channel)))


def unlisten(conn: psycopg.Connection, channel: str) -> None:
    conn.execute(pgsql.SQL("UNLISTEN {}").format(pgsql.Identifier(channel)))


async def aunlisten(conn: psycopg.AsyncConnection, channel: str) -> None:
    await conn.execute(pgsql.SQL("UNLISTEN {}").format(pgsql.Identifier(channel)))


async def apipeline(conn: psycopg.AsyncConnection, statements: Sequence[Query]) -> list[list[Row]]:
    """Run several named queries in one round trip (pipeline mode).

    They run in order and, with no Sync between them, inside one implicit
    transaction: one commit (one WAL flush) for all of them. If one fails,
    the whole group rolls back and the error is raised.
    """
    if len(statements) == 1:
        # The idle worker's turn is one claim: pipeline mode would only add
        # its entry, exit and bookkeeping to the trip (0.1-0.2 ms measured).
        return [await afetch_all(conn, statements[0])]
    results: list[list[Row]] = []
    with translate_errors():
        async with conn.pipeline():
            cursors = []
            for statement in statements:
                cur = conn.cursor()
                await cur.execute(statement.text, statement.params, prepare=_prepare(conn))
                cursors.append(cur)
        for cur in cursors:
            results.append(await cur.fetchall() if _rows(cur) else [])
    return results
