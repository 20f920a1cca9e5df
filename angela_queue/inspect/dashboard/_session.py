"""One database session for the requests that the collector's snapshot does
not answer: the task list, a task page, the history, the actions.

Each request takes the session's lock, so however many tabs are open the
database sees one connection per Session (the dashboard keeps two: one
read only, one for the actions). A connection found dead is replaced.

Hazard: only a read is retried on a fresh connection. An action whose
connection broke may have committed before the break; it is reported as
unavailable, never sent twice.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Mapping
from typing import Any, TypeVar

import psycopg

from ... import db

T = TypeVar("T")

CONNECT_TIMEOUT_S = 3.0


class Session:
    def __init__(self, dsn: str, *, application_name: str, setup: str, setup_params: Mapping[str, Any],
                 read_only: bool):
        self.dsn = dsn
        self.application_name = application_name
        self.setup = setup
        self.setup_params = dict(setup_params)
        self.read_only = read_only
        self._lock = threading.Lock()
        self._conn: psycopg.Connection | None = None

    def run(self, work: Callable[[psycopg.Connection], T]) -> T:
        """``work(conn)`` in one transaction; raises what it raises."""
        with self._lock:
            for attempt in (1, 2):
                reused = self._conn is not None
                try:
                    conn = self._connect()
                    with conn.transaction():
                        return work(conn)
                except psycopg.Error as exc:
                    lost = db.is_connection_lost(exc, self._conn)
                    if lost:
                        self._close()
                    if lost and reused and attempt == 1 and self.read_only:
                        continue
                    raise
            raise AssertionError("unreachable")  # pragma: no cover

    def _connect(self) -> psycopg.Connection:
        if self._conn is None or self._conn.closed:
            conn = db.connect(self.dsn, application_name=self.application_name, connect_timeout=CONNECT_TIMEOUT_S)
            try:
                db.fetch_all(conn, self.setup, self.setup_params)
                if self.read_only:
                    conn.read_only = True
            except BaseException:
                conn.close()
                raise
            self._conn = conn
        return self._conn

    def _close(self) -> None:
        conn, self._conn = self._conn, None
        db.close_quietly(conn)

    def close(self) -> None:
        with self._lock:
            self._close()
