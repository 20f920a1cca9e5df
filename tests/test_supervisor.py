"""The supervisor with real processes, real signals and a real database.

Each test starts ``python -m angela_queue run`` on a test app written to
tmp_path, and waits on conditions with deadlines (never a fixed sleep as
synchronisation). Handlers append one line per execution to a file opened
with O_APPEND, so tests count executions without trusting the queue.

The outage tests drive one Supervisor object in-process instead: its clock of
database health is set directly and the rows backdated, so nothing sleeps.
"""

from __future__ import annotations

import collections
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable
from pathlib import Path

import pytest

from angela_queue import db
from angela_queue.supervisor import run as supervisor_mod
from angela_queue.config import Settings
from angela_queue import statements as st
from fix_procs import SupervisorProcess, alive, wait_until

APP = '''
import os
import time

from angela_queue import task

HERE = os.path.dirname(os.path.abspath(__file__))
EXECUTIONS = os.path.join(HERE, "executions.log")


def record(kind, n):
    # One write(2) of a short line on an O_APPEND file: atomic across processes.
    fd = os.open(EXECUTIONS, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    try:
        os.write(fd, f"{kind} {n} {os.getpid()}\\n".encode())
    finally:
        os.close(fd)


@task("nap")
def nap(n=0, s=0.0):
    record("nap", n)
    time.sleep(s)
    return n


@task("hang")
def hang(n=0):
    record("hang", n)
    time.sleep(3600)


@task("slow_once")
def slow_once(n=0):
    """Hangs the first time (so a test can kill its worker), returns at once after."""
    record("slow_once", n)
    marker = os.path.join(HERE, f"slow_once-{n}.started")
    if os.path.exists(marker):
        return "second run"
    open(marker, "w").close()
    time.sleep(3600)
'''

# Fast clocks for tests. The CPU room rule is off (> 100%): on a shared
# 2-core test machine, worker start-up alone can saturate the CPU.
FAST = ["--heartbeat-interval", "0.3", "--poll-interval", "0.2", "--shutdown-grace", "5"]
ENV = {"ANGELA_QUEUE_ROOM_MAX_CPU_PERCENT": "101"}


class Supervisor(SupervisorProcess):
    """`angela-queue run --app testapp` under test, with the room rule off."""

    def __init__(self, dsn: str, cwd: Path, args: list[str], env: dict[str, str], name: str):
        super().__init__(dsn, cwd, "testapp", args, {**ENV, **env}, name)


@pytest.fixture
def app_dir(tmp_path: Path) -> Path:
    (tmp_path / "testapp.py").write_text(APP)
    return tmp_path


@pytest.fixture
def start(dsn: str, app_dir: Path):
    started: list[Supervisor] = []

    def _start(*args: str, env: dict[str, str] | None = None) -> Supervisor:
        sup = Supervisor(dsn, app_dir, [*FAST, *args], env or {}, name=f"supervisor-{len(started)}")
        started.append(sup)
        return sup

    yield _start
    for sup in started:
        sup.cleanup()


def wait_for(predicate: Callable[[], object], timeout: float, what: str, *sups: Supervisor):
    return wait_until(predicate, timeout=timeout, interval=0.05, message=what,
                      details=lambda: "\n".join(f"--- {s.log_path.name}\n{s.log()[-6000:]}" for s in sups))


def enqueue(conn, kind: str, payloads: list[dict], **cols) -> list[int]:
    from psycopg.types.json import Jsonb
    max_attempts = cols.get("max_attempts", 5)
    rows = conn.execute(
        "INSERT INTO angela_queue.tasks (kind, payload, max_attempts) "
        "SELECT %s, p, %s FROM unnest(%s::jsonb[]) AS p RETURNING id",
        (kind, max_attempts, [Jsonb(p) for p in payloads])).fetchall()
    return [r["id"] for r in rows]


def count(conn, where: str, *params) -> int:
    return conn.execute(f"SELECT count(*) AS n FROM angela_queue.tasks WHERE {where}", params).fetchone()["n"]


