"""The supervisor: ``angela-queue run``.

One process that keeps a pool of worker processes (``python -m angela_queue
worker``, real OS processes) sized to the load, and keeps them healthy:

* it spawns ``base_workers`` and, every ``scale_interval_s``, takes one
  scaling step on its share of the global queue depth (rules: scaling.py);
* it restarts any worker that exits without being asked, and reclaims that
  worker's tasks at once: it is the parent, so it sees the exit, and no
  timeout has to pass first;
* it marks a worker that shows no progress ``stuck``, reclaims its tasks,
  kills it (SIGTERM, then SIGKILL on its whole process tree) and replaces it;
* it keeps its own row in ``angela_queue.supervisors`` with a heartbeat and
  competes for the maintenance lease (leader.py); the leader also runs
  maintenance.py for the whole database;
* on SIGTERM/SIGINT it stops scaling, stops the workers gracefully (they
  finish or release their tasks), reclaims whatever a worker could not hand
  back, and exits 0. A second signal asks the workers to release at once.

If the supervisor itself is SIGKILLed, its workers notice (PR_SET_PDEATHSIG
and a getppid() watch in worker.py) and stop on their own.

Hazards this module is built around:
- The supervisor never changes a task row except through the guarded
  reclaim statements, and reclaims only tasks of a worker that has exited
  (nothing can finish them) or that a guarded UPDATE proved made no progress.
- A stuck worker is reclaimed *before* it is signalled: a SIGTERMed worker
  releases its tasks without counting the attempt, so killing first would
  let a task that hangs every time loop forever.
- The database may go away (restart, network): the supervisor keeps its
  workers running, remembers the reclaims it owes, and retries.
- A heartbeat that could not be written is not a missed heartbeat: after an
  outage longer than dead_after_s every worker's row looks dead until its
  next beat. Judgements on silence (the leader's lost-worker reclaim, our
  own stuck check) count only the time since this supervisor last saw the
  database come back (maintenance/health.py); otherwise they would reclaim,
  and here also kill, workers whose tasks are running fine: duplicate runs.
"""

from __future__ import annotations

import datetime as dt
import logging
import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass

import psutil
import psycopg

from .. import db, maintenance, schema
from ..schema import SCHEMA_RECHECK_S
from ..backoff import Backoff
from ..config import HANDOFF_ENV, Settings, inherited_environment
from ..errors import SchemaMismatch
from ..maintenance.health import DbHealth
from ..maintenance.lease import Lease
from .metrics import SupervisorMetrics
from .scaling import (QUICK_CRASH_S, HealthLimits, Policy, Room, WorkerHealth, WorkerLoad, decide, depth_share,
                      pick_retirees, progress_at, restart_delay, room, stuck_reason)
from ..worker import EXIT_RETIRE

log = logging.getLogger("angela_queue.supervisor")

# How often the main loop looks at its children (exits are noticed this fast).
TICK_S = 0.2
# A stuck worker gets this long between SIGTERM and SIGKILL: its tasks are
# already reclaimed, so there is nothing left for it to save.
STUCK_KILL_GRACE_S = 3.0
# On shutdown, a worker gets shutdown_grace_s to finish, then this much more
# to release and exit, before SIGKILL.
SHUTDOWN_KILL_MARGIN_S = 5.0
# The depth is counted up to this many tasks per live supervisor: enough for
# readable logs, bounded so a huge backlog costs the same as a small one.
DEPTH_COUNT_CAP = 1000


@dataclass
class Child:
    """One worker process this supervisor started."""

    id: uuid.UUID
    proc: subprocess.Popen
    started: float                   # time.monotonic()
    retiring: str | None = None      # why we asked it to stop
    stuck: str | None = None         # why we judged it stuck
    kill_at: float | None = None     # SIGKILL if still alive then (time.monotonic())

    @property
    def pid(self) -> int:
        return self.proc.pid

    @property
    def short_id(self) -> str:
        return str(self.id)[:8]


def describe_exit(returncode: int) -> str:
    if returncode == 0:
        return "exited cleanly"
    if returncode < 0:
        try:
            name = signal.Signals(-returncode).name
        except ValueError:
            name = f"signal {-returncode}"
        return f"was killed by {name}"
    if returncode == EXIT_RETIRE:
        return f"retired itself (exit {EXIT_RETIRE}: a sync handler overran its timeout)"
    return f"exited with status {returncode}"


