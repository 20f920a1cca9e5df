"""The worker process: claim tasks in effective-priority order, run them,
record the outcomes. One asyncio loop per process.

The loop, in one round trip per turn (pipeline mode):
    flush finished outcomes  ->  fill collecting batches  ->  claim up to the free slots
then dispatch what came back and wait for the next reason to turn: a slot
freed, a NOTIFY from an insert, a batch deadline, or the poll timer (the
backstop: LISTEN only speeds things up).

Hazards this module is built around:
- Completion is guarded (status = 'running' AND worker_id = me). A task that
  was reclaimed while it ran here is never overwritten; we log and move on.
- A lost connection loses nothing: outcomes stay buffered in the completer
  (completer.py) until a flush succeeds, and after reconnecting the worker releases any task the database
  says it holds but it never received (a claim that committed while the
  connection died).
- Sync handlers cannot be interrupted. One that outlives its timeout fails
  its attempt, and the worker retires (exit code 75) so its supervisor starts
  a fresh process instead of leaking a thread.
- A database that refuses a turn (read-only after a failover, a revoked
  privilege) is backed off from exponentially, with a log line for the first
  refusal and a summary after, never a retry loop at full speed. Outcomes stay
  buffered through it: only an outcome the database rejects for its own sake
  (a data error) is turned into a failure of its task.
"""

from __future__ import annotations

import asyncio
import collections
import ctypes
import logging
import os
import signal
import socket
import sys
import threading
import time
import uuid
from dataclasses import dataclass, field
from typing import Any

import psycopg

from .. import db, kinds, schema
from ..queries import Query
from ..backoff import Backoff
from ..config import CHANNEL_CANCEL, CHANNEL_CRITICAL, CHANNEL_INSERT, Settings
from ..errors import ConfigError, SchemaMismatch
from ..logs import tier_of
from ..registry import lookup, registered_kinds
from .. import statements as st
from .completer import Completer, utc
from .execution import ClaimedTask, ExecutionPolicy, Outcome, clean_text, execute_batch, execute_one
from .handler_threads import HandlerThreads
from .heartbeat import Heartbeat
from .slots import BATCH_BELOW_PRIORITY, Claim, claim_size, critical_goes_first

log = logging.getLogger("angela_queue.worker")

# Exit status asking the supervisor for a fresh process (sysexits EX_TEMPFAIL).
EXIT_RETIRE = 75

# How often a collecting batch tries to claim more of its kind.
BATCH_FILL_EVERY_S = 0.1
# How long critical work may keep a ready batch out of the free slots
# (slots.critical_goes_first). The batch's tasks are held by this worker,
# where their aging does not count: past this, the batch takes its slot
# even under a sustained critical overload.
READY_PASSED_OVER_MAX_S = 2.0
# Depth thresholds of the plan's adaptive polling.
DEPTH_FAST, DEPTH_MEDIUM = 20, 5


@dataclass(eq=False)   # compared by identity: two batches are never "equal"
class Batch:
    """Low-priority tasks of one queue and kind, collected to run together."""

    queue: str
    kind: str
    tasks: list[ClaimedTask] = field(default_factory=list)
    started_at: float = field(default_factory=time.monotonic)
    next_fill_at: float = 0.0
    # A ready batch of a kind without a batch handler runs one task at a
    # time, each in a slot of its own (Worker._take_ready): True while one runs.
    part_running: bool = False
    ready_at: float | None = None   # when collection ended (time.monotonic())


@dataclass
class Stats:
    """Counters the heartbeat thread reads; written by the loop thread."""

    completed: int = 0
    failed: int = 0
    total_ms: float = 0.0
    last_active: float | None = None  # time.time()
    lock: threading.Lock = field(default_factory=threading.Lock)

    def record(self, ok: bool, duration_ms: float) -> None:
        with self.lock:
            if ok:
                self.completed += 1
            else:
                self.failed += 1
            self.total_ms += duration_ms
            self.last_active = time.time()

    def snapshot(self) -> dict[str, Any]:
        with self.lock:
            done = self.completed + self.failed
            return {"tasks_completed": self.completed, "tasks_failed": self.failed,
                    "avg_processing_time_ms": (self.total_ms / done) if done else 0.0,
                    "last_active": self.last_active}


def poll_interval(depth: int, settings: Settings) -> float:
    """The plan's adaptive poll: 0.1 s above 20 waiting, 0.5 s above 5, else 1.0 s."""
    if depth > DEPTH_FAST:
        return settings.poll_fast_s
    if depth > DEPTH_MEDIUM:
        return settings.poll_medium_s
    return settings.poll_slow_s


def _contain_base_exceptions(loop: asyncio.AbstractEventLoop, coro, **kwargs) -> asyncio.Task:
    """The event loop's task factory: every task runs its coroutine inside a
    wrapper that turns SystemExit and KeyboardInterrupt into an ordinary
    exception before it leaves the task.

    Hazard: asyncio re-raises those two out of any task that lets them escape,
    straight out of the event loop, so an async handler whose child task
    (asyncio.gather, create_task, wait_for) raised SystemExit would end the
    worker mid-flight, its task released without its attempt counted: the
    task would loop forever. Contained, the exception reaches the handler's
    await like any other, and the attempt fails with it.
    """
    task = asyncio.Task(_contained(coro), loop=loop, **kwargs)
    # A task cancelled before its first step never runs _contained, so the
    # coroutine it was given would never be awaited (and warn as it is
    # collected): close it. On a coroutine that ran, close() does nothing.
    task.add_done_callback(lambda done: coro.close() if done.cancelled() else None)
    return task


async def _contained(coro):
    try:
        return await coro
    except (SystemExit, KeyboardInterrupt) as exc:
        from .handler_threads import BaseExceptionRaised
        raise BaseExceptionRaised(exc) from exc


