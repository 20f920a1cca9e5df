"""The completer: outcomes that finished here, until the database has them.

As River separates its completer from its producer, the worker's loop hands
each finished task's ``Outcome`` (complete, from execution.py) to this
buffer and asks it, at every turn, for the statements that store them; the
loop pipelines those with its claim, in one round trip and one commit. Once
the trip commits, :meth:`Completer.stored` settles them.

Hazards this module is built around:
- A flush that fails (a lost connection, a refused turn) loses nothing: its
  outcomes stay in flight and go again, with newer ones, in the next flush.
- One outcome the database cannot take (a value it refuses) must not hold
  the others hostage: :meth:`Completer.store_one_by_one` stores each in its
  own transaction, and turns the refused one into a failure that says why.
- An outcome for a task that was reclaimed while it ran here matches no row
  (completion is guarded by status and worker_id): it is logged, never
  written over the other worker's attempt.
"""

from __future__ import annotations

import datetime as dt
import logging
from collections.abc import Callable, Sequence

import psycopg

from .. import db
from ..queries import Query
from .. import statements
from .execution import Outcome, clean_text

log = logging.getLogger("angela_queue.worker")

# SQLSTATE classes of errors that are the outcome's own fault (a value the
# database cannot store): data exceptions, integrity violations, program
# limits such as a row too big. Anything else (read-only, permission denied,
# a timeout) is the environment's, and the outcome waits for it to pass.
OUTCOME_FAULT_CLASSES = ("22", "23", "54")


def is_outcome_fault(exc: BaseException) -> bool:
    """Whether a failed store is the outcome's own fault: a data error from the
    server, or parameters that could not even be sent (an encoding error)."""
    if not isinstance(exc, psycopg.Error):
        return isinstance(exc, (ValueError, TypeError))  # UnicodeEncodeError is a ValueError
    return (exc.sqlstate or "")[:2] in OUTCOME_FAULT_CLASSES


def outcome_statements(worker_id, flush: Sequence[Outcome]) -> list[Query]:
    """The statements that store ``flush``: at most one per kind of outcome."""
    ok = [o for o in flush if o.ok]
    bad = [o for o in flush if not o.ok and not o.cancelled and not o.snoozed]
    cancelled = [o for o in flush if o.cancelled]
    snoozed = [o for o in flush if o.snoozed and not o.cancelled]
    out: list[Query] = []
    if ok:
        # Each result was encoded once already (result_json): joined, not re-encoded.
        documents = ",".join(f'{{"id":{o.task_id},"result":{o.result_json},"finished_at":{o.finished_at!r}}}'
                             for o in ok)
        out.append(statements.complete_many(worker_id=worker_id, outcomes_json=f"[{documents}]"))
    if bad:
        out.append(statements.fail_many(worker_id=worker_id, ids=[o.task_id for o in bad],
                                        errors=[o.error for o in bad], retry_in_s=[o.retry_in_s for o in bad],
                                        failed_ats=[utc(o.finished_at) for o in bad]))
    if cancelled:
        out.append(statements.cancelled_many(worker_id=worker_id, ids=[o.task_id for o in cancelled],
                                             errors=[o.error for o in cancelled],
                                             finished_ats=[utc(o.finished_at) for o in cancelled]))
    if snoozed:
        out.append(statements.snooze_many(worker_id=worker_id, ids=[o.task_id for o in snoozed],
                                          delays_s=[o.snooze_s for o in snoozed]))
    return out


def utc(ts: float) -> dt.datetime:
    return dt.datetime.fromtimestamp(ts, dt.timezone.utc)


class Completer:
    """The outcome buffer of one worker, and its flushes.

    ``settled(task_id)`` is called once per outcome the database took, or
    will never take (reclaimed, or refused even as a failure): the worker
    then forgets that task. ``keep_stored_ids``: remember, in order, the
    ids whose outcome was stored (the testing drain reports them).
    """

    def __init__(self, worker_id, *, settled: Callable[[int], None], keep_stored_ids: bool = False):
        self.worker_id = worker_id
        self._settled = settled
        self._pending: list[Outcome] = []      # recorded since the last take()
        self._in_flight: list[Outcome] = []    # taken, not yet known to be stored
        self.stored_ids: list[int] | None = [] if keep_stored_ids else None

    def add(self, outcome: Outcome) -> None:
        self._pending.append(outcome)

    def __bool__(self) -> bool:
        """Whether any outcome waits to be stored."""
        return bool(self._pending or self._in_flight)

    def reported(self) -> set[int]:
        """The tasks that have an outcome here, stored or not yet."""
        return {o.task_id for o in self._in_flight} | {o.task_id for o in self._pending}

    def take(self) -> list[Outcome]:
        """Everything to store now: what a failed flush left in flight, then
        what finished since. It stays in flight until :meth:`stored`."""
        self._in_flight = self._in_flight + self._pending
        self._pending = []
        return self._in_flight

    def statements(self, flush: Sequence[Outcome]) -> list[Query]:
        return outcome_statements(self.worker_id, flush)

    def stored(self, flush: Sequence[Outcome], results: Sequence[Sequence[dict]]) -> None:
        """The flush of ``flush`` committed with ``results`` (the rows each of
        its statements returned: the ids it changed)."""
        if not flush:
            return
        changed = {row["id"] for rows in results for row in rows}
        for outcome in flush:
            if outcome.task_id in changed:
                if self.stored_ids is not None:
                    self.stored_ids.append(outcome.task_id)
            else:
                log.warning("task %d was reclaimed while it ran here; its outcome was not recorded",
                            outcome.task_id)
            self._settled(outcome.task_id)
        self._in_flight = []

    async def store_one_by_one(self, conn: psycopg.AsyncConnection) -> None:
        """Store each waiting outcome in its own transaction. One the server
        refuses for its own sake (a data error) becomes a final failure that
        says why; if even that cannot be stored, the task is left to the
        reclaim (and logged). Any other refusal (read-only, permission) or a
        lost connection puts the unstored rest back for a later flush, and is
        raised."""
        remaining = self.take()
        self._in_flight = []
        while remaining:
            try:
                await self._store_one(conn, remaining[0])
            except (psycopg.Error, ValueError, TypeError):
                self._pending = remaining + self._pending
                raise
            remaining.pop(0)

    async def _store_one(self, conn: psycopg.AsyncConnection, outcome: Outcome) -> None:
        try:
            self.stored([outcome], await db.apipeline(conn, self.statements([outcome])))
            return
        except (psycopg.Error, ValueError, TypeError) as exc:
            if not is_outcome_fault(exc):
                raise
            reason = db.first_line(exc)
        log.error("task %d: the database refused its outcome: %s", outcome.task_id, reason)
        failure = Outcome(outcome.task_id, ok=False, retry_in_s=None, duration_ms=outcome.duration_ms,
                          finished_at=outcome.finished_at,
                          error=clean_text(f"the outcome could not be stored: {reason}"))
        try:
            self.stored([failure], await db.apipeline(conn, self.statements([failure])))
        except (psycopg.Error, ValueError, TypeError) as exc:
            if not is_outcome_fault(exc):
                raise
            log.error("task %d: not even its failure could be stored (%s); it will be reclaimed",
                      outcome.task_id, db.first_line(exc))
            self._settled(outcome.task_id)
