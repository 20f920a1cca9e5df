"""Prometheus metrics read from the database (depth, workers, SLA live; outcome
counters and histograms from the leader's history), on `run --metrics-port`;
and --log-format json's task and scaling events."""

from __future__ import annotations

import datetime as dt
import json
import re
import urllib.request

from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from angela_queue.inspect.metrics import registry_for
from fix_procs import APP_PRELUDE, RUNS_TABLE_SQL, query, wait_until

APP = APP_PRELUDE + """
from angela_queue import task

@task("mail", priority=7)
def mail(n):
    record(n)

@task("broken", max_attempts=1)
def broken():
    raise RuntimeError("it broke")
"""


def samples(registry) -> dict[tuple[str, tuple], float]:
    text = generate_latest(registry).decode()
    out = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def test_the_live_gauges_read_the_queue(dsn, conn):
    conn.execute("INSERT INTO angela_queue.tasks (kind, priority) VALUES ('mail', 7), ('mail', 7), ('report', 2)")
    conn.execute("INSERT INTO angela_queue.queues (name, paused_at) VALUES ('held', now())")
    registry, metrics = registry_for(dsn)
    try:
        got = samples(registry)
    finally:
        metrics.close()
    assert got[("angela_queue_up", ())] == 1.0
    assert got[("angela_queue_tasks", (("queue", "default"), ("state", "queued"), ("tier", "high")))] == 2.0
    assert got[("angela_queue_tasks", (("queue", "default"), ("state", "queued"), ("tier", "low")))] == 1.0
    assert got[("angela_queue_queue_paused", (("queue", "held"),))] == 1.0
    assert ("angela_queue_oldest_wait_seconds", (("queue", "default"), ("tier", "high"))) in got


def test_counters_count_each_final_minute_once_from_the_first_scrape(dsn, conn):
    base = conn.execute("SELECT date_trunc('minute', now()) - interval '10 minutes' AS m").fetchone()["m"]
    minute = dt.timedelta(minutes=1)

    def stats_row(at, succeeded, failed, waits):
        conn.execute("""INSERT INTO angela_queue.stats_minute (minute, queue, tier, kind, enqueued, started,
                            succeeded, failed, wait_buckets, wait_sum_ms)
                        VALUES (%s, 'default', 'high', 'mail', %s, %s, %s, %s, %s, %s)""",
                     (at, succeeded + failed, succeeded + failed, succeeded, failed, waits, 12.0))

    def progress(until):
        conn.execute("INSERT INTO angela_queue.stats_progress (rolled_until) VALUES (%s) "
                     "ON CONFLICT (only_row) DO UPDATE SET rolled_until = excluded.rolled_until", (until,))

    stats_row(base, 100, 0, [100] + [0] * 15)       # before the first scrape: not counted
    progress(base + 2 * minute)
    registry, metrics = registry_for(dsn)
    try:
        first = samples(registry)
        assert not any(name == "angela_queue_tasks_finished_total" for name, _ in first)
        stats_row(base + minute, 3, 1, [1, 2, 1] + [0] * 13)
        stats_row(base + 2 * minute, 5, 0, [5] + [0] * 15)   # not final yet: rolled once
        progress(base + 3 * minute)
        got = samples(registry)
        labels = (("kind", "mail"), ("queue", "default"), ("tier", "high"))
        assert got[("angela_queue_tasks_finished_total", tuple(sorted(labels + (("outcome", "succeeded"),))))] == 3
        assert got[("angela_queue_tasks_finished_total", tuple(sorted(labels + (("outcome", "failed"),))))] == 1
        assert got[("angela_queue_tasks_enqueued_total", labels)] == 4
        assert got[("angela_queue_task_wait_seconds_bucket", tuple(sorted(labels + (("le", "0.005"),))))] == 1
        assert got[("angela_queue_task_wait_seconds_bucket", tuple(sorted(labels + (("le", "0.025"),))))] == 4
        assert got[("angela_queue_task_wait_seconds_count", labels)] == 4
        assert abs(got[("angela_queue_task_wait_seconds_sum", labels)] - 0.012) < 1e-9
        progress(base + 4 * minute)                  # the next minute is final now
        again = samples(registry)
        assert again[("angela_queue_tasks_finished_total", tuple(sorted(labels + (("outcome", "succeeded"),))))] == 8
        assert samples(registry) == again            # a scrape with nothing new adds nothing
    finally:
        metrics.close()


