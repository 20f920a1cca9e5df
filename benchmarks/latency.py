"""Idle latency, enqueue -> start: one idle worker, tasks enqueued one at a
time (one transaction each) at a steady rate, latency read from the rows.

``started_at - created_at`` uses two database clock readings: the enqueue
transaction's now() (taken when that transaction began, so it includes the
insert and its trigger, the commit and the NOTIFY) and the claim
transaction's now(). The worker's wake-up, its claim round trip and the
scheduling between are what it measures.

``started_at - enqueue returned`` starts the clock when the producer got the
commit back instead (the suite's wall clock; same host), so a slow insert on
a busy machine does not count against the worker. It can be negative: the
worker may claim before the producer has read the reply.
"""

from __future__ import annotations

import time
from typing import Any

from angela_queue import Client

from . import app
from .harness import BenchDB, percentile, spawn, wait_for_workers, worker_command

WARMUP_TASKS = 20

LATENCIES = """
SELECT id, extract(epoch FROM started_at)::float8 AS started_epoch,
       1000 * extract(epoch FROM started_at - created_at)::float8 AS start_ms,
       1000 * extract(epoch FROM finished_at - created_at)::float8 AS finish_ms
FROM angela_queue.tasks
WHERE id > %s AND status = 'succeeded'
ORDER BY id
"""


def _paced_enqueue(client: Client, count: int, rate_per_s: float, tag: str,
                   returned_at: dict[int, float] | None = None) -> list[float]:
    """Enqueue at a steady rate; returns each enqueue's round trip in ms, and
    fills ``returned_at`` with the wall-clock time each enqueue returned."""
    interval = 1.0 / rate_per_s
    start = time.perf_counter()
    round_trips = []
    for i in range(count):
        delay = start + i * interval - time.perf_counter()
        if delay > 0:
            time.sleep(delay)
        t = time.perf_counter()
        enqueued = client.enqueue(app.NOOP, {tag: i})
        round_trips.append((time.perf_counter() - t) * 1000)
        if returned_at is not None:
            returned_at[enqueued.id] = time.time()
    return round_trips


def _wait_all_done(db: BenchDB, timeout_s: float = 30.0) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if db.scalar("SELECT count(*) FROM angela_queue.tasks WHERE status <> 'succeeded'") == 0:
            return
        time.sleep(0.05)
    raise RuntimeError("tasks were not all done in time")


def run_latency(db: BenchDB, count: int, rate_per_s: float = 50.0, concurrency: int = 10) -> dict[str, Any]:
    db.reset()
    procs = spawn([worker_command(db.dsn, concurrency)])
    error = None
    try:
        startup_s = wait_for_workers(db, procs, 1)
        with Client(db.dsn, pool_size=1) as client:
            # Warm up: prepared statements on both sides, the pool's connection.
            _paced_enqueue(client, WARMUP_TASKS, rate_per_s, "warmup")
            _wait_all_done(db)
            time.sleep(0.5)
            last_warmup_id = db.scalar("SELECT coalesce(max(id), 0) FROM angela_queue.tasks")
            began = time.perf_counter()
            returned_at: dict[int, float] = {}
            round_trips = _paced_enqueue(client, count, rate_per_s, "seq", returned_at)
            achieved_rate = count / (time.perf_counter() - began)
        _wait_all_done(db)
        rows = db.conn.execute(LATENCIES, (last_warmup_id,)).fetchall()
    except RuntimeError as exc:
        error = str(exc)
        rows, round_trips, achieved_rate, startup_s, returned_at = [], [], 0.0, None, {}
    finally:
        codes = procs.stop()
    start = [r["start_ms"] for r in rows]
    finish = [r["finish_ms"] for r in rows]
    after_return = [1000 * (r["started_epoch"] - returned_at[r["id"]]) for r in rows if r["id"] in returned_at]
    return {
        "tasks": count, "measured": len(start), "target_rate_per_s": rate_per_s,
        "achieved_rate_per_s": achieved_rate, "worker_concurrency": concurrency,
        "worker_startup_s": startup_s, "error": error, "exit_codes": codes,
        "start_ms": _dist(start),
        "start_after_return_ms": _dist(after_return),
        "finish_ms": _dist(finish),
        "enqueue_round_trip_ms": _dist(round_trips),
    }


def _dist(values: list[float]) -> dict[str, float]:
    if not values:
        return {}
    return {"min": min(values), "p50": percentile(values, 50), "p90": percentile(values, 90),
            "p99": percentile(values, 99), "max": max(values), "mean": sum(values) / len(values)}