def live_worker_rows(conn, supervisor_pid: int) -> list[dict]:
    return conn.execute(
        "SELECT w.* FROM angela_queue.workers w JOIN angela_queue.supervisors s ON s.id = w.supervisor_id "
        "WHERE s.pid = %s AND w.status IN ('idle', 'active', 'stopping') ORDER BY w.started_at",
        (supervisor_pid,)).fetchall()


def executions(app_dir: Path) -> list[tuple[str, int, int]]:
    path = app_dir / "executions.log"
    if not path.exists():
        return []
    out = []
    for line in path.read_text().splitlines():
        kind, n, pid = line.split()
        out.append((kind, int(n), int(pid)))
    return out


# --- scaling -----------------------------------------------------------------------------------

def test_scales_up_to_max_under_a_backlog_and_back_down_to_min_after_the_drain(conn, start):
    enqueue(conn, "nap", [{"n": i, "s": 0.05} for i in range(300)])
    sup = start("--min-workers", "1", "--base-workers", "1", "--max-workers", "3", "--scale-interval", "0.5")
    wait_for(lambda: len(sup.workers()) == 3 and len(live_worker_rows(conn, sup.pid)) == 3, 30,
             "3 workers (max) under the backlog", sup)
    assert count(conn, "status IN ('queued', 'running')") > 0        # reached max while work was waiting
    wait_for(lambda: count(conn, "status = 'succeeded'") == 300, 60, "the backlog to drain", sup)
    wait_for(lambda: len(sup.workers()) == 1 and len(live_worker_rows(conn, sup.pid)) == 1, 20,
             "the pool to shrink back to 1 (min)", sup)
    assert sup.stop() == 0
    log = sup.log()
    assert "scaling up from 1 to 2 worker(s): depth" in log and "scaling up from 2 to 3" in log
    assert "scaling down from 3 to 2 worker(s): depth 0 < 2" in log
    assert "retiring worker" in log and "idle" in log
    # Retired workers left gracefully: stopped rows, every task done exactly once.
    assert conn.execute("SELECT count(*) AS n FROM angela_queue.workers WHERE status <> 'stopped'").fetchone()["n"] == 0
    ran = collections.Counter(n for kind, n, pid in executions(sup.log_path.parent))
    assert len(ran) == 300 and set(ran.values()) == {1}


# --- dead and stuck workers --------------------------------------------------------------------

def test_a_sigkilled_worker_is_replaced_and_its_task_finished_by_another_with_attempt_2(conn, start, app_dir):
    [tid] = enqueue(conn, "slow_once", [{"n": 1}])
    sup = start("--min-workers", "2", "--base-workers", "2", "--max-workers", "2", "--scale-interval", "60")
    row = wait_for(lambda: conn.execute("SELECT t.worker_id, w.pid FROM angela_queue.tasks t JOIN angela_queue.workers w "
                                        "ON w.id = t.worker_id WHERE t.id = %s AND t.status = 'running'",
                                        (tid,)).fetchone(), 20, "the task to start", sup)
    wait_for(lambda: len(sup.workers()) == 2, 10, "both workers", sup)
    # Killed only once its handler has left its marker: killed before, the
    # second run would take itself for the first and hang.
    wait_for(lambda: (app_dir / "slow_once-1.started").exists(), 10, "the first run's marker", sup)
    os.kill(row["pid"], signal.SIGKILL)
    killed_at = time.monotonic()

    done = wait_for(lambda: conn.execute("SELECT * FROM angela_queue.tasks WHERE id = %s AND status = 'succeeded'",
                                         (tid,)).fetchone(), 15, "the task to finish elsewhere", sup)
    assert time.monotonic() - killed_at < 5, "the reclaim waited for a timeout"
    assert done["attempts"] == 2 and done["result"] == "second run"
    assert done["worker_id"] != row["worker_id"]
    wait_for(lambda: len(sup.workers()) == 2 and row["pid"] not in sup.workers(), 10, "a replacement", sup)
    dead = conn.execute("SELECT status FROM angela_queue.workers WHERE id = %s", (row["worker_id"],)).fetchone()
    assert dead["status"] == "dead"
    assert sup.stop() == 0
    assert "was killed by SIGKILL" in sup.log() and "reclaiming its tasks and starting a replacement" in sup.log()


