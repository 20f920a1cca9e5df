"""A database that refuses every turn: what it costs a worker.

    python -m benchmarks.refused [--dsn ADMIN_DSN] [--seconds 10]

One worker runs against a throwaway database. For ``--seconds`` it idles
(the reference, measured in the same run), then for as long again every new
session of the database is read-only (``default_transaction_read_only``,
the worker's connections terminated: a failover to a replica, as the worker
sees it). Reported for each stretch: the worker's CPU seconds (all its
threads), its log lines, and the transactions the server rolled back (the
refusals). The refused stretch should cost about what idling costs: backoff
instead of a retry loop at full speed, a log line for the first refusal and
summaries after, not one per retry. It reports; it never asserts.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

import psutil
import psycopg
from psycopg import sql

from .harness import DEFAULT_ADMIN_DSN, BenchDB, machine_info, spawn, wait_for_workers, worker_command

ROLLBACKS = ("SELECT xact_rollback FROM (SELECT pg_stat_clear_snapshot()) s, pg_stat_database "
             "WHERE datname = current_database()")


def _cpu_s(pid: int) -> float:
    t = psutil.Process(pid).cpu_times()
    return t.user + t.system


def _lines(path) -> int:
    return len(path.read_text(errors="replace").splitlines()) if path.exists() else 0


def _read_only(db: BenchDB, on: bool) -> None:
    with psycopg.connect(db.admin_dsn, autocommit=True) as admin:
        ident = sql.Identifier(db.name)
        statement = ("ALTER DATABASE {} SET default_transaction_read_only = on" if on
                     else "ALTER DATABASE {} RESET default_transaction_read_only")
        admin.execute(sql.SQL(statement).format(ident))
        admin.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = %s "
                      "AND application_name LIKE 'angela-queue%%'", (db.name,))


def measure(db: BenchDB, seconds: float) -> dict:
    procs = spawn([worker_command(db.dsn, 1, log_level="INFO")])
    log = procs.log_dir / "proc0.log"
    pid = procs.pids[0]
    try:
        wait_for_workers(db, procs, 1)
        stretches = {}
        for label, read_only in (("idle (reference)", False), ("read-only database", True)):
            if read_only:
                _read_only(db, True)
            cpu0, lines0, rb0 = _cpu_s(pid), _lines(log), db.scalar(ROLLBACKS)
            time.sleep(seconds)
            rollbacks = db.scalar(ROLLBACKS) - rb0   # read on the suite's own session, opened before
            stretches[label] = {"seconds": seconds, "worker_cpu_s": round(_cpu_s(pid) - cpu0, 3),
                                "log_lines": _lines(log) - lines0, "rolled_back_transactions": rollbacks}
        _read_only(db, False)
        alive = procs.popens[0].poll() is None
    finally:
        _read_only(db, False)
        procs.stop()
    ref, refused = stretches["idle (reference)"], stretches["read-only database"]
    return {"stretches": stretches, "worker_survived": alive,
            "cpu_ratio_to_idle": round(refused["worker_cpu_s"] / ref["worker_cpu_s"], 2)
            if ref["worker_cpu_s"] else None}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.refused", description=__doc__.split("\n\n")[0])
    p.add_argument("--dsn", default=os.environ.get("ANGELA_QUEUE_BENCH_DSN", DEFAULT_ADMIN_DSN))
    p.add_argument("--seconds", type=float, default=10.0)
    args = p.parse_args(argv)
    with BenchDB(args.dsn) as db:
        db.conn  # the suite's session opens before the database turns read-only
        result = measure(db, args.seconds)
        result["machine"] = machine_info(db)
    for label, s in result["stretches"].items():
        print(f"{label:22s} {s['seconds']:.0f}s: worker CPU {s['worker_cpu_s']:.3f}s, "
              f"{s['log_lines']} log lines, {s['rolled_back_transactions']} refused transactions")
    print(f"CPU while refused / CPU while idle: {result['cpu_ratio_to_idle']}; "
          f"worker survived: {result['worker_survived']}")
    print(json.dumps({k: v for k, v in result.items() if k != "machine"}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
