"""The floor: the leanest hand-written psycopg loop on the same table.

Run by the suite as ``python -m benchmarks.reference --dsn DSN --batch K
--mode simple|pipeline``. It claims with the same SKIP LOCKED CTE shape as
angela-queue (same table, same triggers, same claim index), calls a no-op
per task, marks the tasks succeeded with a guarded UPDATE, and exits when a
claim comes back empty. It has none of the worker's features (no heartbeat,
no LISTEN, no retries, no timeouts, no per-task result): whatever angela-queue
costs above this is its overhead.

Modes:
- ``simple``: claim (one transaction), run, complete (another): two round
  trips and two commits per K tasks.
- ``pipeline``: the completion of the previous claim and the next claim go
  in one pipeline, one implicit transaction: one round trip and one commit
  per K tasks (the shape angela-queue's worker uses).
"""

from __future__ import annotations

import argparse
import json
import sys
import uuid

import psycopg

# The same pick as sql/tasks.sql tasks_claim, minus what a lean loop needs
# not (bounded-queue NOTIFY, the returned columns it does not use). The
# MATERIALIZED CTE fences the LIMIT so the UPDATE cannot touch more rows.
CLAIM = """
WITH picked AS MATERIALIZED (
    SELECT t.id FROM angela_queue.tasks t
    WHERE t.status = 'queued' AND t.queue = 'default' AND t.run_at <= now()
    ORDER BY t.priority_key DESC, t.id
    LIMIT %s
    FOR UPDATE SKIP LOCKED
)
UPDATE angela_queue.tasks t
SET status = 'running', attempts = t.attempts + 1, worker_id = %s, started_at = now()
FROM picked
WHERE t.id = picked.id AND t.status = 'queued'
RETURNING t.id, t.payload
"""

COMPLETE = """
UPDATE angela_queue.tasks
SET status = 'succeeded', finished_at = now()
WHERE id = ANY(%s) AND status = 'running' AND worker_id = %s
"""

APPLICATION_NAME = "aq-bench-reference"


def noop(**_payload: object) -> None:
    return None


def run_simple(conn: psycopg.Connection, batch: int, worker_id: uuid.UUID) -> int:
    ran = 0
    cur = conn.cursor()
    while True:
        rows = cur.execute(CLAIM, (batch, worker_id), prepare=True).fetchall()
        if not rows:
            return ran
        for _id, payload in rows:
            noop(**payload)
        ran += len(rows)
        cur.execute(COMPLETE, ([r[0] for r in rows], worker_id), prepare=True)


def run_pipeline(conn: psycopg.Connection, batch: int, worker_id: uuid.UUID) -> int:
    ran = 0
    done: list[int] = []
    while True:
        # No Sync between the two statements: one implicit transaction, one commit.
        with conn.pipeline():
            if done:
                conn.execute(COMPLETE, (done, worker_id), prepare=True)
            claim = conn.execute(CLAIM, (batch, worker_id), prepare=True)
        rows = claim.fetchall()
        if not rows:
            return ran
        for _id, payload in rows:
            noop(**payload)
        ran += len(rows)
        done = [r[0] for r in rows]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dsn", required=True)
    parser.add_argument("--batch", type=int, default=1, help="tasks claimed (and completed) at once")
    parser.add_argument("--mode", choices=("simple", "pipeline"), default="simple")
    args = parser.parse_args(argv)
    worker_id = uuid.uuid4()
    with psycopg.connect(args.dsn, autocommit=True, prepare_threshold=0,
                         application_name=APPLICATION_NAME) as conn:
        run = run_simple if args.mode == "simple" else run_pipeline
        ran = run(conn, args.batch, worker_id)
    print(json.dumps({"ran": ran}), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
