"""Chaos: SIGKILL workers and supervisors, and restart Postgres, while thousands of tasks run.

    python -m benchmarks.chaos [--tasks N] [--duration-cap S] [--quick] [--seed N] [--max-down S]
                               [--dsn ADMIN_DSN]

By default the run starts a throwaway PostgreSQL of its own
(``angela_queue.embedded.EmbeddedServer`` in a temporary directory), so that
it may stop, crash and restart it; the server is stopped and deleted at the
end, even after an error or Ctrl-C. ``--dsn`` runs on another server instead
(in a uniquely named database, dropped at the end) and then never restarts
Postgres.

Real ``angela-queue run --app benchmarks.chaos_app`` supervisors work the
tasks. Each execution is recorded by the handler in ``public.chaos_runs``
before it returns (benchmarks/chaos_app.py). On a seeded random schedule the
run SIGKILLs a worker (preferably one holding running tasks), SIGKILLs a
supervisor and starts a new one, or restarts Postgres (a fast stop, or an
immediate stop that needs crash recovery, then a start), until every task is
final or the cap passes. A restart runs beside the other faults, so workers
and supervisors also die while the database is away. It then counts, from
the rows and the side table:

- lost: not final at the end, or final without a single recorded execution;
- run more than once, and how many of those were cut off mid-run (their
  task was reclaimed: ``attempts > 1``, or a ``last_error`` naming a reclaim).

The target is 0 lost, and every task that ran twice among those cut off.
It reports figures and never asserts a timing. The exit status is 1 if a
task was lost or ran twice without having been cut off (or the cap passed),
2 if the run itself failed, 130 if it was interrupted.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # `python benchmarks/chaos.py`
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    __package__ = "benchmarks"

import psutil  # noqa: E402
import psycopg  # noqa: E402
from psycopg.rows import dict_row  # noqa: E402
from psycopg.types.json import Jsonb  # noqa: E402

from angela_queue.config import DEFAULT_MAX_ATTEMPTS  # noqa: E402
from benchmarks import chaos_app  # noqa: E402
from benchmarks.harness import REPO_ROOT, RESULTS_DIR, BenchDB, child_env, machine_info  # noqa: E402
from benchmarks.run import fmt, log, table  # noqa: E402

APP = "benchmarks.chaos_app"
FINAL = ("succeeded", "failed", "cancelled", "dropped")

# (quick, full)
SIZES = {
    "tasks": (600, 5_000),
    "feed_s": (10.0, 60.0),          # the tasks after the first fifth arrive over this long
    "duration_cap_s": (180.0, 900.0),
    "fault_every_s": ((1.0, 2.5), (1.0, 3.0)),
}
UPFRONT_SHARE = 0.2                  # enqueued before the first fault, as a backlog
FEED_EVERY_S = 0.5
CHECK_EVERY_S = 0.5
PROGRESS_EVERY_S = 5.0
TICK_S = 0.05
# A supervisor that exits by itself (it cannot start while Postgres is away)
# is started again after this long, as a process manager would.
RESPAWN_AFTER_S = 1.0

# Which fault, how often (Postgres restarts only on the run's own server).
FAULT_WEIGHTS = {"kill_worker": 0.55, "kill_supervisor": 0.2, "restart_postgres": 0.25}
# A restart keeps Postgres down between 0 and this many seconds (uniform)
# between the stop and the start (--max-down).
MAX_DOWN_S = 2.0

# The supervisors: fast clocks, so that reclaims, lease hand-overs and scaling
# all happen many times within a few minutes.
SUPERVISOR_FLAGS = ["--min-workers", "2", "--base-workers", "2", "--max-workers", "3", "--concurrency", "4",
                    "--scale-interval", "1", "--heartbeat-interval", "0.5", "--stuck-after", "15",
                    "--shutdown-grace", "5", "--poll-interval", "0.5"]
SUPERVISOR_ENV = {
    # The leader declares a worker lost after this long without a heartbeat
    # (default 30 s). Above the longest outage of the default --max-down, so
    # that a restart alone does not make every worker look dead; a larger
    # --max-down exercises exactly that.
    "ANGELA_QUEUE_DEAD_AFTER_S": "6",
    "ANGELA_QUEUE_LEADER_LEASE_S": "3",
    # On 2 cores the machine is always "busy": keep the CPU room rule from
    # freezing the pool, so scaling is exercised too.
    "ANGELA_QUEUE_ROOM_MAX_CPU_PERCENT": "101",
}

# last_error of a task taken back from a worker that died, stalled or vanished
# (sql/maintenance.sql). A success clears last_error; then attempts > 1 tells.
RECLAIM_ERROR = re.compile(r"was killed|was lost|was stuck|exited|retired|reclaim", re.I)


class ChaosError(RuntimeError):
    pass


# --- the run's own connection -------------------------------------------------

class Conn:
    """The suite's connection to the chaos database. It reconnects after a
    restart and retries a statement until ``retry_s`` passes, so only
    idempotent statements go through it."""

    def __init__(self, dsn: str, retry_s: float = 120.0):
        self.dsn = dsn
        self.retry_s = retry_s
        self._conn: psycopg.Connection | None = None

    def query(self, sql: str, params: Any = None) -> list[dict[str, Any]]:
        deadline = time.monotonic() + self.retry_s
        while True:
            try:
                if self._conn is None or self._conn.closed:
                    self._conn = psycopg.connect(self.dsn, autocommit=True, row_factory=dict_row,
                                                 connect_timeout=3, application_name="aq-chaos-suite")
                cur = self._conn.execute(sql, params)
                return cur.fetchall() if cur.description else []
            except psycopg.OperationalError:
                self.close()
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.2)

    def scalar(self, sql: str, params: Any = None) -> Any:
        rows = self.query(sql, params)
        return next(iter(rows[0].values())) if rows else None

    def close(self) -> None:
        if self._conn is not None:
            try:
                self._conn.close()
            except Exception:  # noqa: BLE001
                pass
        self._conn = None


# --- the tasks ----------------------------------------------------------------

@dataclass(frozen=True)
class Planned:
    cid: int
    kind: str
    priority: int
    ms: float


def plan_tasks(n: int, rng: random.Random) -> list[Planned]:
    """Mixed priorities 1-10; sync, async and (low priority only) batch handlers; 1-20 ms of work."""
    out = []
    for cid in range(1, n + 1):
        priority = rng.randint(1, 10)
        if priority < 5 and rng.random() < 0.5:
            kind = chaos_app.BATCH
        else:
            kind = rng.choice((chaos_app.SYNC, chaos_app.ASYNC))
        out.append(Planned(cid, kind, priority, round(rng.uniform(1.0, 20.0), 1)))
    return out


# Idempotent, so Conn may retry it: a chunk whose COMMIT was cut by a restart
# may or may not have landed, and the NOT IN inserts only what is missing.
ENQUEUE = """
INSERT INTO angela_queue.tasks (kind, priority, payload, max_attempts)
SELECT x.kind, x.priority, x.payload, %(max_attempts)s
FROM unnest(%(kinds)s::text[], %(priorities)s::int[], %(payloads)s::jsonb[], %(cids)s::bigint[])
     AS x(kind, priority, payload, cid)
