"""Leader election for maintenance: a lease row in ``angela_queue.leader``.

Each supervisor tries to take or renew the lease at every heartbeat; the one
that holds it runs maintenance (maintenance.py). A lease lasts
``leader_lease_s`` unless renewed, so when the leader's host dies another
supervisor takes over within one lease; a leader that shuts down cleanly
resigns, and a peer takes over at its next heartbeat.

Why a lease row rather than an advisory lock: a session lock lives as long
as a connection, so a leader that lost its connection would keep leading
until TCP noticed, and a pooler in transaction mode cannot hold one at all.
The row is visible to SQL (``angela-queue status`` shows the leader) and
its expiry is judged by the database clock alone.

Hazard: a leader can be paused (GC, SIGSTOP, a slow query) past its expiry
while a peer takes over, so two may briefly both believe they lead. Every
maintenance step is a guarded, idempotent statement, so an overlap costs at
most duplicate work, never a double reclaim.

Hazard: the lease says who may judge workers lost, not across which time.
After a database outage, heartbeats look stale because they could not be
written; a leader, freshly elected or not, judges silence only over the time
it has itself seen the database answer (``healthy_for_s``, kept by the
supervisor). That bound covers a new leader too: one connected long enough
may reclaim a dead leader's lost workers at once, one that just reconnected
waits dead_after_s. The lease's age (``elected_at``) must not stand in for it.
"""

from __future__ import annotations

import datetime as dt
import uuid
from dataclasses import dataclass

import psycopg

from .. import db

MAINTENANCE_LEASE = "maintenance"


@dataclass
class Lease:
    holder: uuid.UUID
    lease_s: float
    name: str = MAINTENANCE_LEASE
    held: bool = False
    expires_at: dt.datetime | None = None

    def attempt(self, conn: psycopg.Connection, now: dt.datetime | None = None) -> bool:
        """Take or renew the lease; True while we hold it."""
        row = attempt_elect(conn, self.holder, self.lease_s, name=self.name, now=now)
        self.held = row is not None
        self.expires_at = row["expires_at"] if row else None
        return self.held

    def resign(self, conn: psycopg.Connection) -> bool:
        was = resign(conn, self.holder, name=self.name)
        self.held = False
        self.expires_at = None
        return was


def attempt_elect(conn: psycopg.Connection, holder: uuid.UUID, lease_s: float, *,
                  name: str = MAINTENANCE_LEASE, now: dt.datetime | None = None) -> dict | None:
    """The lease row if ``holder`` holds it after this attempt, else None."""
    return db.fetch_one(conn, "leader_attempt_elect",
                        {"name": name, "holder": holder, "lease_s": lease_s, "now": now})


def resign(conn: psycopg.Connection, holder: uuid.UUID, *, name: str = MAINTENANCE_LEASE) -> bool:
    return db.fetch_one(conn, "leader_resign", {"name": name, "holder": holder}) is not None


def current(conn: psycopg.Connection, *, name: str = MAINTENANCE_LEASE,
            now: dt.datetime | None = None) -> dict | None:
    """The lease row with ``valid`` (not expired at ``now``), or None if nobody ever held it."""
    return db.fetch_one(conn, "leader_get", {"name": name, "now": now})
