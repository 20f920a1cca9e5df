"""Enqueue, claim and the operator's views behind a long finished history:
each measured with only the last hour's share of it (the rows the views
must read), then again with all --finished rows (default ten million,
over 7 days) beside the same backlog, in one run, and reported as ratios.

    python -m benchmarks.history [--dsn ADMIN_DSN] [--finished 10000000]

The hot statements must cost what the unfinished rows cost, not what the
table holds: the enqueue's dedup and bound checks, the claim and the
outcomes walk partial indexes of unfinished rows, and the views read
finished rows only through indexes on their finish time. The finished rows
(2% failed) are spread over the last 7 days and written past the triggers
(the benchmark owns its database; ten million trigger calls would take most
of the run). It reports; it never asserts.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from typing import Any

from angela_queue import Client

from . import app
from .harness import DEFAULT_ADMIN_DSN, BenchDB, machine_info, median, write_results
from .scale import time_claims
from .views import FINISHED_ROWS, VIEWS, time_views

SINGLE = 300          # Client.enqueue calls, one task each
BULK_CALLS = 5        # Client.enqueue_many calls of BULK_SIZE
BULK_SIZE = 1000
CLAIM_ROUNDS = 200    # claims of 10, each completed
BACKLOG = 20_000      # queued tasks the claims take from
LOAD_CHUNK = 1_000_000


def _measure(db: BenchDB) -> dict[str, Any]:
    with Client(db.dsn, pool_size=1) as client:
        client.enqueue(app.NOOP, {})                                   # warm: connection, prepared statement
        single = []
        for i in range(SINGLE):
            start = time.perf_counter()
            client.enqueue(app.NOOP, {"i": i})
            single.append((time.perf_counter() - start) * 1000)
        bulk = []
        for _ in range(BULK_CALLS):
            tasks = [{"kind": app.NOOP, "payload": {"i": i}} for i in range(BULK_SIZE)]
            start = time.perf_counter()
            client.enqueue_many(tasks)
            bulk.append((time.perf_counter() - start) * 1000)
    claims = time_claims(db.dsn, CLAIM_ROUNDS)
    views = time_views(db)
    return {"enqueue_ms_p50": median(single), "enqueue_many_1000_ms_p50": median(bulk),
            "claim_ms_p50": median(claims),
            "views": {v: views[v]["median_ms"] for v in VIEWS},
            "seq_scan_on_tasks": sorted(v for v in VIEWS if views[v]["seq_scan_on_tasks"])}


def _load_finished(db: BenchDB, n: int, first: int, last: int) -> float:
    """Rows first..last of the n-row history (row g finished g/n of 7 days ago)."""
    started = time.monotonic()
    for start in range(first, last + 1, LOAD_CHUNK):
        with db.conn.transaction():
            db.conn.execute("SET LOCAL session_replication_role = replica")
            db.conn.execute(FINISHED_ROWS, {"first": start, "last": min(last, start + LOAD_CHUNK - 1), "n": n})
    return time.monotonic() - started


def _ratio(after: float, before: float) -> float:
    return round(after / max(before, 0.001), 2)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.history", description=__doc__.split("\n\n")[0])
    p.add_argument("--dsn", default=os.environ.get("ANGELA_QUEUE_BENCH_DSN", DEFAULT_ADMIN_DSN))
    p.add_argument("--finished", type=int, default=10_000_000)
    p.add_argument("--out", default=None, help="JSON results path (default benchmarks/results/<time>-history.json)")
    args = p.parse_args(argv)
    with BenchDB(args.dsn) as db:
        db.insert_noops(BACKLOG, app.NOOP)
        recent = max(1, args.finished // (7 * 24))               # the last hour's share
        _load_finished(db, args.finished, 1, recent)
        db.settle()
        none = _measure(db)
        load_s = _load_finished(db, args.finished, recent + 1, args.finished)
        settle_started = time.monotonic()
        db.settle()
        settle_s = time.monotonic() - settle_started
        full = _measure(db)
        size = db.scalar("SELECT pg_total_relation_size('angela_queue.tasks')")
        result = {"finished_rows": args.finished, "last_hour_rows": recent, "backlog": BACKLOG, "load_s": round(load_s, 1),
                  "vacuum_analyze_s": round(settle_s, 1), "tasks_total_bytes": size,
                  "none": none, "full": full,
                  "ratios": {"enqueue": _ratio(full["enqueue_ms_p50"], none["enqueue_ms_p50"]),
                             "enqueue_many_1000": _ratio(full["enqueue_many_1000_ms_p50"],
                                                         none["enqueue_many_1000_ms_p50"]),
                             "claim": _ratio(full["claim_ms_p50"], none["claim_ms_p50"]),
                             **{f"view {v}": _ratio(full["views"][v], none["views"][v]) for v in VIEWS}},
                  "machine": machine_info(db)}
    print(f"{'what':28s} {'last hour':>10s} {args.finished:>12,} finished {'ratio':>7s}")
    rows = [("Client.enqueue p50 ms", "enqueue_ms_p50", "enqueue"),
            ("enqueue_many of 1,000 p50 ms", "enqueue_many_1000_ms_p50", "enqueue_many_1000"),
            ("claim of 10 p50 ms", "claim_ms_p50", "claim")]
    for label, key, ratio in rows:
        print(f"{label:28s} {none[key]:>10.3f} {full[key]:>21.3f} {result['ratios'][ratio]:>7.2f}x")
    for v in VIEWS:
        print(f"{'view ' + v + ' ms':28s} {none['views'][v]:>10.3f} {full['views'][v]:>21.3f} "
              f"{result['ratios']['view ' + v]:>7.2f}x")
    print(f"sequential scans of tasks with the history: {', '.join(full['seq_scan_on_tasks']) or 'none'}; "
          f"table and indexes {size / 2**30:.1f} GiB; load {load_s:.0f} s, vacuum analyze {settle_s:.0f} s")
    write_results(result, args.out, "history")
    return 0


if __name__ == "__main__":
    sys.exit(main())
