"""A soak: a steady producer against a supervisor for a long time, with
retention pruning behind it, sampling table size and start latency over time.

    python -m benchmarks.soak [--minutes 30] [--rate 2000] [--retention 3600]

The producer enqueues --rate tasks a second (bulks of --rate/20 every
50 ms, through Client.enqueue_many) into one queue served by
`angela-queue run` (2 workers of concurrency 10, async no-op handlers) with
`--retention`. Every --sample-every seconds it records: the tasks table's
size with its indexes, the claim index's size (what every claim walks), the
waiting and finished rows, and the start latency (started_at - created_at)
p50 and p99 of the tasks that finished in that window. Flat means: once
the first finished rows pass the retention, the table stops growing, and
the latency and the claim index never grow. With a retention longer than
the soak nothing is pruned yet: the table grows by the finished rows, and
the claim index and latency must stay flat regardless.
Where the server runs without autovacuum (some CI images turn it off), a
soak measures dead rows piling up, not the queue: --vacuum-every runs
VACUUM (ANALYZE) on the tasks table that often as its stand-in (default 60 s
when autovacuum is off, never when it is on), and the result says which.
It reports; it never asserts. At the end every task must have run once.
"""

from __future__ import annotations

import argparse
import os
import sys
import threading
import time
from typing import Any

from angela_queue import Client

from . import app
from .harness import DEFAULT_ADMIN_DSN, BenchDB, machine_info, spawn, write_results

# The window's tasks are read once, for both percentiles and the count.
SAMPLE = """
SELECT pg_total_relation_size('angela_queue.tasks') AS table_bytes,
       pg_relation_size('angela_queue.tasks_claim_idx') AS claim_index_bytes,
       (SELECT count(*) FROM angela_queue.tasks WHERE status IN ('queued', 'scheduled')) AS waiting,
       (SELECT count(*) FROM angela_queue.tasks WHERE status = 'running') AS running,
       (SELECT count(*) FROM angela_queue.tasks WHERE status = 'succeeded') AS finished,
       (SELECT n_dead_tup FROM pg_stat_user_tables WHERE relid = 'angela_queue.tasks'::regclass) AS dead_rows,
       (SELECT autovacuum_count FROM pg_stat_user_tables WHERE relid = 'angela_queue.tasks'::regclass)
           AS autovacuums,
       w.start_ms[1] AS start_ms_p50, w.start_ms[2] AS start_ms_p99, w.finished_in_window
FROM (SELECT array(SELECT 1000 * p FROM unnest(percentile_cont(ARRAY[0.5, 0.99]) WITHIN GROUP
                                                (ORDER BY extract(epoch FROM started_at - created_at))) AS p)
                 AS start_ms,
             count(*) AS finished_in_window
      FROM angela_queue.tasks
      WHERE status = 'succeeded' AND finished_at > now() - make_interval(secs => %(window)s)) AS w
"""