WHERE x.cid NOT IN (SELECT (t.payload->>'cid')::bigint FROM angela_queue.tasks t
                    WHERE t.kind = ANY(%(all_kinds)s::text[]))
"""


def enqueue(conn: Conn, tasks: list[Planned], max_attempts: int) -> None:
    if not tasks:
        return
    conn.query(ENQUEUE, {"max_attempts": max_attempts, "kinds": [t.kind for t in tasks],
                         "priorities": [t.priority for t in tasks],
                         "payloads": [Jsonb({"cid": t.cid, "ms": t.ms}) for t in tasks],
                         "cids": [t.cid for t in tasks], "all_kinds": list(chaos_app.KINDS)})


OPEN_TASKS = """
SELECT count(*) AS total, count(*) FILTER (WHERE status NOT IN ('succeeded', 'failed', 'cancelled', 'dropped')) AS open
FROM angela_queue.tasks WHERE kind = ANY(%s::text[])
"""


# --- counting -----------------------------------------------------------------

TASKS_AND_RUNS = """
SELECT t.id, (t.payload->>'cid')::bigint AS cid, t.kind, t.priority, t.status, t.attempts, t.max_attempts,
       t.last_error, coalesce(r.runs, 0) AS runs, r.pids, r.run_times
FROM angela_queue.tasks t
LEFT JOIN (SELECT cid, count(*) AS runs, array_agg(pid ORDER BY started_at) AS pids,
                  array_agg(to_char(started_at, 'HH24:MI:SS.MS') ORDER BY started_at) AS run_times
           FROM public.chaos_runs GROUP BY cid) r ON r.cid = (t.payload->>'cid')::bigint