def test_a_hanging_handler_is_detected_killed_and_reclaimed_until_its_attempts_are_spent(conn, start, app_dir):
    [tid] = enqueue(conn, "hang", [{"n": 7}], max_attempts=2)
    sup = start("--min-workers", "1", "--base-workers", "1", "--max-workers", "1", "--scale-interval", "60",
                "--stuck-after", "1")
    # Attempt 1 hangs -> stuck -> reclaimed (queued, attempt counted) -> a replacement takes it ->
    # attempt 2 hangs -> stuck -> reclaimed as failed: attempts spent, no endless loop.
    failed = wait_for(lambda: conn.execute("SELECT * FROM angela_queue.tasks WHERE id = %s AND status = 'failed'",
                                           (tid,)).fetchone(), 30, "the task to fail after 2 stuck attempts", sup)
    assert failed["attempts"] == 2
    assert "was stuck" in failed["last_error"] and "no progress" in failed["last_error"]
    hangers = {pid for kind, n, pid in executions(app_dir) if kind == "hang"}
    assert len(hangers) == 2                       # two different worker processes ran it
    wait_for(lambda: not any(alive(p) for p in hangers), 15, "both stuck workers to be killed", sup)
    wait_for(lambda: len(sup.workers()) == 1, 10, "a healthy replacement", sup)
    # Once reaped, an exited worker is no longer shown as stuck.
    wait_for(lambda: {r["status"] for r in conn.execute(
        "SELECT status FROM angela_queue.workers WHERE pid = ANY(%s)", (list(hangers),))} <= {"dead", "stopped"},
        5, "the killed workers' rows to be closed", sup)
    assert sup.stop() == 0
    log = sup.log()
    assert log.count("is stuck: no progress for") == 2
    assert "requeued task" in log and "failed task" in log


# --- shutdown ----------------------------------------------------------------------------------

def test_sigterm_finishes_or_releases_everything_and_leaves_no_process(conn, start):
    short = enqueue(conn, "nap", [{"n": i, "s": 0.3} for i in range(6)])
    [long] = enqueue(conn, "nap", [{"n": 100, "s": 30}])
    sup = start("--min-workers", "2", "--base-workers", "2", "--max-workers", "2", "--concurrency", "2",
                "--scale-interval", "60", "--shutdown-grace", "1")
    wait_for(lambda: conn.execute("SELECT 1 FROM angela_queue.tasks WHERE id = %s AND status = 'running'",
                                  (long,)).fetchone(), 20, "the long task to start", sup)
    workers = sup.workers()
    assert len(workers) == 2
    assert sup.stop(timeout=20) == 0
    assert count(conn, "status = 'running'") == 0
    assert not any(alive(p) for p in workers)
    released = conn.execute("SELECT status, attempts FROM angela_queue.tasks WHERE id = %s", (long,)).fetchone()
    assert released == {"status": "queued", "attempts": 0}        # released, attempt not counted
    assert count(conn, "id = ANY(%s) AND status IN ('succeeded', 'queued')", short) == len(short)
    assert conn.execute("SELECT status FROM angela_queue.supervisors").fetchone()["status"] == "stopped"
    assert conn.execute("SELECT count(*) AS n FROM angela_queue.workers WHERE status <> 'stopped'").fetchone()["n"] == 0
    assert conn.execute("SELECT count(*) AS n FROM angela_queue.leader").fetchone()["n"] == 0   # lease resigned


