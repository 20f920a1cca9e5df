"""Chaos, small and fast: SIGKILL workers and the supervisor while 300 tasks run.

The full run (Postgres restarts, two supervisors, thousands of tasks) is
``python -m benchmarks.chaos``. This is its smoke test on the test fixture
database. That server may be shared, so Postgres is never restarted here.

It uses the same handlers (benchmarks/chaos_app.py: each run is recorded in a
side table before the handler returns) and the same counting
(``benchmarks.chaos.analyse``) as the full run.
"""

from __future__ import annotations

import random
import signal
import sys
from pathlib import Path

from angela_queue.config import DEFAULT_MAX_ATTEMPTS
from fix_procs import query, wait_until

REPO_ROOT = Path(__file__).resolve().parent.parent
if str(REPO_ROOT) not in sys.path:  # `pytest` run without `python -m`
    sys.path.insert(0, str(REPO_ROOT))

from benchmarks import chaos, chaos_app  # noqa: E402

# One supervisor with exactly 2 workers. A short batch wait, so that low
# priority tasks do not sit claimed-but-idle for the default 2 s.
FLAGS = ["--min-workers", "2", "--base-workers", "2", "--max-workers", "2", "--concurrency", "4",
         "--scale-interval", "60", "--heartbeat-interval", "0.3", "--poll-interval", "0.2",
         "--shutdown-grace", "5", "--stuck-after", "15", "--batch-wait", "0.2"]
STAGE = 100
# Slow enough that a stage of 100 keeps 8 slots busy for a while: each fault
# then lands while tasks are running.
TASK_MS = 40.0


def test_sigkilled_workers_and_supervisor_lose_nothing_and_rerun_only_what_was_cut_off(dsn, tmp_path):
    query(dsn, chaos_app.RUNS_TABLE_SQL)
    planned = [chaos.Planned(p.cid, p.kind, p.priority, TASK_MS)
               for p in chaos.plan_tasks(3 * STAGE, random.Random(7))]
    conn = chaos.Conn(dsn, retry_s=10)
    fleet = chaos.Fleet(dsn, tmp_path, FLAGS)

    def logs(tail: int | None = 6000) -> str:
        return "\n".join(f"--- {s.log_path.name}\n{s.log_path.read_text(errors='replace')[-(tail or 0):]}"
                         for s in fleet.sups)

    def wait(predicate, what: str, timeout: float = 20.0):
        return wait_until(predicate, timeout=timeout, interval=0.02, message=what, details=logs)

    def live_workers(sup: chaos.Sup) -> list[int]:
        return [p for p in fleet.workers() if p in _children(sup)]

    def busy_worker(sup: chaos.Sup) -> int | None:
        """A worker of ``sup`` that holds a running task right now."""
        holders = {r["pid"] for r in conn.query(chaos.RUNNING_HOLDERS)}
        return next((p for p in live_workers(sup) if p in holders), None)

    def replaced(sup: chaos.Sup, killed: list[int]) -> bool:
        # One look: the pool is full again and none of it is a killed worker (a
        # worker just SIGKILLed may still look alive for a moment).
        live = live_workers(sup)
        return len(live) == 2 and not set(killed) & set(live)

    def open_tasks() -> int:
        return conn.query(chaos.OPEN_TASKS, (list(chaos_app.KINDS),))[0]["open"]

    try:
        sup = fleet.spawn()
        wait(lambda: len(live_workers(sup)) == 2, "2 workers")

        # Two SIGKILLs of a worker that is running tasks; the supervisor replaces each.
        killed = []
        for stage in range(2):
            chaos.enqueue(conn, planned[stage * STAGE:(stage + 1) * STAGE], max_attempts=DEFAULT_MAX_ATTEMPTS)
            pid = wait(lambda: busy_worker(sup), "a worker running tasks")
            fleet.kill_worker(pid)
            killed.append(pid)
            wait(lambda: replaced(sup, killed), "a replacement worker")

        # SIGKILL the supervisor mid-run: its workers stop by themselves; a new supervisor takes over.
        chaos.enqueue(conn, planned[2 * STAGE:], max_attempts=DEFAULT_MAX_ATTEMPTS)
        wait(lambda: busy_worker(sup), "a worker running tasks")
        sup.killed = True
        sup.proc.send_signal(signal.SIGKILL)
        sup.proc.wait(10)
        fleet.spawn()

        wait(lambda: open_tasks() == 0, "every task to be final", timeout=30.0)
        stopped = fleet.stop(timeout_s=20.0)
        assert stopped["leftover_workers"] == [], "workers outlived their supervisor"
        assert stopped["exit_codes"] == [0]

        outcome = chaos.analyse(conn, expected=len(planned))
        assert outcome["enqueued"] == len(planned) and outcome["enqueued_twice"] == 0
        assert outcome["lost"] == 0, outcome["examples"]["lost"]
        assert outcome["succeeded"] == len(planned), outcome["by_status"]
        assert outcome["phantom_runs"] == 0
        # A task may run twice only if its first run was cut off: then it was claimed again.
        twice = query(dsn, """
            SELECT t.id, t.attempts, count(*) AS runs FROM angela_queue.tasks t
            JOIN public.chaos_runs r ON r.cid = (t.payload->>'cid')::bigint
            GROUP BY t.id, t.attempts HAVING count(*) > 1""")
        assert all(r["attempts"] > 1 for r in twice), twice
        assert outcome["ran_more_than_once_unexplained"] == 0
        log = logs(tail=None)
        assert log.count("was killed by SIGKILL") == 2
        assert "Traceback" not in log
    finally:
        fleet.kill_all()
        conn.close()


def _children(sup: chaos.Sup) -> set[int]:
    import psutil
    try:
        return {c.pid for c in psutil.Process(sup.pid).children()}
    except psutil.NoSuchProcess:
        return set()