def test_a_database_that_does_not_answer_reads_as_down():
    registry, metrics = registry_for("postgresql://nobody@127.0.0.1:1/none?connect_timeout=1")
    try:
        assert samples(registry)[("angela_queue_up", ())] == 0.0
    finally:
        metrics.close()


def test_run_serves_metrics_and_logs_json_events(dsn, client, start_supervisor, write_app):
    query(dsn, RUNS_TABLE_SQL)
    app = write_app(APP)
    sup = start_supervisor(app, "--min-workers", "1", "--base-workers", "1", "--max-workers", "1",
                           "--scale-interval", "1", "--poll-interval", "0.2", "--heartbeat-interval", "0.5",
                           "--metrics-port", "0", env={"ANGELA_QUEUE_LOG_FORMAT": "json"})
    url = wait_until(lambda: (m := re.search(r"Prometheus metrics on (http://\S+/metrics)", sup.log())) and m.group(1),
                     details=sup.log)
    wait_until(lambda: query(dsn, "SELECT count(*) AS n FROM angela_queue.kinds")[0]["n"] == 2, details=sup.log)
    client.enqueue("mail", {"n": 1})
    client.enqueue("broken")
    events = lambda: [json.loads(line) for line in sup.log().splitlines() if line.startswith("{")]  # noqa: E731
    wait_until(lambda: {e.get("outcome") for e in events() if e.get("event") == "task"} >= {"succeeded", "failed"},
               details=sup.log)
    done = next(e for e in events() if e.get("event") == "task" and e["outcome"] == "succeeded")
    assert (done["kind"], done["queue"], done["priority"], done["tier"], done["attempt"]) == ("mail", "default", 7,
                                                                                                "high", 1)
    assert done["wait_ms"] >= 0 and done["run_ms"] >= 0 and done["worker"] and done["task_id"]
    failed = next(e for e in events() if e.get("event") == "task" and e["outcome"] == "failed")
    assert failed["error"] == "RuntimeError: it broke" and failed["level"] == "warning"
    wait_until(lambda: "angela_queue_scaling_decisions_total" in urllib.request.urlopen(url, timeout=5).read().decode(),
               details=sup.log)
    body = urllib.request.urlopen(url, timeout=5).read().decode()
    assert "angela_queue_up 1.0" in body
    assert re.search(r'angela_queue_workers\{status="(idle|active)"\} 1\.0', body), body


def test_the_sample_grafana_dashboard_queries_only_metrics_we_export(dsn, conn):
    from pathlib import Path

    from angela_queue.supervisor.metrics import SupervisorMetrics
    dashboard = json.loads((Path(__file__).parent.parent / "examples" / "grafana" / "angela-queue.json").read_text())
    used = {name for p in dashboard["panels"] for t in p["targets"]
            for name in re.findall(r"\b(angela_queue_[a-z_]+)", t["expr"])}
    # One final minute of history, so the counters and histograms exist too.
    minute = conn.execute("SELECT date_trunc('minute', now()) - interval '5 minutes' AS m").fetchone()["m"]
    conn.execute("""INSERT INTO angela_queue.stats_minute (minute, queue, tier, kind, enqueued, started, succeeded,
                        wait_buckets, wait_sum_ms, run_buckets, run_sum_ms)
                    VALUES (%s, 'default', 'high', 'mail', 1, 1, 1, %s, 1.0, %s, 1.0)""",
                 (minute, [1] + [0] * 15, [1] + [0] * 15))
    conn.execute("INSERT INTO angela_queue.stats_progress (rolled_until) VALUES (%s - interval '1 minute')",
                 (minute,))
    registry, metrics = registry_for(dsn)
    sup = SupervisorMetrics(dsn)
    try:
        samples(registry)
        conn.execute("UPDATE angela_queue.stats_progress SET rolled_until = %s + interval '2 minutes'", (minute,))
        exported = {name for name, _ in samples(registry)}
        text = generate_latest(registry).decode() + generate_latest(sup.registry).decode()
        for family in text_string_to_metric_families(text):   # families with no sample yet, by their series
            exported |= {family.name + suffix for suffix in {"counter": ("_total",), "histogram": ("_bucket", "_sum",
                         "_count")}.get(family.type, ("",))}
    finally:
        metrics.close()
        sup.close()
    assert used, "the dashboard queries nothing"
    assert used <= exported, used - exported
