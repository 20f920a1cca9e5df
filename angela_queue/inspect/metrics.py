"""Prometheus metrics: ``/metrics`` on the dashboard and on ``angela-queue run
--metrics-port PORT`` (prometheus-client's exposition and naming).

Read from the database at each scrape, so every exporter shows the same
queue whichever process serves it:

- gauges, live: ``angela_queue_tasks{queue,tier,state}`` (queued, scheduled,
  running, overdue), ``angela_queue_oldest_wait_seconds{queue,tier}``,
  ``angela_queue_queue_paused{queue}``, ``angela_queue_workers{status}``,
  ``angela_queue_sla_attainment_ratio{queue,tier}`` (last hour),
  ``angela_queue_supervisor_workers_target`` and ``_workers{supervisor,host}``;
- counters and histograms, from the leader's per-minute history
  (stats_minute): ``angela_queue_tasks_enqueued_total``,
  ``angela_queue_tasks_started_total``,
  ``angela_queue_tasks_finished_total{...,outcome}`` (succeeded, failed,
  cancelled, dropped, retried), ``angela_queue_task_wait_seconds`` and
  ``angela_queue_task_run_seconds``, all by queue, tier and kind. They count
  from this exporter's first scrape, a minute at a time once the leader's
  rollup of that minute is final (a minute or two behind), so rate() over
  them is exact and an exporter's restart is an ordinary counter reset.
- ``angela_queue_up``: 1 when the last scrape read the database.

Several exporters (the dashboard, each supervisor) report the same
database: scrape one, or aggregate with max().
"""

from __future__ import annotations

import datetime as dt
import logging
import threading
from collections.abc import Iterable, Iterator
from typing import Any

import psycopg
from prometheus_client import CollectorRegistry
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric

from .. import db

log = logging.getLogger("angela_queue.metrics")

# The bounds of the stats buckets (angela_queue.stats_bucket_bounds_ms), in seconds.
BUCKET_BOUNDS_S = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0, 1800.0)
OUTCOMES = ("succeeded", "failed", "cancelled", "dropped", "retried")
LABELS = ("queue", "tier", "kind")
CONNECT_TIMEOUT_S = 5.0


class _Histogram:
    """One label set's cumulative buckets and sum."""

    def __init__(self) -> None:
        self.counts = [0] * (len(BUCKET_BOUNDS_S) + 1)
        self.sum_s = 0.0

    def add(self, counts: list[int] | None, sum_ms: float) -> None:
        for i, n in enumerate(counts or []):
            if i < len(self.counts):
                self.counts[i] += int(n)
        self.sum_s += float(sum_ms or 0) / 1000

    def buckets(self) -> list[tuple[str, float]]:
        out, running = [], 0
        for bound, n in zip(BUCKET_BOUNDS_S, self.counts):
            running += n
            out.append((repr(bound), running))
        out.append(("+Inf", running + self.counts[-1]))
        return out


