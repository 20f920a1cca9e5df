"""Hostile invocations and settings: one line for every mistake, settings that reach
the workers whole, and a terminal that no queue name can steer."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import textwrap
import threading

import pytest

from angela_queue import Client, QueueFull
from fix_procs import APP_PRELUDE, RUNS_TABLE_SQL, SupervisorProcess, query, scalar, wait_until

FAST = ["--poll-interval", "0.2", "--heartbeat-interval", "0.5"]

APP = APP_PRELUDE + """
import asyncio, time
from angela_queue import task

@task("canary")
def canary(n):
    record(n)

@task("collect", batch=True)
def collect(payloads):
    for p in payloads:
        record(p["n"])
    return [p["n"] * 10 for p in payloads]

@task("slow_batch", batch=True)
async def slow_batch(payloads):
    await asyncio.sleep(max(p.get("sleep", 0) for p in payloads))
    return "done"
"""


def cli(*args: str, cwd=None, env=None, timeout: float = 60) -> subprocess.CompletedProcess:
    full_env = {k: v for k, v in os.environ.items() if k not in ("ANGELA_QUEUE_DSN", "DATABASE_URL")}
    full_env.update(env or {})
    return subprocess.run([sys.executable, "-m", "angela_queue", *args], cwd=cwd, capture_output=True, text=True,
                          timeout=timeout, env=full_env)


def one_line(out: subprocess.CompletedProcess) -> str:
    lines = out.stderr.strip().splitlines()
    assert out.returncode != 0 and len(lines) == 1 and "Traceback" not in out.stderr, out.stderr
    return lines[0]


# --- one line per mistake ----------------------------------------------------------------

def test_a_worker_without_handlers_refuses_to_start(dsn, app_dir):
    (app_dir / "empty_app.py").write_text("X = 1\n")
    assert "no --app given" in one_line(cli("--dsn", dsn, "worker", cwd=app_dir))
    assert "registered no @task handlers" in one_line(cli("--dsn", dsn, "worker", "--app", "empty_app", cwd=app_dir))
    assert scalar(dsn, "SELECT count(*) FROM angela_queue.workers") == 0


def test_an_app_that_raises_at_import_is_one_line_and_v_shows_the_traceback(dsn, app_dir):
    (app_dir / "raising_app.py").write_text(textwrap.dedent("""
        import os
        x = 1
        raise ZeroDivisionError("at import")
    """))
    line = one_line(cli("--dsn", dsn, "worker", "--app", "raising_app", cwd=app_dir))
    assert line == "Error: --app raising_app failed to import: ZeroDivisionError: at import (raising_app.py, line 4)"
    verbose = cli("-v", "--dsn", dsn, "worker", "--app", "raising_app", cwd=app_dir)
    assert verbose.returncode != 0 and "Traceback" in verbose.stderr and "raising_app.py" in verbose.stderr
    missing = one_line(cli("--dsn", dsn, "worker", "--app", "nosuchmodule", cwd=app_dir))
    assert missing.count("nosuchmodule") == 1, missing


def test_dsn_works_after_the_command_too(dsn):
    out = cli("migrate", "--dsn", dsn)
    assert out.returncode == 0, out.stderr
    out = cli("enqueue", "k", "--dsn", dsn, "--priority", "7")
    assert out.returncode == 0 and "queue=default priority=7" in out.stdout, out.stderr
    out = cli("status", "--dsn", dsn)
    assert out.returncode == 0 and "QUEUES" in out.stdout, out.stderr


# --- the terminal is the operator's --------------------------------------------------------

def test_status_and_errors_escape_control_characters_from_the_database(dsn, conn):
    evil_queue = "q\x1b]0;pwned\x07\x1b[2J"
    evil_kind = "k\x1b[31mred\x9b1m"
    conn.execute("INSERT INTO angela_queue.tasks (kind, queue) VALUES (%s, %s)", (evil_kind, evil_queue))
    conn.execute("UPDATE angela_queue.queues SET max_size = 1 WHERE name = %s", (evil_queue,))
    out = cli("status", "--dsn", dsn)
    assert out.returncode == 0, out.stderr
    for text in (out.stdout, out.stderr):
        assert "\x1b" not in text and "\x07" not in text and "\x9b" not in text
    assert "q\\x1b]0;pwned\\x07" in out.stdout            # shown, escaped: nothing hidden either
    assert "k\\x1b[31mred\\x9b1m" in out.stdout           # the unserved kind, named in TROUBLE
    full = cli("enqueue", "k", "--dsn", dsn, "--queue", evil_queue, "--priority", "9")
    assert "is full" in one_line(full) and "\x1b" not in full.stderr


# --- settings reach the workers whole ---------------------------------------------------------

def test_a_supervisor_built_in_python_hands_its_settings_to_its_workers(dsn, app_dir):
    (app_dir / "handoff_app.py").write_text(APP)
    script = textwrap.dedent(f"""
        import os, sys
        sys.path.insert(0, {str(app_dir)!r})
        import handoff_app
        from angela_queue import Settings
        from angela_queue.supervisor import Supervisor
        settings = Settings(dsn=os.environ["AQ_TEST_DSN"], app="handoff_app", min_workers=1, base_workers=1,
                            max_workers=1, dead_after_s=10.0, stuck_after_s=9.0, heartbeat_interval_s=0.5,
                            room_max_cpu_percent=101)
        sys.exit(Supervisor(settings).run())   # no environ given: the workers inherit this process's
    """)
    env = {**os.environ, "AQ_TEST_DSN": dsn, "PYTHONPATH": str(app_dir)}
    proc = subprocess.Popen([sys.executable, "-c", script], cwd=app_dir, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT)
    try:
        row = wait_until(lambda: query(dsn, "SELECT dead_after_s, stuck_after_s, kinds FROM angela_queue.workers"))[0]
        assert row["dead_after_s"] == 10 and row["stuck_after_s"] == 9
        assert set(row["kinds"]) == {"canary", "collect", "slow_batch"}
    finally:
        proc.terminate()
        proc.wait(30)


def test_a_variable_named_after_its_flag_reaches_the_workers(dsn, app_dir):
    (app_dir / "envapp.py").write_text(APP)
    sup = SupervisorProcess(dsn, app_dir, "envapp", ["--min-workers", "1", "--base-workers", "1",
                                                     "--max-workers", "1", *FAST],
                            {"ANGELA_QUEUE_DEAD_AFTER": "12", "ANGELA_QUEUE_STUCK_AFTER_S": "13",
                             "ANGELA_QUEUE_ROOM_MAX_CPU_PERCENT": "101"})
    try:
        row = wait_until(lambda: query(dsn, "SELECT dead_after_s, stuck_after_s FROM angela_queue.workers"),
                         details=sup.log)[0]
        assert (row["dead_after_s"], row["stuck_after_s"]) == (12, 13)   # the new name, and the old alias
        assert sup.stop() == 0
    finally:
        sup.cleanup()


def test_a_profile_bound_says_it_outlives_the_supervisor_and_drops_are_visible(dsn, app_dir, caplog):
    (app_dir / "boundapp.py").write_text(APP)
    sup = SupervisorProcess(dsn, app_dir, "boundapp", ["--min-workers", "1", "--base-workers", "1",
                                                       "--max-workers", "1", "--max-queue-size", "0", *FAST],
                            {"ANGELA_QUEUE_ROOM_MAX_CPU_PERCENT": "101"})
    try:
        wait_until(lambda: "stays after this supervisor exits" in sup.log(), details=sup.log)
        assert "bounded to max_size 0" in sup.log()
        assert sup.stop() == 0
    finally:
        sup.cleanup()
    with caplog.at_level(logging.WARNING, logger="angela_queue.client"), Client(dsn) as client:
        dropped = client.enqueue("canary", {"n": 1}, priority=2)
        with pytest.raises(QueueFull):
            Client(dsn, full_queue_wait_s=0).enqueue("canary", {"n": 2}, priority=6)
    assert dropped.dropped
    assert any("dropped" in r.getMessage() and str(dropped.id) in r.getMessage() for r in caplog.records)
    out = cli("status", "--dsn", dsn)
    assert "1 task(s) dropped in queue 'default' in the last hour" in out.stdout, out.stdout


# --- batches and bulk enqueue -----------------------------------------------------------------

def test_a_batch_handler_gets_a_list_at_any_priority_and_batch_size(dsn, client, write_app, start_worker):
    query(dsn, RUNS_TABLE_SQL)
    app = write_app(APP)
    high = client.enqueue("collect", {"n": 1}, priority=7)
    low = client.enqueue("collect", {"n": 2}, priority=2)
    worker = start_worker(app, "--batch-size", "1", *FAST)
    for task, result in ((high, 10), (low, 20)):
        row = wait_until(lambda t=task: query(dsn, "SELECT * FROM angela_queue.tasks WHERE id = %s AND status "
                                                   "IN ('succeeded', 'failed')", (t.id,)), details=worker.log)[0]
        assert (row["status"], row["result"], row["attempts"]) == ("succeeded", result, 1), row["last_error"]
    assert worker.stop() == 0


def test_each_task_keeps_its_own_timeout_in_a_batch(dsn, client, write_app, start_worker):
    app = write_app(APP)
    tight, loose = client.enqueue_many([
        {"kind": "slow_batch", "payload": {"sleep": 0.6}, "priority": 2, "timeout": 0.2, "max_attempts": 1},
        {"kind": "slow_batch", "payload": {"sleep": 0.6}, "priority": 2, "timeout": 5, "max_attempts": 1}])
    worker = start_worker(app, "--batch-wait", "0.5", *FAST)
    wait_until(lambda: scalar(dsn, "SELECT count(*) FROM angela_queue.tasks WHERE status IN ('succeeded', "
                                   "'failed')") == 2, details=worker.log)
    rows = {r["id"]: r for r in query(dsn, "SELECT * FROM angela_queue.tasks")}
    assert rows[tight.id]["status"] == "failed" and "timed out after 0.2s" in rows[tight.id]["last_error"]
    assert rows[loose.id]["status"] == "succeeded" and rows[loose.id]["result"] == "done"
    assert worker.stop() == 0


def test_overlapping_bulk_enqueues_in_opposite_orders_never_deadlock(dsn):
    keys = [f"key-{i}" for i in range(2000)]
    for round_ in range(3):
        errors: list[BaseException] = []
        gate = threading.Barrier(2)

        def enqueue(order: list[str]) -> None:
            try:
                with Client(dsn) as client:
                    gate.wait()
                    client.enqueue_many([{"kind": "k", "payload": {"r": round_}, "dedup_key": f"{round_}-{k}"}
                                         for k in order])
            except BaseException as exc:  # noqa: BLE001 - reported below
                errors.append(exc)

        threads = [threading.Thread(target=enqueue, args=(o,)) for o in (keys, list(reversed(keys)))]
        for t in threads:
            t.start()
        for t in threads:
            t.join(120)
        assert not errors, errors
    assert scalar(dsn, "SELECT count(*) FROM angela_queue.tasks") == 3 * 2000