WHERE t.kind = ANY(%s::text[])
ORDER BY t.id
"""

PHANTOM_RUNS = """
SELECT count(DISTINCT r.cid) AS n FROM public.chaos_runs r
WHERE r.cid NOT IN (SELECT (t.payload->>'cid')::bigint FROM angela_queue.tasks t WHERE t.kind = ANY(%s::text[]))
"""


def cut_off(row: dict[str, Any]) -> bool:
    """Whether the task was taken back from a worker while it ran (so a second run is allowed)."""
    return row["attempts"] > 1 or bool(RECLAIM_ERROR.search(row["last_error"] or ""))


def _example(row: dict[str, Any]) -> dict[str, Any]:
    return {k: row[k] for k in ("id", "cid", "kind", "priority", "status", "attempts", "max_attempts", "runs",
                                "pids", "run_times")} | {"last_error": (row["last_error"] or "")[:300] or None}


def analyse(conn: Conn, expected: int | None = None) -> dict[str, Any]:
    """Tasks lost and run twice, from the task rows and the handlers' side table."""
    rows = conn.query(TASKS_AND_RUNS, (list(chaos_app.KINDS),))
    by_status: dict[str, int] = {}
    for r in rows:
        by_status[r["status"]] = by_status.get(r["status"], 0) + 1
    cids = [r["cid"] for r in rows]
    not_final = [r for r in rows if r["status"] not in FINAL]
    never_ran = [r for r in rows if r["status"] in FINAL and r["runs"] == 0]
    lost = not_final + never_ran
    twice = [r for r in rows if r["runs"] > 1]
    twice_cut = [r for r in twice if cut_off(r)]
    unexplained = [r for r in twice if not cut_off(r)]
    out = {
        "enqueued": len(rows),
        "expected": expected,
        "missing_from_enqueue": (expected - len(set(cids))) if expected is not None else None,
        "enqueued_twice": len(cids) - len(set(cids)),
        "by_status": by_status,
        "succeeded": by_status.get("succeeded", 0),
        "failed": by_status.get("failed", 0),
        "lost": len(lost),
        "lost_not_final": len(not_final),
        "lost_final_never_ran": len(never_ran),
        "runs": sum(r["runs"] for r in rows),
        "ran_more_than_once": len(twice),
        "extra_runs": sum(r["runs"] - 1 for r in twice),
        "ran_more_than_once_cut_off": len(twice_cut),
        "ran_more_than_once_unexplained": len(unexplained),
        "reclaimed": sum(1 for r in rows if r["attempts"] > 1),
        "cut_off": sum(1 for r in rows if cut_off(r)),
        "runs_beyond_attempts": sum(1 for r in rows if r["runs"] > r["attempts"]),
        "max_attempts_seen": max((r["attempts"] for r in rows), default=0),
        "phantom_runs": conn.scalar(PHANTOM_RUNS, (list(chaos_app.KINDS),)),
        "examples": {
            "lost": [_example(r) for r in lost[:10]],
            "ran_more_than_once_unexplained": [_example(r) for r in unexplained[:10]],
            "ran_more_than_once_cut_off": [_example(r) for r in twice_cut[:5]],
            "failed": [_example(r) for r in rows if r["status"] == "failed"][:5],
        },
    }
    out["ok"] = (out["lost"] == 0 and out["ran_more_than_once_unexplained"] == 0 and not out["enqueued_twice"]
                 and not out["missing_from_enqueue"] and not out["phantom_runs"])
    return out


# --- processes ----------------------------------------------------------------

def supervisor_command(flags: list[str] = SUPERVISOR_FLAGS) -> list[str]:
    """A real supervisor, started the way users start one. Its DSN (which
    carries the embedded server's password) is in its environment,
    ANGELA_QUEUE_DSN: argv is readable by every local user."""
    return [sys.executable, "-m", "angela_queue", "--log-level", "WARNING", "run", "--app", APP, *flags]