def worker_command(*, supervisor_id: uuid.UUID, supervisor_pid: int, worker_id: uuid.UUID,
                   verbose: bool = False, log_level: str | None = None, log_format: str = "text") -> list[str]:
    """The argv of one worker process: the same interpreter, its identity, and nothing else.

    Its settings travel whole in its environment (``worker_environment``):
    no hand-kept list of flags to drift from Settings, and the DSN is not on
    the command line, which any local user can read with ps.
    """
    cmd = [sys.executable, "-m", "angela_queue"]
    if verbose:
        cmd.append("-v")
    elif log_level:
        cmd += ["--log-level", log_level]
    if log_format != "text":
        cmd += ["--log-format", log_format]
    cmd += ["worker", "--supervisor-id", str(supervisor_id), "--supervisor-pid", str(supervisor_pid),
            "--worker-id", str(worker_id)]
    return cmd


def worker_environment(settings: Settings, inherited: dict[str, str]) -> dict[str, str]:
    """The worker's environment: the supervisor's (what the app needs), plus its resolved Settings."""
    env = dict(inherited)
    env[HANDOFF_ENV] = settings.to_json()
    return env


def _handler_timeout_from_registry(kind: str) -> float | None:
    from ..registry import lookup
    definition = lookup(kind)
    return definition.timeout if definition is not None else None


