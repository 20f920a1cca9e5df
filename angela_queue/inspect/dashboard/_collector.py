"""The collector: one thread that samples the database and keeps the latest stats.

However many browsers watch, the database sees one reader: the collector
runs the ``dashboard_*`` queries (sql/dashboard.sql) at most once per
``REFRESH_S`` and every request is served from its latest snapshot.

Hazards this module is built around:
- A dashboard must never become the load it watches. Each query is
  throttled by its own cost: after a run that took *d* seconds it waits at
  least ``THROTTLE_FACTOR`` x *d* before it runs again, so even a slow
  query keeps the database no more than ~1/THROTTLE_FACTOR busy. The
  session has a statement timeout and is read only.
- Nobody watching costs nothing on the tasks table: after ``IDLE_AFTER_S``
  without a request only the workers' heartbeat rows are read (they feed
  the throughput history); the first request after that waits for a full
  sample.
- The database may go away at any time (restart, network, a dropped
  schema). Every error is caught, the connection dropped and rebuilt on the
  next tick, and the error is what the API returns until a sample succeeds.
"""

from __future__ import annotations

import datetime as dt
import decimal
import json
import logging
import math
import threading
import time
import uuid
from collections import deque
from collections.abc import Iterable, Mapping
from typing import Any

import psycopg

from ... import db, schema
from ...errors import DatabaseUnavailable, SchemaMismatch
from ...backoff import Backoff
from ...maintenance.lease import MAINTENANCE_LEASE

log = logging.getLogger("angela_queue.dashboard")

TIERS = ("critical", "high", "medium", "low")

# Sampling cadence.
REFRESH_S = 1.0
# The started-task sample (latency, SLA) changes slowly and costs the most.
RECENT_EVERY_S = 2.0
THROTTLE_FACTOR = 10.0
# Without a request for this long, only the worker counters are sampled.
IDLE_AFTER_S = 15.0
# A request finding the snapshot older than this waits for a fresh one.
STALE_AFTER_S = 3.0
# How long a request waits for that fresh sample (the first one included).
FRESH_WAIT_S = 4.0

# Windows.
LATENCY_WINDOW_S = 300.0        # enqueue -> start p50/p99: tasks started in the last 5 minutes
SLA_WINDOW_S = 3600.0           # SLA attainment: tasks started in the last hour
THROUGHPUT_WINDOW_S = 60.0      # tasks/s over the last minute
HISTORY_S = 600.0               # throughput bars: the last 10 minutes...
BUCKET_S = 10.0                 # ...in 10-second bars
RECENT_ROWS_S = 600.0           # stopped workers and supervisors stay listed this long
FAILURE_GROUPS = 20             # the failures panel: the largest groups of (queue, kind, error)
PRIVILEGES_EVERY_S = 10.0       # a grant or revoke shows on the page this soon
# Latency and SLA are drawn from the tasks enqueued in the last LOOKBACK_S
# (SLA window + 1 h, so a start that waited up to an hour past any deadline
# is still seen), at most the newest SAMPLE_ROWS of them (~60 ms to read).
LOOKBACK_S = SLA_WINDOW_S + 3600.0
SAMPLE_ROWS = 100_000

# Database session.
STATEMENT_TIMEOUT_MS = 5_000
CONNECT_TIMEOUT_S = 3.0
APPLICATION_NAME = "angela-queue-dashboard"

# A worker row first seen by a sample is new (all its counts are new work)
# if it started after the previous sample, give or take this much: its
# registration may have committed just after that sample's snapshot.
NEW_WORKER_SLACK = dt.timedelta(seconds=5)


def describe_error(exc: BaseException) -> str:
    """One line for the page and the log, with a hint when the fix is known."""
    message = db.first_line(exc)
    if isinstance(exc, (psycopg.errors.UndefinedTable, psycopg.errors.InvalidSchemaName,
                        psycopg.errors.UndefinedFunction)):
        message += " (is the schema migrated? run `angela-queue migrate`)"
    elif isinstance(exc, psycopg.errors.QueryCanceled):
        message += f" (a dashboard query ran past {STATEMENT_TIMEOUT_MS} ms and was cancelled)"
    return message