class QueueMetrics:
    """A prometheus-client collector over one database (register it in a registry)."""

    def __init__(self, dsn: str, *, application_name: str = "angela-queue-metrics"):
        self.dsn = dsn
        self.application_name = application_name
        self._lock = threading.Lock()
        self._conn: psycopg.Connection | None = None
        # Counters: everything finished in [_counted_since, _counted_until).
        self._counted_until: dt.datetime | None = None
        self._counts: dict[str, dict[tuple[str, ...], int]] = {"enqueued": {}, "started": {}, "on_time": {},
                                                               **{o: {} for o in OUTCOMES}}
        self._wait: dict[tuple[str, ...], _Histogram] = {}
        self._run: dict[tuple[str, ...], _Histogram] = {}

    def close(self) -> None:
        with self._lock:
            self._drop()

    def _drop(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            try:
                conn.close()
            except Exception:  # noqa: BLE001 - it is being thrown away
                pass

    def collect(self) -> Iterator[Metric]:
        with self._lock:
            try:
                if self._conn is None or self._conn.closed:
                    self._conn = db.connect(self.dsn, application_name=self.application_name,
                                            connect_timeout=CONNECT_TIMEOUT_S)
                live = self._read_live(self._conn)
                self._advance_counters(self._conn)
                up = 1.0
            except Exception as exc:  # noqa: BLE001 - a scrape reports the outage, it does not fail
                log.warning("metrics: cannot read the database: %s", db.first_line(exc))
                self._drop()
                live, up = [], 0.0
        yield from live
        yield from self._counter_families()
        gauge = GaugeMetricFamily("angela_queue_up", "1 when the last scrape read the database")
        gauge.add_metric([], up)
        yield gauge

    # -- live gauges -----------------------------------------------------------

    def _read_live(self, conn: psycopg.Connection) -> list[Metric]:
        tasks = GaugeMetricFamily("angela_queue_tasks", "Tasks now, per queue, tier and state",
                                  labels=["queue", "tier", "state"])
        oldest = GaugeMetricFamily("angela_queue_oldest_wait_seconds", "The oldest queued task's wait",
                                   labels=["queue", "tier"])
        paused = GaugeMetricFamily("angela_queue_queue_paused", "1 while the queue is paused", labels=["queue"])
        seen_queues: set[str] = set()
        for r in db.fetch_all(conn, "metrics_depth"):
            for state in ("queued", "scheduled", "running", "overdue"):
                tasks.add_metric([r["queue"], r["tier"], state], float(r[state]))
            if r["oldest_wait_s"] is not None:
                oldest.add_metric([r["queue"], r["tier"]], float(r["oldest_wait_s"]))
            if r["queue"] not in seen_queues:
                seen_queues.add(r["queue"])
                paused.add_metric([r["queue"]], 1.0 if r["paused"] else 0.0)
        workers = GaugeMetricFamily("angela_queue_workers", "Worker processes per status", labels=["status"])
        for r in db.fetch_all(conn, "metrics_workers"):
            workers.add_metric([r["status"]], float(r["workers"]))
        sla = GaugeMetricFamily("angela_queue_sla_attainment_ratio",
                                "Share of the last hour's starts within the tier's deadline", labels=["queue", "tier"])
        for r in db.fetch_all(conn, "metrics_sla"):
            if r["attainment_pct"] is not None:
                sla.add_metric([r["queue"], r["tier"]], float(r["attainment_pct"]) / 100)
        target = GaugeMetricFamily("angela_queue_supervisor_workers_target",
                                   "Workers a running supervisor wants (its last scaling decision)",
                                   labels=["supervisor", "host"])
        live_workers = GaugeMetricFamily("angela_queue_supervisor_workers", "Live workers of a running supervisor",
                                         labels=["supervisor", "host"])
        for r in db.fetch_all(conn, "metrics_supervisors"):
            target.add_metric([str(r["id"]), r["host"]], float(r["workers_target"]))
            live_workers.add_metric([str(r["id"]), r["host"]], float(r["workers_live"]))
        return [tasks, oldest, paused, workers, sla, target, live_workers]

    # -- counters from the history ------------------------------------------------

    def _advance_counters(self, conn: psycopg.Connection) -> None:
        progress = db.fetch_one(conn, "stats_progress_read")
        if progress is None or progress["rolled_until"] is None:
            return
        # A minute is final once the rollup has written it twice: the one
        # before the last written.
        final_until = progress["rolled_until"] - dt.timedelta(minutes=1)
        if self._counted_until is None:
            self._counted_until = final_until     # counters start at the first scrape
            return
        if final_until <= self._counted_until:
            return
        for r in db.fetch_all(conn, "stats_minutes_since", {"since": self._counted_until, "until": final_until}):
            key = (r["queue"], r["tier"], r["kind"])
            for name in ("enqueued", "started", "on_time", *OUTCOMES):
                if r[name]:
                    self._counts[name][key] = self._counts[name].get(key, 0) + int(r[name])
            if r["wait_buckets"]:
                self._wait.setdefault(key, _Histogram()).add(r["wait_buckets"], r["wait_sum_ms"])
            if r["run_buckets"]:
                self._run.setdefault(key, _Histogram()).add(r["run_buckets"], r["run_sum_ms"])
        self._counted_until = final_until

    def _counter_families(self) -> Iterable[Metric]:
        with self._lock:
            enqueued = CounterMetricFamily("angela_queue_tasks_enqueued", "Tasks enqueued", labels=list(LABELS))
            started = CounterMetricFamily("angela_queue_tasks_started", "Attempts started", labels=list(LABELS))
            on_time = CounterMetricFamily("angela_queue_tasks_started_on_time",
                                          "Attempts started within their tier's deadline", labels=list(LABELS))
            finished = CounterMetricFamily("angela_queue_tasks_finished",
                                           "Attempts that ended: succeeded, failed (for good), cancelled, dropped, "
                                           "or retried (failed, another attempt due)",
                                           labels=[*LABELS, "outcome"])
            for family, name in ((enqueued, "enqueued"), (started, "started"), (on_time, "on_time")):
                for key, n in sorted(self._counts[name].items()):
                    family.add_metric(list(key), n)
            for outcome in OUTCOMES:
                for key, n in sorted(self._counts[outcome].items()):
                    finished.add_metric([*key, outcome], n)
            wait = HistogramMetricFamily("angela_queue_task_wait_seconds",
                                         "From ready to the start of an attempt", labels=list(LABELS))
            for key, h in sorted(self._wait.items()):
                wait.add_metric(list(key), h.buckets(), h.sum_s)
            run = HistogramMetricFamily("angela_queue_task_run_seconds", "Run time of the successes",
                                        labels=list(LABELS))
            for key, h in sorted(self._run.items()):
                run.add_metric(list(key), h.buckets(), h.sum_s)
            return [enqueued, started, on_time, finished, wait, run]


def registry_for(dsn: str, *extra: Any) -> tuple[CollectorRegistry, QueueMetrics]:
    """A registry holding the database's metrics (and any ``extra`` collectors)."""
    registry = CollectorRegistry(auto_describe=False)
    metrics = QueueMetrics(dsn)
    registry.register(metrics)
    for collector in extra:
        registry.register(collector)
    return registry, metrics
