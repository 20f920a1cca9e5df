"""The quick start: enqueue a mix of tasks, supervise workers until the queue
drains, and show what happened to each task.

    python examples/quickstart.py

With no ANGELA_QUEUE_DSN or DATABASE_URL it uses the embedded Postgres that
angela-queue starts by itself.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import psycopg
from psycopg.rows import dict_row

from angela_queue import Client, migrations
from angela_queue.config import dsn_from_env

import handlers  # noqa: F401  registers the kinds, so enqueues take their @task defaults

ROOT = Path(__file__).resolve().parent.parent


def main() -> int:
    dsn = dsn_from_env()
    if dsn is None:
        from angela_queue import embedded
        print("no DSN given: starting the embedded Postgres ...")
        dsn = embedded.ensure_running()
    migrations.upgrade(dsn)

    with Client(dsn) as client:
        first_id = client.enqueue_many([
            {"kind": "chat_reply", "payload": {"text": "hello!"}},
            {"kind": "chat_reply", "payload": {"text": "URGENT: can you help me?", "emotional": True}},
            {"kind": "send_email", "payload": {"to": "ada@example.com", "subject": "welcome"}, "priority": 9},
            {"kind": "flaky", "payload": {"n": 1}, "priority": 5},
            *[{"kind": "learning_analysis", "payload": {"text": "x" * i}, "priority": 2} for i in range(1, 8)],
        ])[0].id

        print("starting the supervisor: angela-queue run --app examples.handlers ...")
        env = {**os.environ, "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", "")}
        supervisor = subprocess.Popen(
            [sys.executable, "-m", "angela_queue", "--log-level", "WARNING", "--dsn", dsn, "run",
             "--app", "examples.handlers", "--min-workers", "2", "--base-workers", "2", "--max-workers", "2",
             "--concurrency", "4", "--batch-wait", "0.5"],
            cwd=ROOT, env=env)
        try:
            rows = wait_for_drain(dsn, first_id)
        finally:
            supervisor.send_signal(signal.SIGTERM)
            supervisor.wait(60)

    print(f"\n{'id':>4}  {'kind':<18} {'prio':>4} {'boost':>5}  {'tier':<8} {'status':<10} {'tries':>5}  result / error")
    for r in rows:
        outcome = r["result"] if r["status"] == "succeeded" else (r["last_error"] or "").splitlines()[0]
        print(f"{r['id']:>4}  {r['kind']:<18} {r['priority']:>4} {r['boost']:>5}  {r['tier']:<8} "
              f"{r['status']:<10} {r['attempts']:>5}  {outcome}")
    print("\nInspect more with:  angela-queue status   or   SELECT * FROM angela_queue.queue_depth;")
    return 0


def wait_for_drain(dsn: str, first_id: int, timeout_s: float = 120) -> list[dict]:
    deadline = time.monotonic() + timeout_s
    with psycopg.connect(dsn, autocommit=True, row_factory=dict_row) as conn:
        while True:
            rows = conn.execute(
                "SELECT id, kind, priority, boost, tier, status, attempts, result, last_error "
                "FROM angela_queue.tasks WHERE id >= %s ORDER BY id", (first_id,)).fetchall()
            if all(r["status"] in ("succeeded", "failed", "cancelled", "dropped") for r in rows):
                return rows
            if time.monotonic() > deadline:
                raise SystemExit("the queue did not drain in time; see `angela-queue status`")
            time.sleep(0.2)


if __name__ == "__main__":
    sys.exit(main())