def to_jsonable(value: Any) -> Any:
    """json.dumps default: timestamps as UTC ISO 8601, UUIDs as text, numbers as numbers."""
    if isinstance(value, dt.datetime):
        if value.tzinfo is not None:
            value = value.astimezone(dt.timezone.utc)
        return value.isoformat().replace("+00:00", "Z")
    if isinstance(value, uuid.UUID):
        return str(value)
    if isinstance(value, decimal.Decimal):
        return float(value)
    if isinstance(value, (set, frozenset, tuple)):
        return list(value)
    raise TypeError(f"cannot encode {type(value).__name__} as JSON")


def dumps(data: Mapping[str, Any]) -> bytes:
    """Strict JSON (browsers reject NaN): a non-finite number, from a task
    whose timestamps are 'infinity', say, is sent as null."""
    try:
        return json.dumps(data, default=to_jsonable, allow_nan=False, separators=(",", ":")).encode()
    except ValueError:
        return json.dumps(_finite(data), default=to_jsonable, allow_nan=False, separators=(",", ":")).encode()


def _finite(value: Any) -> Any:
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, Mapping):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite(v) for v in value]
    return value


def iso_utc(epoch_s: float | None) -> str | None:
    if epoch_s is None:
        return None
    return to_jsonable(dt.datetime.fromtimestamp(epoch_s, dt.timezone.utc))


class Throughput:
    """Tasks finished per second, from the workers' own counters.

    Counting finished rows in ``tasks`` by ``finished_at`` has no index to
    use (deliberately: see maintenance_prune_tasks), and a sample of recent
    ids would miss an old backlog being drained. The heartbeat rows already
    count every outcome, so each sample adds up how much each worker's
    ``tasks_completed`` and ``tasks_failed`` grew since the previous one.
    The history therefore starts when the dashboard does. Counters arrive
    with heartbeats (every 2 s by default), so the finest bar is 10 s.
    """

    def __init__(self, window_s: float = THROUGHPUT_WINDOW_S, history_s: float = HISTORY_S,
                 bucket_s: float = BUCKET_S):
        self.window_s = window_s
        self.history_s = history_s
        self.bucket_s = bucket_s
        self.since: float | None = None
        self._counts: dict[Any, tuple[int, int]] = {}
        self._prev_db_now: dt.datetime | None = None
        # (wall time of the sample, succeeded since the previous one, failed since the previous one)
        self._samples: deque[tuple[float, int, int]] = deque()

    def observe(self, workers: Iterable[Mapping[str, Any]], db_now: dt.datetime | None, at: float) -> None:
        succeeded = failed = 0
        counts: dict[Any, tuple[int, int]] = {}
        for w in workers:
            done, bad = int(w["tasks_completed"]), int(w["tasks_failed"])
            previous = self._counts.get(w["id"])
            if previous is not None:
                # Counters only grow; a smaller value would be a reused id, not negative work.
                succeeded += max(0, done - previous[0])
                failed += max(0, bad - previous[1])
            elif (self._prev_db_now is not None and w.get("started_at") is not None
                  and w["started_at"] >= self._prev_db_now - NEW_WORKER_SLACK):
                succeeded += done
                failed += bad
            # else: there before we started watching; its counts are its past.
            counts[w["id"]] = (done, bad)
        # Rows that left the listing (stopped long ago) cannot grow any more: forget them.
        self._counts = counts
        if self.since is None:
            self.since = at
        else:
            self._samples.append((at, succeeded, failed))
        if db_now is not None:
            self._prev_db_now = db_now
        while self._samples and self._samples[0][0] <= at - self.history_s:
            self._samples.popleft()

    def summary(self, now: float) -> dict[str, Any]:
        if self.since is None:
            return {"per_s": None, "succeeded_per_s": None, "failed_per_s": None, "window_s": 0.0,
                    "bucket_s": self.bucket_s, "since": None, "history": []}
        window = min(self.window_s, now - self.since)
        in_window = [s for s in self._samples if s[0] > now - self.window_s]
        succeeded = sum(s[1] for s in in_window)
        failed = sum(s[2] for s in in_window)
        rate = (lambda n: round(n / window, 3)) if window >= 1.0 else (lambda n: None)

        last = math.floor(now / self.bucket_s)
        count = int(round(self.history_s / self.bucket_s))
        first = last - count + 1
        bars: list[list[int] | None] = [None] * count
        for i in range(count):
            if (first + i + 1) * self.bucket_s > self.since:
                bars[i] = [0, 0]
        for at, ok, bad in self._samples:
            i = math.floor(at / self.bucket_s) - first
            if 0 <= i < count:
                bars[i] = bars[i] or [0, 0]
                bars[i][0] += ok
                bars[i][1] += bad
        history = [{"t": (first + i) * self.bucket_s,
                    "succeeded": None if b is None else b[0],
                    "failed": None if b is None else b[1]} for i, b in enumerate(bars)]
        return {"per_s": rate(succeeded + failed), "succeeded_per_s": rate(succeeded),
                "failed_per_s": rate(failed), "finished": succeeded + failed, "failed": failed,
                "window_s": round(window, 1), "bucket_s": self.bucket_s, "since": iso_utc(self.since),
                "history": history}