def test_workers_of_a_sigkilled_supervisor_exit_by_themselves(conn, start):
    enqueue(conn, "nap", [{"n": i, "s": 0.5} for i in range(4)])
    sup = start("--min-workers", "2", "--base-workers", "2", "--max-workers", "2", "--scale-interval", "60")
    wait_for(lambda: len(live_worker_rows(conn, sup.pid)) == 2 and count(conn, "status = 'running'") > 0, 20,
             "2 busy workers", sup)
    workers = sup.workers()
    sup.signal(signal.SIGKILL)
    sup.proc.wait(5)
    wait_for(lambda: not any(alive(p) for p in workers), 10, "the orphaned workers to exit", sup)
    # They stopped gracefully: nothing left running, rows stopped.
    assert count(conn, "status = 'running'") == 0
    assert conn.execute("SELECT count(*) AS n FROM angela_queue.workers WHERE status <> 'stopped'").fetchone()["n"] == 0


# --- several supervisors -----------------------------------------------------------------------

def test_two_supervisors_share_a_queue_run_nothing_twice_and_fail_over_the_lease(conn, start, app_dir):
    env = {"ANGELA_QUEUE_LEADER_LEASE_S": "1.5", "ANGELA_QUEUE_DEAD_AFTER_S": "3"}
    args = ["--min-workers", "2", "--base-workers", "2", "--max-workers", "2", "--concurrency", "2",
            "--scale-interval", "60"]
    a, b = start(*args, env=env), start(*args, env=env)
    wait_for(lambda: len(a.workers()) == 2 and len(b.workers()) == 2
             and len(live_worker_rows(conn, a.pid)) == 2 and len(live_worker_rows(conn, b.pid)) == 2, 20,
             "2 workers each", a, b)
    n = 400
    enqueue(conn, "nap", [{"n": i, "s": 0.005} for i in range(n)])
    wait_for(lambda: count(conn, "status = 'succeeded'") == n, 60, "the queue to drain", a, b)

    ran = [(num, pid) for kind, num, pid in executions(app_dir) if kind == "nap"]
    per_task = collections.Counter(num for num, pid in ran)
    assert len(per_task) == n and set(per_task.values()) == {1}, "a task ran twice"
    pids = {pid for num, pid in ran}
    assert pids & set(a.seen_workers) and pids & set(b.seen_workers), "both supervisors' workers took work"

    # Exactly one leader, and it is one of the two.
    sups = {r["pid"]: r["id"] for r in conn.execute("SELECT id, pid FROM angela_queue.supervisors").fetchall()}
    lease = conn.execute("SELECT holder FROM angela_queue.leader").fetchall()
    assert len(lease) == 1 and lease[0]["holder"] in (sups[a.pid], sups[b.pid])
    leader, other = (a, b) if lease[0]["holder"] == sups[a.pid] else (b, a)

    # The leader dies with SIGKILL: its workers exit, the other takes over the lease and, as the
    # new leader, marks the dead supervisor once its heartbeat is older than dead_after_s.
    leader_workers = leader.workers()
    leader.signal(signal.SIGKILL)
    wait_for(lambda: conn.execute("SELECT 1 FROM angela_queue.leader WHERE holder = %s AND expires_at > now()",
                                  (sups[other.pid],)).fetchone(), 10, "the other supervisor to take the lease",
             other)
    wait_for(lambda: not any(alive(p) for p in leader_workers), 10, "the dead leader's workers to exit", other)
    wait_for(lambda: conn.execute("SELECT status FROM angela_queue.supervisors WHERE id = %s",
                                  (sups[leader.pid],)).fetchone()["status"] == "dead", 15,
             "the new leader to mark the old one dead", other)
    assert "is now the maintenance leader" in other.log()
    assert other.stop() == 0


