"""The worker's heartbeat: a thread with its own connection.

Beating from a thread means a handler that blocks the event loop cannot
silence the heartbeat; it can only stall progress, which is what ``stuck``
measures. The same thread watches what could end the worker from outside:

* its row marked ``stuck`` or ``dead`` by a supervisor or the leader (the
  guarded heartbeat returns no row): stop at once, its tasks are gone;
* its supervisor gone (the parent pid changed): stop;
* the schema moved to another revision under it (someone migrated): stop,
  because old code must not write to a newer schema;
* for a standalone worker (no supervisor), the maintenance lease: while no
  supervisor is alive, standalone workers take the lease among themselves,
  and the one that holds it reclaims the tasks of dead workers, promotes
  and prunes. A SIGKILLed standalone worker's tasks are thus recovered by
  its peers. When supervisors run, they lead: their retention and settings
  are the deployment's, not those of an ad-hoc worker.
"""

from __future__ import annotations

import datetime as dt
import logging
import os
import threading
import time
import uuid
from collections.abc import Callable
from typing import Any

import psycopg

from .. import db, schema
from ..schema import SCHEMA_RECHECK_S
from ..backoff import Backoff
from ..config import Settings
from ..errors import SchemaMismatch
from ..maintenance import Lease, Maintenance
from ..maintenance.health import DbHealth

log = logging.getLogger("angela_queue.worker")



class Heartbeat:
    def __init__(self, settings: Settings, worker_id: uuid.UUID, *, supervisor_pid: int | None,
                 snapshot: Callable[[], dict[str, Any]], stop: Callable[[bool, str], None],
                 lead: bool):
        """``snapshot()`` gives the row's fields (status, current_tasks, counters);
        ``stop(fast, why)`` asks the worker to stop (it is called on this thread);
        ``lead``: compete for the maintenance lease (standalone workers)."""
        self.settings = settings
        self.worker_id = worker_id
        self.supervisor_pid = supervisor_pid
        self.snapshot = snapshot
        self.stop = stop
        self.lease = Lease(worker_id, settings.lease_s) if lead else None
        self.maintenance = Maintenance(retention_s=settings.retention_s,
                                       retention_failed_s=settings.failed_retention_s,
                                       dead_after_s=settings.dead_after_s) if lead else None
        self.health = DbHealth(settings.heartbeat_interval_s, settings.dead_after_s)
        self.backoff = Backoff("the heartbeat", log, level=logging.WARNING)
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._run, name="aq-heartbeat", daemon=True)
        self._conn: psycopg.Connection | None = None
        self._given_up = False
        self._next_schema_check = time.monotonic() + SCHEMA_RECHECK_S

    def start(self) -> None:
        self._thread.start()

    def close(self) -> None:
        """Stop beating; a held lease is handed on so a peer leads at once."""
        self._done.set()
        self._thread.join(timeout=10)

    def _run(self) -> None:
        wait = self.settings.heartbeat_interval_s
        while not self._done.wait(wait):
            wait = self.settings.heartbeat_interval_s
            if self.supervisor_pid is not None and os.getppid() != self.supervisor_pid:
                log.error("supervisor %d is gone; stopping", self.supervisor_pid)
                self.stop(False, "supervisor gone")
            try:
                self._beat()
                self.backoff.succeeded()
            except Exception as exc:  # noqa: BLE001 - the next beat tries again
                wait = min(wait, self.backoff.failed(db.first_line(exc)))
                self._drop()
        self._resign()
        self._drop()

    def _connection(self) -> psycopg.Connection:
        if self._conn is None or self._conn.closed:
            self._conn = self.health.watch(db.connect(
                self.settings.dsn or "", application_name=f"angela-queue-heartbeat-{str(self.worker_id)[:8]}"))
            self._next_schema_check = 0.0   # a new session: check at once (a migration may be why)
        return self._conn

    def _beat(self) -> None:
        conn = self._connection()
        snap = self.snapshot()
        if snap.get("last_active") is not None:
            snap["last_active"] = dt.datetime.fromtimestamp(snap["last_active"], dt.timezone.utc)
        rows = db.fetch_all(conn, "workers_heartbeat", {"id": self.worker_id, **snap})
        if not rows and not self._given_up:
            self._given_up = True
            log.error("worker %s was marked stuck or dead; stopping", str(self.worker_id)[:8])
            self.stop(True, "marked stuck or dead")
        if time.monotonic() >= self._next_schema_check:
            self._next_schema_check = time.monotonic() + SCHEMA_RECHECK_S
            try:
                schema.check(conn)
            except SchemaMismatch as exc:
                log.error("%s; stopping", exc)
                self.stop(False, "schema revision changed")
        if self.lease is not None and self.maintenance is not None and not self._given_up:
            self._lead(conn)

    def _lead(self, conn: psycopg.Connection) -> None:
        supervisors = db.fetch_one(conn, "supervisors_live_count", {"dead_after_s": self.settings.dead_after_s})
        if supervisors and supervisors["live"]:
            if self.lease.held:
                log.info("worker %s hands the maintenance lease to the live supervisors", str(self.worker_id)[:8])
                self.lease.resign(conn)
            return
        was = self.lease.held
        held = self.lease.attempt(conn)
        healthy_for_s = self.health.healthy_for()
        if held and not was:
            log.info("worker %s is now the maintenance leader (lease %gs)", str(self.worker_id)[:8],
                     self.lease.lease_s)
        elif was and not held:
            log.info("worker %s lost the maintenance lease", str(self.worker_id)[:8])
        if held:
            self.maintenance.run(conn, healthy_for_s=healthy_for_s)

    def _resign(self) -> None:
        if self.lease is None or not self.lease.held:
            return
        try:
            self.lease.resign(self._connection())
        except Exception as exc:  # noqa: BLE001 - the lease expires by itself
            log.debug("could not resign the maintenance lease: %s", db.first_line(exc))

    def _drop(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            try:
                conn.close()
            except Exception:  # noqa: BLE001 - it is being thrown away
                pass
        if self.lease is not None:
            self.lease.held = False   # not sure we still lead: wait for a fresh election