class Producer(threading.Thread):
    """Enqueues at a steady rate in small bulks; counts what it stored."""

    def __init__(self, dsn: str, rate: float, seconds: float):
        super().__init__(daemon=True)
        self.dsn, self.rate, self.seconds = dsn, rate, seconds
        self.stored = 0
        self.behind_s = 0.0          # how far the producer fell behind its schedule, at most
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            tick = 0.05
            per_tick = max(1, round(self.rate * tick))
            with Client(self.dsn, pool_size=1) as client:
                start = time.monotonic()
                n = 0
                while time.monotonic() - start < self.seconds:
                    client.enqueue_many([{"kind": app.NOOP_ASYNC, "payload": {"n": n + i}}
                                         for i in range(per_tick)])
                    n += per_tick
                    self.stored = n
                    due = start + n / self.rate
                    delay = due - time.monotonic()
                    if delay > 0:
                        time.sleep(delay)
                    else:
                        self.behind_s = max(self.behind_s, -delay)
        except BaseException as exc:  # noqa: BLE001 - reported by the main thread
            self.error = exc


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.soak", description=__doc__.split("\n\n")[0])
    p.add_argument("--dsn", default=os.environ.get("ANGELA_QUEUE_BENCH_DSN", DEFAULT_ADMIN_DSN))
    p.add_argument("--minutes", type=float, default=30.0)
    p.add_argument("--rate", type=float, default=2000.0, help="tasks enqueued per second (default 2,000)")
    p.add_argument("--retention", type=float, default=3600.0, help="seconds finished tasks are kept (default 1 h)")
    p.add_argument("--sample-every", type=float, default=30.0)
    p.add_argument("--vacuum-every", type=float, default=None,
                   help="seconds between VACUUM (ANALYZE) runs of the tasks table, a stand-in for autovacuum "
                        "(default 60 where autovacuum is off, else never; 0: never)")
    p.add_argument("--out", default=None, help="JSON results path (default benchmarks/results/<time>-soak.json)")
    args = p.parse_args(argv)
    seconds = args.minutes * 60
    samples: list[dict[str, Any]] = []
    with BenchDB(args.dsn) as db:
        autovacuum = db.scalar("SELECT current_setting('autovacuum')") == "on"
        vacuum_every = args.vacuum_every if args.vacuum_every is not None else (0.0 if autovacuum else 60.0)
        vacuums = 0
        supervisor = spawn([[sys.executable, "-m", "angela_queue", "--dsn", db.dsn, "--log-level", "WARNING",
                             "run", "--app", "benchmarks.app", "--concurrency", "10", "--min-workers", "2",
                             "--max-workers", "2", "--base-workers", "2", "--retention", str(args.retention)]])
        try:
            deadline = time.monotonic() + 60
            while db.scalar("SELECT count(*) FROM angela_queue.workers WHERE status IN ('idle', 'active')") < 2:
                if supervisor.dead() or time.monotonic() > deadline:
                    raise RuntimeError("the supervisor's workers did not start:\n" + supervisor.output_tail())
                time.sleep(0.1)
            producer = Producer(db.dsn, args.rate, seconds)
            began = time.monotonic()
            producer.start()
            next_sample = began + args.sample_every
            next_vacuum = began + vacuum_every if vacuum_every else float("inf")
            while producer.is_alive():
                producer.join(max(0.0, min(next_sample, next_vacuum) - time.monotonic()))
                if time.monotonic() >= next_vacuum:
                    next_vacuum += vacuum_every
                    db.conn.execute("VACUUM (ANALYZE) angela_queue.tasks")
                    vacuums += 1
                if time.monotonic() >= next_sample:
                    next_sample += args.sample_every
                    row = db.conn.execute(SAMPLE, {"window": args.sample_every}).fetchone()
                    row = {"at_s": round(time.monotonic() - began), "enqueued": producer.stored, **row}
                    samples.append(row)
                    print(f"{row['at_s']:>6}s  enqueued {row['enqueued']:>9,}  waiting {row['waiting']:>7,}  "
                          f"finished {row['finished']:>9,}  dead {row['dead_rows']:>8,}  "
                          f"table {row['table_bytes'] / 2**20:>8.1f} MiB  claim index "
                          f"{row['claim_index_bytes'] / 2**20:>6.1f} MiB  start p50 "
                          f"{(row['start_ms_p50'] or 0):>7.1f} ms  p99 {(row['start_ms_p99'] or 0):>8.1f} ms",
                          flush=True)
                if supervisor.dead():
                    raise RuntimeError("the supervisor exited:\n" + supervisor.output_tail())
            if producer.error is not None:
                raise producer.error
            # Drain what is left, then check every task ran exactly once.
            deadline = time.monotonic() + 300
            while db.scalar("SELECT count(*) FROM angela_queue.tasks WHERE status <> 'succeeded'") and \
                    time.monotonic() < deadline:
                time.sleep(0.5)
        finally:
            supervisor.stop(timeout_s=60)
        ran = supervisor.handler_counts().get(app.NOOP_ASYNC, 0)
        unfinished = db.scalar("SELECT count(*) FROM angela_queue.tasks WHERE status <> 'succeeded'")
        over_once = db.scalar("SELECT count(*) FROM angela_queue.tasks WHERE attempts <> 1")
        result = {"minutes": args.minutes, "rate": args.rate, "retention_s": args.retention,
                  "autovacuum": autovacuum, "vacuum_every_s": vacuum_every, "vacuums_run": vacuums,
                  "enqueued": producer.stored, "handler_calls": ran, "unfinished_at_end": unfinished,
                  "claimed_more_than_once": over_once, "producer_behind_s_max": round(producer.behind_s, 2),
                  "samples": samples, "machine": machine_info(db)}
    print(f"enqueued {producer.stored:,}, handler calls {ran:,}, unfinished {unfinished}, attempts <> 1: "
          f"{over_once}; the producer fell at most {producer.behind_s:.2f} s behind its schedule; autovacuum "
          f"{'on' if autovacuum else 'off'}, {vacuums} VACUUM run(s) by the soak")
    write_results(result, args.out, "soak")
    return 0


if __name__ == "__main__":
    sys.exit(main())