class _Section:
    """One throttled query: due again after max(every_s, THROTTLE_FACTOR x its last duration)."""

    def __init__(self, name: str, every_s: float):
        self.name = name
        self.every_s = every_s
        self.due = 0.0
        self.rows: list[dict[str, Any]] | None = None
        self.at: float | None = None       # wall time of the last successful run
        self.duration_s: float | None = None

    def run(self, conn: psycopg.Connection, params: Mapping[str, Any]) -> None:
        started = time.monotonic()
        rows = db.fetch_all(conn, self.name, params)
        self.duration_s = time.monotonic() - started
        self.rows, self.at = rows, time.time()
        self.due = started + max(self.every_s, THROTTLE_FACTOR * self.duration_s)


class Collector:
    """Samples the database on its own thread; ``stats()`` returns the latest JSON."""

    def __init__(self, dsn: str, *, refresh_s: float = REFRESH_S, dead_after_s: float = 30.0,
                 sample_rows: int = SAMPLE_ROWS):
        self.dsn = dsn
        self.database = db.describe_dsn(dsn)
        self.refresh_s = refresh_s
        self.dead_after_s = dead_after_s
        self.sample_rows = sample_rows
        self.throughput = Throughput()
        self._conn: psycopg.Connection | None = None
        self._clock = _Section("dashboard_clock", 0.0)
        self._workers = _Section("dashboard_workers", 0.0)
        self._supervisors = _Section("supervisors_health", refresh_s)
        self._depth = _Section("dashboard_depth", refresh_s)
        self._recent = _Section("dashboard_recent_starts", RECENT_EVERY_S)
        self._unserved = _Section("status_unserved_kinds", RECENT_EVERY_S)
        self._sla = _Section("dashboard_tier_sla", RECENT_EVERY_S)
        self._failures = _Section("dashboard_failures", RECENT_EVERY_S)
        self._queues = _Section("dashboard_queues", refresh_s)
        self._privileges = _Section("dashboard_privileges", PRIVILEGES_EVERY_S)
        self._periodic = _Section("periodic_status", RECENT_EVERY_S)
        self._limits = _Section("status_limits", RECENT_EVERY_S)
        self._cond = threading.Condition()
        self._wake = threading.Event()
        self._stop = threading.Event()
        # Only its delays are used: the sample loop logs each change of error itself.
        self._retry = Backoff("the dashboard sample", log, first_s=REFRESH_S, max_s=30.0)
        self._thread: threading.Thread | None = None
        self._last_request = time.monotonic()
        self._ticks = 0
        self._full_at: float | None = None   # monotonic time of the last full, successful sample
        self._body: bytes | None = None
        self._error: str | None = None
        self._error_since: float | None = None
        self._last_ok_at: float | None = None

    # -- lifecycle -----------------------------------------------------------

    def start(self) -> None:
        self._thread = threading.Thread(target=self._loop, name="dashboard-collector", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 2.0) -> None:
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout)
            if self._thread.is_alive():
                return  # stuck in a connect or a query: a daemon thread, it ends with the process
        self._close()

    # -- what the HTTP handlers call ---------------------------------------

    def stats(self) -> tuple[int, bytes]:
        """(HTTP status, JSON body): 200 with the latest snapshot, 503 with the error."""
        self._last_request = time.monotonic()
        with self._cond:
            fresh = self._full_at is not None and time.monotonic() - self._full_at < STALE_AFTER_S
            if not fresh and self._error is None:
                ticks = self._ticks
                self._wake.set()
                self._cond.wait_for(lambda: self._ticks > ticks, timeout=FRESH_WAIT_S)
            if self._error is not None:
                return 503, dumps({"ok": False, "error": self._error, "database": self.database,
                                   "error_since": iso_utc(self._error_since),
                                   "last_ok_at": iso_utc(self._last_ok_at)})
            if self._body is None:
                return 503, dumps({"ok": False, "error": "no sample yet: the database has not answered",
                                   "database": self.database, "error_since": None, "last_ok_at": None})
            return 200, self._body

    # -- the sampling thread ----------------------------------------------

    def _loop(self) -> None:
        failures = 0
        while not self._stop.is_set():
            started = time.monotonic()
            self._tick()
            # A database that keeps refusing (down, read-only, a revoked
            # grant) is retried with backoff, not once a second: the error
            # stays on the page meanwhile, and a request still wakes us.
            failures = failures + 1 if self._error is not None else 0
            wait = self._retry.delay_for(failures) if failures else self.refresh_s
            self._wake.wait(max(0.0, wait - (time.monotonic() - started)))
            self._wake.clear()

    def _connect(self) -> psycopg.Connection:
        if self._conn is None or self._conn.closed:
            conn = db.connect(self.dsn, application_name=APPLICATION_NAME, connect_timeout=CONNECT_TIMEOUT_S)
            try:
                # Each new session checks the schema: a dashboard started while
                # the database was away, or one that outlived a migration.
                schema.check(conn)
                db.fetch_all(conn, "dashboard_session", {"statement_timeout_ms": STATEMENT_TIMEOUT_MS})
                # psycopg opens each transaction with BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY:
                # one snapshot per tick, so depth, workers and supervisors agree with each other.
                conn.isolation_level = psycopg.IsolationLevel.REPEATABLE_READ
                conn.read_only = True
            except BaseException:
                conn.close()
                raise
            self._conn = conn
        return self._conn

    def _close(self) -> None:
        conn, self._conn = self._conn, None
        db.close_quietly(conn)

    def _tick(self) -> None:
        watched = time.monotonic() - self._last_request < IDLE_AFTER_S
        try:
            conn = self._connect()
            with conn.transaction():
                self._clock.run(conn, {})
                self._workers.run(conn, {"recent_s": RECENT_ROWS_S})
                if watched:
                    now = time.monotonic()
                    if now >= self._supervisors.due:
                        self._supervisors.run(conn, {"all": False, "recent_s": RECENT_ROWS_S, "running_first": True,
                                                     "dead_after_s": self.dead_after_s,
                                                     "lease_name": MAINTENANCE_LEASE})
                    if now >= self._depth.due:
                        self._depth.run(conn, {})
                    if now >= self._unserved.due:
                        self._unserved.run(conn, {"limit": 20})
                    if now >= self._sla.due:
                        self._sla.run(conn, {})
                    if now >= self._failures.due:
                        self._failures.run(conn, {"limit": FAILURE_GROUPS})
                    if now >= self._queues.due:
                        self._queues.run(conn, {})
                    if now >= self._privileges.due:
                        self._privileges.run(conn, {})
                    if now >= self._periodic.due:
                        self._periodic.run(conn, {})
                    if now >= self._limits.due:
                        self._limits.run(conn, {})
                    if now >= self._recent.due:
                        self._recent.run(conn, {"row_limit": self.sample_rows, "lookback_s": LOOKBACK_S,
                                                "latency_window_s": LATENCY_WINDOW_S,
                                                "sla_window_s": SLA_WINDOW_S})
            db_now = self._clock.rows[0]["db_now"] if self._clock.rows else None
            self.throughput.observe(self._workers.rows or [], db_now, time.time())
            body = dumps(self._snapshot()) if watched else None
        except Exception as exc:  # noqa: BLE001 - nothing may kill the collector; the error is shown instead
            self._close()
            from_database = isinstance(exc, (psycopg.Error, DatabaseUnavailable, SchemaMismatch))
            message = describe_error(exc) if from_database else f"internal error: {type(exc).__name__}: {exc}"
            with self._cond:
                if message != self._error:  # once per change of error, not once a second
                    if from_database:
                        log.warning("database error: %s", message)
                    else:
                        log.exception("dashboard sample failed")
                if self._error is None:
                    self._error_since = time.time()
                self._error = message
                self._ticks += 1
                self._cond.notify_all()
            return
        with self._cond:
            if self._error is not None:
                log.warning("database answers again")
            self._error = self._error_since = None
            self._last_ok_at = time.time()
            if body is not None:
                self._body = body
                self._full_at = time.monotonic()
            self._ticks += 1
            self._cond.notify_all()

    # -- the JSON document (shape: see the package docstring) ---------------

    def _snapshot(self) -> dict[str, Any]:
        now = time.time()
        depth = self._depth.rows or []
        recent = {r["tier"]: r for r in (self._recent.rows or [])}
        sla = {r["tier"]: r for r in (self._sla.rows or [])}
        workers = self._workers.rows or []
        supervisors = self._supervisors.rows or []

        tiers = []
        for tier in TIERS:
            rows = [d for d in depth if d["tier"] == tier]
            r = recent.get(tier, {})
            waits = [d["oldest_wait_s"] for d in rows if d["queued"] and d["oldest_wait_s"] is not None]
            tiers.append({
                "tier": tier,
                "start_within_s": r.get("start_within_s"),
                "queued": sum(d["queued"] for d in rows),
                "scheduled": sum(d["scheduled"] for d in rows),
                "running": sum(d["running"] for d in rows),
                "overdue": sum(d["overdue"] for d in rows),
                "oldest_wait_s": max(waits) if waits else None,
                "latency": {"started": r.get("latency_started", 0), "p50_ms": r.get("p50_ms"),
                            "p99_ms": r.get("p99_ms"), "max_ms": r.get("max_ms")},
                # From the tier_sla view, as `status` shows it.
                "sla": {"started": sla.get(tier, {}).get("started", 0), "on_time": sla.get(tier, {}).get("on_time", 0),
                        "attainment_pct": sla.get(tier, {}).get("attainment_pct")},
            })
        first = next(iter(recent.values()), {})
        sample_rows = first.get("sample_rows", 0)
        live = [w for w in workers if w["status"] not in ("stopped", "dead")]
        privileges = (self._privileges.rows or [{}])[0]
        queue_rows = self._queues.rows or []
        return {
            "ok": True,
            "generated_at": iso_utc(now),
            "database": self.database,
            "refresh_s": self.refresh_s,
            "windows": {"throughput_s": THROUGHPUT_WINDOW_S, "latency_s": LATENCY_WINDOW_S,
                        "sla_s": SLA_WINDOW_S, "history_s": HISTORY_S},
            "totals": {
                "queued": sum(t["queued"] for t in tiers),
                "scheduled": sum(t["scheduled"] for t in tiers),
                "running": sum(t["running"] for t in tiers),
                "overdue": sum(t["overdue"] for t in tiers),
                "workers_live": len(live),
                "workers_busy": sum(1 for w in live if w["current_tasks"]),
                "supervisors_live": sum(1 for s in supervisors if s["status"] == "running"),
            },
            "tiers": tiers,
            "queues": depth,
            # Kinds waiting in a queue that no live worker serves (a deploy
            # that lost a handler, a producer's typo): shown as warnings.
            "unserved": self._unserved.rows or [],
            # Every queue's settings; the paused ones are warned about too.
            "queue_settings": queue_rows,
            "paused": [q for q in queue_rows if q["paused_at"] is not None],
            # Tasks failed for good, by queue, kind and the first line of the error.
            "failures": self._failures.rows or [],
            # Periodic tasks: schedule, last slot and its task, next slot, error.
            "periodic": self._periodic.rows or [],
            # Kinds with a global limit: running against the cap, starts in
            # the current window against the rate.
            "limits": self._limits.rows or [],
            # Whether this login may act (a reader may not): the page
            # disables the actions, and the POSTs answer 403.
            "can_act": bool(privileges.get("can_act", False)),
            "login": privileges.get("login"),
            "throughput": self.throughput.summary(now),
            "sample": {
                "rows": sample_rows,
                "row_limit": self.sample_rows,
                "lookback_s": LOOKBACK_S,
                "complete": sample_rows < self.sample_rows,
                "covers_s": first.get("sample_oldest_s"),
                "computed_at": iso_utc(self._recent.at),
                "query_ms": None if self._recent.duration_s is None else round(self._recent.duration_s * 1000, 1),
            },
            "workers": workers,
            "supervisors": supervisors,
        }