def set_parent_death_signal(sig: int = signal.SIGTERM) -> bool:
    """Ask Linux to send us ``sig`` when our parent dies (prctl PR_SET_PDEATHSIG)."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        return libc.prctl(1, int(sig), 0, 0, 0) == 0  # 1 = PR_SET_PDEATHSIG
    except OSError:
        return False


class Worker:
    def __init__(self, settings: Settings, *, worker_id: uuid.UUID | None = None,
                 supervisor_id: uuid.UUID | None = None, supervisor_pid: int | None = None,
                 in_process: bool = False, stop_when_idle: bool = False):
        """``in_process``: a guest in someone else's process (angela_queue.testing's
        drain): no signal handlers, no maintenance leadership, and never
        ``os._exit``. ``stop_when_idle``: stop once nothing is running and no
        task in its queues is due."""
        if not settings.dsn:
            raise ValueError("Worker needs settings.dsn (the CLI resolves it, the embedded server included)")
        self.settings = settings
        self.dsn = settings.dsn
        self.policy = ExecutionPolicy.from_settings(settings)
        self.id = worker_id or uuid.uuid4()
        self.supervisor_id = supervisor_id
        self.supervisor_pid = supervisor_pid
        self.in_process = in_process
        self.stop_when_idle = stop_when_idle
        self.queues = list(dict.fromkeys(settings.queues))  # unique, in the order given
        self.stats = Stats()

        self.conn: psycopg.AsyncConnection | None = None
        self.held: dict[int, ClaimedTask] = {}          # claimed, outcome not yet stored
        self.executing: set[asyncio.Task] = set()        # each uses one slot
        self.critical_jobs: set[asyncio.Task] = set()    # those of executing in a critical slot (slots.py)
        # A critical task may be waiting: a NOTIFY on CHANNEL_CRITICAL, or the
        # poll. Only then does a worker with every ordinary slot busy claim.
        self.critical_wanted = True
        self.collecting: dict[tuple[str, str], Batch] = {}
        self.ready: collections.deque[Batch] = collections.deque()
        # The outcome buffer and its flushes (completer.py).
        self.completer = Completer(self.id, settled=self._settled, keep_stored_ids=stop_when_idle)
        # Claimed tasks to give back at the next turn: a collected batch whose
        # queue was paused before it could start.
        self.to_release: list[int] = []
        # Tasks asked to stop (angela_queue.cancel_task) while held here, and
        # the asyncio job running each single task (cancelling it stops an
        # async handler).
        self.cancel_requested: set[int] = set()
        self.jobs: dict[int, asyncio.Task] = {}
        self.depth = 0
        # Whether the last poll found a limit in play (tasks_limits_in_play):
        # claims then count limits (tasks_claim); with none, the lighter
        # tasks_claim_unlimited. True until a poll says otherwise, and again
        # whenever a poll fails or the connection is recovered: the full
        # claim is right in every case.
        self.limits_in_play = True
        self.next_scheduled_at: float | None = None      # time.monotonic()
        self.housekeeping_due = 0.0                       # time.monotonic(); 0: at the first turn

        self.stopping = False
        self.crashed = False
        self.stop_deadline: float | None = None
        self.retiring = False
        self.exit_code = 0
        self._wake: asyncio.Event | None = None
        self._stopped: asyncio.Event | None = None     # set once stopping: ends backoff pauses
        self._loop: asyncio.AbstractEventLoop | None = None
        self._threads: HandlerThreads | None = None  # made on the loop, in _main
        self.turn_backoff = Backoff(f"worker {self.short_id}'s turn", log)
        self.housekeeping_backoff = Backoff(f"worker {self.short_id}'s poll (promotion of delayed tasks)", log)
        self.connect_backoff = Backoff(f"worker {self.short_id} connecting to the database", log,
                                       level=logging.WARNING)

    # --- lifecycle ------------------------------------------------------------

    def run(self) -> int:
        """Run until stopped; returns the process exit status."""
        if self.supervisor_pid is not None:
            set_parent_death_signal(signal.SIGTERM)
            if os.getppid() != self.supervisor_pid:
                log.error("supervisor %s is already gone; not starting", self.supervisor_pid)
                return 1
        code = asyncio.run(self._main())
        if self._threads is not None and self._threads.busy() and not self.in_process:
            # A sync handler is still running in its thread (its task was
            # released or timed out). Python would join that thread at exit
            # and hang; its task is already accounted for, so leave now.
            logging.shutdown()
            sys.stdout.flush()
            sys.stderr.flush()
            os._exit(code)
        return code

    def request_stop(self, fast: bool = False) -> None:
        """Stop claiming; running tasks get shutdown_grace_s (0 if fast) to finish."""
        grace = 0.0 if fast else self.settings.shutdown_grace_s
        deadline = time.monotonic() + grace
        if not self.stopping:
            log.info("worker %s stopping: finishing %d running task(s), grace %.0fs",
                     self.short_id, len(self.executing), grace)
        self.stopping = True
        self.stop_deadline = deadline if self.stop_deadline is None else min(self.stop_deadline, deadline)
        if self._stopped is not None:
            self._stopped.set()
        self.wake()

    def _stop_from_thread(self, fast: bool, why: str) -> None:
        """request_stop, for the heartbeat thread."""
        if self._loop is not None:
            try:
                self._loop.call_soon_threadsafe(self.request_stop, fast)
            except RuntimeError:  # the loop is closed: the worker is stopping anyway
                pass

    def wake(self) -> None:
        if self._wake is not None:
            self._wake.set()

    @property
    def short_id(self) -> str:
        return str(self.id)[:8]

    async def _main(self) -> int:
        self._loop = asyncio.get_running_loop()
        self._loop.set_task_factory(_contain_base_exceptions)
        self._wake = asyncio.Event()
        # Two spare threads: a sync handler that overran its timeout keeps its
        # thread while the worker finishes its other tasks before retiring.
        self._threads = HandlerThreads(self._loop, self.settings.concurrency + self.settings.critical_slots + 2)
        signals_seen = 0

        def on_signal(signum: int) -> None:
            nonlocal signals_seen
            signals_seen += 1
            log.info("received %s", signal.Signals(signum).name)
            self.request_stop(fast=signals_seen > 1)

        if not self.in_process:
            for sig in (signal.SIGTERM, signal.SIGINT):
                self._loop.add_signal_handler(sig, on_signal, sig)

        self._stopped = asyncio.Event()
        if self.stopping:
            self._stopped.set()
        if not registered_kinds():
            # Claiming with no handler would fail every task it takes.
            raise ConfigError("this worker has no @task handlers registered: import the module that defines "
                              "them first (the CLI's --app)")
        self.conn = await self._connect_with_retry()
        if self.conn is None:
            return self.exit_code       # stopped before the database ever answered
        # Refuses to run (SchemaMismatch, one line) against a schema that is
        # missing, older or newer than this code.
        await schema.acheck(self.conn)
        if not await self._register():
            await self._drop_connection()
            return self.exit_code
        log.info("worker %s started: pid %d, queues %s, concurrency %d, kinds %s", self.short_id, os.getpid(),
                 ",".join(self.queues), self.settings.concurrency, ",".join(registered_kinds()) or "none")
        heartbeat = Heartbeat(self.settings, self.id, supervisor_pid=self.supervisor_pid,
                              snapshot=self._heartbeat_snapshot, stop=self._stop_from_thread,
                              lead=self.supervisor_id is None and not self.in_process)
        heartbeat.start()
        listener = asyncio.create_task(self._listen())
        try:
            await self._loop_until_stopped()
        except BaseException:
            # A bug in the loop: what ran must keep its attempt (released, a
            # task that crashes the worker would loop forever); the reclaim
            # counts it once this worker is marked stopped.
            self.crashed = True
            raise
        finally:
            listener.cancel()
            await asyncio.gather(listener, return_exceptions=True)
            await self._shutdown()
            heartbeat.close()
            await self._mark_stopped()
            await self._drop_connection()
            self._threads.shutdown()
        log.info("worker %s stopped: %d succeeded, %d failed", self.short_id, self.stats.completed,
                 self.stats.failed)
        return self.exit_code

    async def _register(self) -> bool:
        """Announce this worker before it claims anything; False if it was stopped first.

        A database that refuses the row (read-only after a failover, say) is
        retried with backoff: the worker waits for it instead of exiting into
        its supervisor's crash loop.
        """
        backoff = Backoff(f"worker {self.short_id} registering", log)
        while not self.stopping:
            try:
                assert self.conn is not None
                await db.afetch_all(self.conn, "workers_register", {
                    "id": self.id, "supervisor_id": self.supervisor_id, "host": socket.gethostname(),
                    "pid": os.getpid(), "queues": self.queues, "concurrency": self.settings.concurrency,
                    "stuck_after_s": self.settings.stuck_after_s, "dead_after_s": self.settings.dead_after_s,
                    "kinds": registered_kinds()})
                await self._record_kinds()
                backoff.succeeded()
                return True
            except psycopg.Error as exc:
                if not db.is_connection_lost(exc, self.conn):
                    await self._pause(backoff.failed(db.first_line(exc)))
                    continue
                log.warning("database connection lost while registering (%s); reconnecting", db.first_line(exc))
                await self._drop_connection()
                self.conn = await self._connect_with_retry()
                if self.conn is None:
                    return False
        return False

    async def _record_kinds(self) -> None:
        """Record the @task defaults of this worker's kinds in angela_queue.kinds,
        so inserts from SQL and other languages get them. A login that may not
        write them (an older grant) only loses that: the worker still runs."""
        assert self.conn is not None
        try:
            await kinds.arecord(self.conn, f"worker {self.short_id} on {socket.gethostname()} (pid {os.getpid()})")
        except psycopg.errors.InsufficientPrivilege as exc:
            log.warning("could not record this worker's kinds in angela_queue.kinds (%s): inserts that leave "
                        "priority, queue or max_attempts unset get the queue's defaults, not @task's",
                        db.first_line(exc))
        except (psycopg.errors.DataError, psycopg.errors.IntegrityError) as exc:
            # A schedule the database refuses (a time zone it does not know):
            # the worker still serves its kinds; status shows no such periodic.
            log.error("could not record this worker's kinds and schedules: %s", db.first_line(exc))

    async def _pause(self, seconds: float) -> None:
        """Sleep, unless the worker is told to stop first."""
        assert self._stopped is not None
        try:
            await asyncio.wait_for(self._stopped.wait(), seconds)
        except asyncio.TimeoutError:
            pass

    # --- the loop -------------------------------------------------------------

    async def _loop_until_stopped(self) -> None:
        assert self._wake is not None
        while not self.stopping:
            try:
                claimed, asked = await self._turn()
            except psycopg.Error as exc:
                await self._after_failed_turn(exc)
                continue
            except (ValueError, TypeError) as exc:
                # Parameters that could not be sent (an encoding error in an
                # outcome): nothing reached the server. Treated as a refused
                # turn, the outcomes then go one by one and the bad one fails.
                log.error("a turn could not be sent (%s: %s)", type(exc).__name__, exc)
                await self._after_failed_turn(exc)
                continue
            self.turn_backoff.succeeded()
            self._collect_due_batches()
            if self.stop_when_idle and not claimed and await self._idle():
                self.request_stop()
                break
            if (asked and claimed >= asked) or (self._startable() and self.free_slots() > 0 and not self.stopping):
                # A full claim: more is probably waiting; or a batch is ready
                # to start (its start is recorded in the next turn). Let
                # finished handlers report first, so the next turn flushes
                # them in the same trip.
                await asyncio.sleep(0)
                continue
            await self._wait()

    async def _idle(self) -> bool:
        """Nothing in hand, and nothing due in our queues (a due delayed task
        or retry is promoted first, so it counts)."""
        if self.executing or self.held or self.collecting or self.ready or self.completer:
            return False
        assert self.conn is not None
        await self._housekeeping()
        rows = await db.afetch_all(self.conn, st.due_count(queues=self.queues))
        return rows[0]["due"] == 0

    async def _after_failed_turn(self, exc: Exception) -> None:
        """A turn failed. A lost connection: reconnect. Anything else means the
        server refused something we sent: back off (the same refusal, retried
        at once, would spin a core), then store the outcomes one by one, so
        that one outcome the database cannot take cannot hold the others, or
        the worker, hostage; and settle any task the database says we hold
        but we never got (a claim whose rows we could not read)."""
        if not db.is_connection_lost(exc, self.conn):
            await self._pause(self.turn_backoff.failed(db.first_line(exc)))
            try:
                assert self.conn is not None
                await self.completer.store_one_by_one(self.conn)
                await self._settle_unknown_claims(f"the worker could not take it after claiming it "
                                                  f"({db.first_line(exc)})")
                return
            except psycopg.Error as again:
                if not db.is_connection_lost(again, self.conn):
                    return  # still refused: the next turn backs off further
                exc = again
        log.warning("database connection lost (%s); reconnecting", db.first_line(exc))
        # Counted like a refusal: a connection that breaks at every turn (a
        # pooler dropping us, a server in recovery) is backed off from too.
        if self.turn_backoff.failing:
            await self._pause(self.turn_backoff.failed(db.first_line(exc)))
        else:
            self.turn_backoff.failed(db.first_line(exc))
        await self._recover_connection()

    async def _turn(self) -> tuple[int, int]:
        """One round trip: flush outcomes, housekeeping when due, start ready
        batches, fill collecting ones, claim. Returns (claimed, asked)."""
        assert self.conn is not None and self._wake is not None
        # Clear at the start of the turn, not before waiting: anything that
        # happens from here on (a slot frees, a NOTIFY) must wake the next wait.
        self._wake.clear()
        flush = self.completer.take()
        statements = self.completer.statements(flush)
        n_flush = len(statements)
        releasing = self.to_release
        if releasing:
            statements.append(st.release_many(worker_id=self.id, ids=releasing))

        now = time.monotonic()
        # Promotion of due scheduled tasks runs on its own clock, busy or not:
        # a worker that never idles must still bring delayed tasks and retries
        # in on time.
        housekeeping = now >= self.housekeeping_due or (
            self.next_scheduled_at is not None and now >= self.next_scheduled_at)
        if housekeeping:
            await self._housekeeping()
        # Batches whose collection is over start in the free slots: their
        # tasks were claimed unstarted, so the start (the attempt) is recorded
        # first, in this trip, and only the tasks still ours then run. Not
        # while critical work may be waiting for those slots (slots.py).
        self._collect_due_batches()
        startable = self._startable()
        first = critical_goes_first(critical_slots=self.settings.critical_slots,
                                    critical_running=len(self.critical_jobs),
                                    critical_wanted=self.critical_wanted,
                                    ready=[b.tasks[0].effective_priority for b in startable],
                                    overdue=any(now - (b.ready_at or now) >= READY_PASSED_OVER_MAX_S
                                                for b in startable))
        starting = [] if first else self._take_ready()
        if starting:
            statements.append(st.start_many(worker_id=self.id,
                                            ids=[t.id for _, part in starting for t in part.tasks]))
        n_before_fills = len(statements)

        fills: list[Batch] = []
        if not self.stopping and not self.retiring:
            for batch in self.collecting.values():
                if batch.next_fill_at <= now and len(batch.tasks) < self.settings.batch_size:
                    batch.next_fill_at = now + BATCH_FILL_EVERY_S
                    fills.append(batch)
                    statements.append(st.claim_kind(worker_id=self.id, queue=batch.queue, kind=batch.kind,
                                                    limit=self.settings.batch_size - len(batch.tasks)))
        claim = self._claim_size(starting=len(starting), critical_first=first)
        asked = claim.limit
        if asked:
            if claim.critical_only:
                # Set again by a NOTIFY during the trip, or below if it fills.
                self.critical_wanted = False
            # Critical work starts at its claim (batch_below 0) and runs alone,
            # in a critical slot or in the ordinary one it was claimed for: a
            # low task aged into the critical tier is never collected then.
            # With --claim-commit fast, a trip that only claims (an idle worker
            # woken by an enqueue) does not wait for the disk: a crash may lose
            # it, and its tasks run again. One that also stores outcomes
            # always waits (statements.claims_only).
            relax = self.settings.claim_commit == "fast" and st.claims_only(statements)
            statements.append(st.claim(worker_id=self.id, queues=self.queues, limit=asked,
                                       min_effective=claim.min_effective,
                                       batch_below=0 if claim.critical_only else self._batch_below,
                                       relax=relax, unlimited=not self.limits_in_play))
        if not statements:
            return 0, 0

        try:
            results = await db.apipeline(self.conn, statements)
        except BaseException:
            # Nothing of the trip happened: the batches wait for the next one,
            # and critical work may still be waiting.
            self._give_back_ready(starting)
            if claim.critical_only:
                self.critical_wanted = True
            raise
        self.completer.stored(flush, results[:n_flush])
        if releasing:
            self.to_release = [i for i in self.to_release if i not in set(releasing)]
        if starting:
            self._start_batches(starting, results[n_before_fills - 1])
        for batch, rows in zip(fills, results[n_before_fills:n_before_fills + len(fills)]):
            for row in rows:
                self._hold(ClaimedTask.from_row(row))
                batch.tasks.append(self.held[row["id"]])
            self._batch_maybe_ready(batch)
        claimed_rows = results[-1] if asked else []
        if claim.critical_only and len(claimed_rows) >= asked:
            self.critical_wanted = True   # every slot asked for filled: there may be more
        for row in claimed_rows:
            self._dispatch(ClaimedTask.from_row(row), critical_slot=claim.critical)
        return len(claimed_rows), asked

    def free_slots(self) -> int:
        """Free ordinary slots (the critical ones are slots.py's)."""
        return self.settings.concurrency - self._ordinary_running()

    def _ordinary_running(self) -> int:
        return len(self.executing) - len(self.critical_jobs)

    @property
    def _batch_below(self) -> int:
        """Tasks below this priority are collected into batches (0: none are)."""
        return BATCH_BELOW_PRIORITY if self.settings.batch_size > 1 else 0

    def _start_batches(self, taken: list[tuple[Batch, Batch]], started_rows: list[dict[str, Any]]) -> None:
        """Run what _take_ready took, now that its start is recorded."""
        started = {r["id"]: r for r in started_rows}
        for origin, batch in taken:
            if batch is origin and origin in self.ready:
                self.ready.remove(origin)    # started whole (a cancel may have emptied it already)
            kept = []
            for task in batch.tasks:
                if task.id in started:
                    task.attempts = started[task.id]["attempts"]
                    task.started_at = started[task.id]["started_at"]
                    kept.append(task)
                else:
                    # Its queue was paused meanwhile (given back at the next
                    # turn), or it was reclaimed (then the release matches nothing).
                    log.info("task %d did not start with its batch (its queue was paused, or it was reclaimed); "
                             "giving it back", task.id)
                    self.held.pop(task.id, None)
                    self.to_release.append(task.id)
            if not kept:
                origin.part_running = False
                if batch is not origin and origin in self.ready:
                    # Most likely its queue was paused: the rest of the batch
                    # goes back now too, not one task per trip.
                    self.ready.remove(origin)
                    for task in origin.tasks:
                        self.held.pop(task.id, None)
                        self.to_release.append(task.id)
            elif batch is origin:
                batch.tasks = kept
                self._start(self._run_batch(batch), list(kept))
            else:
                self._start(self._run_part(origin, batch), list(kept))

    async def _run_part(self, origin: Batch, part: Batch) -> None:
        """One task of a ready batch (see _take_ready); its slot frees at its end."""
        try:
            await self._run_batch(part)
        finally:
            origin.part_running = False

    def _claim_size(self, starting: int = 0, critical_first: bool = False) -> Claim:
        """How many tasks to claim now, and the least effective priority to take (slots.py)."""
        return claim_size(concurrency=self.settings.concurrency, critical_slots=self.settings.critical_slots,
                          running=self._ordinary_running(),
                          critical_running=len(self.critical_jobs), starting=starting,
                          batches=self._reserved_by_batches(), critical_wanted=self.critical_wanted,
                          critical_first=critical_first, stopping=self.stopping or self.retiring)

    def _take_ready(self) -> list[tuple[Batch, Batch]]:
        """What of the ready batches starts this turn, one free slot each, in
        order: (the ready batch, the part of it that starts).

        A batch handler's batch starts whole: one call takes the list. Any
        other kind's batch runs one task at a time, as before, but each in a
        slot of its own, taken at a turn and given back when it ends: run
        back to back in one slot, a batch of five 20 ms tasks held it for
        100 ms, and critical work that came meanwhile could not have it
        (slots.critical_goes_first decides at each turn). Its waiting tasks
        hold no slot and cost no attempt.
        """
        taken: list[tuple[Batch, Batch]] = []
        free = self.free_slots()
        # Best next task first (a low one aged past fresh work outranks it);
        # sorted() is stable, so equals keep the order they became ready in.
        startable = sorted(self._startable(), key=lambda b: -b.tasks[0].effective_priority)
        for batch in startable:
            if len(taken) >= free or self.stopping:
                break
            # Marked, not removed, while its start is in flight: a failed trip
            # then leaves the order as it was.
            batch.part_running = True
            definition = lookup(batch.kind)
            if (definition is not None and definition.batch) or len(batch.tasks) == 1:
                taken.append((batch, batch))
                continue
            part = Batch(batch.queue, batch.kind, [batch.tasks.pop(0)], started_at=batch.started_at)
            taken.append((batch, part))
        return taken

    def _give_back_ready(self, taken: list[tuple[Batch, Batch]]) -> None:
        """Undo _take_ready after a trip that did not happen."""
        for batch, part in taken:
            if part is not batch:
                batch.tasks[:0] = part.tasks
            batch.part_running = False

    def _startable(self) -> list[Batch]:
        """Ready batches that could start in a free slot now, in the order they became ready."""
        return [b for b in self.ready if b.tasks and not b.part_running]

    def _reserved_by_batches(self) -> int:
        """Slots the batches reserve: each collecting one, and each ready one
        but those with a task running (that task holds its slot)."""
        return len(self.collecting) + len(self._startable())

    async def _wait(self) -> None:
        """Sleep until a slot frees, a NOTIFY arrives, a batch is due, or the poll timer fires."""
        assert self._wake is not None
        now = time.monotonic()
        timeout = max(0.0, self.housekeeping_due - now)
        for batch in self.collecting.values():
            timeout = min(timeout, max(0.0, batch.started_at + self.settings.batch_wait_s - now),
                          max(0.0, batch.next_fill_at - now))
        if self.next_scheduled_at is not None:
            timeout = min(timeout, max(0.0, self.next_scheduled_at - now))
        if timeout <= 0:
            return  # something is due now: the next turn does it
        try:
            await asyncio.wait_for(self._wake.wait(), timeout)
        except asyncio.TimeoutError:
            return  # the poll timer: the next turn does the housekeeping
        # Let handlers finishing at the same moment (thread results land in
        # one hand-back) report too, so one trip flushes them all.
        await asyncio.sleep(0)
        await asyncio.sleep(0)

    async def _housekeeping(self) -> None:
        """The poll, in a round trip and a transaction of its own: the backstop
        for lost NOTIFYs, promotion of due delayed tasks, the depth that sets
        the next poll interval, and cancel requests.

        Hazard: kept out of the turn's transaction, a due row the database
        cannot promote (whatever is wrong with it) costs this poll, never the
        claim and the outcomes; and only the queues this worker serves are
        promoted here.
        """
        assert self.conn is not None
        try:
            self._housekeeping_done(await db.apipeline(self.conn, self._housekeeping_statements()))
            self.housekeeping_backoff.succeeded()
        except psycopg.Error as exc:
            if db.is_connection_lost(exc, self.conn):
                raise
            delay = self.housekeeping_backoff.failed(db.first_line(exc))
            self.limits_in_play = True
            self.housekeeping_due = time.monotonic() + max(delay, poll_interval(self.depth, self.settings))
            self.next_scheduled_at = None

    def _housekeeping_statements(self) -> list[Query]:
        return [
            st.promote_due(queues=self.queues),
            st.next_scheduled_at(queues=self.queues),
            st.queued_depth(queues=self.queues, cap=DEPTH_FAST + 1),
            st.cancel_requested_for_worker(worker_id=self.id),  # the backstop for a lost cancel NOTIFY
            st.commit_mode(queues=self.queues),
            st.limits_in_play(queues=self.queues),
        ]

    def _housekeeping_done(self, results: list[list[dict[str, Any]]]) -> None:
        promoted = results[0][0]["promoted"] if results[0] else 0
        if promoted:
            log.debug("promoted %d scheduled task(s)", promoted)
        nxt = results[1][0] if results[1] else None
        if nxt and nxt["next_run_at"] is not None:
            seconds = (nxt["next_run_at"] - nxt["db_now"]).total_seconds()
            self.next_scheduled_at = time.monotonic() + max(0.0, seconds)
        else:
            self.next_scheduled_at = None
        self.depth = results[2][0]["depth"] if results[2] else 0
        # A limit set since this poll is still never overrun (the unlimited
        # claim passes over its tasks); its tasks wait for the next poll.
        in_play = results[5][0]["limits_in_play"] if results[5] else True
        if in_play != self.limits_in_play:
            log.debug("worker %s: %s", self.short_id, "a limit is in play: claims count limits" if in_play
                      else "no limit in play: claims take the unlimited path")
        self.limits_in_play = in_play
        self.housekeeping_due = time.monotonic() + poll_interval(self.depth, self.settings)
        # The backstop for critical tasks that came due without an insert (a
        # delayed one, a retry, a reclaim): one look per poll.
        self.critical_wanted = True
        for row in results[3]:
            if row["id"] in self.held and row["id"] not in self.cancel_requested:
                self._cancel_requested(row["id"])

    async def _listen(self) -> None:
        """Wake the loop on inserts into our queues. Reconnects on its own."""
        delay = 0.1
        while True:
            try:
                async with await db.aconnect(self.dsn, application_name="angela-queue-listen") as conn:
                    await db.alisten(conn, CHANNEL_INSERT)
                    await db.alisten(conn, CHANNEL_CANCEL)
                    await db.alisten(conn, CHANNEL_CRITICAL)
                    delay = 0.1
                    self.critical_wanted = True
                    self.wake()  # anything inserted while we were not listening
                    async for note in conn.notifies():
                        if note.channel == CHANNEL_CANCEL:
                            if note.payload.isdigit() and int(note.payload) in self.held:
                                self._cancel_requested(int(note.payload))
                        elif note.payload in self.queues:
                            if note.channel == CHANNEL_CRITICAL:
                                self.critical_wanted = True
                            self.wake()
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # noqa: BLE001 - keep listening whatever happened
                log.debug("listen connection failed (%s); retrying in %.1fs", db.first_line(exc), delay)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 5.0)

    # --- dispatching ----------------------------------------------------------

    def _hold(self, task: ClaimedTask) -> None:
        self.held[task.id] = task
        self.stats.last_active = time.time()

    def _dispatch(self, task: ClaimedTask, critical_slot: bool = False) -> None:
        self._hold(task)
        definition = lookup(task.kind)
        # A low task the claim already started (a rate-limited kind's: its
        # start is what the limit counts, or a critical slot's) runs now, not
        # in a collected batch.
        if task.priority < self._batch_below and task.started_at is None and not critical_slot:
            key = (task.queue, task.kind)
            batch = self.collecting.get(key)
            if batch is None:
                batch = self.collecting[key] = Batch(task.queue, task.kind)
            batch.tasks.append(task)
            if task.effective_priority >= BATCH_BELOW_PRIORITY:
                # Aged past the batching line: it now outranks fresh medium
                # work, so it must not wait for company.
                batch.started_at = min(batch.started_at, time.monotonic() - self.settings.batch_wait_s)
            self._batch_maybe_ready(batch)
            return
        if definition is not None and definition.batch:
            # A batch handler takes a list whatever the priority or batch size:
            # alone, a list of one.
            self._start(self._run_batch(Batch(task.queue, task.kind, [task])), [task], critical_slot)
            return
        self._start(self._run_one(task), [task], critical_slot)

    def _batch_maybe_ready(self, batch: Batch) -> None:
        key = (batch.queue, batch.kind)
        if self.collecting.get(key) is not batch:
            return
        due = time.monotonic() >= batch.started_at + self.settings.batch_wait_s
        if len(batch.tasks) >= self.settings.batch_size or (due and batch.tasks):
            del self.collecting[key]
            batch.ready_at = time.monotonic()
            self.ready.append(batch)

    def _collect_due_batches(self) -> None:
        """Collecting batches that are full or have waited long enough become ready."""
        for batch in list(self.collecting.values()):
            self._batch_maybe_ready(batch)

    def _start(self, coro, tasks: list[ClaimedTask], critical_slot: bool = False) -> None:
        job = asyncio.create_task(self._in_slot(coro, tasks))
        self.executing.add(job)
        if critical_slot:
            self.critical_jobs.add(job)

    async def _in_slot(self, coro, tasks: list[ClaimedTask]) -> None:
        # The slot frees the moment the handler's outcome is recorded, in the
        # same loop iteration, so the next turn flushes it *and* refills the
        # slot in one round trip (a done-callback would run one iteration
        # later and split that into two trips).
        try:
            await coro
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # noqa: BLE001 - a bug here must not kill the loop, nor orphan a task
            log.exception("internal error in task execution")
            # Whatever escaped, each task still gets an outcome: held with none,
            # it would sit 'running' and be released, its attempt never counted.
            reported = self.completer.reported()
            for task in tasks:
                if task.id in self.held and task.id not in reported:
                    self._record(task, Outcome(task.id, ok=False, finished_at=time.time(),
                                               retry_in_s=self.policy.retry_in(task, lookup(task.kind)),
                                               error=clean_text(f"internal error in the worker: "
                                                                f"{type(exc).__name__}")))
        finally:
            self.executing.discard(asyncio.current_task())  # type: ignore[arg-type]
            self.critical_jobs.discard(asyncio.current_task())  # type: ignore[arg-type]
            self.wake()

    def _cancel_requested(self, task_id: int) -> None:
        """Someone asked this task to stop. Not started yet (in a collecting or
        ready batch): it ends now. Running an async handler: the handler is
        cancelled. Running a sync one (or inside a batch call): it finishes,
        and the database records the outcome as cancelled either way."""
        if task_id in self.cancel_requested:
            return
        self.cancel_requested.add(task_id)
        task = self.held.get(task_id)
        for batch in list(self.collecting.values()) + list(self.ready):
            for waiting in list(batch.tasks):
                if waiting.id == task_id:
                    batch.tasks.remove(waiting)
                    log.info("task %d cancelled before it started", task_id)
                    self.completer.add(Outcome(task_id, ok=False, cancelled=True, finished_at=time.time(),
                                               error="cancelled before its batch started"))
                    self.wake()
        self.collecting = {k: b for k, b in self.collecting.items() if b.tasks}
        self.ready = collections.deque(b for b in self.ready if b.tasks)
        job = self.jobs.get(task_id)
        if job is not None and not job.done() and task is not None and lookup(task.kind) is not None \
                and lookup(task.kind).is_async:
            log.info("task %d was asked to stop: cancelling its handler", task_id)
            job.cancel("task cancelled")
        else:
            log.info("task %d was asked to stop: its outcome will be recorded as cancelled", task_id)

    def is_cancel_requested(self, task_id: int) -> bool:
        return task_id in self.cancel_requested

    async def _run_one(self, task: ClaimedTask) -> None:
        self.jobs[task.id] = asyncio.current_task()  # type: ignore[assignment]
        try:
            outcome = await execute_one(lookup(task.kind), task, self.policy, self._threads,
                                        self._on_abandoned_thread, self.is_cancel_requested)
        except asyncio.CancelledError:
            if task.id not in self.cancel_requested or self.stopping:
                raise
            # Our own cancel of this one handler: the job goes on to record it.
            asyncio.current_task().uncancel()  # type: ignore[union-attr]
            outcome = Outcome(task.id, ok=False, cancelled=True, finished_at=time.time(),
                              error="cancelled while running (its async handler was cancelled)")
        finally:
            self.jobs.pop(task.id, None)
        self._record(task, outcome)

    async def _run_batch(self, batch: Batch) -> None:
        definition = lookup(batch.kind)
        if definition is not None and definition.batch:
            outcomes = await execute_batch(definition, batch.tasks, self.policy, self._threads,
                                           self._on_abandoned_thread, self.is_cancel_requested)
            for task, outcome in zip(batch.tasks, outcomes, strict=True):
                self._record(task, outcome)
            return
        for task in batch.tasks:  # not a batch handler: one by one, in order
            if self.stopping:
                return  # the rest are released by _shutdown
            if task.id in self.cancel_requested:
                self._record(task, Outcome(task.id, ok=False, cancelled=True, finished_at=time.time(),
                                           error="cancelled before its handler started"))
                continue
            # As a single task: registered in self.jobs, so a cancel reaches
            # an async handler here too.
            await self._run_one(task)

    def _record(self, task: ClaimedTask, outcome: Outcome) -> None:
        self.completer.add(outcome)
        event = {"extra": {"event": self._task_event(task, outcome)}}
        if outcome.snoozed:
            # Neither a success nor a failure: the attempt does not count.
            log.info("task %d %s p%d snoozed for %gs (attempt %d not counted)", task.id, task.kind,
                     task.priority, outcome.snooze_s, task.attempts, **event)
            return
        self.stats.record(outcome.ok, outcome.duration_ms)
        if outcome.ok:
            log.info("task %d %s p%d succeeded in %.1fms (attempt %d)%s", task.id, task.kind, task.priority,
                     outcome.duration_ms, task.attempts,
                     "; recorded as cancelled (asked to stop)" if task.id in self.cancel_requested else "", **event)
        elif outcome.cancelled:
            log.info("task %d %s p%d cancelled: %s", task.id, task.kind, task.priority, outcome.error, **event)
        else:
            final = not outcome.retry or task.attempts >= task.max_attempts
            log.warning("task %d %s p%d failed in %.1fms (attempt %d/%d%s): %s", task.id, task.kind,
                        task.priority, outcome.duration_ms, task.attempts, task.max_attempts,
                        ", final" if final else ", will retry", (outcome.error or "").splitlines()[0], **event)

    def _task_event(self, task: ClaimedTask, outcome: Outcome) -> dict[str, Any]:
        """A task outcome as --log-format json writes it (logs.py)."""
        wait_ms = task.wait_ms
        return {"event": "task", "task_id": task.id, "kind": task.kind, "queue": task.queue,
                "priority": task.priority, "tier": tier_of(task.priority), "attempt": task.attempts,
                "max_attempts": task.max_attempts, "outcome": outcome.name(task),
                "wait_ms": None if wait_ms is None else round(wait_ms, 3), "run_ms": round(outcome.duration_ms, 3),
                "worker": str(self.id), "error": (outcome.error or "").splitlines()[0] if outcome.error else None}

    def _on_abandoned_thread(self) -> None:
        # Called on the loop thread when a sync handler overran its timeout.
        if not self.retiring:
            log.error("a sync handler ignored its timeout; worker %s retires once the other tasks finish "
                      "(exit %d, its supervisor starts a replacement)", self.short_id, EXIT_RETIRE)
        self.retiring = True
        self.exit_code = EXIT_RETIRE
        self.request_stop()

    # --- outcomes -------------------------------------------------------------

    def _settled(self, task_id: int) -> None:
        """The completer is done with this task's outcome: stored, or never to be."""
        self.held.pop(task_id, None)
        self.cancel_requested.discard(task_id)

    @property
    def finished_ids(self) -> list[int]:
        """With stop_when_idle: the ids whose outcome this worker stored, in order."""
        return self.completer.stored_ids or []

    # --- connection recovery ----------------------------------------------------

    async def _connect_with_retry(self) -> psycopg.AsyncConnection | None:
        """Connect, retrying with backoff while the database is away; None if told to stop first."""
        while True:
            try:
                conn = await db.aconnect(self.dsn, application_name=f"angela-queue-worker-{self.short_id}",
                                         hot_path=True)
                self.connect_backoff.succeeded()
                return conn
            except Exception as exc:  # noqa: BLE001 - unreachable, refused, starting up: wait and retry
                if self.stopping:
                    return None
                await self._pause(self.connect_backoff.failed(db.first_line(exc)))

    async def _drop_connection(self) -> None:
        """Close the main connection, whatever state it is in, and forget it."""
        if self.conn is not None:
            try:
                await self.conn.close()
            except Exception:  # noqa: BLE001 - it is being thrown away
                pass
            self.conn = None

    async def _recover_connection(self) -> None:
        """Reconnect, then give back what a lost claim left with us. Retries
        until it works or the worker is told to stop: the database flapping
        during recovery must not kill the worker."""
        backoff = Backoff(f"worker {self.short_id} recovering its connection", log, level=logging.WARNING)
        while True:
            await self._drop_connection()
            try:
                self.conn = await self._connect_with_retry()
                if self.conn is None:
                    return
                # Whatever changed while we were away (a limit set), the
                # full claim until the next poll says otherwise.
                self.limits_in_play = True
                # A claim may have committed without its rows reaching us: give
                # back whatever the database says we hold but we are not running.
                # A migration may be why the connection went: check the schema.
                try:
                    await schema.acheck(self.conn)
                except SchemaMismatch as exc:
                    log.error("%s; stopping", exc)
                    self.exit_code = 1
                    self.request_stop()
                    return
                ours = await self._running_here()
                orphans = [i for i in ours if i not in self.held]
                if orphans:
                    released = await db.afetch_all(self.conn, st.release_many(worker_id=self.id, ids=orphans))
                    log.warning("released %d task(s) claimed during the connection loss", len(released))
                # The reverse: tasks still running here (no outcome yet: a
                # flush whose commit we never heard of is the completer's to
                # sort out) that the database no longer gives this worker.
                # Reclaimed meanwhile, or claimed by a commit the database
                # lost in a crash (--claim-commit fast): either way their
                # outcomes will match nothing, and they run again.
                reported = self.completer.reported()
                lost = sorted(i for i in self.held if i not in ours and i not in reported)
                if lost:
                    log.warning("%d task(s) running here are no longer this worker's in the database (reclaimed, or "
                                "their claim was lost in a database crash): their outcomes will not be recorded, and "
                                "they run again: %s", len(lost), ", ".join(map(str, lost[:20])))
                backoff.succeeded()
                log.info("reconnected to the database")
                return
            except Exception as exc:  # noqa: BLE001 - keep trying; the final flush handles a stop
                if self.stopping:
                    return
                await self._pause(backoff.failed(db.first_line(exc)))

    async def _running_here(self) -> set[int]:
        """The tasks the database says this worker runs."""
        assert self.conn is not None
        rows = await db.afetch_all(self.conn, st.running_for_worker(worker_id=self.id))
        return {r["id"] for r in rows}

    async def _unknown_claims(self) -> list[int]:
        """Tasks the database says this worker runs, that the worker never received."""
        return [i for i in await self._running_here() if i not in self.held]

    async def _settle_unknown_claims(self, reason: str) -> None:
        """After a refused turn: a claim that committed but whose rows could not be
        read would sit 'running' until reclaimed. Fail those attempts now (counted,
        retried with a short delay), so a row that cannot be read stops after its
        max_attempts instead of being claimed again forever."""
        orphans = await self._unknown_claims()
        if not orphans:
            return
        assert self.conn is not None
        now = utc(time.time())
        # Claimed unstarted ones have no attempt counted yet: count it, or a
        # row that cannot be read would be claimed again forever.
        await db.afetch_all(self.conn, st.start_many(worker_id=self.id, ids=orphans))
        await db.afetch_all(self.conn, st.fail_many(worker_id=self.id, ids=orphans,
                                                    errors=[clean_text(reason)] * len(orphans),
                                                    retry_in_s=[1.0] * len(orphans), failed_ats=[now] * len(orphans)))
        log.error("failed the attempts of %d claimed task(s) the worker could not read: %s", len(orphans), reason)

    # --- shutdown -------------------------------------------------------------

    async def _shutdown(self) -> None:
        """Finish or release everything in hand; leave nothing 'running'."""
        # Batches that never started go straight back.
        unstarted = [t.id for b in list(self.collecting.values()) + list(self.ready) for t in b.tasks]
        unstarted += self.to_release
        self.collecting.clear()
        self.ready.clear()
        deadline = self.stop_deadline if self.stop_deadline is not None else time.monotonic()
        # Wait in short steps: a second signal (fast stop) moves the deadline
        # up while we are already waiting.
        while self.executing and time.monotonic() < deadline:
            await asyncio.wait(set(self.executing), timeout=min(0.2, max(0.0, deadline - time.monotonic())))
            deadline = self.stop_deadline if self.stop_deadline is not None else deadline
        pending = set(self.executing)
        for job in pending:
            job.cancel()
        if pending:
            await asyncio.wait(pending, timeout=1.0)
        reported = self.completer.reported()
        started = set() if self.crashed else {tid for tid in self.held if tid not in reported}
        await self._final_flush(sorted(set(unstarted) | started))

    async def _final_flush(self, release_ids: list[int]) -> None:
        """Store the last outcomes and release the rest, retrying through a
        database that is briefly away (about 20 s in all): a success that is
        not recorded would run again once its task is reclaimed."""
        delay = 0.2
        for _ in range(12):
            try:
                if self.conn is None or self.conn.closed:
                    self.conn = await db.aconnect(self.dsn, hot_path=True)
                flush = self.completer.take()
                statements = self.completer.statements(flush)
                if release_ids:
                    statements.append(st.release_many(worker_id=self.id, ids=release_ids))
                if statements:
                    try:
                        results = await db.apipeline(self.conn, statements)
                    except (psycopg.Error, ValueError, TypeError) as exc:
                        if isinstance(exc, psycopg.Error) and db.is_connection_lost(exc, self.conn):
                            raise
                        log.error("the database refused the last outcomes (%s); storing them one by one",
                                  db.first_line(exc))
                        await self.completer.store_one_by_one(self.conn)
                        continue
                    self.completer.stored(flush, results[:len(statements) - (1 if release_ids else 0)])
                    if release_ids:
                        log.info("released %d unfinished task(s) back to the queue", len(results[-1]))
                return
            except Exception as exc:  # noqa: BLE001 - connection lost or refused: retry
                log.warning("final flush failed (%s); retrying in %.1fs", db.first_line(exc), delay)
                await self._drop_connection()
                await asyncio.sleep(delay)
                delay = min(delay * 2, 3.0)
        log.error("could not record the last outcomes; those tasks will be reclaimed and run again")

    async def _mark_stopped(self) -> None:
        try:
            if self.conn is None or self.conn.closed:
                self.conn = await db.aconnect(self.dsn)
            await db.afetch_all(self.conn, "workers_mark_stopped", {"id": self.id, **self._stat_params()})
        except Exception as exc:  # noqa: BLE001 - the leader marks the row dead later
            log.warning("could not mark worker %s stopped: %s", self.short_id, db.first_line(exc))

    def _stat_params(self) -> dict[str, Any]:
        snap = self.stats.snapshot()
        snap.pop("last_active")
        return snap

    # --- heartbeat ------------------------------------------------------------

    def _heartbeat_snapshot(self) -> dict[str, Any]:
        """What the heartbeat row says now (read from the heartbeat thread)."""
        snap = self.stats.snapshot()
        current = sorted(self.held)   # one C-level copy of the keys: safe against the loop thread
        # Active while holding anything, a collecting batch included.
        snap["status"] = "stopping" if self.stopping else ("active" if current else "idle")
        snap["current_tasks"] = current
        return snap

