"""The operator's views at scale: with a backlog of unfinished tasks, then with a
million finished ones beside it, each view's plan and time.

    python -m benchmarks.views [--dsn ADMIN_DSN] [--finished 1000000]

The views (tier_sla, throughput, recent_failures, kind_stats, queue_depth)
and the reads behind `status` must cost what the recent and unfinished rows
cost, not what the table holds: each finished-row read goes through an index
(tasks_finished_idx, tasks_failed_at_idx). --finished rows are spread over
the last 7 days (2% failed). For each view it prints the time with only the
last hour's share of them (the reference, measured in the same run: the
rows a view has to read), the time with all of them, the ratio, and whether
the plan reads tasks with a sequential scan. It reports; it never asserts.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

from .harness import DEFAULT_ADMIN_DSN, BenchDB, machine_info

VIEWS = ("tier_sla", "throughput", "recent_failures", "kind_stats", "queue_depth")
RUNS = 5

# Rows written past the triggers (the benchmark owns its database): the
# view costs do not depend on how the rows arrived, and a million trigger
# calls would take most of the run.
FINISHED_ROWS = """
INSERT INTO angela_queue.tasks (queue, kind, payload, priority, status, created_at, run_at, deadline,
                                priority_key, attempts, max_attempts, started_at, finished_at, last_error,
                                failed_at, errors)
SELECT 'default', 'kind_' || (g %% 20), '{}', 1 + g %% 10,
       CASE WHEN g %% 50 = 0 THEN 'failed' ELSE 'succeeded' END,
       t.at - interval '2 seconds', t.at - interval '2 seconds', t.at, 0, 1, 5, t.at - interval '1 second', t.at,
       CASE WHEN g %% 50 = 0 THEN 'ValueError: bench' END,
       CASE WHEN g %% 50 = 0 THEN t.at END, '[]'
FROM generate_series(%(first)s::integer, %(last)s::integer) g
CROSS JOIN LATERAL (SELECT now() - (g::double precision / %(n)s::integer) * interval '7 days' AS at) t
"""


def _nodes(plan: dict) -> list[dict]:
    found = [plan]
    for child in plan.get("Plans", []):
        found.extend(_nodes(child))
    return found


def time_views(db: BenchDB) -> dict[str, dict]:
    out = {}
    for view in VIEWS:
        times = []
        for _ in range(RUNS):
            row = db.conn.execute(f"EXPLAIN (ANALYZE, FORMAT JSON) SELECT * FROM angela_queue.{view}").fetchone()
            plan = next(iter(row.values()))[0]
            times.append(plan["Execution Time"])
        times.sort()
        scans = [n for n in _nodes(plan["Plan"]) if n.get("Relation Name") == "tasks"]
        out[view] = {"median_ms": round(times[len(times) // 2], 3),
                     "seq_scan_on_tasks": any(n["Node Type"] == "Seq Scan" for n in scans)}
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.views", description=__doc__.split("\n\n")[0])
    p.add_argument("--dsn", default=os.environ.get("ANGELA_QUEUE_BENCH_DSN", DEFAULT_ADMIN_DSN))
    p.add_argument("--finished", type=int, default=1_000_000)
    p.add_argument("--backlog", type=int, default=10_000)
    args = p.parse_args(argv)
    with BenchDB(args.dsn) as db:
        db.insert_noops(args.backlog, "backlog")
        recent = max(1, args.finished // (7 * 24))          # the last hour's share
        with db.conn.transaction():
            db.conn.execute("SET LOCAL session_replication_role = replica")
            db.conn.execute(FINISHED_ROWS, {"first": 1, "last": recent, "n": args.finished})
        db.settle()
        empty = time_views(db)
        started = time.monotonic()
        with db.conn.transaction():
            db.conn.execute("SET LOCAL session_replication_role = replica")
            db.conn.execute(FINISHED_ROWS, {"first": recent + 1, "last": args.finished, "n": args.finished})
        load_s = time.monotonic() - started
        db.settle()
        full = time_views(db)
        result = {"finished_rows": args.finished, "backlog": args.backlog, "load_s": round(load_s, 1),
                  "views": {v: {"empty_ms": empty[v]["median_ms"], "full_ms": full[v]["median_ms"],
                                "ratio": round(full[v]["median_ms"] / max(empty[v]["median_ms"], 0.001), 2),
                                "seq_scan_on_tasks": full[v]["seq_scan_on_tasks"]} for v in VIEWS},
                  "machine": machine_info(db)}
    print(f"{'view':18s} {'last hour only':>14s} {args.finished:>12,} finished {'ratio':>7s}  seq scan of tasks")
    for view, r in result["views"].items():
        print(f"{view:18s} {r['empty_ms']:>12.2f}ms {r['full_ms']:>19.2f}ms {r['ratio']:>7.2f}  "
              f"{'yes' if r['seq_scan_on_tasks'] else 'no'}")
    print(json.dumps({k: v for k, v in result.items() if k != "machine"}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
