"""Claim cost against the size of the queue: the same claim with 1,000, 100,000
and 1,000,000 tasks queued (and, separately, behind a large finished history,
and behind a capped kind's backlog at its cap).

One connection runs the worker's own statements (tasks_claim of 10, then
tasks_complete_many of what it claimed, each in its own transaction) on a
backlog of no-op tasks, timing each round trip. The figure is the median
claim time at each size and its ratio to the smallest: a claim that walks
its index costs the same whatever waits behind the rows it takes.
"""

from __future__ import annotations

import json
import time
import uuid
from typing import Any

import psycopg
from psycopg.rows import dict_row

from angela_queue import db, queries, statements

from .harness import BenchDB, median

ROUNDS = 200


def time_claims(dsn: str, rounds: int) -> list[float]:
    worker = uuid.uuid4()
    claim = statements.claim(worker_id=worker, queues=["default"], limit=10)
    complete = queries.query("tasks_complete_many")
    times = []
    with psycopg.connect(dsn, autocommit=True, row_factory=dict_row) as conn:
        conn.execute(db.HOT_PATH_SETTINGS, prepare=False)  # as a worker's connection runs: generic plans, no JIT
        for _ in range(rounds):
            start = time.perf_counter()
            rows = conn.execute(claim.text, claim.params, prepare=True).fetchall()
            times.append((time.perf_counter() - start) * 1000)
            if rows:
                conn.execute(complete, {"worker_id": worker, "outcomes": json.dumps(
                    [{"id": r["id"], "result": None, "finished_at": time.time()} for r in rows])}, prepare=True)
    return times


def run_scale(db: BenchDB, sizes: tuple[int, ...], finished: int, rounds: int = ROUNDS) -> dict[str, Any]:
    out: dict[str, Any] = {"rounds": rounds, "claim_limit": 10, "queued": [], "finished": None}
    for n in sizes:
        db.reset()
        # Enough that the backlog never falls below n while the rounds take theirs.
        db.insert_noops(n + rounds * 10, "bench_noop")
        db.settle()
        times = time_claims(db.dsn, rounds)
        out["queued"].append({"queued": n, "claim_ms_p50": median(times), "claim_ms_max": max(times)})
    base = out["queued"][0]["claim_ms_p50"]
    for row in out["queued"]:
        row["ratio_to_smallest"] = row["claim_ms_p50"] / base if base else None
    # Behind 10,000 tasks of a kind at its cap (1 running): the claim of the
    # unlimited kind must cost what it costs with no limited kind at all.
    db.reset()
    db.conn.execute("INSERT INTO angela_queue.kinds (kind, concurrency) VALUES ('bench_capped', 1) "
                    "ON CONFLICT (kind) DO UPDATE SET concurrency = 1")
    db.insert_noops(10_000, "bench_capped", priority=8)
    db.conn.execute("UPDATE angela_queue.tasks SET status = 'running', attempts = 1, started_at = now(), "
                    "worker_id = gen_random_uuid() WHERE id = (SELECT min(id) FROM angela_queue.tasks)")
    db.insert_noops(sizes[0] + rounds * 10, "bench_noop")
    db.settle()
    times = time_claims(db.dsn, rounds)
    out["capped"] = {"capped_queued": 10_000, "queued": sizes[0], "claim_ms_p50": median(times),
                     "ratio_to_none_capped": median(times) / base if base else None}
    if finished:
        db.reset()
        db.conn.execute("INSERT INTO angela_queue.tasks (kind) SELECT 'bench_noop' FROM generate_series(1, %s)",
                        (finished,))
        db.conn.execute("UPDATE angela_queue.tasks SET status = 'succeeded', attempts = 1, started_at = now(), "
                        "finished_at = now()")
        db.insert_noops(sizes[0] + rounds * 10, "bench_noop")
        db.settle()
        times = time_claims(db.dsn, rounds)
        out["finished"] = {"finished": finished, "queued": sizes[0], "claim_ms_p50": median(times),
                           "ratio_to_none_finished": median(times) / base if base else None}
    return out