def test_the_supervisor_rides_out_a_lost_database_connection(conn, start):
    sup = start("--min-workers", "1", "--base-workers", "1", "--max-workers", "1", "--scale-interval", "60")
    [worker] = wait_for(lambda: live_worker_rows(conn, sup.pid), 20, "a worker", sup)
    cut = conn.execute(
        "SELECT now() AS t, count(pg_terminate_backend(pid)) AS n FROM pg_stat_activity "
        "WHERE datname = current_database() AND application_name LIKE 'angela-queue-supervisor-%%'").fetchone()
    assert cut["n"] == 1
    wait_for(lambda: conn.execute("SELECT 1 FROM angela_queue.supervisors WHERE pid = %s AND last_heartbeat > %s",
                                  (sup.pid, cut["t"])).fetchone(), 10, "heartbeats after reconnecting", sup)
    assert "database connection lost" in sup.log() and "reconnected to the database" in sup.log()
    assert sup.workers() == [worker["pid"]]          # the worker kept running meanwhile
    assert sup.stop() == 0


# --- database outages --------------------------------------------------------------------------

def test_the_healthy_stretch_restarts_at_a_reconnect_and_at_a_stalled_round_trip_only(dsn):
    sup = supervisor_mod.Supervisor(Settings(dsn=dsn, min_workers=1, base_workers=1, max_workers=1,
                                             heartbeat_interval_s=2.0))
    health = sup.db_health
    health.healthy_since = 100.0
    health.round_trip(140.0, 140.5)                                   # a quick round trip
    assert health.healthy_for(now=140.5) == pytest.approx(40.5)
    # Our own loop being slow (a gap between round trips) is not the database being away.
    health.round_trip(150.0, 150.2)
    assert health.healthy_for(now=150.2) == pytest.approx(50.2)
    # One round trip that hung 30 s (a partition the connection survived): start again.
    health.round_trip(151.0, 181.0)
    assert health.healthy_for(now=181.0) == 0.0
    assert health.healthy_for(now=185.1) == pytest.approx(4.1)

    # A reconnect starts a stretch, and every statement on the connection is timed.
    before = time.monotonic()
    assert sup._db_ready(time.monotonic())
    try:
        assert before <= health.healthy_since <= time.monotonic()
        health.stall_s = 0.15                        # rather than waiting out a real heartbeat interval
        since = health.healthy_since
        sup.conn.execute("SELECT 1")
        assert health.healthy_since == since         # a quick statement: the stretch goes on
        sup.conn.execute("SELECT pg_sleep(0.3)")     # a stall, as the supervisor sees it
        assert health.healthy_since >= since + 0.3
    finally:
        sup.conn.close()


def test_own_workers_are_not_judged_stuck_across_a_database_outage(dsn, conn):
    settings = Settings(dsn=dsn, min_workers=1, base_workers=1, max_workers=1, heartbeat_interval_s=2.0,
                        stuck_after_s=60.0, dead_after_s=30.0)
    sup = supervisor_mod.Supervisor(settings, handler_timeout=lambda kind: None)
    sup.conn = sup.db_health.watch(db.connect(dsn))
    silent, beating = uuid.uuid4(), uuid.uuid4()
    try:
        for wid in (silent, beating):
            db.fetch_all(conn, "workers_register", {
                "id": wid, "supervisor_id": sup.id, "host": "test", "pid": 1, "queues": ["default"],
                "concurrency": 1, "stuck_after_s": 60, "dead_after_s": 30, "kinds": []})
            proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
            sup.children[wid] = supervisor_mod.Child(wid, proc, time.monotonic())
        tasks = {}
        for wid in (silent, beating):
            enqueue(conn, "nap", [{"n": 1}])
            [row] = db.fetch_all(conn, st.claim(worker_id=wid, queues=["default"], limit=1))
            tasks[wid] = row["id"]
        # A 100 s outage: no heartbeat and no progress could be written; every row looks dead and stuck.
        conn.execute("UPDATE angela_queue.workers SET last_heartbeat = now() - interval '100 seconds', "
                     "last_active = now() - interval '100 seconds'")
        conn.execute("UPDATE angela_queue.tasks SET started_at = now() - interval '100 seconds'")

        def status(wid):
            return conn.execute("SELECT status FROM angela_queue.tasks WHERE id = %s",
                                (tasks[wid],)).fetchone()["status"]

        sup.db_health.healthy_since = time.monotonic() - 5          # we reconnected 5 s ago
        sup._watch_health()
        assert all(c.stuck is None and c.proc.poll() is None for c in sup.children.values())
        assert status(silent) == status(beating) == "running"

        # One worker beats again, and its row still shows no progress for 100 s: that is real, judge it.
        assert db.fetch_all(conn, "workers_heartbeat", {
            "id": beating, "status": "active", "current_tasks": [tasks[beating]], "tasks_completed": 0,
            "tasks_failed": 0, "avg_processing_time_ms": 0, "last_active": None})
        sup._watch_health()
        assert sup.children[beating].stuck.startswith("no progress")
        assert status(beating) == "queued"
        assert sup.children[silent].stuck is None and status(silent) == "running"

        # The other never beats: after dead_after_s of reachable database it is judged too.
        sup.db_health.healthy_since = time.monotonic() - 31
        sup._watch_health()
        assert sup.children[silent].stuck.startswith("no heartbeat")
        assert status(silent) == "queued"
    finally:
        for child in sup.children.values():
            child.proc.kill()
            child.proc.wait(10)
        sup.conn.close()


