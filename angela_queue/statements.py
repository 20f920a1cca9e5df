"""The hot path's statements, each built in one place as a typed ``Query``.

Every statement a worker sends on its hot path (claims, starts, outcomes,
releases, the poll) is made by a function here, with its parameters named
and typed once. The worker's loop, its completer, the maintenance round and
the tests all build them through these functions, so a parameter renamed in
``sql/`` is renamed here and nowhere else; and ``tests/test_hot_plans.py``
checks with ``EXPLAIN (FORMAT JSON)`` that every statement in
:data:`HOT_STATEMENTS` walks its index.

Nothing here runs SQL (``db.py`` does): these are values.
"""

from __future__ import annotations

import datetime as dt
import uuid
from collections.abc import Sequence

from .queries import Query


# --- claiming -------------------------------------------------------------------

def claim(*, worker_id: uuid.UUID, queues: Sequence[str], limit: int, min_effective: float | None = None,
          batch_below: int = 0, relax: bool = False, unlimited: bool = False) -> Query:
    """Claim up to ``limit`` tasks in effective-priority order. Tasks of base
    priority below ``batch_below`` are claimed unstarted (for a batch); the
    rest start at their claim. ``min_effective``: the least effective
    priority to take (None: any). ``relax``: commit without waiting for the
    disk, only when nothing but claims shares the transaction
    (see claims_only and sql/tasks.sql). ``unlimited``: the lighter claim,
    for a worker whose last poll found no limit in play (limits_in_play);
    it passes over any task a limit would govern."""
    return Query("tasks_claim_unlimited" if unlimited else "tasks_claim",
                 {"queues": list(queues), "limit": limit, "worker_id": worker_id,
                  "min_effective": min_effective, "batch_below": batch_below, "relax": relax})


def limits_in_play(*, queues: Sequence[str]) -> Query:
    """Whether claims from these queues must count limits (then the full
    claim), or may take the unlimited one."""
    return Query("tasks_limits_in_play", {"queues": list(queues)})


# The statements a claim's transaction may hold and still commit without
# the WAL flush: claims, whose loss in a server crash only queues their tasks
# again. An outcome, a release or a batch's start must be durable.
CLAIMS = frozenset({"tasks_claim", "tasks_claim_unlimited", "tasks_claim_kind"})


def claims_only(trip: Sequence[Query]) -> bool:
    """Whether every statement of a round trip (one transaction) is a claim."""
    return all(q.name in CLAIMS for q in trip)


def claim_kind(*, worker_id: uuid.UUID, queue: str, kind: str, limit: int) -> Query:
    """More of one queue and kind, for a collecting batch (claimed unstarted)."""
    return Query("tasks_claim_kind", {"queue": queue, "kind": kind, "worker_id": worker_id, "limit": limit})


def start_many(*, worker_id: uuid.UUID, ids: Sequence[int]) -> Query:
    """Record the start (the attempt) of tasks claimed unstarted."""
    return Query("tasks_start_many", {"ids": list(ids), "worker_id": worker_id})


def release_many(*, worker_id: uuid.UUID, ids: Sequence[int]) -> Query:
    """Give tasks back to their queue, their attempt not counted."""
    return Query("tasks_release_many", {"ids": list(ids), "worker_id": worker_id})


# --- outcomes -------------------------------------------------------------------

def complete_many(*, worker_id: uuid.UUID, outcomes_json: str) -> Query:
    """Successes, as one JSON array of {"id", "result", "finished_at"}: Postgres
    parses the document in C, where per-element jsonb[] parameters cost the
    worker about a fifth of its CPU."""
    return Query("tasks_complete_many", {"worker_id": worker_id, "outcomes": outcomes_json})


def fail_many(*, worker_id: uuid.UUID, ids: Sequence[int], errors: Sequence[str | None],
              retry_in_s: Sequence[float | None], failed_ats: Sequence[dt.datetime]) -> Query:
    """Failed attempts: each retried after its delay, or final (None)."""
    return Query("tasks_fail_many", {"worker_id": worker_id, "ids": list(ids), "errors": list(errors),
                                     "retry_in_s": list(retry_in_s), "failed_ats": list(failed_ats)})


def cancelled_many(*, worker_id: uuid.UUID, ids: Sequence[int], errors: Sequence[str | None],
                   finished_ats: Sequence[dt.datetime]) -> Query:
    return Query("tasks_cancelled_many", {"worker_id": worker_id, "ids": list(ids), "errors": list(errors),
                                          "finished_ats": list(finished_ats)})


def snooze_many(*, worker_id: uuid.UUID, ids: Sequence[int], delays_s: Sequence[float]) -> Query:
    """Put tasks back for later, their attempt not counted."""
    return Query("tasks_snooze_many", {"worker_id": worker_id, "ids": list(ids), "delays_s": list(delays_s)})


# --- the poll ---------------------------------------------------------------------

def promote_due(*, queues: Sequence[str] | None, limit: int = 1000, now: dt.datetime | None = None) -> Query:
    """Scheduled tasks whose time has come become queued (None: every queue)."""
    return Query("tasks_promote_due", {"now": now, "limit": limit,
                                       "queues": None if queues is None else list(queues)})


def next_scheduled_at(*, queues: Sequence[str]) -> Query:
    return Query("tasks_next_scheduled_at", {"queues": list(queues)})


def queued_depth(*, queues: Sequence[str], cap: int) -> Query:
    """How many tasks wait, counted up to ``cap`` (the poll only needs to know
    whether it is above its thresholds)."""
    return Query("tasks_queued_depth", {"queues": list(queues), "cap": cap})


def cancel_requested_for_worker(*, worker_id: uuid.UUID) -> Query:
    return Query("tasks_cancel_requested_for_worker", {"worker_id": worker_id})


def commit_mode(*, queues: Sequence[str]) -> Query:
    """synchronous_commit off for this session while every queue served is 'fast'."""
    return Query("workers_commit_mode", {"queues": list(queues)})


def due_count(*, queues: Sequence[str]) -> Query:
    return Query("tasks_due_count", {"queues": list(queues)})


def running_for_worker(*, worker_id: uuid.UUID) -> Query:
    """The tasks the database says this worker runs."""
    return Query("tasks_running_for_worker", {"worker_id": worker_id})


# Every statement above, by its query name: tests/test_hot_plans.py gives each
# a plan check, and fails on one that has none.
HOT_STATEMENTS = {
    "tasks_claim": claim, "tasks_claim_unlimited": claim, "tasks_claim_kind": claim_kind,
    "tasks_limits_in_play": limits_in_play, "tasks_start_many": start_many,
    "tasks_release_many": release_many, "tasks_complete_many": complete_many, "tasks_fail_many": fail_many,
    "tasks_cancelled_many": cancelled_many, "tasks_snooze_many": snooze_many,
    "tasks_promote_due": promote_due, "tasks_next_scheduled_at": next_scheduled_at,
    "tasks_queued_depth": queued_depth, "tasks_cancel_requested_for_worker": cancel_requested_for_worker,
    "workers_commit_mode": commit_mode, "tasks_due_count": due_count,
    "tasks_running_for_worker": running_for_worker,
}