class Supervisor:
    def __init__(self, settings: Settings, *, verbose: bool = False, environ: dict[str, str] | None = None,
                 handler_timeout: Callable[[str], float | None] = _handler_timeout_from_registry):
        if not settings.dsn:
            raise ValueError("Supervisor needs settings.dsn (the CLI resolves it, the embedded server included)")
        self.settings = settings
        self.dsn = settings.dsn
        self.app = settings.app
        self.verbose = verbose
        self.log_level = settings.log_level
        # The environment the workers inherit (the CLI passes os.environ).
        # The workers inherit this environment (PATH, PYTHONPATH, the app's own
        # configuration); by default this process's.
        self.environ = dict(environ if environ is not None else inherited_environment())
        self.handler_timeout = handler_timeout
        self.id = uuid.uuid4()
        self.pid = os.getpid()
        self.host = socket.gethostname()
        self.policy = Policy.from_settings(settings)
        self.target = self.policy.initial_workers
        self.limits = HealthLimits(stuck_after_s=settings.stuck_after_s,
                                   heartbeat_interval_s=settings.heartbeat_interval_s,
                                   dead_after_s=settings.dead_after_s,
                                   default_timeout_s=settings.default_timeout_s,
                                   batch_wait_s=settings.batch_wait_s)
        self.lease = Lease(self.id, settings.lease_s)
        self.maintenance = maintenance.Maintenance(retention_s=settings.retention_s,
                                                   retention_failed_s=settings.failed_retention_s,
                                                   dead_after_s=settings.dead_after_s)

        self.children: dict[uuid.UUID, Child] = {}
        self.worker_rows: dict[uuid.UUID, dict] = {}     # last read of our workers' rows
        self.owed_reclaims: dict[uuid.UUID, tuple[bool, str]] = {}
        self.last_decision = (f"start at {self.target}: base {self.policy.base_workers} within "
                              f"[{self.policy.min_workers}, {self.policy.max_workers}]")
        self.stopping = False
        self.signals = 0
        self.crash_streak = 0
        self.next_spawn_at = 0.0
        self.next_heartbeat = 0.0
        self.next_scale = 0.0
        self._cpu_percent: float | None = None
        self._cpu_primed = False

        self.conn: psycopg.Connection | None = None
        self._db_retry_at = 0.0
        self._db_quiet_until = 0.0
        self.db_health = DbHealth(settings.heartbeat_interval_s, settings.dead_after_s)
        self.connect_backoff = Backoff(f"supervisor {self.short_id} connecting to the database", log,
                                       level=logging.WARNING)
        self.tick_backoff = Backoff(f"supervisor {self.short_id}'s database work", log)
        self.lead_backoff = Backoff(f"supervisor {self.short_id}'s maintenance round", log)
        self._next_schema_check = 0.0
        self._reconnecting = False
        self.metrics: SupervisorMetrics | None = None

    @property
    def short_id(self) -> str:
        return str(self.id)[:8]

    # --- lifecycle ------------------------------------------------------------

    def run(self) -> int:
        """Supervise until SIGTERM/SIGINT; returns the exit status (0 after a clean stop)."""
        previous = {sig: signal.signal(sig, self._on_signal) for sig in (signal.SIGTERM, signal.SIGINT)}
        try:
            if not self._start_on_database():
                return 0
            self._apply_max_queue_size()
            s = self.settings
            if s.metrics_port is not None:
                self.metrics = SupervisorMetrics(self.dsn)
                log.info("Prometheus metrics on %s", self.metrics.serve(s.metrics_host, s.metrics_port))
            log.info("supervisor %s started: pid %d on %s, queues %s; workers min %d, base %d, max %d; "
                     "scale every %gs (up when depth > %d, down when < %d)%s; concurrency %d per worker",
                     self.short_id, self.pid, self.host, ",".join(s.queues), s.min_workers, s.base_workers,
                     s.max_workers, s.scale_interval_s, s.scale_up_depth, s.scale_down_depth,
                     f"; profile {s.profile}" if s.profile else "", s.concurrency)
            now = time.monotonic()
            self.next_scale = now + s.scale_interval_s
            self._prime_cpu()
            while not self.stopping:
                self._tick()
                time.sleep(TICK_S)
            self._shutdown()
            return 0
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)
            self._kill_leftovers()
            if self.metrics is not None:
                self.metrics.close()
            if self.conn is not None:
                self.conn.close()

    def _on_signal(self, signum: int, frame) -> None:
        # Only flags here: the loop notices within TICK_S and does the work
        # (logging or I/O inside a signal handler can re-enter a held lock).
        self.signals += 1
        self.stopping = True

    def _start_on_database(self) -> bool:
        """Connect, check the schema and register, waiting out a database that is
        down or refusing (backoff, one log line then summaries); False if
        stopped first. A schema of another revision is refused at once
        (SchemaMismatch): waiting would not fix it."""
        while not self.stopping:
            now = time.monotonic()
            if self._db_ready(now):
                try:
                    schema.check(self.conn)
                    self._next_schema_check = now + SCHEMA_RECHECK_S
                    self._register()
                    self.tick_backoff.succeeded()
                    return True
                except SchemaMismatch:
                    raise
                except psycopg.Error as exc:
                    if db.is_connection_lost(exc, self.conn):
                        self._db_lost(exc)
                    else:
                        self._db_retry_at = now + self.tick_backoff.failed(db.first_line(exc))
                        self._drop_conn()
            time.sleep(max(TICK_S, min(1.0, self._db_retry_at - time.monotonic())))
        return False

    def _register(self) -> None:
        assert self.conn is not None
        db.fetch_all(self.conn, "supervisors_register", {
            "id": self.id, "host": self.host, "pid": self.pid, "queues": list(self.settings.queues),
            "workers_target": self.target, "last_decision": self.last_decision})

    def _apply_max_queue_size(self) -> None:
        size = self.settings.max_queue_size
        if size is None or self.conn is None:
            return
        try:
            db.fetch_all(self.conn, "supervisors_apply_max_queue_size",
                         {"queues": list(self.settings.queues), "max_size": size})
        except psycopg.Error as exc:
            # Not a reason to leave the workers unstarted: say so and go on.
            log.error("could not bound queues %s to max_size %d: %s", ",".join(self.settings.queues), size,
                      db.first_line(exc))
            if db.is_connection_lost(exc, self.conn):
                self._db_lost(exc)
            return
        log.info("queues %s bounded to max_size %d%s; the bound is stored in angela_queue.queues and stays "
                 "after this supervisor exits (UPDATE angela_queue.queues SET max_size = NULL to lift it)",
                 ",".join(self.settings.queues), size,
                 f" (profile {self.settings.profile})" if self.settings.profile else "")

    # --- the loop -------------------------------------------------------------

    def _tick(self) -> None:
        now = time.monotonic()
        self._reap(now)
        self._escalate(now)
        if now >= self._db_quiet_until and self._db_ready(now):
            try:
                self._pay_reclaims()
                if now >= self.next_heartbeat:
                    self.next_heartbeat = now + self.settings.heartbeat_interval_s
                    self._heartbeat()
                    self._watch_health()
                    self._recheck_schema(now)
                    # Last, and on its own: a maintenance step the database
                    # refuses (a poison row) must not stop the stuck check
                    # and the scaling of this supervisor's own workers.
                    self._lead_guarded()
                if now >= self.next_scale:
                    self.next_scale = now + self.settings.scale_interval_s
                    self._scale()
                self.tick_backoff.succeeded()
            except psycopg.Error as exc:
                if db.is_connection_lost(exc, self.conn):
                    self._db_lost(exc)
                    self._converge(time.monotonic())
                    return
                # Any other database error (read-only after a failover, a
                # revoked privilege, a statement timeout) must not take the
                # workers down with us, nor be retried at full speed: back off.
                self._db_quiet_until = now + self.tick_backoff.failed(f"{type(exc).__name__}: {db.first_line(exc)}")
        self._converge(time.monotonic())

    def _converge(self, now: float) -> None:
        """Start or retire workers until the pool matches the target."""
        pool = [c for c in self.children.values() if c.retiring is None]
        if self.crash_streak and any(now - c.started >= QUICK_CRASH_S for c in pool):
            self.crash_streak = 0
        if len(pool) < self.target and now >= self.next_spawn_at:
            for _ in range(self.target - len(pool)):
                self._spawn()
        elif len(pool) > self.target:
            loads = []
            for child in pool:
                row = self.worker_rows.get(child.id)
                loads.append(WorkerLoad(child.id, len(row["task_ids"]) if row else 0, child.started))
            for child_id in pick_retirees(loads, len(pool) - self.target):
                child = self.children[child_id]
                row = self.worker_rows.get(child_id)
                busy = f"holding {len(row['task_ids'])} task(s)" if row and row["task_ids"] else "idle"
                log.info("retiring worker %s (pid %d, %s): pool above target %d", child.short_id, child.pid,
                         busy, self.target)
                self._terminate(child, "scaled down",
                                self.settings.shutdown_grace_s + SHUTDOWN_KILL_MARGIN_S)

    def _spawn(self) -> Child:
        worker_id = uuid.uuid4()
        cmd = worker_command(supervisor_id=self.id, supervisor_pid=self.pid, worker_id=worker_id,
                             verbose=self.verbose, log_level=self.log_level,
                             log_format=self.settings.log_format)
        env = worker_environment(self.settings, self.environ)
        # Own session: a Ctrl-C in the terminal reaches the supervisor only,
        # which then stops the workers in order instead of all at once.
        proc = subprocess.Popen(cmd, env=env, stdin=subprocess.DEVNULL, start_new_session=True)
        child = Child(worker_id, proc, time.monotonic())
        self.children[worker_id] = child
        pool = sum(1 for c in self.children.values() if c.retiring is None)
        log.info("started worker %s (pid %d): %d/%d", child.short_id, proc.pid, pool, self.target)
        return child

    def _terminate(self, child: Child, why: str, kill_after_s: float) -> None:
        if child.retiring is None:
            child.retiring = why
        if child.proc.poll() is None:
            try:
                child.proc.send_signal(signal.SIGTERM)
            except ProcessLookupError:
                pass
        deadline = time.monotonic() + kill_after_s
        child.kill_at = deadline if child.kill_at is None else min(child.kill_at, deadline)

    def _escalate(self, now: float) -> None:
        """SIGKILL workers (and anything they started) that outlived their SIGTERM."""
        for child in list(self.children.values()):
            if child.kill_at is None or now < child.kill_at or child.proc.poll() is not None:
                continue
            log.warning("worker %s (pid %d) did not exit after SIGTERM (%s); sending SIGKILL",
                        child.short_id, child.pid, child.stuck or child.retiring)
            kill_tree(child.pid)
            child.kill_at = None

    def _reap(self, now: float) -> None:
        """Notice exited workers: reclaim what they held, and have them replaced."""
        for child in list(self.children.values()):
            code = child.proc.poll()
            if code is None:
                continue
            del self.children[child.id]
            self.worker_rows.pop(child.id, None)
            how = describe_exit(code)
            clean = code in (0, EXIT_RETIRE) and child.stuck is None
            self.owed_reclaims[child.id] = (not clean, f"worker {child.short_id} (pid {child.pid}) {how}")
            lived = now - child.started
            if child.stuck is not None:
                log.info("stuck worker %s (pid %d) %s", child.short_id, child.pid, how)
            elif child.retiring is not None:
                log.info("worker %s (pid %d) %s (%s)", child.short_id, child.pid, how, child.retiring)
            elif self.stopping:
                log.info("worker %s (pid %d) %s during shutdown", child.short_id, child.pid, how)
            elif code == EXIT_RETIRE:
                log.warning("worker %s (pid %d) %s; starting a fresh one", child.short_id, child.pid, how)
            else:
                log.error("worker %s (pid %d) %s after %.1fs; reclaiming its tasks and starting a replacement",
                          child.short_id, child.pid, how, lived)
                if self.metrics is not None:
                    self.metrics.worker_exits.labels("crashed" if code != 0 else "exited").inc()
                if lived < QUICK_CRASH_S:
                    self.crash_streak += 1
                    delay = restart_delay(self.crash_streak)
                    if delay:
                        log.warning("%d workers in a row died within %gs of starting; waiting %.1fs "
                                    "before the next start", self.crash_streak, QUICK_CRASH_S, delay)
                    self.next_spawn_at = max(self.next_spawn_at, now + delay)
                else:
                    self.crash_streak = 0

    def _pay_reclaims(self) -> None:
        """Reclaim the tasks of workers that exited (kept until the database answers)."""
        assert self.conn is not None
        for worker_id, (crashed, reason) in list(self.owed_reclaims.items()):
            result = maintenance.reclaim_exited_worker(self.conn, worker_id, crashed=crashed, reason=reason)
            del self.owed_reclaims[worker_id]
            if result.count:
                log.warning("worker %s exited holding tasks: %s", str(worker_id)[:8], result.describe())

    # --- database duties ------------------------------------------------------

    def _heartbeat(self) -> None:
        assert self.conn is not None
        row = db.fetch_one(self.conn, "supervisors_heartbeat", {
            "id": self.id, "workers_target": self.target, "last_decision": self.last_decision})
        if row is None:
            log.warning("supervisor row %s was missing or marked stopped; registering again", self.short_id)
            self._register()

    def _lead_guarded(self) -> None:
        try:
            self._lead()
            self.lead_backoff.succeeded()
        except psycopg.Error as exc:
            if db.is_connection_lost(exc, self.conn):
                raise
            # The refused statement rolled back; the lease is re-checked next time.
            self.lead_backoff.failed(f"{type(exc).__name__}: {db.first_line(exc)}")
            self.lease.held = False

    def _lead(self) -> None:
        """Take or renew the maintenance lease; if held, run a maintenance round.

        A freshly elected leader gets no grace period of its own, and needs
        none: what it may judge is bounded by how long *it* has seen the
        database answer (healthy_for_s), not by its tenure. One that has been
        connected for dead_after_s saw every heartbeat that could have been
        written, and may reclaim a dead leader's lost workers at once; one
        that just (re)connected, typically because the outage that killed the
        previous leader's connection killed its own too, waits the full
        dead_after_s like any leader after an outage. Judging from the
        lease's age or elected_at instead would bring the hazard back.
        """
        assert self.conn is not None
        was = self.lease.held
        held = self.lease.attempt(self.conn)
        # Read after the last round trip before the reclaim: a stall in the
        # attempt itself counts.
        healthy_for_s = self.db_health.healthy_for()
        if held and not was:
            log.info("supervisor %s is now the maintenance leader (lease %gs)", self.short_id,
                     self.lease.lease_s)
        elif was and not held:
            log.warning("supervisor %s lost the maintenance lease to another supervisor", self.short_id)
        if held:
            self.maintenance.run(self.conn, healthy_for_s=healthy_for_s)

    def _recheck_schema(self, now: float) -> None:
        """Someone migrated under us: old code must not write to a newer schema. Stop."""
        if now < self._next_schema_check:
            return
        self._next_schema_check = now + SCHEMA_RECHECK_S
        assert self.conn is not None
        try:
            schema.check(self.conn)
        except SchemaMismatch as exc:
            log.error("%s; shutting down", exc)
            self.stopping = True

    def _read_workers(self) -> list[dict]:
        assert self.conn is not None
        rows = db.fetch_all(self.conn, "supervisors_workers", {"supervisor_id": self.id})
        self.worker_rows = {r["id"]: r for r in rows if r["id"] in self.children}
        return rows

    def _watch_health(self) -> None:
        """Find stuck workers among ours: reclaim their tasks first, then kill and replace them.

        Hazard (outages): a worker's row shows its last heartbeat and its last
        progress as of its last write. One not heard from since the database
        came back (for us) may be fine and merely unable to write: it is left
        alone until it beats, or until dead_after_s of reachable database has
        passed without a beat.
        """
        assert self.conn is not None
        rows = self._read_workers()
        healthy_for_s = self.db_health.healthy_for()
        for row in rows:
            child = self.children.get(row["id"])
            if child is None or child.stuck is not None or child.proc.poll() is not None:
                continue
            healthy_since = row["db_now"] - dt.timedelta(seconds=healthy_for_s)
            if row["last_heartbeat"] < healthy_since and healthy_for_s < self.limits.dead_after_s:
                log.debug("worker %s not heard from since the database came back %.1fs ago; not judged yet",
                          child.short_id, healthy_for_s)
                continue
            health = WorkerHealth(last_heartbeat=row["last_heartbeat"], last_active=row["last_active"],
                                  task_kinds=row["task_kinds"], task_timeouts_s=row["task_timeouts_s"],
                                  newest_task_started_at=row["newest_task_started_at"],
                                  holds_low_priority=row["holds_low_priority"])
            why = stuck_reason(health, row["db_now"], self.limits, self.handler_timeout)
            if why is None:
                continue
            result = maintenance.reclaim_stuck_worker(
                self.conn, child.id, progress_at(health),
                f"worker {child.short_id} (pid {child.pid}) was stuck ({why}) and was killed")
            if not result.marked:
                log.debug("worker %s made progress after it looked stuck; leaving it", child.short_id)
                continue
            log.warning("worker %s (pid %d) is stuck: %s; %s; killing it and starting a replacement",
                        child.short_id, child.pid, why, result.describe())
            child.stuck = why
            self._terminate(child, "stuck", STUCK_KILL_GRACE_S)

    def _scale(self) -> None:
        assert self.conn is not None
        self._read_workers()
        cap = max(DEPTH_COUNT_CAP, self.policy.scale_up_depth + 1)
        load = db.fetch_one(self.conn, "supervisors_load", {
            "queues": list(self.settings.queues), "dead_after_s": self.settings.dead_after_s,
            "cap_per_supervisor": cap})
        assert load is not None
        share = depth_share(load["depth"], load["live_supervisors"])
        cpu = self._sample_cpu()
        room_now = self._room(cpu) if share > self.policy.scale_up_depth else None
        decision = decide(self.target, share, self.policy, room_now, global_depth=load["depth"],
                          live_supervisors=load["live_supervisors"],
                          capped=load["depth"] >= cap * load["live_supervisors"])
        self.last_decision = f"{decision.action} to {decision.target}: {decision.reason}"
        event = {"extra": {"event": {"event": "scaling", "supervisor": str(self.id), "action": decision.action,
                                     "from": self.target, "to": decision.target, "reason": decision.reason,
                                     "depth_share": share, "global_depth": load["depth"],
                                     "live_supervisors": load["live_supervisors"]}}}
        if self.metrics is not None:
            self.metrics.decisions.labels(decision.action).inc()
        if decision.change:
            log.info("scaling %s from %d to %d worker(s): %s", decision.action, self.target, decision.target,
                     decision.reason, **event)
            self.target = decision.target
        else:
            log.debug("holding at %d worker(s): %s", self.target, decision.reason, **event)

    def _prime_cpu(self) -> None:
        psutil.cpu_percent(interval=None)  # the first reading is meaningless; start the window now
        self._cpu_primed = True

    def _sample_cpu(self) -> float | None:
        """System-wide CPU busy share since the previous sample (one scale interval)."""
        value = psutil.cpu_percent(interval=None)
        return value if self._cpu_primed else None

    def _room(self, cpu_percent: float | None) -> Room:
        available_mb = psutil.virtual_memory().available / 2 ** 20
        return room(available_mb, cpu_percent, min_free_mb=self.settings.room_min_free_memory_mb,
                    max_cpu_percent=self.settings.room_max_cpu_percent)

    # --- connection -----------------------------------------------------------

    def _db_ready(self, now: float) -> bool:
        if self.conn is not None and not self.conn.closed:
            return True
        if now < self._db_retry_at:
            return False
        try:
            self.conn = self.db_health.watch(db.connect(
                self.dsn, application_name=f"angela-queue-supervisor-{self.short_id}", connect_timeout=5))
        except Exception as exc:  # noqa: BLE001 - keep supervising whatever the database does
            self._db_retry_at = now + self.connect_backoff.failed(
                f"{db.first_line(exc)} (workers keep running)")
            return False
        if self.connect_backoff.failing or self._reconnecting:
            log.info("reconnected to the database; heartbeats are judged again once workers have had %gs to beat",
                     self.settings.dead_after_s)
        self._reconnecting = False
        self.connect_backoff.succeeded()
        return True

    def _drop_conn(self) -> None:
        if self.conn is not None:
            try:
                self.conn.close()
            except Exception:  # noqa: BLE001
                pass
        self.conn = None
        # Not sure we still lead: maintenance waits until a fresh election.
        self.lease.held = False

    def _db_lost(self, exc: BaseException) -> None:
        log.warning("database connection lost (%s); workers keep running; reconnecting", db.first_line(exc))
        self._drop_conn()
        self._reconnecting = True
        self._db_retry_at = time.monotonic() + self.connect_backoff.delay_for(1)

    # --- shutdown -------------------------------------------------------------

    def _shutdown(self) -> None:
        grace = self.settings.shutdown_grace_s
        log.info("supervisor %s shutting down: stopping %d worker(s) gracefully (grace %gs)", self.short_id,
                 len(self.children), grace)
        self.last_decision = "shutting down"
        for child in list(self.children.values()):
            self._terminate(child, "supervisor shutting down", grace + SHUTDOWN_KILL_MARGIN_S)
        hurried = False
        while self.children:
            now = time.monotonic()
            if self.signals > 1 and not hurried:
                hurried = True
                log.info("second signal: asking the workers to release their tasks and exit now")
                for child in self.children.values():
                    if child.proc.poll() is None:
                        child.proc.send_signal(signal.SIGTERM)  # a worker's second signal: stop fast
            self._reap(now)
            self._escalate(now)
            if self._db_ready(now):
                try:
                    self._pay_reclaims()
                    if now >= self.next_heartbeat:
                        self.next_heartbeat = now + self.settings.heartbeat_interval_s
                        self._heartbeat()
                except psycopg.Error as exc:
                    # Never a reason to abandon the children mid-grace: the
                    # reclaims stay owed, and the waiting goes on.
                    if db.is_connection_lost(exc, self.conn):
                        self._db_lost(exc)
                    else:
                        log.error("database error while shutting down (%s); still waiting for the workers",
                                  db.first_line(exc))
                        self.next_heartbeat = now + self.settings.heartbeat_interval_s
                        self._drop_conn()
                        self._db_retry_at = now + self.tick_backoff.failed(db.first_line(exc))
            if self.children:
                time.sleep(TICK_S)
        self._final_words()
        log.info("supervisor %s stopped", self.short_id)

    def _final_words(self) -> None:
        """Reclaim what is owed, mark our row stopped, hand the lease on. Retried briefly."""
        deadline = time.monotonic() + 10.0
        while True:
            now = time.monotonic()
            if self._db_ready(now):
                try:
                    self._pay_reclaims()
                    db.fetch_all(self.conn, "supervisors_mark_stopped",
                                 {"id": self.id, "last_decision": "stopped"})
                    if self.lease.resign(self.conn):
                        log.info("supervisor %s resigned the maintenance lease", self.short_id)
                    return
                except psycopg.Error as exc:
                    if db.is_connection_lost(exc, self.conn):
                        self._db_lost(exc)
                    else:
                        log.error("database error while finishing the shutdown (%s)", db.first_line(exc))
                        self._drop_conn()
            if now >= deadline:
                log.error("could not reach the database to finish the shutdown; the leader will reclaim "
                          "any task left running")
                return
            time.sleep(TICK_S)

    def _kill_leftovers(self) -> None:
        """Last resort (an internal error): no worker outlives its supervisor's run()."""
        for child in list(self.children.values()):
            if child.proc.poll() is None:
                log.error("killing worker %s (pid %d) left behind", child.short_id, child.pid)
                kill_tree(child.pid)
                try:
                    child.proc.wait(timeout=5)
                except subprocess.TimeoutExpired:
                    pass


def kill_tree(pid: int) -> None:
    """SIGKILL a process and every process it started (a handler's subprocesses)."""
    try:
        parent = psutil.Process(pid)
        descendants = parent.children(recursive=True)
    except psutil.NoSuchProcess:
        return
    for proc in [parent, *descendants]:
        try:
            proc.kill()
        except psutil.NoSuchProcess:
            pass


__all__ = ["Supervisor", "worker_command", "worker_environment", "describe_exit", "kill_tree"]