def alive(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


@dataclass
class Sup:
    proc: subprocess.Popen
    log_path: Path
    started: float
    killed: bool = False

    @property
    def pid(self) -> int:
        return self.proc.pid


class Fleet:
    """The supervisors of the run, and every worker process they were seen to start."""

    def __init__(self, dsn: str, log_dir: Path, flags: list[str]):
        self.dsn = dsn
        self.log_dir = log_dir
        self.flags = flags
        self.env = child_env({**SUPERVISOR_ENV, "AQ_CHAOS_DSN": dsn, "ANGELA_QUEUE_DSN": dsn})
        self.sups: list[Sup] = []
        self.worker_pids: set[int] = set()

    def spawn(self) -> Sup:
        path = self.log_dir / f"supervisor-{len(self.sups)}.log"
        with open(path, "wb") as out:
            proc = subprocess.Popen(supervisor_command(self.flags), cwd=REPO_ROOT, env=self.env,
                                    stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        sup = Sup(proc, path, time.monotonic())
        self.sups.append(sup)
        return sup

    def live(self) -> list[Sup]:
        return [s for s in self.sups if s.proc.poll() is None]

    def workers(self) -> list[int]:
        """Live worker processes: children of live supervisors, and orphans still shutting down."""
        for sup in self.live():
            try:
                self.worker_pids.update(c.pid for c in psutil.Process(sup.pid).children())
            except psutil.NoSuchProcess:
                pass
        return sorted(p for p in self.worker_pids if alive(p))

    def kill_worker(self, pid: int) -> bool:
        """SIGKILL one worker process; False if it was already gone."""
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            return False
        return True

    def exited_unasked(self) -> list[Sup]:
        """Supervisors that exited without being killed by the run (each reported once)."""
        out = [s for s in self.sups if not s.killed and s.proc.poll() is not None]
        for s in out:
            s.killed = True
        return out

    def stop(self, timeout_s: float = 60.0) -> dict[str, Any]:
        """SIGTERM (graceful) every live supervisor; SIGKILL what is left after timeout_s;
        then wait for every worker ever seen to be gone."""
        self.workers()
        live = self.live()
        for s in live:
            s.proc.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + timeout_s
        codes = []
        for s in live:
            try:
                codes.append(s.proc.wait(max(0.1, deadline - time.monotonic())))
            except subprocess.TimeoutExpired:
                s.proc.kill()
                codes.append(s.proc.wait())
            s.killed = True
        leftover = []
        deadline = time.monotonic() + 30.0
        while [p for p in self.worker_pids if alive(p)] and time.monotonic() < deadline:
            time.sleep(0.1)
        for pid in self.worker_pids:
            if alive(pid):
                leftover.append(pid)
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
        return {"exit_codes": codes, "leftover_workers": leftover}

    def kill_all(self) -> None:
        """Last resort (an error, Ctrl-C): nothing we started outlives the run."""
        for s in self.sups:
            if s.proc.poll() is None:
                s.proc.kill()
                s.proc.wait()
        for pid in self.worker_pids:
            if alive(pid):
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass

    def log_counts(self) -> dict[str, int]:
        """How often the supervisors' and workers' logs said the notable things."""
        patterns = {
            "tracebacks": "Traceback (most recent call last)",
            "workers_reaped_after_sigkill": "was killed by SIGKILL",
            "reclaims_by_supervisor": "exited holding tasks",
            "reclaims_by_leader": "leader: reclaimed tasks",
            "workers_marked_dead_by_leader": "stopped heartbeating and are marked dead",
            "outcomes_refused_after_reclaim": "was reclaimed while it ran here",
            "claims_released_after_reconnect": "claimed during the connection loss",
            "db_connection_lost": "connection lost",
            "workers_given_up_on": "was marked stuck or dead",
            "stuck_workers": "is stuck:",
        }
        counts = {k: 0 for k in patterns}
        for s in self.sups:
            text = s.log_path.read_text(errors="replace") if s.log_path.exists() else ""
            for k, p in patterns.items():
                counts[k] += text.count(p)
        return counts


# --- the database server ------------------------------------------------------

class ThrowawayServer:
    """An embedded PostgreSQL in a temporary directory that the run may stop, crash and restart."""

    def __init__(self) -> None:
        from angela_queue.embedded import EmbeddedServer
        self.dir = Path(tempfile.mkdtemp(prefix="aq-chaos-pg-"))
        self.server = EmbeddedServer(self.dir)

    def start(self) -> str:
        return self.server.start()

    def restart(self, crash: bool, down_s: float) -> dict[str, Any]:
        began = time.monotonic()
        port = self.server.status()["port"]
        if crash:
            # SIGQUIT to the postmaster is an immediate shutdown: no checkpoint,
            # backends quit at once, and the next start runs crash recovery.
            pid = self.server.status()["pid"]
            if pid is not None:
                os.kill(pid, signal.SIGQUIT)
            deadline = time.monotonic() + 60
            while self.server.status()["running"]:
                if time.monotonic() > deadline:
                    raise ChaosError(f"postmaster {pid} did not exit after SIGQUIT")
                time.sleep(0.02)
        else:
            self.server.stop()
        stopped = time.monotonic()
        time.sleep(down_s)
        restarting = time.monotonic()
        self.server.start()
        if self.server.status()["port"] != port:
            # Every process holds the DSN with the old port: nothing could reconnect.
            raise ChaosError(f"the restarted server moved from port {port} to {self.server.status()['port']}")
        return {"mode": "crash" if crash else "fast", "stop_s": round(stopped - began, 2),
                "start_s": round(time.monotonic() - restarting, 2), "down_s": round(time.monotonic() - began, 2)}

    def delete(self, keep_log: Path | None = None) -> None:
        if keep_log is not None and self.server.log_file.exists():
            shutil.copy(self.server.log_file, keep_log)
        self.server.delete()
        shutil.rmtree(self.dir, ignore_errors=True)


# --- the faults ---------------------------------------------------------------

RUNNING_HOLDERS = """
SELECT DISTINCT w.pid FROM angela_queue.tasks t JOIN angela_queue.workers w ON w.id = t.worker_id
WHERE t.status = 'running'
"""


@dataclass
class Injector:
    """Draws and inflicts the faults. A Postgres restart runs in a thread of
    its own, so that workers and supervisors can also be killed while the
    database is away (their reclaims then wait for it to come back)."""

    rng: random.Random
    fleet: Fleet
    conn: Conn
    server: ThrowawayServer | None
    max_down_s: float = MAX_DOWN_S
    began: float = field(default_factory=time.monotonic)
    events: list[dict[str, Any]] = field(default_factory=list)
    _restart: threading.Thread | None = None
    _restart_error: BaseException | None = None

    def restarting(self) -> bool:
        """Whether Postgres is being restarted (the database may not answer)."""
        if self._restart_error is not None:
            raise ChaosError(f"restarting Postgres failed: {self._restart_error}")
        return self._restart is not None and self._restart.is_alive()

    def wait_restart(self) -> None:
        if self._restart is not None:
            self._restart.join()
        self.restarting()

    def inject(self) -> dict[str, Any]:
        restarting = self.restarting()
        kinds = [k for k in FAULT_WEIGHTS
                 if k != "restart_postgres" or (self.server is not None and not restarting)]
        kind = self.rng.choices(kinds, weights=[FAULT_WEIGHTS[k] for k in kinds])[0]
        event: dict[str, Any] = {"at_s": round(time.monotonic() - self.began, 2), "fault": kind}
        if restarting:
            event["during_restart"] = True
        if kind == "kill_worker":
            event.update(self._kill_worker(restarting))
        elif kind == "kill_supervisor":
            event.update(self._kill_supervisor())
        else:
            crash = self.rng.random() < 0.5
            event.update(fault="crash_postgres" if crash else "restart_postgres",
                         planned_down_s=round(self.rng.uniform(0.0, self.max_down_s), 2))
            self._restart = threading.Thread(target=self._restart_postgres, args=(event, crash),
                                             name="aq-chaos-restart", daemon=True)
            self._restart.start()
        self.events.append(event)
        return event

    def _restart_postgres(self, event: dict[str, Any], crash: bool) -> None:
        assert self.server is not None
        try:
            event.update(self.server.restart(crash, event["planned_down_s"]))
        except BaseException as exc:  # noqa: BLE001 - handed to the main loop
            self._restart_error = exc

    def _kill_worker(self, restarting: bool) -> dict[str, Any]:
        live = self.fleet.workers()
        if not live:
            return {"skipped": "no live worker"}
        holders: set[int] = set()
        if not restarting:  # prefer a worker with tasks running; while Postgres is away, any will do
            try:
                holders = {r["pid"] for r in self.conn.query(RUNNING_HOLDERS)}
            except psycopg.Error:
                pass
        busy = [p for p in live if p in holders]
        pid = self.rng.choice(busy or live)
        if not self.fleet.kill_worker(pid):
            return {"skipped": f"worker {pid} already gone"}
        return {"pid": pid, "holding_tasks": pid in holders}

    def _kill_supervisor(self) -> dict[str, Any]:
        live = self.fleet.live()
        if not live:
            return {"skipped": "no live supervisor"}
        sup = self.rng.choice(live)
        sup.killed = True
        sup.proc.kill()
        sup.proc.wait()
        new = self.fleet.spawn()
        return {"pid": sup.pid, "replacement_pid": new.pid}

    def counts(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for e in self.events:
            key = e["fault"] + ("_skipped" if "skipped" in e else "")
            out[key] = out.get(key, 0) + 1
        out["kill_worker_holding_tasks"] = sum(1 for e in self.events if e.get("holding_tasks"))
        out["during_restart"] = sum(1 for e in self.events if e.get("during_restart"))
        return out


# --- the run ------------------------------------------------------------------

def wait_for_workers(conn: Conn, fleet: Fleet, n: int, timeout_s: float = 60.0) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        dead = [s for s in fleet.sups if s.proc.poll() is not None]
        if dead:
            raise ChaosError(f"a supervisor exited during startup; see {dead[0].log_path}")
        if conn.scalar("SELECT count(*) FROM angela_queue.workers WHERE status IN ('idle', 'active')") >= n:
            return
        time.sleep(0.1)
    raise ChaosError(f"{n} workers did not register within {timeout_s:g}s; see {fleet.log_dir}")


def run_chaos(args: argparse.Namespace, results: dict[str, Any], log_dir: Path) -> None:
    rng = random.Random(args.seed)
    server: ThrowawayServer | None = None
    bench: BenchDB | None = None
    conn: Conn | None = None
    fleet: Fleet | None = None
    injector: Injector | None = None
    try:
        if args.dsn:
            admin = args.dsn
        else:
            server = ThrowawayServer()
            log(f"starting a throwaway PostgreSQL in {server.dir} ...")
            admin = server.start()
        bench = BenchDB(admin)
        bench.create()
        results["machine"] = machine_info(bench)
        results["machine"]["server"] = "throwaway embedded (restarted)" if server else "given --dsn (no restarts)"
        bench.conn.execute(chaos_app.RUNS_TABLE_SQL)
        bench.conn.close()
        conn = Conn(bench.dsn)

        planned = plan_tasks(args.tasks, rng)
        upfront = max(1, int(len(planned) * UPFRONT_SHARE))
        enqueue(conn, planned[:upfront], args.max_attempts)
        fed = upfront
        chunks = max(1, int(args.feed_seconds / FEED_EVERY_S))
        chunk = max(1, -(-(len(planned) - upfront) // chunks))

        fleet = Fleet(bench.dsn, log_dir, SUPERVISOR_FLAGS)
        for _ in range(args.supervisors):
            fleet.spawn()
        wait_for_workers(conn, fleet, 2 * args.supervisors)
        log(f"{args.supervisors} supervisors up; {len(planned):,} tasks ({upfront:,} queued, the rest over "
            f"{args.feed_seconds:g}s); faults every {args.fault_every[0]:g}-{args.fault_every[1]:g}s; "
            f"logs in {log_dir}")

        injector = Injector(rng, fleet, conn, server, args.max_down)
        began = injector.began = time.monotonic()
        next_feed = began + FEED_EVERY_S
        next_fault = began + rng.uniform(*args.fault_every)
        next_check = next_progress = began
        open_tasks = len(planned)
        unasked_exits: list[dict[str, Any]] = []
        respawn_at: list[float] = []
        finished = False
        while True:
            now = time.monotonic()
            if now - began > args.duration_cap:
                log(f"duration cap of {args.duration_cap:g}s reached with {open_tasks:,} task(s) not final")
                break
            # While Postgres restarts, only faults go on: the feed and the
            # checks would just wait for it.
            db_away = injector.restarting()
            if fed < len(planned) and now >= next_feed and not db_away:
                enqueue(conn, planned[fed:fed + chunk], args.max_attempts)
                fed = min(len(planned), fed + chunk)
                next_feed += FEED_EVERY_S
            for sup in fleet.exited_unasked():
                # As a process manager would: note it, and start another.
                unasked_exits.append({"at_s": round(now - began, 2), "pid": sup.pid,
                                      "exit_code": sup.proc.returncode, "log": str(sup.log_path)})
                log(f"  supervisor {sup.pid} exited by itself (status {sup.proc.returncode}); "
                    f"starting another in {RESPAWN_AFTER_S:g}s")
                respawn_at.append(now + RESPAWN_AFTER_S)
            while respawn_at and respawn_at[0] <= now:
                respawn_at.pop(0)
                fleet.spawn()
            if now >= next_fault:
                event = injector.inject()
                log(f"  {event['at_s']:7.2f}s  {event['fault']}: "
                    + ", ".join(f"{k}={v}" for k, v in event.items() if k not in ("at_s", "fault")))
                next_fault = time.monotonic() + rng.uniform(*args.fault_every)
            if now >= next_check and not db_away:
                row = conn.query(OPEN_TASKS, (list(chaos_app.KINDS),))[0]
                open_tasks = row["open"] + (len(planned) - row["total"])
                next_check = now + CHECK_EVERY_S
                if fed >= len(planned) and open_tasks == 0:
                    finished = True
                    break
            if now >= next_progress:
                log(f"  {now - began:7.2f}s  enqueued {fed:,}/{len(planned):,}, not final {open_tasks:,}, "
                    f"faults {len(injector.events)}")
                next_progress = now + PROGRESS_EVERY_S
            time.sleep(TICK_S)
        wall = time.monotonic() - began
        injector.wait_restart()
        log("stopping the supervisors (SIGTERM) ...")
        stopped = fleet.stop()
        results.update({
            "finished": finished,
            "wall_s": round(wall, 1),
            "faults": injector.counts(),
            "fault_events": injector.events,
            "supervisors_started": len(fleet.sups),
            "supervisors_exited_unasked": unasked_exits,
            "worker_processes_seen": len(fleet.worker_pids),
            "shutdown": stopped,
            "log_counts": fleet.log_counts(),
            "postgres_down_s": round(sum(e.get("down_s", 0.0) for e in injector.events), 1),
        })
        results["outcome"] = analyse(conn, expected=len(planned))
    finally:
        if injector is not None and injector._restart is not None:
            injector._restart.join(timeout=120)  # the server's lock is not meant for two threads
        if fleet is not None:
            fleet.kill_all()
        if conn is not None:
            conn.close()
        if bench is not None:
            try:
                bench.drop()
            except psycopg.Error as exc:
                log(f"could not drop {bench.name}: {exc}")
        if server is not None:
            server.delete(keep_log=log_dir / "postgres.log")


# --- report -------------------------------------------------------------------

FAULT_LABELS = (
    ("kill_worker", "SIGKILL a worker process"),
    ("kill_worker_holding_tasks", "  of which were running tasks"),
    ("kill_supervisor", "SIGKILL a supervisor (a new one started)"),
    ("restart_postgres", "Postgres restart (fast stop, start)"),
    ("crash_postgres", "Postgres crash (immediate stop, recovery)"),
)


def report(results: dict[str, Any]) -> str:
    m = results.get("machine", {})
    o = results.get("outcome", {})
    f = results.get("faults", {})
    parts = [
        f"angela-queue chaos ({results['mode']}): {results['command']}",
        f"machine: {m.get('cpu_logical')} logical cores ({m.get('cpu_model')}), {m.get('ram_gib')} GiB RAM; "
        f"PostgreSQL {m.get('postgres')}, {m.get('server')}; angela-queue @ {m.get('git_commit')}"
        f"{' + uncommitted changes ' + m['git_diff_sha1'] if m.get('git_diff_sha1') else ''}",
        f"supervisors: {results['config']['supervisors']} at a time, each "
        f"`angela-queue run --app {APP} {' '.join(SUPERVISOR_FLAGS)}` "
        f"({', '.join(f'{k}={v}' for k, v in SUPERVISOR_ENV.items())}); seed {results['config']['seed']}",
        "",
        "Faults injected",
        table(["fault", "count"], [[label, fmt(f.get(key, 0))] for key, label in FAULT_LABELS]
              + [["kills while Postgres was restarting", fmt(f.get("during_restart", 0))]]
              + [["supervisor exited by itself (restarted)", fmt(len(results.get("supervisors_exited_unasked", [])))],
                 ["Postgres down in total (s)", fmt(results.get("postgres_down_s"), 1)]]),
        "",
        "Tasks",
        table(["", "count"], [
            ["enqueued", fmt(o.get("enqueued"))],
            ["succeeded", fmt(o.get("succeeded"))],
            ["failed", fmt(o.get("failed"))],
            ["lost", fmt(o.get("lost"))],
            ["  not final at the end", fmt(o.get("lost_not_final"))],
            ["  final but never run", fmt(o.get("lost_final_never_ran"))],
            ["run more than once", fmt(o.get("ran_more_than_once"))],
            ["  of which cut off mid-run", fmt(o.get("ran_more_than_once_cut_off"))],
            ["  not cut off (should be 0)", fmt(o.get("ran_more_than_once_unexplained"))],
            ["reclaimed from a dead worker (attempts > 1)", fmt(o.get("cut_off"))],
            ["handler runs in all", fmt(o.get("runs"))],
            ["wall time (s)", fmt(results.get("wall_s"), 1)],
        ]),
    ]
    lc = results.get("log_counts", {})
    if lc:
        parts += ["", "From the logs: " + ", ".join(f"{k.replace('_', ' ')} {v}" for k, v in lc.items())]
    if results.get("shutdown", {}).get("leftover_workers"):
        parts.append(f"WORKERS LEFT BEHIND after the supervisors stopped: {results['shutdown']['leftover_workers']}")
    for key in ("lost", "ran_more_than_once_unexplained"):
        for ex in o.get("examples", {}).get(key, [])[:5]:
            parts.append(f"{key}: {ex}")
    verdict = "OK: 0 lost; every task run twice was cut off mid-run" if o.get("ok") else "NOT OK: see above"
    if not results.get("finished"):
        verdict += " (the cap passed before every task was final)"
    parts += ["", verdict]
    return "\n".join(parts)


# --- entry point --------------------------------------------------------------

def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m benchmarks.chaos", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="600 tasks over about 15 s: a smoke run")
    p.add_argument("-n", "--tasks", type=int, help="tasks to run (default 5,000; quick 600)")
    p.add_argument("--duration-cap", type=float, metavar="SECONDS",
                   help="stop after this long even if tasks are not all final (default 900; quick 180)")
    p.add_argument("--feed-seconds", type=float, metavar="SECONDS",
                   help="after a first fifth, the tasks are enqueued over this long (default 60; quick 10)")
    p.add_argument("--fault-every", metavar="LO,HI",
                   help="seconds between faults, drawn uniformly (default 1,3; quick 1,2.5)")
    p.add_argument("--max-down", type=float, default=MAX_DOWN_S, metavar="SECONDS",
                   help="a Postgres restart keeps it down between 0 and this long (default 2; above the "
                        "workers' dead_after of 6 s, the leader declares them lost and reruns their tasks)")
    p.add_argument("--seed", type=int, default=1, help="seed of the tasks and of the fault schedule (default 1)")
    p.add_argument("--supervisors", type=int, default=2, help="supervisors running at a time (default 2)")
    p.add_argument("--max-attempts", type=int, default=DEFAULT_MAX_ATTEMPTS,
                   help=f"max_attempts of every task (default {DEFAULT_MAX_ATTEMPTS}, the product's default). "
                        "A reclaim counts an attempt, so enough kills fail a task: lost if it never ran")
    p.add_argument("--dsn", help="admin DSN of an existing server to use instead of a throwaway one; "
                                 "Postgres is then never restarted")
    p.add_argument("--out", type=Path, help="JSON results path (default benchmarks/results/<time>-chaos[-quick].json)")
    args = p.parse_args(argv)
    q = 0 if args.quick else 1
    args.tasks = args.tasks or SIZES["tasks"][q]
    args.duration_cap = args.duration_cap or SIZES["duration_cap_s"][q]
    args.feed_seconds = SIZES["feed_s"][q] if args.feed_seconds is None else args.feed_seconds
    if args.fault_every:
        try:
            lo, hi = (float(x) for x in args.fault_every.split(","))
        except ValueError:
            p.error("--fault-every takes LO,HI in seconds, e.g. 1.5,4")
        if not 0 < lo <= hi:
            p.error("--fault-every needs 0 < LO <= HI")
        args.fault_every = (lo, hi)
    else:
        args.fault_every = SIZES["fault_every_s"][q]
    if args.tasks < 1 or args.supervisors < 1 or args.max_attempts < 1:
        p.error("--tasks, --supervisors and --max-attempts must be at least 1")
    return args


def _interrupt(signum: int, frame: Any) -> None:
    # SIGTERM unwinds like Ctrl-C, so the finally blocks stop and delete everything.
    raise KeyboardInterrupt(f"signal {signum}")


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    mode = "quick" if args.quick else "full"
    stamp = time.strftime("%Y%m%d-%H%M%S")
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    out_path = args.out or RESULTS_DIR / f"{stamp}-chaos{'-quick' if args.quick else ''}.json"
    log_dir = Path(tempfile.mkdtemp(prefix="aq-chaos-logs-"))
    results: dict[str, Any] = {
        "mode": mode, "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "command": "python -m benchmarks.chaos " + " ".join(argv if argv is not None else sys.argv[1:]),
        "config": {"tasks": args.tasks, "seed": args.seed, "supervisors": args.supervisors,
                   "max_attempts": args.max_attempts, "feed_s": args.feed_seconds,
                   "fault_every_s": list(args.fault_every), "duration_cap_s": args.duration_cap,
                   "supervisor_flags": SUPERVISOR_FLAGS, "supervisor_env": SUPERVISOR_ENV,
                   "fault_weights": FAULT_WEIGHTS, "max_down_s": args.max_down},
        "log_dir": str(log_dir),
    }
    signal.signal(signal.SIGTERM, _interrupt)
    began = time.monotonic()
    error = None
    try:
        run_chaos(args, results, log_dir)
    except (ChaosError, psycopg.Error) as exc:
        error = f"{type(exc).__name__}: {exc}"
        results["error"] = error
    except KeyboardInterrupt:
        results["error"] = "interrupted"
        log(f"interrupted; everything started was stopped and deleted\nlogs: {log_dir}")
        return 130
    finally:
        results["seconds"] = round(time.monotonic() - began, 1)
        out_path.write_text(json.dumps(results, indent=2, default=str) + "\n")
    if error:
        log(f"chaos run failed: {error}\nlogs: {log_dir}\nresults: {out_path}")
        return 2
    print(report(results))
    print(f"\nresults: {out_path}\nlogs: {log_dir}")
    return 0 if results["outcome"]["ok"] and results.get("finished") else 1


if __name__ == "__main__":
    sys.exit(main())