# --- configuration -----------------------------------------------------------------------------

def test_profile_and_flag_overrides_are_applied(conn, start):
    # Profile low: base 2, min 2, max 4, max queue 20, every 300 s; flags override base and max.
    sup = start("--profile", "low", "--base-workers", "3", "--max-workers", "3", "--queue", "q1")
    wait_for(lambda: len(sup.workers()) == 3 and len(live_worker_rows(conn, sup.pid)) == 3, 20,
             "3 workers (the --base-workers override)", sup)
    sizes = {r["name"]: r["max_size"] for r in conn.execute("SELECT name, max_size FROM angela_queue.queues")}
    assert sizes["q1"] == 20          # the profile's max queue size, on the queue served
    assert sizes["default"] is None   # a queue it does not serve is left alone
    row = conn.execute("SELECT queues, workers_target FROM angela_queue.supervisors").fetchone()
    assert row == {"queues": ["q1"], "workers_target": 3}
    assert sup.stop() == 0
    assert "workers min 2, base 3, max 3; scale every 300s" in sup.log() and "profile low" in sup.log()


def test_run_rejects_a_missing_or_broken_app_with_one_clear_line(dsn, app_dir):
    (app_dir / "broken.py").write_text("raise RuntimeError('boom at import')\n")
    for args, expected in ((["run"], "--app MODULE is required"),
                           (["run", "--app", "broken"],
                            "--app broken failed to import: RuntimeError: boom at import (broken.py, line 1)"),
                           (["run", "--app", "nosuchmodule"], "--app nosuchmodule: no such module"),
                           (["run", "--app", "testapp", "--profile", "low", "--max-workers", "1"],
                            "--min-workers (2) exceeds --max-workers (1)"),
                           (["run", "--app", "testapp", "--heartbeat-interval", "40"],
                            "--heartbeat-interval 40 is too long for --dead-after 30")):
        out = subprocess.run([sys.executable, "-m", "angela_queue", "--dsn", dsn, *args], cwd=app_dir,
                             capture_output=True, text=True, timeout=30)
        assert out.returncode != 0
        assert expected in out.stderr and "Traceback" not in out.stderr, out.stderr
        assert len(out.stderr.strip().splitlines()) == 1, out.stderr


def test_supervisor_id_is_unique_per_run(conn, start):
    sup = start("--min-workers", "1", "--base-workers", "1", "--max-workers", "1")
    wait_for(lambda: live_worker_rows(conn, sup.pid), 20, "a worker", sup)
    [row] = conn.execute("SELECT id, host, pid, status FROM angela_queue.supervisors").fetchall()
    assert isinstance(row["id"], uuid.UUID) and row["pid"] == sup.pid and row["status"] == "running"
    assert sup.stop() == 0
